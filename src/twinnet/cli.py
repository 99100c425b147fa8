"""The ``twinnet`` command: train, evaluate and check the twins from a shell.

Every user-facing fault (bad data file, bad weights file, bad value) ends in one
line ``twinnet: error: ...`` on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from twinnet import __version__
from twinnet.backend import BACKENDS, OPTIMIZERS
from twinnet.errors import TwinnetError
from twinnet.models import DESCRIPTIONS, MODEL_NAMES
from twinnet.quiet import VERBOSE_ENV

VERBOSE_HELP = (f"show TensorFlow's start-up log lines (absl, oneDNN), hidden by default; "
                f"{VERBOSE_ENV}=1 in the environment does the same")
MODELS_HELP = "; ".join(f"{name}: {text}" for name, text in DESCRIPTIONS.items())


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", metavar="DIR", default=None,
        help="folder with the four MNIST IDX files, .gz or raw (default: $TWINNET_DATA, "
             "else ~/.cache/twinnet/mnist, downloading the files there if missing)")


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


def add_train_arguments(parser: argparse.ArgumentParser, sweep: bool = False) -> None:
    """The flags of TrainConfig's fields; defaults and their help come from twinnet.config."""
    from twinnet.config import DEFAULT_LR, SCHEDULES, default

    parser.add_argument("model", choices=MODEL_NAMES, nargs=None if sweep else "?",
                        help=f"which model ({MODELS_HELP})")
    # Only train needs to know which flags were given (to refuse conflicts on --resume).
    store = "store" if sweep else NoteGiven
    if not sweep:
        parser.set_defaults(given={})
    parser.add_argument("--backend", choices=BACKENDS, default=default("backend"), action=store,
                        help="tf: the TensorFlow twin; numpy: the hand-derived NumPy twin "
                             "(default: %(default)s)")
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


def config_from_args(args: argparse.Namespace):
    """TrainConfig from the parsed flags; a bad value is named by its flag."""
    from twinnet.config import ConfigError, TrainConfig, flag

    try:
        return TrainConfig(
            model=args.model, backend=args.backend, optimizer=args.optimizer, lr=args.lr,
            steps=args.steps, batch_size=args.batch_size, seed=args.seed,
            eval_every=args.eval_every, schedule=args.schedule,
        )
    except ConfigError as exc:
        raise exc.named(flag(exc.field)) from None


def format_confusion(confusion: list[list[int]]) -> str:
    """The 10x10 matrix as aligned text; rows = true digit, columns = predicted digit."""
    lines = ["true\\pred " + " ".join(f"{d:>5}" for d in range(10))]
    for digit, row in enumerate(confusion):
        lines.append(f"{digit:>9} " + " ".join(f"{c:>5}" for c in row))
    return "\n".join(lines)


def resume_conflicts(args: argparse.Namespace, config, out: Path) -> None:
    """TwinnetError naming the first flag given with ``--resume`` that disagrees with the
    checkpoint's configuration ``config`` (a model, a training flag, another --out)."""
    from twinnet.config import ConfigError, TrainConfig, flag

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


