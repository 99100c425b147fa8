"""Checkpoints: everything needed to continue a run exactly where it stopped.

One file, ``checkpoint.npz``, written atomically (temporary name, then rename), so a
run killed at any moment leaves either the previous checkpoint or the new one:

- ``params/<name>``: the model parameters (canonical names and layouts);
- ``optimizer/<key>``: the optimizer slots (Adam's ``<name>/m``, ``<name>/v``, ``iterations``);
- ``order/perm``: the current pass's permutation of the training split;
- ``state``: JSON with the configuration, the last finished step, the position in the
  permutation, the data-order generator's state, the curves so far and the running sums
  of the current curve point.

It loads with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from twinnet.errors import TwinnetError
from twinnet.util import atomic_path

if TYPE_CHECKING:
    from twinnet.backend import Backend
    from twinnet.train import BatchOrder, TrainConfig

CHECKPOINT_NAME = "checkpoint.npz"


def save_checkpoint(path: str | os.PathLike, config: TrainConfig, step: int, model: Backend,
                    order: BatchOrder, progress: dict[str, Any]) -> None:
    """Write the state after ``step`` finished updates; ``progress`` holds the curves and
    running sums (plain JSON-able data)."""
    state = {
        "config": asdict(config),
        "step": step,
        "order_position": order.position,
        "order_rng": order.rng.bit_generator.state,
        **progress,
    }
    arrays = {f"params/{k}": v for k, v in model.params.items()}
    arrays.update({f"optimizer/{k}": np.asarray(v) for k, v in model.optimizer_state().items()})
    arrays["order/perm"] = order.perm
    arrays["state"] = np.array(json.dumps(state))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The checkpoint's JSON state and its arrays; TwinnetError naming the file if unusable."""
    source = Path(path)
    if not source.is_file():
        raise TwinnetError(f"{source}: no checkpoint to resume from")
    try:
        with np.load(source, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        state = json.loads(str(arrays.pop("state")))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise TwinnetError(f"{source}: unreadable checkpoint ({exc})") from None
    return state, arrays


def restore_checkpoint(arrays: dict[str, np.ndarray], state: dict[str, Any], model: Backend,
                       order: BatchOrder) -> None:
    """Put parameters, optimizer slots and data order back as they were saved."""
    from twinnet.weights import check_params

    params = {k.removeprefix("params/"): v for k, v in arrays.items() if k.startswith("params/")}
    check_params(model.model_name, params, "checkpoint")
    model.set_params(params)
    model.set_optimizer_state({k.removeprefix("optimizer/"): v for k, v in arrays.items()
                               if k.startswith("optimizer/")})
    order.perm = arrays["order/perm"]
    order.position = state["order_position"]
    order.rng.bit_generator.state = state["order_rng"]
