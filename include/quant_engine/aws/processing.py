"""SageMaker Processing for walk-forward splits: stage a run on S3, run jobs, collect the predictions.

A job runs :mod:`quant_engine.wfo.processing_entry` (script mode) in a SageMaker job image, so
the model code in the container is the same :func:`~quant_engine.wfo.runner.run_split` a local
task runs; :class:`SageMakerFits` is the walk-forward's fit runner on the aws backend. S3 layout,
under ``settings.s3_uri("wfo", <run>)``::

    input/    config.json, plan.json, dataset.parquet, splits/   -> /opt/ml/processing/input
    code/     the quant_engine package sources                   -> /opt/ml/processing/code (PYTHONPATH)
    output/<job>/predictions/trial=<t>/split=<s>.parquet         <- /opt/ml/processing/output

The image is the engine's job image (``QE_SAGEMAKER_IMAGE_URI``, built from
``docker/sagemaker/Dockerfile``) unless ``QE_PROCESSING_IMAGE_URI`` names another; SageMaker's
XGBoost framework image only where its Python is 3.11 (:mod:`quant_engine.aws.images`). The staged
sources come first on ``PYTHONPATH``, so the job runs the submitting checkout's code in any of them.
The job size comes from ``QE_PROCESSING_*`` variables (:meth:`ProcessingSpec.from_env`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

import quant_engine
from quant_engine.aws.images import job_image_uri
from quant_engine.aws.session import AwsClients
from quant_engine.config import Settings, SettingsError, env_overrides
from quant_engine.wfo.processing_entry import PROCESSING_INPUT, PROCESSING_OUTPUT, format_tasks
from quant_engine.wfo.run_folder import prediction_path

log = logging.getLogger(__name__)

PROCESSING_CODE = "/opt/ml/processing/code"
ENTRY_POINT: tuple[str, ...] = ("python3", "-m", "quant_engine.wfo.processing_entry")
#: Run-folder files a job reads; predictions and reports stay out of the upload.
STAGED_FILES: tuple[str, ...] = ("config.json", "plan.json", "dataset.parquet")
STAGED_DIRS: tuple[str, ...] = ("splits",)
#: SageMaker limits an environment value to 256 characters.
MAX_ENV_VALUE = 256
TERMINAL_FAILURES: tuple[str, ...] = ("Failed", "Stopped")


class ProcessingJobError(RuntimeError):
    """A Processing job failed, was stopped, or did not finish in time; the message says which."""


@dataclass(frozen=True)
class ProcessingSpec:
    """Size, image and patience of a Processing job.

    Parameters
    ----------
    instance_type : str
        ``ProcessingResources.ClusterConfig.InstanceType`` (``QE_PROCESSING_INSTANCE_TYPE``).
    instance_count : int
        Instances; the entry point gives each one every ``n``-th task (``QE_PROCESSING_INSTANCE_COUNT``).
    volume_size_gb : int
        EBS volume per instance (``QE_PROCESSING_VOLUME_GB``).
    max_runtime_s : int
        ``StoppingCondition.MaxRuntimeInSeconds`` (``QE_PROCESSING_MAX_RUNTIME_S``).
    image_uri : str, optional
        Container image (``QE_PROCESSING_IMAGE_URI``); default: :func:`~quant_engine.aws.images.job_image_uri`.
    framework, framework_version : str
        The framework image to look up when ``image_uri`` is not given.
    poll_interval_s : int
        Seconds between ``DescribeProcessingJob`` calls while waiting (``QE_PROCESSING_POLL_INTERVAL_S``).
    """

    instance_type: str = "ml.m5.xlarge"
    instance_count: int = 1
    volume_size_gb: int = 30
    max_runtime_s: int = 3600
    image_uri: str | None = None
    framework: str = "xgboost"
    framework_version: str = "3.2-0"
    poll_interval_s: int = 30

    def __post_init__(self) -> None:
        if not self.instance_type.startswith("ml."):
            raise ValueError(f"instance_type={self.instance_type!r} is not a SageMaker instance type (ml.*)")
        for name, low, high in (("instance_count", 1, 100), ("volume_size_gb", 1, 16384), ("max_runtime_s", 1, 432000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name}={value!r} must be a whole number in [{low}, {high}]")
        if not self.poll_interval_s > 0:
            raise ValueError(f"poll_interval_s={self.poll_interval_s!r} must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProcessingSpec:
        """Defaults overridden by ``QE_PROCESSING_*`` variables."""
        variables = {
            "instance_type": "QE_PROCESSING_INSTANCE_TYPE",
            "instance_count": "QE_PROCESSING_INSTANCE_COUNT",
            "volume_size_gb": "QE_PROCESSING_VOLUME_GB",
            "max_runtime_s": "QE_PROCESSING_MAX_RUNTIME_S",
            "image_uri": "QE_PROCESSING_IMAGE_URI",
            "poll_interval_s": "QE_PROCESSING_POLL_INTERVAL_S",
        }
        whole = ("instance_count", "volume_size_gb", "max_runtime_s", "poll_interval_s")
        overrides: dict[str, Any] = env_overrides(env, variables, whole_numbers=whole)  # str or int by field
        return cls(**overrides)

    @property
    def wait_timeout_s(self) -> int:
        """How long to wait for a job: its stopping condition plus a quarter hour of provisioning and upload."""
        return self.max_runtime_s + 900


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``("bucket", "key")``.

    Examples
    --------
    >>> split_s3_uri("s3://b/wfo/run/input")
    ('b', 'wfo/run/input')
    """
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key.strip("/")


