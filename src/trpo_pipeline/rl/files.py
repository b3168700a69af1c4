"""Writing result files so that a crash at any moment leaves the old file or the new one.

Every writer of results (configs, metrics, references, reports, figures) goes through
:func:`atomic_write` or :func:`atomic_output`: the bytes go to a temporary file in the same
folder, are flushed to disk (fsync), get the permissions a plain ``open()`` would have given
(0666 & ~umask; mkstemp's 0600 would hide results from the rest of the team) and are renamed
over the target with ``os.replace``, which POSIX makes atomic. A reader, a resumed run or DVC
never sees a truncated file; a failed or killed write leaves at most a hidden ``.<name>.*.tmp``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def file_mode() -> int:
    """The permissions ``open(path, "w")`` gives a new file: 0666 minus the process umask."""
    try:  # Linux: read it without changing it (os.umask is a process-wide set-and-get)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    # The rename itself is durable only once the folder's entry is on disk.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temporary_path(path: Path) -> Path:
    """A new, empty, hidden temporary file beside ``path`` (same folder: same file system)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def publish(tmp: Path, path: Path) -> None:
    """Give the finished temporary file ``tmp`` the usual permissions and rename it over
    ``path``, atomically. ``tmp`` must already be flushed and fsynced by its writer."""
    Path(tmp).chmod(file_mode())
    Path(tmp).replace(path)  # os.replace: atomic on POSIX
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_output(
    path: Path, mode: str = "w", *, encoding: str = "utf-8", newline: str | None = None
) -> Iterator[IO[Any]]:
    """``open()`` for writing a whole file at once: the file appears, complete, on a clean exit
    of the ``with`` block; on an exception the old file (if any) is left untouched."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_output writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    tmp = temporary_path(path)
    try:
        text = {} if "b" in mode else {"encoding": encoding, "newline": newline}
        with tmp.open(mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: str | bytes, *, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically; returns ``path``."""
    with atomic_output(path, "wb" if isinstance(data, bytes) else "w", encoding=encoding) as f:
        f.write(data)
    return Path(path)
