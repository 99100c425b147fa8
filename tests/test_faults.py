"""Fault injection (issue 16, the file-level part): crafted hostile files, a full disk,
a read-only folder, names too long, paths that are not regular files.

Each command-level test runs ``twinnet.cli.main`` and asserts the exit code, exactly one
``twinnet: error:`` line on stderr, and that no earlier file was lost or altered. Memory
bounds are asserted with tracemalloc where the allocations are Python's; the peak RSS of
each command on each crafted file is measured by ``scripts/craft_hostile_inputs.py``.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import struct
import time
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from twinnet import data, util, weights
from twinnet.cli import main
from twinnet.errors import TwinnetError
from twinnet.models import init_params
from twinnet.util import atomic_path, write_text_atomic
from twinnet.weights import WeightsError, load_weights, save_weights

OLD_MAX_ENTRY_BYTES = 64 << 20  # the reader's per-member cap before issue 16


def one_error_line(capsys) -> str:
    """The single stderr line, asserted to be a ``twinnet: error:`` line."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("twinnet: error: "), err
    return lines[0]


@pytest.fixture
def good_weights(tmp_path) -> Path:
    path = tmp_path / "good.npz"
    save_weights(path, "linear", init_params("linear"), {"backend": "numpy", "steps": 0})
    return path


def npy_zeros(count: int) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (count,)})
    return header.getvalue() + bytes(4 * count)


def meta_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array(json.dumps({"model": "linear"})))
    return buffer.getvalue()


def bz2_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_BZIP2) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


def peak_bytes(call) -> int:
    """Peak of Python-tracked allocations while ``call()`` runs (its exception ignored)."""
    tracemalloc.start()
    try:
        call()
    except TwinnetError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


# ---- .npz: bounded memory, refused from the zip directory ---------------------------

@pytest.fixture(scope="module")
def inflating_member() -> bytes:
    """One .npy member just under the old per-member cap (64 MB of zeros)."""
    return npy_zeros((OLD_MAX_ENTRY_BYTES - 4096) // 4)


def test_npz_bomb_is_refused_at_once_in_small_memory(tmp_path, inflating_member, capsys):
    # Before: every member was read (64 MB each) and then the file was refused.
    path = bz2_zip(tmp_path / "bomb.npz", {"meta.npy": meta_npy(),
                                           **{f"x{i}.npy": inflating_member for i in range(4)}})
    assert path.stat().st_size < 10_000
    started = time.perf_counter()
    peak = peak_bytes(lambda: load_weights(path))
    assert time.perf_counter() - started < 1.0
    assert peak < 5 << 20
    assert main(["evaluate", str(path), "--backend", "numpy"]) == 2
    assert "unexpected key(s) x0, x1, x2, x3" in one_error_line(capsys)


def test_too_many_members_are_refused_before_any_is_read(tmp_path, monkeypatch, capsys):
    path = bz2_zip(tmp_path / "many.npz", {f"{i}.npy": b"" for i in range(40)})
    opened = []
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: opened.append(a) or 1 / 0)
    assert main(["evaluate", str(path), "--backend", "numpy"]) == 2
    assert "40 entries, more than the" in one_error_line(capsys)
    assert opened == []


def test_unknown_keys_are_refused_before_any_is_read(tmp_path, monkeypatch, capsys):
    members = {"meta.npy": meta_npy(), "dense1/W.npy": b"", "dense1/b.npy": b"", "evil.npy": b""}
    path = bz2_zip(tmp_path / "unknown.npz", members)
    opened = []
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: opened.append(a) or 1 / 0)
    assert main(["predict", str(path), "--weights", str(path)]) == 2
    assert "unexpected key(s) evil" in one_error_line(capsys)
    assert opened == []


def test_inflated_known_member_is_refused_from_its_directory_size(tmp_path, inflating_member):
    # The permutation-style case: a legitimate key whose member inflates far beyond its array.
    path = bz2_zip(tmp_path / "inflated.npz", {"meta.npy": meta_npy(),
                                               "dense1/W.npy": inflating_member})
    with pytest.raises(WeightsError, match="'dense1/W.npy' has 67104896 bytes") as caught:
        load_weights(path)
    assert "\n" not in str(caught.value)
    assert peak_bytes(lambda: load_weights(path)) < 5 << 20


def test_header_larger_than_the_key_allows_is_refused_before_allocating(tmp_path):
    # The header claims a shape far beyond what the key allows; the directory size agrees.
    member = npy_zeros(2_000)
    path = bz2_zip(tmp_path / "big-bias.npz", {"meta.npy": meta_npy(), "dense1/b.npy": member})
    with pytest.raises(WeightsError, match="its key allows at most"):
        weights.read_npz(path, str(path), {"meta": 1 << 20, "dense1/b": 40},
                         max_total_bytes=1 << 21, max_members=3)


