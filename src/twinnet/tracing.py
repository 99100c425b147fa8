"""``twinnet trace``: one image through both twins, forward and backward, in pictures.

The image is MNIST test image ``--index I`` (the loss is taken against its true
label) or a user's IMAGE prepared exactly as ``twinnet predict`` prepares it (the loss
is taken against the digit the NumPy twin predicts, as there is no true label);
``--label D`` takes the loss against digit D instead. Where the model is sure of the
digit the loss is nearly 0 and so are all gradients: against another digit they show
what the model would change to read that one. Both
twins run layer by layer as in ``twinnet.comparison`` (reference NumPy layers; the Keras
layers under ``tf.GradientTape``), in float64 unless ``--dtype float32``.

Written into ``--out`` (default ``trace/``):

- ``NN-LAYER.png`` (1200 px wide): the layer's output for this image (conv maps as a
  grid of channels, dense units as a grid row by row) beside the gradient flowing back
  into it, dL/d(output), from the NumPy twin (TensorFlow's agree to rounding: see the
  table); values in nats, the loss being a natural log;
- ``saliency.png``: the input and dL/dx of both twins;
- ``trace.md`` and ``trace.json``: per layer the shapes, the norms of activation and
  gradient, the twins' largest differences, and the section of docs/derivations.md
  that derives the layer.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twinnet.comparison import (
    DEFAULT_DTYPE,
    DERIVATIONS,
    SECTIONS,
    TOLERANCES,
    TwinPass,
    check_pass_memory,
    layer_names,
    max_abs_diff,
    numpy_pass,
    tf_pass,
)
from twinnet.errors import TwinnetError
from twinnet.util import make_output_folder

REPO_DERIVATIONS = Path(__file__).resolve().parents[2] / DERIVATIONS
SURE_LOSS = 1e-3  # nats: below this the model gives the label a probability above 0.999


@dataclass
class Trace:
    """What ``trace`` found for one image x (1, 28, 28, 1).

    ``rows``: one dict per layer (and one for the input and the loss) with ``layer``,
    ``kind``, ``input_shape``, ``output_shape``, ``activation_norm``, ``gradient_norm``
    (L2 norms of the layer's output and of dL/d(output)), ``max_activation_diff`` and
    ``max_gradient_diff`` (max |NumPy - TF|) and ``derivation`` (a docs anchor).
    ``numpy`` and ``tf`` are the two passes (see ``twinnet.comparison.TwinPass``);
    ``figures`` maps file names to matplotlib Figures; ``files`` lists what was written.
    """

    model: str
    source: str
    label: int
    label_source: str
    predicted: dict[str, int]
    loss: dict[str, float]
    rows: list[dict[str, Any]]
    numpy: TwinPass
    tf: TwinPass
    image: np.ndarray
    dtype: str = "float32"
    training: bool = False  # run as in a training step, not as the model infers
    figures: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def markdown(self, doc_link: str = DERIVATIONS) -> str:
        """The per-layer table as Markdown, linking each layer to its derivation in
        ``doc_link`` (a path or URL of docs/derivations.md)."""
        lines = [f"# Trace of {self.source} through {self.model}", "",
                 f"Loss against label {self.label} ({self.label_source}): NumPy "
                 f"{self.loss['numpy']:.6g}, TF {self.loss['tf']:.6g} nats. Predicted digit: NumPy "
                 f"{self.predicted['numpy']}, TF {self.predicted['tf']}.", "",
                 "Run as in a training step (--training): batch norm on this one image's statistics, "
                 "dropout applied." if self.training else "Run as the model infers: batch norm on its "
                 "moving statistics, dropout off.", ""]
        if self.loss["numpy"] < SURE_LOSS:
            lines += [f"The model is sure this is a {self.label} (probability "
                      f"{np.exp(-self.loss['numpy']):.6f}), so the loss and every gradient below "
                      f"are close to 0; a label of your choice (`--label D`, `label=D` in Python) "
                      f"takes the loss against another digit D.", ""]
        lines += [
                 "| layer | input shape | output shape | ‖activation‖ | ‖dL/d(output)‖ | "
                 "max Δ activation | max Δ gradient | picture | derivation |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for row in self.rows:
            link = f"[§]({doc_link}#{row['derivation']})" if row["derivation"] else ""
            picture = f"[png]({row['picture']})" if row.get("picture") else ""
            lines.append(
                f"| {row['layer']} | {shape(row['input_shape'])} | {shape(row['output_shape'])} | "
                f"{row['activation_norm']:.4g} | {row['gradient_norm']:.4g} | "
                f"{row['max_activation_diff']:.1e} | {row['max_gradient_diff']:.1e} | {picture} | {link} |")
        lines += ["", "Norms are L2 norms of the NumPy twin's arrays; Δ is max |NumPy − TF|. "
                  "For the input row the gradient is the saliency dL/dx; for the loss row the "
                  "activation is the loss and the gradient dL/d(logits)."]
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:  # short: the arrays and figures would fill a notebook's text output
        return (f"Trace(model={self.model!r}, source={self.source!r}, label={self.label}, "
                f"loss={self.loss}, figures={list(self.figures)})")

    def _repr_markdown_(self) -> str:
        # In a notebook, links resolve from the working folder (notebooks/ in the tour).
        return self.markdown(doc_link(Path.cwd()))

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "source": self.source, "label": self.label,
                "label_source": self.label_source, "predicted": self.predicted,
                "loss": self.loss, "dtype": self.dtype, "training": self.training, "layers": self.rows,
                "files": self.files, "seconds": self.seconds}


def shape(dims: list[int]) -> str:
    return "x".join(map(str, dims))


def norm(a: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64).ravel()))


def trace_rows(model: str, ours: TwinPass, theirs: TwinPass, x: np.ndarray) -> list[dict[str, Any]]:
    """One table row for the input, one per layer, one for the loss (see ``Trace``)."""
    rows = [{"layer": "input", "kind": "input", "input_shape": [], "output_shape": list(x.shape[1:]),
             "activation_norm": norm(x), "gradient_norm": norm(ours.grad_input),
             "max_activation_diff": 0.0,
             "max_gradient_diff": max_abs_diff(ours.grad_input, theirs.grad_input),
             "derivation": None}]
    previous = list(x.shape[1:])
    for i, (name, kind) in enumerate(layer_names(model)):
        out = ours.outputs[i]
        rows.append({"layer": name, "kind": kind, "input_shape": previous,
                     "output_shape": list(out.shape[1:]),
                     "activation_norm": norm(out), "gradient_norm": norm(ours.grad_outputs[i]),
                     "max_activation_diff": max_abs_diff(out, theirs.outputs[i]),
                     "max_gradient_diff": max_abs_diff(ours.grad_outputs[i], theirs.grad_outputs[i]),
                     "derivation": SECTIONS[kind]})
        for key, g in ours.param_grads.items():
            if key.startswith(f"{name}/"):
                param = key.split("/")[1]
                rows[-1][f"d{param}_norm"] = norm(g)
                rows[-1][f"max_d{param}_diff"] = max_abs_diff(g, theirs.param_grads[key])
        previous = list(out.shape[1:])
    rows.append({"layer": "loss", "kind": "loss", "input_shape": previous, "output_shape": [],
                 "activation_norm": abs(ours.loss), "gradient_norm": norm(ours.grad_outputs[-1]),
                 "max_activation_diff": abs(ours.loss - theirs.loss),
                 "max_gradient_diff": max_abs_diff(ours.grad_outputs[-1], theirs.grad_outputs[-1]),
                 "derivation": SECTIONS["loss"]})
    return rows


def load_image(index: int | None, image: str | os.PathLike | None,
               data_dir: str | os.PathLike | None) -> tuple[np.ndarray, int | None, str]:
    """(x (1, 28, 28, 1) float32, true label or None, description) for ``--index`` or IMAGE."""
    if (index is None) == (image is None):
        raise TwinnetError("give either --index I (an MNIST test image) or an IMAGE file")
    if image is not None:
        from twinnet.predict import prepare_image

        return prepare_image(image)[None], None, str(image)
    from twinnet.data import FILES, load_idx, locate

    # Only the two test files, verified as load_mnist verifies them: the 47 MB training
    # images would double the time of a trace.
    paths = locate(data_dir)
    images, labels = (load_idx(paths[name], FILES[name])
                      for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
    if not 0 <= index < len(labels):
        raise TwinnetError(f"--index must be between 0 and {len(labels) - 1}, got {index}")
    x = images[index:index + 1, ..., None].astype(np.float32) / np.float32(255.0)  # as load_mnist
    return x, int(labels[index]), f"MNIST test image {index}"


def trace(weights: str | os.PathLike, index: int | None = None, image: str | os.PathLike | None = None,
          out: str | os.PathLike | None = None, dtype: str = DEFAULT_DTYPE,
          data_dir: str | os.PathLike | None = None, pictures: bool = True,
          label: int | None = None, training: bool = False) -> Trace:
    """One image through both twins with the model in ``weights``, forward and backward.

    The model runs as it infers (as ``predict`` and ``evaluate`` run it): batch norm on its
    moving statistics, dropout off; the gradients are those of that function. With
    ``training`` it runs as in a training step instead: batch norm on the one image's own
    statistics, dropout with the masks of step 0 of seed 0 (``comparison.pass_masks``).

    The image is MNIST test image ``index`` (loss against its true label) or the file
    ``image``, prepared as ``twinnet predict`` does (loss against the NumPy twin's
    predicted digit); ``label`` (0..9) takes the loss against that digit instead.
    With ``out``, writes the pictures, ``trace.md`` and ``trace.json``
    there; ``pictures=False`` skips the figures. Returns a ``Trace`` (shown as its table
    in a notebook; ``.figures`` holds the Figures). Imports TensorFlow.
    """
    from twinnet.weights import load_weights

    started = time.perf_counter()
    if dtype not in TOLERANCES:
        raise TwinnetError(f"--dtype must be one of {', '.join(TOLERANCES)}, got {dtype!r}")
    if label is not None and (isinstance(label, bool) or label not in range(10)):
        raise TwinnetError(f"--label must be a digit 0..9, got {label!r}")
    params, meta = load_weights(weights)
    model = meta["model"]
    check_pass_memory(model, 1, dtype, ("reference", "tf"))
    x, true_label, source = load_image(index, image, data_dir)
    if out is not None:
        make_output_folder(out)  # fail before the work, not after
    if label is not None:
        # Words of both front doors (--label on the command line, label= in Python).
        label_source = ("the label asked for" if true_label is None or label != true_label
                        else "the label asked for, the true label")
    elif true_label is not None:
        label, label_source = true_label, "true label"
    else:
        probe = numpy_pass(model, params, x, np.zeros(1, np.intp), dtype, training=training)
        label, label_source = int(probe.logits.argmax()), "the digit the NumPy twin predicts"
    y = np.array([label])
    ours = numpy_pass(model, params, x, y, dtype, training=training)
    theirs = tf_pass(model, params, x, y, dtype, training=training)
    rows = trace_rows(model, ours, theirs, x)
    # + 0.0 turns a loss of -0.0 (the minus of -log 1) into 0.0, so no "-0" is printed.
    result = Trace(model, source, int(label), label_source,
                   {"numpy": int(ours.logits.argmax()), "tf": int(theirs.logits.argmax())},
                   {"numpy": float(ours.loss) + 0.0, "tf": float(theirs.loss) + 0.0}, rows, ours,
                   theirs, x[0, ..., 0], dtype=dtype, training=training)
    if pictures:
        result.figures = draw(result)
    if out is not None:
        write_trace(result, Path(out))
    result.seconds = time.perf_counter() - started
    return result


def doc_link(folder: Path) -> str:
    """docs/derivations.md as seen from ``folder`` when this is a checkout, else the
    repository path."""
    if REPO_DERIVATIONS.is_file():
        return os.path.relpath(REPO_DERIVATIONS, folder.resolve())
    return DERIVATIONS


def draw(result: Trace) -> dict[str, Any]:
    """The trace's Figures by file name: ``NN-LAYER.png`` per layer and ``saliency.png``."""
    from twinnet.plots import plot_layer, plot_saliency

    figures = {}
    names = layer_names(result.model)
    for i, ((name, kind), row) in enumerate(zip(names, result.rows[1:-1], strict=True)):
        file = f"{i + 1:02d}-{name}.png"
        title = (f"{result.model}, layer {i + 1}: {name} ({kind}), output "
                 f"{shape(row['output_shape'])}; {result.source}, loss against {result.label} "
                 f"= {result.loss['numpy']:.3g} nats")
        note = (f"drawn from the NumPy twin; the TF twin's differ by at most "
                f"{row['max_activation_diff']:.1e} (output) and {row['max_gradient_diff']:.1e} (gradient)")
        figures[file] = plot_layer(title, result.numpy.outputs[i][0], result.numpy.grad_outputs[i][0],
                                   note=note)
        row["picture"] = file
    saliency = {"NumPy": result.numpy.grad_input[0, ..., 0], "TF": result.tf.grad_input[0, ..., 0]}
    figures["saliency.png"] = plot_saliency(
        result.image, saliency,
        f"{result.source}: saliency dL/dx for label {result.label} ({result.label_source})",
        note=coincide_note(saliency["NumPy"], saliency["TF"], result.dtype))
    result.rows[0]["picture"] = "saliency.png"
    return figures


def coincide_note(ours: np.ndarray, theirs: np.ndarray, dtype: str) -> str:
    """Whether two twins' pictures of one array would look the same, in words: they
    coincide where they differ by less than the comparison's gradient tolerance for
    ``dtype``, relative to the larger magnitude."""
    difference = max_abs_diff(ours, theirs)
    scale = float(np.max(np.abs(theirs))) or 1.0
    if difference <= TOLERANCES[dtype]["gradient"] * scale:
        return (f"the two maps coincide: they differ by at most {difference:.1e} "
                f"({difference / scale:.0e} of the largest value), far below what the colours show")
    return f"the maps differ by up to {difference:.1e} ({difference / scale:.1e} of the largest value)"


def write_trace(result: Trace, out: Path) -> None:
    """Write the figures, trace.md and trace.json into ``out``; trace.json last."""
    from twinnet.plots import save_figure
    from twinnet.util import write_json_atomic, write_text_atomic

    make_output_folder(out)
    for file, fig in result.figures.items():
        save_figure(fig, out / file, dpi=100)  # 12 inches: 1200 px
        result.files.append(str(out / file))
    write_text_atomic(out / "trace.md", result.markdown(doc_link(out)))
    result.files += [str(out / "trace.md"), str(out / "trace.json")]
    write_json_atomic(out / "trace.json", result.to_json())

