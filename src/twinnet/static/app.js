// twinnet draw-a-digit page: draw on #pad, POST it as a PNG to /api/predict, show both twins.
//
// window.twinnetPage exposes the page's progress for scripts and the browser test:
// drawn = changes made to the drawing so far, answered = the newest change whose prediction
// is shown, inFlight = a request is out, tf = the TensorFlow twin's status, last = last answer.
"use strict";

const BRUSH = 20; // px on the 280 px pad: a stroke about 2 px wide once scaled into the 20 px box
const THROTTLE_MS = 120; // while drawing, at most one request per this interval
const TWINS = ["numpy", "tf"];

const state = { drawn: 0, answered: 0, inFlight: false, tf: "loading", last: null };
window.twinnetPage = state;

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const seen = document.getElementById("seen");
const seenCtx = seen.getContext("2d");
let drawing = false;
let lastPoint = null;
let lastSent = 0;
let clearedAt = 0; // answers to drawings older than this are stale
let serverLost = false; // /api/status failed; its error is shown until it answers again

function $(id) { return document.getElementById(id); }

function blankPad() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  ctx.strokeStyle = "#000";
  ctx.fillStyle = "#000";
  ctx.lineWidth = BRUSH;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
}

function buildBars() {
  for (const twin of TWINS) {
    const list = $(`bars-${twin}`);
    list.replaceChildren();
    for (let d = 0; d < 10; d++) {
      const li = document.createElement("li");
      li.dataset.digit = String(d);
      li.innerHTML = `<span class="digit">${d}</span><span class="track"><span class="fill"></span></span>` +
        `<span class="pct"></span>`;
      list.append(li);
    }
  }
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return { x: (event.clientX - box.left) * (pad.width / box.width),
           y: (event.clientY - box.top) * (pad.height / box.height) };
}

function stroke(from, to) {
  ctx.beginPath();
  ctx.moveTo(from.x, from.y);
  ctx.lineTo(to.x, to.y);
  ctx.stroke();
  state.drawn++;
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  drawing = true;
  lastPoint = point(event);
  stroke(lastPoint, lastPoint); // a dot, so a tap leaves ink
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const e of events.length ? events : [event]) {
    const p = point(e);
    stroke(lastPoint, p);
    lastPoint = p;
  }
  if (!state.inFlight && performance.now() - lastSent > THROTTLE_MS) send();
});

