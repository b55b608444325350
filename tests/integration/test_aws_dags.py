"""``airflow dags test`` of the SageMaker DAGs with ``QE_BACKEND=aws`` against moto's server.

AWS access comes only from the ``aws_default`` connection (see test_aws_connection.py). The jobs
the provider's operators create run as SageMaker would run them: :class:`sagemaker_player.SageMakerPlayer`
downloads each job's inputs from the server, runs its entry point in a simulated ``/opt/ml`` and
uploads its outputs, while the DAG's task waits on the job.

The SageMaker tasks run deferrable (Airflow's ``[operators] default_deferrable``, as ``make up`` and
compose set it): ``airflow dags test`` runs the provider's ``SageMakerTrigger`` in line, its
aiobotocore client polling the job on the server, then resumes the task with ``execute_complete``.
The metadata database shows the way each task took: its trigger and its state changes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from moto_aws import AWS_BUCKET, AWS_KEYS, AWS_REGION
from sagemaker_player import SageMakerPlayer

from quant_engine.backends import (
    make_aws_clients,
    make_bar_store,
    make_group_stores,
    make_model_registry,
    make_offline_store,
)
from quant_engine.config import Settings
from quant_engine.data.synthetic import Shift, SyntheticMarket
from quant_engine.features.ingest import IngestionRequest, ingest
from quant_engine.monitoring.run import record_baseline
from quant_engine.training.dataset import TrainingSetConfig, build_training_set
from quant_engine.training.registry import ModelMetadata

pytestmark = pytest.mark.airflow

ROLE = "arn:aws:iam::123456789012:role/quant-engine-sagemaker-execution"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/quant-engine:test"
TICKERS = ["SYN00", "SYN01", "SYN02", "SYN03"]
#: Where the report tasks publish on the aws backend (QE_S3_PREFIX defaults to quant-engine).
S3_REPORTS = "quant-engine/reports"
START, END = "2021-01-01", "2021-12-31"
#: A deferred task's state changes in the metadata database's ``log`` table.
DEFERRED_TRY = ["running", "deferred", "running", "success"]


def _deferrals(airflow_home: Path, dag_id: str, task_id: str) -> dict[str, list[str]]:
    """Per job name, the state changes of the task instance that deferred to a ``SageMakerTrigger`` on it."""
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        deferred = db.execute(
            "SELECT t.kwargs, ti.run_id, ti.map_index FROM task_instance ti JOIN trigger t ON t.id = ti.trigger_id"
            " WHERE ti.dag_id = ? AND ti.task_id = ? AND t.classpath = ?",
            (dag_id, task_id, "airflow.providers.amazon.aws.triggers.sagemaker.SageMakerTrigger"),
        ).fetchall()
        return {
            json.loads(kwargs)["job_name"]: [
                event
                for (event,) in db.execute(
                    "SELECT event FROM log WHERE dag_id = ? AND task_id = ? AND run_id = ? AND map_index = ?"
                    " ORDER BY id",
                    (dag_id, task_id, run_id, map_index),
                )
            ]
            for kwargs, run_id, map_index in deferred
        }


@pytest.fixture
def aws_market(aws_connection: Settings, moto_server: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    """4 tickers x 3 years of synthetic features in the moto bucket; SageMaker settings for quick polls,
    the waits deferred to the trigger."""
    for name, value in {
        "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True",
        "QE_SAGEMAKER_ROLE_ARN": ROLE,
        "QE_PROCESSING_IMAGE_URI": IMAGE,
        "QE_TRAINING_IMAGE_URI": IMAGE,
        "QE_PROCESSING_POLL_INTERVAL_S": "1",
        "QE_TRAINING_POLL_INTERVAL_S": "1",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    aws = make_aws_clients(
        settings, session=boto3.session.Session(region_name=AWS_REGION, **AWS_KEYS), endpoint_url=moto_server
    )
    store = make_offline_store(settings, aws=aws)
    ingest(
        IngestionRequest.build("synthetic", START, END, tickers=TICKERS, group=store),
        make_group_stores(settings, aws=aws),
    )
    return {"settings": settings, "aws": aws}


def test_wfo_pipeline_runs_one_processing_job_per_trial(
    aws_market: dict,
    run_dag: Callable,
    airflow_home: Path,
    qe_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conf = {
        "start": START,
        "end": END,
        "tickers": TICKERS,
        "n_groups": 4,
        "n_test_groups": 2,
        "embargo": "5D",
        "trials": [{"max_depth": 2, "n_estimators": 10}, {"max_depth": 3, "n_estimators": 10, "threshold": 0.02}],
    }
    sagemaker = aws_market["aws"].client("sagemaker")
    with SageMakerPlayer(aws_market["aws"].client("s3"), tmp_path / "opt_ml", monkeypatch) as player:
        result = run_dag("wfo_pipeline", conf)
    jobs = sagemaker.list_processing_jobs()["ProcessingJobSummaries"]
    # 2 trials x 6 splits: one job per trial, each run once, each waited for by one mapped task
    assert sorted(j["ProcessingJobName"].rsplit("-", 2)[-2:][0] for j in jobs) == ["t0", "t1"]
    assert {j["ProcessingJobStatus"] for j in jobs} == {"Completed"} and player.started == {
        j["ProcessingJobName"] for j in jobs
    }
    # each mapped task deferred to the trigger on its job, and resumed to collect that job's fits
    names = sorted(j["ProcessingJobName"] for j in jobs)
    deferrals = _deferrals(airflow_home, "wfo_pipeline", "run_split")
    assert {name: deferrals.get(name) for name in names} == {name: DEFERRED_TRY for name in names}
    output = result.stdout + result.stderr
    assert output.count("[DAG TEST] running trigger in line") == 2
    for name in names:
        assert f"SageMaker job {name} completed." in output  # the provider's execute_complete
        assert f"6 fit(s) in Processing job {name}" in output
    (folder,) = (qe_home / "reports" / "wfo").iterdir()
    report = json.loads((folder / "report.json").read_text())
    assert (report["n_splits"], report["n_paths"], report["n_trials"]) == (6, 3, 2)
    published = (
        aws_market["aws"].client("s3").get_object(Bucket=AWS_BUCKET, Key=f"{S3_REPORTS}/wfo/{folder.name}/report.json")
    )
    assert json.loads(published["Body"].read()) == report  # copied off the worker's disk by the report task
    assert 0 <= report["pbo"] <= 1 and 0 <= report["deflated_sharpe"] <= report["psr"] <= 1


def test_spot_training_trains_in_a_sagemaker_job_and_registers_on_s3(
    aws_market: dict, run_dag: Callable, airflow_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = {
        "start": START,
        "end": END,
        "runner": "sagemaker",
        "model_name": "aws_model",
        "hyperparameters": {"num_round": 20, "max_depth": 2, "learning_rate": 0.1, "checkpoint_every": 5, "seed": 7},
    }
    sagemaker = aws_market["aws"].client("sagemaker")
    with SageMakerPlayer(aws_market["aws"].client("s3"), tmp_path / "opt_ml", monkeypatch) as player:
        result = run_dag("spot_training", conf)
    (job,) = sagemaker.list_training_jobs()["TrainingJobSummaries"]
    name = job["TrainingJobName"]
    assert job["TrainingJobStatus"] == "Completed" and player.started == {name}
    assert _deferrals(airflow_home, "spot_training", "train").get(name) == DEFERRED_TRY
    output = result.stdout + result.stderr
    assert f"SageMaker job {name} completed." in output  # the trigger's event, back in execute_complete
    assert "managed spot savings unknown" in output  # moto reports no billing
    registry = make_model_registry(aws_market["settings"], "aws_model", aws=aws_market["aws"])
    (record,) = registry.list()
    assert record.metadata.training["job_name"] == job["TrainingJobName"]


def test_drift_monitor_on_aws_requests_retraining_for_a_shifted_market(
    aws_connection: Settings, moto_server: str, run_dag: Callable, qe_home: Path
) -> None:
    """A champion of 2020-06..2021-12 on S3 (registry, baselines), the market's volatility x2.5 from 2022.

    The library path test_drift_monitor_dag.py takes locally, with every store on the server.
    """
    aws = make_aws_clients(
        aws_connection, session=boto3.session.Session(region_name=AWS_REGION, **AWS_KEYS), endpoint_url=moto_server
    )
    path = qe_home / "bars.parquet"
    SyntheticMarket(
        n_tickers=5,
        seed=3,
        start="2019-01-01",
        end="2022-06-30",
        shifts=[Shift("2022-01-03", "covariate", vol_scale=2.5)],
    ).fetch(None, "2019-01-01", "2022-06-30").to_parquet(path)
    store = make_offline_store(aws_connection, aws=aws)
    ingest(
        IngestionRequest.build("parquet", "2020-06-01", "2022-04-29", path=str(path), group=store),
        make_group_stores(aws_connection, aws=aws),
    )
    folder = qe_home / "training"
    summary = build_training_set(
        TrainingSetConfig.from_params({"start": "2020-06-01", "end": "2021-12-31"}, store),
        folder,
        store,
        make_bar_store(aws_connection, aws=aws),
    )
    features = summary["features"]
    train, holdout = pd.read_parquet(folder / "train" / "train.parquet"), pd.read_parquet(folder / "holdout.parquet")
    xgb.train(
        {"objective": "binary:logistic", "max_depth": 2, "eta": 0.1, "min_child_weight": 50},
        xgb.DMatrix(train[features].to_numpy(np.float32), label=train["label"], feature_names=features),
        20,
    ).save_model(str(folder / "model.json"))
    registry = make_model_registry(aws_connection, aws=aws)
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

    result = run_dag("drift_monitor", {"window_days": 90, "comparison_threshold": 0.25, "min_new_rows": 50})
    output = result.stdout + result.stderr
    assert "retraining requested: " in output and f"'model_version': '{version}'" in output
    (report_folder,) = (qe_home / "reports" / "drift").iterdir()
    report = json.loads((report_folder / "report.json").read_text())
    assert (
        report["verdict"] in ("feature_drift", "both") and "realized_vol_20" in report["evidence"]["drifted_features"]
    )
    # the drift metrics and alarms went to CloudWatch, the scored predictions to S3, through the connection
    cloudwatch = aws.client("cloudwatch")
    assert cloudwatch.list_metrics()["Metrics"] and cloudwatch.describe_alarms()["MetricAlarms"]
    keys = [o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=AWS_BUCKET)["Contents"]]
    assert len(keys) > 0 and any("prediction" in k for k in keys)
    assert f"{S3_REPORTS}/drift/{report_folder.name}/report.json" in keys and "report: s3://" in output
