"""What machine and software a run or a timing came from (CPU model, SIMD level, versions),
and how this installation of twinnet gets an extra."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from twinnet.version import __version__


def _cpuinfo_field(name: str) -> str | None:
    """The first ``name : value`` line of /proc/cpuinfo, or None where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The processor's model name, with its family and model numbers where /proc/cpuinfo
    has them (e.g. ``AMD EPYC (family 25, model 17)``), else what platform knows."""
    name = _cpuinfo_field("model name")
    if name is None:
        return platform.processor() or platform.machine()
    family, model = _cpuinfo_field("cpu family"), _cpuinfo_field("model")
    return f"{name} (family {family}, model {model})" if family and model else name


def simd_level() -> str:
    """The widest x86 vector extension the CPU reports: ``AVX-512``, ``AVX2``, ``AVX`` or
    ``SSE``; the machine name elsewhere (e.g. ``aarch64``)."""
    flags = set((_cpuinfo_field("flags") or "").split())
    if not flags:
        return platform.machine()
    for flag, level in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")):
        if flag in flags:
            return level
    return "SSE"


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded with every run and every timing."""
    env: dict[str, Any] = {
        "twinnet": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "simd": simd_level(),
        "cpu_count": os.cpu_count(),
    }
    if "tensorflow" in sys.modules:
        env["tensorflow"] = sys.modules["tensorflow"].__version__
    return env


def install_command(extra: str) -> str:
    """The pip command that adds ``extra`` (``tf``, ``serve``, ``ray``) to this installation
    of twinnet, read from its ``direct_url.json`` (PEP 610): an editable install of a
    clone gives ``pip install -e '<clone>[extra]'``, an install from a local wheel or
    folder ``pip install '<that file>[extra]'``, anything else (an index)
    ``pip install 'twinnet[extra]'``."""
    try:
        recorded = importlib.metadata.distribution("twinnet").read_text("direct_url.json")
        origin = json.loads(recorded) if recorded else {}
    except (importlib.metadata.PackageNotFoundError, ValueError):
        origin = {}
    url = origin.get("url", "") if isinstance(origin, dict) else ""
    if not url.startswith("file://"):
        return f"pip install 'twinnet[{extra}]'"
    path = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
    editable = bool((origin.get("dir_info") or {}).get("editable"))
    return f"pip install {'-e ' if editable else ''}'{path}[{extra}]'"
