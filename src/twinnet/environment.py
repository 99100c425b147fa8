"""What machine and software a run or a timing came from: CPU model, SIMD level, versions."""

from __future__ import annotations

import os
import platform
import sys
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
