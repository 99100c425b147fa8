"""Checkpoints: a training state saved to one file and read back exactly.

The state is a dict of sections, as the training loop assembles it from the
``state_dict()`` of each part (model parameters, optimizer, batch order, progress).
A section that is a dict may mix NumPy arrays and JSON-able values; anything else is
JSON-able. In ``checkpoint.npz``:

- each array member ``name`` of section ``s`` is the array ``s/name`` (parameter names
  hold slashes themselves: ``params/dense1/W``, ``optimizer/dense1/W/m``);
- everything else is one JSON string, ``state``.

The file is written atomically (temporary name, then rename), so a run killed at any
moment leaves either the previous checkpoint or the new one. It is read back by the
bounded reader ``twinnet.weights.read_npz`` (nothing unpickled, memory bounded by a
total budget, each member by a per-key limit the caller gives). This module knows nothing
of what the sections mean; ``twinnet.train.load_checkpoint`` gives the limits and checks
the sections.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from twinnet.errors import TwinnetError
from twinnet.util import atomic_path
from twinnet.weights import read_npz

CHECKPOINT_NAME = "checkpoint.npz"
# The ``state`` member: JSON in a 0-d unicode array, 4 bytes per character (curves of a
# run with a point every step for 10,000 steps take about 1 MB of JSON).
STATE_MAX_BYTES = 16 << 20
# Without the caller's limits: any key, all members together within this budget.
DEFAULT_MAX_TOTAL_BYTES = 64 << 20
DEFAULT_MAX_MEMBERS = 256


class CheckpointError(TwinnetError):
    """A checkpoint that cannot be used; the message begins with the file's name."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` (sections as described in the module docstring) to ``path``."""
    arrays: dict[str, np.ndarray] = {}
    plain: dict[str, Any] = {}
    for section, value in state.items():
        if isinstance(value, dict):
            arrays.update({f"{section}/{key}": item for key, item in value.items()
                           if isinstance(item, np.ndarray)})
            plain[section] = {key: item for key, item in value.items()
                              if not isinstance(item, np.ndarray)}
        else:
            plain[section] = value
    arrays["state"] = np.array(json.dumps(plain))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def read_checkpoint(path: str | os.PathLike, array_limit: Callable[[str], int | None] | None = None, *,
                    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
                    max_members: int = DEFAULT_MAX_MEMBERS) -> dict[str, Any]:
    """The state ``save_checkpoint`` wrote, read in bounded memory.

    ``array_limit(key)`` gives the most data bytes the array ``key`` (``section/name``)
    may hold, or None to refuse the key; without it any ``section/name`` key is allowed
    within ``max_total_bytes``. Raises CheckpointError, one line naming the file, if it
    is missing, not a regular file, damaged, over a limit, or ``state`` is not a JSON
    object. What the sections hold is the caller's to check.
    """
    source = Path(path)
    if not source.exists():
        raise CheckpointError(f"{source}: no checkpoint to resume from")

    def limit_of(key: str) -> int | None:
        if key == "state":
            return STATE_MAX_BYTES
        if "/" not in key.strip("/"):
            return None
        return max_total_bytes if array_limit is None else array_limit(key)

    arrays = read_npz(source, str(source), limit_of, max_total_bytes=max_total_bytes,
                      max_members=max_members, error=CheckpointError)
    text = arrays.pop("state", None)
    if text is None or text.shape != () or text.dtype.kind != "U":
        raise CheckpointError(f"{source}: no 'state' string; not a twinnet checkpoint")
    try:
        state = json.loads(str(text))
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise CheckpointError(f"{source}: unreadable 'state' ({' '.join(str(exc).split())})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: 'state' is not a JSON object")
    for key, array in arrays.items():
        section, name = key.split("/", 1)
        if not isinstance(state.setdefault(section, {}), dict):
            raise CheckpointError(f"{source}: section {section!r} is both arrays and a value")
        state[section][name] = array
    return state
