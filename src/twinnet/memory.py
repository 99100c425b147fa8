"""How much memory a command will take for a model, estimated from its spec before
anything is allocated, and the one check every command makes with it.

The estimate (``estimate``) adds, for one path of one twin (``fast``: the NumPy twin's
fused blocks and batch split; ``reference``: its reference layers; ``tf``: Keras), the
parameters, their gradients and the optimizer's slots (Adam: two per parameter), and for
a batch of N images each layer's activations and a conv's im2col buffer (N x H_out x
W_out x k*k*C_in values). Training keeps every layer's output and every conv's columns
for the backward pass, which then holds the largest gradient twice; inference holds the
largest activation twice. It is a generous upper estimate, not a measurement: what
matters is that a model that cannot fit is refused in one line, naming the layer that
makes it large, rather than found out by the kernel's out-of-memory killer, a
``MemoryError`` traceback or a TensorFlow abort.

``check_memory`` compares the estimate with the budget (``budget``): the memory this
machine has available now (``MemAvailable``), or less where ``--max-memory`` (the
environment variable ``TWINNET_MAX_MEMORY``, which worker processes inherit) or the
process's address-space limit says so.
"""

from __future__ import annotations

import math
import os
import re
import resource
from dataclasses import dataclass

from twinnet import models
from twinnet.errors import TwinnetError

PATHS = ("fast", "reference", "tf")
# Images inference runs at a time (TFModel.eval_batch, numpy_nn.network.MAX_EVAL_CHUNK).
INFERENCE_BATCH = 1000
# The fast path infers fewer at a time where one image's largest output is large: this many
# bytes of it per chunk (numpy_nn.fast.budgets.ACTIVATION_BYTES; a test holds them equal).
FAST_ACTIVATION_BYTES = 1 << 20
MAX_MEMORY_ENV = "TWINNET_MAX_MEMORY"
# What the process itself takes besides the model (Python, NumPy, the MNIST arrays of
# 55,000 + 5,000 + 10,000 float32 images, 220 MB): kept out of an address-space limit's room.
BASELINE_BYTES = 300 << 20
UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30,
         "gb": 1 << 30, "t": 1 << 40, "tb": 1 << 40}


class MemoryBudgetError(TwinnetError):
    """A model and batch whose estimated memory is over the budget."""


