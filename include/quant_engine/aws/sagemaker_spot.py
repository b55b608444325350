"""SageMaker managed spot training of the script-mode trainer, through boto3 ``CreateTrainingJob``.

The job runs ``python -m quant_engine.aws.trainer_entry`` (the local runner's
``python -m quant_engine.training.trainer``, with S3 checkpoints reachable): in the engine's job
image (``QE_SAGEMAKER_IMAGE_URI``) as its ``train`` command; in a SageMaker XGBoost framework image
(only where its Python is 3.11, :mod:`quant_engine.aws.images`) through script mode, for which the
package sources travel as ``sourcedir.tar.gz`` with a small ``qe_train.py`` that runs the module
(``sagemaker_program``, ``sagemaker_submit_directory``). S3 layout, under
``settings.s3_uri("training", <job>)``::

    train/train.parquet, validation/validation.parquet   -> /opt/ml/input/data/{train,validation}
    code/sourcedir.tar.gz                                -> the script-mode sources
    checkpoints/                                         <-> /opt/ml/checkpoints (survives interruptions)
    output/<job>/output/model.tar.gz                     <- /opt/ml/model

Spot capacity can be reclaimed at any time; SageMaker then restarts the job and restores
``/opt/ml/checkpoints`` from S3, which is why the trainer checkpoints and resumes.
``MaxWaitTimeInSeconds`` bounds waiting for capacity plus running and must be at least
``MaxRuntimeInSeconds``. The savings come from ``BillableTimeInSeconds`` vs
``TrainingTimeInSeconds`` of ``DescribeTrainingJob``; when SageMaker (or moto) leaves them out,
the report says the savings are unknown instead of guessing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import quant_engine
from quant_engine.aws.images import job_image_uri
from quant_engine.aws.processing import TERMINAL_FAILURES, JobPlan, find_job, poll_job, split_s3_uri
from quant_engine.aws.session import AwsClients
from quant_engine.config import Settings, SettingsError, env_overrides

log = logging.getLogger(__name__)

CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
ENTRY_SCRIPT = "qe_train.py"
#: Script mode also passes every hyperparameter as a ``--name value`` flag, which the trainer's own
#: flags would refuse; it reads them from ``SM_HPS``, so the entry script drops the flags.
ENTRY_SOURCE = (
    "import runpy\nimport sys\n\n"
    "sys.argv = sys.argv[:1]  # the hyperparameters arrive in SM_HPS too\n"
    'runpy.run_module("quant_engine.aws.trainer_entry", run_name="__main__", alter_sys=True)\n'
)
CHANNELS: tuple[str, ...] = ("train", "validation")
#: SageMaker's own limits on a training job.
MAX_RUNTIME_LIMIT_S = 28 * 24 * 3600
MAX_HYPERPARAMETERS = 100
MAX_HYPERPARAMETER_VALUE = 2500


class TrainingJobError(RuntimeError):
    """A training job failed, was stopped, or did not finish in time; the message says which."""


@dataclass(frozen=True)
class SpotTrainingSpec:
    """Size, image and patience of a managed spot training job.

    Parameters
    ----------
    instance_type : str
        ``ResourceConfig.InstanceType`` (``QE_TRAINING_INSTANCE_TYPE``).
    instance_count : int
        Instances (``QE_TRAINING_INSTANCE_COUNT``).
    volume_size_gb : int
        EBS volume per instance (``QE_TRAINING_VOLUME_GB``).
    max_runtime_s : int
        ``StoppingCondition.MaxRuntimeInSeconds``: training time, not counting waits for capacity
        (``QE_TRAINING_MAX_RUNTIME_S``).
    max_wait_s : int
        ``StoppingCondition.MaxWaitTimeInSeconds``: waiting for spot capacity plus training; at
        least ``max_runtime_s`` (``QE_TRAINING_MAX_WAIT_S``).
    image_uri : str, optional
        Container image (``QE_TRAINING_IMAGE_URI``); default: :func:`~quant_engine.aws.images.job_image_uri`.
    framework_version : str
        XGBoost framework image version looked up when ``image_uri`` is not given.
    poll_interval_s : int
        Seconds between ``DescribeTrainingJob`` calls while waiting (``QE_TRAINING_POLL_INTERVAL_S``).
    """

    instance_type: str = "ml.m5.xlarge"
    instance_count: int = 1
    volume_size_gb: int = 30
    max_runtime_s: int = 3600
    max_wait_s: int = 7200
    image_uri: str | None = None
    framework_version: str = "3.2-0"
    poll_interval_s: int = 30

    def __post_init__(self) -> None:
        if not isinstance(self.instance_type, str) or not self.instance_type.startswith("ml."):
            raise ValueError(f"instance_type={self.instance_type!r} is not a SageMaker instance type (ml.*)")
        for name, low, high in (
            ("instance_count", 1, 100),
            ("volume_size_gb", 1, 16384),
            ("max_runtime_s", 1, MAX_RUNTIME_LIMIT_S),
            ("max_wait_s", 1, MAX_RUNTIME_LIMIT_S),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name}={value!r} must be a whole number in [{low}, {high}]")
        if self.max_wait_s < self.max_runtime_s:
            raise ValueError(
                f"max_wait_s={self.max_wait_s} must be >= max_runtime_s={self.max_runtime_s}: managed spot's wait "
                "covers the training time plus the time spent waiting for capacity"
            )
        if not self.poll_interval_s > 0:
            raise ValueError(f"poll_interval_s={self.poll_interval_s!r} must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SpotTrainingSpec:
        """Defaults overridden by ``QE_TRAINING_*`` variables."""
        variables = {
            "instance_type": "QE_TRAINING_INSTANCE_TYPE",
            "instance_count": "QE_TRAINING_INSTANCE_COUNT",
            "volume_size_gb": "QE_TRAINING_VOLUME_GB",
            "max_runtime_s": "QE_TRAINING_MAX_RUNTIME_S",
            "max_wait_s": "QE_TRAINING_MAX_WAIT_S",
            "image_uri": "QE_TRAINING_IMAGE_URI",
            "poll_interval_s": "QE_TRAINING_POLL_INTERVAL_S",
        }
        whole = ("instance_count", "volume_size_gb", "max_runtime_s", "max_wait_s", "poll_interval_s")
        overrides: dict[str, Any] = env_overrides(env, variables, whole_numbers=whole)  # str or int by field
        return cls(**overrides)

    @property
    def wait_timeout_s(self) -> int:
        """How long to wait for a job: its stopping condition plus a quarter hour of provisioning and upload."""
        return self.max_wait_s + 900


@dataclass(frozen=True)
class StagedTraining:
    """Where a job's channels, sources, checkpoints and output live on S3."""

    base_uri: str

    def channel_uri(self, channel: str) -> str:
        return f"{self.base_uri}/{channel}"

    @property
    def code_uri(self) -> str:
        return f"{self.base_uri}/code/sourcedir.tar.gz"

    @property
    def checkpoint_uri(self) -> str:
        return f"{self.base_uri}/checkpoints"

    @property
    def output_uri(self) -> str:
        return f"{self.base_uri}/output"


