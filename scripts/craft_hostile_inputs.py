"""Craft small hostile input files (each at most 1 MB on disk) and, with ``--measure``,
time the commands that read them under ``/usr/bin/time -v``, printing a Markdown table of
exit code, peak memory (max RSS) and wall-clock seconds. Hostile spec files (issue 32:
a FIFO, links to /dev/zero and /dev/urandom, a 100 MB file, 5,000-deep nesting, out-of-range
values) go through every command that takes a MODEL, and weights files whose meta carries a
hostile spec through every command that takes --weights.

    PYTHONPATH=src python scripts/craft_hostile_inputs.py /tmp/hostile --measure

The MNIST folder for ``evaluate`` comes from ``$TWINNET_DATA`` (or ``../shared/mnist``).
Every command is expected to refuse its hostile input with one ``twinnet: error:`` line
(exit 2), except ``predict`` on the NaN image among good ones, which predicts the good
ones and exits 2 for the bad one.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from twinnet.models import init_params
from twinnet.weights import save_weights

# The per-member cap of the reader before issue 16: each member could hold this much.
OLD_MAX_ENTRY_BYTES = 64 << 20
REPO = Path(__file__).resolve().parents[1]


def npy_zeros_bytes(count: int, dtype: str = "<f4") -> bytes:
    """A .npy holding ``count`` zeros of ``dtype``, written without allocating them twice."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": dtype, "fortran_order": False, "shape": (count,)})
    return header.getvalue() + bytes(count * np.dtype(dtype).itemsize)


def zip_members(path: Path, members: dict[str, bytes | int]) -> None:
    """A bzip2-compressed zip; an int member is that many bytes of float32 zeros as .npy."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_BZIP2) as archive:
        for name, content in members.items():
            if isinstance(content, int):
                content = npy_zeros_bytes(content // 4)
            archive.writestr(name, content)


def craft(out: Path) -> dict[str, Path]:
    """Write every hostile input (and the good files the commands need) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    good = out / "good-weights.npz"
    save_weights(good, "linear", init_params("linear"), {"backend": "numpy", "steps": 0})
    files["good-weights.npz"] = good
    meta = np.array(json.dumps({"model": "linear"}))
    meta_npy = io.BytesIO()
    np.save(meta_npy, meta)

    # 36 unknown members, each just under the old per-member cap: 2.3 GB decompressed.
    just_under = OLD_MAX_ENTRY_BYTES - 4096
    files["npz-bomb.npz"] = out / "npz-bomb.npz"
    zip_members(files["npz-bomb.npz"], {f"p{i:02d}.npy": just_under for i in range(36)})

    # Four unknown keys, each inflating to 64 MB: refused from the directory, by name.
    files["unknown-keys.npz"] = out / "unknown-keys.npz"
    zip_members(files["unknown-keys.npz"], {"meta.npy": meta_npy.getvalue(),
                                            **{f"x{i}.npy": just_under for i in range(4)}})

    # A known key whose member inflates far beyond any model's array.
    files["inflated-member.npz"] = out / "inflated-member.npz"
    zip_members(files["inflated-member.npz"],
                {"meta.npy": meta_npy.getvalue(), "dense1/W.npy": just_under})

    # Tens of thousands of tiny members.
    files["many-members.npz"] = out / "many-members.npz"
    with zipfile.ZipFile(files["many-members.npz"], "w", compression=zipfile.ZIP_STORED) as archive:
        for i in range(10_000):
            archive.writestr(f"{i}.npy", b"")

    # A raw IDX file with a wrong magic number, in a data folder whose other files are real.
    data_dir = out / "bad-magic-data"
    data_dir.mkdir(exist_ok=True)
    mnist = Path(os.environ.get("TWINNET_DATA") or REPO.parent / "shared" / "mnist")
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        for candidate in (mnist / f"{name}.gz", mnist / name):
            link = data_dir / candidate.name
            if candidate.exists() and not link.exists():
                link.symlink_to(candidate.resolve())
    bad = data_dir / "t10k-images-idx3-ubyte"
    bad.write_bytes(struct.pack(">IIII", 0xDEADBEEF, 10_000, 28, 28) + bytes(1_000_000 - 16))
    files["bad-magic-data/"] = data_dir
    files["bad-magic.idx"] = bad

    # 10000 x 10000 pixels in a PNG of about 100 KB.
    files["huge.png"] = out / "huge.png"
    Image.new("L", (10_000, 10_000)).save(files["huge.png"], optimize=True)

    # The largest image accepted (6000 x 6000 RGBA, 36 MP, under predict.MAX_PIXELS):
    # the worst case of memory that predict still works through.
    files["largest-accepted.png"] = out / "largest-accepted.png"
    largest = Image.new("RGBA", (6000, 6000), (255, 255, 255, 255))
    largest.paste((0, 0, 0, 255), (2500, 1500, 3500, 4500))
    largest.save(files["largest-accepted.png"])
    del largest

    # A float TIFF with a NaN and an Inf pixel, among good images.
    pixels = np.zeros((60, 60), dtype=np.float32)
    pixels[15:45, 28:32] = 1.0
    files["digit.png"] = out / "digit.png"
    Image.fromarray((pixels * 255).astype(np.uint8)).save(files["digit.png"])
    pixels[0, 0], pixels[1, 1] = np.nan, np.inf
    files["nan.tif"] = out / "nan.tif"
    Image.fromarray(pixels, mode="F").save(files["nan.tif"])
    files.update(craft_specs(out))
    return files