@dataclass(frozen=True)
class StagedRun:
    """Where a run folder's job inputs and outputs live on S3."""

    input_uri: str
    code_uri: str
    output_uri: str

    @classmethod
    def for_run(cls, run_dir: Path, settings: Settings) -> StagedRun:
        base = settings.s3_uri("wfo", Path(run_dir).name)
        return cls(f"{base}/input", f"{base}/code", f"{base}/output")


def _upload_tree(s3: Any, files: Sequence[tuple[Path, str]], uri: str) -> int:
    bucket, prefix = split_s3_uri(uri)
    for path, relative in files:
        s3.upload_file(str(path), bucket, f"{prefix}/{relative}")
    return len(files)


def stage_run(run_dir: Path, settings: Settings, s3: Any) -> StagedRun:
    """Upload the planned run folder and the package sources a job needs (``s3``: a boto3 S3 client)."""
    run_dir = Path(run_dir)
    staged = StagedRun.for_run(run_dir, settings)
    missing = [name for name in STAGED_FILES if not (run_dir / name).exists()]
    if missing:
        raise FileNotFoundError(f"{run_dir} lacks {missing}; build the dataset and the plan before staging")
    inputs = [(run_dir / name, name) for name in STAGED_FILES]
    for folder in STAGED_DIRS:
        inputs += [(p, p.relative_to(run_dir).as_posix()) for p in sorted((run_dir / folder).rglob("*")) if p.is_file()]
    package = Path(quant_engine.__file__).parent
    code = [
        (p, p.relative_to(package.parent).as_posix())
        for p in sorted(package.rglob("*"))
        if p.is_file() and p.suffix in (".py", ".typed") and "__pycache__" not in p.parts
    ]
    n_inputs = _upload_tree(s3, inputs, staged.input_uri)
    n_code = _upload_tree(s3, code, staged.code_uri)
    log.info("staged %d run files at %s and %d source files at %s", n_inputs, staged.input_uri, n_code, staged.code_uri)
    return staged


def job_name(run_dir: Path, tasks: Sequence[tuple[int, int]] | None, attempt: int = 1) -> str:
    """The job name (at most 63 characters) of ``tasks`` of a run, the same on every try.

    A digest of the run folder's name and of the tasks, and what the job runs (``t<trial>-s<split>``,
    ``t<trial>-n<count>`` for splits of one trial, ``n<count>``, ``all``), so a retried task finds
    its job instead of starting another; ``attempt`` > 1 names the job that replaces a failed one.
    """
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt={attempt!r} must be a whole number >= 1")
    listed = "all" if tasks is None else format_tasks(tasks)
    digest = hashlib.sha1(f"{Path(run_dir).name}\0{listed}".encode()).hexdigest()[:12]
    if tasks is None:
        what = "all"
    elif len(tasks) == 1:
        what = f"t{tasks[0][0]}-s{tasks[0][1]}"
    elif len({t for t, _ in tasks}) == 1:
        what = f"t{tasks[0][0]}-n{len(tasks)}"
    else:
        what = f"n{len(tasks)}"
    suffix = f"-{attempt}" if attempt > 1 else ""
    return f"qe-wfo-{digest}-{what}"[: 63 - len(suffix)] + suffix


