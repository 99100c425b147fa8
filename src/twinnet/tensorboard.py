"""TensorBoard scalars for a finished run, written from its recorded curves.

Writing after the run, from ``metrics.json``'s curves, means both twins (and runs the
report reuses) are logged the same way, and the training loop needs no hook for it.
Needs TensorFlow and TensorBoard (the tf extra).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

from twinnet.environment import install_command
from twinnet.errors import TwinnetError

SCALARS = {
    "train_loss": "cross_entropy/train_batches",
    "val_loss": "cross_entropy/validation",
    "train_accuracy": "accuracy/train_batches",
    "val_accuracy": "accuracy/validation",
}


def check_log_dir(log_dir: str | os.PathLike) -> None:
    """Check ``--tensorboard DIR`` before any work: TensorFlow and TensorBoard are installed
    and DIR is (or can be made) a folder this process can write into. TwinnetError, one
    line naming DIR, if not. Creates DIR, as ``--out`` is created."""
    from twinnet.util import os_reason

    missing = [name for name in ("tensorflow", "tensorboard") if importlib.util.find_spec(name) is None]
    if missing:
        raise TwinnetError("--tensorboard needs TensorFlow and TensorBoard: pip install 'twinnet[tf]'")
    target = Path(log_dir)
    if target.exists() and not target.is_dir():
        raise TwinnetError(f"--tensorboard {target}: is a file, not a folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=target)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise TwinnetError(f"--tensorboard {target}: a part of the path is a file") from None
    except OSError as exc:
        raise TwinnetError(f"--tensorboard {target}: cannot write there ({os_reason(exc)})") from None


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
                           f"{install_command('tf')}") from None
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
