"""The framework twin: the same models in TensorFlow (Keras layers, autodiff).

Built from ``twinnet.models`` specs, so the architecture is written only once. Keras
stores parameters in exactly the canonical layouts (dense kernel (in, out), conv
kernel HWIO, NHWC activations, row-major flatten), so canonical arrays are assigned
to the layers as they are. Optimizers are Keras's own SGD and Adam; the NumPy twin
copies their update rules.
"""

from __future__ import annotations

from twinnet.quiet import import_tensorflow

import_tensorflow()  # first, so that TensorFlow's start-up lines are dropped (twinnet.quiet)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from twinnet.models import (  # noqa: E402
    IMAGE_SHAPE,
    AvgPool2DSpec,
    BatchNormSpec,
    Conv2DSpec,
    DenseSpec,
    DropoutSpec,
    FlattenSpec,
    LeakyReLUSpec,
    MaxPool2DSpec,
    ReLUSpec,
    SigmoidSpec,
    TanhSpec,
    get_spec,
    is_trainable,
    model_name,
    param_shapes,
)

# Bit-reproducible kernels: the report's determinism promise covers both twins.
tf.config.experimental.enable_op_determinism()

LABELS = tf.TensorSpec([None], tf.int64)


class MaskedDropout(keras.layers.Layer):
    """Dropout that applies a mask given from outside instead of drawing its own: in
    training ``x * mask``, in inference ``x``. ``mask`` (N, ...) of x's shape, 0 or
    1 / (1 - rate), is set by ``set_dropout_masks`` from ``twinnet.models.dropout_masks``,
    so this twin drops the very units the NumPy twin drops. It lives in a variable of
    unfixed shape, so one traced ``tf.function`` serves every step's new mask."""

    def __init__(self, rate: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rate = rate
        self.mask = tf.Variable(tf.zeros([0], self.dtype), shape=tf.TensorShape(None),
                                trainable=False, name="dropout_mask")

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        if not training:
            return x
        return x * tf.ensure_shape(self.mask, x.shape)  # the variable's shape is unfixed

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape


class WhereLeakyReLU(keras.layers.Layer):
    """Keras's LeakyReLU computed as ``tf.where(x > 0, x, alpha * x)``: the same values and
    the same gradient (d where x > 0, else alpha * d, so alpha at 0). Keras's own layer
    becomes TensorFlow's LeakyRelu op, whose conv -> bias -> LeakyRelu pattern TensorFlow
    2.21's graph optimizer (the grappler remapper) fails to fuse in training, logging an
    "E0000 ... remapper failed" line on every run."""

    def __init__(self, alpha: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.alpha = float(np.float32(alpha))  # as Keras's layer, whose op holds a float32

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return tf.where(x > 0, x, x * tf.constant(self.alpha, x.dtype))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape


def set_dropout_masks(network: keras.Model, masks: list[np.ndarray]) -> None:
    """Give the ``MaskedDropout`` layers of ``network`` their ``masks``, in order."""
    dropouts = [layer for layer in network.layers if isinstance(layer, MaskedDropout)]
    if len(masks) != len(dropouts):
        raise ValueError(f"{network.name}: {len(masks)} dropout masks for {len(dropouts)} dropout layers")
    for layer, mask in zip(dropouts, masks, strict=True):
        layer.mask.assign(np.asarray(mask, dtype=layer.dtype))


def keras_layer(layer, dtype: str) -> keras.layers.Layer:  # noqa: ANN001 (a LayerSpec)
    """The Keras layer computing spec ``layer``, named by its canonical name if it has one."""
    if isinstance(layer, DenseSpec):
        return keras.layers.Dense(layer.n_out, name=layer.name, dtype=dtype)
    if isinstance(layer, Conv2DSpec):
        return keras.layers.Conv2D(layer.c_out, layer.kernel, strides=layer.stride,
                                   padding=layer.padding, name=layer.name, dtype=dtype)
    if isinstance(layer, BatchNormSpec):
        return keras.layers.BatchNormalization(momentum=layer.momentum, epsilon=layer.epsilon,
                                               name=layer.name, dtype=dtype)
    if isinstance(layer, MaxPool2DSpec):
        return keras.layers.MaxPooling2D(layer.size, strides=layer.stride, dtype=dtype)
    if isinstance(layer, AvgPool2DSpec):
        return keras.layers.AveragePooling2D(layer.size, strides=layer.stride, dtype=dtype)
    if isinstance(layer, LeakyReLUSpec):
        return WhereLeakyReLU(layer.alpha, dtype=dtype)
    if isinstance(layer, DropoutSpec):
        return MaskedDropout(layer.rate, dtype=dtype)
    if isinstance(layer, TanhSpec | SigmoidSpec):
        return keras.layers.Activation("tanh" if isinstance(layer, TanhSpec) else "sigmoid", dtype=dtype)
    if isinstance(layer, ReLUSpec):
        return keras.layers.ReLU(dtype=dtype)
    if isinstance(layer, FlattenSpec):
        return keras.layers.Flatten(dtype=dtype)
    raise ValueError(f"the TF twin has no layer for {layer}")


# Keras's attribute for each canonical parameter key.
KERAS_VARIABLES = {"W": "kernel", "b": "bias", "gamma": "gamma", "beta": "beta",
                   "moving_mean": "moving_mean", "moving_variance": "moving_variance"}


def build_network(model: str, dtype: str = "float32") -> tuple[keras.Sequential, dict[str, keras.Variable]]:
    """A Keras Sequential for ``model`` and its variables by canonical name (batch norm's
    moving statistics included: Keras updates them in training, no gradient reaches them).

    ``dtype`` float64 serves the finite-difference checks; training uses float32. It is
    given to every layer rather than set globally, so building one model never changes
    another."""
    layers = [keras_layer(layer, dtype) for layer in get_spec(model)]
    network = keras.Sequential([keras.Input(IMAGE_SHAPE, dtype=dtype), *layers],
                               name=model_name(model))
    by_name = {layer.name: layer for layer in layers}
    variables = {}
    for key in param_shapes(model):
        name, kind = key.rsplit("/", 1)
        variables[key] = getattr(by_name[name], KERAS_VARIABLES[kind])
    return network, variables


def make_optimizer(name: str) -> keras.optimizers.Optimizer:
    """Keras SGD (no momentum) or Adam with Keras defaults; the rate is set every step."""
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=0.001)
    return keras.optimizers.SGD(learning_rate=0.01)


class TFModel:
    """The TensorFlow twin of one model; implements ``twinnet.backend.Backend``."""

    backend = "tf"
    eval_batch = 1000  # images predict_logits hands logits at a time: Keras's memory grows with them

    def __init__(self, model: str, params: dict[str, np.ndarray], optimizer: str = "sgd",
                 seed: int = 0, dtype: str = "float32") -> None:
        keras.utils.set_random_seed(seed)
        self.model_name = model
        self.optimizer = optimizer
        self.dtype = tf.as_dtype(dtype)
        self.network, self._variables = build_network(model, dtype)
        self._names = list(param_shapes(model))  # every parameter, as params and set_params have them
        self._trainable_names = [name for name in self._names if is_trainable(name)]
        self._trainable = [self._variables[name] for name in self._trainable_names]
        self.set_params(params)
        self._opt = make_optimizer(optimizer)
        self._opt.build(self._trainable)
        images = tf.TensorSpec([None, *IMAGE_SHAPE], self.dtype)
        self._forward = tf.function(self._forward_impl, input_signature=[images])
        self._loss_and_grads = tf.function(self._loss_and_grads_impl,
                                           input_signature=[images, LABELS])
        self._train_step = tf.function(self._train_step_impl, input_signature=[images, LABELS])

    @property
    def params(self) -> dict[str, np.ndarray]:
        return {name: np.array(self._variables[name].numpy()) for name in self._names}

    def set_params(self, params: dict[str, np.ndarray]) -> None:
        for name in self._names:
            self._variables[name].assign(np.asarray(params[name], dtype=self.dtype.as_numpy_dtype))

    def set_dropout_masks(self, masks: list[np.ndarray]) -> None:
        """The dropout layers' masks for the training passes that follow (see
        ``twinnet.backend.Backend.set_dropout_masks``)."""
        set_dropout_masks(self.network, masks)

    def _forward_impl(self, x: tf.Tensor) -> tf.Tensor:
        return self.network(x, training=False)

    def _loss_and_grads_impl(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, list, tf.Tensor]:
        with tf.GradientTape() as tape:
            logits = self.network(x, training=True)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        grads = tape.gradient(loss, self._trainable)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=1), y), tf.int32))
        return loss, grads, correct

    def _train_step_impl(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        loss, grads, correct = self._loss_and_grads_impl(x, y)
        self._opt.apply_gradients(zip(grads, self._trainable, strict=True))
        return loss, correct

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self._forward(tf.convert_to_tensor(x, self.dtype)).numpy()

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        loss, grads, _ = self._loss_and_grads(tf.convert_to_tensor(x, self.dtype),
                                              tf.convert_to_tensor(y, tf.int64))
        return float(loss), {name: g.numpy() for name, g in zip(self._trainable_names, grads, strict=True)}

    def apply(self, grads: dict[str, np.ndarray], lr: float) -> None:
        self._opt.learning_rate = lr
        self._opt.apply_gradients(
            [(tf.convert_to_tensor(grads[name]), var)
             for name, var in zip(self._trainable_names, self._trainable, strict=True)])

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> tuple[float, int]:
        self._opt.learning_rate = lr
        loss, correct = self._train_step(tf.convert_to_tensor(x, self.dtype),
                                         tf.convert_to_tensor(y, tf.int64))
        return float(loss), int(correct)

    def optimizer_state_dict(self) -> dict[str, np.ndarray]:
        """Adam's moments under ``<param>/m`` and ``<param>/v`` plus ``iterations``, the same
        keys the NumPy twin uses; SGD without momentum keeps only ``iterations``."""
        state = {"iterations": np.array(int(self._opt.iterations.numpy()), dtype=np.int64)}
        if self.optimizer == "adam":
            for name, m, v in zip(self._trainable_names, self._opt._momentums, self._opt._velocities,
                                  strict=True):
                state[f"{name}/m"] = np.array(m.numpy())
                state[f"{name}/v"] = np.array(v.numpy())
        return state

    def load_optimizer_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._opt.iterations.assign(int(state["iterations"]))
        if self.optimizer == "adam":
            for name, m, v in zip(self._trainable_names, self._opt._momentums, self._opt._velocities,
                                  strict=True):
                m.assign(state[f"{name}/m"])
                v.assign(state[f"{name}/v"])
