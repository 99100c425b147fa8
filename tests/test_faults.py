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
import importlib.util
import io
import json
import os
import struct
import time
import tracemalloc
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

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
    assert main(["evaluate", "--weights", str(path), "--backend", "numpy"]) == 2
    assert "unexpected key(s) x0, x1, x2, x3" in one_error_line(capsys)


def test_too_many_members_are_refused_before_any_is_read(tmp_path, monkeypatch, capsys):
    path = bz2_zip(tmp_path / "many.npz", {f"{i}.npy": b"" for i in range(40)})
    opened = []
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: opened.append(a) or 1 / 0)
    assert main(["evaluate", "--weights", str(path), "--backend", "numpy"]) == 2
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
    assert main(["evaluate", "--weights", str(good_weights), "--backend", "numpy",
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
    assert main(["evaluate", "--weights", str(good_weights), "--backend", "numpy",
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
    assert main(["evaluate", "--weights", str(tmp_path), "--backend", "numpy"]) == 2
    assert one_error_line(capsys) == f"twinnet: error: {tmp_path}: is a directory"


def test_weights_path_is_a_device(capsys):
    assert main(["evaluate", "--weights", "/dev/zero", "--backend", "numpy"]) == 2
    assert one_error_line(capsys) == "twinnet: error: /dev/zero: not a regular file"


def test_weights_file_unreadable(good_weights, monkeypatch, capsys):
    # Tests run as root, who can read anything: the refusal of open(2) is injected.
    real_open = os.open

    def denying_open(path, *args, **kwargs):
        if str(path) == str(good_weights):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(util.os, "open", denying_open)
    assert main(["evaluate", "--weights", str(good_weights), "--backend", "numpy"]) == 2
    assert one_error_line(capsys) == f"twinnet: error: {good_weights}: permission denied"


def test_weights_name_too_long(tmp_path, capsys):
    path = tmp_path / ("w" * 300 + ".npz")
    assert main(["evaluate", "--weights", str(path), "--backend", "numpy"]) == 2
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
    # Before: nothing said that the training was lost. Now the message does.
    assert "nor could the trained state be saved as a checkpoint: the 3 steps of training are lost" in line
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


# ==== phase 2: run folders, checkpoints, interrupts, output checks ====================
# Finding -> test:
#   1 checkpoint through plain np.load   -> test_inflated_permutation_checkpoint_is_refused_at_once,
#                                          test_malformed_checkpoints_are_one_line
#   2 outputs checked after the work     -> test_train_output_checked_before_training,
#                                          test_report_output_checked_before_training,
#                                          test_full_disk_while_writing_a_run_keeps_the_earlier_run
#   3 Ctrl-C in final evaluation lost    -> test_ctrl_c_at_each_phase_keeps_the_run
#     Ctrl-C with the disk full          -> test_ctrl_c_with_the_disk_full_is_one_line
#   4 two writers in one folder          -> test_second_writer_is_refused_naming_the_pid
#     new train deletes a checkpoint     -> test_unfinished_run_is_not_overwritten_without_force
#     report reuses garbage weights      -> test_report_reuses_a_run_only_when_its_weights_hash_matches
#     --resume ignores flags             -> test_resume_refuses_conflicting_flags
#     train_seconds of the last segment  -> test_train_seconds_are_summed_over_segments

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from twinnet import checkpoint as checkpoint_module  # noqa: E402
from twinnet import plots, runs  # noqa: E402
from twinnet import training as train_module  # noqa: E402
from twinnet.checkpoint import CHECKPOINT_NAME  # noqa: E402

TRAIN = ["train", "linear", "--backend", "numpy", "--steps", "6", "--eval-every", "3"]
RUN_FILES = ["confusion.png", "curves.png", "metrics.json", "weights.npz"]


def train_args(out: Path, mnist_path: Path, *extra: str) -> list[str]:
    return [*TRAIN, "--data-dir", str(mnist_path), "--out", str(out), *extra]


def interrupted_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("twinnet: interrupted "), err
    return lines[0]


def folder_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def weights_arrays(path: Path) -> dict[str, np.ndarray]:
    return load_weights(path)[0]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mnist_path) -> Path:
    """The run every interrupted-and-resumed run must end up equal to."""
    out = tmp_path_factory.mktemp("whole") / "run"
    assert main(train_args(out, mnist_path)) == 0
    return out


def sigint_self() -> None:
    os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def interrupted_run(tmp_path, mnist_path, monkeypatch, capsys) -> Path:
    """A run folder holding the checkpoint of TRAIN interrupted after step 3."""
    out = tmp_path / "run"
    real = train_module.learning_rate

    def learning_rate(config, step):
        if step == 2:  # during update 3
            sigint_self()
        return real(config, step)

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "learning_rate", learning_rate)
        assert main(train_args(out, mnist_path)) == 130
    assert "after step 3" in interrupted_line(capsys)
    return out


# ---- 1. checkpoints: bounded, checked --------------------------------------------------

def checkpoint_members(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:  # our own good file
        return {key: npz[key] for key in npz.files}


def rewrite_checkpoint(path: Path, change, sign: bool | None = True) -> None:
    """Apply ``change(arrays, state)`` to a good checkpoint's members and JSON state; with
    ``sign`` the integrity hash is made to match, as a careful forger would, so that the
    checks of the contents themselves are reached; False keeps the old hash, None drops it."""
    arrays = checkpoint_members(path)
    stored = arrays.pop(checkpoint_module.HASH_KEY)
    state = json.loads(str(arrays.pop("state")))
    change(arrays, state)
    arrays["state"] = np.array(json.dumps(state))
    if sign:
        arrays[checkpoint_module.HASH_KEY] = np.array(checkpoint_module.content_sha256(arrays))
    elif sign is False:
        arrays[checkpoint_module.HASH_KEY] = stored
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def test_inflated_permutation_checkpoint_is_refused_at_once(interrupted_run, mnist_path, capsys):
    # Before: np.load inflated the permutation (5.3 GB for a 778 KB file), then trained on image 0.
    path = interrupted_run / CHECKPOINT_NAME
    arrays = checkpoint_members(path)
    count = (256 << 20) // 8
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<i8", "fortran_order": False,
                                                  "shape": (count,)})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in arrays.items():
            if key != "order/perm":
                with archive.open(f"{key}.npy", "w") as fh:
                    np.lib.format.write_array(fh, array)
        with archive.open("order/perm.npy", "w", force_zip64=True) as fh:
            fh.write(header.getvalue())
            for _ in range(count * 8 >> 24):
                fh.write(bytes(1 << 24))
    assert path.stat().st_size < 1 << 20
    started = time.perf_counter()
    peak = peak_bytes(lambda: checkpoint_module.load_checkpoint(path))
    assert time.perf_counter() - started < 1.0 and peak < 5 << 20
    assert main(["train", "--resume", str(interrupted_run), "--data-dir", str(mnist_path)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"twinnet: error: {path}: entry 'order/perm.npy' has")


def drop(key):
    return lambda arrays, state: arrays.pop(key)


def put(key, value):
    return lambda arrays, state: arrays.__setitem__(key, value)


def set_state(section, value, *keys):
    def change(arrays, state):
        table = state
        for key in keys:
            table = table[key]
        table[section] = value
    return change


@pytest.mark.parametrize("change", [
    set_state("step", 1),
    set_state("backend", "tf", "config"),
    put("params/dense1/b", np.ones(10, np.float32)),
    None,  # an older checkpoint: no hash at all
])
def test_edited_checkpoint_is_refused_by_its_integrity_hash(interrupted_run, mnist_path, capsys, change):
    # Before: a checkpoint whose step or backend was edited resumed silently.
    path = interrupted_run / CHECKPOINT_NAME
    rewrite_checkpoint(path, change or (lambda arrays, state: None), sign=False if change else None)
    assert main(["train", "--resume", str(interrupted_run), "--data-dir", str(mnist_path)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"twinnet: error: {path}: ")
    assert ("no integrity hash" if change is None else "do not match the checkpoint's integrity hash") in line


@pytest.mark.parametrize("change, message", [
    (drop("order/perm"), "order: missing perm"),
    (drop("params/dense1/W"), "params: missing dense1/W"),
    (put("params/evil", np.zeros(3, np.float32)), "unexpected key(s) params/evil"),
    (put("order/perm", np.zeros(55_000, np.int64)), "perm is not a permutation of range(55000)"),
    (put("order/perm", np.arange(55_000) + 10), "perm holds indices outside 0..54999"),
    (put("order/perm", np.arange(55_000, dtype=np.int32)), "perm must be 55000 int64 indices"),
    (put("params/dense1/b", np.zeros(10, np.float64)), "dense1/b has dtype float64"),
    (put("optimizer/iterations", np.array(1.5)), "iterations must be a non-negative integer"),
    (set_state("bogus", 1), "unexpected key(s) bogus"),
    (set_state("steps", -5, "config"), "config: steps must be at least 1"),
    (set_state("steps", "many", "config"), "config: steps must be a number (an integer), got 'many'"),
    (set_state("step", 99), "step must be an integer from 1 to 6, got 99"),
    (set_state("rng", {"state": 1}, "order"), "order: rng is not a PCG64 state"),
    (set_state("step", ["x"], "progress", "curves"), "curves must hold integer steps"),
])
def test_malformed_checkpoints_are_one_line(interrupted_run, mnist_path, capsys, change, message):
    path = interrupted_run / CHECKPOINT_NAME
    rewrite_checkpoint(path, change)
    before = path.read_bytes()
    assert main(["train", "--resume", str(interrupted_run), "--data-dir", str(mnist_path)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"twinnet: error: {path}: ") and message in line, line
    assert path.read_bytes() == before  # the file is not touched


# ---- 2. outputs checked before any work ------------------------------------------------

@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if data were loaded: the check must come before any work."""
    monkeypatch.setattr(data, "load_mnist", lambda *a, **k: pytest.fail("work started"))


@pytest.mark.parametrize("target, fragment", [
    ("file", "cannot write there: not a folder"),
    ("file/run", "cannot create the output folder (a part of the path is not a folder)"),
    ("n" * 300, "cannot create the output folder (file name too long)"),
])
def test_train_output_checked_before_training(tmp_path, no_training, capsys, target, fragment):
    (tmp_path / "file").write_text("earlier")
    assert main([*TRAIN, "--out", str(tmp_path / target)]) == 2
    assert one_error_line(capsys).endswith(fragment)
    assert (tmp_path / "file").read_text() == "earlier"


def test_train_output_read_only_or_full_before_training(tmp_path, no_training, monkeypatch, capsys):
    def refuse(*args, **kwargs):  # root ignores permission bits: the refusal is injected
        raise PermissionError(errno.EACCES, "Permission denied")

    with monkeypatch.context() as patch:
        patch.setattr(runs.tempfile, "mkstemp", refuse)
        assert main([*TRAIN, "--out", str(tmp_path / "ro")]) == 2
    assert one_error_line(capsys).endswith("ro: cannot write there (permission denied)")

    class Full:
        f_bavail, f_frsize = 10, 4096

    monkeypatch.setattr(runs.os, "statvfs", lambda path: Full)
    assert main([*TRAIN, "--out", str(tmp_path / "full")]) == 2
    assert "full: not enough free space: 0.0 MB free, the outputs need about" in one_error_line(capsys)


def test_report_output_checked_before_training(tmp_path, no_training, capsys):
    (tmp_path / "report").write_text("earlier")
    assert main(["report", "--out", str(tmp_path / "report")]) == 2
    assert one_error_line(capsys).endswith("report: cannot write there: not a folder")
    presets = tmp_path / "p.toml"
    # The second model's wrong twin is refused before the first model's run is trained.
    presets.write_text(REPORT_PRESETS + REPORT_PRESETS.replace("linear", "mlp128")
                       .replace('numpy = "P2:b"', 'jax = "P9:z"'))
    assert main(["report", "--out", str(tmp_path / "new"), "--presets", str(presets)]) == 2
    assert "twins: unknown key(s) jax" in one_error_line(capsys)
    assert not (tmp_path / "new").exists()


def test_full_disk_while_writing_a_run_keeps_the_earlier_run(tmp_path, mnist_path, monkeypatch,
                                                             capsys, uninterrupted):
    out = tmp_path / "run"
    assert main(train_args(out, mnist_path, "--seed", "1")) == 0
    capsys.readouterr()
    earlier = folder_bytes(out)
    real = plots.plot_confusion

    def full_disk(matrix, title, path):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half a png")
            raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(plots, "plot_confusion", full_disk)
        assert main(train_args(out, mnist_path)) == 2
    line = one_error_line(capsys)
    assert f"{out / 'confusion.png'}: not written (no space left on device)" in line
    assert f"nothing is lost: the trained state is saved in {out / CHECKPOINT_NAME}" in line
    assert f"make room and finish with: twinnet train --resume {out}" in line
    # Before: new weights beside the old metrics.json. Now the earlier run is whole.
    assert {k: v for k, v in folder_bytes(out).items() if k != CHECKPOINT_NAME} == earlier
    assert sorted(os.listdir(out)) == sorted([*RUN_FILES, CHECKPOINT_NAME])
    monkeypatch.setattr(plots, "plot_confusion", real)
    assert main(["train", "--resume", str(out), "--data-dir", str(mnist_path)]) == 0
    assert sorted(os.listdir(out)) == RUN_FILES
    for key, value in weights_arrays(uninterrupted / "weights.npz").items():
        assert np.array_equal(value, weights_arrays(out / "weights.npz")[key])


def test_full_disk_mid_run_keeps_the_previous_checkpoint_and_the_message_says_so(
        tmp_path, mnist_path, monkeypatch, capsys):
    # The disk fills after the checkpoint of step 3: the one of step 6 and the final files fail.
    out = tmp_path / "run"
    real = train_module.save_checkpoint
    saved = []

    def full_after_first(path, state):
        if saved:
            raise TwinnetError(f"{path}: not written (no space left on device); any previous "
                               "version is unchanged")
        saved.append(state["step"])
        real(path, state)

    def full(path, *args, **kwargs):
        raise TwinnetError(f"{path}: not written (no space left on device)")

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "save_checkpoint", full_after_first)
        patch.setattr(runs, "save_weights", full)
        assert main(train_args(out, mnist_path, "--checkpoint-every", "3", "--steps", "9")) == 2
    warning, error = capsys.readouterr().err.splitlines()
    assert warning.startswith("twinnet: warning: checkpoint after step 6 not saved (")
    assert "training goes on" in warning
    assert error.startswith(f"twinnet: error: {out / 'weights.npz'}: not written (no space left")
    assert f"the steps after the last checkpoint ({out / CHECKPOINT_NAME}) are lost" in error
    assert f"continue from it with: twinnet train --resume {out}" in error
    assert saved == [3] and checkpoint_module.load_checkpoint(out / CHECKPOINT_NAME)[1]["step"] == 3
    assert main(["train", "--resume", str(out), "--data-dir", str(mnist_path)]) == 0
    assert sorted(os.listdir(out)) == RUN_FILES


# ---- 3. Ctrl-C at each phase -------------------------------------------------------------

def ctrl_c_during_steps(monkeypatch):
    real = train_module.learning_rate
    monkeypatch.setattr(train_module, "learning_rate",
                        lambda config, step: (step == 3 and sigint_self()) or real(config, step))


def ctrl_c_during_final_evaluation(monkeypatch):
    real = train_module.evaluate

    def evaluate(model, x, y):
        if len(x) == data.TRAIN_SIZE:  # only the final evaluation covers the training split
            sigint_self()
        return real(model, x, y)

    monkeypatch.setattr(train_module, "evaluate", evaluate)


def ctrl_c_during_writing(monkeypatch):
    real = plots.plot_curves
    monkeypatch.setattr(plots, "plot_curves", lambda *a: sigint_self() or real(*a))


@pytest.mark.parametrize("phase, hook, expected", [
    ("steps", ctrl_c_during_steps, "interrupted after step 4;"),
    ("final evaluation", ctrl_c_during_final_evaluation,
     "interrupted in the final evaluation, after the last step 6;"),
    ("writing", ctrl_c_during_writing, "interrupted while writing the run, after the last step 6;"),
])
def test_ctrl_c_at_each_phase_keeps_the_run(tmp_path, mnist_path, monkeypatch, capsys, uninterrupted,
                                            phase, hook, expected):
    # Before: after the last step the handler was gone; "interrupted", exit 130, nothing kept.
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        hook(patch)
        assert main(train_args(out, mnist_path)) == 130
    line = interrupted_line(capsys)
    assert expected in line and f"continue with: twinnet train --resume {out}" in line
    assert sorted(os.listdir(out)) == [CHECKPOINT_NAME]  # nothing half-written beside it
    assert main(["train", "--resume", str(out), "--data-dir", str(mnist_path)]) == 0
    assert sorted(os.listdir(out)) == RUN_FILES
    for key, value in weights_arrays(uninterrupted / "weights.npz").items():
        assert np.array_equal(value, weights_arrays(out / "weights.npz")[key]), key
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["curves"] == json.loads((uninterrupted / "metrics.json").read_text())["curves"]


def test_ctrl_c_with_the_disk_full_is_one_line(interrupted_run, mnist_path, monkeypatch, capsys):
    path = interrupted_run / CHECKPOINT_NAME
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.np, "savez", full)
    ctrl_c_during_steps(monkeypatch)
    assert main(["train", "--resume", str(interrupted_run), "--data-dir", str(mnist_path)]) == 130
    line = interrupted_line(capsys)
    assert "after step 4; checkpoint not saved:" in line and "no space left on device" in line
    assert path.read_bytes() == before


# ---- 4. a run folder is one run ----------------------------------------------------------

def test_second_writer_is_refused_naming_the_pid(tmp_path, mnist_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "twinnet", "train", "linear", "--backend", "numpy",
               "--steps", "1000000", "--checkpoint-every", "10", "--data-dir", str(mnist_path),
               "--out", str(out)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / CHECKPOINT_NAME).exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.05)
        assert (out / ".lock").read_text().strip() == str(first.pid)
        second = subprocess.run([*command[:8], "5", *command[9:]], capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2
        assert second.stderr.splitlines() == [
            f"twinnet: error: {out}: in use by another twinnet process (PID {first.pid}); "
            "wait for it to finish or write elsewhere with --out"]
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=60)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 130, stderr
    assert stderr.startswith("twinnet: interrupted after step") and "Traceback" not in stderr
    assert sorted(os.listdir(out)) == [CHECKPOINT_NAME]  # the lock went with its holder


def test_unfinished_run_is_not_overwritten_without_force(interrupted_run, mnist_path, capsys):
    # Before: a new train silently deleted the interrupted run's checkpoint.
    path = interrupted_run / CHECKPOINT_NAME
    before = path.read_bytes()
    assert main(train_args(interrupted_run, mnist_path, "--seed", "3")) == 2
    assert one_error_line(capsys) == (
        f"twinnet: error: {interrupted_run} holds an unfinished run ({CHECKPOINT_NAME}); continue "
        f"it with: twinnet train --resume {interrupted_run}, or start over with --force")
    assert path.read_bytes() == before
    assert main(train_args(interrupted_run, mnist_path, "--seed", "3", "--force")) == 0
    assert sorted(os.listdir(interrupted_run)) == RUN_FILES
    assert json.loads((interrupted_run / "metrics.json").read_text())["config"]["seed"] == 3


REPORT_PRESETS = """
[models.linear]
optimizer = "sgd"
lr = 0.5
schedule = "constant"
steps = 10
batch_size = 100
seed = 0
lr_chosen_by = "a test"
twins = {numpy = "P2:b"}
"""


def test_report_reuses_a_run_only_when_its_weights_hash_matches(tmp_path, mnist_path, capsys):
    presets = tmp_path / "p.toml"
    presets.write_text(REPORT_PRESETS)
    out = tmp_path / "report"
    args = ["report", "--out", str(out), "--presets", str(presets), "--jobs", "1",
            "--data-dir", str(mnist_path)]
    run = out / "runs" / "P2b-linear-numpy"
    assert main(args) == 0
    capsys.readouterr()
    first = json.loads((run / "metrics.json").read_text())
    assert first["weights_sha256"] == runs.file_sha256(run / "weights.npz")
    assert main(args) == 0 and "[1/1]" not in capsys.readouterr().out  # reused: no finished run
    (run / "weights.npz").write_bytes(b"garbage")
    # Before: the garbage was reused and linked in REPORT.md. Now the run is trained again.
    assert main(args) == 0
    assert "  [1/1] P2:b linear (numpy): test accuracy" in capsys.readouterr().out
    load_weights(run / "weights.npz")
    assert json.loads((run / "metrics.json").read_text())["weights_sha256"] == first["weights_sha256"]


@pytest.mark.parametrize("flags, message", [
    (["--steps", "50"], "--steps 50 conflicts with the checkpoint's steps 6"),
    (["--lr", "0.5"], "--lr 0.5 conflicts with the checkpoint's lr 0.1"),
    (["--backend", "tf"], "--backend tf conflicts with the checkpoint's backend numpy"),
    (["--eval-every", "2"], "--eval-every 2 conflicts with the checkpoint's eval_every 3"),
    (["mlp128"], "model mlp128 conflicts with the checkpoint's model linear"),
    (["--out", "elsewhere"], "--out elsewhere conflicts with --resume"),
])
def test_resume_refuses_conflicting_flags(interrupted_run, mnist_path, capsys, flags, message):
    # Before: --resume ignored every other flag, --out included, without a word.
    before = folder_bytes(interrupted_run)
    assert main(["train", "--resume", str(interrupted_run), *flags, "--data-dir", str(mnist_path)]) == 2
    assert message in one_error_line(capsys)
    assert folder_bytes(interrupted_run) == before


def test_resume_accepts_flags_that_agree(interrupted_run, mnist_path):
    assert main(["train", "linear", "--resume", str(interrupted_run), "--backend", "numpy",
                 "--steps", "6", "--eval-every", "3", "--out", str(interrupted_run),
                 "--data-dir", str(mnist_path)]) == 0


def test_train_seconds_are_summed_over_segments(interrupted_run, mnist_path):
    # Before: train_seconds after a resume counted only the last segment.
    rewrite_checkpoint(interrupted_run / CHECKPOINT_NAME,
                       set_state("train_seconds", 1000.0, "progress"))
    assert main(["train", "--resume", str(interrupted_run), "--data-dir", str(mnist_path)]) == 0
    metrics = json.loads((interrupted_run / "metrics.json").read_text())
    assert 1000.0 < metrics["train_seconds"] < 1100.0
    assert metrics["wall_seconds"] > 0 and metrics["resumed_at_step"] == 3


# ---- issue 24: a damaged reused run, run folders checked before the work ----------------

def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("change, key", [
    (lambda m: m.update(final=None), "final: not a table"),
    (lambda m: m.update(curves={}), "curves: not a table"),
    (lambda m: m["curves"]["val_loss"].pop(), "curves: not lists of one length"),
    (lambda m: m.update(train_seconds="fast"), "train_seconds: not a number of seconds"),
    (lambda m: m.update(environment=None), "environment: not a table"),
    (lambda m: m["final"]["test"].pop("loss"), "final.test.loss: not a valid figure"),
    (lambda m: m["final"].pop("validation"), "final.validation: missing"),  # an older format
    (lambda m: m["confusion_matrix"][3].__setitem__(3, 0), "final.test.accuracy:"),
    (lambda m: m.update(confusion_matrix=[[1] * 3]), "confusion_matrix: not 10 rows"),
])
def test_damaged_metrics_of_a_reused_run_are_named_and_the_run_retrained(tmp_path, mnist_path, capsys,
                                                                           change, key):
    # Before: each of these raised a traceback while rendering (or exit 2 for the confusion
    # matrix); now the run is trained again, after one note naming the file and the key.
    presets = tmp_path / "p.toml"
    presets.write_text(REPORT_PRESETS)
    out = tmp_path / "report"
    args = ["report", "--out", str(out), "--presets", str(presets), "--jobs", "1",
            "--data-dir", str(mnist_path)]
    path = out / "runs" / "P2b-linear-numpy" / "metrics.json"
    assert main(args) == 0
    good = json.loads(path.read_text())
    damaged = json.loads(path.read_text())
    change(damaged)
    path.write_text(json.dumps(damaged))
    capsys.readouterr()
    assert main(args) == 0
    captured = capsys.readouterr()
    note, = captured.err.splitlines()
    assert note.startswith(f"twinnet: note: run P2:b: {path}: {key}") and "trained again" in note, note
    assert "  [1/1] P2:b linear (numpy)" in captured.out
    assert json.loads(path.read_text())["final"] == good["final"]


def test_huge_or_deeply_nested_metrics_are_not_read_whole(tmp_path, monkeypatch):
    from dataclasses import asdict

    from twinnet.config import TrainConfig

    config = TrainConfig(model="linear", backend="numpy")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(nested(100_000))
    assert runs.read_finished(run, config) == (None, f"{run / 'metrics.json'}: nested too deeply to "
                                                     "be a run's metrics")
    with open(run / "metrics.json", "wb") as fh:  # sparse: 300 MB that take no room
        fh.write(json.dumps({"config": asdict(config)}).encode()[:-1] + b', "pad": "')
        fh.truncate(300 << 20)
    peak = peak_bytes(lambda: runs.read_finished(run, config))
    metrics, reason = runs.read_finished(run, config)
    assert metrics is None and "314,572,800 bytes, more than the" in reason
    assert peak < 1 << 20


def test_inconsistent_run_outside_only_is_left_out_with_a_note_naming_only(tmp_path, mnist_path, capsys):
    presets = tmp_path / "p.toml"
    presets.write_text(REPORT_PRESETS + REPORT_PRESETS.replace("linear", "mlp128")
                       .replace('"P2:b"', '"P2:c"').replace("steps = 10", "steps = 2"))
    out = tmp_path / "report"
    args = ["report", "--out", str(out), "--presets", str(presets), "--jobs", "1",
            "--data-dir", str(mnist_path)]
    assert main(args) == 0
    path = out / "runs" / "P2b-linear-numpy" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["final"]["test"]["accuracy"] = 0.5
    path.write_text(json.dumps(metrics))
    capsys.readouterr()
    assert main([*args, "--only", "P2c"]) == 0
    note, = capsys.readouterr().err.splitlines()
    assert note.startswith(f"twinnet: note: run P2:b: {path}: final.test.accuracy: 0.5 disagrees")
    assert note.endswith("so it is left out; --only P2b trains it again")
    assert main([*args, "--only", "P2b"]) == 0
    assert runs.finished_metrics(path.parent, load_presets_config(presets, "P2:b")) is not None


def load_presets_config(presets: Path, label: str):
    from twinnet.presets import load_presets

    return next(p.config for p in load_presets(presets) if p.label == label)


@pytest.mark.parametrize("make, fragment", [
    (lambda out: (out / "weights.npz").mkdir(parents=True),
     "weights.npz: is a folder, where the run keeps a file"),
    (lambda out: (out.mkdir(parents=True), os.symlink(out / "elsewhere", out / "metrics.json")),
     "metrics.json: is a symbolic link, where the run keeps a file"),
    (lambda out: (out.parent.mkdir(exist_ok=True), (out.parent / "target").mkdir(),
                  os.symlink(out.parent / "target", out)), "is a symbolic link (to "),
])
def test_train_run_paths_are_checked_before_training(tmp_path, no_training, capsys, make, fragment):
    # Before: the run trained first and failed at the end (or wrote through the link).
    out = tmp_path / "runs" / "linear-numpy"
    make(out)
    assert main([*TRAIN, "--out", str(out)]) == 2
    assert fragment in one_error_line(capsys)
    assert not (tmp_path / "runs" / "target").exists() or not os.listdir(tmp_path / "runs" / "target")


def test_report_run_paths_are_checked_before_training(tmp_path, no_training, capsys):
    presets = tmp_path / "p.toml"
    presets.write_text(REPORT_PRESETS)
    out = tmp_path / "report"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "P2b-linear-numpy").write_text("a file")
    assert main(["report", "--out", str(out), "--presets", str(presets)]) == 2
    line = one_error_line(capsys)
    assert line.endswith("P2b-linear-numpy: is a file, but the run folder must be a folder")
    (out / "runs" / "P2b-linear-numpy").unlink()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", out / "runs" / "P2b-linear-numpy")
    assert main(["report", "--out", str(out), "--presets", str(presets)]) == 2
    assert f"P2b-linear-numpy: is a symbolic link (to {tmp_path / 'elsewhere'})" in one_error_line(capsys)


def test_presets_label_longer_than_the_filesystem_allows_is_one_line(tmp_path, no_training, capsys):
    # Before: OSError: File name too long, after the first runs had trained.
    presets = tmp_path / "p.toml"
    presets.write_text(REPORT_PRESETS.replace('"P2:b"', '"' + "P" * 300 + '"'))
    assert main(["report", "--out", str(tmp_path / "report"), "--presets", str(presets)]) == 2
    line = one_error_line(capsys)
    assert "is too long: its run folder name would take 313 bytes, more than the 255" in line


def test_steps_are_bounded(no_training, capsys):
    # Before: 9223372036854775807 steps were accepted and ran forever.
    assert main([*TRAIN[:-4], "--steps", str(2**63 - 1)]) == 2
    assert one_error_line(capsys).endswith("--steps must be at most 10,000,000 (twinnet's bound on a run), "
                                           f"got {2**63 - 1}")


@pytest.mark.skipif(not all(map(importlib.util.find_spec, ("tensorflow", "tensorboard"))),
                    reason="--tensorboard needs TensorFlow")
def test_tensorboard_target_is_checked_before_the_work(tmp_path, no_training, monkeypatch, capsys):
    # Before: a TensorFlow traceback after the training; report never wrote REPORT.md.
    from twinnet import tensorboard

    presets = tmp_path / "p.toml"
    presets.write_text(REPORT_PRESETS)
    (tmp_path / "file").write_text("x")
    for command in ([*TRAIN, "--out", str(tmp_path / "run")],
                    ["report", "--out", str(tmp_path / "report"), "--presets", str(presets)]):
        assert main([*command, "--tensorboard", str(tmp_path / "file")]) == 2
        assert one_error_line(capsys).endswith(f"--tensorboard {tmp_path / 'file'}: is a file, not a folder")

        def refuse(*args, **kwargs):  # root ignores permission bits: the refusal is injected
            raise PermissionError(errno.EACCES, "Permission denied")

        with monkeypatch.context() as patch:
            patch.setattr(tensorboard, "tempfile", SimpleNamespace(mkstemp=refuse))
            assert main([*command, "--tensorboard", str(tmp_path / "ro")]) == 2
        assert one_error_line(capsys).endswith("ro: cannot write there (permission denied)")


@pytest.mark.parametrize("backend", ["numpy", "tf"])
def test_finite_but_huge_weights_are_refused_at_load(tmp_path, mnist_path, capsys, backend):
    # Before: evaluate printed overflow warnings and a cross-entropy of nan; predict printed
    # "0 (0 nan%...)" with exit 0.
    if backend == "tf":
        pytest.importorskip("tensorflow")
    params = {key: np.full_like(value, 3e38) for key, value in init_params("cnn").items()}
    path = tmp_path / "huge.npz"
    save_weights(path, "cnn", params, {"backend": backend})
    image = digit_png(tmp_path / "digit.png")
    for command in (["evaluate", "--weights", str(path), "--data-dir", str(mnist_path), "--backend", backend],
                    ["predict", str(image), "--weights", str(path), "--backend", backend]):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no overflow warning either
            assert main(command) == 2
        captured = capsys.readouterr()
        assert not captured.out
        assert one_error_line_of(captured.err).startswith(
            f"twinnet: error: {path}: the weights give non-finite outputs (overflow")


def test_outputs_that_overflow_on_real_images_are_one_error(monkeypatch):
    from twinnet import metrics
    from twinnet.backend import load_model

    model = load_model("linear", "numpy")
    # Finite on a blank image; a full one sums to 784e36, past float32's 3.4e38.
    model.set_params({key: np.full_like(value, 1e36 if key.endswith("W") else 0.0)
                      for key, value in model.params.items()})
    x = np.zeros((3, 28, 28, 1), np.float32)
    x[1] = 1.0
    with pytest.raises(metrics.NonFiniteOutputError, match="not finite .* for 1 of 3 images"):
        metrics.predict_logits(model, x)


def one_error_line_of(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("twinnet: error: "), err
    return lines[0]


def test_ray_address_that_does_not_answer_is_one_line(tmp_path, mnist_path, capsys):
    # Before: Ray's "Failed to connect to GCS" lines for 7.5 minutes and more, never an error.
    import socket
    import threading

    from twinnet.parallel import check_ray_address

    presets = tmp_path / "p.toml"
    presets.write_text(REPORT_PRESETS)
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    for command in (["report", "--out", str(tmp_path / "report"), "--presets", str(presets)],
                    ["sweep", "linear", "--backend", "numpy", "--out", str(tmp_path / "sweeps")]):
        assert main([*command, "--engine", "ray", "--address", f"127.0.0.1:{port}",
                     "--data-dir", str(mnist_path)]) == 2
        assert one_error_line(capsys).endswith(f"--address 127.0.0.1:{port}: cannot connect (connection "
                                               "refused); is a Ray head running there (ray start --head)?")
    assert not (tmp_path / "report" / "runs").exists()

    with socket.socket() as silent, socket.socket() as talker:  # listen, never answer / answer HTTP
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        talker.bind(("127.0.0.1", 0))
        talker.listen()

        def answer_http() -> None:
            conn, _ = talker.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer_http, daemon=True).start()
        with pytest.raises(TwinnetError, match=r"no answer in 0.5 s"):
            check_ray_address(f"127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
        with pytest.raises(TwinnetError, match="the server there is not a Ray head"):
            check_ray_address(f"127.0.0.1:{talker.getsockname()[1]}", timeout=5)
    with pytest.raises(TwinnetError, match="expected HOST:PORT"):
        check_ray_address("127.0.0.1:http")
