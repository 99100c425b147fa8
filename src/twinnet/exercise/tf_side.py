"""TensorFlow's answers on the exercise's cases: the twin's own Keras layers
(``tf_nn.keras_layer``), ``tf.GradientTape`` for the gradients of ``sum(out *
upstream)``, TensorFlow's softmax cross-entropy and Keras's optimizers. Run in a child
process (``isolation``), so the grader's own process never imports TensorFlow; the
answers have the shape of ``cases.run_cases``'s."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from twinnet import models

VARIABLES = {"W": "kernel", "b": "bias", "gamma": "gamma", "beta": "beta",
             "moving_mean": "moving_mean", "moving_variance": "moving_variance"}


def tf_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("tensorflow", "keras"))


def _spec(case: dict[str, Any]) -> Any:
    name, opt, x = case["name"], case["options"], case["x"]
    if name == "Dense":
        n_in, n_out = case["params"]["dense/W"].shape
        return models.DenseSpec("dense", n_in, n_out)
    if name == "Conv2D":
        k, _, c_in, c_out = case["params"]["conv/W"].shape
        return models.Conv2DSpec("conv", c_in, c_out, k, opt["stride"], opt["padding"])
    if name == "BatchNorm":
        return models.BatchNormSpec("bn", x.shape[-1], opt["momentum"], opt["epsilon"])
    simple = {"MaxPool2D": lambda: models.MaxPool2DSpec(opt["size"], opt["stride"]),
              "AvgPool2D": lambda: models.AvgPool2DSpec(opt["size"], opt["stride"]),
              "LeakyReLU": lambda: models.LeakyReLUSpec(opt["alpha"]),
              "Dropout": lambda: models.DropoutSpec(opt["rate"]),
              "ReLU": models.ReLUSpec, "Tanh": models.TanhSpec, "Sigmoid": models.SigmoidSpec,
              "Flatten": models.FlattenSpec}
    return simple[name]()


def _layer_case(case: dict[str, Any]) -> dict[str, Any]:
    import tensorflow as tf

    from twinnet.tf_nn import keras_layer

    dtype = case["x"].dtype.name
    layer = keras_layer(_spec(case), dtype)
    x = tf.Variable(case["x"])
    layer(x, training=False)  # builds the variables (an inference call changes nothing)
    for key, value in case["params"].items():
        getattr(layer, VARIABLES[key.rsplit("/", 1)[1]]).assign(value)
    if case["mask"] is not None:
        layer.mask.assign(case["mask"])
    trainable = [k for k in case["params"] if "moving" not in k]
    watched = [getattr(layer, VARIABLES[k.rsplit("/", 1)[1]]) for k in trainable]
    with tf.GradientTape() as tape:
        out = layer(x, training=case["train"]) if case["name"] in ("Dropout", "BatchNorm") else layer(x)
        f = tf.reduce_sum(out * case["upstream"])
    result: dict[str, Any] = {"out": out.numpy()}
    if case["train"]:
        grads = tape.gradient(f, [x, *watched])
        result["dx"] = grads[0].numpy()
        result["grads"] = {k: g.numpy() for k, g in zip(trainable, grads[1:], strict=True)}
        result["moving"] = {k: getattr(layer, VARIABLES[k.rsplit("/", 1)[1]]).numpy()
                            for k in case["params"] if "moving" in k}
    return result


def _loss_case(case: dict[str, Any]) -> dict[str, Any]:
    import tensorflow as tf

    logits = tf.Variable(case["logits"])
    total = case["total"] if case["total"] is not None else len(case["logits"])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.constant(case["y"].astype(np.int64)), logits=logits)) / total
    return {"loss": np.array(float(loss)), "dlogits": tape.gradient(loss, logits).numpy()}


def _optimizer_case(case: dict[str, Any]) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    variables = {k: tf.Variable(v) for k, v in case["params"].items()}
    if case["name"] == "SGD":
        opt = keras.optimizers.SGD(learning_rate=case["lrs"][0])
    else:
        opt = keras.optimizers.Adam(learning_rate=case["lrs"][0], **case["options"])
    snapshots, iterations = [], []
    for grads, lr in zip(case["grads"], case["lrs"], strict=True):
        opt.learning_rate = lr
        opt.apply_gradients([(tf.constant(g), variables[k]) for k, g in grads.items()])
        snapshots.append({k: v.numpy() for k, v in variables.items()})
        iterations.append(np.array(int(opt.iterations.numpy())))
    return {"snapshots": snapshots, "iterations": iterations, "rebound": []}


def tf_answers(cases: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any] | None]]:
    """name -> TensorFlow's answer for each float64 case (None for float32 ones, which
    check dtypes alone)."""
    from twinnet.backend import import_tf_nn

    import_tf_nn()  # TensorFlow's start-up quieted, op determinism on, as the twin runs it
    run = {"layer": _layer_case, "loss": _loss_case, "optimizer": _optimizer_case}
    return {name: [None if case.get("float32") else run[case["kind"]](case) for case in name_cases]
            for name, name_cases in cases.items()}
