"""SageMaker Processing: the job request, waiting, collecting from S3, and the entry point run locally.

moto accepts ``CreateProcessingJob`` and reports the job ``Completed`` at once, but runs nothing.
The fake container below fills that gap: a hook on the create call does what SageMaker would -
downloads the job's S3 inputs, runs ``processing_entry`` with the job's environment, and uploads
its output folder to the job's S3 output - so a test sees the whole round trip.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import boto3
import pandas as pd
import pytest
from moto import mock_aws

from quant_engine.aws.images import framework_image_uri
from quant_engine.aws.processing import (
    ENTRY_POINT,
    PROCESSING_CODE,
    ProcessingJobError,
    ProcessingSpec,
    SageMakerFits,
    StagedRun,
    collect_outputs,
    job_name,
    processing_job_request,
    run_tasks_on_sagemaker,
    split_s3_uri,
    stage_run,
    wait_for_job,
)
from quant_engine.aws.session import AwsClients
from quant_engine.backends import make_bar_store, make_group_stores, make_offline_store, make_wfo_fits
from quant_engine.config import Settings, SettingsError
from quant_engine.features.ingest import IngestionRequest, ingest
from quant_engine.wfo import processing_entry
from quant_engine.wfo.config import WfoConfig
from quant_engine.wfo.dataset import build_dataset
from quant_engine.wfo.plan import plan
from quant_engine.wfo.run_folder import prediction_path
from quant_engine.wfo.runner import LocalFits, run_split

BUCKET = "qe-processing"
ROLE = "arn:aws:iam::123456789012:role/qe-sagemaker"
JOB_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/quant-engine-job:0.1.0"
PARAMS = {
    "start": "2021-01-01",
    "end": "2021-12-31",
    "n_groups": 3,
    "n_test_groups": 1,
    "embargo": 2,
    "min_group_rows": 50,
    "trials": [{"max_depth": 2, "n_estimators": 5}, {"max_depth": 3, "n_estimators": 5}],
}


@pytest.fixture(scope="module")
def planned_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A planned run folder (2 tickers, 2021, 3 splits x 2 trials), built with the local backend."""
    home = tmp_path_factory.mktemp("processing_home")
    settings = Settings(home=home)
    ingest(
        IngestionRequest.build(
            "synthetic", "2021-01-01", "2021-12-31", tickers=["SYN03", "SYN04"], group=make_offline_store()
        ),
        make_group_stores(settings),
    )
    run = home / "runs" / "wfo" / "manual__2026-01-01"
    build_dataset(WfoConfig.from_params(PARAMS), run, make_offline_store(settings), make_bar_store(settings))
    plan(run)
    return run


@pytest.fixture
def aws_settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path,
        backend="aws",
        aws_region="us-east-1",
        s3_bucket=BUCKET,
        s3_prefix="qe",
        sagemaker_role_arn=ROLE,
        sagemaker_image_uri=JOB_IMAGE,
    )


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def _download_prefix(s3, uri: str, target: Path) -> None:
    bucket, prefix = split_s3_uri(uri)
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", []):
        path = target / item["Key"][len(prefix) + 1 :]
        path.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, item["Key"], str(path))


def fake_container(s3, workdir: Path, seen: list[dict]):
    """A ``before-parameter-build`` hook that plays the Processing container for each job created."""

    def run_job(params: dict, **_: object) -> None:
        seen.append(params)
        job = workdir / params["ProcessingJobName"]
        inputs = {i["InputName"]: i["S3Input"] for i in params["ProcessingInputs"]}
        _download_prefix(s3, inputs["run"]["S3Uri"], job / "input")
        _download_prefix(s3, inputs["code"]["S3Uri"], job / "code")
        assert (job / "code" / "quant_engine" / "wfo" / "processing_entry.py").exists()
        output = params["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]
        env = {
            **params["Environment"],
            "QE_PROCESSING_INPUT": str(job / "input"),
            "QE_PROCESSING_OUTPUT": str(job / "output"),
        }
        assert processing_entry.main(env) == 0
        bucket, prefix = split_s3_uri(output["S3Uri"])
        for path in sorted((job / "output").rglob("*.parquet")):
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(job / 'output').as_posix()}")

    return lambda **kwargs: run_job(kwargs["params"]) if kwargs["model"].name == "CreateProcessingJob" else None


