"""The composition root: the one place that turns :class:`~quant_engine.config.Settings` into storage and compute.

Every store, the registry, the alarms, the walk-forward's fit runner and the AWS clients are built
here, on the embedded local default (Parquet, SQLite, files, subprocesses) or on AWS (S3, DynamoDB,
CloudWatch, SageMaker), as ``QE_BACKEND`` says. The library takes what it needs as arguments and
never builds a backend itself; the edges (DAG tasks, the command line, the bridge) build here once
and hand the pieces in, so switching the whole system is one variable and nothing else.

Every AWS client comes from one :class:`~quant_engine.aws.session.AwsClients` (a ``boto3.Session``
and an endpoint). Each ``make_*`` takes it as ``aws=``: the DAGs pass the clients of their Airflow
connection (``plugins/qe_aws.py``); without it, a session from the standard environment is made
(the command line, the bridge).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quant_engine.aws.cloudwatch import CloudWatchAlarms
from quant_engine.aws.dynamodb import DynamoDBOnlineStore
from quant_engine.aws.feature_store import SageMakerFeatureGroup
from quant_engine.aws.processing import SageMakerFits
from quant_engine.aws.s3 import S3FileSystem
from quant_engine.aws.sagemaker_spot import SpotTrainingJobs
from quant_engine.aws.session import AwsClients
from quant_engine.config import Settings, get_settings
from quant_engine.features.bar_history import BarHistory
from quant_engine.features.offline_store import OfflineStore
from quant_engine.features.online_store import OnlineStore, SQLiteOnlineStore
from quant_engine.features.stores import GroupStores, bars_group_name
from quant_engine.monitoring.alarms import Alarms, LocalAlarms, check_schedule_name
from quant_engine.monitoring.predictions import PredictionLog, prediction_log
from quant_engine.monitoring.run import DriftMonitor, drift_schedule
from quant_engine.storage.filesystem import FileSystem, LocalFileSystem
from quant_engine.tracking import Tracker
from quant_engine.training.defaults import DEFAULT_MODEL_NAME
from quant_engine.training.pipeline import TrainingJobs
from quant_engine.training.registry import ModelRegistry
from quant_engine.wfo.runner import FitRunner, LocalFits

__all__ = [
    "make_alarms",
    "make_aws_clients",
    "make_bar_history",
    "make_bar_store",
    "make_drift_monitor",
    "make_group_stores",
    "make_model_registry",
    "make_offline_store",
    "make_online_store",
    "make_prediction_log",
    "make_sagemaker_feature_group",
    "make_tracker",
    "make_training_jobs",
    "make_wfo_fits",
]


def make_aws_clients(
    settings: Settings | None = None, *, session: Any = None, endpoint_url: str | None = None
) -> AwsClients:
    """The clients of ``session`` (a ``boto3.Session``; default: one from the standard environment in
    the configured region), reaching ``endpoint_url`` (default: ``QE_AWS_ENDPOINT_URL``)."""
    settings = settings or get_settings()
    if session is None:
        clients = AwsClients.from_settings(settings)
        return clients if endpoint_url is None else AwsClients(clients.session, endpoint_url)
    return AwsClients(session, endpoint_url or settings.aws_endpoint_url)


def _aws(settings: Settings, aws: AwsClients | None) -> AwsClients:
    return aws if aws is not None else make_aws_clients(settings)


def _file_system(settings: Settings, local_root: Path, s3_folder: str, aws: AwsClients | None) -> FileSystem:
    if settings.backend == "aws":
        return S3FileSystem(
            _aws(settings, aws).client("s3"), str(settings.s3_bucket), f"{settings.s3_prefix}/{s3_folder}"
        )
    return LocalFileSystem(local_root)


def make_offline_store(
    settings: Settings | None = None, feature_group: str | None = None, *, aws: AwsClients | None = None
) -> OfflineStore:
    """The offline feature store of ``feature_group`` (default: the configured one): local Parquet or S3."""
    settings = settings or get_settings()
    return OfflineStore(
        _file_system(settings, settings.offline_store_dir, "offline-store", aws),
        feature_group or settings.feature_group,
    )


def make_bar_store(
    settings: Settings | None = None, feature_group: str | None = None, *, aws: AwsClients | None = None
) -> OfflineStore:
    """The offline group holding the bars of ``feature_group`` (default: the configured one)."""
    settings = settings or get_settings()
    return make_offline_store(settings, bars_group_name(feature_group or settings.feature_group), aws=aws)


def make_online_store(
    settings: Settings | None = None, feature_group: str | None = None, *, aws: AwsClients | None = None
) -> OnlineStore:
    """The online feature store: SQLite, or DynamoDB on aws (its table created on first use)."""
    settings = settings or get_settings()
    group = feature_group or settings.feature_group
    if settings.backend == "aws":
        store = DynamoDBOnlineStore(_aws(settings, aws).client("dynamodb"), settings.dynamodb_table, group)
        store.create_table_if_missing()  # one describe_table when it exists; first use creates it
        return store
    return SQLiteOnlineStore(settings.online_store_path, group)


def make_sagemaker_feature_group(
    settings: Settings | None = None, feature_group: str | None = None, *, aws: AwsClients | None = None
) -> SageMakerFeatureGroup | None:
    """The SageMaker Feature Store group ingestion mirrors into, or None when not configured; its first
    write creates the group (offline store under ``<prefix>/feature-store``, online store on)."""
    settings = settings or get_settings()
    if not settings.sagemaker_feature_store:
        return None
    clients = _aws(settings, aws)
    return SageMakerFeatureGroup(
        clients.client("sagemaker"),
        clients.client("sagemaker-featurestore-runtime"),
        feature_group or settings.feature_group,
        offline_s3_uri=settings.s3_uri("feature-store"),
        role_arn=settings.sagemaker_role_arn,
    )


def make_group_stores(
    settings: Settings | None = None, feature_group: str | None = None, *, aws: AwsClients | None = None
) -> GroupStores:
    """Every store of one feature group, as ingestion writes them together."""
    settings = settings or get_settings()
    group = feature_group or settings.feature_group
    if settings.backend == "aws" and aws is None:
        aws = make_aws_clients(settings)  # one session for the four stores
    return GroupStores(
        make_offline_store(settings, group, aws=aws),
        make_bar_store(settings, group, aws=aws),
        make_online_store(settings, group, aws=aws),
        make_sagemaker_feature_group(settings, group, aws=aws),
    )


def make_bar_history(
    settings: Settings | None = None, feature_group: str | None = None, *, aws: AwsClients | None = None
) -> BarHistory:
    """The bars stored beside ``feature_group`` (default: the configured one)."""
    return BarHistory(make_bar_store(settings, feature_group, aws=aws))


def make_model_registry(
    settings: Settings | None = None, name: str | None = None, *, aws: AwsClients | None = None
) -> ModelRegistry:
    """The model registry: ``$QE_HOME/models`` locally, ``<prefix>/models`` on S3."""
    settings = settings or get_settings()
    return ModelRegistry(_file_system(settings, settings.models_dir, "models", aws), name or DEFAULT_MODEL_NAME)


def make_prediction_log(
    settings: Settings | None = None, name: str | None = None, *, aws: AwsClients | None = None
) -> PredictionLog:
    """The prediction log of model ``name``, beside it in the registry's storage."""
    return prediction_log(make_model_registry(settings, name, aws=aws))


