"""Fuzzing the two file readers with random and mutated bytes.

The IDX parser and the weights loader read files users hand them. Whatever the
bytes, the only outcomes allowed are a correct result or the project's own
one-line error (DataError, WeightsError); never another exception type.
"""

from __future__ import annotations

import atexit
import gzip
import hashlib
import io
import json
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twinnet import data
from twinnet.data import DataError, IdxFile
from twinnet.models import init_params
from twinnet.weights import WeightsError, check_params, load_weights, save_weights

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# NumPy warns when it had to retry a header the Python 2 way; mutated headers do that often.
pytestmark = pytest.mark.filterwarnings("ignore:Reading `.npy` or `.npz` file:UserWarning")

SCRATCH = Path(tempfile.mkdtemp(prefix="twinnet-fuzz-"))
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)


def write(name: str, raw: bytes) -> Path:
    """Each example overwrites one scratch file: no per-example fixture needed."""
    path = SCRATCH / name
    path.write_bytes(raw)
    return path


# ---- mutations shared by both readers ----------------------------------------------

def mutated(base: bytes, hot: int) -> st.SearchStrategy[bytes]:
    """``base`` with some of: bytes flipped (often in the first ``hot`` bytes and the last
    ``hot`` bytes, where headers and directories live), cut short, or extended."""
    position = st.one_of(st.integers(0, min(hot, len(base)) - 1),
                         st.integers(max(0, len(base) - hot), len(base) - 1),
                         st.integers(0, len(base) - 1))
    flips = st.lists(st.tuples(position, st.integers(1, 255)), max_size=6)
    cut = st.one_of(st.none(), st.integers(0, len(base)))
    tail = st.binary(max_size=64)

    def apply(args: tuple[list[tuple[int, int]], int | None, bytes]) -> bytes:
        flips, cut, tail = args
        raw = bytearray(base)
        for pos, mask in flips:
            raw[pos] ^= mask
        if cut is not None:
            del raw[cut:]
        return bytes(raw) + tail

    return st.tuples(flips, cut, tail).map(apply)


# ---- IDX ---------------------------------------------------------------------------

def idx_bytes(magic: int, dims: tuple[int, ...], body: bytes) -> bytes:
    return struct.pack(f">I{len(dims)}I", magic, *dims) + body


IMAGES = np.random.default_rng(0).integers(0, 256, (2, 28, 28), dtype=np.uint8)
LABELS = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
VALID_IDX = {
    data.IMAGE_MAGIC: idx_bytes(data.IMAGE_MAGIC, IMAGES.shape, IMAGES.tobytes()),
    data.LABEL_MAGIC: idx_bytes(data.LABEL_MAGIC, LABELS.shape, LABELS.tobytes()),
}
SPECS = {
    magic: IdxFile("fuzz", magic, len(array), len(raw), hashlib.md5(raw).hexdigest())
    for (magic, raw), array in zip(VALID_IDX.items(), (IMAGES, LABELS), strict=True)
}


@st.composite
def idx_files(draw) -> tuple[int, bytes]:
    """(magic the reader expects, file bytes): random, mutated, re-dimensioned, gzipped."""
    magic = draw(st.sampled_from(sorted(VALID_IDX)))
    kind = draw(st.sampled_from(["random", "mutated", "dims", "gzip-mutated"]))
    if kind == "random":
        raw = draw(st.binary(max_size=2048))
    elif kind == "mutated":
        raw = draw(mutated(VALID_IDX[magic], hot=16))
    elif kind == "dims":
        # A header whose dimensions disagree with the body, up to 2**32 - 1 each.
        ndim = magic & 0xFF
        dims = draw(st.tuples(*[st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1))] * ndim))
        body = draw(st.one_of(st.just(VALID_IDX[magic][4 + 4 * ndim:]), st.binary(max_size=512)))
        raw = idx_bytes(magic, dims, body)
    else:
        return magic, draw(mutated(gzip.compress(VALID_IDX[magic]), hot=24))
    if draw(st.booleans()):
        raw = gzip.compress(raw)
    return magic, raw


def header_dims(raw: bytes, magic: int) -> tuple[int, ...]:
    ndim = magic & 0xFF
    return struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])


@FUZZ
@given(idx_files())
def test_parse_idx_returns_the_header_shape_or_data_error(case):
    magic, content = case
    path = write("fuzz.idx", content)
    try:
        raw = data.read_idx(path, magic)
        array = data.parse_idx(raw, str(path), magic)
    except DataError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    assert array.dtype == np.uint8
    assert array.shape == header_dims(raw, magic)
    assert array.tobytes() == raw[4 + 4 * (magic & 0xFF) :]


@FUZZ
@given(idx_files())
def test_load_idx_returns_the_verified_array_or_data_error(case):
    magic, content = case
    path = write("fuzz.idx", content)
    try:
        array = data.load_idx(path, SPECS[magic])
    except DataError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    # Only the true content passes the MD5 check; any gzip of it is accepted.
    expected = IMAGES if magic == data.IMAGE_MAGIC else LABELS
    np.testing.assert_array_equal(array, expected)


