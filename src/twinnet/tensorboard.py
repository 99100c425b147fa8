"""TensorBoard scalars for a finished run, written from its recorded curves.

Writing after the run, from ``metrics.json``'s curves, means both twins (and runs the
report reuses) are logged the same way, and the training loop needs no hook for it.
Needs TensorFlow and TensorBoard (``pip install 'twinnet[tf]'``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twinnet.errors import TwinnetError

SCALARS = {
    "train_loss": "cross_entropy/train_batches",
    "val_loss": "cross_entropy/validation",
    "train_accuracy": "accuracy/train_batches",
    "val_accuracy": "accuracy/validation",
}


def write_tensorboard(metrics: dict[str, Any], log_dir: str | os.PathLike, run_name: str) -> Path:
    """Log the run's curves under ``log_dir/run_name``; returns that folder.

    Tags: ``accuracy/{train_batches,validation}`` and ``cross_entropy/{...}``, so the two
    twins of a model show as two runs on the same charts.
    """
    try:
        import tensorboard  # noqa: F401  (tf.summary.scalar needs it)

        from twinnet.quiet import import_tensorflow

        tf = import_tensorflow()
    except ImportError:
        raise TwinnetError("--tensorboard needs TensorFlow and TensorBoard: "
                           "pip install 'twinnet[tf]'") from None
    target = Path(log_dir) / run_name
    writer = tf.summary.create_file_writer(str(target))
    curves = metrics["curves"]
    with writer.as_default():
        for index, step in enumerate(curves["step"]):
            for key, tag in SCALARS.items():
                tf.summary.scalar(tag, curves[key][index], step=step)
        for split, figures in metrics["final"].items():
            tf.summary.scalar(f"final_accuracy/{split}", figures["accuracy"], step=curves["step"][-1])
    writer.close()
    return target
