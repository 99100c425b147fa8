"""What determines a training run: ``TrainConfig``, its defaults and its checks.

Each default is defined once, as a field default here (the learning rate per optimizer
in ``DEFAULT_LR``); the command line and its help text read them from here. A bad
value raises ``ConfigError`` naming the field; callers say where the value came from
(``--lr`` on the command line, ``presets.toml: run P1a: lr`` in a presets file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from twinnet.backend import BACKENDS, OPTIMIZERS
from twinnet.errors import TwinnetError
from twinnet.models import NAMED_MODELS, is_spec_file

DEFAULT_LR = {"sgd": 0.1, "adam": 0.001}
SCHEDULES = ("constant", "cosine")
MAX_SEED = 2**32 - 1  # TensorFlow's seeds are 32-bit
# Far beyond any MNIST run (the presets take 2,000 to 6,000 steps; ten million steps of
# the cnn would take weeks on a laptop), yet small enough that a typo or a 64-bit
# maximum is refused at once instead of running forever.
MAX_STEPS = 10_000_000


class ConfigError(TwinnetError):
    """One bad configuration value: ``field`` and what is wrong with it (``problem``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem

    def named(self, name: str) -> TwinnetError:
        """The same error with the value's source as its name (``--lr``, ``p.toml: run X: lr``)."""
        return TwinnetError(f"{name} {self.problem}")


@dataclass
class TrainConfig:
    """Everything that determines a run; stored in metrics.json and the weights' meta.

    ``lr`` None means ``DEFAULT_LR[optimizer]``; ``eval_every`` 0 means about 50 curve
    points over the run. Both are resolved on construction.
    """

    model: str
    backend: str = "numpy"  # the twin that needs no TensorFlow (see docs/usage.md)
    optimizer: str = "sgd"
    lr: float | None = None
    steps: int = 2000
    batch_size: int = 100
    seed: int = 0
    eval_every: int = 0
    schedule: str = "constant"

    def __post_init__(self) -> None:
        # Values from JSON or TOML (checkpoints, presets) may have any type.
        for field, value, kinds in (("steps", self.steps, (int,)), ("batch_size", self.batch_size, (int,)),
                                    ("seed", self.seed, (int,)), ("eval_every", self.eval_every, (int,)),
                                    ("lr", self.lr, (int, float, type(None)))):
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ConfigError(field, f"must be a number{'' if float in kinds else ' (an integer)'}, "
                                         f"got {value!r}")
        for field, value, choices in (("model", self.model, NAMED_MODELS),
                                      ("backend", self.backend, BACKENDS),
                                      ("optimizer", self.optimizer, OPTIMIZERS),
                                      ("schedule", self.schedule, SCHEDULES)):
            if field == "model" and isinstance(value, str) and is_spec_file(value):
                continue  # a spec file's path: checked when the model is built
            if not isinstance(value, str) or value not in choices:
                raise ConfigError(field, f"must be one of {', '.join(choices)}, got {value!r}")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]
        if self.steps < 1:
            raise ConfigError("steps", f"must be at least 1, got {self.steps}")
        if self.steps > MAX_STEPS:
            raise ConfigError("steps", f"must be at most {MAX_STEPS:,} (twinnet's bound on a run), "
                                       f"got {self.steps}")
        if self.batch_size < 1:
            raise ConfigError("batch_size", f"must be at least 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError("lr", f"must be a positive number, got {self.lr}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError("seed", f"must be between 0 and {MAX_SEED}, got {self.seed}")
        if self.eval_every < 0:
            raise ConfigError("eval_every", f"must be positive, got {self.eval_every}")
        if self.eval_every == 0:
            self.eval_every = max(1, self.steps // 50)


def default(field: str) -> object:
    """The default of TrainConfig's ``field``, for argparse and help texts."""
    return next(f.default for f in fields(TrainConfig) if f.name == field)


def flag(field: str) -> str:
    """The command-line flag of a TrainConfig field: ``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")
