"""Flags that several commands share, defined once: the data folder, the weights file,
the training settings (``TrainConfig``'s fields, whose defaults and help come from
``twinnet.config``) and the Ray engine. The grammar they follow is ``GRAMMAR``, printed
by ``twinnet --help``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from twinnet.backend import BACKENDS, OPTIMIZERS
from twinnet.config import DEFAULT_LR, SCHEDULES, ConfigError, TrainConfig, default, flag
from twinnet.errors import TwinnetError, UsageError
from twinnet.exercise.learner import load_lesson
from twinnet.models import DESCRIPTIONS, NAMED_MODELS, is_spec_file
from twinnet.serve import DEFAULT_HOST, DEFAULT_PORT
from twinnet.weights import DEFAULT_WEIGHTS

MODELS_HELP = "; ".join(f"{name}: {text}" for name, text in DESCRIPTIONS.items())

GRAMMAR = """\
One grammar for every command:
  MODEL           a model name (linear, mlp128, mlp256x2, cnn, lenet5, cnn-bn-dropout)
                  or a .toml spec file, where a command builds a model: train, sweep,
                  compare, gradcheck, bench; the usage line shows it as required where
                  it is, and a command run without it stops there
  --weights FILE  a trained weights file (.npz), where a command uses one: evaluate,
                  predict, trace, serve (default: the report's cnn weights), compare
                  (default: a seeded initialisation of MODEL)
  --backend       tf or numpy; default numpy, the twin that needs no TensorFlow
  --dtype         float64 or float32 for compare and trace; default float64
  --data-dir DIR  the MNIST files (default: $TWINNET_DATA, else ~/.cache/twinnet/mnist)
Old spellings (evaluate FILE) still work and print a deprecation line on stderr.
"""


def add_data_dir(parser: argparse.ArgumentParser,
                 missing: str = "downloading the files there if missing") -> None:
    """``--data-dir``; ``missing`` says what the command does when the files are absent."""
    parser.add_argument(
        "--data-dir", metavar="DIR", default=None,
        help=f"folder with the four MNIST IDX files, .gz or raw (default: $TWINNET_DATA, "
             f"else ~/.cache/twinnet/mnist, {missing})")


class NoteGiven(argparse.Action):
    """Store the value and note that the flag was given (``args.given``: dest -> flag), so
    ``train --resume`` can tell a flag the user typed from a default."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = {**getattr(namespace, "given", {}), self.dest: option_string}


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: worker processes on this machine (default); ray: Ray tasks "
                             "on a Ray cluster (needs twinnet[ray]; see docs/scaling.md)")
    parser.add_argument("--address", metavar="ADDR", default=None,
                        help="with --engine ray: join the Ray cluster at ADDR (HEAD:6379); "
                             "default: start a local one on this machine's cores")


def add_backend(parser: argparse.ArgumentParser, default: str | None = "numpy", **options) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default=default, **options,
                        help="tf: the TensorFlow twin; numpy: the hand-derived NumPy twin, which "
                             "needs no TensorFlow (default: %(default)s)")


def check_reference(args: argparse.Namespace) -> None:
    """UsageError for --reference with the TensorFlow twin: it names a NumPy-twin path."""
    if getattr(args, "reference", False) and getattr(args, "backend", "numpy") != "numpy":
        raise UsageError("--reference runs the NumPy twin's reference layers: use it with --backend numpy")


def add_reference(parser: argparse.ArgumentParser, what: str = "run") -> None:
    parser.add_argument("--reference", action="store_true",
                        help=f"{what} the NumPy twin on its reference layers alone (numpy_nn/layers.py, "
                             "one per section of docs/derivations.md), without the fast path's fused "
                             "blocks and batch splitting: the same results up to rounding, a few "
                             "times slower")


def add_layers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", metavar="FILE", default=None,
                        help="build the NumPy twin on the reference path from your own layers.py "
                             "(twinnet exercise start), with the lesson's layers for the names it "
                             "leaves out")


def layers_lesson(args: argparse.Namespace) -> dict[str, object] | None:
    """The learner's classes of ``--layers FILE`` by name, or None; a UsageError with the
    TensorFlow twin, which has no hand-written layers to replace."""
    if getattr(args, "layers", None) is None:
        return None
    if getattr(args, "backend", "numpy") != "numpy":
        raise UsageError("--layers replaces the NumPy twin's layers: use it with --backend numpy")
    return load_lesson(args.layers)


