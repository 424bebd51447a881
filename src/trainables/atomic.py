"""Atomic file writes: a reader (or a crash) never sees half a file."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    The rename is atomic on one file system, so ``path`` holds either the old
    content or the whole new one. The temporary file is flushed to disk
    (fsync) before the rename and the folder after it, so a power cut or a
    kernel crash cannot leave an empty or half-written ``path`` nor lose the
    rename. If ``write`` fails, the temporary file is removed and ``path`` is
    untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent, folder=True)
    return path


def _fsync(path: Path, folder: bool = False) -> None:
    """Flush ``path`` (a file, or a folder's entries) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if folder else 0))
    except OSError:
        if folder:
            return  # a folder cannot be opened on some systems (Windows): nothing to flush
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        # Some file systems cannot fsync a folder (EINVAL); the rename is then all there is.
        if not folder or e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
