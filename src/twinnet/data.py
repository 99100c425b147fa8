"""MNIST: IDX parsing, integrity checks, locating or downloading the files, splits.

The four standard IDX files are accepted gzip-compressed (``*.gz``) or raw. Every
file is checked for its magic number, dimensions, item count, label range and
the MD5 of its decompressed content, so any gzip of the right bytes is accepted
and anything else is refused with one line naming the file and the fault.

Splits (DESIGN.md): train = first 55,000 training images, validation = last
5,000, test = the 10,000 t10k images. Images are float32 in [0, 1], NHWC
(N, 28, 28, 1); labels are int64 (N,) in 0..9.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import sys
import urllib.request
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from twinnet.errors import TwinnetError
from twinnet.util import FileAccessError, atomic_path, open_regular_file


class DataError(TwinnetError):
    """An MNIST file that is missing, damaged or not what it claims to be."""


@dataclass(frozen=True)
class IdxFile:
    """What one of the four standard files must contain once decompressed."""

    name: str
    magic: int  # 0x0803: unsigned-byte 3-D images; 0x0801: unsigned-byte 1-D labels
    count: int
    size: int  # decompressed bytes
    md5: str


IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801

FILES: dict[str, IdxFile] = {
    f.name: f
    for f in (
        IdxFile("train-images-idx3-ubyte", IMAGE_MAGIC, 60_000, 47_040_016,
                "6bbc9ace898e44ae57da46a324031adb"),
        IdxFile("train-labels-idx1-ubyte", LABEL_MAGIC, 60_000, 60_008,
                "a25bea736e30d166cdddb491f175f624"),
        IdxFile("t10k-images-idx3-ubyte", IMAGE_MAGIC, 10_000, 7_840_016,
                "2646ac647ad5339dbf082846283269ea"),
        IdxFile("t10k-labels-idx1-ubyte", LABEL_MAGIC, 10_000, 10_008,
                "27ae3e4e09519cfbb04c329615203637"),
    )
}

# Tried in turn; each serves the four files gzip-compressed under their standard names.
MIRRORS: list[str] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]
DOWNLOAD_TIMEOUT_S = 20

# Reading stops here, so a gzip bomb cannot exhaust memory; the largest file has 47,040,016 bytes.
MAX_DECOMPRESSED_BYTES = 64 << 20

TRAIN_SIZE = 55_000
VALIDATION_SIZE = 5_000


@dataclass(frozen=True)
class Split:
    """Images x (N, 28, 28, 1) float32 in [0, 1] and labels y (N,) int64."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Mnist:
    """The three splits used everywhere: train, validation, test."""

    train: Split
    validation: Split
    test: Split


def idx_header(head: bytes, source: str, magic: int) -> tuple[int, tuple[int, ...], int]:
    """(header length, dimensions, total length the header implies) from the first bytes
    of an IDX file; DataError (naming ``source``) for a wrong magic number or a short header."""
    if len(head) < 4:
        raise DataError(f"{source}: truncated: {len(head)} bytes, too short for an IDX header")
    (found,) = struct.unpack(">I", head[:4])
    if found != magic:
        raise DataError(f"{source}: wrong magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(head) < header:
        raise DataError(f"{source}: truncated: {len(head)} bytes, header needs {header}")
    dims = struct.unpack(f">{ndim}I", head[4:header])
    # Python ints: a product of huge dimensions must not wrap around as int64 would.
    return header, dims, header + math.prod(dims)


def check_length(length: int, dims: tuple[int, ...], expected: int, source: str) -> None:
    """DataError unless an IDX file of ``length`` bytes is as long as its header says."""
    if length != expected:
        state = "truncated" if length < expected else "too long"
        raise DataError(f"{source}: {state}: {length} bytes, header {dims} needs {expected}")


def parse_idx(raw: bytes, source: str, magic: int) -> np.ndarray:
    """Parse decompressed IDX bytes into a uint8 array of the dimensions in its header.

    Raises DataError (naming ``source``) for a wrong magic number, a short header,
    or a body whose length disagrees with the dimensions.
    """
    header, dims, expected = idx_header(raw[:4 + 4 * (magic & 0xFF)], source, magic)
    check_length(len(raw), dims, expected, source)
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: Path, magic: int) -> bytes:
    """The decompressed content of the IDX file at ``path`` (gzip detected by its magic
    bytes, not its name), its header checked before the body is read.

    The magic number and dimensions are read first; a raw file whose size on disk
    differs from what the header implies, or a header implying more than
    MAX_DECOMPRESSED_BYTES, is refused without reading on, and a gzip stream is read
    only up to the implied length (plus one byte, to see that it ends there).
    """
    source = str(path)
    try:
        fh = open_regular_file(path)
    except FileAccessError as exc:
        raise DataError(str(exc)) from None
    gzipped = False
    try:
        with fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
            fh.seek(0)
            stream = gzip.GzipFile(fileobj=fh, mode="rb") if gzipped else fh
            head = stream.read(4)
            if len(head) == 4 and struct.unpack(">I", head)[0] == magic:
                head += stream.read(4 * (magic & 0xFF))
            header, dims, expected = idx_header(head, source, magic)
            if expected > MAX_DECOMPRESSED_BYTES:
                raise DataError(f"{source}: header {dims} implies {expected} bytes, more than "
                                f"{MAX_DECOMPRESSED_BYTES}; not an MNIST file")
            if not gzipped:
                check_length(os.fstat(fh.fileno()).st_size, dims, expected, source)
            raw = head + stream.read(expected - header + 1)
    except (OSError, EOFError, zlib.error) as exc:
        what = "bad gzip data" if gzipped else "cannot read"
        raise DataError(f"{source}: {what} ({exc})") from None
    check_length(len(raw), dims, expected, source)
    return raw


