"""``airflow dags test drift_monitor``: a shifted market asks for retraining, a stationary one does not."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from smtp_sink import SmtpSink

from quant_engine.backends import make_bar_store, make_group_stores, make_model_registry, make_offline_store
from quant_engine.data.synthetic import Shift, SyntheticMarket
from quant_engine.features.ingest import IngestionRequest, ingest
from quant_engine.monitoring.run import record_baseline
from quant_engine.runs import safe_name
from quant_engine.training.dataset import TrainingSetConfig, build_training_set
from quant_engine.training.registry import ModelMetadata

pytestmark = pytest.mark.airflow

#: 90 days of daily bars against a 1.5-year baseline: regimes alone move the robust KS distance to
#: ~0.15, a volatility x2.5 to ~0.7 (see tests/unit/test_drift_run.py).
CONF = {"window_days": 90, "comparison_threshold": 0.25, "min_new_rows": 50}


def champion_on(home: Path, *, shifted: bool) -> str:
    """Ingest 5 synthetic tickers to 2022-04 (volatility x2.5 from 2022 when shifted); a champion of 2020-06..2021-12.

    The library path the ``spot_training`` DAG takes, minus the spot simulator, to keep the test fast.
    """
    shifts = [Shift("2022-01-03", "covariate", vol_scale=2.5)] if shifted else []
    path = home / "bars.parquet"
    SyntheticMarket(n_tickers=5, seed=3, start="2019-01-01", end="2022-06-30", shifts=shifts).fetch(
        None, "2019-01-01", "2022-06-30"
    ).to_parquet(path)
    ingest(
        IngestionRequest.build("parquet", "2020-06-01", "2022-04-29", path=str(path), group=make_offline_store()),
        make_group_stores(),
    )
    folder = home / "training"
    summary = build_training_set(
        TrainingSetConfig.from_params({"start": "2020-06-01", "end": "2021-12-31"}, make_offline_store()),
        folder,
        make_offline_store(),
        make_bar_store(),
    )
    features = summary["features"]
    train, holdout = pd.read_parquet(folder / "train" / "train.parquet"), pd.read_parquet(folder / "holdout.parquet")
    xgb.train(
        {"objective": "binary:logistic", "max_depth": 2, "eta": 0.1, "min_child_weight": 50},
        xgb.DMatrix(train[features].to_numpy(np.float32), label=train["label"], feature_names=features),
        20,
    ).save_model(str(folder / "model.json"))
    registry = make_model_registry()
    version = registry.register(
        folder / "model.json",
        ModelMetadata(
            features=features,
            data_start=summary["train_start"],
            data_end=summary["holdout_end"],
            data_fingerprint=summary["fingerprint"],
            training={"dataset": summary["params"]},
        ),
    )
    registry.promote(version, "first model")
    record_baseline(registry, version, registry.load_booster(version), train, holdout, features)
    return version


def only_report(home: Path) -> tuple[Path, dict]:
    (folder,) = (home / "reports" / "drift").iterdir()
    return folder, json.loads((folder / "report.json").read_text())


def retraining_events(airflow_home: Path) -> list[dict]:
    """Extras of the retraining asset's events in the test Airflow's metadata database."""
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        rows = db.execute(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.uri = ?",
            ("qe://drift/retraining-requested",),
        ).fetchall()
    return [json.loads(extra) if isinstance(extra, str) else extra for (extra,) in rows]


def test_shifted_market_requests_retraining(
    qe_home: Path, airflow_home: Path, run_dag: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = champion_on(qe_home, shifted=True)
    with SmtpSink() as sink:  # the verdict is mailed (tests/integration/test_notifications.py has the details)
        for key, value in {**sink.connection_env("qe_test_smtp"), "QE_NOTIFY_SMTP_CONN_ID": "qe_test_smtp"}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("QE_NOTIFY_EMAILS", "quant@example.com")
        result = run_dag("drift_monitor", CONF)
    folder, report = only_report(qe_home)
    assert report["verdict"] in ("feature_drift", "both") and report["model_version"] == version
    assert "realized_vol_20" in report["evidence"]["drifted_features"]
    assert (folder / "report.html").read_text().count("data:image/png;base64,") > 1
    output = result.stdout + result.stderr
    assert "retraining requested: " in output
    mine = [e for e in retraining_events(airflow_home) if safe_name(e.get("run_id", "")) == folder.name]
    assert [(e["verdict"], e["model_version"]) for e in mine] == [(report["verdict"], version)]
    (mail,) = sink.received
    assert mail.subject == f"[quant-engine] drift: {report['verdict']} for xgb_direction {version}"
    assert ", ".join(report["evidence"]["drifted_features"]) in mail.text


def test_stationary_market_skips_the_request(qe_home: Path, airflow_home: Path, run_dag: Callable) -> None:
    champion_on(qe_home, shifted=False)
    result = run_dag("drift_monitor", CONF)
    folder, report = only_report(qe_home)
    assert report["verdict"] == "none" and report["retraining_requested"] is False
    output = result.stdout + result.stderr
    assert "tasks_skipped=1" in output and "retraining requested: " not in output
    assert not [e for e in retraining_events(airflow_home) if safe_name(e.get("run_id", "")) == folder.name]


def test_unknown_model_fails_before_scoring(qe_home: Path, run_dag: Callable) -> None:
    result = run_dag("drift_monitor", {**CONF, "model_name": "no_such_model"}, expect_success=False)
    output = result.stdout + result.stderr
    assert "NoChampionError: model 'no_such_model' has no registered version; check the name" in output
    assert "starting task_id=score " not in output


def test_a_scheduled_run_before_any_champion_skips_and_succeeds(
    qe_home: Path, run_dag: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SmtpSink() as sink:  # a skip is no failure: nothing is mailed
        for key, value in {**sink.connection_env("qe_test_smtp"), "QE_NOTIFY_SMTP_CONN_ID": "qe_test_smtp"}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("QE_NOTIFY_EMAILS", "ops@example.com")
        result = run_dag("drift_monitor")  # no conf, as the feature-store asset triggers it
    assert sink.received == []
    output = result.stdout + result.stderr
    assert "skipping the run: model 'xgb_direction' has no champion yet (0 version(s) registered" in output
    assert output.count("[DAG TEST] starting task_id=") == 1  # the sensor; every later task skipped with it
    assert not (qe_home / "reports" / "drift").exists()


def test_too_few_new_rows_after_a_retrain_skip_once_the_wait_is_over(qe_home: Path, run_dag: Callable) -> None:
    champion_on(qe_home, shifted=False)
    result = run_dag("drift_monitor", {**CONF, "min_new_rows": 1_000_000, "max_wait_hours": 0})
    output = result.stdout + result.stderr
    assert "skipping the run, nothing to judge after waiting 0.0 h: " in output
    assert "with settled labels; a check needs 1000000 and some settled" in output
    assert output.count("[DAG TEST] starting task_id=") == 1
    assert not (qe_home / "reports" / "drift").exists()
