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
import re
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from twinnet.errors import TwinnetError
from twinnet.models import (
    MODEL_NAMES,
    SpecError,
    model_name,
    param_shapes,
    register_spec,
    spec_document,
)
from twinnet.util import FileAccessError, atomic_path, open_regular_file

# The weights a command uses without --weights: the cnn the NumPy twin trained for the
# committed report (a copy of docs/report/runs/P2e-cnn-numpy/weights.npz, 0.8 MB), shipped
# inside the package so that commands work from any folder of any install. Installs are
# plain folders (never zipped), so the resource is a file on disk.
DEFAULT_WEIGHTS = Path(str(files("twinnet") / "pretrained" / "cnn.npz"))


class WeightsError(TwinnetError):
    """A weights file that cannot be used: unreadable, wrong model, bad keys or values."""


# The largest .npy header read (NumPy itself refuses headers over 10,000 bytes by default;
# a version-1 header cannot exceed 65,535 + 10).
NPY_HEADER_MAX = 65_546
# Bytes a zip spends on one member besides its data (local and central headers with ZIP64
# extras and the name), and on the archive's end records and comment: generous bounds.
ZIP_MEMBER_OVERHEAD = 1024
ZIP_ARCHIVE_OVERHEAD = 65_536 + 1024

# ``meta`` is JSON in a 0-d unicode array (4 bytes per character).
META_MAX_BYTES = 1 << 20
# Per key, the most data bytes any model's array under that name has.
WEIGHTS_ALLOWED: dict[str, int] = {"meta": META_MAX_BYTES}
for _model in MODEL_NAMES:
    for _key, _shape in param_shapes(_model).items():
        WEIGHTS_ALLOWED[_key] = max(WEIGHTS_ALLOWED.get(_key, 0), math.prod(_shape) * 4)
WEIGHTS_MAX_MEMBERS = 1 + max(len(param_shapes(model)) for model in MODEL_NAMES)
WEIGHTS_MAX_TOTAL_BYTES = (META_MAX_BYTES + WEIGHTS_MAX_MEMBERS * 4096 + max(
    sum(math.prod(shape) * 4 for shape in param_shapes(model).values()) for model in MODEL_NAMES))

# A model from a spec file names its parameters by kind; a file of one is first read for
# its meta alone, under these loose bounds on its directory, then for its parameters under
# the exact bounds of the spec its meta carries.
SPEC_KEY = re.compile(r"(conv|dense|bn)[1-9][0-9]{0,3}/(W|b|gamma|beta|moving_mean|moving_variance)")
SPEC_MAX_MEMBERS = 1 + 4 * 64
SPEC_MAX_TOTAL_BYTES = 256 << 20

