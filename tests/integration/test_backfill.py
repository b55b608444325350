"""``airflow backfill create`` over ``market_data_ingestion``: the runs it creates ingest their sessions, idempotently.

Airflow 3's backfill only creates runs (one per data interval of the DAG's timetable whose logical
date lies in the range); a scheduler executes them. Short of a scheduler, the test executes
three data intervals with ``dag.test`` in one process, twice (the second pass is the rerun), then
checks that the runs the backfill plans (``--dry-run``, the same planning code as a real create)
have exactly those intervals.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pendulum
import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.timetables.base import TimeRestriction
from smtp_sink import SmtpSink

from quant_engine.backends import make_bar_history, make_offline_store

pytestmark = pytest.mark.airflow

REPO_ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_BIN = str(Path(sys.executable).with_name("airflow"))

#: Runs ``dag.test`` for each data interval end given: Airflow infers a manual run's interval as the
#: timetable's last complete one before its logical date, so an interval's end selects exactly it.
RUN_INTERVALS = """
import hashlib, os, pathlib, sys, pendulum
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder=sys.argv[1]).get_dag("market_data_ingestion")
store = pathlib.Path(os.environ["QE_HOME"]) / "offline-store"
for end in sys.argv[2:]:
    dag.test(logical_date=pendulum.parse(end))
    files = sorted(p for p in store.rglob("*") if p.is_file())
    print("STORE", hashlib.sha256(b"".join(str(p).encode() + p.read_bytes() for p in files)).hexdigest())
"""
FINISHED = re.compile(
    r"DagRun Finished: dag_id=market_data_ingestion, .*?state=(\w+), run_type=\w+, "
    r"data_interval_start=([^,]+), data_interval_end=([^,]+),"
)


def airflow_env(airflow_home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }


def run(command: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{command[:3]} failed:\n{output[-6000:]}"
    return output


def test_a_backfill_ingests_each_runs_sessions_and_a_rerun_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QE_DEFAULT_TICKERS", "SYN00,SYN01")  # a backfill run has no conf: the settings' universe
    # An Airflow database of its own: runs other tests left at these logical dates would change the plan.
    env = airflow_env(tmp_path / "airflow_home")
    run([AIRFLOW_BIN, "db", "migrate"], env)
    # Weekday 16:30 New York (EDT: 20:30 UTC) to the next: Tuesday July 2nd 2019 to Friday the 5th.
    bounds = [pendulum.datetime(2019, 7, day, 20, 30) for day in (2, 3, 4, 5)]
    intervals = list(zip(bounds, bounds[1:], strict=False))

    # The backfill of that range plans one run per interval, its logical date the interval's start. It
    # plans from the serialized DAG and leaves out logical dates that have a run: so before any dag.test.
    run([AIRFLOW_BIN, "dags", "reserialize"], env)
    plan = run(
        [AIRFLOW_BIN, "backfill", "create", "--dag-id", "market_data_ingestion"]
        + ["--from-date", "2019-07-02", "--to-date", "2019-07-05", "--dry-run"],
        env,
    )
    planned = [pendulum.parse(d) for d in re.findall(r"\| (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00) \|", plan)]
    assert planned == [start for start, _ in intervals]

    with SmtpSink() as sink:  # a run with nothing to do (the holiday) skips: no failure mail
        env.update({**sink.connection_env("qe_test_smtp"), "QE_NOTIFY_EMAILS": "ops@example.com"})
        env["QE_NOTIFY_SMTP_CONN_ID"] = "qe_test_smtp"
        ends = [end.isoformat() for _, end in intervals]
        output = run([sys.executable, "-c", RUN_INTERVALS, str(REPO_ROOT / "dags"), *ends, *ends], env)
        assert sink.received == []

    finished = [(state, pendulum.parse(s), pendulum.parse(e)) for state, s, e in FINISHED.findall(output)]
    assert finished == [("success", start, end) for start, end in intervals] * 2
    assert output.count("no session: no XNYS session closed between") == 2  # July 4th: NYSE closed
    # Exactly the sessions that closed in the intervals: July 3rd (a half day, 13:00 New York) and the 5th.
    sessions = {pd.Timestamp("2019-07-03 17:00", tz="UTC"), pd.Timestamp("2019-07-05 20:00", tz="UTC")}
    stored = make_offline_store().read(include_history=True)
    assert set(stored["event_time"]) == sessions and len(stored) == 4
    assert set(make_bar_history().read()["ts"]) == sessions
    # The rerun wrote nothing: no new rows, the store's files byte for byte as the first pass left them.
    digests = re.findall(r"^STORE (\w+)$", output, flags=re.MULTILINE)
    assert len(digests) == 6 and digests[2] == digests[5]
    assert output.count("0 new offline, 0 online updates, 0 new bars") == 2

    timetable = DagBag(dag_folder=str(REPO_ROOT / "dags")).dags["market_data_ingestion"].timetable
    restrictions = [TimeRestriction(start, None, catchup=True) for start in planned]
    infos = [timetable.next_dagrun_info(last_automated_data_interval=None, restriction=r) for r in restrictions]
    assert [(i.data_interval.start, i.data_interval.end) for i in infos] == intervals
