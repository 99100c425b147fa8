"""The 14 names of the exercise and the order a learner works through them."""

from __future__ import annotations

# The lesson's classes and functions a learner writes, as ``numpy_nn.network.LESSON`` names them.
NAMES = ("Dense", "ReLU", "Tanh", "Sigmoid", "LeakyReLU", "Flatten", "Conv2D", "MaxPool2D",
         "AvgPool2D", "Dropout", "BatchNorm", "softmax_cross_entropy", "SGD", "Adam")

# The order of the workspace's README: each stage ends with a model that trains on it.
ORDER: tuple[tuple[tuple[str, ...], str | None], ...] = (
    (("Dense", "ReLU", "softmax_cross_entropy", "SGD"), "mlp128"),
    (("Conv2D", "MaxPool2D", "Flatten"), "cnn"),
    (("Tanh", "Sigmoid", "LeakyReLU", "AvgPool2D", "Dropout", "BatchNorm", "Adam"), None),
)
