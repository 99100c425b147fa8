"""Pictures of runs and of one image's pass through a model, as matplotlib Figures.

Every function returns a ``matplotlib.figure.Figure`` (a notebook shows it as it is) and,
given a ``path``, also writes it there as a PNG, atomically. Figures are made without
pyplot and no backend is selected, so importing this module changes nothing in a
notebook and writing files needs no display.
"""

from __future__ import annotations

import math
import os

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from twinnet.util import atomic_path


def save_figure(fig: Figure, path: str | os.PathLike | None, dpi: int = 110) -> Figure:
    """Write ``fig`` to ``path`` as a PNG, atomically, if a path is given; returns ``fig``."""
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    return fig


def plot_curves(curves: dict, title: str, path: str | os.PathLike | None = None) -> Figure:
    """Accuracy and cross-entropy against step, training batches and validation.

    ``curves`` holds equal-length lists ``step``, ``train_loss``, ``train_accuracy``,
    ``val_loss`` and ``val_accuracy``. The accuracy axis spans the data plus a margin.
    """
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    steps = curves["step"]
    accuracies = [np.asarray(curves[key], dtype=float) * 100 for key in ("train_accuracy", "val_accuracy")]
    ax_acc.plot(steps, accuracies[0], label="training batches")
    ax_acc.plot(steps, accuracies[1], label="validation")
    ax_acc.set(xlabel="step", ylabel="accuracy (%)", title="accuracy")
    ax_acc.set_ylim(*fitted_limits(accuracies))
    ax_loss.plot(steps, curves["train_loss"], label="training batches")
    ax_loss.plot(steps, curves["val_loss"], label="validation")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="cross-entropy", yscale="log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return save_figure(fig, path)


# An axis spans its data and this fraction of the data's span beyond each end, and at
# least MIN_MARGIN, so a flat line (a training accuracy stuck at 100%) stays visible.
MARGIN = 0.05
MIN_MARGIN = 0.1


def fitted_limits(values: list[np.ndarray]) -> tuple[float, float]:
    """(low, high) axis limits around every finite value of ``values``: their minimum and
    maximum, each widened by MARGIN of their span (at least MIN_MARGIN)."""
    finite = np.concatenate([np.ravel(v) for v in values])
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    margin = max((high - low) * MARGIN, MIN_MARGIN)
    return low - margin, high + margin


# Two runs' curves coincide when they agree to float32 rounding: drawn on the same axes,
# the line drawn later hides the other entirely, so the plot has to say so.
COINCIDE_RTOL = 1e-6


def coincidence_note(arrays_by_label: dict[str, np.ndarray], unit: str = "") -> str | None:
    """A legend note naming each pair of labels whose arrays coincide (equal shape, within
    COINCIDE_RTOL), and which one hides the other (the later label is drawn on top); None
    when no pair does. ``arrays_by_label`` holds what each label plots, in drawing order."""
    labels = list(arrays_by_label)
    notes = []
    for i, first in enumerate(labels):
        for later in labels[i + 1:]:
            a, b = arrays_by_label[first], arrays_by_label[later]
            if a.shape != b.shape or not np.allclose(a, b, rtol=COINCIDE_RTOL, atol=0, equal_nan=True):
                continue
            largest = float(np.nanmax(np.abs(a - b), initial=0.0))
            how = "identical" if largest == 0 else f"within {largest:.1g}{unit} of each other"
            notes.append(f"{first} and {later} are {how}:\n{first}'s lines lie under {later}'s")
    return "\n".join(notes) or None


def plot_confusion(confusion: list[list[int]] | np.ndarray, title: str,
                   path: str | os.PathLike | None = None) -> Figure:
    """Annotated 10x10 heatmap; rows = true digit, columns = predicted digit."""
    matrix = np.asarray(confusion)
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.subplots()
    # Log colour scale so the few errors stay visible beside the large diagonal.
    image = ax.imshow(np.log1p(matrix), cmap="Blues")
    threshold = np.log1p(matrix).max() / 2
    for (row, col), count in np.ndenumerate(matrix):
        colour = "white" if np.log1p(count) > threshold else "black"
        ax.text(col, row, str(count), ha="center", va="center", fontsize=8, color=colour)
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted digit", ylabel="true digit")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"{title}\ntest accuracy {accuracy:.2%} ({np.trace(matrix)}/{matrix.sum()})")
    fig.colorbar(image, ax=ax, label="log(1 + count)")
    return save_figure(fig, path)


