"""Runs logged to MLflow where their results are saved: walk-forward, training and drift, read back.

One small market, one walk-forward run, one trained model and one drift check share a QE_HOME and
its embedded tracking database (MLflow creates its tables once, which takes seconds); each run is
read back with ``MlflowClient`` and compared with the result the engine saved beside it.
"""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest

from quant_engine.backends import (
    make_bar_store,
    make_drift_monitor,
    make_group_stores,
    make_model_registry,
    make_offline_store,
    make_tracker,
    make_wfo_fits,
)
from quant_engine.config import Settings
from quant_engine.features.ingest import IngestionRequest, ingest
from quant_engine.monitoring.run import record_training_baselines
from quant_engine.monitoring.scoring import score_batch
from quant_engine.runs import run_dir
from quant_engine.tracking import EXPERIMENTS, TRACKING_FILE, Tracker, load_tracked_run
from quant_engine.training import pipeline as training
from quant_engine.wfo.config import WfoConfig
from quant_engine.wfo.pipeline import run_pipeline
from quant_engine.wfo.report import write_report

TICKERS = ["SYN05", "SYN06"]
END = "2021-06-30"
WFO = {
    "start": "2020-01-01",
    "end": END,
    "tickers": ",".join(TICKERS),
    "n_groups": 4,
    "n_test_groups": 2,
    "embargo": 3,
    "trials": {"max_depth": [2, 3], "n_estimators": [6]},
}
#: Trained to March 2021, so the quarter after it is new data for the drift check.
TRAINING = {
    "start": "2020-01-01",
    "end": "2021-03-31",
    "tickers": ",".join(TICKERS),
    "interruptions": 1,
    "hyperparameters": {"num_round": 20, "checkpoint_every": 5, "min_child_weight": 20},
}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("tracking_home")
    settings = Settings(home=home)
    ingest(
        IngestionRequest.build("synthetic", "2020-01-01", END, tickers=TICKERS, group=make_offline_store(settings)),
        make_group_stores(settings),
    )
    return settings


@pytest.fixture
def use_home(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("QE_HOME", str(settings.home))
    monkeypatch.setenv("QE_TRACKING", "1")
    return settings


@pytest.fixture(scope="module")
def client(settings: Settings):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=settings.tracking_store_uri)


def _runs(client, kind: str) -> list:
    experiment = client.get_experiment_by_name(EXPERIMENTS[kind])
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


@pytest.fixture(scope="module")
def wfo_report(settings: Settings) -> Path:
    return run_pipeline(
        WfoConfig.from_params(WFO),
        run_dir("wfo", "tracked-wfo", settings),
        make_offline_store(settings),
        make_bar_store(settings),
        make_wfo_fits(settings),
        settings.reports_dir,
        tracker=make_tracker(settings),
    )


