"""The package's version, read from its installed metadata: pyproject.toml is the one
place it is written. A leaf module, so any module may import it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("twinnet")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
