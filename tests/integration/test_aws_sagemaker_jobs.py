"""The provider-based SageMaker operators against moto's server: deferral through the real trigger,
and re-attachment on retry.

A training task is run, then retried while its job runs, then retried after it completed: each try
describes the run's deterministically named job first, so there is one ``CreateTrainingJob`` in
all. :class:`sagemaker_player.SageMakerPlayer` makes the jobs run (the trainer entry point on the
channels downloaded from the server) only when the test lets it, so the job is seen running. The
triggerer's part is played by the deferral's own ``SageMakerTrigger``: its ``run()`` polls the job
through the provider's aiobotocore client on the server, and its event resumes the task.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

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
#: The provider's waiter logs each poll that finds the job still running here.
WAITER_LOG = "airflow.providers.amazon.aws.utils.waiter_with_logging"


@pytest.fixture
def training(aws_connection: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The training settings of the aws backend, polls every second; the waiter's polls captured."""
    monkeypatch.setenv("QE_SAGEMAKER_ROLE_ARN", ROLE)
    monkeypatch.setenv("QE_TRAINING_POLL_INTERVAL_S", "1")
    monkeypatch.setenv("QE_TRAINING_IMAGE_URI", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/qe:test")
    caplog.set_level(logging.INFO, logger=WAITER_LOG)


def _triggered(trigger: SageMakerTrigger, player: SageMakerPlayer, caplog: pytest.LogCaptureFixture) -> dict:
    """The triggerer's part: ``trigger.run()`` polls the job until it has seen it running, then the
    player runs the job; the trigger's first event (its payload) is returned."""

    async def wait() -> Any:
        events = trigger.run()
        first = asyncio.ensure_future(anext(events))
        while not first.done() and "job not done yet: InProgress" not in caplog.text:
            await asyncio.sleep(0.05)
        assert not first.done(), f"the trigger ended before it saw the job running: {first.result()}"
        with player:
            event = await first
        await events.aclose()
        return event

    return asyncio.run(wait()).payload


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


def test_a_retried_training_task_reattaches_to_its_job_and_the_trigger_resumes_it(
    training: None, moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sagemaker = boto3.client("sagemaker", region_name=AWS_REGION, endpoint_url=moto_server, **AWS_KEYS)
    s3 = boto3.client("s3", region_name=AWS_REGION, endpoint_url=moto_server, **AWS_KEYS)
    prepared, context = _prepared(tmp_path / "run"), {"run_id": RUN_ID}
    name = training_job_name(RUN_ID)
    player = SageMakerPlayer(s3, tmp_path / "opt_ml", monkeypatch)  # jobs now start InProgress; none runs yet

    def jobs() -> list[str]:
        return sorted(j["TrainingJobName"] for j in sagemaker.list_training_jobs()["TrainingJobSummaries"])

    # first try: the provider creates the job and defers to its trigger on that job
    with pytest.raises(TaskDeferred) as deferred:
        QeTrainingOperator(task_id="train", prepared=prepared, deferrable=True).execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, SageMakerTrigger) and (trigger.job_name, trigger.job_type) == (name, "Training")
    assert deferred.value.method_name == "execute_complete" and trigger.aws_conn_id == "aws_default"
    assert trigger.waiter_delay == 1 and jobs() == [name]
    assert sagemaker.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "InProgress"

    # a retry while it runs defers to the same job instead of creating another
    with pytest.raises(TaskDeferred) as again:
        QeTrainingOperator(task_id="train", prepared=prepared, deferrable=True).execute(context)
    assert again.value.trigger.job_name == name and jobs() == [name]

    # the triggerer: the retry's trigger polls the running job until the player completes it
    event = _triggered(again.value.trigger, player, caplog)
    assert event == {"status": "success", "job_name": name} and player.started == {name}

    # the deferred try resumes from the trigger's event and collects the job's model
    resumed = QeTrainingOperator(task_id="train", prepared=prepared, deferrable=True).execute_complete(context, event)
    assert resumed["runner"] == "sagemaker" and resumed["job_name"] == name
    booster = xgb.Booster(model_file=resumed["model_path"])
    assert booster.num_boosted_rounds() == 8 and booster.feature_names == ["x1", "x2"]

    # a retry after it completed collects the same model without starting anything
    collected = QeTrainingOperator(task_id="train", prepared=prepared, deferrable=False).execute(context)
    assert collected == resumed and jobs() == [name]

    # another run on the same data, in a worker that polls its running job: the same model as the trigger's
    other_run = "manual__2026-03-03T00:00:00+00:00"
    with player:
        polled = QeTrainingOperator(task_id="train", prepared=_prepared(tmp_path / "polled"), deferrable=False).execute(
            {"run_id": other_run}
        )
    assert polled["job_name"] == training_job_name(other_run) and jobs() == sorted([name, polled["job_name"]])
    assert xgb.Booster(model_file=polled["model_path"]).get_dump() == booster.get_dump()


def test_a_failed_job_fails_the_deferred_task_with_its_reason_and_its_retry_takes_the_next_name(
    training: None, moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sagemaker = boto3.client("sagemaker", region_name=AWS_REGION, endpoint_url=moto_server, **AWS_KEYS)
    s3 = boto3.client("s3", region_name=AWS_REGION, endpoint_url=moto_server, **AWS_KEYS)
    prepared, context = _prepared(tmp_path / "run"), {"run_id": RUN_ID}
    prepared["params"]["hyperparameters"]["max_depth"] = -1  # the trainer refuses it inside the job
    player = SageMakerPlayer(s3, tmp_path / "opt_ml", monkeypatch)
    with pytest.raises(TaskDeferred) as deferred:
        QeTrainingOperator(task_id="train", prepared=prepared, deferrable=True).execute(context)

    event = _triggered(deferred.value.trigger, player, caplog)
    reason = sagemaker.describe_training_job(TrainingJobName=training_job_name(RUN_ID))["FailureReason"]
    assert "the trainer exited non-zero" in reason  # the player's report of the entry point's failure
    assert event == {"status": "failed", "job_name": training_job_name(RUN_ID), "message": reason}
    with pytest.raises(Exception, match="Error while running job") as failed:
        QeTrainingOperator(task_id="train", prepared=prepared, deferrable=True).execute_complete(context, event)
    assert repr(reason) in str(failed.value)  # the provider's message quotes SageMaker's reason

    # the retry (here in a polling worker) takes the next name instead of re-attaching to the failed job
    prepared["params"]["hyperparameters"]["max_depth"] = 2
    with player:
        trained = QeTrainingOperator(task_id="train", prepared=prepared, deferrable=False).execute(context)
    names = sorted(j["TrainingJobName"] for j in sagemaker.list_training_jobs()["TrainingJobSummaries"])
    assert names == [training_job_name(RUN_ID), training_job_name(RUN_ID, attempt=2)]
    assert trained["job_name"] == training_job_name(RUN_ID, attempt=2)
