"""Run-scoped working folders, so tasks of one DAG run hand files to each other without XCom blobs."""

from __future__ import annotations

import re
from pathlib import Path

from quant_engine.config import Settings, get_settings

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(value: str) -> str:
    """``value`` with every run of characters unsafe in a path replaced by ``_``."""
    cleaned = _UNSAFE.sub("_", value).strip("._")
    if not cleaned:
        raise ValueError(f"{value!r} has no characters usable in a folder name")
    return cleaned


def run_dir(kind: str, run_id: str, settings: Settings | None = None) -> Path:
    """``$QE_HOME/runs/<kind>/<run_id>``, created if missing."""
    settings = settings or get_settings()
    path = settings.home / "runs" / safe_name(kind) / safe_name(run_id)
    path.mkdir(parents=True, exist_ok=True)
    return path