def plot_twins(curves_by_run: dict[str, dict | list[dict]], title: str,
               path: str | os.PathLike | None = None) -> Figure:
    """Both twins of one model on the same axes: validation (solid) and training-batch
    (dotted) accuracy and cross-entropy against step.

    Keys of ``curves_by_run`` are labels; each value is a run's curves dict (as in
    ``plot_curves``) or a list of them, one per seed, all with the same steps. Lines are
    the mean over the seeds; with several seeds a shaded band spans the validation
    curves' minimum to maximum. Where two runs' curves coincide (``coincidence_note``),
    the legend says so. The accuracy axis spans the data after the first tenth of the
    steps (the first points sit far below the rest and would flatten the plot).
    """
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    shown = []  # the accuracy values plotted after the first tenth of the steps
    plotted: dict[str, dict[str, np.ndarray]] = {"accuracy": {}, "loss": {}}
    for (label, runs), colour in zip(curves_by_run.items(), ("C0", "C1", "C2", "C3"), strict=False):
        seeds = [runs] if isinstance(runs, dict) else runs
        steps = seeds[0]["step"]
        skip = len(steps) // 10
        # rows: seeds, columns: curve points
        stacked = {key: np.asarray([curves[key] for curves in seeds], dtype=float)
                   for key in ("val_accuracy", "train_accuracy", "val_loss", "train_loss")}
        suffix = f" (mean of {len(seeds)} seeds)" if len(seeds) > 1 else ""
        for ax, key, scale in ((ax_acc, "accuracy", 100), (ax_loss, "loss", 1)):
            val, train = stacked[f"val_{key}"] * scale, stacked[f"train_{key}"] * scale
            plotted[key][label] = np.stack([val, train])
            ax.plot(steps, val.mean(axis=0), color=colour, label=f"{label} validation{suffix}")
            ax.plot(steps, train.mean(axis=0), color=colour, linestyle=":",
                    label=f"{label} training batches")
            if len(seeds) > 1:
                ax.fill_between(steps, val.min(axis=0), val.max(axis=0), color=colour, alpha=0.25,
                                linewidth=0)
        shown += [stacked["val_accuracy"][:, skip:] * 100,
                  stacked["train_accuracy"].mean(axis=0)[skip:] * 100]
    ax_acc.set_ylim(*fitted_limits(shown))
    ax_acc.set(xlabel="step", ylabel="accuracy (%)", title="accuracy")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="cross-entropy", yscale="log")
    for ax, key, unit in ((ax_acc, "accuracy", " pp"), (ax_loss, "loss", "")):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title=coincidence_note(plotted[key], unit), title_fontsize=8, alignment="left")
    fig.suptitle(title)
    return save_figure(fig, path)


def vector_grid(n: int) -> tuple[int, int]:
    """(rows, columns) to draw ``n`` units as a picture, row by row: the most nearly square
    grid that ``n`` fills exactly (128 -> 8x16, 256 -> 16x16, 784 -> 28x28); a count with no
    such grid (a prime, say) gets ceil(sqrt(n)) columns and a partly empty last row."""
    side = math.ceil(math.sqrt(n))
    columns = next((c for c in range(side, 2 * side + 1) if n % c == 0), side)
    return math.ceil(n / columns), columns


def mosaic(values: np.ndarray) -> np.ndarray:
    """One image's array as a 2-D picture: (H, W, C) becomes the C channel maps tiled
    in a grid of ceil(sqrt(C)) columns, one NaN pixel between tiles; a vector (n,) is
    laid out row by row in ``vector_grid(n)`` (NaN-padded only where n fills no grid)."""
    if values.ndim == 1:
        rows, columns = vector_grid(values.size)
        padded = np.full(rows * columns, np.nan)
        padded[: values.size] = values
        return padded.reshape(rows, columns)
    height, width, channels = values.shape
    cols = math.ceil(math.sqrt(channels))
    rows = math.ceil(channels / cols)
    tiled = np.full((rows * (height + 1) - 1, cols * (width + 1) - 1), np.nan)
    for c in range(channels):
        r, q = divmod(c, cols)
        tiled[r * (height + 1): r * (height + 1) + height, q * (width + 1): q * (width + 1) + width] = \
            values[..., c]
    return tiled


def layout_note(values: np.ndarray) -> str:
    """How ``mosaic`` lays out ``values``, in words, for a figure's caption."""
    if values.ndim == 1:
        if values.size <= BARS_UP_TO:
            return f"{values.size} values, one bar each"
        rows, columns = vector_grid(values.size)
        empty = rows * columns - values.size
        blank = {0: "", 1: " (the last cell is empty)"}.get(empty, f" (the last {empty} cells are empty)")
        return f"{values.size} units as a {rows}x{columns} grid, row by row{blank}"
    height, width, channels = values.shape
    columns = math.ceil(math.sqrt(channels))
    return (f"{channels} channels, one {height}x{width} map each, {columns} to a row"
            if channels > 1 else f"one {height}x{width} map")


