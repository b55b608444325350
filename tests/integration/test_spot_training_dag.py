"""``airflow dags test spot_training`` on a small ingested market: train under interruptions, register, promote."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from quant_engine.backends import make_group_stores, make_model_registry, make_offline_store
from quant_engine.data.synthetic import Shift, SyntheticMarket
from quant_engine.features.ingest import IngestionRequest, ingest

pytestmark = pytest.mark.airflow

CONF = {
    "start": "2018-01-01",
    "end": "2021-12-31",
    "interruptions": 2,
    "hyperparameters": {
        "num_round": 30,
        "max_depth": 2,
        "learning_rate": 0.1,
        "checkpoint_every": 5,
        "subsample": 0.8,
        "seed": 7,
    },
}


@pytest.fixture
def market(qe_home: Path) -> Path:
    """The qe_home of this test with 10 tickers x 4 years ingested from a user's Parquet file.

    The file's market has three times the synthetic edge: a model must beat a coin flip on its
    holdout before it may become champion, and the default edge is too weak to show in 2,000 rows.
    """
    path = qe_home / "bars.parquet"
    SyntheticMarket(
        n_tickers=10,
        seed=7,
        start="2017-01-01",
        end="2021-12-31",
        shifts=[Shift("2018-01-02", "concept", edge_scale=3)],
    ).fetch(None, "2017-01-01", "2021-12-31").to_parquet(path)
    ingest(
        IngestionRequest.build("parquet", CONF["start"], CONF["end"], path=str(path), group=make_offline_store()),
        make_group_stores(),
    )
    return qe_home


def test_trains_registers_and_promotes_once(market: Path, run_dag: Callable) -> None:
    first = run_dag("spot_training", CONF)
    registry = make_model_registry()
    (record,) = registry.list()
    champion = registry.champion()
    assert (champion.version, champion.previous) == (record.version, None)
    assert champion.reason.startswith("first model: log-loss ") and "below the base rate" in champion.reason
    (run,) = (market / "runs" / "training").iterdir()
    summary = json.loads((run / "training_set.json").read_text())
    meta = record.metadata
    assert meta.data_fingerprint == summary["fingerprint"] and list(meta.features) == summary["features"]
    assert meta.params == CONF["hyperparameters"] and meta.training["runner"] == "local_spot"
    assert meta.training["spot"]["attempts"] == meta.training["spot"]["interruptions"] + 1
    assert 0 < meta.metrics["logloss"] < 1 and 0 < meta.metrics["auc"] < 1
    assert meta.metrics["rows"] == summary["rows"]["holdout"]
    assert registry.load_booster(record.version).num_boosted_rounds() == 30
    assert f"champion: {record.version} (was none)" in first.stdout + first.stderr  # promote ran

    # the same run again trains the same bytes: no new version, no promotion, the champion stays
    second = run_dag("spot_training", CONF)
    assert [v.version for v in registry.list()] == [record.version]
    assert registry.champion() == champion
    output = second.stdout + second.stderr
    assert f"registered {registry.name} {record.version}" in output
    assert "log-loss gain below 0.50%" in output
    assert "tasks_skipped=1" in output and "champion: " not in output  # promote skipped: no champion asset event


def test_bad_hyperparameters_fail_before_training(market: Path, run_dag: Callable) -> None:
    result = run_dag("spot_training", {**CONF, "hyperparameters": {"num_round": 0}}, expect_success=False)
    output = result.stdout + result.stderr
    assert "hyperparameter num_round=0 must be a whole number >= 1" in output
    assert "starting task_id=train " not in output
    assert make_model_registry().versions() == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hyperparameters": {"max_depth": -3}}, "value -3 for Parameter max_depth should be greater equal to 0"),
        ({"tikers": "SYN00"}, "unknown parameter(s) ['tikers'] in the run's conf"),
        ({"wfo_run_id": "no-such-run"}, "wfo_run_id='no-such-run': no wfo run of that id under"),
    ],  # XGBoost's own refusal, the DAG's, the research link's; the library's other refusals (non-finite
)  # hyperparameters, tickers naming none) are unit tests (tests/unit/training, tests/unit/test_validation.py)
def test_deterministic_errors_fail_at_once_without_retries(market: Path, run_dag: Callable, change, message) -> None:
    conf = {**CONF, **change}
    if "hyperparameters" not in change:
        conf["hyperparameters"] = CONF["hyperparameters"]
    result = run_dag("spot_training", conf, expect_success=False)
    output = result.stdout + result.stderr
    assert message in output and "state=failed" in output
    assert "up_for_retry" not in output and "starting task_id=train " not in output
    assert make_model_registry().versions() == []
