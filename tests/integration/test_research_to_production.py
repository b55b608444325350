"""Research to production through Airflow: ``wfo_pipeline`` with the walk-forward splitter, then
``spot_training`` with that run's id, and a champion whose metadata names the run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from quant_engine.backends import make_group_stores, make_model_registry, make_offline_store
from quant_engine.data.synthetic import Shift, SyntheticMarket
from quant_engine.features.ingest import IngestionRequest, ingest

pytestmark = pytest.mark.airflow

START, END = "2019-01-01", "2021-12-31"
WFO = {
    "start": START,
    "end": END,
    "splitter": "walk_forward",
    "train_window": "365D",
    "test_window": "180D",
    "anchored": True,
    "embargo": "5D",
    "trials": [
        {"max_depth": 2, "n_estimators": 30, "min_child_weight": 50, "learning_rate": 0.1},
        {"max_depth": 2, "n_estimators": 30, "min_child_weight": 50, "learning_rate": 0.05, "subsample": 0.8},
    ],
}


@pytest.fixture
def market(qe_home: Path) -> Path:
    """6 tickers x 3 years with three times the synthetic edge, so the trained trial can clear the
    promotion rule's floor on its holdout."""
    path = qe_home / "bars.parquet"
    SyntheticMarket(
        n_tickers=6, seed=3, start="2018-06-01", end=END, shifts=[Shift("2018-06-04", "concept", edge_scale=3)]
    ).fetch(None, "2018-06-01", END).to_parquet(path)
    ingest(
        IngestionRequest.build("parquet", START, END, path=str(path), group=make_offline_store()),
        make_group_stores(),
    )
    return qe_home


def test_walk_forward_research_becomes_the_champion_that_names_it(market: Path, run_dag: Callable) -> None:
    run_dag("wfo_pipeline", WFO)
    (wfo,) = (market / "runs" / "wfo").iterdir()
    run_id = (wfo / ".run_id").read_text()
    statistics = json.loads((wfo / "statistics.json").read_text())
    report = json.loads((market / "reports" / "wfo" / wfo.name / "report.json").read_text())
    assert report["splitter"] == "walk_forward" and report["n_paths"] == 1 and report["n_splits"] >= 3
    assert report["scheme"].startswith("walk-forward, anchored")

    # an unknown run id fails before any data moves: test_spot_training_dag.py and the unit tests
    result = run_dag("spot_training", {"wfo_run_id": run_id, "interruptions": 0})
    output = result.stdout + result.stderr
    assert f"walk-forward run {run_id}'s selected trial {statistics['selected_trial']}" in output
    registry = make_model_registry()
    champion = registry.champion()
    assert champion is not None and champion.reason.startswith("first model")
    meta = registry.get(champion.version).metadata
    assert meta.wfo_run["run_id"] == run_id and meta.wfo_run["splitter"] == "walk_forward"
    assert (meta.wfo_run["pbo"], meta.wfo_run["deflated_sharpe"]) == (statistics["pbo"], statistics["deflated_sharpe"])
    trial = WFO["trials"][statistics["selected_trial"]]
    assert (meta.params["num_round"], meta.params["learning_rate"]) == (trial["n_estimators"], trial["learning_rate"])
    assert meta.wfo_report == str(market / "reports" / "wfo" / wfo.name / "report.html")
    print(
        f"walk-forward run {run_id}: {report['n_splits']} splits, PBO {statistics['pbo']:.3f}, "
        f"DSR {statistics['deflated_sharpe']:.3f}; champion {champion.version}: {champion.reason}"
    )
