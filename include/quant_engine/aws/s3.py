"""Objects on S3 as a :class:`~quant_engine.storage.filesystem.FileSystem`: :class:`S3FileSystem`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quant_engine.aws.session import AwsClients
from quant_engine.storage.filesystem import ConcurrentCommitError, check_key

__all__ = ["S3FileSystem", "s3_store"]


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
        check_key(key)
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


def s3_store(aws: AwsClients) -> Callable[[str, str], S3FileSystem]:
    """Makes the :class:`S3FileSystem` of a bucket and prefix with ``aws``'s S3 client (for checkpoints)."""
    return lambda bucket, prefix: S3FileSystem(aws.client("s3"), bucket, prefix)
