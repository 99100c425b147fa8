"""``twinnet train``: one model, one twin, one run folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from twinnet import data
from twinnet.checkpoint import CHECKPOINT_NAME, load_checkpoint
from twinnet.commands.arguments import (
    add_layers,
    add_reference,
    add_train_arguments,
    check_reference,
    config_from_args,
    layers_lesson,
)
from twinnet.config import ConfigError, TrainConfig, flag
from twinnet.errors import TwinnetError, UsageError
from twinnet.exercise.learner import describe_lesson, learner_errors
from twinnet.models import SpecError, is_spec_file, model_name, read_document, spec_document
from twinnet.runs import check_run_output, check_run_owner, default_run_dir, lock_run_dir, safe_name
from twinnet.tensorboard import check_log_dir, write_tensorboard
from twinnet.training import check_training_memory, train


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("train", help="train one model with one twin",
                            usage="%(prog)s [options] MODEL\n       %(prog)s --resume DIR [options]",
                            description="Train one model with one twin and write weights.npz, "
                                        "metrics.json, curves.png and confusion.png.")
    add_train_arguments(parser)
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output folder (default: runs/MODEL-BACKEND)")
    parser.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                        help="save a checkpoint (model, optimizer, step, data order) to "
                             "OUT/checkpoint.npz every N steps; Ctrl-C always saves one, and so "
                             "does a failed final write (a full disk). A checkpoint that cannot "
                             "be written mid-run keeps the previous one and training goes on, "
                             "with a warning (default: only on Ctrl-C)")
    parser.add_argument("--resume", metavar="DIR", default=None,
                        help="continue the interrupted run in DIR from its checkpoint, with its "
                             "saved settings (a training flag that disagrees with them is refused)")
    parser.add_argument("--force", action="store_true",
                        help="start a new run even where OUT holds an interrupted one (its "
                             "checkpoint is deleted) or the run of another model or spec (replaced)")
    add_reference(parser, "train with")
    add_layers(parser)
    parser.add_argument("--tensorboard", metavar="DIR", default=None,
                        help="also write the curves as TensorBoard scalars under DIR/MODEL/BACKEND")
    return parser


def resume_conflicts(args: argparse.Namespace, config: TrainConfig, out: Path) -> None:
    """TwinnetError naming the first flag given with ``--resume`` that disagrees with the
    checkpoint's configuration ``config`` (a model, a training flag, another --out)."""
    if args.model is not None and args.model != config.model:
        raise TwinnetError(f"model {args.model} conflicts with the checkpoint's model {config.model} "
                           f"in {out}; --resume continues with the saved settings")
    if args.out is not None and Path(args.out).resolve() != out.resolve():
        raise TwinnetError(f"--out {args.out} conflicts with --resume {out}: a run is resumed "
                           "in its own folder")
    given = {dest: getattr(args, dest) for dest in args.given}
    try:
        wanted = TrainConfig(**{**vars(config), **given})
    except ConfigError as exc:
        raise exc.named(flag(exc.field)) from None
    for dest, option in args.given.items():
        if getattr(wanted, dest) != getattr(config, dest):
            raise TwinnetError(f"{option} {getattr(args, dest)} conflicts with the checkpoint's "
                               f"{dest} {getattr(config, dest)} in {out}; --resume continues with "
                               "the saved settings")


def planned_run(args: argparse.Namespace) -> tuple[TrainConfig, Path, dict | None]:
    """(configuration, run folder, checkpoint state or None) from the flags or --resume."""
    if args.resume:
        out = Path(args.resume)
        config, state = load_checkpoint(out / CHECKPOINT_NAME)
        resume_conflicts(args, config, out)
        return config, out, state
    if args.model is None:
        raise UsageError("name a MODEL to train, or --resume DIR to continue a run")
    config = config_from_args(args)
    return config, Path(args.out) if args.out else default_run_dir(config), None


def note_changed_spec(config: TrainConfig) -> None:
    """One line on stderr when the spec file of a resumed run differs from the spec its
    checkpoint stores (or is gone): the run goes on with the stored spec, the layers it
    trained, never with the edited file's (docs/usage.md, "Resuming a run")."""
    if not is_spec_file(config.model):
        return
    try:
        changed = "has changed since" if read_document(config.model) != spec_document(config.model) else ""
    except SpecError:
        changed = "cannot be read as it was when"
    if changed:
        print(f"twinnet: note: {config.model} {changed} this run started; resuming with the spec "
              "its checkpoint stores (train a new run to use the file as it is now)", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    if args.checkpoint_every < 0:
        raise TwinnetError(f"--checkpoint-every must be positive, got {args.checkpoint_every}")
    check_reference(args)
    config, out, state = planned_run(args)
    lesson = layers_lesson(args)
    if args.resume:
        note_changed_spec(config)
    check_training_memory(config, args.reference)
    check_run_output(out, config)  # before any work
    if not args.resume and not args.force:
        check_run_owner(out, config.model)
    if args.tensorboard:
        check_log_dir(args.tensorboard)
    checkpoint = out / CHECKPOINT_NAME
    with lock_run_dir(out):
        if not args.resume and checkpoint.exists():
            if not args.force:
                raise TwinnetError(f"{out} holds an unfinished run ({CHECKPOINT_NAME}); continue it "
                                   f"with: twinnet train --resume {out}, or start over with --force")
            checkpoint.unlink()
        if args.resume:
            print(f"resuming {model_name(config.model)} ({config.backend}) in {out} "
                  f"after step {state['step']}")
        mnist = data.load_mnist(args.data_dir)
        with learner_errors(args.layers, lesson):
            _, metrics = train(config, mnist, checkpoint=checkpoint, checkpoint_every=args.checkpoint_every,
                               resume=bool(args.resume), out_dir=out, reference=args.reference, lesson=lesson)
    if args.tensorboard:
        write_tensorboard(metrics, args.tensorboard, f"{safe_name(config.model)}/{config.backend}")
    print_summary(config, metrics, out)
    if lesson:
        print(f"trained on {describe_lesson(args.layers, lesson, config.model, config.optimizer)}")
    return 0


def print_summary(config: TrainConfig, metrics: dict, out: Path) -> None:
    final = metrics["final"]
    print(f"{model_name(config.model)} ({config.backend}, {config.optimizer} lr={config.lr:g}, "
          f"{config.steps} steps) in {metrics['train_seconds']:.1f} s")
    for split in ("train", "validation", "test"):
        print(f"  {split:<10} accuracy {final[split]['accuracy']:.2%}  "
              f"loss {final[split]['loss']:.4f}")
    print(f"wrote {out}/weights.npz, metrics.json, curves.png, confusion.png")
