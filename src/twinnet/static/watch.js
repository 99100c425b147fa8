// twinnet watch page: polls GET /api/run (a bounded, thinned history however fast the twins
// train), draws its charts on canvases, shows the first layer from GET /api/run/weights, sends
// the pad's drawing to POST /api/predict, and drives the run with POST /api/run/<action>.
//
// window.twinnetWatch exposes the page's progress for scripts and the browser test: polls,
// state, step, lossLastStep (the last step drawn on the loss chart), lossPoints, driftSeries,
// weightsStep, and for the pad drawn / answered / inFlight / last, as on the draw page.
"use strict";

const POLL_MS = 250; // the next poll starts this long after the last one was drawn
const WEIGHTS_MS = 1000;
const REPREDICT_MS = 1500; // while training, the drawing is read again by the newer weights
const BRUSH = 20;
const TWINS = ["numpy", "tf"];
const COLORS = { numpy: "#2f6fd6", tf: "#e07b1a" };
const DRIFT_COLORS = ["#6a3d9a", "#1f8a4c", "#c0392b", "#2f6fd6", "#b15928", "#e07b1a", "#17becf",
                      "#7f7f7f", "#bcbd22", "#e377c2"];

const page = { polls: 0, state: "loading", step: 0, lossLastStep: 0, lossPoints: 0, driftSeries: 0,
               weightsStep: -1, drawn: 0, answered: 0, inFlight: false, last: null, run: null };
window.twinnetWatch = page;

function $(id) { return document.getElementById(id); }
function format(n) { return n.toLocaleString("en-US"); }

// --- charts ---------------------------------------------------------------------------------

function canvasContext(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}

function niceStep(range, count) {
  const raw = range / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const unit = [1, 2, 5, 10].find((m) => m * power >= raw) || 10;
  return unit * power;
}

function linearTicks(min, max, count) {
  const step = niceStep(max - min, count);
  const ticks = [];
  for (let t = Math.ceil(min / step) * step; t <= max + step * 1e-9; t += step) ticks.push(t);
  return ticks;
}

function logTicks(min, max) {
  const ticks = [];
  for (let e = Math.floor(Math.log10(min)); e <= Math.ceil(Math.log10(max)); e++) {
    for (const m of [1, 2, 5]) {
      const t = m * 10 ** e;
      if (t >= min * 0.999 && t <= max * 1.001) ticks.push(t);
    }
  }
  if (ticks.length > 7) return ticks.filter((t) => Math.abs(Math.log10(t) % 1) < 1e-9);
  return ticks;
}

function tickLabel(t, log) {
  if (log && t < 0.001) return t.toExponential(0).replace("+", "");
  if (Math.abs(t) >= 10000) return `${t / 1000}k`;
  return String(Number(t.toPrecision(3)));
}