TAIL = '[[layers]]\ntype = "flatten"\n[[layers]]\ntype = "dense"\nunits = 10\n'
DENSE = ('[[layers]]\ntype = "flatten"\n[[layers]]\ntype = "dense"\nunits = {}\n[[layers]]\n'
         'type = "dense"\nunits = 10\n')
# Hostile spec files (issue 32): name -> TOML text, or a special kind.
SPECS = {
    "fifo.toml": "FIFO",
    "dev-zero.toml": "/dev/zero",
    "dev-urandom.toml": "/dev/urandom",
    "100mb.toml": "SPARSE",
    "nested-5000.toml": "name = " + "[" * 5000 + "]" * 5000 + "\n" + TAIL,
    "kernel-1000.toml": '[[layers]]\ntype = "conv2d"\nfilters = 4\nkernel = 1000\npadding = "same"\n' + TAIL,
    "units-200000.toml": DENSE.format(200_000),
    "units-1e9.toml": DENSE.format(10**9),
    "alpha-1e308.toml": ('[[layers]]\ntype = "flatten"\n[[layers]]\ntype = "leaky_relu"\nalpha = 1e308\n'
                         '[[layers]]\ntype = "dense"\nunits = 10\n'),
}


def craft_specs(out: Path) -> dict[str, Path]:
    """The hostile spec files of SPECS, a presets file naming each (for ``report``), and
    weights files whose meta carries a hostile spec: 10,000 layers, kernel 1000."""
    files: dict[str, Path] = {}
    for name, content in SPECS.items():
        path = out / name
        path.unlink(missing_ok=True)
        if content == "FIFO":
            os.mkfifo(path)
        elif content.startswith("/dev/"):
            path.symlink_to(content)
        elif content == "SPARSE":  # 100 MB of layers as the file's size says; sparse on disk
            path.write_text('[[layers]]\ntype = "flatten"\n')
            os.truncate(path, 100_000_000)
        else:
            path.write_text(content)
        files[name] = path
        presets = out / f"presets-{name}"
        presets.write_text(f'[models."{path}"]\noptimizer = "sgd"\nlr = 0.1\nschedule = "constant"\n'
                           'steps = 5\nbatch_size = 10\nseed = 0\nlr_chosen_by = "-"\n'
                           'twins = {numpy = "X:a"}\n')
        files[f"presets-{name}"] = presets
    small = out / "small.toml"
    small.write_text('name = "carried"\n' + TAIL)
    for name, layers in (
            ("meta-10000-layers.npz",
             [{"type": "flatten"}] + [{"type": "relu"}] * 10_000 + [{"type": "dense", "units": 10}]),
            ("meta-kernel-1000.npz", [{"type": "conv2d", "filters": 4, "kernel": 1000}, {"type": "flatten"},
                                      {"type": "dense", "units": 10}])):
        path = out / name
        save_weights(path, str(small), init_params(str(small)), {})
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
        meta = json.loads(str(arrays["meta"]))
        arrays["meta"] = np.array(json.dumps({**meta, "spec": {"name": "carried", "layers": layers}}))
        np.savez(path, **arrays)
        files[name] = path
    return files


