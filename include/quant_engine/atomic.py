"""Atomic file replacement, the one way the engine writes a file that readers may open at any time."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o666) -> Path:
    """Replace ``path`` with ``data`` so readers see the old file or the new one, never a torn one.

    Temp file in the same directory, fsync, rename over ``path``, fsync of the directory: a crash at
    any point leaves the previous contents (or no file) in place. The temp file is created with
    ``mode`` (less the umask, as ``open`` does), so a secret written with ``mode=0o600`` is private
    from its first byte, never readable until a later ``chmod``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Flush a directory entry (a new or renamed file) to disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
