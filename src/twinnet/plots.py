"""The two pictures of a run: learning curves and the test confusion matrix."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from twinnet.util import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_curves(curves: dict, title: str, path: str | os.PathLike) -> None:
    """Accuracy and cross-entropy against step, training batches and validation.

    ``curves`` holds equal-length lists ``step``, ``train_loss``, ``train_accuracy``,
    ``val_loss`` and ``val_accuracy``.
    """
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    steps = curves["step"]
    ax_acc.plot(steps, np.asarray(curves["train_accuracy"]) * 100, label="training batches")
    ax_acc.plot(steps, np.asarray(curves["val_accuracy"]) * 100, label="validation")
    ax_acc.set(xlabel="step", ylabel="accuracy (%)", title="accuracy")
    low = min(min(curves["val_accuracy"], default=1), min(curves["train_accuracy"], default=1))
    ax_acc.set_ylim(max(0.0, low * 100 - 1), 100.5)
    ax_loss.plot(steps, curves["train_loss"], label="training batches")
    ax_loss.plot(steps, curves["val_loss"], label="validation")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="cross-entropy", yscale="log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    _save(fig, path)


def plot_confusion(confusion: list[list[int]] | np.ndarray, title: str,
                   path: str | os.PathLike) -> None:
    """Annotated 10x10 heatmap; rows = true digit, columns = predicted digit."""
    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), layout="constrained")
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
    _save(fig, path)


def plot_twins(curves_by_run: dict[str, list[dict]], title: str, path: str | os.PathLike) -> None:
    """Both twins of one model on the same axes: validation (solid) and training-batch
    (dotted) accuracy and cross-entropy against step.

    Keys of ``curves_by_run`` are labels; each value holds one curves dict per seed (as in
    ``plot_curves``, all with the same steps). Lines are the mean over the seeds; with
    several seeds a shaded band spans the validation curves' minimum to maximum.
    """
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    lows = []
    for (label, seeds), colour in zip(curves_by_run.items(), ("C0", "C1", "C2", "C3"), strict=False):
        steps = seeds[0]["step"]
        # rows: seeds, columns: curve points
        stacked = {key: np.asarray([curves[key] for curves in seeds], dtype=float)
                   for key in ("val_accuracy", "train_accuracy", "val_loss", "train_loss")}
        suffix = f" (mean of {len(seeds)} seeds)" if len(seeds) > 1 else ""
        for ax, key, scale in ((ax_acc, "accuracy", 100), (ax_loss, "loss", 1)):
            val, train = stacked[f"val_{key}"] * scale, stacked[f"train_{key}"] * scale
            ax.plot(steps, val.mean(axis=0), color=colour, label=f"{label} validation{suffix}")
            ax.plot(steps, train.mean(axis=0), color=colour, linestyle=":",
                    label=f"{label} training batches")
            if len(seeds) > 1:
                ax.fill_between(steps, val.min(axis=0), val.max(axis=0), color=colour, alpha=0.25,
                                linewidth=0)
        # Skip the first points: they sit far below the rest and would flatten the plot.
        lows.append(stacked["val_accuracy"][:, len(steps) // 10:].min(initial=1))
    ax_acc.set_ylim(max(0.0, min(lows, default=1) * 100 - 1), 100.2)
    ax_acc.set(xlabel="step", ylabel="accuracy (%)", title="accuracy")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="cross-entropy", yscale="log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, path)
