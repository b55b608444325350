"""Tracking settings and wiring: on by default on the embedded store, off with QE_TRACKING=0, a SageMaker
MLflow tracking server by ARN (resolved by the sagemaker-mlflow plugin), bad values named; MLflow only
imported when a run is logged."""

from __future__ import annotations

import doctest
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from quant_engine import tracking
from quant_engine.aws.session import AwsClients
from quant_engine.backends import make_tracker
from quant_engine.config import Settings, SettingsError
from quant_engine.tracking import TRACKING_FILE, TrackedRun, Tracker, load_tracked_run, save_tracked_run

ARN = "arn:aws:sagemaker:eu-west-1:123456789012:mlflow-tracking-server/quant-engine"


def test_tracking_is_on_by_default_in_an_sqlite_database_under_qe_home(tmp_path: Path) -> None:
    settings = Settings.from_env({"QE_HOME": str(tmp_path)})
    assert settings.tracking and settings.tracking_uri is None
    assert settings.tracking_store_uri == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    assert make_tracker(settings) == Tracker(settings.tracking_store_uri, tmp_path.resolve() / "mlflow" / "artifacts")
    assert settings.tracking_link_base is None  # nothing serves the embedded database's UI by itself


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_qe_tracking_off_builds_no_tracker(tmp_path: Path, value: str) -> None:
    assert make_tracker(Settings.from_env({"QE_HOME": str(tmp_path), "QE_TRACKING": value})) is None


def test_a_tracking_server_by_url_and_its_ui_link(tmp_path: Path) -> None:
    settings = Settings.from_env({"QE_HOME": str(tmp_path), "QE_TRACKING_URI": "http://mlflow:5000"})
    assert make_tracker(settings) == Tracker("http://mlflow:5000")  # the server keeps the artifacts
    assert settings.tracking_link_base == "http://mlflow:5000"
    linked = Settings.from_env({"QE_TRACKING_UI_URL": "http://localhost:5500"})
    assert linked.tracking_link_base == "http://localhost:5500"
    run = TrackedRun("sqlite:///x.db", "3", "abc123")
    assert run.ui_url("http://localhost:5500/") == "http://localhost:5500/#/experiments/3/runs/abc123"


def test_a_sagemaker_tracking_server_by_arn_signs_with_the_handed_session(tmp_path: Path) -> None:
    from mlflow.tracking._tracking_service.utils import _get_store
    from sagemaker_mlflow.mlflow_sagemaker_store import MlflowSageMakerStore

    session = boto3.Session(region_name="eu-west-1")
    settings = Settings.from_env({"QE_HOME": str(tmp_path), "QE_TRACKING_URI": ARN})
    tracker = make_tracker(settings, aws=AwsClients(session))
    assert tracker == Tracker(ARN, boto3_session=session)
    # MLflow hands the ARN to the sagemaker-mlflow plugin, which turns it into the regional endpoint (no call yet)
    store = _get_store(ARN)
    assert isinstance(store, MlflowSageMakerStore)
    assert store.get_host_creds().host == "https://eu-west-1.experiments.sagemaker.aws"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"QE_TRACKING": "maybe"}, "QE_TRACKING='maybe' is not a yes/no value"),
        ({"QE_TRACKING_URI": "mlflow.example.com"}, "QE_TRACKING_URI='mlflow.example.com' is not an MLflow tracking"),
        ({"QE_TRACKING_URI": "arn:aws:s3:::my-bucket"}, "is not the ARN of a SageMaker MLflow tracking server"),
        ({"QE_TRACKING_UI_URL": "localhost:5500"}, "QE_TRACKING_UI_URL='localhost:5500' must be an http"),
    ],
)
def test_unusable_tracking_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_a_tracked_run_is_kept_beside_the_result_and_a_bad_record_reads_as_none(tmp_path: Path) -> None:
    run = TrackedRun("sqlite:///db", "1", "f00")
    save_tracked_run(tmp_path, run)
    assert load_tracked_run(tmp_path) == run
    (tmp_path / TRACKING_FILE).write_text("{not json")
    assert load_tracked_run(tmp_path) is None
    assert load_tracked_run(tmp_path / "missing") is None


def test_an_unknown_kind_is_a_bug_and_raises() -> None:
    with pytest.raises(ValueError, match="kind='backtest' is not a tracked kind"):
        Tracker("sqlite:///unused.db").log_run("backtest", "x")


def test_docstring_examples_run() -> None:
    assert doctest.testmod(tracking).failed == 0


def test_the_engine_imports_mlflow_only_when_a_run_is_logged() -> None:
    code = (
        "import sys; import quant_engine.backends, quant_engine.wfo.report, quant_engine.training.pipeline, "
        "quant_engine.monitoring.run, quant_engine.tracking; print('mlflow' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