def attach_or_name(
    sagemaker: Any, run_dir: Path, tasks: Sequence[tuple[int, int]] | None
) -> tuple[str, dict[str, Any] | None]:
    """The job of ``tasks`` to wait for (its name and description), or the name a new job should take.

    Names are tried in order (:func:`job_name` with attempt 1, 2, ...): a job that is running or
    completed is re-attached to; one that failed or was stopped is passed over.
    """
    for attempt in range(1, 100):
        name = job_name(run_dir, tasks, attempt)
        job = find_job(partial(sagemaker.describe_processing_job, ProcessingJobName=name))
        if job is None:
            return name, None
        if job["ProcessingJobStatus"] not in TERMINAL_FAILURES:
            return name, job
        log.info("Processing job %s ended %s; its retry takes the next name", name, job["ProcessingJobStatus"])
    raise ProcessingJobError(f"{Path(run_dir).name} already has 99 failed Processing jobs for these tasks")


def processing_job_request(
    name: str,
    staged: StagedRun,
    tasks: Sequence[tuple[int, int]] | None,
    spec: ProcessingSpec,
    settings: Settings,
    image_uri: str,
) -> dict[str, Any]:
    """The ``CreateProcessingJob`` arguments of one job running ``tasks`` (``None``: every task)."""
    if not settings.sagemaker_role_arn:
        raise SettingsError("QE_SAGEMAKER_ROLE_ARN is not set; SageMaker Processing needs an execution role")
    environment = {"PYTHONPATH": PROCESSING_CODE, "PYTHONUNBUFFERED": "1"}
    if tasks:
        listed = format_tasks(tasks)
        if len(listed) > MAX_ENV_VALUE:
            raise ValueError(
                f"{len(tasks)} tasks do not fit SageMaker's {MAX_ENV_VALUE}-character environment value; "
                "run fewer tasks per job, or all of them (tasks=None)"
            )
        environment["QE_WFO_TASKS"] = listed

    def s3_input(input_name: str, uri: str, local_path: str) -> dict[str, Any]:
        return {
            "InputName": input_name,
            "S3Input": {
                "S3Uri": uri,
                "LocalPath": local_path,
                "S3DataType": "S3Prefix",
                "S3InputMode": "File",
                "S3DataDistributionType": "FullyReplicated",
            },
        }

    return {
        "ProcessingJobName": name,
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": spec.instance_count,
                "InstanceType": spec.instance_type,
                "VolumeSizeInGB": spec.volume_size_gb,
            }
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": spec.max_runtime_s},
        "AppSpecification": {"ImageUri": image_uri, "ContainerEntrypoint": list(ENTRY_POINT)},
        "Environment": environment,
        "ProcessingInputs": [
            s3_input("run", staged.input_uri, PROCESSING_INPUT),
            s3_input("code", staged.code_uri, PROCESSING_CODE),
        ],
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": "predictions",
                    "S3Output": {
                        "S3Uri": f"{staged.output_uri}/{name}",
                        "LocalPath": PROCESSING_OUTPUT,
                        "S3UploadMode": "EndOfJob",
                    },
                }
            ]
        },
        "RoleArn": settings.sagemaker_role_arn,
        "Tags": [{"Key": "quant-engine", "Value": "wfo"}],
    }