def test_huge_dimensions_are_refused_without_allocating():
    raw = idx_bytes(data.IMAGE_MAGIC, (2**32 - 1, 2**32 - 1, 2**32 - 1), b"\x00" * 100)
    with pytest.raises(DataError, match="truncated"):
        data.parse_idx(raw, "huge", data.IMAGE_MAGIC)


def test_gzip_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(data, "MAX_DECOMPRESSED_BYTES", 1000)
    path = write("bomb.gz", gzip.compress(idx_bytes(data.IMAGE_MAGIC, (60_000, 28, 28), bytes(5000))))
    with pytest.raises(DataError, match="more than 1000"):
        data.read_idx(path, data.IMAGE_MAGIC)


def test_gzip_body_is_read_only_as_far_as_the_header_says():
    path = write("long.gz", gzip.compress(idx_bytes(data.IMAGE_MAGIC, (1, 28, 28), bytes(10**7))))
    with pytest.raises(DataError, match="too long: 801 bytes"):
        data.read_idx(path, data.IMAGE_MAGIC)


# ---- weights -----------------------------------------------------------------------

def valid_weights() -> bytes:
    path = SCRATCH / "valid.npz"
    save_weights(path, "linear", init_params("linear"), {"backend": "numpy", "steps": 1})
    return path.read_bytes()


VALID_NPZ = valid_weights()
PARAMS = init_params("linear")


def npy_bytes(header: str, body: bytes, version: int = 1) -> bytes:
    """A .npy member with a hand-written header (dict text), padded as NumPy pads it."""
    text = header.encode("latin1") + b"\n"
    size = "<H" if version == 1 else "<I"
    prefix = 10 if version == 1 else 12
    text += b" " * (-(prefix + len(text)) % 64)
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack(size, len(text)) + text + body


def npy_of(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


shapes = st.lists(st.one_of(st.integers(-3, 1000), st.integers(2**31, 2**70)), max_size=4).map(tuple)
descrs = st.sampled_from(["<f4", ">f4", "<f8", "|O", "<U8", "|V0", "|S0", "<i4", "|b1", "zz",
                          "[('a', '<f4')]", "(('<f4', 3))"])


@st.composite
def npy_members(draw) -> bytes:
    """A .npy member whose header may lie: any shape (negative, huge), dtype, order, text."""
    if draw(st.booleans()):
        header = draw(st.text(st.characters(max_codepoint=255), max_size=80))
    else:
        descr = draw(descrs)
        descr_text = descr if descr.startswith(("[", "(")) else repr(descr)
        fortran = draw(st.sampled_from(["False", "True", "1", "None"]))
        header = f"{{'descr': {descr_text}, 'fortran_order': {fortran}, 'shape': {draw(shapes)!r}, }}"
    body = draw(st.one_of(st.binary(max_size=256), st.just(PARAMS["dense1/b"].tobytes())))
    return npy_bytes(header, body, version=draw(st.sampled_from([1, 2])))


@st.composite
def weight_archives(draw) -> bytes:
    """A zip whose CRCs are right, so the fuzzing reaches NumPy's header parser and our checks:
    valid members mixed with lying .npy members, odd names, odd ``meta``."""
    members = {key + ".npy": npy_of(value) for key, value in PARAMS.items()}
    meta = draw(st.one_of(
        st.just(json.dumps({"model": "linear"})),
        st.text(max_size=40),
        st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                         st.sampled_from(["model", "x"]), inner, max_size=2)).map(json.dumps),
    ))
    members["meta.npy"] = draw(st.one_of(st.just(npy_of(np.array(meta))), npy_members()))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(["dense1/W.npy", "dense1/b.npy", "meta.npy", "extra.npy",
                                     "meta", "dense1/b", "dir/"]))
        members[name] = draw(st.one_of(npy_members(), st.binary(max_size=64)))
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def weights_files() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=2048),
        mutated(VALID_NPZ, hot=300),
        weight_archives(),
        weight_archives().flatmap(lambda raw: mutated(raw, hot=200)),
    )


@FUZZ
@given(weights_files())
def test_load_weights_returns_checked_params_or_weights_error(content):
    path = write("fuzz.npz", content)
    try:
        params, meta = load_weights(path)
    except WeightsError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    check_params(meta["model"], params)


def test_huge_npy_shape_is_refused_without_allocating():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("meta.npy", npy_of(np.array(json.dumps({"model": "linear"}))))
        archive.writestr("dense1/W.npy", npy_bytes(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000, 100000), }", b""))
    path = write("huge.npz", buffer.getvalue())
    with pytest.raises(WeightsError, match="dense1/W"):
        load_weights(path)


def test_numpy_multi_line_errors_become_one_line():
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (10,), }" + " " * 20_000
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("dense1/b.npy", npy_bytes(header, PARAMS["dense1/b"].tobytes(), version=2))
    path = write("long-header.npz", buffer.getvalue())
    with pytest.raises(WeightsError, match="not a valid .npz") as caught:
        load_weights(path)
    assert "\n" not in str(caught.value)