def test_framework_image_is_sagemakers_xgboost_image_for_the_region() -> None:
    assert framework_image_uri("us-east-1") == "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:3.2-0"
    assert framework_image_uri("eu-west-1").startswith(
        "141502667606.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-xgboost:"
    )


def test_job_request_has_image_cluster_io_and_role(aws_settings: Settings) -> None:
    staged = StagedRun.for_run(Path("/x/runs/wfo/manual__1"), aws_settings)
    spec = ProcessingSpec(instance_type="ml.c5.2xlarge", instance_count=2, volume_size_gb=50, max_runtime_s=1800)
    request = processing_job_request("job-1", staged, [(0, 1), (1, 2)], spec, aws_settings, "img:1")
    assert request["ProcessingResources"]["ClusterConfig"] == {
        "InstanceCount": 2,
        "InstanceType": "ml.c5.2xlarge",
        "VolumeSizeInGB": 50,
    }
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 1800}
    assert request["AppSpecification"] == {"ImageUri": "img:1", "ContainerEntrypoint": list(ENTRY_POINT)}
    assert request["Environment"]["QE_WFO_TASKS"] == "0:1,1:2"
    assert request["Environment"]["PYTHONPATH"] == PROCESSING_CODE
    inputs = {i["InputName"]: i["S3Input"] for i in request["ProcessingInputs"]}
    assert inputs["run"]["S3Uri"] == f"s3://{BUCKET}/qe/wfo/manual__1/input"
    assert inputs["run"]["LocalPath"] == "/opt/ml/processing/input"
    assert inputs["code"]["S3Uri"] == f"s3://{BUCKET}/qe/wfo/manual__1/code"
    (output,) = request["ProcessingOutputConfig"]["Outputs"]
    assert output["S3Output"]["S3Uri"] == f"s3://{BUCKET}/qe/wfo/manual__1/output/job-1"
    assert output["S3Output"]["LocalPath"] == "/opt/ml/processing/output"
    assert request["RoleArn"] == ROLE


def test_job_request_needs_a_role_and_short_task_lists(aws_settings: Settings) -> None:
    staged = StagedRun.for_run(Path("r"), aws_settings)
    no_role = Settings(home=aws_settings.home, backend="aws", s3_bucket=BUCKET)
    with pytest.raises(SettingsError, match="QE_SAGEMAKER_ROLE_ARN is not set"):
        processing_job_request("j", staged, None, ProcessingSpec(), no_role, "img")
    with pytest.raises(ValueError, match="do not fit SageMaker's 256-character environment value"):
        processing_job_request(
            "j", staged, [(t, s) for t in range(10) for s in range(15)], ProcessingSpec(), aws_settings, "img"
        )
    assert (
        "QE_WFO_TASKS"
        not in processing_job_request("j", staged, None, ProcessingSpec(), aws_settings, "img")["Environment"]
    )


def test_job_names_are_deterministic_valid_and_distinct_per_attempt() -> None:
    run = Path("runs/wfo/manual__2026-01-01T00:00:00+00:00")
    first = job_name(run, [(3, 14)])
    assert first.startswith("qe-wfo-") and first.endswith("-t3-s14") and len(first) <= 63
    assert first == job_name(run, [(3, 14)])  # a retried task finds its job by name
    assert first != job_name(run, [(3, 15)]) and first != job_name(Path("runs/wfo/other"), [(3, 14)])
    assert job_name(run, [(3, 14)], attempt=2) == first + "-2"
    assert job_name(Path("r"), None).endswith("-all")
    assert job_name(Path("r"), [(0, 1), (0, 2)]).endswith("-t0-n2")
    assert job_name(Path("r"), [(0, 1), (1, 2)]).endswith("-n2")
    with pytest.raises(ValueError, match="attempt=0 must be a whole number >= 1"):
        job_name(run, [(3, 14)], attempt=0)


