"""Checkpoints: a training state saved to one file and read back exactly.

The state is a dict of sections, as the training loop assembles it from the
``state_dict()`` of each part (model parameters, optimizer, batch order, progress).
A section that is a dict may mix NumPy arrays and JSON-able values; anything else is
JSON-able. In ``checkpoint.npz``:

- each array member ``name`` of section ``s`` is the array ``s/name`` (parameter names
  hold slashes themselves: ``params/dense1/W``, ``optimizer/dense1/W/m``);
- everything else is one JSON string, ``state``;
- ``sha256``, the integrity hash of all the other members (``content_sha256``), as
  ``metrics.json`` carries one of its weights. A checkpoint whose contents do not match it
  (edited, damaged, or written by a twinnet before the hash existed) is refused: resuming
  from a state that is not the one saved would silently give another run.

The file is written atomically (temporary name, then rename), so a run killed at any
moment leaves either the previous checkpoint or the new one. It is read back by the
bounded reader ``twinnet.weights.read_npz`` (nothing unpickled, memory bounded by a
total budget, each member by a per-key limit). ``load_checkpoint`` reads a training
checkpoint that way and checks what this module knows: the sections, the configuration,
the parameters and the optimizer slots; the loop's parts check their own sections (the
data order, the progress) as they load them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from twinnet.config import ConfigError, TrainConfig
from twinnet.data import TRAIN_SIZE
from twinnet.errors import TwinnetError
from twinnet.models import MODEL_NAMES, SpecError, is_spec_file, is_trainable, param_shapes, pin_spec
from twinnet.util import atomic_path, is_int
from twinnet.weights import SPEC_MAX_MEMBERS, SPEC_MAX_TOTAL_BYTES, WEIGHTS_ALLOWED, check_params, read_npz

CHECKPOINT_NAME = "checkpoint.npz"
# The ``state`` member: JSON in a 0-d unicode array, 4 bytes per character (curves of a
# run with a point every step for 10,000 steps take about 1 MB of JSON).
STATE_MAX_BYTES = 16 << 20
# Without the caller's limits: any key, all members together within this budget.
DEFAULT_MAX_TOTAL_BYTES = 64 << 20
DEFAULT_MAX_MEMBERS = 256
HASH_KEY = "sha256"


def content_sha256(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 (hex) of a checkpoint's members but ``sha256`` itself: each member's name,
    dtype, shape and C-order bytes, in the order of the sorted names."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        if key == HASH_KEY:
            continue
        array = np.ascontiguousarray(arrays[key])
        digest.update(json.dumps([key, array.dtype.str, list(array.shape)]).encode())
        digest.update(array.tobytes() if array.dtype.kind != "U" else str(array).encode("utf-8"))
    return digest.hexdigest()


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
    arrays[HASH_KEY] = np.array(content_sha256(arrays))
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
        if key == HASH_KEY:
            return 4 * 64
        if "/" not in key.strip("/"):
            return None
        return max_total_bytes if array_limit is None else array_limit(key)

    arrays = read_npz(source, str(source), limit_of, max_total_bytes=max_total_bytes,
                      max_members=max_members, error=CheckpointError)
    check_integrity(arrays, source)
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


def check_integrity(arrays: dict[str, np.ndarray], source: Path) -> None:
    """CheckpointError unless ``arrays`` holds ``sha256`` and it matches the other members
    (``content_sha256``); removes it from ``arrays``."""
    stored = arrays.pop(HASH_KEY, None)
    if stored is None:
        raise CheckpointError(f"{source}: no integrity hash ('{HASH_KEY}'): written before "
                              "checkpoints carried one, or not by twinnet; it cannot be trusted "
                              "to resume from: start the run over (train --force)")
    if stored.shape != () or stored.dtype.kind != "U" or str(stored) != content_sha256(arrays):
        raise CheckpointError(f"{source}: contents do not match the checkpoint's integrity hash "
                              "(edited or damaged); refusing to resume from it: start the run over "
                              "(train --force)")


# -- training checkpoints: limits and the checks of the sections this module knows ------

SECTIONS = ("config", "step", "params", "optimizer", "order", "progress")
# A run of a spec file keeps the spec it trains (its TOML table) in this section, so that a
# resume trains that spec whatever the file holds by then.
SPEC_SECTION = "spec"
MAX_PARAMS = max(len(param_shapes(model)) for model in MODEL_NAMES)
MAX_PARAM_BYTES = max(sum(4 * math.prod(s) for s in param_shapes(m).values()) for m in MODEL_NAMES)
CHECKPOINT_MAX_MEMBERS = 3 * MAX_PARAMS + 4  # params, Adam's m and v, iterations, perm, state, sha256
CHECKPOINT_MAX_TOTAL_BYTES = (STATE_MAX_BYTES + 3 * MAX_PARAM_BYTES + 8 * TRAIN_SIZE
                              + 4096 * CHECKPOINT_MAX_MEMBERS)


def checkpoint_array_limit(key: str) -> int | None:
    """Most data bytes a checkpoint's array ``key`` may hold (no larger than any model's
    parameter of that name, float32; 55,000 int64 for the data order), None if unknown."""
    section, _, name = key.partition("/")
    if section == "params":
        return WEIGHTS_ALLOWED.get(name) if name != "meta" else None
    if section == "optimizer":
        if name == "iterations":
            return 8
        param, _, slot = name.rpartition("/")
        return WEIGHTS_ALLOWED.get(param) if slot in ("m", "v") and param != "meta" else None
    if key == "order/perm":
        return 8 * TRAIN_SIZE
    return None


def load_checkpoint(path: str | os.PathLike) -> tuple[TrainConfig, dict[str, Any]]:
    """The configuration and the sections of the training checkpoint at ``path``.

    Read in bounded memory (CHECKPOINT_MAX_TOTAL_BYTES, per-key limits of
    ``checkpoint_array_limit``). CheckpointError (one line naming the file) for missing or
    extra sections, a configuration that fails TrainConfig's checks, a step out of range,
    parameters or optimizer slots of the wrong keys, shapes, dtypes or values.
    """
    try:
        state = read_checkpoint(path, checkpoint_array_limit, max_total_bytes=CHECKPOINT_MAX_TOTAL_BYTES,
                                max_members=CHECKPOINT_MAX_MEMBERS)
    except CheckpointError as refused:  # perhaps a model from a spec file, larger than the four
        state = read_spec_checkpoint(path, refused)
    try:
        expect_keys(state, SECTIONS + ((SPEC_SECTION,) if SPEC_SECTION in state else ()), "")
        if not isinstance(state["config"], dict):
            raise ValueError(f"config is not a table: {state['config']!r}"[:200])
        try:
            config = TrainConfig(**state["config"])
        except (ConfigError, TypeError) as exc:  # TypeError: missing or unknown fields
            raise ValueError(f"config: {exc}") from None
        pin_stored_spec(config, state.get(SPEC_SECTION), path)
        step = state["step"]
        if not is_int(step) or not 1 <= step <= config.steps:
            raise ValueError(f"step must be an integer from 1 to {config.steps}, got {step!r}"[:200])
        check_optimizer(state["optimizer"], config, f"{path}: optimizer")
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    check_params(config.model, state["params"], f"{path}: params")
    return config, state


def pin_stored_spec(config: TrainConfig, document: Any, path: str | os.PathLike) -> None:
    """Make the spec a checkpoint stores the spec of its model (``models.pin_spec``), so that
    the run resumes with the layers it trained, whatever the spec file holds now. ValueError
    for a checkpoint of a spec file without a stored spec, or one that cannot be built."""
    if not is_spec_file(config.model):
        if document is not None:
            raise ValueError(f"{SPEC_SECTION}: a run of the built-in model {config.model} stores no spec")
        return
    if document is None:
        raise ValueError(f"holds no copy of the spec {config.model} (written by a twinnet before "
                         "checkpoints kept one), so it cannot tell whether the file was edited since; "
                         "start the run over (train --force)")
    try:
        pin_spec(config.model, document, f"{path}: its stored spec")
    except SpecError as exc:
        raise ValueError(str(exc).removeprefix(f"{path}: ")) from None


def read_spec_checkpoint(path: str | os.PathLike, refused: CheckpointError) -> dict[str, Any]:
    """The state of a checkpoint of a model from a spec file: its ``state`` read alone under
    loose bounds on the directory, then every array under the exact bounds of the model its
    configuration names. Where that is not a spec file's model, ``refused`` (the error under
    the four models' bounds) is raised as it was."""
    def loose(key: str) -> int | None:
        if key in ("state", HASH_KEY):
            return STATE_MAX_BYTES
        return SPEC_MAX_TOTAL_BYTES if key.partition("/")[0] in ("params", "optimizer", "order") else None

    try:
        text = read_npz(path, str(path), loose, max_total_bytes=SPEC_MAX_TOTAL_BYTES,
                        max_members=SPEC_MAX_MEMBERS * 3, error=CheckpointError, only="state").get("state")
        plain = json.loads(str(text))
        config = TrainConfig(**plain["config"])
    except (CheckpointError, ConfigError, ValueError, TypeError, KeyError, RecursionError):
        raise refused from None
    if not is_spec_file(config.model):
        raise refused
    try:  # the exact bounds are those of the spec the run trains, not the file's now
        pin_stored_spec(config, plain.get(SPEC_SECTION), path)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    shapes = {key: 4 * math.prod(shape) for key, shape in param_shapes(config.model).items()}
    exact = {**{f"params/{k}": n for k, n in shapes.items()},
             **{f"optimizer/{k}/{slot}": n for k, n in shapes.items() for slot in ("m", "v")},
             "optimizer/iterations": 8, "order/perm": 8 * TRAIN_SIZE}
    return read_checkpoint(path, exact.get, max_total_bytes=STATE_MAX_BYTES + sum(exact.values())
                           + 4096 * (len(exact) + 2), max_members=len(exact) + 2)


