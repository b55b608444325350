"""SageMaker managed spot training through moto: request shape, waiting, the artifact, the savings report."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import boto3
import pandas as pd
import pytest
from moto import mock_aws

from quant_engine.aws.sagemaker_spot import (
    CHECKPOINT_LOCAL_PATH,
    ENTRY_SCRIPT,
    SpotSavings,
    SpotTrainingJobs,
    SpotTrainingSpec,
    TrainingJobError,
    download_model,
    encode_hyperparameters,
    run_spot_training,
    source_archive,
    training_job_name,
    wait_for_training_job,
)
from quant_engine.aws.session import AwsClients
from quant_engine.config import Settings, SettingsError

BUCKET = "qe-bucket"
ROLE = "arn:aws:iam::123456789012:role/qe-sagemaker"
JOB = "qe-train-test-1"
JOB_IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/quant-engine-job:0.1.0"


def _settings(**changes: object) -> Settings:
    return Settings(
        **{
            "backend": "aws",
            "s3_bucket": BUCKET,
            "sagemaker_role_arn": ROLE,
            "aws_region": "eu-west-1",
            "sagemaker_image_uri": JOB_IMAGE,
            **changes,
        }
    )


def _channels(tmp_path: Path) -> dict[str, Path]:
    frame = pd.DataFrame({"ret_1": [0.1, -0.2], "label": [1, 0]})
    paths = {
        "train": tmp_path / "train" / "train.parquet",
        "validation": tmp_path / "validation" / "validation.parquet",
    }
    for path in paths.values():
        path.parent.mkdir(parents=True)
        frame.to_parquet(path)
    return paths


def _model_archive(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def aws():
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1")
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        # moto completes a job at once but writes no artifact: put the one the container would upload
        s3.put_object(
            Bucket=BUCKET,
            Key=f"quant-engine/training/{JOB}/output/{JOB}/output/model.tar.gz",
            Body=_model_archive({"model.json": b'{"learner": {}}', "metrics.json": b'{"logloss": 0.69}'}),
        )
        yield s3, boto3.client("sagemaker", region_name="eu-west-1")


def test_managed_spot_request_shape(aws, tmp_path: Path) -> None:
    s3, sagemaker = aws
    result = run_spot_training(
        _channels(tmp_path),
        tmp_path / "model",
        {"max_depth": 3, "eta": 0.1, "tree_method": "hist"},
        _settings(),
        spec=SpotTrainingSpec(max_runtime_s=1800, max_wait_s=3600),
        job_name=JOB,
        sagemaker=sagemaker,
        s3=s3,
    )
    job = sagemaker.describe_training_job(TrainingJobName=JOB)
    base = f"s3://{BUCKET}/quant-engine/training/{JOB}"
    assert job["EnableManagedSpotTraining"] is True
    assert job["CheckpointConfig"] == {"S3Uri": f"{base}/checkpoints", "LocalPath": CHECKPOINT_LOCAL_PATH}
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 1800, "MaxWaitTimeInSeconds": 3600}
    assert job["AlgorithmSpecification"]["TrainingImage"] == JOB_IMAGE  # QE_SAGEMAKER_IMAGE_URI
    assert job["RoleArn"] == ROLE and job["OutputDataConfig"] == {"S3OutputPath": f"{base}/output"}
    assert {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]} == {
        "train": f"{base}/train",
        "validation": f"{base}/validation",
    }
    hps = job["HyperParameters"]
    assert all(isinstance(v, str) for v in hps.values())
    assert (hps["max_depth"], hps["eta"], hps["tree_method"]) == ("3", "0.1", '"hist"')
    assert json.loads(hps["sagemaker_program"]) == ENTRY_SCRIPT
    assert json.loads(hps["sagemaker_submit_directory"]) == f"{base}/code/sourcedir.tar.gz"
    staged = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"quant-engine/training/{JOB}/")["Contents"]}
    assert {
        f"quant-engine/training/{JOB}/train/train.parquet",
        f"quant-engine/training/{JOB}/validation/validation.parquet",
        f"quant-engine/training/{JOB}/code/sourcedir.tar.gz",
    } <= staged
    # the model came back, and moto's missing billing fields make the savings unknown, not zero
    assert Path(result["model_path"]).read_bytes() == b'{"learner": {}}'
    assert (tmp_path / "model" / "metrics.json").exists()
    assert result["savings"]["savings"] == "unknown" and "savings unknown" in result["billing"]


def test_source_archive_runs_the_trainer_module() -> None:
    with tarfile.open(fileobj=io.BytesIO(source_archive()), mode="r:gz") as tar:
        names = tar.getnames()
        entry = tar.extractfile(ENTRY_SCRIPT).read().decode()
    assert "quant_engine/aws/sagemaker_spot.py" in names and "quant_engine/config.py" in names
    assert not any("__pycache__" in n for n in names)
    assert 'run_module("quant_engine.aws.trainer_entry"' in entry


def test_staged_entry_script_trains_as_the_framework_container_runs_it(tmp_path: Path) -> None:
    """Script mode: the submit dir on the path, hyperparameters as flags and decoded in SM_HPS."""
    import subprocess
    import sys

    import numpy as np
    import xgboost as xgb

    submit = tmp_path / "code"
    with tarfile.open(fileobj=io.BytesIO(source_archive()), mode="r:gz") as tar:
        tar.extractall(submit, filter="data")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x1": rng.normal(size=300), "x2": rng.normal(size=300)})
    frame["label"] = (frame["x1"] > 0).astype("int8")
    for channel in ("train", "validation"):
        (tmp_path / channel).mkdir()
        frame.to_parquet(tmp_path / channel / f"{channel}.parquet")
    encoded = encode_hyperparameters({"num_round": 12, "max_depth": 2, "checkpoint_every": 4})
    flags = [arg for name, value in encoded.items() for arg in (f"--{name}", value)]
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(submit),
        "SM_CHANNEL_TRAIN": str(tmp_path / "train"),
        "SM_CHANNEL_VALIDATION": str(tmp_path / "validation"),
        "SM_MODEL_DIR": str(tmp_path / "model"),
        "SM_HPS": json.dumps({k: json.loads(v) for k, v in encoded.items()}),
        "QE_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
    }
    result = subprocess.run(
        [sys.executable, ENTRY_SCRIPT, *flags],
        cwd=submit,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    booster = xgb.Booster(model_file=str(tmp_path / "model" / "model.json"))
    assert booster.num_boosted_rounds() == 12 and booster.feature_names == ["x1", "x2"]
    assert json.loads((tmp_path / "model" / "metrics.json").read_text())["validation"]["rows"] == 300


def test_savings_from_a_filled_description(aws, tmp_path: Path) -> None:
    s3, sagemaker = aws

    class Filled:
        """moto's client, with the billing fields real SageMaker returns for a spot job."""

        def __getattr__(self, name: str):
            return getattr(sagemaker, name)

        def describe_training_job(self, **kwargs):
            return {
                **sagemaker.describe_training_job(**kwargs),
                "TrainingTimeInSeconds": 1000,
                "BillableTimeInSeconds": 300,
            }

    result = run_spot_training(
        _channels(tmp_path), tmp_path / "model", {}, _settings(), job_name=JOB, sagemaker=Filled(), s3=s3
    )
    assert result["savings"] == {
        "training_s": 1000,
        "billable_s": 300,
        "savings": 0.7,
        "summary": "managed spot saved 70.0%: billed 300 s of 1000 s of training",
    }
    assert SpotSavings(None, 300).fraction is None and SpotSavings(0, 0).fraction is None
    assert SpotSavings(600, 600).fraction == 0.0