def cmd_train(args: argparse.Namespace) -> int:
    from twinnet.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from twinnet.data import load_mnist
    from twinnet.runs import check_output_dir, default_run_dir, lock_run_dir, run_bytes
    from twinnet.training import train

    if args.checkpoint_every < 0:
        raise TwinnetError(f"--checkpoint-every must be positive, got {args.checkpoint_every}")
    if args.resume:
        out = Path(args.resume)
        config, state = load_checkpoint(out / CHECKPOINT_NAME)
        resume_conflicts(args, config, out)
    elif args.model is None:
        raise TwinnetError("name a model to train, or --resume DIR to continue a run")
    else:
        config = config_from_args(args)
        out = Path(args.out) if args.out else default_run_dir(config)
    check_output_dir(out, run_bytes(config))  # before any work
    checkpoint = out / CHECKPOINT_NAME
    with lock_run_dir(out):
        if not args.resume and checkpoint.exists():
            if not args.force:
                raise TwinnetError(f"{out} holds an unfinished run ({CHECKPOINT_NAME}); continue it "
                                   f"with: twinnet train --resume {out}, or start over with --force")
            checkpoint.unlink()
        if args.resume:
            print(f"resuming {config.model} ({config.backend}) in {out} after step {state['step']}")
        data = load_mnist(args.data_dir)
        _, metrics = train(config, data, checkpoint=checkpoint, checkpoint_every=args.checkpoint_every,
                           resume=bool(args.resume), out_dir=out)
    if args.tensorboard:
        from twinnet.tensorboard import write_tensorboard

        write_tensorboard(metrics, args.tensorboard, f"{config.model}/{config.backend}")
    final = metrics["final"]
    print(f"{config.model} ({config.backend}, {config.optimizer} lr={config.lr:g}, "
          f"{config.steps} steps) in {metrics['train_seconds']:.1f} s")
    for split in ("train", "validation", "test"):
        print(f"  {split:<10} accuracy {final[split]['accuracy']:.2%}  "
              f"loss {final[split]['loss']:.4f}")
    print(f"wrote {out}/weights.npz, metrics.json, curves.png, confusion.png")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from twinnet.backend import load_model
    from twinnet.data import load_mnist
    from twinnet.metrics import evaluate
    from twinnet.weights import load_weights

    _, meta = load_weights(args.weights)
    test = load_mnist(args.data_dir).test
    backend = args.backend or meta.get("backend")
    if backend not in BACKENDS:
        backend = "numpy"
    model = load_model(meta["model"], backend, weights=args.weights)
    result = evaluate(model, test.x, test.y)
    if args.json:
        print(json.dumps({"weights": str(args.weights), "model": meta["model"],
                          "backend": backend, **result}, indent=2))
        return 0
    print(f"{args.weights}: {meta['model']} evaluated by the {backend} twin on "
          f"{result['count']} test images")
    print(f"test accuracy {result['accuracy']:.2%} ({result['correct']}/{result['count']})  "
          f"cross-entropy {result['loss']:.4f}")
    print(format_confusion(result["confusion_matrix"]))
    return 0