def check_optimizer(slots: Any, config: TrainConfig, source: str) -> None:
    """``iterations`` (0-d integer, at least 0), and for Adam ``<param>/m`` and ``/v``
    (finite float32 of the parameter's shape) for every trainable parameter."""
    shapes = {key: shape for key, shape in param_shapes(config.model).items() if is_trainable(key)}
    keys = {"iterations"}
    if config.optimizer == "adam":
        keys |= {f"{param}/{slot}" for param in shapes for slot in ("m", "v")}
    expect_keys(slots, keys, "optimizer")
    iterations = slots["iterations"]
    if not (isinstance(iterations, np.ndarray) and iterations.shape == () and iterations.dtype.kind in "iu"
            and int(iterations) >= 0):
        raise ValueError("optimizer: iterations must be a non-negative integer")
    if config.optimizer == "adam":
        for slot in ("m", "v"):
            check_params(config.model, {name: slots[f"{name}/{slot}"] for name in shapes}, f"{source} {slot}",
                         expected=shapes)


def expect_keys(table: Any, keys: tuple[str, ...] | set[str], where: str) -> None:
    """ValueError ("WHERE: missing ...") unless ``table`` is a dict with exactly ``keys``."""
    prefix = f"{where}: " if where else ""
    if not isinstance(table, dict):
        raise ValueError(f"{prefix}not a table")
    if missing := sorted(set(keys) - set(table)):
        raise ValueError(f"{prefix}missing {', '.join(missing)}")
    if extra := sorted(set(table) - set(keys)):
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise ValueError(f"{prefix}unexpected key(s) {shown}"[:300])