function endStroke() {
  if (!drawing) return;
  drawing = false;
  send();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

$("clear").addEventListener("click", () => {
  blankPad();
  state.drawn++;
  state.answered = state.drawn;
  clearedAt = state.drawn;
  state.last = null;
  showEmpty();
});

async function send(force = false) {
  if (state.inFlight) return; // the finally below sends again if the drawing changed meanwhile
  if (!force && state.answered === state.drawn) return;
  if (state.drawn === clearedAt) return; // nothing drawn since the last clear
  state.inFlight = true;
  lastSent = performance.now();
  const version = state.drawn;
  try {
    const png = await new Promise((resolve) => pad.toBlob(resolve, "image/png"));
    const response = await fetch("/api/predict", {
      method: "POST", headers: { "Content-Type": "image/png" }, body: png });
    const answer = await response.json();
    if (version > clearedAt) {
      if (response.ok) show(answer); else showError(answer.error || `HTTP ${response.status}`);
    }
  } catch (error) {
    showError(`no answer from the server (${error.message}); is twinnet serve still running?`);
  } finally {
    state.answered = Math.max(state.answered, version);
    state.inFlight = false;
    if (!drawing && state.answered !== state.drawn) send();
  }
}

function percent(p) { return p >= 0.9995 ? "100%" : p >= 0.001 ? `${(100 * p).toFixed(1)}%` : "<0.1%"; }

function showTwin(twin, result) {
  const items = $(`bars-${twin}`).children;
  for (let d = 0; d < 10; d++) {
    const li = items[d];
    const p = result ? result.probabilities[d] : 0;
    li.dataset.p = result ? String(p) : "";
    li.classList.toggle("top", Boolean(result) && d === result.digit);
    li.querySelector(".fill").style.width = `${(100 * p).toFixed(2)}%`;
    li.querySelector(".pct").textContent = result ? percent(p) : "";
  }
  const guess = $(`guess-${twin}`);
  guess.dataset.digit = result ? String(result.digit) : "";
  guess.innerHTML = result ? `${result.digit} <small>${percent(result.probabilities[result.digit])}</small>` : "–";
}

function showSeen(rows) {
  const image = seenCtx.createImageData(28, 28);
  for (let r = 0; r < 28; r++) {
    for (let c = 0; c < 28; c++) {
      const v = rows ? Math.round(255 * rows[r][c]) : 0;
      const i = 4 * (28 * r + c);
      image.data[i] = image.data[i + 1] = image.data[i + 2] = v;
      image.data[i + 3] = 255;
    }
  }
  seenCtx.putImageData(image, 0, 0);
}

function setVerdict(text, kind) {
  const verdict = $("verdict");
  verdict.textContent = text;
  verdict.className = kind || "";
  verdict.dataset.agree = kind === "agree" ? "true" : kind === "disagree" ? "false" : "";
}

function alone() { return state.tf.startsWith("unavailable"); } // the NumPy twin serves alone

function show(answer) {
  state.last = answer;
  showSeen(answer.input);
  for (const twin of TWINS) showTwin(twin, answer.twins[twin]);
  const { numpy, tf } = answer.twins;
  if (!tf && answer.tf_status.startsWith("unavailable")) {
    setVerdict(`The NumPy twin says ${numpy.digit}.`); // why it is alone: the line under the header
  } else if (!tf) {
    setVerdict(`The NumPy twin says ${numpy.digit}; the TensorFlow twin is ${describeTf(answer.tf_status)}.`);
  } else if (answer.agree) {
    setVerdict(`Both twins say ${numpy.digit}. Largest difference between their probabilities: ` +
      `${answer.max_difference.toExponential(1)}`, "agree");
  } else {
    setVerdict(`The twins disagree: NumPy says ${numpy.digit}, TensorFlow says ${tf.digit}.`, "disagree");
  }
}

function showEmpty() {
  showSeen(null);
  for (const twin of TWINS) showTwin(twin, null);
  setVerdict(alone() ? "Draw a digit and the NumPy twin will read it." : "Draw a digit and both twins will read it.");
}

// One twin: its card alone, and one line saying why and how to add the other.
function showAlone(tf) {
  document.body.classList.toggle("alone", alone());
  $("twin-tf").hidden = alone();
  const line = $("alone");
  line.hidden = !alone();
  if (!alone()) return;
  const why = tf.install ? "TensorFlow is not installed" : describeTf(tf.status).replace(/^not available: /, "");
  line.replaceChildren(`Only the NumPy twin is here: ${why}. `);
  if (tf.install) {
    const command = document.createElement("code");
    command.textContent = tf.install;
    line.append("To add the TensorFlow twin, run ", command, " and restart twinnet serve.");
  } else {
    line.append("The server's log says more.");
  }
}

// An error takes the verdict's place under the pad, where the user is looking, and stays
// until the next answer (or Clear) replaces it.
function showError(text) { setVerdict(text, "error"); }

function fileName(path) { return path.split(/[\\/]/).pop(); }

function describeTf(status) {
  if (status === "ready") return "ready";
  if (status === "loading") return "still loading TensorFlow";
  return status.replace(/^unavailable: /, "not available: ");
}

async function pollStatus() {
  try {
    const status = await (await fetch("/api/status")).json();
    const numpy = status.twins.numpy;
    const tf = status.twins.tf;
    const single = tf.status.startsWith("unavailable");
    const weights = $("weights");
    // Short enough for a phone's header: the file's name, its full path in the tooltip.
    weights.textContent = numpy.weights === tf.weights
      ? `${numpy.model} weights ${fileName(numpy.weights)}, in ${single ? "the NumPy twin" : "both twins"}`
      : `NumPy twin: ${numpy.model} ${fileName(numpy.weights)}; TensorFlow twin: ${tf.model} ${fileName(tf.weights)}`;
    weights.title = numpy.weights === tf.weights ? numpy.weights : `${numpy.weights}; ${tf.weights}`;
    if (serverLost) { // the server is back: take the error away
      serverLost = false;
      if (state.last) show(state.last); else showEmpty();
    }
    const changed = state.tf !== tf.status;
    state.tf = tf.status;
    showAlone(tf);
    if (changed && !state.last && $("verdict").className !== "error") showEmpty(); // the idle hint names the twins
    $("note-tf").textContent = tf.status === "ready" ? "Keras layers, autodiff" : describeTf(tf.status);
    if (tf.status === "loading") setTimeout(pollStatus, 1000);
    else if (changed && state.last) send(true); // show the new twin on the current drawing
  } catch (error) {
    serverLost = true;
    showError("cannot reach the server; is twinnet serve still running?");
    setTimeout(pollStatus, 3000);
  }
}

blankPad();
buildBars();
showEmpty();
pollStatus();