def training_job_name(run_id: str, task: str = "train", attempt: int = 1) -> str:
    """The job name of ``task`` in run ``run_id`` (at most 63 characters), the same on every try.

    A retried task therefore finds its job (see :func:`run_spot_training`) instead of starting a
    second one; ``attempt`` > 1 names the job that replaces a failed or stopped one (SageMaker never
    reuses a name).

    Examples
    --------
    >>> training_job_name("manual__2026-01-02T00:00:00+00:00") == training_job_name("manual__2026-01-02T00:00:00+00:00")
    True
    >>> training_job_name("r", attempt=2).endswith("-2")
    True
    """
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt={attempt!r} must be a whole number >= 1")
    digest = hashlib.sha1(f"{run_id}\0{task}".encode()).hexdigest()[:16]
    return f"qe-train-{digest}" + (f"-{attempt}" if attempt > 1 else "")


def source_archive() -> bytes:
    """``sourcedir.tar.gz``: the ``quant_engine`` package and the script-mode entry script."""
    package = Path(quant_engine.__file__).parent
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(package.rglob("*")):
            if path.is_file() and path.suffix in (".py", ".typed") and "__pycache__" not in path.parts:
                tar.add(path, arcname=path.relative_to(package.parent).as_posix())
        entry = tarfile.TarInfo(ENTRY_SCRIPT)
        entry.size = len(ENTRY_SOURCE)
        tar.addfile(entry, io.BytesIO(ENTRY_SOURCE.encode()))
    return buffer.getvalue()


