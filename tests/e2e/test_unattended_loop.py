"""The lifecycle closes by itself on a user's file, in the real stack with its scheduler:

ingest year 1 -> train -> promote; ingest a shifted year 2, and nothing else by hand: the ingestion's
asset schedules ``drift_monitor``, whose drift verdict emits the retraining asset, which schedules
``spot_training``; that run trains the champion's own spec rolled forward to the new data (labels
from the stored bars, no source needed) and its promotion is decided on rows neither model trained on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from quant_engine.data.synthetic import Shift, SyntheticMarket

pytestmark = [pytest.mark.airflow, pytest.mark.e2e]

NAMES = {
    f"SYN0{i}": name
    for i, name in enumerate(["ALFA", "BRAV", "CHAR", "DELT", "ECHO", "FOXT", "GOLF", "HOTL", "INDI", "JULI"])
}
RUN_TIMEOUT_S = 420
QUANT_ENGINE = str(Path(sys.executable).with_name("quant-engine"))


def runs_of(stack, token: str, dag_id: str) -> set[str]:
    return {r["dag_run_id"] for r in stack.api("GET", f"/api/v2/dags/{dag_id}/dagRuns", token)["dag_runs"]}


def finished(
    stack,
    token: str,
    dag_id: str,
    *,
    run_type: str | None = None,
    after: set[str] = frozenset(),
    timeout_s: float = RUN_TIMEOUT_S,
    allow_failure: bool = False,
) -> dict:
    """The first new run of ``dag_id`` (of ``run_type``) once it has finished; it must have succeeded."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = stack.api("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=run_after", token)["dag_runs"]
        fresh = [r for r in runs if r["dag_run_id"] not in after and (run_type is None or r["run_type"] == run_type)]
        done = [r for r in fresh if r["state"] in ("success", "failed")]
        if done:
            assert allow_failure or done[0]["state"] == "success", f"{dag_id} run {done[0]['dag_run_id']} failed"
            return done[0]
        time.sleep(2)
    raise AssertionError(f"no {run_type or ''} run of {dag_id} finished within {timeout_s} s")


def trigger(stack, token: str, dag_id: str, conf: dict) -> dict:
    before = runs_of(stack, token, dag_id)
    stack.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", token, {"logical_date": None, "conf": conf})
    return finished(stack, token, dag_id, after=before)


def test_drift_retrains_the_champions_spec_and_decides_on_unseen_data_without_a_hand(stack, tmp_path: Path) -> None:
    market = SyntheticMarket(
        n_tickers=10,
        seed=7,
        start="2017-01-01",
        end="2023-12-29",
        shifts=[
            Shift("2018-01-02", "concept", edge_scale=3),  # an edge a model can learn from four years
            Shift("2023-01-03", "both", vol_scale=5.0, edge_scale=-1.0),  # year 2: far wilder, and the edge flips
        ],
    )
    path = tmp_path / "my_market.parquet"
    market.fetch(None, "2017-01-01", "2023-12-29").assign(ticker=lambda f: f["ticker"].map(NAMES)).to_parquet(path)
    token = stack.api_token()
    for dag_id in ("market_data_ingestion", "spot_training", "drift_monitor"):
        stack.api("PATCH", f"/api/v2/dags/{dag_id}", token, {"is_paused": False})
    # Unpaused, ingestion runs its latest schedule at once (the synthetic default): let it end, then
    # start from an empty feature group, as a user bringing their own data would.
    finished(stack, token, "market_data_ingestion", run_type="scheduled", allow_failure=True)
    dropped = subprocess.run(
        [QUANT_ENGINE, "features", "drop", "market_features", "--yes"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dropped.returncode == 0, dropped.stderr
    retrains_before = runs_of(stack, token, "spot_training")

    trigger(
        stack,
        token,
        "market_data_ingestion",
        {"source": "parquet", "path": str(path), "start": "2019-01-02", "end": "2022-12-30"},
    )
    trigger(
        stack,
        token,
        "spot_training",
        {
            "tickers": ",".join(NAMES.values()),
            "start": "2019-01-02",
            "end": "2022-12-30",
            "interruptions": 0,
            "hyperparameters": {"num_round": 30, "max_depth": 2, "learning_rate": 0.1, "subsample": 0.8, "seed": 7},
        },
    )
    registry = stack.qe_home / "models" / "xgb_direction"
    champion = json.loads((registry / "champion.json").read_text())
    first = champion["version"]

    # Year 2 arrives; from here on, nobody touches the stack.
    checks_before = runs_of(stack, token, "drift_monitor")  # those of year 1 skipped: there was no champion yet
    trigger(
        stack,
        token,
        "market_data_ingestion",
        {"source": "parquet", "path": str(path), "start": "2023-01-03", "end": "2023-06-30"},
    )
    finished(stack, token, "drift_monitor", run_type="asset_triggered", after=checks_before)
    (report,) = [
        json.loads(p.read_text())
        for p in (stack.qe_home / "reports" / "drift").glob("*/report.json")
        if json.loads(p.read_text())["model_version"] == first
    ]
    assert report["verdict"] != "none" and report["retraining_requested"]
    retrain = finished(stack, token, "spot_training", run_type="asset_triggered", after=retrains_before)

    versions = sorted(p.name for p in (registry / "versions").iterdir())
    assert len(versions) == 2, f"the retrain ({retrain['dag_run_id']}) registered no new version"
    meta = json.loads((registry / "versions" / versions[-1] / "metadata.json").read_text())
    dataset, spec = (
        meta["training"]["dataset"],
        json.loads((registry / "versions" / first / "metadata.json").read_text())["training"]["dataset"],
    )
    assert meta["training"]["basis"] == "the champion's spec of xgb_direction, rolled forward"
    assert dataset["tickers"] == spec["tickers"] and dataset["feature_set"] == spec["feature_set"]
    assert dataset["end"] == "2023-06-30"  # rolled forward to the newest stored day
    assert meta["params"]["num_round"] == 30  # the champion's hyperparameters
    # Decided on the candidate's holdout rows after the champion's own training data ended, and the floor.
    evaluation = meta["training"]["evaluation"]
    assert evaluation["champion"] == first and evaluation["compared_on"]["rows"] >= 100
    champion_trained_until = json.loads((registry / "versions" / first / "metadata.json").read_text())["training"][
        "holdout_start"
    ]
    assert pd.Timestamp(evaluation["compared_on"]["from"]) == pd.Timestamp(champion_trained_until)
    assert evaluation["champion_metrics"]["rows"] == evaluation["compared_on"]["rows"]
    now_champion = json.loads((registry / "champion.json").read_text())
    assert now_champion["version"] == (versions[-1] if evaluation["promote"] else first)
