"""Plays SageMaker's part for the jobs a moto server records: runs each job's entry point, as the job would.

moto keeps a job's description but runs nothing, and reports every job ``Completed`` the moment it is
created, with no output. :class:`SageMakerPlayer` makes the in-process server (``ThreadedMotoServer``)
behave like SageMaker instead: a created job reports ``InProgress`` (and, for Processing, keeps its
``Environment``, which moto drops and SageMaker returns); a thread then runs each such job the way
SageMaker would, in a simulated ``/opt/ml`` layout under a work folder:

* a training job: its channels downloaded from S3 into ``input/data/<channel>``,
  ``quant_engine.aws.trainer_entry`` run with ``SM_CHANNEL_*``, ``SM_MODEL_DIR``, ``SM_HPS`` (the
  request's hyperparameters, JSON-decoded as the framework container does), and ``model/`` uploaded
  as ``model.tar.gz`` to the job's ``ModelArtifacts``;
* a Processing job: its ``run`` input downloaded, ``quant_engine.wfo.processing_entry`` run with the
  job's environment, and its output folder uploaded to the output's ``S3Uri``.

The job then reports ``Completed``, or ``Failed`` with the entry point's error as ``FailureReason``.
"""

from __future__ import annotations

import io
import json
import tarfile
import threading
import traceback
from pathlib import Path
from typing import Any

import pytest
from moto.sagemaker.models import sagemaker_backends
from moto.sagemaker.responses import SageMakerResponse

from quant_engine.aws import trainer_entry
from quant_engine.aws.processing import split_s3_uri
from quant_engine.wfo import processing_entry


def _download_prefix(s3: Any, uri: str, destination: Path) -> None:
    bucket, prefix = split_s3_uri(uri)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for item in page.get("Contents", []):
            target = destination / item["Key"][len(prefix) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(target))


class SageMakerPlayer:
    """Runs the jobs of a moto server in this process; ``s3`` is a client of that server.

    Jobs run only while the player is entered (``with player:``, as often as a test needs): a job
    created outside stays ``InProgress`` until then.
    """

    def __init__(self, s3: Any, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.s3, self.workdir = s3, workdir
        self.started: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        original_training = SageMakerResponse.create_training_job
        original_processing = SageMakerResponse.create_processing_job

        def create_training_job(response: SageMakerResponse) -> Any:
            result = original_training(response)
            job = response.sagemaker_backend.training_jobs[response._get_param("TrainingJobName")]
            job.training_job_status, job.secondary_status = "InProgress", "Starting"
            return result

        def create_processing_job(response: SageMakerResponse) -> Any:
            result = original_processing(response)
            job = response.sagemaker_backend.processing_jobs[response._get_param("ProcessingJobName")]
            job.environment = response._get_param("Environment") or {}
            job.processing_job_status = "InProgress"
            return result

        monkeypatch.setattr(SageMakerResponse, "create_training_job", create_training_job)
        monkeypatch.setattr(SageMakerResponse, "create_processing_job", create_processing_job)

    def __enter__(self) -> SageMakerPlayer:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="sagemaker-player", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _jobs(self) -> list[tuple[str, Any]]:
        found = []
        for account in list(sagemaker_backends.keys()):
            for region in list(sagemaker_backends[account].keys()):
                backend = sagemaker_backends[account][region]
                found += [("training", j) for j in list(backend.training_jobs.values())]
                found += [("processing", j) for j in list(backend.processing_jobs.values())]
        return found

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            for kind, job in self._jobs():
                status = job.training_job_status if kind == "training" else job.processing_job_status
                name = job.training_job_name if kind == "training" else job.processing_job_name
                if status != "InProgress" or name in self.started:
                    continue
                self.started.add(name)
                self._play(kind, job, name)

    def _play(self, kind: str, job: Any, name: str) -> None:
        folder = self.workdir / name
        try:
            (self._train if kind == "training" else self._process)(job, folder)
            final, reason = "Completed", None
        except Exception:  # the job's failure, reported as SageMaker reports it
            final, reason = "Failed", traceback.format_exc()[-1000:]
        if kind == "training":
            job.training_job_status = job.secondary_status = final
        else:
            job.processing_job_status = final
        if reason:
            job.failure_reason = reason

    def _train(self, job: Any, folder: Path) -> None:
        env = {"SM_MODEL_DIR": str(folder / "model"), "QE_CHECKPOINT_DIR": str(folder / "checkpoints")}
        for channel in job.input_data_config:
            local = folder / "input" / "data" / channel["ChannelName"]
            _download_prefix(self.s3, channel["DataSource"]["S3DataSource"]["S3Uri"], local)
            env[f"SM_CHANNEL_{channel['ChannelName'].upper()}"] = str(local)
        hyperparameters = {k: json.loads(v) for k, v in job.hyper_parameters.items()}
        env["SM_HPS"] = json.dumps({k: v for k, v in hyperparameters.items() if not k.startswith("sagemaker_")})
        if trainer_entry.main([], env) != 0:
            raise RuntimeError("the trainer exited non-zero")
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            for path in sorted((folder / "model").rglob("*")):
                if path.is_file():
                    tar.add(path, arcname=path.relative_to(folder / "model").as_posix())
        bucket, key = split_s3_uri(job.model_artifacts["S3ModelArtifacts"])
        self.s3.put_object(Bucket=bucket, Key=key, Body=archive.getvalue())

    def _process(self, job: Any, folder: Path) -> None:
        inputs = {i["InputName"]: i["S3Input"] for i in job.processing_inputs}
        _download_prefix(self.s3, inputs["run"]["S3Uri"], folder / "input")
        env = {
            **job.environment,
            "QE_PROCESSING_INPUT": str(folder / "input"),
            "QE_PROCESSING_OUTPUT": str(folder / "output"),
        }
        if processing_entry.main(env) != 0:
            raise RuntimeError("the Processing entry point exited non-zero")
        (output,) = job.processing_output_config["Outputs"]
        bucket, prefix = split_s3_uri(output["S3Output"]["S3Uri"])
        for path in sorted((folder / "output").rglob("*")):
            if path.is_file():
                self.s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder / 'output').as_posix()}")