def test_read_npz_total_budget_and_predicate(tmp_path):
    members = {f"params/p{i}.npy": npy_zeros(1000) for i in range(3)}
    path = bz2_zip(tmp_path / "ckpt.npz", members)

    def allowed(key: str) -> int | None:
        return 4000 if key.startswith("params/") else None

    arrays = weights.read_npz(path, "ckpt", allowed, max_total_bytes=20_000, max_members=3,
                              error=TwinnetError)
    assert sorted(arrays) == ["params/p0", "params/p1", "params/p2"]
    assert arrays["params/p0"].shape == (1000,) and arrays["params/p0"].flags.writeable
    with pytest.raises(TwinnetError, match="more than the 10000 bytes allowed"):
        weights.read_npz(path, "ckpt", allowed, max_total_bytes=10_000, max_members=3,
                         error=TwinnetError)


# ---- IDX: header before body --------------------------------------------------------

def bad_magic_data_dir(tmp_path: Path, size: int) -> Path:
    """A data folder whose train-images (read first) is a raw file with a wrong magic."""
    directory = tmp_path / "data"
    directory.mkdir()
    (directory / "train-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 0xDEADBEEF, 60_000, 28, 28) + bytes(size - 16))
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (directory / name).write_bytes(b"")  # never reached
    return directory


def test_raw_idx_magic_is_checked_before_the_body_is_read(tmp_path, good_weights, capsys):
    directory = bad_magic_data_dir(tmp_path, 8_000_000)
    path = directory / "train-images-idx3-ubyte"
    peak = peak_bytes(lambda: data.load_idx(path, data.FILES[path.name]))
    assert peak < 1 << 20  # before: the whole 8 MB file was read first
    assert main(["evaluate", str(good_weights), "--backend", "numpy",
                 "--data-dir", str(directory)]) == 2
    assert "wrong magic number 0xdeadbeef" in one_error_line(capsys)


def test_raw_idx_size_is_compared_with_the_header_before_reading(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(struct.pack(">II", data.LABEL_MAGIC, 10_000) + bytes(4_000_000))
    peak = peak_bytes(lambda: data.load_idx(path, data.FILES[path.name]))
    assert peak < 1 << 20
    with pytest.raises(data.DataError, match="too long: 4000008 bytes"):
        data.load_idx(path, data.FILES[path.name])


def test_a_folder_under_a_data_file_name_is_refused_by_name(tmp_path, good_weights, monkeypatch,
                                                            capsys):
    directory = tmp_path / "data"
    directory.mkdir()
    for spec in data.FILES.values():
        (directory / f"{spec.name}.gz").mkdir()
    # Before: the folder was passed over and the file downloaded.
    monkeypatch.setattr(data, "download", lambda *a: pytest.fail("tried to download"))
    assert main(["evaluate", str(good_weights), "--backend", "numpy",
                 "--data-dir", str(directory)]) == 2
    assert one_error_line(capsys).endswith("train-images-idx3-ubyte.gz: is a directory")


# ---- images -------------------------------------------------------------------------

def test_huge_png_is_refused_from_its_header_without_pillow_warning(tmp_path, good_weights,
                                                                     capsys):
    path = tmp_path / "huge.png"
    Image.new("L", (10_000, 10_000)).save(path)
    assert path.stat().st_size < 1 << 20
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["predict", str(path), "--weights", str(good_weights)]) == 2
    assert caught == []
    assert "huge.png: image too large" in one_error_line(capsys)


def test_image_over_our_pixel_limit_is_refused_before_decoding(tmp_path, good_weights,
                                                               monkeypatch, capsys):
    from twinnet import predict

    path = tmp_path / "wide.png"
    Image.new("L", (3000, 2000)).save(path)
    monkeypatch.setattr(predict, "MAX_PIXELS", 5_000_000)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded"))
    assert main(["predict", str(path), "--weights", str(good_weights)]) == 2
    assert "image too large: 3000x2000 pixels, more than 5000000" in one_error_line(capsys)


def digit_png(path: Path) -> Path:
    pixels = np.zeros((60, 60), dtype=np.uint8)
    pixels[15:45, 28:32] = 255
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_float_image_is_reported_and_the_others_predicted(tmp_path, good_weights,
                                                                     capsys, bad):
    pixels = np.zeros((60, 60), dtype=np.float32)
    pixels[15:45, 28:32] = 1.0
    pixels[3, 3] = bad
    tiff = tmp_path / "bad.tif"
    Image.fromarray(pixels, mode="F").save(tiff)
    good = digit_png(tmp_path / "digit.png")
    assert main(["predict", str(tiff), str(good), "--weights", str(good_weights)]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{good}: ")
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"twinnet: error: {tiff}: ")
    assert "NaN or infinite" in lines[0]


def test_device_as_image_is_not_a_regular_file(tmp_path, good_weights, capsys):
    good = digit_png(tmp_path / "digit.png")
    assert main(["predict", "/dev/null", str(good), "--weights", str(good_weights)]) == 2
    assert "/dev/null: not a regular file" in one_error_line(capsys)


# ---- paths that are not readable regular files --------------------------------------

def test_weights_path_is_a_directory(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path), "--backend", "numpy"]) == 2
    assert one_error_line(capsys) == f"twinnet: error: {tmp_path}: is a directory"