def find_job(describe: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """A SageMaker description (a job's, an endpoint's), or None when SageMaker knows none of that
    name (``ValidationException``)."""
    try:
        return describe()
    except ClientError as exc:
        error = exc.response.get("Error", {})
        message = str(error.get("Message", "")).lower()
        if error.get("Code") == "ValidationException" and ("not found" in message or "could not find" in message):
            return None
        raise


def poll_job(
    describe: Callable[[], dict[str, Any]],
    stop: Callable[[], object],
    *,
    status_key: str,
    what: str,
    error: type[Exception],
    timeout_s: float,
    poll_interval_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Poll a SageMaker job's description until it completes; stop it and raise if it takes too long.

    Shared by Processing and training jobs, whose describe/stop calls differ only in name.

    Raises
    ------
    error
        The job failed or was stopped (with SageMaker's ``FailureReason``), or ``timeout_s`` passed.
    """
    deadline = clock() + timeout_s
    while True:
        job = describe()
        status = job[status_key]
        if status == "Completed":
            return job
        if status in TERMINAL_FAILURES:
            reason = job.get("FailureReason") or job.get("ExitMessage") or "no reason given"
            raise error(f"{what} ended {status}: {reason}")
        if clock() >= deadline:
            stop()
            raise error(f"{what} still {status} after {timeout_s:.0f} s; asked it to stop")
        log.info("%s: %s %s", what, status, job.get("SecondaryStatus", ""))
        sleep(poll_interval_s)


def wait_for_job(
    client: Any,
    name: str,
    *,
    timeout_s: float,
    poll_interval_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Poll ``DescribeProcessingJob`` until the job completes (see :func:`poll_job`)."""
    return poll_job(
        lambda: client.describe_processing_job(ProcessingJobName=name),
        lambda: client.stop_processing_job(ProcessingJobName=name),
        status_key="ProcessingJobStatus",
        what=f"Processing job {name}",
        error=ProcessingJobError,
        timeout_s=timeout_s,
        poll_interval_s=poll_interval_s,
        sleep=sleep,
        clock=clock,
    )


def collect_outputs(s3: Any, output_uri: str, destination: Path) -> list[Path]:
    """Download every object under ``output_uri`` into ``destination``, keeping relative paths.

    Each file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    bucket, prefix = split_s3_uri(output_uri)
    written = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for item in page.get("Contents", []):
            relative = item["Key"][len(prefix) + 1 :]
            target = Path(destination) / relative
            if ".." in Path(relative).parts:
                raise ProcessingJobError(f"refusing output key {item['Key']!r} that leaves {destination}")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            s3.download_file(bucket, item["Key"], str(tmp))
            tmp.replace(target)
            written.append(target)
    return written


@dataclass(frozen=True)
class JobPlan:
    """A SageMaker job to re-attach to (``existing``, its description) or to start (``request``, the
    ``Create*Job`` arguments, its inputs already staged): Processing and training jobs alike."""

    name: str
    existing: dict[str, Any] | None
    request: dict[str, Any] | None


def plan_processing_job(
    run_dir: Path,
    tasks: Sequence[tuple[int, int]] | None,
    settings: Settings,
    *,
    sagemaker: Any,
    spec: ProcessingSpec | None = None,
) -> JobPlan:
    """The job of ``tasks`` of a staged run (``None``: all), found (:func:`attach_or_name`) or described."""
    spec = spec or ProcessingSpec.from_env()
    name, existing = attach_or_name(sagemaker, run_dir, tasks)
    if existing is not None:
        log.info("re-attaching to Processing job %s (%s)", name, existing["ProcessingJobStatus"])
        return JobPlan(name, existing, None)
    image = job_image_uri(
        settings,
        spec.image_uri,
        framework=spec.framework,
        framework_version=spec.framework_version,
        instance_type=spec.instance_type,
    )
    request = processing_job_request(name, StagedRun.for_run(run_dir, settings), tasks, spec, settings, image)
    return JobPlan(name, None, request)


def collect_predictions(
    run_dir: Path, tasks: Sequence[tuple[int, int]], job_name: str, settings: Settings, s3: Any
) -> list[dict[str, Any]]:
    """Fetch the predictions job ``job_name`` wrote into the run folder, one result per task.

    Raises
    ------
    ProcessingJobError
        The job left out a task's predictions.
    """
    files = collect_outputs(s3, f"{StagedRun.for_run(run_dir, settings).output_uri}/{job_name}", Path(run_dir))
    log.info("Processing job %s: collected %d files", job_name, len(files))
    results = []
    for trial_id, split_id in tasks:
        path = prediction_path(run_dir, trial_id, split_id)
        if not path.exists():
            raise ProcessingJobError(f"Processing job {job_name} finished without writing {path.relative_to(run_dir)}")
        results.append({"trial_id": trial_id, "split_id": split_id, "path": str(path)})
    return results


def run_tasks_on_sagemaker(
    run_dir: Path,
    tasks: Sequence[tuple[int, int]],
    settings: Settings,
    *,
    sagemaker: Any,
    s3: Any,
    spec: ProcessingSpec | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict[str, Any]]:
    """Run ``tasks`` of a staged run as one Processing job (or re-attach to it) and fetch its predictions.

    The predictions land in the run folder where a local task would have written them. Inside
    Airflow the provider's operator waits instead (``plugins/qe_sagemaker.py``).

    Returns
    -------
    list of dict
        ``trial_id``, ``split_id`` and ``path`` of each task's predictions.
    """
    spec = spec or ProcessingSpec.from_env()
    plan = plan_processing_job(run_dir, tasks, settings, sagemaker=sagemaker, spec=spec)
    if plan.request is not None:
        sagemaker.create_processing_job(**plan.request)
        log.info("started Processing job %s (%s x%d)", plan.name, spec.instance_type, spec.instance_count)
    wait_for_job(sagemaker, plan.name, timeout_s=spec.wait_timeout_s, poll_interval_s=spec.poll_interval_s, sleep=sleep)
    return collect_predictions(run_dir, tasks, plan.name, settings, s3)


class SageMakerFits:
    """The walk-forward's fit runner on the aws backend: the run folder staged on S3, fits as Processing jobs.

    Satisfies :class:`quant_engine.wfo.runner.FitRunner`; the predictions land in the run folder
    where a local fit would have written them.
    """

    def __init__(
        self,
        settings: Settings,
        clients: AwsClients,
        *,
        spec: ProcessingSpec | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings, self.clients, self.spec, self.sleep = settings, clients, spec, sleep

    def prepare(self, run_dir: Path) -> None:
        stage_run(run_dir, self.settings, self.clients.client("s3"))

    def batches(self, tasks: Sequence[tuple[int, int]], chunk: int = 1) -> list[list[tuple[int, int]]]:
        """The fits packed into Processing jobs as ``QE_PROCESSING_BATCH`` says: one job per trial (its
        splits together, so 60 fits of 10 trials cost 10 job start-ups) or one per ``(trial, split)``;
        ``chunk`` does not apply (a job's start-up, not the task's, is what batching saves here)."""
        pairs = [(int(t), int(s)) for t, s in tasks]
        if self.settings.processing_batch == "split":
            return [[pair] for pair in pairs]
        by_trial: dict[int, list[tuple[int, int]]] = {}
        for trial_id, split_id in pairs:
            by_trial.setdefault(trial_id, []).append((trial_id, split_id))
        return list(by_trial.values())

    def run(self, run_dir: Path, tasks: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        return run_tasks_on_sagemaker(
            run_dir,
            [(int(t), int(s)) for t, s in tasks],
            self.settings,
            sagemaker=self.clients.client("sagemaker"),
            s3=self.clients.client("s3"),
            spec=self.spec,
            sleep=self.sleep,
        )

    @property
    def job_spec(self) -> ProcessingSpec:
        """The spec given, else the one ``QE_PROCESSING_*`` variables describe now."""
        return self.spec or ProcessingSpec.from_env()

    def plan(self, run_dir: Path, tasks: Sequence[tuple[int, int]]) -> JobPlan:
        """The job of ``tasks`` to re-attach to, or the request of a new one (:func:`plan_processing_job`)."""
        return plan_processing_job(
            run_dir, tasks, self.settings, sagemaker=self.clients.client("sagemaker"), spec=self.job_spec
        )

    def collect(self, run_dir: Path, tasks: Sequence[tuple[int, int]], job_name: str) -> list[dict[str, Any]]:
        """The predictions of completed job ``job_name`` in the run folder (:func:`collect_predictions`)."""
        return collect_predictions(run_dir, tasks, job_name, self.settings, self.clients.client("s3"))
