#!/usr/bin/env bash
# Use twinnet as someone who installs the wheel would: build it, install it into a fresh
# virtual environment outside the clone, and run it from a folder outside the clone.
#   1. the base install (no extras): `twinnet docs` (the docs in the wheel, named by --help),
#      train linear on the NumPy twin, evaluate, predict a PNG;
#   2. with [serve]: `twinnet serve` answers a PNG POST with the NumPy twin's probabilities;
#   3. with [serve,tf]: with both twins' probabilities.
# Usage: scripts/wheel_smoke.sh [WORKDIR]   (default: a new temporary folder, removed after)
# MNIST comes from $TWINNET_DATA, else it is downloaded into ~/.cache/twinnet/mnist.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
server="" temporary=""
cleanup() {
  if [[ -n $server ]]; then kill "$server" 2>/dev/null || true; fi
  if [[ -n $temporary ]]; then rm -rf "$temporary"; fi
}
trap cleanup EXIT
if [[ $# -ge 1 ]]; then
  work=$(mkdir -p "$1" && cd "$1" && pwd)
else
  work=$(mktemp -d)
  temporary=$work
fi
case "$work/" in "$repo"/*) echo "wheel_smoke: WORKDIR must lie outside the clone" >&2; exit 2;; esac
start=$SECONDS
step() { echo "wheel_smoke: [$((SECONDS - start)) s] $*"; }

step "building the wheel"
# From a copy of the clone's files (tracked, and new ones git does not ignore): building in
# the clone itself would leave src/twinnet.egg-info there, which then shadows the
# installed package's metadata for anything run with src on its path.
rm -rf "$work/dist" "$work/source"
mkdir -p "$work/source"
(cd "$repo" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$work/source"
"$python" -m pip wheel --quiet --no-deps -w "$work/dist" "$work/source"
wheel=$(ls "$work"/dist/twinnet-*.whl)
step "installing $(basename "$wheel") (no extras) into a fresh venv"
rm -rf "$work/venv"
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet "$wheel"
twinnet="$work/venv/bin/twinnet"
py="$work/venv/bin/python"
cd "$work"  # nothing of the clone is reachable from here
"$py" - <<'PY'
import importlib.util, sys
import twinnet
assert "site-packages" in twinnet.__file__, f"twinnet imported from {twinnet.__file__}, not the wheel"
assert importlib.util.find_spec("tensorflow") is None, "the base install should not bring TensorFlow"
PY

step "twinnet docs (base install): --help names it; the docs print from the wheel"
help=$("$twinnet" --help)
grep -q "twinnet docs usage" <<<"$help" || { echo "wheel_smoke: --help does not name twinnet docs" >&2; exit 1; }
"$twinnet" docs
"$twinnet" docs usage > usage.md
cmp usage.md "$repo/docs/usage.md"  # the repository's file, shipped as it is
doc=$("$twinnet" docs derivations --path)
case "$doc" in "$work/venv/"*) ;; *) echo "wheel_smoke: docs read from $doc, not the wheel" >&2; exit 1;; esac
readme=$("$twinnet" docs readme)
[[ $(head -1 <<<"$readme") == "# twinnet" ]] || { echo "wheel_smoke: no README in the metadata" >&2; exit 1; }

step "twinnet train linear --backend numpy (base install)"
rm -rf run
"$twinnet" train linear --backend numpy --steps 30 --eval-every 10 --out run
step "twinnet evaluate"
"$twinnet" evaluate --weights run/weights.npz | head -3
"$py" - <<'PY'
# A test digit as a PNG file, drawn dark on light as a user's scan would be.
import numpy as np
from PIL import Image
from twinnet.data import load_mnist
test = load_mnist().test
Image.fromarray(255 - np.round(test.x[0, ..., 0] * 255).astype(np.uint8)).save("digit.png")
print(f"digit.png: test image 0, label {test.y[0]}")
PY
step "twinnet predict digit.png"
"$twinnet" predict digit.png --weights run/weights.npz

# serve_and_post TWINS: start `twinnet serve` on a free port (the packaged cnn weights), POST
# digit.png once the TensorFlow twin is ready or known to be unavailable, and check that the
# answer holds exactly TWINS ("numpy" or "numpy tf") with ten probabilities each.
serve_and_post() {
  "$twinnet" serve --port 0 > serve.log 2>&1 &
  server=$!
  WANT="$1" "$py" - <<'PY'
import json, os, re, time, urllib.request
want = set(os.environ["WANT"].split())
deadline = time.monotonic() + 180
url = None
while time.monotonic() < deadline:
    log = open("serve.log").read()
    url = url or (re.search(r"http://127\.0\.0\.1:\d+/", log) or [None])[0]
    if url and "TensorFlow twin" in log:
        break
    time.sleep(0.5)
print(log, end="")
assert url and "TensorFlow twin" in log, "the server did not start"
assert not re.search("oneDNN|absl", log), "TensorFlow's start-up lines were printed"
request = urllib.request.Request(url + "api/predict", data=open("digit.png", "rb").read(),
                                 headers={"Content-Type": "image/png"}, method="POST")
with urllib.request.urlopen(request, timeout=60) as response:
    answer = json.loads(response.read())
twins = answer["twins"]
assert set(twins) == want, (want, answer)
for name, twin in twins.items():
    assert len(twin["probabilities"]) == 10 and abs(sum(twin["probabilities"]) - 1) < 1e-4, twin
    print(f"serve: {name} twin reads {twin['digit']} (p = {max(twin['probabilities']):.3f})")
if "tf" in want:
    print(f"serve: twins agree: {answer['agree']}, max |p_numpy - p_tf| = {answer['max_difference']:.2e}")
else:
    print(f"serve: {answer['tf_status']}")
PY
  kill "$server"
  wait "$server" 2>/dev/null || true
  server=""
}

step "installing the serve extra; twinnet serve with the NumPy twin alone, POST digit.png"
"$py" -m pip install --quiet "$wheel[serve]"
serve_and_post numpy
step "installing the tf extra; twinnet serve with both twins, POST digit.png"
"$py" -m pip install --quiet "$wheel[serve,tf]"
serve_and_post "numpy tf"
step "passed"
