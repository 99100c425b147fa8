"""A plain compiled Keras training step of one of the four models, in a process of its own.

The yardstick for the TF twin in ``twinnet bench``: the same network, Adam, batch 100,
built and compiled the way a Keras user would (``model.compile`` + ``train_on_batch``),
without twinnet's op determinism unless ``--deterministic`` is given. Prints the median
ms per step over rounds, with the CPU model and SIMD level.

    .venv/bin/python scripts/keras_reference_step.py cnn [--deterministic]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="cnn")
    parser.add_argument("--deterministic", action="store_true", help="enable TF op determinism")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
    from twinnet.environment import cpu_name, simd_level
    from twinnet.models import IMAGE_SHAPE, get_spec

    layers: list = [keras.Input(IMAGE_SHAPE)]
    for spec in get_spec(args.model):
        kind = type(spec).__name__
        if kind == "DenseSpec":
            layers.append(keras.layers.Dense(spec.n_out))
        elif kind == "Conv2DSpec":
            layers.append(keras.layers.Conv2D(spec.c_out, spec.kernel, strides=spec.stride,
                                              padding=spec.padding))
        elif kind == "ReLUSpec":
            layers.append(keras.layers.ReLU())
        elif kind == "MaxPool2DSpec":
            layers.append(keras.layers.MaxPooling2D(spec.size, strides=spec.stride))
        elif kind == "FlattenSpec":
            layers.append(keras.layers.Flatten())
        else:
            raise SystemExit(f"keras_reference_step: no plain Keras layer here for {kind}")
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.random((args.steps, 100, *IMAGE_SHAPE), dtype=np.float32)
    y = rng.integers(0, 10, (args.steps, 100))
    for i in range(5):
        model.train_on_batch(x[i], y[i])
    rounds = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for i in range(args.steps):
            model.train_on_batch(x[i], y[i])
        rounds.append((time.perf_counter() - start) / args.steps * 1000)
    print(f"{args.model}: plain Keras step {statistics.median(rounds):.2f} ms "
          f"(min {min(rounds):.2f}, max {max(rounds):.2f}); determinism "
          f"{'on' if args.deterministic else 'off'}; TensorFlow {tf.__version__}; "
          f"{cpu_name()}, {simd_level()}, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
