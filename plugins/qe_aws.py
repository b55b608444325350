"""AWS access for the DAGs: the session of an Airflow connection, handed to the library's backends.

Airflow deployments (MWAA, Astronomer, self-hosted) give tasks AWS access through connections, not
the worker's environment. :func:`aws_clients` builds the provider's ``AwsBaseHook`` on the
connection ``QE_AWS_CONN_ID`` names (default ``aws_default``): its ``boto3.Session`` (keys, a
role to assume, a profile, as the connection says), its region (``region_name`` in the extra,
else ``QE_AWS_REGION``) and its ``endpoint_url`` (extra, else ``QE_AWS_ENDPOINT_URL``: a moto
server or LocalStack). The library never sees Airflow: it gets the clients as ``aws=``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quant_engine.aws.session import AwsClients
    from quant_engine.config import Settings
    from quant_engine.tracking import Tracker
    from quant_engine.training.pipeline import TrainingJobs
    from quant_engine.training.registry import ModelRegistry


def aws_clients(settings: Settings | None = None, *, always: bool = False) -> AwsClients | None:
    """The AWS clients of the connection ``settings.aws_conn_id``; None on the local backend unless
    ``always`` (SageMaker training jobs, which a run may ask for whatever the backend).

    A connection that does not exist leaves the hook (and so boto3) on the default credential
    chain, as the provider does everywhere (a worker's instance role, say); it logs a warning.
    """
    from quant_engine.config import get_settings

    settings = settings or get_settings()
    if settings.backend != "aws" and not always:
        return None
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    from quant_engine.backends import make_aws_clients

    hook = AwsBaseHook(aws_conn_id=settings.aws_conn_id)
    connection = hook.conn_config
    session = hook.get_session(region_name=connection.region_name or settings.aws_region)
    return make_aws_clients(settings, session=session, endpoint_url=connection.endpoint_url)


def connection_region(settings: Settings) -> str:
    """The region the connection's extra names, else ``QE_AWS_REGION``: where the provider's
    SageMaker operators reach the jobs the library's clients (:func:`aws_clients`) staged."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(aws_conn_id=settings.aws_conn_id).conn_config.region_name or settings.aws_region


def training_jobs(settings: Settings) -> TrainingJobs:
    """SageMaker training jobs through the connection, whatever the backend (a run may ask for them)."""
    from quant_engine.backends import make_training_jobs

    return make_training_jobs(settings, aws=aws_clients(settings, always=True))


def model_registry(name: str) -> ModelRegistry:
    """Model ``name``'s registry, on S3 through the connection on the aws backend."""
    from quant_engine.backends import make_model_registry

    return make_model_registry(name=name, aws=aws_clients())


def experiment_tracker() -> Tracker | None:
    """The MLflow tracker (None with ``QE_TRACKING=0``); a SageMaker tracking server is signed for with the
    connection's session on the aws backend."""
    from quant_engine.backends import make_tracker

    return make_tracker(aws=aws_clients())


def publish_report(folder: str | Path, kind: str) -> str:
    """Where a run's report can be read: on the aws backend the folder is copied with the provider's
    ``S3Hook`` (through the connection) to ``s3://<bucket>/<prefix>/reports/<kind>/<run folder>/``,
    since a worker's disk (MWAA's, a Celery worker's) is neither kept nor shared; locally the folder.

    ``report.json`` is copied last: the library writes it last too, so a reader that finds it finds
    the whole report. Returns the report's ``report.html`` (its S3 URI on aws).
    """
    from quant_engine.config import get_settings

    folder, settings = Path(folder), get_settings()
    if settings.backend != "aws":
        return str(folder / "report.html")
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: (p.name == "report.json", str(p)))
    if not any(p.name == "report.json" for p in files):
        raise FileNotFoundError(f"{folder} holds no report.json: the report was not written, nothing to publish")
    hook = S3Hook(aws_conn_id=settings.aws_conn_id)
    destination = settings.s3_uri("reports", kind, folder.name)
    bucket, prefix = destination.removeprefix("s3://").split("/", 1)
    for path in files:
        hook.load_file(path, f"{prefix}/{path.relative_to(folder).as_posix()}", bucket_name=bucket, replace=True)
    return f"{destination}/report.html"
