"""Settings from ``QE_*`` environment variables: where data lives and which backend serves it.

Only values live here; :mod:`quant_engine.backends` turns them into stores, the registry and
clients, so switching the whole system between the embedded local default and AWS is one
variable (``QE_BACKEND``) and nothing else.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from quant_engine.validation import parse_tickers

Backend = Literal["local", "aws"]
BACKENDS: tuple[str, ...] = ("local", "aws")
#: The market data sources (:data:`quant_engine.data.sources.SOURCE_NAMES`, spelled out so reading the
#: settings never imports the data stack) and those that read a file or folder.
DATA_SOURCES: tuple[str, ...] = ("synthetic", "yfinance", "csv", "parquet")
FILE_SOURCES: tuple[str, ...] = ("csv", "parquet")
#: The variable naming the modules that register users' own features (:mod:`quant_engine.features.registry`).
FEATURE_MODULES_VARIABLE = "QE_FEATURE_MODULES"
#: How the walk-forward's fits are packed into SageMaker Processing jobs on the aws backend.
PROCESSING_BATCHES: tuple[str, ...] = ("trial", "split")
#: What ``QE_TRACKING_URI`` may name: an MLflow tracking store by URI scheme, or a SageMaker managed
#: MLflow tracking server (or MLflow app) by ARN, which the ``sagemaker-mlflow`` plugin resolves.
TRACKING_SCHEMES: tuple[str, ...] = ("sqlite", "file", "http", "https", "postgresql", "mysql")
SAGEMAKER_MLFLOW_ARN = re.compile(
    r"^arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:\d{12}:(mlflow-tracking-server|mlflow-app)/[A-Za-z0-9][A-Za-z0-9-]*$"
)


class SettingsError(ValueError):
    """A ``QE_*`` variable holds a value the engine cannot use."""


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _flag(value: str | None, name: str) -> bool:
    if value is None:
        return False
    if value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise SettingsError(f"{name}={value!r} is not a yes/no value; use one of {', '.join(_TRUE + _FALSE)}")


def _tickers(value: str | None, name: str) -> tuple[str, ...] | None:
    return None if value is None else parse_tickers(value, error=SettingsError, name=name)


def env_overrides(
    env: Mapping[str, str] | None, variables: Mapping[str, str], whole_numbers: tuple[str, ...] = ()
) -> dict[str, str | int]:
    """Job-spec fields set by ``QE_*`` variables (``field -> variable``); unset ones are left out.

    Fields named in ``whole_numbers`` must hold digits; anything else is an error naming the variable.
    """
    env = os.environ if env is None else env
    values: dict[str, str | int] = {}
    for field_name, variable in variables.items():
        raw = env.get(variable)
        if not raw:
            continue
        if field_name not in whole_numbers:
            values[field_name] = raw
        elif raw.strip().isdigit():
            values[field_name] = int(raw)
        else:
            raise SettingsError(f"{variable}={raw!r} is not a whole number")
    return values


def feature_modules_from_env(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The modules ``QE_FEATURE_MODULES`` names (``mypkg.features,other.mod``), in order.

    Read on its own as well as in :class:`Settings`: the feature registry and the DAG forms need
    this one value, and an unrelated setting's mistake should not stop them.
    """
    env = os.environ if env is None else env
    raw = env.get(FEATURE_MODULES_VARIABLE) or ""
    modules = tuple(m.strip() for m in raw.split(",") if m.strip())
    bad = [m for m in modules if not all(part.isidentifier() for part in m.split("."))]
    if bad:
        raise SettingsError(
            f"{FEATURE_MODULES_VARIABLE}={raw!r}: {bad} are not module names; write dotted names "
            "separated by commas, e.g. mypkg.features,other.mod"
        )
    return modules


