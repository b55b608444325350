"""``airflow dags test`` of the SageMaker DAGs with ``QE_BACKEND=aws`` against moto's server.

AWS access comes only from the ``aws_default`` connection (see test_aws_connection.py). The jobs
the provider's operators create run as SageMaker would run them: :class:`sagemaker_player.SageMakerPlayer`
downloads each job's inputs from the server, runs its entry point in a simulated ``/opt/ml`` and
uploads its outputs, while the DAG's task waits on the job.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest
from moto_aws import AWS_KEYS, AWS_REGION
from sagemaker_player import SageMakerPlayer

from quant_engine.backends import make_aws_clients, make_group_stores, make_model_registry, make_offline_store
from quant_engine.config import Settings
from quant_engine.features.ingest import IngestionRequest, ingest

pytestmark = pytest.mark.airflow

ROLE = "arn:aws:iam::123456789012:role/quant-engine-sagemaker-execution"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/quant-engine:test"
TICKERS = ["SYN00", "SYN01", "SYN02", "SYN03"]
START, END = "2021-01-01", "2021-12-31"


@pytest.fixture
def aws_market(aws_connection: Settings, moto_server: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    """4 tickers x 3 years of synthetic features in the moto bucket; SageMaker settings for quick polls."""
    for name, value in {
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
    aws_market: dict, run_dag: Callable, qe_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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
    output = result.stdout + result.stderr
    assert output.count("6 fit(s) in Processing job qe-wfo-") == 2
    (folder,) = (qe_home / "reports" / "wfo").iterdir()
    report = json.loads((folder / "report.json").read_text())
    assert (report["n_splits"], report["n_paths"], report["n_trials"]) == (6, 3, 2)
    assert 0 <= report["pbo"] <= 1 and 0 <= report["deflated_sharpe"] <= report["psr"] <= 1


def test_spot_training_trains_in_a_sagemaker_job_and_registers_on_s3(
    aws_market: dict, run_dag: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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
    assert job["TrainingJobStatus"] == "Completed" and player.started == {job["TrainingJobName"]}
    assert "managed spot savings unknown" in result.stdout + result.stderr  # moto reports no billing
    registry = make_model_registry(aws_market["settings"], "aws_model", aws=aws_market["aws"])
    (record,) = registry.list()
    assert record.metadata.training["job_name"] == job["TrainingJobName"]
