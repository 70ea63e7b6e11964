"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

The content goes to a temporary file in the target's folder (`.{name}.<random>.tmp`, so the
final os.replace stays on one file system), is flushed to disk, gets the permissions an
ordinary new file would have (0o666 minus the umask; mkstemp creates it 0o600) and is then
moved into place. On any failure the temporary file is removed and the old file is kept.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_bytes"]


def _umask() -> int:
    """The process umask; read from /proc where possible, since setting it (the only portable
    way to read it) briefly changes it for every thread."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Atomically create or replace `path` with what `write(tmp_path)` writes into tmp_path.

    The parent folder is created if needed. Returns `path` as a Path. Whatever `write` (or the
    move) raises propagates, with the previous file untouched and no temporary file left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:  # flush the data to disk before it replaces the old file
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """`atomic_write` of a bytes object."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
