"""Presets: the runs of a report, read from a TOML file such as ``presets.toml``.

The file says each setting once per model and names the model's twins::

    [models.linear]
    optimizer = "sgd"          # and lr, schedule, steps, batch_size, seed
    lr_chosen_by = "..."
    twins = {tf = "P1:a", numpy = "P2:b"}

Each twin becomes one ``Preset``: label ``P1:a``, id ``P1a`` (the label without its
colon), run folder ``runs/P1a-linear-tf``. Trained with several seeds, seed k of a
preset (config seed + k) has its own folder: k = 0 keeps the run folder itself, so a
one-assignment report and every reference to its weights stay as they are; k >= 1 is
``runs/P1a-linear-tf/seed-k``. A table's key is a model name (``[models.lenet5]``) or a
spec file's path, quoted (``[models."my_net.toml"]``, relative to the working folder);
the run folder takes the spec's name. Another set of presets is another file of
the same form, read by the same ``load_presets``. The assignment report's figures are not
here but in ``assignment_report.toml`` (``twinnet.assignment_report``).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from twinnet.assignment_report import AssignmentReport, assignment_settings_runs, load_assignment_report
from twinnet.backend import BACKENDS
from twinnet.config import ConfigError, TrainConfig
from twinnet.errors import TwinnetError
from twinnet.models import get_spec, is_spec_file, model_name
from twinnet.runs import safe_name
from twinnet.util import FileAccessError, read_bounded

# The longest file name most filesystems take (ext4, XFS, btrfs, APFS, NTFS: 255 bytes);
# ``check_name_lengths`` asks the report folder's own filesystem when it exists.
NAME_MAX = 255
CONFIG_KEYS = ("optimizer", "lr", "schedule", "steps", "batch_size", "seed")
MODEL_KEYS = (*CONFIG_KEYS, "lr_chosen_by", "twins")


@dataclass(frozen=True)
class Preset:
    """One run of the report: its id (``P1a``), label (``P1:a``), configuration and where
    its learning rate came from."""

    id: str
    label: str
    config: TrainConfig
    lr_chosen_by: str
    reruns: str | None = None  # the assignment report's run ("P1:a") this one reruns at its settings

    def run_dir(self, out: Path, k: int = 0) -> Path:
        """The folder of the run's seed k in a report folder: ``out/runs/P1a-linear-tf``
        for k = 0, ``out/runs/P1a-linear-tf/seed-k`` for k >= 1."""
        folder = out / "runs" / self.folder_name()
        return folder if k == 0 else folder / f"seed-{k}"

    def folder_name(self) -> str:
        """The run folder's name, ``P1a-linear-tf``."""
        return f"{self.id}-{safe_name(self.config.model)}-{self.config.backend}"

    def with_seed(self, k: int, seeds: int) -> Preset:
        """Seed k of ``seeds``: the config's seed plus k, the label naming that seed when
        there are several (``P1:a seed 3``), the id unique per seed (``P1a-seed3``)."""
        try:
            config = replace(self.config, seed=self.config.seed + k)
        except ConfigError as exc:
            raise TwinnetError(f"--seeds {seeds}: run {self.label}: {exc}") from None
        if seeds == 1:
            return replace(self, config=config)
        return replace(self, id=self.id if k == 0 else f"{self.id}-seed{k}",
                       label=f"{self.label} seed {config.seed}", config=config)


def default_presets_path() -> Path:
    return Path(str(resources.files("twinnet") / "presets.toml"))


# A presets file is a few KB (the shipped one: 2 KB); a larger one is not read.
PRESETS_MAX_BYTES = 1 << 20


