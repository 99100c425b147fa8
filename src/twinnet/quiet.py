"""Import TensorFlow without its start-up chatter, unless the user asks for it.

TensorFlow's C++ core writes a few lines to stderr while it loads ("All log messages
before absl::InitializeLog() is called are written to STDERR", "oneDNN custom
operations are on ...", the CPU-feature notice). They come from static initialisers
that run before any Python code can configure logging: ``TF_CPP_MIN_LOG_LEVEL`` hides
the CPU-feature line but not the first two (absl writes everything to stderr until it
is initialised). So the import runs with file descriptor 2 pointed at a temporary file,
and whatever else was written meanwhile (a real error, a Python warning) is written
back to stderr; only the known start-up lines are dropped.

``twinnet --verbose`` or ``TWINNET_VERBOSE=1`` leaves TensorFlow's output alone.
``TF_ENABLE_ONEDNN_OPTS`` is never touched: it changes TensorFlow's numerics.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from types import ModuleType

VERBOSE_ENV = "TWINNET_VERBOSE"
# Held while file descriptor 2 is redirected: two threads swapping it at once could leave
# stderr pointing at the other's temporary file.
_REDIRECTING = threading.Lock()

# Substrings of the lines TensorFlow prints on every start, whatever the program does.
STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "cpu_feature_guard.cc",
    "To enable the following instructions:",
)


def verbose() -> bool:
    """Whether the user asked for TensorFlow's own log lines (``TWINNET_VERBOSE`` set, not 0)."""
    return os.environ.get(VERBOSE_ENV, "").strip() not in ("", "0")


def without_noise(text: str) -> str:
    """``text`` without the lines that hold one of STARTUP_NOISE."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not any(noise in line for noise in STARTUP_NOISE))


def import_tensorflow() -> ModuleType:
    """``tensorflow`` (with ``keras`` imported too), its start-up lines dropped unless verbose.

    Raises ImportError as ``import tensorflow`` does; anything printed before the error is
    shown."""
    if "tensorflow" in sys.modules and "keras" in sys.modules:
        return sys.modules["tensorflow"]
    if verbose():
        import keras  # noqa: F401
        import tensorflow

        return tensorflow
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # INFO and WARNING of TF's own C++ logging
    sys.stderr.flush()
    with _REDIRECTING, tempfile.TemporaryFile() as captured:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr to protect
            import keras  # noqa: F401
            import tensorflow

            return tensorflow
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            rest = without_noise(captured.read().decode("utf-8", errors="replace"))
            if rest:
                sys.stderr.write(rest)
                sys.stderr.flush()
    return tensorflow
