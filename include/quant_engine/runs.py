"""Run-scoped folders (working files, reports), named after their run id and claimed by it.

A run id becomes a folder name by replacing each run of characters unsafe in a path with ``_``, so
two ids can map to one name (``col/1`` and ``col_1``). The first run to use a folder claims it (its
id in ``.run_id``); another id that maps there is refused instead of silently overwriting it.
"""

from __future__ import annotations

import re
from pathlib import Path

from quant_engine.config import Settings

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
CLAIM_FILE = ".run_id"


class RunIdError(ValueError):
    """A run id that cannot name a folder, or that collides with another run's."""


def safe_name(value: str) -> str:
    """``value`` with every run of characters unsafe in a path replaced by ``_``."""
    cleaned = _UNSAFE.sub("_", value).strip("._")
    if not cleaned:
        raise RunIdError(f"{value!r} has no characters usable in a folder name")
    return cleaned


def claimed_folder(parent: Path, run_id: str) -> Path:
    """``parent/<safe run id>``, created and claimed by ``run_id``; a rerun of the same id gets it back.

    Raises
    ------
    RunIdError
        The folder belongs to another run id that maps to the same name.
    """
    path = Path(parent) / safe_name(run_id)
    path.mkdir(parents=True, exist_ok=True)
    claim = path / CLAIM_FILE
    try:
        with open(claim, "x", encoding="utf-8") as handle:  # atomic: only one run creates the claim
            handle.write(run_id)
    except FileExistsError:
        owner = claim.read_text(encoding="utf-8")
        if owner != run_id:
            raise RunIdError(
                f"run id {run_id!r} maps to folder {path}, which run {owner!r} already uses; give the run another id"
            ) from None
    return path


def run_dir(kind: str, run_id: str, settings: Settings) -> Path:
    """``$QE_HOME/runs/<kind>/<run_id>``, created and claimed by ``run_id``."""
    return claimed_folder(settings.home / "runs" / safe_name(kind), run_id)


def find_run_dir(kind: str, run_id: str, settings: Settings) -> Path:
    """The folder of an existing run of ``kind``, ``$QE_HOME/runs/<kind>/<run_id>``; nothing is created.

    Raises
    ------
    RunIdError
        ``run_id`` is not a string, no run of that id exists (the message lists the newest ones), or
        its folder belongs to another run id that maps to the same name.
    """
    if not isinstance(run_id, str) or not run_id.strip():
        raise RunIdError(f"run id {run_id!r} must be a non-empty string")
    root = settings.home / "runs" / safe_name(kind)
    path = root / safe_name(run_id)
    claim = path / CLAIM_FILE
    if not claim.is_file():
        known = sorted(root.glob(f"*/{CLAIM_FILE}"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
        newest = [p.read_text(encoding="utf-8") for p in known[-10:]]
        listed = ", ".join(reversed(newest)) if newest else "none yet"
        raise RunIdError(f"no {kind} run of that id under {root} (newest runs: {listed})")
    owner = claim.read_text(encoding="utf-8")
    if owner != run_id:
        raise RunIdError(f"run id {run_id!r} maps to folder {path}, which belongs to run {owner!r}")
    return path
