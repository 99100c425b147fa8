"""The MNIST data layer: IDX parsing, every bad-file case, downloading, splits."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from twinnet import data
from twinnet.data import DataError, IdxFile

IMAGES = "train-images-idx3-ubyte"
LABELS = "train-labels-idx1-ubyte"


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """A synthetic data set of 5 training and 3 test images, registered in place of the
    real file table so that every check (count, size, MD5) applies to it."""
    rng = np.random.default_rng(0)
    contents = {
        "train-images-idx3-ubyte": idx_bytes(data.IMAGE_MAGIC, rng.integers(0, 256, (5, 28, 28))),
        "train-labels-idx1-ubyte": idx_bytes(data.LABEL_MAGIC, np.array([0, 1, 2, 3, 9])),
        "t10k-images-idx3-ubyte": idx_bytes(data.IMAGE_MAGIC, rng.integers(0, 256, (3, 28, 28))),
        "t10k-labels-idx1-ubyte": idx_bytes(data.LABEL_MAGIC, np.array([4, 5, 6])),
    }
    table = {
        name: IdxFile(name, data.FILES[name].magic, 5 if name.startswith("train") else 3,
                      len(raw), hashlib.md5(raw).hexdigest())
        for name, raw in contents.items()
    }
    monkeypatch.setattr(data, "FILES", table)
    for name, raw in contents.items():
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(raw))
    return tmp_path, contents, table


def test_parse_idx_reads_header_dimensions():
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    parsed = data.parse_idx(idx_bytes(data.IMAGE_MAGIC, array), "x", data.IMAGE_MAGIC)
    np.testing.assert_array_equal(parsed, array)


def test_gzip_and_raw_give_the_same_array(tiny):
    directory, contents, table = tiny
    raw_path = directory / "raw-copy"
    raw_path.write_bytes(contents[IMAGES])
    from_gz = data.load_idx(directory / f"{IMAGES}.gz", table[IMAGES])
    from_raw = data.load_idx(raw_path, table[IMAGES])
    np.testing.assert_array_equal(from_gz, from_raw)
    assert from_gz.shape == (5, 28, 28)


def test_raw_files_are_found_without_gz(tiny):
    directory, contents, _ = tiny
    (directory / f"{LABELS}.gz").unlink()
    (directory / LABELS).write_bytes(contents[LABELS])
    assert data.locate(directory, fetch=False)[LABELS] == directory / LABELS


def check_fault(path: Path, spec: IdxFile, fragment: str) -> None:
    with pytest.raises(DataError) as caught:
        data.load_idx(path, spec)
    message = str(caught.value)
    assert str(path) in message and fragment in message
    assert "\n" not in message


def test_truncated_file(tiny):
    directory, contents, table = tiny
    path = directory / "cut.gz"
    path.write_bytes(gzip.compress(contents[IMAGES][:-100]))
    check_fault(path, table[IMAGES], "truncated")


def test_truncated_header(tiny):
    directory, _, table = tiny
    path = directory / "short"
    path.write_bytes(b"\x00\x00")
    check_fault(path, table[IMAGES], "truncated")


def test_wrong_magic(tiny):
    directory, contents, table = tiny
    path = directory / "magic"
    path.write_bytes(contents[LABELS])  # a label file where images belong
    check_fault(path, table[IMAGES], "wrong magic number 0x00000801")


def test_wrong_count(tiny):
    directory, _, table = tiny
    path = directory / "count"
    path.write_bytes(idx_bytes(data.IMAGE_MAGIC, np.zeros((4, 28, 28))))
    check_fault(path, table[IMAGES], "wrong item count 4, expected 5")


def test_wrong_image_size(tiny):
    directory, _, table = tiny
    path = directory / "size"
    path.write_bytes(idx_bytes(data.IMAGE_MAGIC, np.zeros((5, 28, 27))))
    check_fault(path, table[IMAGES], "wrong image size")


def test_label_out_of_range(tiny):
    directory, _, table = tiny
    path = directory / "labels"
    raw = idx_bytes(data.LABEL_MAGIC, np.array([0, 1, 2, 3, 10]))
    path.write_bytes(raw)
    check_fault(path, table[LABELS], "label 10 out of range")


def test_bad_gzip(tiny):
    directory, contents, table = tiny
    path = directory / "bad.gz"
    good = gzip.compress(contents[IMAGES])
    path.write_bytes(good[:10] + bytes(b ^ 0xFF for b in good[10:40]) + good[40:])
    check_fault(path, table[IMAGES], "bad gzip data")


def test_checksum_mismatch(tiny):
    directory, contents, table = tiny
    path = directory / "flipped"
    damaged = bytearray(contents[IMAGES])
    damaged[-1] ^= 0xFF  # same structure, one pixel changed
    path.write_bytes(bytes(damaged))
    check_fault(path, table[IMAGES], "checksum mismatch")


def test_missing_files_with_no_network(tiny, monkeypatch):
    directory, _, _ = tiny
    (directory / f"{LABELS}.gz").unlink()
    monkeypatch.setattr(data, "MIRRORS", ["http://127.0.0.1:9/", "http://127.0.0.1:9/mirror2/"])
    with pytest.raises(DataError, match="could not be downloaded") as caught:
        data.locate(directory)
    assert f"{LABELS}.gz" in str(caught.value)
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        f"{n}.gz" for n in data.FILES if n != LABELS), "a partial download was left behind"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


def test_download_tries_mirrors_in_turn_and_verifies(tiny, monkeypatch, tmp_path_factory):
    served, _, _ = tiny
    target = tmp_path_factory.mktemp("cache")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        monkeypatch.setattr(data, "MIRRORS", ["http://127.0.0.1:9/", f"http://127.0.0.1:{port}/"])
        paths = data.locate(target)
    finally:
        server.shutdown()
    assert {p.parent for p in paths.values()} == {target}
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{n}.gz" for n in data.FILES)


def test_download_of_damaged_file_is_refused_and_not_kept(tiny, monkeypatch, tmp_path_factory):
    served, contents, _ = tiny
    (served / f"{LABELS}.gz").write_bytes(gzip.compress(contents[LABELS][:-1] + b"\x07"))
    target = tmp_path_factory.mktemp("cache")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(data, "MIRRORS", [f"http://127.0.0.1:{server.server_address[1]}/"])
        with pytest.raises(DataError, match="checksum mismatch"):
            data.locate(target)
    finally:
        server.shutdown()
    assert not (target / f"{LABELS}.gz").exists()
    assert not [p for p in target.iterdir() if p.name.endswith(".tmp")]


def test_cli_reports_a_damaged_file_in_one_line_with_exit_2(tmp_path, mnist_path):
    for name in data.FILES:
        (tmp_path / f"{name}.gz").symlink_to(Path(mnist_path).resolve() / f"{name}.gz")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(
        gzip.decompress((Path(mnist_path) / "t10k-labels-idx1-ubyte.gz").read_bytes())[:5000])
    weights = tmp_path / "w.npz"
    from twinnet.models import init_params
    from twinnet.weights import save_weights

    save_weights(weights, "linear", init_params("linear"), {"backend": "numpy"})
    result = subprocess.run(
        [sys.executable, "-m", "twinnet", "evaluate", "--weights", str(weights), "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "t10k-labels-idx1-ubyte" in lines[0] and "truncated" in lines[0]
    assert "Traceback" not in result.stderr


def test_real_splits(mnist):
    assert (len(mnist.train), len(mnist.validation), len(mnist.test)) == (55_000, 5_000, 10_000)
    for split in (mnist.train, mnist.validation, mnist.test):
        assert split.x.dtype == np.float32 and split.x.shape[1:] == (28, 28, 1)
        assert split.x.min() == 0.0 and split.x.max() == 1.0
        assert split.y.dtype == np.int64 and set(np.unique(split.y)) == set(range(10))
    # validation is the last 5,000 training images: no overlap with train
    assert not np.array_equal(mnist.train.x[-1], mnist.validation.x[0])