# What zipfile, its decompressors and NumPy's header parser raise on damaged input
# (TokenError: NumPy retries a header it cannot parse as Python 2 text, through tokenize).
DAMAGED = (OSError, EOFError, ValueError, RuntimeError, zipfile.BadZipFile, zlib.error,
           lzma.LZMAError, struct.error, OverflowError, tokenize.TokenError)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (some of NumPy's span several)."""
    return " ".join(str(exc).split())


def check_params(model: str, params: dict[str, np.ndarray], source: str = "parameters",
                 dtype: np.dtype | type | None = np.float32,
                 expected: dict[str, tuple[int, ...]] | None = None) -> None:
    """Raise WeightsError unless ``params`` has exactly the keys and shapes of ``model`` (or
    of ``expected``, some of them), with finite values of ``dtype`` (any floating dtype if
    None). ``source`` names the file in the message. The one parameter validator: weights
    files, checkpoints and both twins."""
    expected = param_shapes(model) if expected is None else expected
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
    """Write ``params`` and ``meta`` (JSON-able) to ``path`` atomically. ``meta`` gets the
    model's name and, for a model from a spec file, ``spec``: the file's TOML table."""
    check_params(model, params)
    arrays = {key: np.ascontiguousarray(params[key], dtype=np.float32) for key in param_shapes(model)}
    named: dict[str, Any] = {"model": model_name(model)}
    if model not in MODEL_NAMES:  # a spec file, or a spec carried by a weights file
        named["spec"] = spec_document(model)
    arrays["meta"] = np.array(json.dumps({**named, **meta}, sort_keys=True))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def load_weights(path: str | os.PathLike,
                 expected_model: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a weights file; returns (params, meta).

    Raises WeightsError if the file is missing or not a regular readable file, is not
    an npz, holds unknown keys, more or larger members than any model has, pickled
    (object) arrays, lacks a readable ``meta``, names an unknown model or another model
    than ``expected_model``, or fails ``check_params``. Memory stays bounded by
    WEIGHTS_MAX_TOTAL_BYTES whatever the file holds.
    """
    source = str(path)
    try:
        arrays = read_npz(path, source, WEIGHTS_ALLOWED, max_total_bytes=WEIGHTS_MAX_TOTAL_BYTES,
                          max_members=WEIGHTS_MAX_MEMBERS)
        meta = parse_meta(arrays.pop("meta", None), source)
    except WeightsError as refused:  # perhaps a model from a spec file, larger than the four
        arrays, meta = read_spec_weights(path, source, refused)
    model = meta.get("model")
    if "spec" in meta:
        meta["model"] = model = register_spec_of(meta, source)
        if set(arrays) != set(param_shapes(model)):  # read under the four's bounds: read again
            arrays, meta = read_spec_weights(path, source, None)
    elif model not in MODEL_NAMES:
        raise WeightsError(f"{source}: meta names unknown model {model!r}")
    if expected_model is not None and model != model_name(expected_model):
        raise WeightsError(f"{source}: holds weights for model {model!r}, not {expected_model!r}")
    check_params(model, arrays, source)
    return arrays, meta


def parse_meta(meta_array: np.ndarray | None, source: str) -> dict[str, Any]:
    """The JSON object of a weights file's ``meta`` entry; WeightsError if it is not one."""
    if meta_array is None:
        raise WeightsError(f"{source}: no 'meta' entry; not a twinnet weights file")
    try:
        if meta_array.shape != () or meta_array.dtype.kind != "U":
            raise ValueError("not a 0-d string")
        meta = json.loads(str(meta_array))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise WeightsError(f"{source}: unreadable 'meta' entry ({one_line(exc)})") from None
    return meta


def register_spec_of(meta: dict[str, Any], source: str) -> str:
    """The model name of the spec a weights file's meta carries, registered in this process
    (``models.register_spec``); WeightsError naming the file if it cannot be built."""
    try:
        return register_spec(meta["spec"], meta.get("model"), f"{source}: its spec")
    except SpecError as exc:
        raise WeightsError(str(exc)) from None


def read_spec_weights(path: str | os.PathLike, source: str,
                      refused: WeightsError | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(params, meta) of a weights file of a model from a spec file: its meta read alone under
    loose bounds on the directory, then its parameters under the exact bounds of that spec.
    Where the file carries no spec, ``refused`` (the error under the four models' bounds)
    is raised as it was."""
    def loose(key: str) -> int | None:
        return META_MAX_BYTES if key == "meta" else SPEC_MAX_TOTAL_BYTES if SPEC_KEY.fullmatch(key) else None

    try:
        meta = parse_meta(read_npz(path, source, loose, max_total_bytes=SPEC_MAX_TOTAL_BYTES,
                                   max_members=SPEC_MAX_MEMBERS, only="meta").get("meta"), source)
    except WeightsError:
        if refused is not None:
            raise refused from None
        raise
    if "spec" not in meta:
        if refused is not None:
            raise refused from None
        raise WeightsError(f"{source}: its meta carries no spec")
    shapes = param_shapes(register_spec_of(meta, source))
    exact = {"meta": META_MAX_BYTES, **{key: math.prod(s) * 4 for key, s in shapes.items()}}
    arrays = read_npz(path, source, exact, max_total_bytes=sum(exact.values()) + len(exact) * 4096,
                      max_members=len(exact))
    return arrays, parse_meta(arrays.pop("meta", None), source)


def read_npz(path: str | os.PathLike, source: str,
             allowed: Mapping[str, int] | Callable[[str], int | None], *,
             max_total_bytes: int, max_members: int,
             error: type[TwinnetError] = WeightsError, only: str | None = None) -> dict[str, np.ndarray]:
    """Every array of the .npz at ``path``, by key (entry name without ``.npy``), in
    bounded memory; the one reader for weights files and checkpoints.

    ``allowed`` says which keys may appear and how many data bytes (shape x itemsize,
    without the .npy header) each may hold at most: a mapping key -> bytes, or a function
    returning the bytes for a key or None for a key that is refused. ``max_total_bytes``
    bounds the sum of the members' sizes (headers included) and ``max_members`` their
    number. Everything the zip directory tells (file size on disk, member count, names,
    sizes) is checked before any member is read; each member's .npy header is then
    checked against its directory size and its limit before its data is allocated, so
    at most ``max_total_bytes`` (plus one member's copy) is ever held. Object arrays are
    refused, never unpickled. Missing keys are the caller's to check. With ``only``, the
    whole directory is checked but only that key's member is read.

    Raises ``error`` (a TwinnetError; one line beginning with ``source``) for any fault:
    not a regular readable file, not a zip, damaged data, a refused key, limits exceeded.
    """
    limit_of = allowed.get if isinstance(allowed, Mapping) else allowed
    try:
        fh = open_regular_file(path)
    except FileAccessError as exc:
        raise error(f"{source}: {exc.reason}") from None
    with fh:
        size_limit = max_total_bytes + max_members * ZIP_MEMBER_OVERHEAD + ZIP_ARCHIVE_OVERHEAD
        size = os.fstat(fh.fileno()).st_size
        if size > size_limit:
            raise error(f"{source}: {size} bytes, larger than any valid file ({size_limit})")
        try:
            with zipfile.ZipFile(fh) as archive:
                infos = archive.infolist()
                limits = check_directory(infos, limit_of, max_total_bytes, max_members, source,
                                         error)
                arrays = {}
                for info, limit in zip(infos, limits, strict=True):
                    if only is not None and info.filename != f"{only}.npy":
                        continue
                    with archive.open(info) as entry:
                        arrays[info.filename.removesuffix(".npy")] = read_npy(
                            entry, info, limit, source, error)
        except DAMAGED as exc:
            raise error(f"{source}: not a valid .npz file ({one_line(exc)})") from None
    return arrays


def check_directory(infos: list[zipfile.ZipInfo], limit_of: Callable[[str], int | None],
                    max_total_bytes: int, max_members: int, source: str,
                    error: type[TwinnetError]) -> list[int]:
    """Each member's data-byte limit, after refusing (with ``error``) a directory that
    has too many members, a name that is not an allowed ``KEY.npy``, a repeated name,
    a member larger than its key allows, or more bytes in all than ``max_total_bytes``."""
    if len(infos) > max_members:
        raise error(f"{source}: {len(infos)} entries, more than the {max_members} allowed")
    names = [info.filename for info in infos]
    unknown = [name for name in names if not name.endswith(".npy") or limit_of(name[:-4]) is None]
    if unknown:
        shown = ", ".join(name.removesuffix(".npy") for name in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise error(f"{source}: unexpected key(s) {shown}{more}; not a .npz of the expected arrays")
    limits, seen, total = [], set(), 0
    for info in infos:
        name = info.filename
        limit = limit_of(name[:-4])
        if name in seen:
            raise error(f"{source}: entry {name!r} appears twice")
        seen.add(name)
        if info.file_size > limit + NPY_HEADER_MAX:
            raise error(f"{source}: entry {name!r} has {info.file_size} bytes, "
                        f"more than the {limit} its key allows")
        total += info.file_size
        if total > max_total_bytes:
            raise error(f"{source}: entries hold more than the {max_total_bytes} bytes allowed")
        limits.append(limit)
    return limits


def read_npy(entry: zipfile.ZipExtFile, info: zipfile.ZipInfo, limit: int, source: str,
             error: type[TwinnetError]) -> np.ndarray:
    """One .npy member as a writable array. Its header must declare at most ``limit`` data
    bytes, exactly what the directory's size leaves after the header; checked before the
    data is allocated."""
    name = info.filename
    version = np.lib.format.read_magic(entry)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(entry)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(entry)
    else:
        raise error(f"{source}: entry {name!r} has unsupported .npy version {version}")
    if dtype.hasobject:
        raise error(f"{source}: holds pickled object arrays, which are refused")
    if dtype.itemsize == 0:
        raise error(f"{source}: entry {name!r} has the zero-size dtype {dtype}")
    declared = math.prod(shape) * dtype.itemsize
    stored = info.file_size - entry.tell()
    if declared > limit or declared != stored:
        raise error(f"{source}: entry {name!r} declares shape {shape} of {dtype} "
                    f"({declared} bytes) but " + (f"its key allows at most {limit}"
                                                   if declared > limit else f"holds {stored} bytes"))
    data = bytearray(entry.read(declared))
    if len(data) != declared or entry.read(1):  # reading to the end also checks the CRC
        raise error(f"{source}: entry {name!r} is truncated or damaged")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