def commands(files: dict[str, Path]) -> list[tuple[str, Path, list[str]]]:
    """(label, the hostile file, twinnet arguments) for every measured command."""
    good = str(files["good-weights.npz"])
    rows = []
    for name in ("npz-bomb.npz", "unknown-keys.npz", "inflated-member.npz", "many-members.npz"):
        rows.append((name, files[name], ["evaluate", "--weights", str(files[name]), "--backend", "numpy"]))
        rows.append((name, files[name],
                     ["predict", str(files["digit.png"]), "--weights", str(files[name])]))
    rows.append(("raw t10k-images with bad magic", files["bad-magic.idx"],
                 ["evaluate", "--weights", good, "--backend", "numpy",
                  "--data-dir", str(files["bad-magic-data/"])]))
    rows.append(("huge.png (10000x10000)", files["huge.png"],
                 ["predict", str(files["huge.png"]), "--weights", good]))
    rows.append(("largest-accepted.png (6000x6000 RGBA)", files["largest-accepted.png"],
                 ["predict", str(files["largest-accepted.png"]), "--weights", good]))
    rows.append(("nan.tif + digit.png", files["nan.tif"],
                 ["predict", str(files["nan.tif"]), str(files["digit.png"]), "--weights", good]))
    for name in SPECS:
        spec = str(files[name])
        for argv in (["train", spec], ["train", spec, "--reference"], ["train", spec, "--backend", "tf"],
                     ["gradcheck", spec], ["bench", "--models", spec, "--repeats", "1"], ["compare", spec],
                     ["sweep", spec], ["report", "--presets", str(files[f"presets-{name}"])]):
            rows.append((name, files[name], argv))
    for name in ("meta-10000-layers.npz", "meta-kernel-1000.npz"):
        weights = str(files[name])
        for argv in (["evaluate", "--weights", weights],
                     ["predict", str(files["digit.png"]), "--weights", weights],
                     ["trace", "--index", "0", "--weights", weights], ["compare", "--weights", weights],
                     ["serve", "--weights", weights, "--port", "0"]):
            rows.append((name, files[name], argv))
    return rows


def measure(files: dict[str, Path]) -> None:
    print("| input | size | command | exit | max RSS MB | seconds | stderr |")
    print("|---|---|---|---|---|---|---|")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    scratch = Path(tempfile.mkdtemp(prefix="twinnet-hostile-"))  # run folders, sweeps, reports
    for name, path, argv in commands(files):
        size = path.lstat().st_size
        done = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "twinnet", *argv],
                              capture_output=True, text=True, env=env, cwd=scratch, timeout=600)
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
        wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
        seconds = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
        errors = [line for line in done.stderr.splitlines() if not line.startswith("\t")
                  and not line.startswith("Command ")]
        first = errors[0][:90] if errors else ""
        command = " ".join(arg for arg in argv if not arg.startswith("/")).replace(name, "").strip()
        print(f"| {name} | {size / 1e3:.0f} KB | {command} | {done.returncode} | {rss / 1024:.0f} | "
              f"{seconds:.2f} | {len(errors)} line(s): `{first}` |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the crafted files")
    parser.add_argument("--measure", action="store_true",
                        help="run each command under /usr/bin/time -v and print the table")
    args = parser.parse_args()
    files = craft(args.out)
    for name, path in files.items():
        print(f"{name}: {path}")
    if args.measure:
        measure(files)


if __name__ == "__main__":
    main()
