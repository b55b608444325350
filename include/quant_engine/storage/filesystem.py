"""The file-system seam: the few storage operations the engine needs, on local disk or S3.

The feature store, the model registry, checkpoints, baselines and the prediction log all keep
their files through a :class:`FileSystem`, so each runs unchanged on the embedded local default
(:class:`LocalFileSystem`: fsync, temp file + rename, ``flock``) and on AWS
(:class:`quant_engine.aws.s3.S3FileSystem`: one ``PutObject`` per replace, conditional on the ETag
read before).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from quant_engine.storage.atomic import fsync_dir, write_bytes_atomic

__all__ = ["ConcurrentCommitError", "FileSystem", "LocalFileSystem", "StorageError", "check_key", "overwrite_atomic"]


class StorageError(Exception):
    """Base class for storage errors."""


class ConcurrentCommitError(StorageError, RuntimeError):
    """Another writer replaced a key between this writer's read of it and its own replace."""


class FileSystem(Protocol):
    """The few storage operations the store needs; keys are ``/``-separated paths under a root."""

    def read(self, key: str) -> bytes: ...

    def read_versioned(self, key: str) -> tuple[bytes, str] | None: ...

    def write(self, key: str, data: bytes) -> None: ...

    def replace_atomic(self, key: str, data: bytes, *, expected_version: str | None) -> None: ...

    def list(self, prefix: str) -> list[str]: ...

    def delete(self, key: str) -> None: ...

    def lock(self, key: str) -> contextlib.AbstractContextManager[None]: ...

    def local_path(self, key: str) -> Path | None: ...


def overwrite_atomic(fs: FileSystem, key: str, data: bytes) -> None:
    """Replace whatever ``key`` holds with ``data`` all at once (a local rename, a single S3 put).

    For files one writer owns (checkpoints, baselines): the version read first only guards
    against a second writer slipping in between.
    """
    current = fs.read_versioned(key)
    fs.replace_atomic(key, data, expected_version=None if current is None else current[1])


def check_key(key: str) -> str:
    """``key`` if it is a relative ``/``-separated path without empty, ``.`` or ``..`` parts, else raise."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"storage key {key!r} must be a relative path without empty, '.' or '..' parts")
    return key


class LocalFileSystem:
    """Files under ``root``; durable writes (fsync) and atomic replace (temp file + rename).

    Parameters
    ----------
    root : Path
        Directory that holds every feature group; created on first write.
    """

    def __init__(self, root: Path | str) -> None:
        if not isinstance(root, (str, os.PathLike)) or not str(root):
            raise TypeError(f"root={root!r} must be a directory path")
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalFileSystem({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def read(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The bytes at ``key`` and a content hash that :meth:`replace_atomic` checks, or None."""
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def write(self, key: str, data: bytes) -> None:
        """Write and fsync ``data`` (file and directory entry) so a later commit never points at lost bytes."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        fsync_dir(path.parent)

    def replace_atomic(self, key: str, data: bytes, *, expected_version: str | None) -> None:
        """Replace ``key`` with ``data`` all at once, if it still holds ``expected_version``.

        ``expected_version=None`` means the key must not exist yet. Readers see either the old or
        the new bytes, never a mix, even if the process dies halfway.
        """
        current = self.read_versioned(key)
        current_version = None if current is None else current[1]
        if current_version != expected_version:
            raise ConcurrentCommitError(
                f"{self._path(key)} changed since it was read; another writer committed in between"
            )
        write_bytes_atomic(self._path(key), data)

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold an exclusive ``flock`` on ``key``; released even if the process dies."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)
