"""Atomic file replacement, the one way the engine writes a local file that readers may open at any time.

Every writer here goes through :func:`write_bytes_atomic`: a temporary file in the same directory,
fsync, rename over the target, fsync of the directory. A crash at any point leaves the previous
contents (or no file) in place, never a torn one.
"""

from __future__ import annotations

import io
import json
import math
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = [
    "fsync_dir",
    "json_safe",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_npz_atomic",
    "write_parquet_atomic",
    "write_text_atomic",
]


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o666) -> Path:
    """Replace ``path`` with ``data`` so readers see the old file or the new one, never a torn one.

    The temp file is created with ``mode`` (less the umask, as ``open`` does), so a secret written
    with ``mode=0o600`` is private from its first byte, never readable until a later ``chmod``.
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


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """``text`` as UTF-8, atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def json_safe(value: object) -> object:
    """``value`` with every non-finite float (NaN, inf) replaced by None, so it is valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def write_json_atomic(
    path: str | os.PathLike[str], obj: Any, *, non_finite: Literal["error", "null"] = "error"
) -> Path:
    """``obj`` as indented JSON, atomically.

    ``non_finite="error"`` refuses NaN and infinities (a baseline or a state file must not hold
    them); ``"null"`` writes them as null (a report's statistic that is undefined for a run).
    """
    if non_finite not in ("error", "null"):
        raise ValueError(f"non_finite={non_finite!r} must be 'error' or 'null'")
    payload = json_safe(obj) if non_finite == "null" else obj
    return write_bytes_atomic(path, json.dumps(payload, indent=2, allow_nan=False).encode())


def write_parquet_atomic(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """``frame`` (without its index) as one Parquet file, atomically."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return write_bytes_atomic(path, buffer.getvalue())


def write_npz_atomic(path: str | os.PathLike[str], **arrays: np.ndarray) -> Path:
    """Named arrays as one compressed ``.npz`` file, atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, allow_pickle=True, **arrays)
    return write_bytes_atomic(path, buffer.getvalue())
