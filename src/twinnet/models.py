"""Model specs as data: a list of layer specs, written once in TOML and built by both twins.

A spec file is a TOML table with an optional ``name``, an optional ``description`` and an
array of ``[[layers]]``, each with a ``type`` and that type's keys (``LAYER_KEYS``). The
four built-in models are such files, shipped in ``twinnet/specs/``; a user's file is
named by its path wherever a model name is taken. Shapes are inferred from the 28x28x1
input, so a spec says only what a layer adds (``units``, ``filters``, ``kernel``...).

A parsed spec is a tuple of the ``*Spec`` dataclasses below (spec classes end in
``Spec``; the layers that compute are ``twinnet.numpy_nn.layers`` and Keras's).
Parameter names are numbered per kind: ``conv1``, ``conv2``, ``dense1``, ``bn1``, with
keys ``<name>/W`` and ``<name>/b`` (dense W (in, out), conv W HWIO (k, k, in, out)) and,
for batch norm, ``<name>/gamma``, ``/beta``, ``/moving_mean``, ``/moving_variance``.
The last layer produces the logits (N, 10); softmax lives in the loss.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from twinnet.errors import TwinnetError

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
# The assignment report's four models, and the examples shipped beside them (their specs are
# examples/*.toml in the repository); each is a spec in the package's specs/ folder.
MODEL_NAMES: tuple[str, ...] = ("linear", "mlp128", "mlp256x2", "cnn")
EXAMPLE_NAMES: tuple[str, ...] = ("lenet5", "cnn-bn-dropout")
NAMED_MODELS: tuple[str, ...] = MODEL_NAMES + EXAMPLE_NAMES
PADDINGS = ("same", "valid")

# Bounds on a spec, checked before anything is built or allocated (a spec is input like a
# weights file). A layer takes 20 to 60 bytes of TOML, so a spec of a few hundred layers is
# a few KB; the built-in models have at most 15 layers and 270,000 parameters.
SPEC_MAX_BYTES = 64 << 10
MAX_LAYERS = 500
MAX_UNITS = 65_536  # a dense layer's units
MAX_FILTERS = 4_096  # a conv layer's filters
MAX_PARAMS = 1 << 25  # 33.5 million parameters: 134 MB of float32
MAX_NAME_CHARS = 100


class SpecError(TwinnetError):
    """A spec file that cannot be built: one line naming the file, the layer and the key."""


@dataclass(frozen=True)
class DenseSpec:
    """``z = x @ W + b``: x (N, n_in) -> z (N, n_out)."""

    name: str
    n_in: int
    n_out: int


@dataclass(frozen=True)
class Conv2DSpec:
    """Cross-correlation with a (kernel, kernel, c_in, c_out) HWIO kernel, NHWC images."""

    name: str
    c_in: int
    c_out: int
    kernel: int = 3
    stride: int = 1
    padding: str = "same"


@dataclass(frozen=True)
class MaxPool2DSpec:
    """Maximum over size x size windows every ``stride`` pixels ('valid': no padding)."""

    size: int = 2
    stride: int = 2


@dataclass(frozen=True)
class AvgPool2DSpec:
    """Mean over size x size windows every ``stride`` pixels ('valid': no padding)."""

    size: int = 2
    stride: int = 2


@dataclass(frozen=True)
class FlattenSpec:
    """Row-major flatten: (N, ...) -> (N, prod(...))."""


@dataclass(frozen=True)
class ReLUSpec:
    """max(x, 0), elementwise."""


@dataclass(frozen=True)
class LeakyReLUSpec:
    """x for x > 0, alpha * x otherwise (Keras's default alpha, 0.2)."""

    alpha: float = 0.2


@dataclass(frozen=True)
class TanhSpec:
    """tanh(x), elementwise."""


@dataclass(frozen=True)
class SigmoidSpec:
    """1 / (1 + exp(-x)), elementwise."""


@dataclass(frozen=True)
class DropoutSpec:
    """In training, zero each unit with probability ``rate`` and scale the rest by 1 / (1 - rate)."""

    rate: float


@dataclass(frozen=True)
class BatchNormSpec:
    """Normalise each of ``features`` (the last axis: channels after a conv, units after a
    dense layer) over the batch, then scale and shift; Keras's defaults."""

    name: str
    features: int
    momentum: float = 0.99
    epsilon: float = 1e-3


LayerSpec = (DenseSpec | Conv2DSpec | MaxPool2DSpec | AvgPool2DSpec | FlattenSpec | ReLUSpec
             | LeakyReLUSpec | TanhSpec | SigmoidSpec | DropoutSpec | BatchNormSpec)

# type -> {key: (python type, default or REQUIRED)}; the keys a spec file may give.
REQUIRED = object()
LAYER_KEYS: dict[str, dict[str, tuple[type, Any]]] = {
    "dense": {"units": (int, REQUIRED)},
    "conv2d": {"filters": (int, REQUIRED), "kernel": (int, 3), "stride": (int, 1), "padding": (str, "same")},
    "maxpool2d": {"size": (int, 2), "stride": (int, None)},
    "avgpool2d": {"size": (int, 2), "stride": (int, None)},
    "flatten": {}, "relu": {}, "tanh": {}, "sigmoid": {},
    "leaky_relu": {"alpha": (float, 0.2)},
    "dropout": {"rate": (float, REQUIRED)},
    "batchnorm": {"momentum": (float, 0.99), "epsilon": (float, 1e-3)},
}
PARAM_PREFIX = {"dense": "dense", "conv2d": "conv", "batchnorm": "bn"}


def _value(where: str, key: str, raw: Any, kind: type) -> Any:
    """``raw`` checked against ``kind`` (an int is a float too, a bool is neither)."""
    ok = isinstance(raw, kind) and not isinstance(raw, bool)
    if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        ok, raw = True, float(raw)
    if not ok:
        raise SpecError(f"{where}: {key} must be {'an integer' if kind is int else 'a ' + kind.__name__}, "
                        f"got {_short(raw)}")
    if kind is float and not math.isfinite(raw):
        raise SpecError(f"{where}: {key} must be a finite number, got {raw!r}")
    return raw


def _short(value: Any) -> str:
    """``repr(value)``, cut to one short line: a hostile value may be a whole table, or
    nested as deep as a JSON parser goes (a spec in a weights file's meta)."""
    try:
        text = " ".join(repr(value).split())
    except RecursionError:
        return f"a {type(value).__name__} nested too deeply"
    return text if len(text) <= 60 else text[:57] + "..."


def _layer_options(where: str, table: Any) -> tuple[str, dict[str, Any]]:
    """A ``[[layers]]`` table checked against LAYER_KEYS: (type, every key with its value)."""
    if not isinstance(table, dict):
        raise SpecError(f"{where}: a layer must be a table with a type, got {_short(table)}")
    kind = table.get("type")
    if not isinstance(kind, str) or kind not in LAYER_KEYS:
        raise SpecError(f"{where}: type must be one of {', '.join(LAYER_KEYS)}, got {_short(kind)}")
    allowed = LAYER_KEYS[kind]
    extra = sorted(set(table) - set(allowed) - {"type"})
    if extra:
        raise SpecError(f"{where} ({kind}): unknown key {_short(extra[0])} (a {kind} layer takes "
                        f"{', '.join(allowed) or 'no keys'})")
    options = {}
    for key, (kind_of, default) in allowed.items():
        if key not in table:
            if default is REQUIRED:
                raise SpecError(f"{where} ({kind}): missing key {key!r}")
            options[key] = default
        else:
            options[key] = _value(f"{where} ({kind})", key, table[key], kind_of)
    return kind, options


def _positive(where: str, options: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if options[key] is not None and options[key] < 1:
            raise SpecError(f"{where}: {key} must be at least 1, got {options[key]}")


def _at_most(where: str, key: str, value: int, limit: int, why: str) -> None:
    if value > limit:
        raise SpecError(f"{where}: {key} must be at most {limit:,} ({why}), got {value:,}")


def _window_out(where: str, size: int, kernel: int, stride: int, padding: str) -> int:
    """Output length of a window of ``kernel`` every ``stride`` over ``size`` inputs."""
    if padding == "same":
        return math.ceil(size / stride)
    if kernel > size:
        raise SpecError(f"{where}: the {kernel}x{kernel} window is larger than its {size}x{size} input")
    return (size - kernel) // stride + 1


def _build_layer(where: str, kind: str, o: dict[str, Any], shape: tuple[int, ...],
                 name: str | None) -> tuple[LayerSpec, tuple[int, ...]]:
    """One layer's spec and its per-image output shape, from its input ``shape``."""
    image = len(shape) == 3
    if kind in ("conv2d", "maxpool2d", "avgpool2d") and not image:
        raise SpecError(f"{where}: needs an image input (H, W, C), got a flat one of {shape[0]}")
    if kind == "dense" and image:
        raise SpecError(f"{where}: needs a flat input: put a flatten layer before it")
    if kind == "dense":
        _positive(where, o, "units")
        _at_most(where, "units", o["units"], MAX_UNITS, "twinnet's bound on a dense layer")
        return DenseSpec(name, shape[0], o["units"]), (o["units"],)
    if kind == "conv2d":
        _positive(where, o, "filters", "kernel", "stride")
        _at_most(where, "filters", o["filters"], MAX_FILTERS, "twinnet's bound on a conv layer")
        if o["padding"] not in PADDINGS:
            raise SpecError(f"{where}: padding must be 'same' or 'valid', got {_short(o['padding'])}")
        # A window larger than its input, or a stride past it, sees nothing more ('same'
        # padding would surround the input with kernel - 1 rows and columns of zeros).
        if o["padding"] == "same":
            _at_most(where, "kernel", o["kernel"], min(shape[:2]), f"its input is {shape[0]}x{shape[1]}")
        _at_most(where, "stride", o["stride"], min(shape[:2]), f"its input is {shape[0]}x{shape[1]}")
        h, w = (_window_out(where, s, o["kernel"], o["stride"], o["padding"]) for s in shape[:2])
        spec = Conv2DSpec(name, shape[2], o["filters"], o["kernel"], o["stride"], o["padding"])
        return spec, (h, w, o["filters"])
    if kind in ("maxpool2d", "avgpool2d"):
        stride = o["stride"] if o["stride"] is not None else o["size"]
        _positive(where, {**o, "stride": stride}, "size", "stride")
        _at_most(where, "stride", stride, min(shape[:2]), f"its input is {shape[0]}x{shape[1]}")
        h, w = (_window_out(where, s, o["size"], stride, "valid") for s in shape[:2])
        cls = MaxPool2DSpec if kind == "maxpool2d" else AvgPool2DSpec
        return cls(o["size"], stride), (h, w, shape[2])
    if kind == "flatten":
        return FlattenSpec(), (math.prod(shape),)
    if kind == "dropout":
        if not 0 <= o["rate"] < 1:
            raise SpecError(f"{where}: rate must be in [0, 1), got {o['rate']}")
        return DropoutSpec(o["rate"]), shape
    if kind == "batchnorm":
        # epsilon in float32 (the twins' dtype) must be a normal number, and no larger
        # than 1, where it would swamp any feature's variance of pixels in [0, 1].
        if not 0 <= o["momentum"] < 1 or not 1e-30 <= o["epsilon"] <= 1:
            raise SpecError(f"{where}: needs 0 <= momentum < 1 and 1e-30 <= epsilon <= 1, got "
                            f"momentum {o['momentum']}, epsilon {o['epsilon']}")
        return BatchNormSpec(name, shape[-1], o["momentum"], o["epsilon"]), shape
    if kind == "leaky_relu":
        # Keras refuses a negative slope; above 1 it is no longer the leaky side.
        if not 0 <= o["alpha"] <= 1:
            raise SpecError(f"{where}: alpha must be in [0, 1], got {o['alpha']}")
        return LeakyReLUSpec(o["alpha"]), shape
    return {"relu": ReLUSpec, "tanh": TanhSpec, "sigmoid": SigmoidSpec}[kind](), shape


def parse_spec(document: Any, source: str) -> tuple[LayerSpec, ...]:
    """The layer specs of a parsed spec ``document`` (a TOML table), shapes inferred from
    the 28x28x1 input; SpecError naming ``source``, the layer (1-based) and the key."""
    if not isinstance(document, dict) or not isinstance(document.get("layers"), list) \
            or not document["layers"]:
        raise SpecError(f"{source}: a spec is a TOML table with a non-empty array of [[layers]]")
    unknown = sorted(set(document) - {"name", "description", "layers"})
    if unknown:
        raise SpecError(f"{source}: unknown top-level key {_short(unknown[0])} "
                        "(expected name, description, layers)")
    if len(document["layers"]) > MAX_LAYERS:
        raise SpecError(f"{source}: {len(document['layers']):,} layers, more than the {MAX_LAYERS} "
                        "a spec may have")
    for key in ("name", "description"):
        if key in document and not isinstance(document[key], str):
            raise SpecError(f"{source}: {key} must be a string, got {_short(document[key])}")
    if len(document.get("name", "")) > MAX_NAME_CHARS:
        raise SpecError(f"{source}: name is {len(document['name'])} characters, more than the "
                        f"{MAX_NAME_CHARS} allowed")
    shape: tuple[int, ...] = IMAGE_SHAPE
    counts: dict[str, int] = {}
    specs: list[LayerSpec] = []
    params = 0
    for index, table in enumerate(document["layers"], start=1):
        where = f"{source}: layer {index}"
        kind, options = _layer_options(where, table)
        name = None
        if kind in PARAM_PREFIX:
            counts[kind] = counts.get(kind, 0) + 1
            name = f"{PARAM_PREFIX[kind]}{counts[kind]}"
        spec, shape = _build_layer(f"{where} ({kind})", kind, options, shape, name)
        if 0 in shape:
            raise SpecError(f"{where} ({kind}): its output shape {shape} has reached zero")
        specs.append(spec)
        params += layer_params(spec)
        if params > MAX_PARAMS:
            raise SpecError(f"{where} ({kind}): brings the model to {params:,} parameters, more "
                            f"than the {MAX_PARAMS:,} twinnet builds")
    if shape != (NUM_CLASSES,):
        last = len(document["layers"])
        key = "units" if kind == "dense" else "type"
        raise SpecError(f"{source}: layer {last} ({kind}): {key}: the last layer must give "
                        f"{NUM_CLASSES} outputs (the logits), it gives shape {shape}")
    return tuple(specs)


def layer_params(spec: LayerSpec) -> int:
    """Parameters of one layer (batch norm's moving statistics included)."""
    if isinstance(spec, DenseSpec):
        return (spec.n_in + 1) * spec.n_out
    if isinstance(spec, Conv2DSpec):
        return (spec.kernel * spec.kernel * spec.c_in + 1) * spec.c_out
    if isinstance(spec, BatchNormSpec):
        return 4 * spec.features
    return 0


def is_spec_file(model: str) -> bool:
    """Whether ``model`` names a spec file rather than a built-in model."""
    return model.endswith(".toml")


def read_document(path: str) -> dict[str, Any]:
    """A spec file's TOML table; SpecError naming the file when it cannot be read or parsed.

    Only a regular file of at most SPEC_MAX_BYTES is read: a FIFO, a device (a link to
    /dev/zero) or a directory is refused before it is opened for reading, a larger file
    from its size, and at most SPEC_MAX_BYTES + 1 bytes are ever read (a file that grows
    meanwhile). A document nested too deeply for the parser is refused too.
    """
    from twinnet.util import FileAccessError, read_bounded  # here: importing models stays light

    try:
        raw = read_bounded(path, SPEC_MAX_BYTES)
    except FileAccessError as exc:
        raise SpecError(f"{path}: cannot read the spec file ({exc.reason}; a spec of {MAX_LAYERS} "
                        "layers takes about 20 KB)" if "bytes" in exc.reason else
                        f"{path}: cannot read the spec file ({exc.reason})") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec file ({exc.strerror or exc})") from None
    return parse_document(raw, path)


def parse_document(raw: bytes, source: str) -> dict[str, Any]:
    """The TOML table in ``raw``; SpecError naming ``source`` if it is not valid TOML or is
    nested too deeply to parse (tomllib recurses once per level)."""
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{source}: not valid TOML ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise SpecError(f"{source}: nested too deeply to be a spec") from None


@cache
def _builtin_document(name: str) -> dict[str, Any]:
    return tomllib.loads(resources.files("twinnet").joinpath("specs", f"{name}.toml").read_text())


@cache
def _spec_of_file(path: str, _mtime_ns: int) -> tuple[LayerSpec, ...]:
    return parse_spec(read_document(path), path)


def spec_document(model: str) -> dict[str, Any]:
    """The TOML table of ``model``, a built-in name or a spec file's path (the pinned
    table where ``pin_spec`` pinned that path)."""
    if model in _REGISTERED:
        return _REGISTERED[model][0]
    if is_spec_file(model):
        return read_document(model)
    get_spec(model)
    return _builtin_document(model)


def get_spec(model: str | tuple[LayerSpec, ...]) -> tuple[LayerSpec, ...]:
    """The layer specs of ``model``: a name in NAMED_MODELS or the path of a ``.toml`` spec file
    (or the specs themselves, returned as they are).

    ValueError for an unknown name, SpecError for a spec file that cannot be built.
    """
    if isinstance(model, tuple):
        return model
    if model in _REGISTERED:
        return _REGISTERED[model][1]
    if is_spec_file(model):
        try:
            mtime = os.stat(model).st_mtime_ns
        except OSError as exc:
            raise SpecError(f"{model}: cannot read the spec file ({exc.strerror or exc})") from None
        return _spec_of_file(model, mtime)
    if model not in NAMED_MODELS:
        raise ValueError(f"unknown model {model!r}: expected one of {', '.join(NAMED_MODELS)} "
                         "or a .toml spec file")
    return parse_spec(_builtin_document(model), f"{model}.toml")


_REGISTERED: dict[str, tuple[dict[str, Any], tuple[LayerSpec, ...]]] = {}


def register_spec(document: Any, name: Any, source: str) -> str:
    """Make ``name`` the model of spec ``document`` (a TOML table, as a weights file's meta
    carries it) in this process, so that it is a model name like the built-in ones; returns
    the name. SpecError naming ``source`` for a spec that cannot be built, a name that is
    not a plain word, or one already taken by another model."""
    specs = parse_spec(document, source)
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum() \
            or is_spec_file(name):
        raise SpecError(f"{source}: names its model {name!r}, not a plain name")
    taken = get_spec(name) if name in MODEL_NAMES else _REGISTERED.get(name, (None, specs))[1]
    if taken != specs:
        raise SpecError(f"{source}: its model is named {name!r}, as another model is here")
    if name not in MODEL_NAMES:
        _REGISTERED[name] = (document, specs)
    return name


def pin_spec(path: str, document: Any, source: str | None = None) -> tuple[LayerSpec, ...]:
    """Make ``document`` (a spec's TOML table) the spec of the spec file ``path`` in this
    process, whatever the file holds now or later: a run trains the spec it started with,
    and a resumed run the one its checkpoint stores. SpecError naming ``source`` (default:
    ``path``) if the document cannot be built."""
    specs = parse_spec(document, source or path)
    _REGISTERED[path] = (document, specs)
    return specs


def model_name(model: str) -> str:
    """The name runs and messages give ``model``: a built-in's own, a spec file's ``name``
    (default: the file's stem) made a plain word, as weights files carry it: each run of
    characters other than ASCII letters, digits, ``-`` and ``_`` becomes one ``_``, outer
    ``_`` and ``-`` go, at most MAX_NAME_CHARS remain (``../../etc/x`` -> ``etc_x``; a name
    of nothing else -> ``spec``). ``runs.safe_name`` makes run folders of it."""
    if not is_spec_file(model):
        return model
    name = spec_document(model).get("name")
    text = name if isinstance(name, str) and name else os.path.splitext(os.path.basename(model))[0]
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)[:MAX_NAME_CHARS].strip("_-") or "spec"


def describe(model: str) -> str:
    """One line for --help, the report and messages: the spec's description, else its layer types."""
    document = spec_document(model)
    if isinstance(document.get("description"), str):
        return document["description"]
    return " -> ".join(str(layer.get("type")) for layer in document["layers"])


DESCRIPTIONS: dict[str, str] = {name: describe(name) for name in NAMED_MODELS}


def param_shapes(model: str) -> dict[str, tuple[int, ...]]:
    """Canonical parameter names of ``model`` mapped to their shapes, in layer order."""
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in get_spec(model):
        if isinstance(layer, DenseSpec):
            shapes[f"{layer.name}/W"] = (layer.n_in, layer.n_out)
            shapes[f"{layer.name}/b"] = (layer.n_out,)
        elif isinstance(layer, Conv2DSpec):
            shapes[f"{layer.name}/W"] = (layer.kernel, layer.kernel, layer.c_in, layer.c_out)
            shapes[f"{layer.name}/b"] = (layer.c_out,)
        elif isinstance(layer, BatchNormSpec):
            for key in ("gamma", "beta", "moving_mean", "moving_variance"):
                shapes[f"{layer.name}/{key}"] = (layer.features,)
    return shapes


def is_trainable(key: str) -> bool:
    """Whether parameter ``key`` is learned by gradient descent (batch norm's moving
    statistics are updated by their own rule instead)."""
    return not key.endswith(("/moving_mean", "/moving_variance"))


def init_params(model: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded initial parameters, float32: Glorot-uniform weights, zero biases and shifts,
    unit scales and moving variances, zero moving means (Keras's initialisers).

    Both twins start from these same arrays. Glorot uniform draws from U(-a, a) with
    a = sqrt(6 / (fan_in + fan_out)); for a conv kernel the fans are multiplied by the
    receptive field (k * k), as in Keras. Only weights draw random numbers, in layer order.
    """
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for key, shape in param_shapes(model).items():
        if not key.endswith("/W"):
            one = key.endswith(("/gamma", "/moving_variance"))
            params[key] = (np.ones if one else np.zeros)(shape, dtype=np.float32)
            continue
        receptive = math.prod(shape[:-2])
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        params[key] = rng.uniform(-limit, limit, size=shape).astype(np.float32)
    return params


def dropout_masks(model: str | tuple[LayerSpec, ...], n: int, seed: int, step: int) -> list[np.ndarray]:
    """The masks of ``model``'s dropout layers for training step ``step`` of a run seeded
    ``seed``, on a batch of ``n`` images; what both twins' ``set_dropout_masks`` take.

    One mask per dropout layer, in spec order, float64 of that layer's input shape
    (n, ...): 0 where a unit is dropped (probability ``rate``), 1 / (1 - rate) where it is
    kept. Layer ``i``'s mask comes from a stream of its own,
    ``np.random.default_rng([seed, 3, step, i])``, so it depends on nothing but these
    numbers: not on the twin, its dtype or how the batch was drawn.
    """
    dropouts = [step_ for step_ in walk(model) if isinstance(step_.layer, DropoutSpec)]
    masks = []
    for index, layer in enumerate(dropouts):
        keep = np.random.default_rng([seed, 3, step, index]).random((n, *layer.inp)) >= layer.layer.rate
        masks.append(keep / (1 - layer.layer.rate))
    return masks


def has_dropout(model: str | tuple[LayerSpec, ...]) -> bool:
    """Whether ``model`` has a dropout layer (whose training step then needs masks)."""
    return any(isinstance(layer, DropoutSpec) for layer in get_spec(model))


def count_params(model: str) -> int:
    """Number of trainable scalars in ``model``."""
    return sum(math.prod(s) for k, s in param_shapes(model).items() if is_trainable(k))


@dataclass(frozen=True)
class LayerShapes:
    """One layer spec with the per-image shapes around it: ``inp`` and ``out`` are
    (H, W, C) for image layers and (features,) after a flatten."""

    layer: LayerSpec
    inp: tuple[int, ...]
    out: tuple[int, ...]

    @property
    def multiply_adds(self) -> int:
        """Multiply-adds of this layer's forward pass on one image (0 without weights)."""
        if isinstance(self.layer, DenseSpec):
            return self.layer.n_in * self.layer.n_out
        if isinstance(self.layer, Conv2DSpec):
            height, width, _ = self.out
            return height * width * self.layer.kernel**2 * self.layer.c_in * self.layer.c_out
        return 0


def walk(model: str) -> list[LayerShapes]:
    """The layers of ``model`` in order, each with its per-image input and output shapes;
    the one place that follows an image's shape through a spec."""
    shape: tuple[int, ...] = IMAGE_SHAPE
    steps = []
    for layer in get_spec(model):
        if isinstance(layer, DenseSpec):
            out: tuple[int, ...] = (layer.n_out,)
        elif isinstance(layer, Conv2DSpec):
            out = tuple(_window_out("", s, layer.kernel, layer.stride, layer.padding)
                        for s in shape[:2]) + (layer.c_out,)
        elif isinstance(layer, MaxPool2DSpec | AvgPool2DSpec):
            out = tuple(_window_out("", s, layer.size, layer.stride, "valid") for s in shape[:2]) + shape[2:]
        elif isinstance(layer, FlattenSpec):
            out = (math.prod(shape),)
        else:
            out = shape
        steps.append(LayerShapes(layer, shape, out))
        shape = out
    return steps


def multiply_adds_per_image(model: str) -> int:
    """Multiply-adds of one forward pass on one image (dense and conv layers only).

    The backward pass costs about twice this (gradients with respect to the input
    and to the weights), so a training step is about 3x forward; see ``bench``.
    """
    return sum(step.multiply_adds for step in walk(model))