class _Jobs:
    def __init__(self, statuses: list[str], **extra: object) -> None:
        self.statuses, self.extra, self.stopped = list(statuses), extra, []

    def describe_training_job(self, TrainingJobName: str) -> dict:  # noqa: N803 - boto3's name
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return {"TrainingJobStatus": status, **self.extra}

    def stop_training_job(self, TrainingJobName: str) -> None:  # noqa: N803
        self.stopped.append(TrainingJobName)


def test_waiting_polls_until_done_and_stops_a_job_past_its_time() -> None:
    sleeps: list[float] = []
    jobs = _Jobs(["InProgress", "InProgress", "Completed"])
    assert (
        wait_for_training_job(jobs, "j", timeout_s=100, poll_interval_s=5, sleep=sleeps.append)["TrainingJobStatus"]
        == "Completed"
    )
    assert sleeps == [5, 5]
    ticks = iter(range(0, 1000, 60))
    late = _Jobs(["InProgress"])
    with pytest.raises(TrainingJobError, match="still InProgress after 100 s; asked it to stop"):
        wait_for_training_job(
            late, "j", timeout_s=100, poll_interval_s=5, sleep=lambda s: None, clock=lambda: next(ticks)
        )
    assert late.stopped == ["j"]
    with pytest.raises(TrainingJobError, match="ended Failed: AlgorithmError: out of memory"):
        wait_for_training_job(
            _Jobs(["Failed"], FailureReason="AlgorithmError: out of memory"),
            "j",
            timeout_s=100,
            poll_interval_s=5,
            sleep=lambda s: None,
        )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"max_runtime_s": 3600, "max_wait_s": 1800}, "max_wait_s=1800 must be >= max_runtime_s=3600"),
        ({"max_runtime_s": 3600.0}, "max_runtime_s=3600.0 must be a whole number"),
        ({"max_wait_s": 30 * 24 * 3600}, "must be a whole number in \\[1, 2419200\\]"),
        ({"instance_type": "m5.xlarge"}, "is not a SageMaker instance type"),
    ],
)
def test_spec_validation(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SpotTrainingSpec(**spec)


def test_spec_from_env() -> None:
    spec = SpotTrainingSpec.from_env(
        {
            "QE_TRAINING_MAX_RUNTIME_S": "600",
            "QE_TRAINING_MAX_WAIT_S": "900",
            "QE_TRAINING_INSTANCE_TYPE": "ml.c5.2xlarge",
        }
    )
    assert (spec.max_runtime_s, spec.max_wait_s, spec.instance_type) == (600, 900, "ml.c5.2xlarge")
    with pytest.raises(SettingsError, match="QE_TRAINING_MAX_WAIT_S='2h' is not a whole number"):
        SpotTrainingSpec.from_env({"QE_TRAINING_MAX_WAIT_S": "2h"})


def test_bad_hyperparameters_and_missing_settings(aws, tmp_path: Path) -> None:
    s3, sagemaker = aws
    for bad, message in (
        ({"depth": [1, 2]}, "must be a string, a finite number or a boolean"),
        ({"eta": float("nan")}, "finite number"),
        ({"sagemaker_program": "x.py"}, "not starting with 'sagemaker_'"),
    ):
        with pytest.raises(ValueError, match=message):
            encode_hyperparameters(bad)
    with pytest.raises(SettingsError, match="QE_SAGEMAKER_ROLE_ARN is not set"):
        run_spot_training(
            _channels(tmp_path),
            tmp_path / "m",
            {},
            _settings(sagemaker_role_arn=None),
            job_name=JOB,
            sagemaker=sagemaker,
            s3=s3,
        )
    with pytest.raises(SettingsError, match="needs QE_S3_BUCKET"):
        run_spot_training({}, tmp_path / "m", {}, Settings(), sagemaker=sagemaker, s3=s3)
    assert sagemaker.list_training_jobs()["TrainingJobSummaries"] == []


def test_download_refuses_members_that_leave_the_folder(aws, tmp_path: Path) -> None:
    s3, _ = aws
    s3.put_object(Bucket=BUCKET, Key="evil.tar.gz", Body=_model_archive({"../escape.json": b"{}"}))
    with pytest.raises(TrainingJobError, match="refusing model archive member '../escape.json'"):
        download_model(s3, f"s3://{BUCKET}/evil.tar.gz", tmp_path / "out")
    assert not (tmp_path / "escape.json").exists()
    s3.put_object(Bucket=BUCKET, Key="empty.tar.gz", Body=_model_archive({"metrics.json": b"{}"}))
    with pytest.raises(TrainingJobError, match="holds no model.json"):
        download_model(s3, f"s3://{BUCKET}/empty.tar.gz", tmp_path / "out2")


def test_job_names_come_from_the_run_and_the_task_not_the_clock() -> None:
    name = training_job_name("scheduled__2026-01-05T00:00:00+00:00")
    assert name == training_job_name("scheduled__2026-01-05T00:00:00+00:00") and len(name) <= 63
    assert name != training_job_name("scheduled__2026-01-06T00:00:00+00:00")
    assert name != training_job_name("scheduled__2026-01-05T00:00:00+00:00", task="train_b")
    assert training_job_name("r", attempt=3).endswith("-3")


def test_a_retried_task_reattaches_to_its_training_job(tmp_path: Path) -> None:
    """The second call (a retry of the task) finds the run's job Completed and collects it: one CreateTrainingJob."""
    run_id = "manual__2026-01-05T00:00:00+00:00"
    name = training_job_name(run_id)
    with mock_aws():
        session = boto3.session.Session(region_name="eu-west-1")
        s3 = session.client("s3")
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        s3.put_object(
            Bucket=BUCKET,
            Key=f"quant-engine/training/{name}/output/{name}/output/model.tar.gz",
            Body=_model_archive({"model.json": b'{"learner": {}}'}),
        )
        created: list[str] = []
        session.events.register(
            "before-parameter-build.sagemaker.CreateTrainingJob",
            lambda params, **_: created.append(params["TrainingJobName"]),
        )
        jobs = SpotTrainingJobs(_settings(), AwsClients(session), SpotTrainingSpec(poll_interval_s=0.01))
        jobs.check({"max_depth": 3})
        first = jobs.run(_channels(tmp_path), tmp_path / "first", {"max_depth": 3}, run_id=run_id)
        retry = jobs.run(_channels(tmp_path / "again"), tmp_path / "retry", {"max_depth": 3}, run_id=run_id)
        listed = session.client("sagemaker").list_training_jobs()["TrainingJobSummaries"]
    assert created == [name] and [j["TrainingJobName"] for j in listed] == [name]
    assert (first["job_name"], first["reattached"]) == (name, False)
    assert (retry["job_name"], retry["reattached"]) == (name, True)
    assert Path(retry["model_path"]).read_bytes() == b'{"learner": {}}'


def test_training_jobs_check_refuses_what_sagemaker_would() -> None:
    jobs = SpotTrainingJobs(_settings(sagemaker_role_arn=None), AwsClients(boto3.session.Session()))
    with pytest.raises(SettingsError, match="QE_SAGEMAKER_ROLE_ARN is not set"):
        jobs.check({"max_depth": 3})
    with pytest.raises(ValueError, match="must be a string, a finite number or a boolean"):
        SpotTrainingJobs(_settings(), AwsClients(boto3.session.Session())).check({"max_depth": [3]})