def scaled(values: np.ndarray) -> tuple[np.ndarray, str]:
    """``values`` divided by a power of ten that brings their largest magnitude into [1, 1000),
    and that factor as text for an axis label (``"×10⁻⁶"``; empty when no scaling is needed).

    Written into the label rather than left to matplotlib, whose offset text ("1e-6")
    lands on top of a colorbar."""
    top = float(np.nanmax(np.abs(values))) if values.size else 0.0
    if top == 0.0 or not math.isfinite(top) or 1e-2 <= top < 1e4:
        return values, ""
    exponent = math.floor(math.log10(top))
    return values / 10.0 ** exponent, f"×10$^{{{exponent}}}$"


BARS_UP_TO = 16  # vectors up to this length (the logits) are drawn as bars


def _show(fig: Figure, ax, values: np.ndarray, signed: bool, title: str, quantity: str) -> None:  # noqa: ANN001
    """Draw one image's array on ``ax``: a bar per entry for a short vector (logits),
    else ``mosaic`` as a heat map; signed values on a diverging scale centred on 0.
    ``quantity`` names what is drawn, with its unit, for the value axis or colorbar."""
    ax.set_title(f"{title}\n{layout_note(values)}", fontsize=11)
    values, factor = scaled(np.asarray(values, np.float64))
    label = f"{quantity} {factor}".strip()
    if values.ndim == 1 and values.size <= BARS_UP_TO:
        ax.bar(range(values.size), values, color=np.where(values >= 0, "C3", "C0"))
        ax.set_xticks(range(values.size))
        ax.set_xlabel("digit (logit index)")
        ax.set_ylabel(label)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.ticklabel_format(axis="y", useOffset=False)
        return
    picture = mosaic(values)
    top = float(np.nanmax(np.abs(picture))) or 1.0
    cmap = colormaps["RdBu_r" if signed else "viridis"].with_extremes(bad="white")  # NaN: between tiles
    image = ax.imshow(picture, cmap=cmap, vmin=-top if signed else 0, vmax=top, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    bar = fig.colorbar(image, ax=ax, shrink=0.85)
    bar.set_label(label)
    bar.formatter.set_useOffset(False)


def plot_layer(title: str, activation: np.ndarray, gradient: np.ndarray,
               path: str | os.PathLike | None = None, note: str = "") -> Figure:
    """One layer for one image: its output ``activation`` and the gradient flowing back
    into it, dL/d(output), side by side; both (H, W, C) (a grid of channel maps) or (n,).
    ``note`` is a line printed under the title. 1200 px wide as written."""
    # A fixed layout: constrained layout would take half the drawing time of a trace.
    fig = Figure(figsize=(12, 5.2))
    fig.subplots_adjust(left=0.06, right=0.97, bottom=0.1, top=0.8, wspace=0.2)
    ax_act, ax_grad = fig.subplots(1, 2)
    _show(fig, ax_act, activation, signed=bool(np.min(activation) < 0), title="activation (output)",
          quantity="output value")
    _show(fig, ax_grad, gradient, signed=True, title="gradient flowing back, dL/d(output)",
          quantity="dL/d(output), nats per unit")
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=12)
    return save_figure(fig, path, dpi=100)


def plot_saliency(image: np.ndarray, saliency: dict[str, np.ndarray], title: str,
                  path: str | os.PathLike | None = None, note: str = "") -> Figure:
    """The input ``image`` (28, 28) and each twin's saliency dL/dx (28, 28), by label;
    ``note`` (e.g. that the maps coincide) goes under the title. 1200 px wide as written."""
    fig = Figure(figsize=(12, 4.4))
    fig.subplots_adjust(left=0.02, right=0.93, bottom=0.12, top=0.78, wspace=0.35)
    axes = fig.subplots(1, 1 + len(saliency))
    shown = axes[0].imshow(image, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("input, 28x28 pixels", fontsize=11)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    fig.colorbar(shown, ax=axes[0], shrink=0.85).set_label("pixel value (1 = ink)")
    for ax, (label, grad) in zip(axes[1:], saliency.items(), strict=True):
        _show(fig, ax, grad[..., None], signed=True, title=f"dL/dx, {label} twin",
              quantity="dL/dx, nats per unit of pixel")
    # The colour legend in words: the sign of dL/dx says which way to change a pixel.
    fig.text(0.5, 0.025, "blue: brightening this pixel lowers the loss (the image looks more like the "
             "label)   ·   red: brightening it raises the loss   ·   white: no effect",
             ha="center", fontsize=11)
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=12)
    return save_figure(fig, path, dpi=100)
