"""The provider-based SageMaker operators against moto's server: deferral, and re-attachment on retry.

A training task is run, then retried while its job runs, then retried after it completed: each try
describes the run's deterministically named job first, so there is one ``CreateTrainingJob`` in
all. :class:`sagemaker_player.SageMakerPlayer` makes the jobs run (the trainer entry point on the
channels downloaded from the server) only when the test lets it, so the job is seen running.
"""

from __future__ import annotations

from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from airflow.providers.amazon.aws.triggers.sagemaker import SageMakerTrigger
from airflow.sdk.exceptions import TaskDeferred
from moto_aws import AWS_KEYS, AWS_REGION
from qe_sagemaker import QeTrainingOperator
from sagemaker_player import SageMakerPlayer

from quant_engine.aws.sagemaker_spot import training_job_name
from quant_engine.config import Settings

pytestmark = pytest.mark.airflow

ROLE = "arn:aws:iam::123456789012:role/quant-engine-sagemaker-execution"
RUN_ID = "manual__2026-03-02T00:00:00+00:00"


def _prepared(folder: Path) -> dict:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x1": rng.normal(size=300), "x2": rng.normal(size=300)})
    frame["label"] = (frame["x1"] > 0).astype("int8")
    channels = {}
    for channel in ("train", "validation"):
        (folder / channel).mkdir(parents=True)
        frame.to_parquet(folder / channel / f"{channel}.parquet")
        channels[channel] = str(folder / channel / f"{channel}.parquet")
    hyperparameters = {"num_round": 8, "max_depth": 2, "checkpoint_every": 4}
    return {
        "run_dir": str(folder),
        "channels": channels,
        "params": {"runner": "sagemaker", "hyperparameters": hyperparameters},
    }


def test_a_retried_training_task_reattaches_to_its_job(
    aws_connection: Settings, moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("QE_SAGEMAKER_ROLE_ARN", ROLE)
    monkeypatch.setenv("QE_TRAINING_POLL_INTERVAL_S", "1")
    monkeypatch.setenv("QE_TRAINING_IMAGE_URI", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/qe:test")
    sagemaker = boto3.client("sagemaker", region_name=AWS_REGION, endpoint_url=moto_server, **AWS_KEYS)
    s3 = boto3.client("s3", region_name=AWS_REGION, endpoint_url=moto_server, **AWS_KEYS)
    prepared, context = _prepared(tmp_path / "run"), {"run_id": RUN_ID}
    name = training_job_name(RUN_ID)
    player = SageMakerPlayer(s3, tmp_path / "opt_ml", monkeypatch)  # jobs now start InProgress; none runs yet

    def jobs() -> list[str]:
        return [j["TrainingJobName"] for j in sagemaker.list_training_jobs()["TrainingJobSummaries"]]

    # first try: the provider creates the job and defers to its trigger on that job
    with pytest.raises(TaskDeferred) as deferred:
        QeTrainingOperator(task_id="train", prepared=prepared, deferrable=True).execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, SageMakerTrigger) and (trigger.job_name, trigger.job_type) == (name, "Training")
    assert deferred.value.method_name == "execute_complete" and trigger.aws_conn_id == "aws_default"
    assert jobs() == [name]
    assert sagemaker.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "InProgress"

    # a retry while it runs defers to the same job instead of creating another
    with pytest.raises(TaskDeferred) as again:
        QeTrainingOperator(task_id="train", prepared=prepared, deferrable=True).execute(context)
    assert again.value.trigger.job_name == name and jobs() == [name]

    # a retry in a worker that waits (not deferrable) polls the running job through the provider's hook
    with player:
        trained = QeTrainingOperator(task_id="train", prepared=prepared, deferrable=False).execute(context)
    assert jobs() == [name] and player.started == {name}
    assert trained["runner"] == "sagemaker" and trained["job_name"] == name
    booster = xgb.Booster(model_file=trained["model_path"])
    assert booster.num_boosted_rounds() == 8 and booster.feature_names == ["x1", "x2"]

    # the deferred try resumes from the trigger's event and collects the same model
    resumed = QeTrainingOperator(task_id="train", prepared=prepared, deferrable=True).execute_complete(
        context, {"status": "success", "job_name": name}
    )
    assert resumed == trained and jobs() == [name]


def test_a_failed_job_fails_the_task_and_its_retry_takes_the_next_name(
    aws_connection: Settings, moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("QE_SAGEMAKER_ROLE_ARN", ROLE)
    monkeypatch.setenv("QE_TRAINING_POLL_INTERVAL_S", "1")
    monkeypatch.setenv("QE_TRAINING_IMAGE_URI", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/qe:test")
    sagemaker = boto3.client("sagemaker", region_name=AWS_REGION, endpoint_url=moto_server, **AWS_KEYS)
    s3 = boto3.client("s3", region_name=AWS_REGION, endpoint_url=moto_server, **AWS_KEYS)
    prepared, context = _prepared(tmp_path / "run"), {"run_id": RUN_ID}
    prepared["params"]["hyperparameters"]["max_depth"] = -1  # the trainer refuses it inside the job
    with SageMakerPlayer(s3, tmp_path / "opt_ml", monkeypatch):
        with pytest.raises(Exception, match="SageMaker resource failed because"):
            QeTrainingOperator(task_id="train", prepared=prepared, deferrable=False).execute(context)
        prepared["params"]["hyperparameters"]["max_depth"] = 2
        trained = QeTrainingOperator(task_id="train", prepared=prepared, deferrable=False).execute(context)
    names = sorted(j["TrainingJobName"] for j in sagemaker.list_training_jobs()["TrainingJobSummaries"])
    assert names == [training_job_name(RUN_ID), training_job_name(RUN_ID, attempt=2)]
    assert trained["job_name"] == training_job_name(RUN_ID, attempt=2)