def test_spec_from_env_and_its_checks() -> None:
    spec = ProcessingSpec.from_env(
        {
            "QE_PROCESSING_INSTANCE_TYPE": "ml.c5.xlarge",
            "QE_PROCESSING_INSTANCE_COUNT": "3",
            "QE_PROCESSING_IMAGE_URI": "my/image:1",
        }
    )
    assert (spec.instance_type, spec.instance_count, spec.image_uri) == ("ml.c5.xlarge", 3, "my/image:1")
    with pytest.raises(SettingsError, match="QE_PROCESSING_VOLUME_GB='big' is not a whole number"):
        ProcessingSpec.from_env({"QE_PROCESSING_VOLUME_GB": "big"})
    with pytest.raises(ValueError, match="instance_type='c5.xlarge' is not a SageMaker instance type"):
        ProcessingSpec(instance_type="c5.xlarge")
    with pytest.raises(ValueError, match="instance_count=0 must be a whole number"):
        ProcessingSpec(instance_count=0)


class FakeSageMaker:
    def __init__(self, statuses: list[str], reason: str = "") -> None:
        self.statuses, self.reason, self.stopped = list(statuses), reason, []

    def describe_processing_job(self, ProcessingJobName: str) -> dict:  # noqa: N803 - boto3's argument name
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return {"ProcessingJobStatus": status, "FailureReason": self.reason}

    def stop_processing_job(self, ProcessingJobName: str) -> None:  # noqa: N803
        self.stopped.append(ProcessingJobName)


def test_wait_polls_until_completed() -> None:
    sleeps: list[float] = []
    client = FakeSageMaker(["InProgress", "InProgress", "Completed"])
    job = wait_for_job(client, "j", timeout_s=100, poll_interval_s=7, sleep=sleeps.append, clock=lambda: 0.0)
    assert job["ProcessingJobStatus"] == "Completed" and sleeps == [7, 7]


def test_wait_raises_with_sagemakers_reason() -> None:
    client = FakeSageMaker(["InProgress", "Failed"], reason="AlgorithmError: ImportError: pyarrow")
    with pytest.raises(ProcessingJobError, match="ended Failed: AlgorithmError: ImportError: pyarrow"):
        wait_for_job(client, "j", timeout_s=100, poll_interval_s=1, sleep=lambda _: None, clock=lambda: 0.0)


def test_wait_stops_a_job_that_runs_too_long() -> None:
    ticks = iter([0.0, 5.0, 11.0])
    client = FakeSageMaker(["InProgress"])
    with pytest.raises(ProcessingJobError, match="still InProgress after 10 s; asked it to stop"):
        wait_for_job(client, "j", timeout_s=10, poll_interval_s=1, sleep=lambda _: None, clock=lambda: next(ticks))
    assert client.stopped == ["j"]


def test_stage_run_uploads_run_files_and_package(planned_run: Path, aws_settings: Settings, s3) -> None:
    staged = stage_run(planned_run, aws_settings, s3=s3)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="qe/")["Contents"]}
    base = f"qe/wfo/{planned_run.name}"
    assert {f"{base}/input/{name}" for name in ("config.json", "plan.json", "dataset.parquet")} <= keys
    assert {f"{base}/input/splits/split={s}.npz" for s in range(3)} <= keys
    assert f"{base}/code/quant_engine/wfo/pipeline.py" in keys
    assert not any(k.startswith(f"{base}/input/predictions") or "__pycache__" in k for k in keys)
    assert staged.output_uri == f"s3://{BUCKET}/{base}/output"


