"""Presets: the runs of a report, read from a TOML file such as ``presets.toml``.

The file says each setting once per model and names the model's twins::

    [models.linear]
    optimizer = "sgd"          # and lr, schedule, steps, batch_size, seed
    lr_chosen_by = "..."
    twins = {tf = "P1:a", numpy = "P2:b"}

    [seed_report."P1:d"]       # optional: the seed report's figures for a run
    lr = 0.001                 # and optimizer, steps, train_accuracy, test_accuracy

Each twin becomes one ``Preset``: label ``P1:a``, id ``P1a`` (the label without its
colon), run folder ``runs/P1a-linear-tf``. Another set of presets is another file of
the same form, read by the same ``load_presets``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from twinnet.backend import BACKENDS
from twinnet.config import ConfigError, TrainConfig
from twinnet.errors import TwinnetError

CONFIG_KEYS = ("optimizer", "lr", "schedule", "steps", "batch_size", "seed")
MODEL_KEYS = (*CONFIG_KEYS, "lr_chosen_by", "twins")
SEED_REPORT_KEYS = ("optimizer", "lr", "steps", "train_accuracy", "test_accuracy")


@dataclass(frozen=True)
class Preset:
    """One run of the report: its id (``P1a``), label (``P1:a``), configuration, where its
    learning rate came from, and the seed report's figures for it (empty where unknown)."""

    id: str
    label: str
    config: TrainConfig
    lr_chosen_by: str
    seed_report: Mapping[str, Any] = field(default_factory=dict)

    def run_dir(self, out: Path) -> Path:
        """The run's folder in a report folder: ``out/runs/P1a-linear-tf``."""
        return out / "runs" / f"{self.id}-{self.config.model}-{self.config.backend}"


def default_presets_path() -> Path:
    return Path(str(resources.files("twinnet") / "presets.toml"))


def read_toml(source: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TwinnetError(f"{source}: cannot read presets ({exc})") from None


def check_keys(where: str, entry: Any, allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    if not isinstance(entry, dict):
        raise TwinnetError(f"{where}: expected a table, got {entry!r}")
    missing = [key for key in required if key not in entry]
    if unknown := sorted(set(entry) - set(allowed)):
        raise TwinnetError(f"{where}: unknown key(s) {', '.join(unknown)}")
    if missing:
        raise TwinnetError(f"{where}: missing {', '.join(missing)}")


def model_presets(source: Path, model: str, entry: Any, seed_report: dict[str, Any]) -> list[Preset]:
    """The presets of one ``[models.<model>]`` table, one per twin."""
    check_keys(f"{source}: [models.{model}]", entry, MODEL_KEYS, MODEL_KEYS)
    check_keys(f"{source}: [models.{model}] twins", entry["twins"], BACKENDS, ())
    presets = []
    for backend, label in entry["twins"].items():
        run_id = str(label).replace(":", "")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", run_id):
            raise TwinnetError(f"{source}: [models.{model}] twins: bad label {label!r} "
                               "(letters, digits, '_', '-' and ':' only)")
        try:
            config = TrainConfig(model=model, backend=backend,
                                 **{key: entry[key] for key in CONFIG_KEYS})
        except ConfigError as exc:
            raise exc.named(f"{source}: run {run_id}: {exc.field}") from None
        except TypeError as exc:  # a value of the wrong type, e.g. steps = "many"
            raise TwinnetError(f"{source}: run {run_id}: {exc}") from None
        presets.append(Preset(run_id, label, config, str(entry["lr_chosen_by"]),
                              seed_report.get(label, {})))
    return presets


def load_presets(path: str | os.PathLike | None = None) -> list[Preset]:
    """Read a presets file; one clear error naming the file and the entry at fault."""
    source = Path(path) if path is not None else default_presets_path()
    table = read_toml(source)
    check_keys(str(source), table, ("models", "seed_report"), ("models",))
    seed_report = table.get("seed_report", {})
    for label, figures in seed_report.items():
        check_keys(f"{source}: [seed_report.{label!r}]", figures, SEED_REPORT_KEYS, ())
    presets = [preset for model, entry in table["models"].items()
               for preset in model_presets(source, model, entry, seed_report)]
    labels = [p.label for p in presets]
    if duplicated := sorted({label for label in labels if labels.count(label) > 1}):
        raise TwinnetError(f"{source}: run label(s) used twice: {', '.join(duplicated)}")
    if unused := sorted(set(seed_report) - set(labels)):
        raise TwinnetError(f"{source}: seed_report for unknown run(s) {', '.join(unused)}")
    if not presets:
        raise TwinnetError(f"{source}: no [models.*] tables")
    return presets


def select(presets: list[Preset], only: str | None) -> list[Preset]:
    """The presets named in ``only`` (comma-separated ids, labels or model names)."""
    if not only:
        return presets
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    chosen = [p for p in presets if wanted & {p.id, p.label, p.config.model}]
    known = {name for p in presets for name in (p.id, p.label, p.config.model)}
    if unknown := sorted(wanted - known):
        raise TwinnetError(f"--only: unknown run(s) {', '.join(unknown)}; "
                           f"known: {', '.join(p.id for p in presets)} or a model name")
    return chosen