def cmd_gradcheck(args: argparse.Namespace) -> int:
    from twinnet.gradcheck import check_layers, check_model, format_table

    names = MODEL_NAMES if args.model == "all" else (args.model,)
    rows = check_layers(seed=args.seed) if args.model == "all" else []
    for name in names:
        rows += check_model(name, seed=args.seed)
    print(format_table(rows))
    failed = [row for row in rows if not row.passed]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from twinnet.config import MAX_SEED
    from twinnet.sweep import DEFAULT_LRS, format_sweep, run_sweep, write_sweep

    if args.workers < 1:
        raise TwinnetError(f"--workers must be at least 1, got {args.workers}")
    if args.seeds < 1:
        raise TwinnetError(f"--seeds must be at least 1, got {args.seeds}")
    lrs = args.lrs or list(DEFAULT_LRS[args.optimizer])
    if any(not lr > 0 for lr in lrs):
        raise TwinnetError(f"--lrs must all be positive, got {lrs}")
    args.lr = lrs[0]  # the sweep's base configuration records its first rate
    base = config_from_args(args)
    if base.seed + args.seeds - 1 > MAX_SEED:
        raise TwinnetError(f"--seed {base.seed} with --seeds {args.seeds} goes past the largest seed "
                           f"{MAX_SEED}")
    result = run_sweep(base, lrs, workers=args.workers, data_dir=args.data_dir, seeds=args.seeds,
                       out_dir=args.out, engine=args.engine, address=args.address)
    path = write_sweep(result, args.out)
    print(format_sweep(result))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from twinnet.report import generate_report

    if args.jobs < 1:
        raise TwinnetError(f"--jobs must be at least 1, got {args.jobs}")
    path = generate_report(out=args.out, only=args.only, jobs=args.jobs, data_dir=args.data_dir,
                           tensorboard=args.tensorboard, presets_path=args.presets, seeds=args.seeds,
                           engine=args.engine, address=args.address)
    print(f"wrote {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from twinnet.bench import format_bench, format_blocks, run_bench, time_blocks

    if args.repeats < 1 or args.steps < 1 or args.batch_size < 1:
        raise TwinnetError("--repeats, --steps and --batch-size must be at least 1")
    if args.blocks:
        for name in args.models:
            result = time_blocks(name, batch_size=args.batch_size, repeats=args.repeats)
            print(json.dumps(result, indent=2) if args.json else format_blocks(result) + "\n")
        return 0
    results = run_bench(args.models, args.backends, batch_size=args.batch_size,
                        repeats=args.repeats, steps=args.steps, optimizer=args.optimizer)
    print(json.dumps(results, indent=2) if args.json else format_bench(results))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from twinnet.backend import load_model
    from twinnet.predict import format_predictions, predict_images
    from twinnet.weights import load_weights

    _, meta = load_weights(args.weights)
    model = load_model(meta["model"], args.backend, weights=args.weights)
    results = predict_images(model, args.images)
    failed = [r for r in results if "error" in r]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        predicted = [r for r in results if "error" not in r]
        if predicted:
            print(format_predictions(predicted))
        for result in failed:
            print(f"twinnet: error: {result['file']}: {result['error']}", file=sys.stderr)
    return 2 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    from twinnet.sweep import DEFAULT_LRS, SWEEP_STEPS

    parser = argparse.ArgumentParser(
        prog="twinnet",
        description="Four MNIST classifiers trained twice: by TensorFlow (the framework twin) "
                    "and by hand-derived NumPy backpropagation (the NumPy twin).",
    )
    parser.add_argument("--version", action="version", version=f"twinnet {__version__}")
    parser.add_argument("--verbose", action="store_true", default=False, help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train one model with one twin",
                           description="Train one model with one twin and write weights.npz, "
                                       "metrics.json, curves.png and confusion.png.")
    add_train_arguments(train)
    train.add_argument("--out", metavar="DIR", default=None,
                       help="output folder (default: runs/MODEL-BACKEND)")
    train.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                       help="save a checkpoint (model, optimizer, step, data order) to "
                            "OUT/checkpoint.npz every N steps; Ctrl-C always saves one "
                            "(default: only on Ctrl-C)")
    train.add_argument("--resume", metavar="DIR", default=None,
                       help="continue the interrupted run in DIR from its checkpoint, with its "
                            "saved settings (a training flag that disagrees with them is refused)")
    train.add_argument("--force", action="store_true",
                       help="start a new run even where OUT holds an interrupted one (its "
                            "checkpoint is deleted)")
    train.add_argument("--tensorboard", metavar="DIR", default=None,
                       help="also write the curves as TensorBoard scalars under DIR/MODEL/BACKEND")
    train.set_defaults(func=cmd_train)

    report = sub.add_parser(
        "report", help="run the preset runs and the seed report's reruns, write the results report",
        description="Train the eight preset runs (both twins of all four models) with --seeds "
                    "seeds each, and the eight runs at the seed report's own settings (one seed "
                    "each); finished runs whose configuration is unchanged are reused. Then write "
                    "DIR/REPORT.md with curves, confusion matrices, the error-rate table, the "
                    "seed report's verdicts and the twins' differences beside it.")
    report.add_argument("--out", metavar="DIR", default="report",
                        help="report folder; runs go to DIR/runs (default: %(default)s)")
    report.add_argument("--only", metavar="RUNS", default=None,
                        help="comma-separated run ids (P1a, S-P1a), labels (P1:a, "
                             "'P1:a (seed settings)') or model names to train again even if "
                             "finished; the report still shows every finished run")
    report.add_argument("--seeds", type=int, default=1, metavar="K",
                        help="train each preset run with seeds seed..seed+K-1 and show mean, "
                             "spread and the twins' paired difference with a 95%% interval; the "
                             "seed report's reruns keep one seed (default: %(default)s)")
    report.add_argument("--jobs", type=int, default=2,
                        help="runs trained at once in worker processes (default: %(default)s)")
    report.add_argument("--presets", metavar="FILE", default=None,
                        help="presets TOML file: exactly the runs to train (default: the one "
                             "shipped in twinnet/presets.toml, plus the seed report's eight "
                             "runs at its own settings)")
    report.add_argument("--tensorboard", metavar="DIR", default=None,
                        help="also write every run's curves as TensorBoard scalars under DIR")
    add_engine_arguments(report)
    add_data_dir(report)
    report.set_defaults(func=cmd_report)

    evaluate = sub.add_parser("evaluate", help="test accuracy, loss and confusion matrix of a "
                                               "weights file",
                              description="Evaluate a weights file on the 10,000 test images.")
    evaluate.add_argument("weights", help="a twinnet weights file (.npz)")
    evaluate.add_argument("--backend", choices=BACKENDS, default=None,
                          help="twin to evaluate with (default: the one that trained it)")
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    add_data_dir(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser(
        "predict", help="read digits from your own images",
        description="Predict the digit in each image (PNG, JPEG or anything Pillow reads, any "
                    "size, either polarity). Each image is made grayscale, inverted if dark on "
                    "light, cropped to the digit, scaled to fit 20x20 and centred by centre of "
                    "mass in 28x28, as MNIST was made. Prints the digit and the top-3 "
                    "probabilities; a file that cannot be used is reported and the rest are "
                    "still predicted (exit code 2 if any failed).")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    predict.add_argument("--weights", required=True, help="a twinnet weights file (.npz)")
    predict.add_argument("--backend", choices=BACKENDS, default="numpy",
                         help="twin to predict with (default: %(default)s, which needs no "
                              "TensorFlow)")
    predict.add_argument("--json", action="store_true", help="print the results as JSON")
    predict.set_defaults(func=cmd_predict)

    sweep = sub.add_parser(
        "sweep", help="short runs at several learning rates, ranked by validation accuracy",
        description="Train short runs at each learning rate on the training split, in parallel "
                    "worker processes, and rank them by validation accuracy (the test split is "
                    "not evaluated). Writes a JSON file and a plot into --out; every finished "
                    "point is saved at once and reused by a rerun with the same settings.")
    add_train_arguments(sweep, sweep=True)
    sweep.set_defaults(steps=SWEEP_STEPS)
    lrs_defaults = ", ".join(f"{' '.join(f'{lr:g}' for lr in lrs)} for {name}"
                             for name, lrs in DEFAULT_LRS.items())
    sweep.add_argument("--lrs", type=float, nargs="+", metavar="LR",
                       help=f"learning rates to try (default: {lrs_defaults})")
    sweep.add_argument("--workers", type=int, default=2,
                       help="parallel worker processes, sharing the cores (default: %(default)s)")
    sweep.add_argument("--seeds", type=int, default=1, metavar="K",
                       help="train every rate with seeds SEED .. SEED+K-1 and rank the rates by "
                            "mean validation accuracy (default: %(default)s)")
    sweep.add_argument("--out", metavar="DIR", default="sweeps",
                       help="folder for MODEL-BACKEND-OPTIMIZER.json and .png, and the finished "
                            "points (.points/), which a rerun reuses (default: %(default)s)")
    add_engine_arguments(sweep)
    sweep.set_defaults(func=cmd_sweep)

    bench = sub.add_parser(
        "bench", help="time training steps and inference of both twins",
        description="Time training steps (forward, backward, update) and inference of every "
                    "model on every backend in one process, interleaving backends, after "
                    "warm-up, on random data. Prints ms per step, ms per 1,000 inference images, "
                    "FLOPs counted from the spec, GFLOP/s and the NumPy/TensorFlow ratios.")
    bench.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES),
                       help="models to time (default: all)")
    bench.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS),
                       help="backends to time (default: both)")
    bench.add_argument("--batch-size", type=int, default=100, help="images per step (default: 100)")
    bench.add_argument("--repeats", type=int, default=7,
                       help="timed repeats per model and backend; the median is reported "
                            "(default: %(default)s)")
    bench.add_argument("--steps", type=int, default=30,
                       help="training steps per repeat (default: %(default)s)")
    bench.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd",
                       help="optimizer of the timed steps (default: %(default)s)")
    bench.add_argument("--blocks", action="store_true",
                       help="instead, time each NumPy-twin block's forward and backward on one "
                            "thread (use --batch-size 50 for a thread's share of a 100-image step)")
    bench.add_argument("--json", action="store_true", help="print the full results as JSON")
    bench.set_defaults(func=cmd_bench)

    gradcheck = sub.add_parser(
        "gradcheck", help="check the NumPy twin's gradients against finite differences",
        description="Compare every analytic gradient of the NumPy twin with central finite "
                    "differences in float64 and print the maximum relative error per parameter.")
    gradcheck.add_argument("model", nargs="?", default="all", choices=(*MODEL_NAMES, "all"),
                           help="a model, or all (also checks every layer alone; default)")
    gradcheck.add_argument("--seed", type=int, default=0, help="seeds the random batch")
    gradcheck.set_defaults(func=cmd_gradcheck)

    from twinnet import comparison, serve, tracing  # their parsers live in their own modules

    comparison.add_parser(sub)
    tracing.add_parser(sub)
    serve.add_parser(sub)
    for command in sub.choices.values():  # also after the command: twinnet compare cnn --verbose
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                             help=VERBOSE_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:  # an environment variable, so that worker processes see it too
        os.environ[VERBOSE_ENV] = "1"
    try:
        return args.func(args)
    except TwinnetError as exc:
        code = getattr(exc, "exit_code", 2)
        print(f"twinnet: {'error: ' if code != 130 else ''}{exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("twinnet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (`| head`) stopped early; silence Python's flush at exit too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