MODEL_CHOICES = f"{', '.join(NAMED_MODELS)}, or a .toml spec file"


def model_argument(value: str) -> str:
    """argparse type of a MODEL: a built-in name or a ``.toml`` spec file's path (its
    content is checked when the command runs, with a message naming file, layer and key)."""
    if value in NAMED_MODELS or is_spec_file(value):
        return value
    raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {MODEL_CHOICES})")


def add_train_arguments(parser: argparse.ArgumentParser, sweep: bool = False) -> None:
    """The model and the flags of TrainConfig's fields. ``train`` notes which flags were
    given (to refuse conflicts on --resume); ``sweep`` hides ``--lr`` (it has ``--lrs``)."""
    parser.add_argument("model", type=model_argument, nargs=None if sweep else "?", metavar="MODEL",
                        help=f"which model ({MODELS_HELP}; or the path of a .toml spec file, "
                             "see docs/usage.md)")
    store = "store" if sweep else NoteGiven
    if not sweep:
        parser.set_defaults(given={})
    add_backend(parser, default("backend"), action=store)
    parser.add_argument("--steps", action=store, type=int, default=default("steps"),
                        help="number of parameter updates (default: %(default)s)")
    parser.add_argument("--batch-size", action=store, type=int, default=default("batch_size"),
                        help="images per update (default: %(default)s)")
    parser.add_argument("--optimizer", action=store, choices=OPTIMIZERS, default=default("optimizer"),
                        help="sgd (plain) or adam, both with Keras semantics "
                             "(default: %(default)s)")
    lr_defaults = ", ".join(f"{lr:g} for {name}" for name, lr in DEFAULT_LR.items())
    parser.add_argument("--lr", action=store, type=float, default=default("lr"),
                        help=argparse.SUPPRESS if sweep else f"learning rate (default: {lr_defaults})")
    parser.add_argument("--schedule", action=store, choices=SCHEDULES, default=default("schedule"),
                        help="learning-rate schedule over the run (default: %(default)s)")
    parser.add_argument("--seed", action=store, type=int, default=default("seed"),
                        help="seeds the initial weights and the data order (default: %(default)s)")
    parser.add_argument("--eval-every", action=store, type=int, default=default("eval_every"), metavar="N",
                        help="record training and validation loss/accuracy every N steps "
                             "(default: steps/50)")
    add_data_dir(parser)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from the parsed flags; a bad value is named by its flag."""
    try:
        return TrainConfig(
            model=args.model, backend=args.backend, optimizer=args.optimizer, lr=args.lr,
            steps=args.steps, batch_size=args.batch_size, seed=args.seed,
            eval_every=args.eval_every, schedule=args.schedule,
        )
    except ConfigError as exc:
        raise exc.named(flag(exc.field)) from None


def add_weights(parser: argparse.ArgumentParser, default: str | None = None,
                what: str = "a twinnet weights file (.npz)") -> None:
    """``--weights FILE``; ``default`` says what a command uses without it (the report's
    cnn weights unless the command says otherwise)."""
    default = default or "the report's cnn, docs/report/runs/P2e-cnn-numpy/weights.npz"
    parser.add_argument("--weights", metavar="FILE", default=None, help=f"{what} (default: {default})")


def shown(path: Path) -> Path:
    """``path`` relative to the working folder when it lies inside it, for messages."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def weights_file(given: str | None) -> Path:
    """The weights file given with --weights, else the report's cnn weights shipped in the
    package (``weights.DEFAULT_WEIGHTS``); TwinnetError if that default is not there."""
    if given is not None:
        return Path(given)
    if not DEFAULT_WEIGHTS.is_file():
        raise TwinnetError(f"the default weights {DEFAULT_WEIGHTS} are missing from this install of "
                           "twinnet; reinstall it, or pass --weights FILE")
    return shown(DEFAULT_WEIGHTS)


def deprecated(old: str, new: str) -> None:
    """One line on stderr for a spelling that still works but will go."""
    print(f"twinnet: warning: '{old}' is deprecated; use '{new}'", file=sys.stderr)


def add_server(parser: argparse.ArgumentParser) -> None:
    """``--host`` and ``--port`` of a command that serves a page (serve, watch)."""
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="port (default: %(default)s; 0 picks a free one)")