def stage_training(channels: Mapping[str, Path], job_name: str, settings: Settings, s3: Any) -> StagedTraining:
    """Upload the ``train`` and ``validation`` Parquet files and the sources for job ``job_name``."""
    missing = [c for c in CHANNELS if c not in channels]
    if missing or set(channels) - set(CHANNELS):
        raise ValueError(f"channels {sorted(channels)} must be exactly {list(CHANNELS)}")
    staged = StagedTraining(settings.s3_uri("training", job_name))
    for channel, path in channels.items():
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"channel {channel!r} file {path} does not exist; build the dataset first")
        bucket, key = split_s3_uri(staged.channel_uri(channel))
        s3.upload_file(str(path), bucket, f"{key}/{path.name}")
    bucket, key = split_s3_uri(staged.code_uri)
    s3.put_object(Bucket=bucket, Key=key, Body=source_archive())
    return staged


def encode_hyperparameters(hyperparameters: Mapping[str, Any]) -> dict[str, str]:
    """Hyperparameters as SageMaker's strings, JSON-encoded as the SageMaker SDK does for script mode.

    The framework container JSON-decodes each value back into ``SM_HPS``, so ``3`` stays a number
    and ``"hist"`` a string.
    """
    if not isinstance(hyperparameters, Mapping):
        raise ValueError(f"hyperparameters={hyperparameters!r} must be a mapping of names to values")
    if len(hyperparameters) > MAX_HYPERPARAMETERS - 4:  # 4 are taken by script mode
        raise ValueError(f"{len(hyperparameters)} hyperparameters; SageMaker takes at most {MAX_HYPERPARAMETERS}")
    encoded = {}
    for name, value in hyperparameters.items():
        if not isinstance(name, str) or not name or name.startswith("sagemaker_"):
            raise ValueError(f"hyperparameter name {name!r} must be a non-empty string not starting with 'sagemaker_'")
        if not isinstance(value, (str, int, float, bool)) or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"hyperparameter {name}={value!r} must be a string, a finite number or a boolean")
        encoded[name] = json.dumps(value)
        if len(encoded[name]) > MAX_HYPERPARAMETER_VALUE:
            raise ValueError(f"hyperparameter {name} is longer than SageMaker's {MAX_HYPERPARAMETER_VALUE} characters")
    return encoded


