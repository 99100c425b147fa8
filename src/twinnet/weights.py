"""The canonical weights format: one ``.npz`` that either twin writes and reads.

Keys are ``<layer>/W`` and ``<layer>/b`` (float32, layouts of
``twinnet.models.param_shapes``) plus ``meta``, a 0-d string array holding JSON
(model, backend, steps, optimizer, learning rate, seed, package version).
Files load with ``allow_pickle=False``: nothing in a weights file is ever unpickled.
"""

from __future__ import annotations

import json
import lzma
import math
import os
import struct
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from twinnet.errors import TwinnetError
from twinnet.models import MODEL_NAMES, param_shapes
from twinnet.util import atomic_path


class WeightsError(TwinnetError):
    """A weights file that cannot be used: unreadable, wrong model, bad keys or values."""


# Far above the largest legitimate entry (mlp256x2's dense1/W, 784 * 256 * 4 = 802,816 bytes),
# far below anything that could exhaust memory.
MAX_ENTRY_BYTES = 64 << 20

# What zipfile, its decompressors and NumPy's header parser raise on damaged input
# (TokenError: NumPy retries a header it cannot parse as Python 2 text, through tokenize).
DAMAGED = (OSError, EOFError, ValueError, RuntimeError, zipfile.BadZipFile, zlib.error,
           lzma.LZMAError, struct.error, OverflowError, tokenize.TokenError)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (some of NumPy's span several)."""
    return " ".join(str(exc).split())


def check_params(model: str, params: dict[str, np.ndarray], source: str = "parameters",
                 dtype: np.dtype | type | None = np.float32) -> None:
    """Raise WeightsError unless ``params`` has exactly the keys and shapes of ``model``, with
    finite values of ``dtype`` (any floating dtype if None). ``source`` names the file in
    the message. The one parameter validator: weights files, checkpoints and both twins."""
    expected = param_shapes(model)
    missing = [k for k in expected if k not in params]
    extra = [k for k in params if k not in expected]
    if missing:
        raise WeightsError(f"{source}: missing {', '.join(missing)} for model {model!r}")
    if extra:
        raise WeightsError(f"{source}: unexpected key(s) {', '.join(extra)} for model {model!r}")
    for key, shape in expected.items():
        value = np.asarray(params[key])
        if dtype is not None and value.dtype != dtype:
            raise WeightsError(f"{source}: {key} has dtype {value.dtype}, expected {np.dtype(dtype)}")
        if dtype is None and value.dtype.kind != "f":
            raise WeightsError(f"{source}: {key} has dtype {value.dtype}, expected floating point")
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
        arrays = read_npz(path, source)
    except DAMAGED as exc:
        raise WeightsError(f"{source}: not a valid .npz weights file ({one_line(exc)})") from None
    if "meta" not in arrays:
        raise WeightsError(f"{source}: no 'meta' entry; not a twinnet weights file")
    meta_array = arrays.pop("meta")
    try:
        if meta_array.shape != () or meta_array.dtype.kind != "U":
            raise ValueError("not a 0-d string")
        meta = json.loads(str(meta_array))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise WeightsError(f"{source}: unreadable 'meta' entry ({one_line(exc)})") from None
    model = meta.get("model")
    if model not in MODEL_NAMES:
        raise WeightsError(f"{source}: meta names unknown model {model!r}")
    if expected_model is not None and model != expected_model:
        raise WeightsError(f"{source}: holds weights for model {model!r}, not {expected_model!r}")
    check_params(model, arrays, source)
    return arrays, meta


def read_npz(path: str | os.PathLike, source: str) -> dict[str, np.ndarray]:
    """Every array of the .npz at ``path``, by entry name without ``.npy``.

    Reads what ``np.load(path, allow_pickle=False)`` reads, but trusts no header:
    every entry must be a .npy of at most MAX_ENTRY_BYTES whose data is exactly as
    long as its header's shape and dtype say, checked before anything is allocated.
    Object arrays are refused with WeightsError, never unpickled. Damaged archives
    raise one of DAMAGED.
    """
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename
            if not name.endswith(".npy"):
                raise WeightsError(f"{source}: unexpected entry {name!r}; not a .npz of arrays")
            if info.file_size > MAX_ENTRY_BYTES:
                raise WeightsError(f"{source}: entry {name!r} has {info.file_size} bytes, "
                                   f"more than any weights array ({MAX_ENTRY_BYTES})")
            with archive.open(info) as entry:
                arrays[name.removesuffix(".npy")] = read_npy(entry, name, source)
    return arrays


def read_npy(entry: zipfile.ZipExtFile, name: str, source: str) -> np.ndarray:
    """One .npy entry of an archive as a writable array, its length checked against its header."""
    version = np.lib.format.read_magic(entry)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(entry)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(entry)
    else:
        raise WeightsError(f"{source}: entry {name!r} has unsupported .npy version {version}")
    if dtype.hasobject:
        raise WeightsError(f"{source}: holds pickled object arrays, which are refused")
    if dtype.itemsize == 0:
        raise WeightsError(f"{source}: entry {name!r} has the zero-size dtype {dtype}")
    declared = math.prod(shape) * dtype.itemsize
    data = bytearray(entry.read(MAX_ENTRY_BYTES + 1))  # entries are capped, so this is bounded
    if len(data) != declared:
        raise WeightsError(f"{source}: entry {name!r} declares shape {shape} of {dtype} "
                           f"({declared} bytes) but holds {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