def make_alarms(
    settings: Settings | None = None,
    *,
    monitoring_schedule: str,
    endpoint: str | None = None,
    aws: AwsClients | None = None,
) -> Alarms:
    """Drift metrics and alarm state: CloudWatch on aws, a file under ``$QE_HOME/monitoring/<schedule>`` otherwise."""
    settings = settings or get_settings()
    check_schedule_name(monitoring_schedule)
    if settings.backend == "aws":
        return CloudWatchAlarms(_aws(settings, aws).client("cloudwatch"), monitoring_schedule, endpoint)
    return LocalAlarms(settings.home / "monitoring" / monitoring_schedule)


def make_wfo_fits(settings: Settings | None = None, *, aws: AwsClients | None = None) -> FitRunner:
    """Where walk-forward fits run: in this process, or as SageMaker Processing jobs on aws."""
    settings = settings or get_settings()
    if settings.backend == "aws":
        return SageMakerFits(settings, _aws(settings, aws))
    return LocalFits()


def make_training_jobs(settings: Settings | None = None, *, aws: AwsClients | None = None) -> TrainingJobs:
    """SageMaker managed spot training jobs (the ``sagemaker`` runner of the training pipeline)."""
    settings = settings or get_settings()
    return SpotTrainingJobs(settings, _aws(settings, aws))


def make_tracker(settings: Settings | None = None, *, aws: AwsClients | None = None) -> Tracker | None:
    """The MLflow tracker runs are logged to (None with ``QE_TRACKING=0``): ``QE_TRACKING_URI``, or the
    embedded SQLite database and artifact folder under ``$QE_HOME/mlflow``. A SageMaker tracking
    server (an ARN) is signed for with ``aws``'s session (the connection's in Airflow), else the
    standard environment's."""
    settings = settings or get_settings()
    if not settings.tracking:
        return None
    uri = settings.tracking_store_uri
    if uri.startswith("arn:"):
        return Tracker(uri, boto3_session=_aws(settings, aws).session)
    if settings.tracking_uri is None:
        return Tracker(uri, artifact_root=settings.mlflow_dir / "artifacts")
    return Tracker(uri)


def make_drift_monitor(
    settings: Settings | None = None, model_name: str | None = None, *, aws: AwsClients | None = None
) -> DriftMonitor:
    """What the drift checks of model ``name`` read and write: its registry, the feature group, its bars,
    the alarms of its schedule, ``$QE_HOME/reports/drift`` and ``$QE_HOME/monitoring/<schedule>``."""
    settings = settings or get_settings()
    if settings.backend == "aws" and aws is None:
        aws = make_aws_clients(settings)
    registry = make_model_registry(settings, model_name, aws=aws)
    schedule = drift_schedule(registry.name)
    return DriftMonitor(
        registry,
        make_offline_store(settings, aws=aws),
        make_bar_history(settings, aws=aws),
        make_alarms(settings, monitoring_schedule=schedule, aws=aws),
        settings.reports_dir / "drift",
        settings.home / "monitoring" / schedule,
        settings.home / "online" / registry.name / "updates" if settings.backend == "local" else None,
        make_tracker(settings, aws=aws),
    )