def test_a_walk_forward_run_logs_its_statistics_path_sharpes_and_report(settings, wfo_report, client) -> None:
    report = json.loads((wfo_report / "report.json").read_text())
    tracked = load_tracked_run(wfo_report)
    assert tracked is not None and tracked.tracking_uri == settings.tracking_store_uri
    run = client.get_run(tracked.run_id)
    assert run.info.experiment_id == tracked.experiment_id and run.info.status == "FINISHED"
    assert run.data.params["splitter"] == "cpcv" and run.data.params["n_groups"] == "4"
    selected = report["trials"][report["selected_trial"]]
    assert run.data.params["selected.max_depth"] == str(report["selected_params"]["max_depth"])
    for key in ("pbo", "deflated_sharpe", "psr"):
        assert run.data.metrics[key] == pytest.approx(report[key])
    assert run.data.metrics["selected_trial"] == report["selected_trial"]
    history = sorted(client.get_metric_history(tracked.run_id, "path_sharpe"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(report["n_paths"]))
    assert [m.value for m in history] == pytest.approx(selected["path_sharpes"])
    assert {"report.html", "report.json"} <= _artifacts(client, tracked.run_id)
    assert run.data.tags["splitter"] == "cpcv"
    # the report task rerun (an Airflow retry) logs into the same MLflow run, not a second one
    write_report(run_dir("wfo", "tracked-wfo", settings), settings.reports_dir, tracker=make_tracker(settings))
    assert [r.info.run_id for r in _runs(client, "wfo")] == [tracked.run_id]


@pytest.fixture(scope="module")
def registered(settings: Settings) -> dict:
    prepared = training.prepare(
        TRAINING,
        run_dir("training", "tracked-training", settings),
        registry_of=lambda name: make_model_registry(settings, name),
        store=make_offline_store(settings),
        bar_store=make_bar_store(settings),
        settings=settings,
    )
    trained = training.train(prepared, "tracked-training")
    registry = make_model_registry(settings)
    evaluated = training.evaluate(prepared, trained, registry)
    version = training.register(prepared, trained, evaluated, registry, tracker=make_tracker(settings))
    return {"prepared": prepared, "trained": trained, "evaluated": evaluated, "version": version}


def test_a_training_run_logs_hyperparameters_holdout_metrics_spot_figures_and_the_model(
    settings, registered, client
) -> None:
    registry = make_model_registry(settings)
    version = registered["version"]
    tracked = registry.tracked_run(version)
    assert tracked is not None
    run = client.get_run(tracked["run_id"])
    assert run.data.tags["model_version"] == version and run.data.tags["model_name"] == registry.name
    assert run.data.params["hyperparameters.num_round"] == "20"
    assert run.data.params["hyperparameters.min_child_weight"] == "20"
    assert run.data.params["runner"] == "local_spot"
    for name, value in registered["evaluated"]["candidate"].items():
        assert run.data.metrics[f"holdout.{name}"] == pytest.approx(value)
    spot = registered["trained"]["spot"]
    assert run.data.metrics["spot.interruptions"] == spot["interruptions"] == 1
    assert run.data.metrics["spot.lost_rounds"] == spot["lost_rounds"]
    assert run.data.metrics["promote"] == float(registered["evaluated"]["promote"])
    (model,) = _artifacts(client, tracked["run_id"], "model")
    local = Path(client.download_artifacts(tracked["run_id"], model, str(settings.home / "download")))
    assert local.read_bytes() == Path(registered["trained"]["model_path"]).read_bytes()


def test_a_drift_check_logs_each_features_distances_and_the_verdict(use_home, registered, client) -> None:
    registry = make_model_registry(use_home)
    version = registered["version"]
    registry.promote(version, "first model")
    record_training_baselines(registry, version, registered["prepared"]["run_dir"])
    monitor = make_drift_monitor(use_home)
    start, end = monitor.window(window_days=60)
    score_batch(registry, monitor.store, start, end)
    result = monitor.check("tracked-drift", window_days=60)
    folder = Path(result.report_dir)
    document = json.loads((folder / "report.json").read_text())
    tracked = load_tracked_run(folder)
    assert tracked is not None
    run = client.get_run(tracked.run_id)
    assert run.data.tags["verdict"] == result.verdict == document["verdict"]
    assert run.data.params["model_version"] == version
    assert run.data.metrics["retraining_requested"] == float(result.retrain)
    drift = document["evidence"]["feature_drift"]
    assert drift
    for name, feature in drift.items():
        if feature["distance"] is not None:
            assert run.data.metrics[f"{name}.distance"] == pytest.approx(feature["distance"])
        assert run.data.metrics[f"{name}.drifted"] == float(feature["drifted"])
    assert {"report.html", "report.json", "constraint_violations.json"} <= _artifacts(client, tracked.run_id)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_tracking_server_is_a_warning_and_the_run_goes_on(
    settings, wfo_report, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    down = Tracker(f"http://127.0.0.1:{_closed_port()}")
    with caplog.at_level(logging.WARNING, logger="quant_engine.tracking"):
        folder = write_report(
            run_dir("wfo", "tracked-wfo", settings), settings.reports_dir, tmp_path / "copy", tracker=down
        )
    assert (folder / "report.html").is_file() and (folder / "report.json").is_file()
    assert not (folder / TRACKING_FILE).exists()
    (warning,) = [r for r in caplog.records if r.name == "quant_engine.tracking"]
    assert warning.levelno == logging.WARNING
    assert "the run goes on" in warning.message and down.tracking_uri in warning.message
