"""Progress bars for training runs, sweeps and reports: tqdm in a terminal, and in a
Jupyter notebook one widget per run (with ipywidgets) or else one line per run.

tqdm's own choice for notebooks (``tqdm.auto``) falls back, without ipywidgets, to the
terminal bar plus an "IProgress not found" warning, and the terminal bar redrawn into a
notebook's output leaves hundreds of stderr chunks in the saved file. So without
ipywidgets a notebook gets ``FinalLine``: nothing while the run goes, its final line
(steps, time, rate, last loss) when it ends.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from tqdm.std import tqdm


class FinalLine(tqdm):
    """A tqdm that draws nothing while it runs and writes its final state as one line when
    closed; for outputs that keep every redraw (a notebook's saved stderr)."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        return True  # no redraws

    def close(self) -> None:
        if not self.disable and self.leave:
            self.fp.write(self.format_meter(**{**self.format_dict, "ncols": None}))  # a 10-character bar
        super().close()  # ends the line


def in_notebook() -> bool:
    """Whether this runs inside a Jupyter kernel (not a terminal IPython)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def progress_bar(total: int, description: str, unit: str = "step", enabled: bool | None = None) -> Any:
    """A progress bar of ``total`` ``unit``s on stderr, or in a notebook's output.

    Shown when ``enabled`` is True; by default (None) only in a terminal or a notebook,
    never into a file or a pipe."""
    notebook = in_notebook()
    if enabled is None:
        enabled = notebook or sys.stderr.isatty()
    if notebook and enabled:
        if importlib.util.find_spec("ipywidgets") is not None:
            from tqdm.notebook import tqdm as widget

            return widget(total=total, desc=description, unit=unit)
        return FinalLine(total=total, desc=description, unit=unit, file=sys.stderr)
    return tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True, disable=not enabled)
