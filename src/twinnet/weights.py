"""The canonical weights format: one ``.npz`` that either twin writes and reads.

Keys are ``<layer>/W`` and ``<layer>/b`` (float32, layouts of
``twinnet.models.param_shapes``) plus ``meta``, a 0-d string array holding JSON
(model, backend, steps, optimizer, learning rate, seed, package version).
Files load with ``allow_pickle=False``: nothing in a weights file is ever unpickled.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from twinnet.errors import TwinnetError
from twinnet.models import MODEL_NAMES, param_shapes
from twinnet.util import atomic_path


class WeightsError(TwinnetError):
    """A weights file that cannot be used: unreadable, wrong model, bad keys or values."""


def check_params(model: str, params: dict[str, np.ndarray], source: str = "parameters") -> None:
    """Raise WeightsError unless ``params`` has exactly the keys, shapes and dtype of ``model``,
    with finite values. ``source`` names the file in the message."""
    expected = param_shapes(model)
    missing = [k for k in expected if k not in params]
    extra = [k for k in params if k not in expected]
    if missing:
        raise WeightsError(f"{source}: missing {', '.join(missing)} for model {model!r}")
    if extra:
        raise WeightsError(f"{source}: unexpected key(s) {', '.join(extra)} for model {model!r}")
    for key, shape in expected.items():
        value = params[key]
        if value.dtype != np.float32:
            raise WeightsError(f"{source}: {key} has dtype {value.dtype}, expected float32")
        if value.shape != shape:
            raise WeightsError(f"{source}: {key} has shape {value.shape}, expected {shape}")
        if not np.all(np.isfinite(value)):
            raise WeightsError(f"{source}: {key} contains NaN or infinite values")


def save_weights(path: str | os.PathLike, model: str, params: dict[str, np.ndarray],
                 meta: dict[str, Any]) -> None:
    """Write ``params`` and ``meta`` (JSON-able; ``model`` is added) to ``path`` atomically."""
    check_params(model, params)
    arrays = {key: np.ascontiguousarray(params[key], dtype=np.float32) for key in param_shapes(model)}
    arrays["meta"] = np.array(json.dumps({"model": model, **meta}, sort_keys=True))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def load_weights(path: str | os.PathLike,
                 expected_model: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a weights file; returns (params, meta).

    Raises WeightsError if the file is missing, is not an npz, holds pickled
    (object) arrays, lacks a readable ``meta``, names an unknown model or another
    model than ``expected_model``, or fails ``check_params``.
    """
    source = str(path)
    if not Path(path).is_file():
        raise WeightsError(f"{source}: no such file")
    if not zipfile.is_zipfile(path):
        raise WeightsError(f"{source}: not a valid .npz weights file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise WeightsError(f"{source}: holds pickled object arrays, which are refused") from None
        raise WeightsError(f"{source}: not a valid .npz weights file ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError, RuntimeError) as exc:
        raise WeightsError(f"{source}: not a valid .npz weights file ({exc})") from None
    if not isinstance(arrays, dict) or "meta" not in arrays:
        raise WeightsError(f"{source}: no 'meta' entry; not a twinnet weights file")
    meta_array = arrays.pop("meta")
    try:
        if meta_array.shape != () or meta_array.dtype.kind != "U":
            raise ValueError("not a 0-d string")
        meta = json.loads(str(meta_array))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise WeightsError(f"{source}: unreadable 'meta' entry ({exc})") from None
    model = meta.get("model")
    if model not in MODEL_NAMES:
        raise WeightsError(f"{source}: meta names unknown model {model!r}")
    if expected_model is not None and model != expected_model:
        raise WeightsError(f"{source}: holds weights for model {model!r}, not {expected_model!r}")
    check_params(model, arrays, source)
    return arrays, meta