def training_job_request(
    name: str,
    staged: StagedTraining,
    hyperparameters: Mapping[str, Any],
    spec: SpotTrainingSpec,
    settings: Settings,
    image_uri: str,
) -> dict[str, Any]:
    """The ``CreateTrainingJob`` arguments of one managed spot job."""
    check_settings(settings)
    script_mode = {
        "sagemaker_program": ENTRY_SCRIPT,
        "sagemaker_submit_directory": staged.code_uri,
        "sagemaker_region": settings.aws_region,
        "sagemaker_container_log_level": logging.INFO,
    }
    return {
        "TrainingJobName": name,
        "AlgorithmSpecification": {"TrainingImage": image_uri, "TrainingInputMode": "File"},
        "RoleArn": settings.sagemaker_role_arn,
        "HyperParameters": {
            **encode_hyperparameters(hyperparameters),
            **{k: json.dumps(v) for k, v in script_mode.items()},
        },
        "InputDataConfig": [
            {
                "ChannelName": channel,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": staged.channel_uri(channel),
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "ContentType": "application/x-parquet",
                "InputMode": "File",
            }
            for channel in CHANNELS
        ],
        "OutputDataConfig": {"S3OutputPath": staged.output_uri},
        "ResourceConfig": {
            "InstanceType": spec.instance_type,
            "InstanceCount": spec.instance_count,
            "VolumeSizeInGB": spec.volume_size_gb,
        },
        "StoppingCondition": {
            "MaxRuntimeInSeconds": int(spec.max_runtime_s),
            "MaxWaitTimeInSeconds": int(spec.max_wait_s),
        },
        "EnableManagedSpotTraining": True,
        "CheckpointConfig": {"S3Uri": staged.checkpoint_uri, "LocalPath": CHECKPOINT_LOCAL_PATH},
        "Tags": [{"Key": "quant-engine", "Value": "training"}],
    }


