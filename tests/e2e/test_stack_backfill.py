"""An Airflow backfill of ``market_data_ingestion`` run by the stack's own scheduler: exact and idempotent.

The backfill is created through the REST API (what ``airflow backfill create`` and the UI's backfill
form call). Its runs have the timetable's data intervals, from logical dates 2019-07-02 to
2019-07-04 (a run's logical date is the start of its interval): Tuesday's run ingests Wednesday's
half-day session (13:00 New York), Wednesday's run meets the July 4 holiday and skips, Thursday's
ingests Friday's session. Reprocessing the same range (``reprocess_behavior: completed``) reruns the
three runs and must leave the offline store's files byte for byte as they were.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pandas as pd
import pytest
from test_unattended_loop import finished

from quant_engine.backends import make_bar_history

pytestmark = [pytest.mark.airflow, pytest.mark.e2e]

RANGE = {"from_date": "2019-07-02T00:00:00Z", "to_date": "2019-07-04T23:59:59Z"}
SESSIONS = [pd.Timestamp("2019-07-03 17:00", tz="UTC"), pd.Timestamp("2019-07-05 20:00", tz="UTC")]
BACKFILL_TIMEOUT_S = 600


def backfill(stack, token: str, reprocess: str) -> list[dict]:
    """Create a backfill of RANGE, wait until the scheduler has finished it: its runs."""
    created = stack.api(
        "POST",
        "/api/v2/backfills",
        token,
        {"dag_id": "market_data_ingestion", **RANGE, "reprocess_behavior": reprocess, "max_active_runs": 1},
    )
    deadline = time.monotonic() + BACKFILL_TIMEOUT_S
    while stack.api("GET", f"/api/v2/backfills/{created['id']}", token)["completed_at"] is None:
        assert time.monotonic() < deadline, f"backfill {created['id']} not completed in {BACKFILL_TIMEOUT_S} s"
        time.sleep(3)
    runs = stack.api("GET", "/api/v2/dags/market_data_ingestion/dagRuns?run_type=backfill&limit=100", token)
    return sorted(runs["dag_runs"], key=lambda run: run["logical_date"])


def store_digest(qe_home: Path) -> str:
    """One hash over every file of the offline store (features and bars): its names and bytes."""
    files = sorted(p for p in (qe_home / "offline-store").rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(str(p).encode() + p.read_bytes() for p in files)).hexdigest()


def stored_sessions(qe_home: Path, monkeypatch: pytest.MonkeyPatch) -> list[pd.Timestamp]:
    monkeypatch.setenv("QE_HOME", str(qe_home))
    history = make_bar_history()
    bars = history.read(history.tickers(), pd.Timestamp("2019-06-24", tz="UTC"), pd.Timestamp("2019-07-12", tz="UTC"))
    return sorted(bars["ts"].unique())


def test_a_backfill_ingests_exactly_its_intervals_sessions_and_a_rerun_changes_nothing(
    stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = stack.api_token()
    stack.api("PATCH", "/api/v2/dags/market_data_ingestion", token, {"is_paused": False})  # backfills need it
    # Unpaused, ingestion runs its latest schedule at once (today's session): let that end first.
    finished(stack, token, "market_data_ingestion", run_type="scheduled", allow_failure=True)

    runs = backfill(stack, token, "none")
    assert [pd.Timestamp(r["data_interval_end"]) for r in runs] == [
        pd.Timestamp(day + " 20:30", tz="UTC") for day in ("2019-07-03", "2019-07-04", "2019-07-05")
    ]
    assert [r["state"] for r in runs] == ["success"] * 3  # the holiday's run skips, and succeeds
    assert stored_sessions(stack.qe_home, monkeypatch) == SESSIONS
    before = store_digest(stack.qe_home)

    rerun = backfill(stack, token, "completed")
    assert [r["dag_run_id"] for r in rerun] == [r["dag_run_id"] for r in runs]
    assert [r["state"] for r in rerun] == ["success"] * 3
    assert all(pd.Timestamp(r["end_date"]) > pd.Timestamp(old["end_date"]) for r, old in zip(rerun, runs, strict=True))
    assert store_digest(stack.qe_home) == before