def load_idx(path: Path, spec: IdxFile) -> np.ndarray:
    """Read and verify one standard file: structure, count, dimensions, label range, MD5."""
    raw = read_idx(path, spec.magic)
    array = parse_idx(raw, str(path), spec.magic)
    if array.shape[0] != spec.count:
        raise DataError(f"{path}: wrong item count {array.shape[0]}, expected {spec.count}")
    if spec.magic == IMAGE_MAGIC and array.shape[1:] != (28, 28):
        raise DataError(f"{path}: wrong image size {array.shape[1:]}, expected (28, 28)")
    if spec.magic == LABEL_MAGIC and array.max(initial=0) > 9:
        raise DataError(f"{path}: label {int(array.max())} out of range 0..9")
    digest = hashlib.md5(raw).hexdigest()
    if digest != spec.md5:
        raise DataError(f"{path}: checksum mismatch: MD5 of content is {digest}, expected {spec.md5}")
    return array


def default_data_dir() -> Path:
    """``$TWINNET_DATA`` if set, else the user cache directory (``$XDG_CACHE_HOME/twinnet/mnist``)."""
    if os.environ.get("TWINNET_DATA"):
        return Path(os.environ["TWINNET_DATA"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "twinnet" / "mnist"


def find_file(directory: Path, spec: IdxFile) -> Path | None:
    """The gzip or raw copy of ``spec`` in ``directory`` (or whatever holds its name), if any."""
    for candidate in (directory / f"{spec.name}.gz", directory / spec.name):
        # Anything under the name counts, so a folder or device is refused by name
        # instead of being passed over for a download.
        if os.path.lexists(candidate):
            return candidate
    return None


def download(directory: Path, spec: IdxFile) -> Path:
    """Fetch ``spec`` from the mirrors in turn, verify it, and move it into ``directory``."""
    from tqdm import tqdm

    target = directory / f"{spec.name}.gz"
    errors = []
    for mirror in MIRRORS:
        url = mirror + target.name
        try:
            with atomic_path(target) as tmp:
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with open(tmp, "wb") as out, tqdm(
                        total=total, unit="B", unit_scale=True, desc=target.name,
                        disable=not sys.stderr.isatty(), leave=False,
                    ) as bar:
                        while chunk := response.read(1 << 16):
                            out.write(chunk)
                            bar.update(len(chunk))
                load_idx(tmp, spec)  # verify before the rename makes it visible
            return target
        except (OSError, DataError) as exc:
            errors.append(f"{url}: {exc}")
    raise DataError(
        f"{target}: not found and could not be downloaded ({'; '.join(errors)}); "
        "pass --data-dir or set TWINNET_DATA to a folder holding the MNIST files"
    )


def locate(data_dir: str | os.PathLike | None = None, fetch: bool = True) -> dict[str, Path]:
    """Paths of the four files in ``data_dir`` (default: ``default_data_dir()``),
    downloading any that are missing when ``fetch`` is true."""
    directory = Path(data_dir) if data_dir is not None else default_data_dir()
    paths = {}
    for spec in FILES.values():
        path = find_file(directory, spec)
        if path is None:
            if not fetch:
                raise DataError(f"{directory / spec.name}(.gz): not found")
            path = download(directory, spec)
        paths[spec.name] = path
    return paths


@lru_cache(maxsize=2)
def _load_mnist(directory: Path) -> Mnist:
    paths = locate(directory)
    arrays = {name: load_idx(paths[name], FILES[name]) for name in FILES}

    def images(name: str) -> np.ndarray:
        # Divide in float32 so the whole set never exists in float64.
        return (arrays[name].astype(np.float32) / np.float32(255.0))[..., np.newaxis]

    train_x, train_y = images("train-images-idx3-ubyte"), arrays["train-labels-idx1-ubyte"]
    test_x, test_y = images("t10k-images-idx3-ubyte"), arrays["t10k-labels-idx1-ubyte"]
    train_y = train_y.astype(np.int64)
    return Mnist(
        train=Split(train_x[:TRAIN_SIZE], train_y[:TRAIN_SIZE]),
        validation=Split(train_x[TRAIN_SIZE:], train_y[TRAIN_SIZE:]),
        test=Split(test_x, test_y.astype(np.int64)),
    )


def load_mnist(data_dir: str | os.PathLike | None = None) -> Mnist:
    """The three verified splits, read once per process and directory."""
    directory = Path(data_dir) if data_dir is not None else default_data_dir()
    return _load_mnist(directory.resolve())