def test_collect_outputs_downloads_what_the_job_wrote(s3, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key="qe/out/job/predictions/trial=0/split=1.parquet", Body=b"one")
    s3.put_object(Bucket=BUCKET, Key="qe/out/job/predictions/trial=1/split=0.parquet", Body=b"two")
    s3.put_object(Bucket=BUCKET, Key="qe/out/jobber/other.parquet", Body=b"not mine")
    files = collect_outputs(s3, f"s3://{BUCKET}/qe/out/job", tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in files) == [
        "predictions/trial=0/split=1.parquet",
        "predictions/trial=1/split=0.parquet",
    ]
    assert (tmp_path / "predictions/trial=1/split=0.parquet").read_bytes() == b"two"
    assert not list(tmp_path.rglob(".*.tmp"))


def copy_run(planned_run: Path, parent: Path) -> Path:
    """A private copy of the planned run folder, so a test's predictions stay its own."""
    run = parent / planned_run.name
    (run / "splits").mkdir(parents=True)
    for name in ("config.json", "plan.json", "dataset.parquet"):
        (run / name).write_bytes((planned_run / name).read_bytes())
    for path in (planned_run / "splits").iterdir():
        (run / "splits" / path.name).write_bytes(path.read_bytes())
    return run


def test_a_task_runs_as_a_processing_job_and_its_predictions_come_back(
    planned_run: Path, aws_settings: Settings, s3, tmp_path: Path
) -> None:
    run = copy_run(planned_run, tmp_path)
    sagemaker = boto3.client("sagemaker", region_name="us-east-1")
    seen: list[dict] = []
    sagemaker.meta.events.register(
        "before-parameter-build.sagemaker.CreateProcessingJob", fake_container(s3, tmp_path / "container", seen)
    )
    stage_run(run, aws_settings, s3=s3)

    files = run_tasks_on_sagemaker(
        run,
        [(1, 2)],
        aws_settings,
        sagemaker=sagemaker,
        s3=s3,
        spec=ProcessingSpec(poll_interval_s=0.01),
        sleep=lambda _: None,
    )

    (request,) = seen
    assert request["AppSpecification"]["ImageUri"] == JOB_IMAGE  # QE_SAGEMAKER_IMAGE_URI, the job image
    assert request["ProcessingResources"]["ClusterConfig"]["InstanceType"] == "ml.m5.xlarge"
    assert request["Environment"]["QE_WFO_TASKS"] == "1:2"
    job = sagemaker.describe_processing_job(ProcessingJobName=request["ProcessingJobName"])
    assert job["ProcessingJobStatus"] == "Completed" and job["RoleArn"] == ROLE
    assert files == [{"trial_id": 1, "split_id": 2, "path": str(prediction_path(run, 1, 2))}]
    # the container ran the same run_split: identical to a local run of the task
    local = pd.read_parquet(run_split(planned_run, 1, 2, output_dir=tmp_path / "local")["path"])
    pd.testing.assert_frame_equal(pd.read_parquet(files[0]["path"]), local)


