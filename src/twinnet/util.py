"""Small helpers shared across the package: checked input files, atomic output files,
chunked array work."""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from twinnet.errors import TwinnetError

# Errors of a write that say where the fault is, not what the program did wrong.
WRITE_FAULTS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "is a directory",
    errno.EFBIG: "file too large",
}


def os_reason(exc: OSError) -> str:
    """A short lower-case reason for ``exc``, without the path Python appends."""
    return WRITE_FAULTS.get(exc.errno) or (exc.strerror or str(exc)).lower()


class FileAccessError(TwinnetError):
    """An input path that cannot be opened as a regular file; ``reason`` says why."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def make_output_folder(directory: str | os.PathLike) -> Path:
    """Create ``directory`` (and its parents) for outputs, or raise TwinnetError naming it:
    a file in the way, a part of the path that is not a folder, a name too long."""
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise TwinnetError(f"{out}: cannot write there: not a folder") from None
    except OSError as exc:
        raise TwinnetError(f"{out}: cannot create the output folder ({os_reason(exc)})") from None
    return out


def open_regular_file(path: str | os.PathLike) -> IO[bytes]:
    """Open ``path`` for binary reading, or raise FileAccessError with one short reason:
    no such file, is a directory, not a regular file (device, FIFO, socket), permission
    denied, file name too long.

    The path is stat'ed before it is opened, so a device or FIFO is never opened (opening
    can block or have side effects), and the opened file is checked again (fstat), so a
    path swapped in between is refused too.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise FileAccessError(path, "is a directory" if os.path.isdir(path) else
                                  "not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileAccessError(path, "no such file") from None
    except OSError as exc:
        raise FileAccessError(path, os_reason(exc)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileAccessError(path, "not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_bounded(path: str | os.PathLike, limit: int) -> bytes:
    """The whole content of the regular file ``path`` if it holds at most ``limit`` bytes.
    FileAccessError (``open_regular_file``'s reasons: a FIFO or device is never opened for
    reading) or one saying how large it is; at most ``limit + 1`` bytes are ever read, so
    a file that grows meanwhile cannot take more memory."""
    with open_regular_file(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        raw = fh.read(limit + 1) if size <= limit else b""
    if size > limit or len(raw) > limit:
        raise FileAccessError(path, f"{max(size, len(raw)):,} bytes, more than the {limit:,} such a "
                                    "file may hold")
    return raw


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (threads may be
    creating files), else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_pattern(target: Path) -> re.Pattern[str]:
    """The names ``tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp")`` gives for ``target``."""
    return re.compile(re.escape(f".{target.name}.") + r"[a-z0-9_]{8}" + re.escape(".tmp"))


def remove_stale_temps(target: Path) -> None:
    """Delete temporary files of ``target`` left by a killed writer.

    Only names of the exact pattern for ``target`` are considered, and only those no
    live writer holds: every writer keeps an exclusive lock on its temporary file until
    the rename, and the kernel drops the lock when the process dies.
    """
    pattern = temp_pattern(target)
    try:
        names = [name for name in os.listdir(target.parent) if pattern.fullmatch(name)]
    except OSError:
        return
    for name in names:
        path = target.parent / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if stat.S_ISREG(os.fstat(fd).st_mode):
                path.unlink(missing_ok=True)
        except OSError:
            pass  # locked: a live writer's
        finally:
            os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Readers never see a half-written file: either the old one or the complete new one.
    The new file gets the mode the umask allows (0o666 & ~umask), like any created file.
    Temporary files of ``path`` left by killed writers are removed first.

    Raises TwinnetError, one line naming ``path``, before the body runs if the folder
    cannot be created or written or the name is too long, and after it if the disk is
    full (or the quota reached) while writing; the old file is then left unchanged.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise TwinnetError(f"{target}: cannot write: {target.parent} is not a folder") from None
    except OSError as exc:
        raise TwinnetError(f"{target}: cannot create its folder {target.parent} "
                           f"({os_reason(exc)})") from None
    try:
        if stat.S_ISDIR(os.stat(target).st_mode):
            raise TwinnetError(f"{target}: cannot write: is a directory")
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise TwinnetError(f"{target}: cannot write ({os_reason(exc)})") from None
    remove_stale_temps(target)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise TwinnetError(f"{target}: cannot write ({os_reason(exc)})") from None
    tmp = Path(tmp_name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # marks the file live for remove_stale_temps
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~current_umask())
            os.replace(tmp, target)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise TwinnetError(f"{target}: not written ({os_reason(exc)}); "
                               "any previous version is unchanged") from None
    finally:
        os.close(fd)
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def is_int(value: Any) -> bool:
    """An int of JSON or TOML, not a bool (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float of JSON or TOML, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def chunk_slices(n: int, size: int) -> list[slice]:
    """Consecutive slices covering range(n), as few as hold at most ``size`` each, their
    lengths differing by at most one (n = 50, size = 41: 25 and 25)."""
    count = -(-n // size)
    bounds = [i * n // count for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def in_chunks(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, size: int) -> np.ndarray:
    """``fn`` applied to consecutive chunks of at most ``size`` rows of x (``chunk_slices``)
    and the results concatenated along axis 0: the one place where work on many images is
    cut to bound memory. x has at least one row."""
    return np.concatenate([fn(x[part]) for part in chunk_slices(len(x), size)])