def parse_size(text: str, source: str = "--max-memory") -> int:
    """Bytes of a size such as ``500M``, ``2G``, ``1.5GB`` or ``1000000`` (binary units);
    TwinnetError naming ``source`` for anything else or a size below 1 MB."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in UNITS:
        raise TwinnetError(f"{source} must be a size such as 500M or 2G, got {text!r}")
    size = int(float(match.group(1)) * UNITS[unit])
    if size < 1 << 20:
        raise TwinnetError(f"{source} must be at least 1M, got {text!r}")
    return size


def size_text(n: float) -> str:
    """``n`` bytes for people: 512 KB, 3.4 MB, 1.2 GB, 5.7 TB (powers of 1024)."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def available_bytes() -> int | None:
    """The memory this machine can give now without swapping (``MemAvailable``), else its
    physical memory; None where neither can be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def budget() -> tuple[int | None, str]:
    """(bytes, what they are) a command may take: the smallest of ``--max-memory``
    (TWINNET_MAX_MEMORY), the address-space limit (less BASELINE_BYTES) and the memory
    available; (None, "") where none is known."""
    candidates: list[tuple[int, str]] = []
    given = os.environ.get(MAX_MEMORY_ENV)
    if given:
        candidates.append((parse_size(given, MAX_MEMORY_ENV), f"the --max-memory budget of {given}"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        room = max(soft - BASELINE_BYTES, 0)
        candidates.append((room, f"the {size_text(room)} the address-space limit leaves"))
    available = available_bytes()
    if available is not None:
        candidates.append((available, f"the {size_text(available)} this machine has available"))
    return min(candidates) if candidates else (None, "")


@dataclass(frozen=True)
class Estimate:
    """Estimated bytes in all, and the layer that takes the most of them (its 1-based
    index, a description, its bytes and what they are)."""

    total: int
    layer: int
    layer_name: str
    layer_bytes: int
    what: str


def _layer_label(index: int, layer: models.LayerSpec) -> str:
    kind = {models.DenseSpec: "dense", models.Conv2DSpec: "conv2d", models.MaxPool2DSpec: "maxpool2d",
            models.AvgPool2DSpec: "avgpool2d", models.FlattenSpec: "flatten",
            models.ReLUSpec: "relu", models.LeakyReLUSpec: "leaky_relu", models.TanhSpec: "tanh",
            models.SigmoidSpec: "sigmoid", models.DropoutSpec: "dropout",
            models.BatchNormSpec: "batchnorm"}[type(layer)]
    name = getattr(layer, "name", None)
    return f"layer {index} ({kind}{', ' + name if name else ''})"


def estimate(model: str | tuple, batch: int, *, training: bool, path: str = "fast",
             optimizer: str = "sgd", itemsize: int = 4, parts: int = 1) -> Estimate:
    """Estimated peak bytes of ``model`` on ``path`` (one of PATHS) for a batch of
    ``batch`` images, training (forward, backward, update) or inferring; ``itemsize`` 4
    for float32, 8 for float64; ``parts`` the fast path's worker processes, each holding
    the parameters and gradients in shared memory. Arithmetic on the spec alone."""
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}: expected one of {', '.join(PATHS)}")
    steps = models.walk(model)
    if path == "fast" and not training:  # as split.inference_images cuts the chunks
        largest_out = max(math.prod(step.out) for step in steps) * itemsize
        batch = min(batch, max(1, FAST_ACTIVATION_BYTES // largest_out))
    # Parameters: the twin's own arrays, TensorFlow's variables beside the NumPy copies,
    # the fast path's shared block (parameters and one set of gradients per part).
    copies = 1 + (1 if path == "tf" else 0)
    if training:
        copies += 1 + (2 if optimizer == "adam" else 0) + (parts if path == "fast" else 0)
    per_layer: list[tuple[int, str]] = []
    outs, all_cols = [], []
    for step in steps:
        params = models.layer_params(step.layer) * itemsize * copies
        out = math.prod(step.out) * batch * itemsize
        cols = 0
        if isinstance(step.layer, models.Conv2DSpec):
            k, c_in = step.layer.kernel, step.layer.c_in
            cols = step.out[0] * step.out[1] * k * k * c_in * batch * itemsize
        outs.append(out)
        all_cols.append(cols)
        # Training keeps every output and every conv's columns for the backward pass;
        # inference holds a layer's input and output (about twice the larger) and columns.
        held = out + cols if training else 2 * out + cols
        images = f"{batch} image{'s' if batch != 1 else ''}"
        what = max((params, "of parameters" + (", gradients and optimizer slots" if training else "")),
                   (out, f"of activations ({'x'.join(map(str, step.out))} values an image, {images})"))
        if cols > what[0]:
            what = (cols, f"of im2col columns ({step.out[0]}x{step.out[1]} pixels x {k}x{k}x{c_in} "
                          f"values, {images})")
        per_layer.append((params + held, what[1]))
    param_bytes = sum(models.layer_params(s.layer) for s in steps) * itemsize * copies
    if training:  # the backward pass adds two gradients of the largest output and of columns
        total = param_bytes + sum(outs) + sum(all_cols) + 2 * max(outs) + max(all_cols)
    else:
        total = param_bytes + max(2 * o + c for o, c in zip(outs, all_cols, strict=True))
    index = max(range(len(per_layer)), key=lambda i: per_layer[i][0])
    return Estimate(total, index + 1, _layer_label(index + 1, steps[index].layer),
                    per_layer[index][0], per_layer[index][1])


def path_of(backend: str, reference: bool = False) -> str:
    """The path (PATHS) a twin runs on: ``tf``, or the NumPy twin's ``fast`` or ``reference``."""
    return "tf" if backend == "tf" else "reference" if reference else "fast"


def check_memory(model: str | tuple, batch: int, *, training: bool, paths: tuple[str, ...] = ("fast",),
                 optimizer: str = "sgd", itemsize: int = 4, parts: int = 1, copies: int = 1,
                 what: str = "") -> None:
    """MemoryBudgetError, one line, when ``estimate`` for any of ``paths`` (times
    ``copies``: runs at once in worker processes) is over ``budget()``: it names the
    model, the estimate, the budget and the layer that takes the most. ``what`` names
    the work ("training, batch 100")."""
    limit, source = budget()
    if limit is None:
        return
    for path in paths:
        found = estimate(model, batch, training=training, path=path, optimizer=optimizer,
                         itemsize=itemsize, parts=parts)
        if found.total * copies > limit:
            name = model if isinstance(model, str) else "the model"
            work = what or f"{'training' if training else 'inference'}, batch {batch}"
            runs = f" x {copies} runs at once" if copies > 1 else ""
            raise MemoryBudgetError(
                f"{name} needs about {size_text(found.total)}{runs} ({work}, {path} path), more than "
                f"{source}; {found.layer_name} takes {size_text(found.layer_bytes)} "
                f"{found.what}: use a smaller batch or a smaller layer")