def test_the_aws_backend_stages_in_plan_and_runs_each_dag_task_as_a_job(
    planned_run: Path, aws_settings: Settings, s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calls the DAG's tasks make, with QE_BACKEND=aws: the plan task stages, a fit task runs a job."""
    run = copy_run(planned_run, tmp_path)
    seen: list[dict] = []
    assert isinstance(make_wfo_fits(aws_settings), SageMakerFits)
    session = boto3.session.Session(region_name=aws_settings.aws_region)
    session.events.register(
        "before-parameter-build.sagemaker.CreateProcessingJob", fake_container(s3, tmp_path / "container", seen)
    )
    fits = SageMakerFits(aws_settings, AwsClients(session))
    monkeypatch.setenv("QE_PROCESSING_INSTANCE_TYPE", "ml.c5.large")

    assert plan(run) == [{"trial_id": t, "split_id": s} for t in range(2) for s in range(3)]
    fits.prepare(run)
    [result] = fits.run(run, [(0, 2)])

    assert result == {"trial_id": 0, "split_id": 2, "path": str(prediction_path(run, 0, 2))}
    assert [r["ProcessingResources"]["ClusterConfig"]["InstanceType"] for r in seen] == ["ml.c5.large"]
    local = run_split(planned_run, 0, 2, output_dir=tmp_path / "local")
    pd.testing.assert_frame_equal(pd.read_parquet(result["path"]), pd.read_parquet(local["path"]))


def test_entry_point_runs_every_task_locally_and_shards_across_hosts(
    planned_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    resource = tmp_path / "resourceconfig.json"
    resource.write_text(json.dumps({"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]}))
    env = {
        "QE_PROCESSING_INPUT": str(planned_run),
        "QE_PROCESSING_OUTPUT": str(tmp_path / "out"),
        "QE_RESOURCE_CONFIG": str(resource),
    }
    assert processing_entry.main(env) == 0
    done = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # six tasks (2 trials x 3 splits); the second of two hosts takes every second one
    assert [(d["trial_id"], d["split_id"]) for d in done] == [(0, 1), (1, 0), (1, 2)]
    for d in done:
        written = pd.read_parquet(tmp_path / "out" / d["path"])
        local = run_split(planned_run, d["trial_id"], d["split_id"], output_dir=tmp_path / "local")
        pd.testing.assert_frame_equal(written, pd.read_parquet(local["path"]))
    assert not (planned_run / "predictions").exists()  # the input folder stays untouched


def test_entry_point_as_a_subprocess_with_the_container_paths(planned_run: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {
        **os.environ,
        "QE_PROCESSING_INPUT": str(planned_run),
        "QE_PROCESSING_OUTPUT": str(tmp_path),
        "QE_WFO_TASKS": "0:0",
    }
    result = subprocess.run(
        [sys.executable, "-m", "quant_engine.wfo.processing_entry"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip())["path"] == "predictions/trial=0/split=0.parquet"
    assert (tmp_path / "predictions" / "trial=0" / "split=0.parquet").exists()


def test_entry_point_rejects_bad_task_lists_and_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="QE_WFO_TASKS item '1-2' is not 'trial:split'"):
        processing_entry.parse_tasks("0:1,1-2")
    with pytest.raises(FileNotFoundError, match="holds no plan.json"):
        processing_entry.main({"QE_PROCESSING_INPUT": str(tmp_path), "QE_PROCESSING_OUTPUT": str(tmp_path / "o")})


def _fits_with_container(settings: Settings, s3, workdir: Path) -> tuple[SageMakerFits, list[dict], object]:
    seen: list[dict] = []
    session = boto3.session.Session(region_name=settings.aws_region)
    session.events.register("before-parameter-build.sagemaker.CreateProcessingJob", fake_container(s3, workdir, seen))
    fits = SageMakerFits(settings, AwsClients(session), spec=ProcessingSpec(poll_interval_s=0.01), sleep=lambda _: None)
    return fits, seen, session


def test_on_aws_the_fits_of_a_trial_share_one_processing_job(
    planned_run: Path, aws_settings: Settings, s3, tmp_path: Path
) -> None:
    """QE_PROCESSING_BATCH=trial (the default): 2 trials x 3 splits cost 2 jobs, and every fit comes back."""
    run = copy_run(planned_run, tmp_path)
    fits, seen, _ = _fits_with_container(aws_settings, s3, tmp_path / "container")
    tasks = [(t["trial_id"], t["split_id"]) for t in plan(run)]
    batches = fits.batches(tasks)
    assert batches == [[(0, 0), (0, 1), (0, 2)], [(1, 0), (1, 1), (1, 2)]]
    fits.prepare(run)
    results = [r for batch in batches for r in fits.run(run, batch)]

    assert len(seen) == 2  # one CreateProcessingJob per trial, not per (trial, split)
    assert [r["Environment"]["QE_WFO_TASKS"] for r in seen] == ["0:0,0:1,0:2", "1:0,1:1,1:2"]
    assert [(r["trial_id"], r["split_id"]) for r in results] == tasks
    assert all(Path(r["path"]).exists() for r in results)
    local = run_split(planned_run, 1, 1, output_dir=tmp_path / "local")
    pd.testing.assert_frame_equal(pd.read_parquet(prediction_path(run, 1, 1)), pd.read_parquet(local["path"]))


def test_a_retried_fit_task_reattaches_to_its_job_instead_of_starting_another(
    planned_run: Path, aws_settings: Settings, s3, tmp_path: Path
) -> None:
    run = copy_run(planned_run, tmp_path)
    fits, seen, session = _fits_with_container(aws_settings, s3, tmp_path / "container")
    fits.prepare(run)
    first = fits.run(run, [(0, 0), (0, 1), (0, 2)])
    for result in first:
        Path(result["path"]).unlink()  # a retry on a fresh worker: the run folder lost its predictions
    again = fits.run(run, [(0, 0), (0, 1), (0, 2)])

    assert len(seen) == 1  # described, found Completed, collected: no second job
    assert again == first and all(Path(r["path"]).exists() for r in again)
    names = session.client("sagemaker").list_processing_jobs()["ProcessingJobSummaries"]
    assert [j["ProcessingJobName"] for j in names] == [seen[0]["ProcessingJobName"]]


def test_a_failed_job_is_replaced_by_the_next_name_not_reused(aws_settings: Settings, s3, tmp_path: Path) -> None:
    class FailedOnce:
        """A SageMaker client whose first job of these tasks failed (moto cannot fail one)."""

        def __init__(self) -> None:
            self.created: list[str] = []

        def describe_processing_job(self, ProcessingJobName: str) -> dict:  # noqa: N803 - boto3's argument name
            if ProcessingJobName == job_name(tmp_path, [(0, 0)]):
                return {"ProcessingJobStatus": "Failed", "FailureReason": "OOM"}
            if ProcessingJobName in self.created:
                return {"ProcessingJobStatus": "Completed"}
            raise boto3.client("sagemaker", region_name="us-east-1").exceptions.ClientError(
                {"Error": {"Code": "ValidationException", "Message": f"Could not find job {ProcessingJobName}"}},
                "DescribeProcessingJob",
            )

        def create_processing_job(self, **request: object) -> None:
            self.created.append(str(request["ProcessingJobName"]))

    client = FailedOnce()
    # this client's jobs write nothing: the run then fails on the missing predictions, after creating the job
    with pytest.raises(ProcessingJobError, match="without writing predictions/trial=0/split=0.parquet"):
        run_tasks_on_sagemaker(
            tmp_path,
            [(0, 0)],
            aws_settings,
            sagemaker=client,
            s3=s3,
            spec=ProcessingSpec(poll_interval_s=0.01),
            sleep=lambda _: None,
        )
    assert client.created == [job_name(tmp_path, [(0, 0)], attempt=2)]


def test_split_batching_and_the_local_runner_keep_one_fit_per_task(aws_settings: Settings) -> None:
    tasks = [(t, s) for t in range(2) for s in range(3)]
    split = dataclasses.replace(aws_settings, processing_batch="split")
    assert SageMakerFits(split, AwsClients(boto3.session.Session(region_name="us-east-1"))).batches(tasks) == [
        [task] for task in tasks
    ]
    assert LocalFits().batches(tasks) == [[task] for task in tasks]
    assert Settings.from_env({"QE_PROCESSING_BATCH": "SPLIT"}).processing_batch == "split"
    with pytest.raises(SettingsError, match="QE_PROCESSING_BATCH='job' is not a batching; use one of trial, split"):
        Settings.from_env({"QE_PROCESSING_BATCH": "job"})