// series: [{x: [], y: [], color, width, alpha, dash, dots}]; y on a log scale when log.
function drawChart(canvas, { xMax, yMin, yMax, log, series, yLabel = (t) => tickLabel(t, log) }) {
  const { ctx, w, h } = canvasContext(canvas);
  const left = 40, right = 8, top = 6, bottom = 16;
  const pw = Math.max(10, w - left - right), ph = Math.max(10, h - top - bottom);
  const lo = log ? Math.log10(yMin) : yMin, hi = log ? Math.log10(yMax) : yMax;
  const X = (x) => left + (pw * x) / xMax;
  const Y = (y) => {
    const v = ((log ? Math.log10(Math.max(y, yMin)) : y) - lo) / (hi - lo || 1);
    return top + ph * (1 - Math.min(1, Math.max(0, v)));
  };
  ctx.font = "10px system-ui, sans-serif";
  ctx.lineWidth = 1;
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  for (const t of log ? logTicks(yMin, yMax) : linearTicks(yMin, yMax, 4)) {
    ctx.strokeStyle = "#e8ebf0";
    ctx.beginPath(); ctx.moveTo(left, Y(t)); ctx.lineTo(left + pw, Y(t)); ctx.stroke();
    ctx.fillStyle = "#5d6678";
    ctx.fillText(yLabel(t), left - 4, Y(t));
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (const t of linearTicks(0, xMax, Math.max(2, Math.floor(pw / 90)))) {
    ctx.fillStyle = "#5d6678";
    ctx.fillText(tickLabel(t, false), Math.min(X(t), left + pw - 10), top + ph + 3);
  }
  ctx.strokeStyle = "#b9c0cc";
  ctx.beginPath(); ctx.moveTo(left, top); ctx.lineTo(left, top + ph); ctx.lineTo(left + pw, top + ph); ctx.stroke();
  ctx.save();
  ctx.beginPath(); ctx.rect(left, top - 2, pw + 2, ph + 4); ctx.clip();
  for (const s of series) {
    if (!s.x.length) continue;
    ctx.globalAlpha = s.alpha ?? 1;
    ctx.strokeStyle = s.color;
    ctx.fillStyle = s.color;
    ctx.lineWidth = s.width ?? 1.5;
    ctx.setLineDash(s.dash || []);
    ctx.beginPath();
    s.x.forEach((x, i) => (i ? ctx.lineTo(X(x), Y(s.y[i])) : ctx.moveTo(X(x), Y(s.y[i]))));
    ctx.stroke();
    if (s.dots) for (let i = 0; i < s.x.length; i++) ctx.fillRect(X(s.x[i]) - 1.5, Y(s.y[i]) - 1.5, 3, 3);
  }
  ctx.restore();
}

function drawLoss(run) {
  const series = [];
  let min = Infinity, max = 0;
  for (const twin of run.twins) {
    const h = run.history[twin];
    for (const v of h.loss) { if (v > 0) min = Math.min(min, v); max = Math.max(max, v); }
    series.push({ x: h.step, y: h.loss, color: COLORS[twin], width: 1, alpha: 0.35 });
  }
  for (const twin of run.twins) {
    const h = run.history[twin];
    series.push({ x: h.step, y: h.smoothed, color: COLORS[twin], width: twin === "tf" ? 1.5 : 2.5,
                  dash: twin === "tf" ? [5, 4] : [] });
  }
  if (!isFinite(min)) { min = 0.1; max = 3; }
  drawChart($("loss-chart"), { xMax: run.steps, yMin: min * 0.8, yMax: max * 1.15, log: true, series });
  const first = run.history[run.twins[0]];
  page.lossPoints = first.step.length;
  page.lossLastStep = first.step.length ? first.step[first.step.length - 1] : 0;
}

function drawAccuracy(run) {
  const series = [];
  let min = 1;
  for (const twin of run.twins) {
    const h = run.history[twin];
    for (const v of h.val_accuracy) min = Math.min(min, v);
    series.push({ x: h.val_step, y: h.val_accuracy, color: COLORS[twin], width: twin === "tf" ? 1.5 : 2.5,
                  dash: twin === "tf" ? [5, 4] : [], dots: true });
  }
  const yMin = Math.max(0, Math.floor((min - 0.01) * 50) / 50);
  drawChart($("accuracy-chart"), { xMax: run.steps, yMin: Math.min(yMin, 0.9), yMax: 1, log: false, series,
                                   yLabel: (t) => `${Math.round(t * 100)}%` });
  const h = run.history[run.twins[0]];
  const note = h.val_accuracy.length
    ? `every ${run.settings.eval_every} steps; now ` +
      run.twins.map((t) => `${t === "tf" ? "TF" : "NumPy"} ${(100 * run.history[t].val_accuracy.at(-1)).toFixed(2)}%`).join(", ")
    : `every ${run.settings.eval_every} steps`;
  $("accuracy-note").textContent = note;
}

function drawDrift(run) {
  const names = Object.keys(run.drift);
  const legend = $("drift-legend");
  page.driftSeries = names.length;
  if (!names.length) {
    drawChart($("drift-chart"), { xMax: run.steps, yMin: 1e-9, yMax: 1, log: true, series: [] });
    legend.replaceChildren();
    const li = document.createElement("li");
    li.className = "zero";
    li.textContent = run.twins.length < 2 ? "No drift: the NumPy twin trains alone." : "Measured once the twins are built.";
    legend.append(li);
    return;
  }
  let min = Infinity, max = 0;
  for (const name of names) for (const [, v] of run.drift[name]) { if (v > 0) min = Math.min(min, v); max = Math.max(max, v); }
  const zeros = !isFinite(min);
  const yMin = zeros ? 1e-9 : 10 ** Math.floor(Math.log10(min));
  const yMax = Math.max(zeros ? 1e-6 : 10 ** Math.ceil(Math.log10(max)), yMin * 100);
  const series = names.map((name, i) => ({
    x: run.drift[name].map((p) => p[0]), y: run.drift[name].map((p) => p[1]),
    color: name === "logits" ? "#1d2330" : DRIFT_COLORS[i % DRIFT_COLORS.length],
    width: name === "logits" ? 2.2 : 1.4, dash: name === "logits" ? [6, 3] : [] }));
  drawChart($("drift-chart"), { xMax: run.steps, yMin, yMax, log: true, series });
  legend.replaceChildren();
  names.forEach((name, i) => {
    const li = document.createElement("li");
    const last = run.drift[name].at(-1)[1];
    li.style.setProperty("--swatch", series[i].color);
    li.textContent = `${name === "logits" ? `logits of ${run.drift_images} images` : name} ${last === 0 ? "0" : last.toExponential(1)}`;
    legend.append(li);
  });
  if (names.some((name) => run.drift[name].some((p) => p[1] === 0))) {
    const li = document.createElement("li");
    li.className = "zero";
    li.textContent = "exactly 0 is drawn on the bottom edge";
    legend.append(li);
  }
}

// --- the first layer -------------------------------------------------------------------------

function gridOf(layer) {
  const cols = layer.width === 1 || layer.height === 1 ? 1 : Math.ceil(Math.sqrt(layer.count));
  return { cols, rows: Math.ceil(layer.count / cols) };
}

// Paints layer.count images of layer.height x layer.width, one pixel gap, colour(value index).
function paintGrid(canvas, layer, colour) {
  const { cols, rows } = gridOf(layer);
  canvas.width = cols * (layer.width + 1) - 1;
  canvas.height = rows * (layer.height + 1) - 1;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(canvas.width, canvas.height);
  image.data.fill(255);
  const size = layer.width * layer.height;
  for (let k = 0; k < layer.count; k++) {
    const ox = (k % cols) * (layer.width + 1), oy = Math.floor(k / cols) * (layer.height + 1);
    for (let p = 0; p < size; p++) {
      const i = 4 * ((oy + Math.floor(p / layer.width)) * canvas.width + ox + (p % layer.width));
      const [r, g, b] = colour(k * size + p);
      image.data[i] = r; image.data[i + 1] = g; image.data[i + 2] = b;
    }
  }
  ctx.putImageData(image, 0, 0);
}

function decode(base64, Kind) {
  return new Kind(Uint8Array.from(atob(base64), (c) => c.charCodeAt(0)).buffer);
}

function drawWeights(layer) {
  if (!layer) { $("weights-note").textContent = "(this model has no weight matrix)"; return; }
  for (const twin of TWINS) {
    const canvas = $(`weights-${twin}`);
    canvas.parentElement.hidden = !layer.twins[twin];
    if (!layer.twins[twin]) continue;
    const values = decode(layer.twins[twin], Int8Array);
    paintGrid(canvas, layer, (i) => { // orange above 0, blue below, white at 0
      const v = values[i] / 127, a = Math.abs(v);
      return v > 0 ? [255 - 40 * a, 255 - 160 * a, 255 - 220 * a] : [255 - 220 * a, 255 - 140 * a, 255 - 30 * a];
    });
  }
  $("difference-figure").hidden = !layer.difference;
  $("difference-hint").hidden = !layer.difference;
  if (layer.difference) {
    const values = decode(layer.difference, Uint8Array);
    paintGrid($("weights-difference"), layer, (i) => [255 - values[i], 255 - values[i], 255 - values[i]]);
    $("difference-caption").textContent = `|difference|, black ${layer.max_difference.toExponential(1)}`;
  }
  const what = layer.height > 3 ? "units' input weights" : "filters";
  $("weights-note").textContent = `${layer.parameter}, ${layer.count} ${what}, step ${format(layer.step)}; ` +
    "orange > 0 > blue";
  page.weightsStep = layer.step;
}

let weightsAt = 0;
async function pollWeights(run) {
  const now = performance.now();
  if (run.state === "loading" || page.weightsStep === run.step || now - weightsAt < WEIGHTS_MS) return;
  weightsAt = now;
  try {
    const response = await fetch("/api/run/weights");
    if (response.ok) drawWeights(await response.json());
  } catch (error) { /* the next poll says whether the server is gone */ }
}

// --- status and controls -----------------------------------------------------------------------

function rate(v) { return v === null || v === undefined ? "–" : `${format(Math.round(v))} steps/s`; }

function showStatus(run) {
  page.state = run.state;
  page.step = run.step;
  $("step").textContent = format(run.step);
  $("steps").textContent = format(run.steps);
  const state = $("state");
  state.textContent = run.state;
  state.className = `state ${run.state}`;
  const s = run.settings;
  $("run-line").textContent = `${run.model}: ${s.optimizer} lr ${s.lr} ${s.schedule}, batch ${s.batch_size}, ` +
    `seed ${s.seed}; ${run.twins.length === 2 ? "both twins in lockstep" : "the NumPy twin alone"}`;
  $("run-line").title = $("run-line").textContent;
  const parts = run.twins.map((t) => `<span class="${t}">${t === "tf" ? "TF" : "NumPy"} ${rate(run.history[t].steps_per_second)}</span>`);
  if (run.twins.length === 2 && run.state === "running") parts.push(`both ${rate(run.steps_per_second)}`);
  $("rates").innerHTML = parts.join(" · ");
  $("pause").disabled = run.state !== "running";
  $("resume").disabled = run.state !== "paused";
  $("one-step").disabled = run.state !== "paused";
  $("stop").disabled = !["running", "paused"].includes(run.state);
  let text = "", kind = "";
  if (run.error) { text = run.error; kind = "error"; }
  else if (run.state === "loading") text = "Building the twins (TensorFlow takes a few seconds to load)…";
  else if (run.state === "saving") text = "Evaluating and saving both run folders…";
  else if (run.state === "done" && run.saved) {
    const folders = Object.values(run.saved).join(" and ");
    text = run.stopped_at_step
      ? `Stopped at step ${format(run.stopped_at_step)}; saved ${folders}. twinnet train --resume ${run.saved.numpy} continues it.`
      : `Done: ${format(run.step)} steps, saved ${folders}. The pad reads the trained weights.`;
  } else if (run.twins.length < 2) text = `The NumPy twin trains alone: ${run.tf_status.replace(/^unavailable: /, "")}.`;
  const message = $("message");
  message.textContent = text;
  message.className = kind;
  $("answer-tf").hidden = run.twins.length < 2;
  document.querySelector(".legend .key.tf").hidden = run.twins.length < 2;
}

async function control(action) {
  try {
    const response = await fetch(`/api/run/${action}`, { method: "POST" });
    if (!response.ok) $("message").textContent = (await response.json()).error || `HTTP ${response.status}`;
  } catch (error) {
    $("message").textContent = `no answer from the server (${error.message})`;
  }
  poll(true);
}
$("pause").addEventListener("click", () => control("pause"));
$("resume").addEventListener("click", () => control("resume"));
$("one-step").addEventListener("click", () => control("step"));
$("stop").addEventListener("click", () => control("stop"));

let pollTimer = null;
let polling = false;
async function poll(now = false) {
  if (polling) return;
  clearTimeout(pollTimer);
  polling = true;
  let delay = POLL_MS;
  try {
    const points = Math.max(150, Math.min(1200, Math.round($("loss-chart").clientWidth)));
    const run = await (await fetch(`/api/run?points=${points}`)).json();
    page.run = run;
    page.polls++;
    showStatus(run);
    drawLoss(run);
    drawAccuracy(run);
    drawDrift(run);
    pollWeights(run);
    if (run.state === "done") delay = 1000;
  } catch (error) {
    $("message").textContent = "cannot reach the server; is twinnet watch still running?";
    $("message").className = "error";
    delay = 2000;
  } finally {
    polling = false;
    pollTimer = setTimeout(poll, delay);
  }
}

// --- the pad ------------------------------------------------------------------------------------

const pad = $("pad");
const padCtx = pad.getContext("2d");
let drawing = false, lastPoint = null, clearedAt = 0, sentAt = 0;

function blankPad() {
  padCtx.fillStyle = "#fff";
  padCtx.fillRect(0, 0, pad.width, pad.height);
  Object.assign(padCtx, { strokeStyle: "#000", lineWidth: BRUSH, lineCap: "round", lineJoin: "round" });
}

function padPoint(event) {
  const box = pad.getBoundingClientRect();
  return { x: (event.clientX - box.left) * (pad.width / box.width), y: (event.clientY - box.top) * (pad.height / box.height) };
}

function stroke(from, to) {
  padCtx.beginPath(); padCtx.moveTo(from.x, from.y); padCtx.lineTo(to.x, to.y); padCtx.stroke();
  page.drawn++;
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  drawing = true;
  lastPoint = padPoint(event);
  stroke(lastPoint, lastPoint);
});
pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  for (const e of (event.getCoalescedEvents && event.getCoalescedEvents().length) ? event.getCoalescedEvents() : [event]) {
    const p = padPoint(e);
    stroke(lastPoint, p);
    lastPoint = p;
  }
  if (!page.inFlight && performance.now() - sentAt > 150) predict();
});
function endStroke() { if (drawing) { drawing = false; predict(); } }
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);
$("clear").addEventListener("click", () => {
  blankPad();
  page.drawn++;
  page.answered = page.drawn;
  clearedAt = page.drawn;
  page.last = null;
  showAnswer(null);
});