def read_toml(source: Path) -> dict[str, Any]:
    """The presets file's table: read only from a regular file of at most PRESETS_MAX_BYTES
    (a FIFO or /dev/zero is refused at once), parsed without hitting a recursion limit."""
    try:
        return tomllib.loads(read_bounded(source, PRESETS_MAX_BYTES).decode("utf-8"))
    except FileAccessError as exc:
        raise TwinnetError(f"{source}: cannot read presets ({exc.reason})") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TwinnetError(f"{source}: cannot read presets ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise TwinnetError(f"{source}: cannot read presets (nested too deeply)") from None


def check_keys(where: str, entry: Any, allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    if not isinstance(entry, dict):
        raise TwinnetError(f"{where}: expected a table, got {entry!r}")
    missing = [key for key in required if key not in entry]
    if unknown := sorted(set(entry) - set(allowed)):
        raise TwinnetError(f"{where}: unknown key(s) {', '.join(unknown)}")
    if missing:
        raise TwinnetError(f"{where}: missing {', '.join(missing)}")


def model_presets(source: Path, model: str, entry: Any) -> list[Preset]:
    """The presets of one ``[models.<model>]`` table, one per twin."""
    check_keys(f"{source}: [models.{model}]", entry, MODEL_KEYS, MODEL_KEYS)
    check_keys(f"{source}: [models.{model}] twins", entry["twins"], BACKENDS, ())
    if is_spec_file(model):
        get_spec(model)  # SpecError naming the file, before any run is planned
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
        preset = Preset(run_id, label, config, str(entry["lr_chosen_by"]))
        check_name_length(preset, NAME_MAX, f"{source}: [models.{model}] twins")
        presets.append(preset)
    return presets


def check_name_length(preset: Preset, limit: int, where: str) -> None:
    """TwinnetError (one line, ``where`` first) if the preset's run folder name is longer
    than ``limit`` bytes, the filesystem's longest file name."""
    size = len(os.fsencode(preset.folder_name()))
    if size > limit:
        raise TwinnetError(f"{where}: label {preset.label[:40]!r}... is too long: its run folder name "
                           f"would take {size} bytes, more than the {limit} the filesystem allows")


def check_name_lengths(presets: list[Preset], out: Path) -> None:
    """``check_name_length`` of every preset against the limit of the filesystem holding
    ``out`` (an existing folder), read with ``os.pathconf``; NAME_MAX if it cannot say."""
    try:
        limit = os.pathconf(out, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = NAME_MAX
    for preset in presets:
        check_name_length(preset, limit if limit > 0 else NAME_MAX, f"{out}: run {preset.id[:40]}")


def load_presets(path: str | os.PathLike | None = None) -> list[Preset]:
    """Read a presets file; one clear error naming the file and the entry at fault."""
    source = Path(path) if path is not None else default_presets_path()
    table = read_toml(source)
    check_keys(str(source), table, ("models",), ("models",))
    presets = [preset for model, entry in table["models"].items()
               for preset in model_presets(source, model, entry)]
    labels = [p.label for p in presets]
    if duplicated := sorted({label for label in labels if labels.count(label) > 1}):
        raise TwinnetError(f"{source}: run label(s) used twice: {', '.join(duplicated)}")
    if not presets:
        raise TwinnetError(f"{source}: no [models.*] tables")
    return presets


def select(presets: list[Preset], only: str | None) -> list[Preset]:
    """The presets named in ``only`` (comma-separated ids, labels or model names)."""
    if not only:
        return presets
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    # A spec file's model by its path or by its name, the one messages show.
    names = {p.id: {p.id, p.label, p.config.model, model_name(p.config.model)} for p in presets}
    chosen = [p for p in presets if wanted & names[p.id]]
    known = set().union(*names.values())
    if unknown := sorted(wanted - known):
        raise TwinnetError(f"--only: unknown run(s) {', '.join(unknown)}; "
                           f"known: {', '.join(p.id for p in presets)} or a model name")
    return chosen


def assignment_settings_presets(report: AssignmentReport | None = None) -> list[Preset]:
    """The assignment report's runs at its own settings
    (``twinnet.assignment_report.assignment_settings_runs``) as presets: id ``A-P1a``,
    label ``P1:a (assignment settings)``, run folder ``runs/A-P1a-linear-tf``, ``reruns``
    the assignment run's label."""
    report = load_assignment_report() if report is None else report
    return [Preset(run.id, run.label, TrainConfig(**run.config), "the assignment report's own settings",
                   reruns=run.assignment_label)
            for run in assignment_settings_runs(report)]
