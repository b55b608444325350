"""wfo_pipeline on real Celery workers: ``make up`` in scale mode (Redis, CeleryExecutor, two workers).

The run is triggered through the REST API. Its mapped ``(trial, split)`` fits must have run on both
workers (the task instances' ``hostname`` names the worker), and its report must equal, number for
number, the same conf run by the library in one process (``quant-engine wfo run``, the fits one
after the other). Then a second run loses a worker to SIGKILL while it fits: the scheduler finds
the dead worker's task instances by their missing heartbeat, retries them on the other worker, and
the run still succeeds with the same report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from quant_engine.runs import safe_name

pytestmark = [pytest.mark.airflow, pytest.mark.e2e]

QUANT_ENGINE = str(Path(sys.executable).with_name("quant-engine"))
WORKERS = ("worker-1", "worker-2")
TICKERS = "SYN00,SYN01,SYN02"
#: 3 tickers over 4 years, 4 groups choose 2 (6 splits, 3 paths) x 2 small trials = 12 mapped fits.
CONF = {
    "tickers": TICKERS,
    "start": "2019-01-02",
    "end": "2022-12-30",
    "n_groups": 4,
    "n_test_groups": 2,
    "trials": [
        {"max_depth": 2, "learning_rate": 0.1, "n_estimators": 30, "min_child_weight": 10, "threshold": 0.0},
        {"max_depth": 3, "learning_rate": 0.1, "n_estimators": 30, "min_child_weight": 10, "threshold": 0.0},
    ],
}
#: One mapped task per fit (the default chunk would put all 12 in one task), so they can spread.
DAG_CONF = {**CONF, "chunk": 1}
RUN_TIMEOUT_S = 600
#: What differs between two runs of the same conf: their names, times and where their files are.
RUN_IDENTITY = ("run_id", "generated_at", "files")


@pytest.fixture(scope="module")
def celery_stack(scale_stack):
    """The scale-mode stack (conftest's ``scale_stack``) with the conf's tickers ingested."""
    ingested = subprocess.run(
        [QUANT_ENGINE, "ingest", "--source", "synthetic", "--tickers", TICKERS]
        + ["--start", CONF["start"], "--end", CONF["end"]],
        env=scale_stack.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ingested.returncode == 0, ingested.stderr[-3000:]
    return scale_stack


def trigger_wfo(stack: object, token: str) -> str:
    stack.api("PATCH", "/api/v2/dags/wfo_pipeline", token, {"is_paused": False})
    return stack.api("POST", "/api/v2/dags/wfo_pipeline/dagRuns", token, {"logical_date": None, "conf": DAG_CONF})[
        "dag_run_id"
    ]


def wait_for_run(stack: object, token: str, run_id: str) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        run = stack.api("GET", f"/api/v2/dags/wfo_pipeline/dagRuns/{run_id}", token)
        if run["state"] in ("success", "failed"):
            return run
        time.sleep(3)
    raise AssertionError(f"wfo_pipeline run {run_id} did not finish within {RUN_TIMEOUT_S} s")


def task_instances(stack: object, token: str, run_id: str) -> list[dict]:
    return stack.api("GET", f"/api/v2/dags/wfo_pipeline/dagRuns/{run_id}/taskInstances?limit=500", token)[
        "task_instances"
    ]


def fits_of(instances: list[dict]) -> list[dict]:
    return [ti for ti in instances if ti["task_id"] == "run_split"]


def folder_name(run_id: str) -> str:
    """The library's run folder name of an Airflow run id (:func:`quant_engine.runs.run_dir`)."""
    return safe_name(run_id)


def report_of(stack: object, run_id: str) -> dict:
    report = json.loads((stack.qe_home / "reports" / "wfo" / folder_name(run_id) / "report.json").read_text())
    return {key: value for key, value in report.items() if key not in RUN_IDENTITY}


def assert_same_results(stack: object, run_id: str, reference_id: str) -> None:
    """Report, statistics and every path's daily returns equal the one-process reference, exactly."""
    assert report_of(stack, run_id) == report_of(stack, reference_id)
    runs = stack.qe_home / "runs" / "wfo"
    ours, theirs = runs / folder_name(run_id), runs / folder_name(reference_id)
    assert json.loads((ours / "statistics.json").read_text()) == json.loads((theirs / "statistics.json").read_text())
    pd.testing.assert_frame_equal(
        pd.read_parquet(ours / "paths.parquet"), pd.read_parquet(theirs / "paths.parquet"), check_exact=True
    )


@pytest.fixture(scope="module")
def reference(celery_stack: object) -> str:
    """The same conf through the library in one process, on the same stored data: the run id."""
    run_id = "local-reference"
    result = subprocess.run(
        [QUANT_ENGINE, "wfo", "run", "--conf", json.dumps(CONF), "--run-id", run_id],
        env=celery_stack.env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_id


def test_wfo_fits_spread_over_both_celery_workers_and_match_one_process(celery_stack: object, reference: str) -> None:
    token = celery_stack.api_token()
    run_id = trigger_wfo(celery_stack, token)
    run = wait_for_run(celery_stack, token, run_id)
    instances = task_instances(celery_stack, token, run_id)
    assert run["state"] == "success", [(ti["task_id"], ti["map_index"], ti["state"]) for ti in instances]
    fits = fits_of(instances)
    assert len(fits) == 12 and all(ti["state"] == "success" for ti in fits)
    assert {ti["hostname"] for ti in fits} == set(WORKERS), [(ti["map_index"], ti["hostname"]) for ti in fits]
    assert {ti["hostname"] for ti in instances} <= set(WORKERS)  # every task ran on a worker, none elsewhere
    assert_same_results(celery_stack, run_id, reference)


def test_a_worker_killed_mid_run_has_its_fits_retried_on_the_other(celery_stack: object, reference: str) -> None:
    token = celery_stack.api_token()
    run_id = trigger_wfo(celery_stack, token)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    victim = None
    while victim is None and time.monotonic() < deadline:
        running = [ti for ti in fits_of(task_instances(celery_stack, token, run_id)) if ti["state"] == "running"]
        victim = running[0]["hostname"] if running else None
        time.sleep(0.5)
    assert victim in WORKERS, f"no fit of run {run_id} was seen running"
    pid = int((Path(celery_stack.env["QE_STACK_DIR"]) / "run" / f"{victim}.pid").read_text())
    os.killpg(pid, signal.SIGKILL)  # the worker, its pool and the task processes it supervises
    killed_at = {
        ti["map_index"]
        for ti in fits_of(task_instances(celery_stack, token, run_id))
        if ti["state"] == "running" and ti["hostname"] == victim
    }

    run = wait_for_run(celery_stack, token, run_id)
    fits = fits_of(task_instances(celery_stack, token, run_id))
    assert run["state"] == "success", [(ti["map_index"], ti["state"], ti["hostname"]) for ti in fits]
    survivor = next(w for w in WORKERS if w != victim)
    retried = [ti for ti in fits if ti["try_number"] > 1]
    assert retried, "no fit was retried after its worker died"
    assert {ti["hostname"] for ti in retried} == {survivor}
    assert {ti["map_index"] for ti in retried} >= killed_at
    assert_same_results(celery_stack, run_id, reference)