function percent(p) { return p >= 0.9995 ? "100%" : `${(100 * p).toFixed(1)}%`; }

function showAnswer(answer) {
  for (const twin of TWINS) {
    const result = answer && answer.twins[twin];
    const line = $(`answer-${twin}`);
    line.dataset.digit = result ? String(result.digit) : "";
    line.querySelector("b").textContent = result ? String(result.digit) : "–";
    line.querySelector("small").textContent = result ? percent(result.probabilities[result.digit]) : "";
  }
  $("pad-note").textContent = answer ? `read by the weights of step ${format(answer.step)}` : "Draw large and centred.";
  $("pad-note").className = "hint";
}

async function predict(again = false) {
  if (page.inFlight || page.drawn === clearedAt) return;
  if (!again && page.answered === page.drawn) return;
  page.inFlight = true;
  sentAt = performance.now();
  const version = page.drawn;
  try {
    const png = await new Promise((resolve) => pad.toBlob(resolve, "image/png"));
    const response = await fetch("/api/predict", { method: "POST", headers: { "Content-Type": "image/png" }, body: png });
    const answer = await response.json();
    if (version > clearedAt) {
      if (response.ok) { page.last = answer; showAnswer(answer); }
      else { $("pad-note").textContent = answer.error || `HTTP ${response.status}`; $("pad-note").className = "hint error"; }
    }
  } catch (error) {
    $("pad-note").textContent = `no answer from the server (${error.message})`;
  } finally {
    page.answered = Math.max(page.answered, version);
    page.inFlight = false;
    if (!drawing && page.answered !== page.drawn) predict();
  }
}

// While the twins learn, the same drawing is read again by their newer weights.
setInterval(() => {
  if (!drawing && page.last && page.state === "running" && performance.now() - sentAt > REPREDICT_MS) predict(true);
}, 500);

blankPad();
showAnswer(null);
window.addEventListener("resize", () => page.run && (drawLoss(page.run), drawAccuracy(page.run), drawDrift(page.run)));
poll();