def test_weights_path_is_a_device(capsys):
    assert main(["evaluate", "/dev/zero", "--backend", "numpy"]) == 2
    assert one_error_line(capsys) == "twinnet: error: /dev/zero: not a regular file"


def test_weights_file_unreadable(good_weights, monkeypatch, capsys):
    # Tests run as root, who can read anything: the refusal of open(2) is injected.
    real_open = os.open

    def denying_open(path, *args, **kwargs):
        if str(path) == str(good_weights):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(util.os, "open", denying_open)
    assert main(["evaluate", str(good_weights), "--backend", "numpy"]) == 2
    assert one_error_line(capsys) == f"twinnet: error: {good_weights}: permission denied"


def test_weights_name_too_long(tmp_path, capsys):
    path = tmp_path / ("w" * 300 + ".npz")
    assert main(["evaluate", str(path), "--backend", "numpy"]) == 2
    assert one_error_line(capsys).endswith(": file name too long")


# ---- writing: full disk, read-only folder, names too long, umask, stale temps ----------

def test_full_disk_while_writing_keeps_the_old_file(tmp_path, good_weights, monkeypatch):
    before = good_weights.read_bytes()

    def savez_until_full(fh, **arrays):
        fh.write(b"PK\x03\x04 half an archive")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(weights.np, "savez", savez_until_full)
    with pytest.raises(TwinnetError) as caught:
        save_weights(good_weights, "linear", init_params("linear", seed=1), {"backend": "numpy"})
    message = str(caught.value)
    assert message.startswith(f"{good_weights}: not written (no space left on device)")
    assert "\n" not in message
    assert good_weights.read_bytes() == before
    assert os.listdir(good_weights.parent) == [good_weights.name]


def test_full_disk_during_train_output_is_one_line(tmp_path, mnist_path, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "weights.npz").write_bytes(b"earlier weights")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(weights.np, "savez", full)
    assert main(["train", "linear", "--backend", "numpy", "--steps", "3", "--eval-every", "3",
                 "--data-dir", str(mnist_path), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert f"{out / 'weights.npz'}: not written (no space left on device)" in line
    assert (out / "weights.npz").read_bytes() == b"earlier weights"
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]


def test_read_only_folder_is_refused_before_writing(tmp_path, monkeypatch):
    # Root ignores permission bits, so the refusal of creating a file is injected.
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(util.tempfile, "mkstemp", refuse)
    ran = []
    with pytest.raises(TwinnetError, match=r"out\.json: cannot write \(permission denied\)$"):
        with atomic_path(tmp_path / "out.json"):
            ran.append(True)
    assert ran == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_for_real(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(TwinnetError, match="permission denied"):
            write_text_atomic(tmp_path / "out.json", "{}")
    finally:
        tmp_path.chmod(0o755)


@pytest.mark.parametrize("target, fragment", [
    ("file/child.json", "file is not a folder"),
    ("n" * 300 + "/x.json", "cannot create its folder"),
    ("n" * 300 + ".json", "cannot write (file name too long)"),
    (".", "is a directory"),
])
def test_output_path_faults_are_one_line_naming_the_path(tmp_path, target, fragment):
    (tmp_path / "file").write_text("earlier")
    with pytest.raises(TwinnetError) as caught:
        write_text_atomic(tmp_path / target, "new")
    message = str(caught.value)
    assert fragment in message and "\n" not in message and str(tmp_path) in message
    assert (tmp_path / "file").read_text() == "earlier"


def test_outputs_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "a.txt", "a")
        os.umask(0o002)
        write_text_atomic(tmp_path / "b.txt", "b")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o664


def test_stale_temp_files_of_the_target_are_removed(tmp_path):
    target = tmp_path / "curves.png"
    stale = tmp_path / ".curves.png.k3j_9xq2.tmp"  # what a SIGKILL mid-write leaves
    stale.write_bytes(b"half")
    others = [tmp_path / ".curves.png.backup.tmp", tmp_path / ".confusion.png.k3j_9xq2.tmp",
              tmp_path / "curves.png.k3j_9xq2.tmp"]
    for other in others:
        other.write_bytes(b"keep")
    live = tmp_path / ".curves.png.live0000.tmp"
    live.write_bytes(b"being written")
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a live writer's lock
        write_text_atomic(target, "png")
    assert not stale.exists()
    assert all(other.read_bytes() == b"keep" for other in others)
    assert live.exists()
    assert target.read_text() == "png"