def wait_for_training_job(
    client: Any,
    name: str,
    *,
    timeout_s: float,
    poll_interval_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Poll ``DescribeTrainingJob`` until the job completes (see :func:`~quant_engine.aws.processing.poll_job`)."""
    return poll_job(
        lambda: client.describe_training_job(TrainingJobName=name),
        lambda: client.stop_training_job(TrainingJobName=name),
        status_key="TrainingJobStatus",
        what=f"training job {name}",
        error=TrainingJobError,
        timeout_s=timeout_s,
        poll_interval_s=poll_interval_s,
        sleep=sleep,
        clock=clock,
    )


@dataclass(frozen=True)
class SpotSavings:
    """Billable vs training seconds of a managed spot job; None where SageMaker did not say."""

    training_s: int | None
    billable_s: int | None

    @classmethod
    def from_job(cls, job: Mapping[str, Any]) -> SpotSavings:
        return cls(job.get("TrainingTimeInSeconds"), job.get("BillableTimeInSeconds"))

    @property
    def fraction(self) -> float | None:
        """``1 - billable / training``: the share of on-demand cost saved; None when unknown."""
        if not self.training_s or self.billable_s is None:
            return None
        return 1.0 - self.billable_s / self.training_s

    def describe(self) -> str:
        if self.fraction is None:
            return (
                "managed spot savings unknown: the job description has no TrainingTimeInSeconds/BillableTimeInSeconds"
            )
        return f"managed spot saved {self.fraction:.1%}: billed {self.billable_s} s of {self.training_s} s of training"

    def to_json(self) -> dict[str, Any]:
        return {
            "training_s": self.training_s,
            "billable_s": self.billable_s,
            "savings": "unknown" if self.fraction is None else round(self.fraction, 6),
            "summary": self.describe(),
        }


def download_model(s3: Any, artifact_uri: str, destination: Path) -> Path:
    """Fetch ``model.tar.gz`` and unpack its regular files into ``destination``; returns ``model.json``.

    Members that are links or leave ``destination`` are refused, not extracted.
    """
    bucket, key = split_s3_uri(artifact_uri)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isdir():
                continue
            relative = Path(member.name)
            if not member.isfile() or relative.is_absolute() or ".." in relative.parts:
                raise TrainingJobError(f"refusing model archive member {member.name!r} of {artifact_uri}")
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            extracted = tar.extractfile(member)
            assert extracted is not None, "a regular file (member.isfile(), checked above) always extracts"
            tmp.write_bytes(extracted.read())
            tmp.replace(target)
    model = destination / "model.json"
    if not model.is_file():
        raise TrainingJobError(f"{artifact_uri} holds no model.json; the trainer writes it to SM_MODEL_DIR")
    return model


def check_settings(settings: Settings) -> Settings:
    """``settings`` if they name what a training job needs (a bucket and an execution role), else raise."""
    if not settings.s3_bucket:
        raise SettingsError("SageMaker training needs QE_S3_BUCKET for its channels, checkpoints and output")
    if not settings.sagemaker_role_arn:
        raise SettingsError("QE_SAGEMAKER_ROLE_ARN is not set; SageMaker training needs an execution role")
    return settings


def attach_or_name(sagemaker: Any, run_id: str, task: str = "train") -> tuple[str, dict[str, Any] | None]:
    """The run's job to wait for (its name and description), or the name a new job should take.

    Names are tried in order (:func:`training_job_name` with attempt 1, 2, ...): a job that is
    running or completed is re-attached to; one that failed or was stopped is passed over.
    """
    for attempt in range(1, 100):
        name = training_job_name(run_id, task, attempt)
        job = find_job(partial(sagemaker.describe_training_job, TrainingJobName=name))
        if job is None:
            return name, None
        if job["TrainingJobStatus"] not in TERMINAL_FAILURES:
            return name, job
        log.info("training job %s ended %s; its retry takes the next name", name, job["TrainingJobStatus"])
    raise TrainingJobError(f"run {run_id!r} task {task!r} already has 99 failed training jobs; giving up")


def plan_training_job(
    channels: Mapping[str, Path],
    hyperparameters: Mapping[str, Any],
    settings: Settings,
    *,
    sagemaker: Any,
    s3: Any,
    run_id: str = "manual",
    task: str = "train",
    spec: SpotTrainingSpec | None = None,
    job_name: str | None = None,
) -> JobPlan:
    """The job of ``run_id`` and ``task`` (:func:`attach_or_name`), staged and described when it is new.

    ``job_name`` pins a name instead. Nothing is uploaded for a job that exists already.
    """
    settings = check_settings(settings)
    spec = spec or SpotTrainingSpec.from_env()
    if job_name is None:
        name, existing = attach_or_name(sagemaker, run_id, task)
    else:
        name, existing = job_name, find_job(lambda: sagemaker.describe_training_job(TrainingJobName=job_name))
    if existing is not None:
        log.info("re-attaching to training job %s (%s)", name, existing["TrainingJobStatus"])
        return JobPlan(name, existing, None)
    image = job_image_uri(
        settings,
        spec.image_uri,
        framework="xgboost",
        framework_version=spec.framework_version,
        instance_type=spec.instance_type,
    )
    staged = stage_training(channels, name, settings, s3)
    return JobPlan(name, None, training_job_request(name, staged, hyperparameters, spec, settings, image))


def collect_model(job: Mapping[str, Any], destination: Path, s3: Any) -> dict[str, Any]:
    """The model of a completed job, unpacked into ``destination``, and what the job cost.

    Returns
    -------
    dict
        ``job_name``, ``model_path``, ``artifact``, ``savings`` (:meth:`SpotSavings.to_json`) and
        ``billing`` (the summary line).
    """
    if job.get("TrainingJobStatus") != "Completed":
        raise TrainingJobError(
            f"training job {job.get('TrainingJobName')} is {job.get('TrainingJobStatus')}, not Completed"
        )
    artifact = job["ModelArtifacts"]["S3ModelArtifacts"]
    model_path = download_model(s3, artifact, Path(destination))
    savings = SpotSavings.from_job(job)
    log.info("training job %s completed; %s", job["TrainingJobName"], savings.describe())
    return {
        "job_name": job["TrainingJobName"],
        "model_path": str(model_path),
        "artifact": artifact,
        "savings": savings.to_json(),
        "billing": savings.describe(),
    }


def run_spot_training(
    channels: Mapping[str, Path],
    destination: Path,
    hyperparameters: Mapping[str, Any],
    settings: Settings,
    *,
    sagemaker: Any,
    s3: Any,
    run_id: str = "manual",
    task: str = "train",
    spec: SpotTrainingSpec | None = None,
    job_name: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Stage, start, wait for and collect one managed spot job; the model lands in ``destination``.

    The job is named after ``run_id`` and ``task`` (:func:`training_job_name`), so a retried task
    re-attaches to a job that is running or completed instead of starting another
    (:func:`plan_training_job`). Inside Airflow the provider's operator waits instead
    (``plugins/qe_sagemaker.py``); this polling wait serves the command line.

    Returns
    -------
    dict
        :func:`collect_model`'s, and ``reattached`` (whether the job existed already).
    """
    spec = spec or SpotTrainingSpec.from_env()
    plan = plan_training_job(
        channels,
        hyperparameters,
        settings,
        sagemaker=sagemaker,
        s3=s3,
        run_id=run_id,
        task=task,
        spec=spec,
        job_name=job_name,
    )
    if plan.request is not None:
        sagemaker.create_training_job(**plan.request)
        log.info(
            "started managed spot training job %s (%s, max run %d s, max wait %d s)",
            plan.name,
            spec.instance_type,
            spec.max_runtime_s,
            spec.max_wait_s,
        )
    job = wait_for_training_job(
        sagemaker, plan.name, timeout_s=spec.wait_timeout_s, poll_interval_s=spec.poll_interval_s, sleep=sleep
    )
    return {**collect_model(job, destination, s3), "reattached": plan.existing is not None}


class SpotTrainingJobs:
    """Managed spot training jobs with one session's clients: the training pipeline's ``TrainingJobs``.

    Parameters
    ----------
    settings : Settings
        The bucket, the execution role and the region.
    aws : AwsClients
        The clients (``sagemaker``, ``s3``) of one session.
    spec : SpotTrainingSpec, optional
        Default: :meth:`SpotTrainingSpec.from_env`.
    """

    def __init__(self, settings: Settings, aws: AwsClients, spec: SpotTrainingSpec | None = None) -> None:
        self.settings = settings
        self.aws = aws
        self.spec = spec

    def check(self, hyperparameters: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` (``SettingsError``) when a job could not be started: no bucket or role,
        a bad ``QE_TRAINING_*`` value, hyperparameters SageMaker refuses."""
        check_settings(self.settings)
        self.job_spec  # noqa: B018  (reading it validates the QE_TRAINING_* values)
        encode_hyperparameters(hyperparameters)

    @property
    def job_spec(self) -> SpotTrainingSpec:
        """The spec given, else the one ``QE_TRAINING_*`` variables describe now."""
        return self.spec or SpotTrainingSpec.from_env()

    def run(
        self, channels: Mapping[str, Any], destination: Path, hyperparameters: Mapping[str, Any], *, run_id: str
    ) -> dict[str, Any]:
        return run_spot_training(
            {k: Path(v) for k, v in channels.items()},
            destination,
            hyperparameters,
            self.settings,
            sagemaker=self.aws.client("sagemaker"),
            s3=self.aws.client("s3"),
            run_id=run_id,
            spec=self.spec,
        )

    def plan(self, channels: Mapping[str, Any], hyperparameters: Mapping[str, Any], *, run_id: str) -> JobPlan:
        """The run's job to re-attach to, or the staged request of a new one (:func:`plan_training_job`)."""
        return plan_training_job(
            {k: Path(v) for k, v in channels.items()},
            hyperparameters,
            self.settings,
            sagemaker=self.aws.client("sagemaker"),
            s3=self.aws.client("s3"),
            run_id=run_id,
            spec=self.spec,
        )

    def collect(self, job: Mapping[str, Any], destination: Path) -> dict[str, Any]:
        """The completed ``job``'s model in ``destination`` (:func:`collect_model`)."""
        return collect_model(job, destination, self.aws.client("s3"))