@dataclass(frozen=True)
class Notifications:
    """Who hears about failed runs and drift verdicts, and through which Airflow SMTP connection.

    Read on its own (:meth:`from_env`) as well as inside :class:`Settings`: the failure mail must
    still go out when the failure is another ``QE_*`` variable :class:`Settings` refuses.

    Attributes
    ----------
    emails : tuple of str
        ``QE_NOTIFY_EMAILS`` (``ops@example.com,quant@example.com``): the recipients; empty (the
        default) turns notifications off.
    smtp_conn_id : str
        ``QE_NOTIFY_SMTP_CONN_ID``: the Airflow SMTP connection mail goes through (default
        ``smtp_default``); its host, port, login and "From email" field.
    """

    emails: tuple[str, ...] = ()
    smtp_conn_id: str = "smtp_default"

    def __post_init__(self) -> None:
        for address in self.emails:
            local, _, domain = address.partition("@")
            if not local or not domain or any(c.isspace() for c in address):
                raise SettingsError(f"QE_NOTIFY_EMAILS holds {address!r}, which is not an email address")
        if not self.smtp_conn_id.strip():
            raise SettingsError("QE_NOTIFY_SMTP_CONN_ID must name an Airflow connection")

    @property
    def enabled(self) -> bool:
        return bool(self.emails)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifications:
        """Read ``QE_NOTIFY_*`` from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        emails = tuple(a.strip() for a in re.split(r"[,;]", env.get("QE_NOTIFY_EMAILS") or "") if a.strip())
        return cls(emails=emails, smtp_conn_id=env.get("QE_NOTIFY_SMTP_CONN_ID") or "smtp_default")


def _default_home() -> Path:
    return Path.home() / ".quant_engine"


@dataclass(frozen=True)
class Settings:
    """Where data lives and which backend serves it.

    Parameters
    ----------
    home : Path
        Root for all local state (``QE_HOME``): the offline and online stores, reports, models.
    backend : {"local", "aws"}
        ``QE_BACKEND``. ``local`` is the embedded default (Parquet, SQLite, subprocesses);
        ``aws`` uses S3, DynamoDB and SageMaker through boto3.
    aws_region : str
        ``QE_AWS_REGION`` (falls back to ``AWS_DEFAULT_REGION``, then ``us-east-1``).
    aws_endpoint_url : str or None
        ``QE_AWS_ENDPOINT_URL`` (falls back to ``AWS_ENDPOINT_URL``): a moto server or LocalStack.
    s3_bucket : str or None
        ``QE_S3_BUCKET``; required when ``backend == "aws"``.
    s3_prefix : str
        ``QE_S3_PREFIX``: key prefix for everything the engine writes to the bucket.
    dynamodb_table : str
        ``QE_DYNAMODB_TABLE``: the online store's table on AWS.
    feature_group : str
        ``QE_FEATURE_GROUP``: the feature group ingestion writes and training reads.
    sagemaker_role_arn : str or None
        ``QE_SAGEMAKER_ROLE_ARN``: execution role for SageMaker jobs and feature groups.
    sagemaker_feature_store : bool
        ``QE_SAGEMAKER_FEATURE_STORE`` (``1``/``true``): with the aws backend, ingestion also writes
        every feature row to the SageMaker Feature Store group of the same name (``BatchWriteRecord``).
    default_source : str
        ``QE_DEFAULT_SOURCE``: where a run that names no source (every scheduled ingestion) reads
        bars: ``synthetic`` (the embedded market), ``yfinance``, ``csv`` or ``parquet``.
    default_source_path : str or None
        ``QE_DEFAULT_SOURCE_PATH``: the file or folder of bars of a ``csv`` / ``parquet`` default
        source (required by them, refused by the others).
    default_tickers : tuple of str, optional
        ``QE_DEFAULT_TICKERS`` (``GOOG,MSFT`` or ``["GOOG", "MSFT"]``): the universe of a run that
        names no tickers, in every DAG; unset: every ticker the source (or the offline store) has.
        ``yfinance`` needs it: Yahoo has no list of all tickers.
    aws_conn_id : str
        ``QE_AWS_CONN_ID``: the Airflow connection the DAGs take their AWS session from
        (default ``aws_default``); the command line and the bridge use the standard environment.
    sagemaker_endpoint : str
        ``QE_SAGEMAKER_ENDPOINT``: the real-time endpoint ``model_deployment`` deploys to on the aws
        backend and the bridge calls with ``QE_BRIDGE_MODEL=sagemaker`` (default ``quant-engine``).
    endpoint_instance_type : str
        ``QE_ENDPOINT_INSTANCE_TYPE``: the endpoint's instance type (default ``ml.m5.large``).
    endpoint_image_uri : str or None
        ``QE_ENDPOINT_IMAGE_URI``: the endpoint's serving image; unset: SageMaker's XGBoost image.
    processing_batch : {"trial", "split"}
        ``QE_PROCESSING_BATCH``: on the aws backend, one Processing job per trial (its splits' fits
        together, the default) or one per (trial, split).
    feature_modules : tuple of str
        ``QE_FEATURE_MODULES`` (``mypkg.features,other.mod``): modules that register your own
        features and feature sets, imported the first time a feature set is looked up
        (:mod:`quant_engine.features.registry`).
    sagemaker_image_uri : str or None
        ``QE_SAGEMAKER_IMAGE_URI``: the engine's job image (``docker/sagemaker/Dockerfile``) pushed to
        ECR, run by Processing and training jobs on the aws backend; unset, they fall back to
        SageMaker's XGBoost framework image only where its Python is 3.11 (:mod:`quant_engine.aws.images`).
    tracking : bool
        ``QE_TRACKING`` (default on; ``0`` turns it off): log walk-forward, training and drift runs
        to MLflow (:mod:`quant_engine.tracking`).
    tracking_uri : str or None
        ``QE_TRACKING_URI``: the MLflow tracking server, e.g. ``http://mlflow:5000`` or, on AWS, the
        ARN of a SageMaker managed MLflow tracking server; unset: the embedded SQLite database
        ``$QE_HOME/mlflow/mlflow.db`` (:attr:`tracking_store_uri`).
    tracking_ui_url : str or None
        ``QE_TRACKING_UI_URL``: where people open the MLflow UI, for the Quant Engine page's links
        (``make up`` sets it); unset: the tracking URI itself when that is an HTTP server.
    notifications : Notifications
        ``QE_NOTIFY_*``: the mail of failed runs and drift verdicts (off by default).
    """

    home: Path = field(default_factory=_default_home)
    backend: Backend = "local"
    aws_region: str = "us-east-1"
    aws_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_prefix: str = "quant-engine"
    dynamodb_table: str = "quant-engine-online"
    feature_group: str = "market_features"
    sagemaker_role_arn: str | None = None
    sagemaker_feature_store: bool = False
    default_source: str = "synthetic"
    default_source_path: str | None = None
    default_tickers: tuple[str, ...] | None = None
    aws_conn_id: str = "aws_default"
    processing_batch: str = "trial"
    feature_modules: tuple[str, ...] = ()
    sagemaker_image_uri: str | None = None
    tracking: bool = True
    tracking_uri: str | None = None
    tracking_ui_url: str | None = None
    notifications: Notifications = field(default_factory=Notifications)
    sagemaker_endpoint: str = "quant-engine"
    endpoint_instance_type: str = "ml.m5.large"
    endpoint_image_uri: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise SettingsError(f"QE_BACKEND={self.backend!r} is not a backend; use one of {', '.join(BACKENDS)}")
        if self.backend == "aws" and not self.s3_bucket:
            raise SettingsError("QE_BACKEND=aws needs QE_S3_BUCKET, the bucket for the offline store")
        if self.sagemaker_feature_store and self.backend != "aws":
            raise SettingsError("QE_SAGEMAKER_FEATURE_STORE needs QE_BACKEND=aws: the local backend has no SageMaker")
        if self.processing_batch not in PROCESSING_BATCHES:
            raise SettingsError(
                f"QE_PROCESSING_BATCH={self.processing_batch!r} is not a batching; use one of "
                f"{', '.join(PROCESSING_BATCHES)}"
            )
        if self.sagemaker_image_uri is not None and (
            not self.sagemaker_image_uri or any(c.isspace() for c in self.sagemaker_image_uri)
        ):
            raise SettingsError(
                f"QE_SAGEMAKER_IMAGE_URI={self.sagemaker_image_uri!r} is not an image reference "
                "(<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>)"
            )
        if not self.aws_conn_id or not self.aws_conn_id.strip():
            raise SettingsError("QE_AWS_CONN_ID must name an Airflow connection")
        if not self.feature_group.replace("_", "").replace("-", "").isalnum():
            raise SettingsError(
                f"QE_FEATURE_GROUP={self.feature_group!r} must contain only letters, digits, '-' and '_'"
            )
        self._check_run_defaults()
        self._check_tracking()

    def _check_tracking(self) -> None:
        if self.tracking_ui_url is not None and not self.tracking_ui_url.startswith(("http://", "https://")):
            raise SettingsError(f"QE_TRACKING_UI_URL={self.tracking_ui_url!r} must be an http(s):// address")
        uri = self.tracking_uri
        if uri is None:
            return
        if uri.startswith("arn:"):
            if not SAGEMAKER_MLFLOW_ARN.match(uri):
                raise SettingsError(
                    f"QE_TRACKING_URI={uri!r} is not the ARN of a SageMaker MLflow tracking server "
                    "(arn:aws:sagemaker:<region>:<account>:mlflow-tracking-server/<name>)"
                )
        elif uri.partition(":")[0].lower() not in TRACKING_SCHEMES:
            raise SettingsError(
                f"QE_TRACKING_URI={uri!r} is not an MLflow tracking URI; use one of "
                f"{', '.join(s + '://...' for s in TRACKING_SCHEMES)} or a SageMaker MLflow tracking server's ARN"
            )

    def _check_run_defaults(self) -> None:
        source = self.default_source
        if source not in DATA_SOURCES:
            raise SettingsError(
                f"QE_DEFAULT_SOURCE={source!r} is not a data source; use one of {', '.join(DATA_SOURCES)}"
            )
        if source in FILE_SOURCES and not self.default_source_path:
            raise SettingsError(f"QE_DEFAULT_SOURCE={source} needs QE_DEFAULT_SOURCE_PATH, the file or folder of bars")
        if source not in FILE_SOURCES and self.default_source_path:
            raise SettingsError(
                f"QE_DEFAULT_SOURCE_PATH only applies to QE_DEFAULT_SOURCE=csv or parquet, not {source}; unset it"
            )
        if source == "yfinance" and not self.default_tickers:
            raise SettingsError(
                "QE_DEFAULT_SOURCE=yfinance needs QE_DEFAULT_TICKERS (e.g. GOOG,MSFT): Yahoo has no list of all tickers"
            )

    @property
    def run_defaults(self) -> dict[str, object]:
        """What a run that names no source or tickers reads: ``source``, ``path`` and ``tickers`` (a list or None)."""
        return {
            "source": self.default_source,
            "path": self.default_source_path,
            "tickers": None if self.default_tickers is None else list(self.default_tickers),
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env

        def get(name: str, *fallbacks: str) -> str | None:
            for key in (name, *fallbacks):
                value = env.get(key)
                if value:
                    return value
            return None

        home = get("QE_HOME")
        return cls(
            home=Path(home).expanduser().resolve() if home else _default_home(),
            backend=(get("QE_BACKEND") or "local").lower(),  # type: ignore[arg-type]
            aws_region=get("QE_AWS_REGION", "AWS_DEFAULT_REGION", "AWS_REGION") or "us-east-1",
            aws_endpoint_url=get("QE_AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL"),
            s3_bucket=get("QE_S3_BUCKET"),
            s3_prefix=(get("QE_S3_PREFIX") or "quant-engine").strip("/"),
            dynamodb_table=get("QE_DYNAMODB_TABLE") or "quant-engine-online",
            feature_group=get("QE_FEATURE_GROUP") or "market_features",
            sagemaker_role_arn=get("QE_SAGEMAKER_ROLE_ARN"),
            sagemaker_feature_store=_flag(get("QE_SAGEMAKER_FEATURE_STORE"), "QE_SAGEMAKER_FEATURE_STORE"),
            default_source=(get("QE_DEFAULT_SOURCE") or "synthetic").strip().lower(),
            default_source_path=get("QE_DEFAULT_SOURCE_PATH"),
            default_tickers=_tickers(get("QE_DEFAULT_TICKERS"), "QE_DEFAULT_TICKERS"),
            aws_conn_id=get("QE_AWS_CONN_ID") or "aws_default",
            processing_batch=(get("QE_PROCESSING_BATCH") or "trial").lower(),
            feature_modules=feature_modules_from_env(env),
            sagemaker_image_uri=get("QE_SAGEMAKER_IMAGE_URI"),
            tracking=get("QE_TRACKING") is None or _flag(get("QE_TRACKING"), "QE_TRACKING"),
            tracking_uri=get("QE_TRACKING_URI"),
            tracking_ui_url=get("QE_TRACKING_UI_URL"),
            notifications=Notifications.from_env(env),
            sagemaker_endpoint=get("QE_SAGEMAKER_ENDPOINT") or "quant-engine",
            endpoint_instance_type=get("QE_ENDPOINT_INSTANCE_TYPE") or "ml.m5.large",
            endpoint_image_uri=get("QE_ENDPOINT_IMAGE_URI"),
        )

    # Local layout. Derived, so a settings object is the whole truth about where things are.
    @property
    def offline_store_dir(self) -> Path:
        return self.home / "offline-store"

    @property
    def online_store_path(self) -> Path:
        return self.home / "online-store.sqlite"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def mlflow_dir(self) -> Path:
        """The embedded MLflow store: ``mlflow.db`` and ``artifacts/``."""
        return self.home / "mlflow"

    @property
    def tracking_store_uri(self) -> str:
        """``QE_TRACKING_URI``, or the embedded SQLite database under :attr:`mlflow_dir`."""
        return self.tracking_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def tracking_link_base(self) -> str | None:
        """Where the MLflow UI answers for links: ``QE_TRACKING_UI_URL``, else an HTTP tracking URI, else None."""
        if self.tracking_ui_url:
            return self.tracking_ui_url
        uri = self.tracking_uri or ""
        return uri if uri.startswith(("http://", "https://")) else None

    def s3_uri(self, *parts: str) -> str:
        """``s3://bucket/prefix/part/...`` for the aws backend."""
        if not self.s3_bucket:
            raise SettingsError("QE_S3_BUCKET is not set")
        key = "/".join(p.strip("/") for p in (self.s3_prefix, *parts) if p)
        return f"s3://{self.s3_bucket}/{key}"


def get_settings() -> Settings:
    """The settings of this process, read from the environment."""
    return Settings.from_env()
