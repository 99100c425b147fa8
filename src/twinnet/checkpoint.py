"""Checkpoints: a training state saved to one file and read back exactly.

The state is a dict of sections, as the training loop assembles it from the
``state_dict()`` of each part (model parameters, optimizer, batch order, progress).
A section that is a dict may mix NumPy arrays and JSON-able values; anything else is
JSON-able. In ``checkpoint.npz``:

- each array member ``name`` of section ``s`` is the array ``s/name`` (parameter names
  hold slashes themselves: ``params/dense1/W``, ``optimizer/dense1/W/m``);
- everything else is one JSON string, ``state``.

The file is written atomically (temporary name, then rename), so a run killed at any
moment leaves either the previous checkpoint or the new one, and it loads with
``allow_pickle=False``. This module knows nothing of what the sections mean.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from twinnet.errors import TwinnetError
from twinnet.util import atomic_path

CHECKPOINT_NAME = "checkpoint.npz"


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


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The state ``save_checkpoint`` wrote; TwinnetError naming the file if unusable."""
    source = Path(path)
    if not source.is_file():
        raise TwinnetError(f"{source}: no checkpoint to resume from")
    try:
        with np.load(source, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        state = json.loads(str(arrays.pop("state")))
        for key, array in arrays.items():
            section, name = key.split("/", 1)
            state.setdefault(section, {})[name] = array
    except (OSError, ValueError, KeyError, EOFError, AttributeError, zipfile.BadZipFile) as exc:
        raise TwinnetError(f"{source}: unreadable checkpoint ({exc})") from None
    return state
