"""The file-system seam: the few storage operations the engine needs, on local disk or S3.

The feature store, the model registry, checkpoints, baselines and the prediction log all keep
their files through a :class:`FileSystem`, so each runs unchanged on the embedded local default
(:class:`LocalFileSystem`: fsync, temp file + rename, ``flock``) and on AWS
(:class:`S3FileSystem`: one ``PutObject`` per replace, conditional on the ETag read before).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from quant_engine.storage.atomic import fsync_dir, write_bytes_atomic

__all__ = ["ConcurrentCommitError", "FileSystem", "LocalFileSystem", "S3FileSystem", "StorageError", "overwrite_atomic"]


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


def _check_key(key: str) -> str:
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
        return self.root / _check_key(key)

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


class S3FileSystem:
    """Objects under ``s3://bucket/prefix/`` through a boto3 S3 client.

    A single ``PutObject`` is atomic on S3, and the manifest's put is conditional on the ETag read
    before (``If-Match``, or ``If-None-Match: *`` for a new group). There is no lock: one writer
    per feature group is assumed (see the module docstring).

    Parameters
    ----------
    s3_client : botocore client
        ``boto3.client("s3")``.
    bucket : str
        Bucket name.
    prefix : str
        Key prefix under which feature groups live (may be empty).
    """

    def __init__(self, s3_client: Any, bucket: str, prefix: str = "") -> None:
        if not isinstance(bucket, str) or not bucket:
            raise ValueError(f"bucket={bucket!r} must be a non-empty bucket name")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix={prefix!r} must be a string")
        self.client = s3_client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def __repr__(self) -> str:
        return f"S3FileSystem(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def read(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(f"s3://{self.bucket}/{self._key(key)}") from exc

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The bytes at ``key`` and their ETag, or None when the object does not exist."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey:
            return None
        return response["Body"].read(), response["ETag"]

    def write(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def replace_atomic(self, key: str, data: bytes, *, expected_version: str | None) -> None:
        """One conditional put: succeeds only if the object still has ETag ``expected_version``."""
        condition = {"IfNoneMatch": "*"} if expected_version is None else {"IfMatch": expected_version}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
        except self.client.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"):
                raise ConcurrentCommitError(
                    f"s3://{self.bucket}/{self._key(key)} changed since it was read; "
                    "another writer committed in between"
                ) from exc
            raise

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix).rstrip("/") + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def lock(self, key: str) -> contextlib.AbstractContextManager[None]:
        """No lock on S3: single writer per feature group is assumed; the commit's ETag check backs it up."""
        return contextlib.nullcontext()

    def local_path(self, key: str) -> Path | None:
        return None
