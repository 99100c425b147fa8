"""``twinnet watch``: both twins train in lockstep, live on a local page (``twinnet.watch``)."""

from __future__ import annotations

import argparse
import contextlib
import threading
import webbrowser
from dataclasses import replace
from pathlib import Path

from twinnet import data
from twinnet.backend import OPTIMIZERS
from twinnet.checkpoint import CHECKPOINT_NAME
from twinnet.commands.arguments import add_data_dir, add_server, model_argument
from twinnet.config import SCHEDULES, ConfigError, flag
from twinnet.environment import install_command
from twinnet.errors import TwinnetError
from twinnet.models import model_name
from twinnet.runs import check_run_output, lock_run_dir
from twinnet.serve import bind, check_server
from twinnet.watch import WATCH_SECONDS, LiveRun, create_app, tf_availability, watch_config


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "watch", help="train both twins in lockstep, live on a local web page",
        description="Train both twins of MODEL in lockstep (the same initial weights, the same "
                    "batches) and show them on a local web page as they train: both losses at "
                    "every step, validation accuracy, steps per second, the drift between the "
                    "twins' weights and logits, the first layer's weights as images, and a pad "
                    "where you draw a digit for the current weights to read. Pause, resume, take "
                    "one step, or stop and save from the page. Stop, Ctrl-C and the last step "
                    "write a run folder per twin, OUT/numpy and OUT/tf, as `twinnet train` does; "
                    "one stopped early keeps its checkpoint, so `twinnet train --resume OUT/numpy` "
                    "continues it. Settings default to the model's report settings (presets.toml). "
                    "Without TensorFlow the NumPy twin trains alone. Needs twinnet[serve]; the "
                    "JSON API is in docs/usage.md.")
    parser.add_argument("model", type=model_argument, metavar="MODEL",
                        help="a model name or the path of a .toml spec file")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"lockstep steps (default: about {WATCH_SECONDS:.0f} s of training on 2 "
                             "cores, estimated from the model's size)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                        help="sgd or adam (default: the model's report setting, else sgd)")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default: the model's report setting with its optimizer, "
                             "else the optimizer's default)")
    parser.add_argument("--schedule", choices=SCHEDULES, default=None,
                        help="learning-rate schedule (default: the model's report setting)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per step (default: the model's report setting, else 100)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seeds the initial weights and the data order (default: the report's, 0)")
    parser.add_argument("--eval-every", type=int, default=None, metavar="K",
                        help="validation accuracy every K steps (default: steps/50)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="where the run folders go: DIR/numpy and DIR/tf (default: runs/MODEL-watch)")
    add_server(parser)
    parser.add_argument("--open", action="store_true", help="open the page in the default browser")
    add_data_dir(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    check_server("watch", args.port)
    import uvicorn

    try:
        config = watch_config(args.model, steps=args.steps, optimizer=args.optimizer, lr=args.lr,
                              batch_size=args.batch_size, seed=args.seed, schedule=args.schedule,
                              eval_every=args.eval_every)
    except ConfigError as exc:
        raise exc.named(flag(exc.field)) from None
    with_tf, tf_status = tf_availability()
    twins = ("numpy", "tf") if with_tf else ("numpy",)
    out = Path(args.out) if args.out else Path("runs") / f"{model_name(config.model)}-watch"
    for twin in twins:  # before any work, as `train` checks its folder
        check_run_output(out / twin, replace(config, backend=twin))
        if (out / twin / CHECKPOINT_NAME).exists():
            raise TwinnetError(f"{out / twin} holds an unfinished run ({CHECKPOINT_NAME}); continue it "
                               f"with: twinnet train --resume {out / twin}, or watch into another --out")
    with contextlib.ExitStack() as held:
        for twin in twins:
            held.enter_context(lock_run_dir(out / twin))
        mnist = data.load_mnist(args.data_dir)
        live = LiveRun(config, mnist, out, with_tf, tf_status)  # checks --steps
        sock = bind(args.host, args.port)
        host, port = sock.getsockname()[:2]
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
        print(f"twinnet watch: {url}  ({model_name(config.model)}: {config.steps} steps, "
              f"{config.optimizer} lr {config.lr:g} {config.schedule}, batch {config.batch_size}, "
              f"seed {config.seed}; into {out}); Ctrl-C stops and saves", flush=True)
        if not with_tf:
            print(f"twinnet watch: TensorFlow is not installed, so the NumPy twin trains alone "
                  f"({install_command('tf')})", flush=True)
        if host not in ("127.0.0.1", "::1"):
            print(f"twinnet watch: listening on {host}, so other machines may reach the page", flush=True)
        live.start()
        if args.open:
            threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
        server = uvicorn.Server(uvicorn.Config(create_app(live), log_level="warning", access_log=False,
                                               lifespan="off"))
        interrupted = False
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn hands Ctrl-C back once it has stopped serving
            interrupted = True
        finally:
            sock.close()
            still_training = live.state not in ("saving", "done")
            live.finish()
    if live.error:
        raise TwinnetError(live.error)
    return 130 if interrupted and still_training else 0
