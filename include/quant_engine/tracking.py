"""Experiment tracking in MLflow: every walk-forward, training and drift run, side by side, in one place.

The engine's own files stay the record (reports, the registry); MLflow is where people compare runs:
the walk-forward's PBO and deflated Sharpe across configurations, a model's holdout metrics across
retrains, a feature's drift distance across checks. Each run is logged once its result is saved,
by :meth:`Tracker.log_run`, under one experiment per kind (:data:`EXPERIMENTS`).

* **Embedded default**: a SQLite database and an artifact folder under ``QE_HOME``
  (``$QE_HOME/mlflow/mlflow.db``, ``$QE_HOME/mlflow/artifacts``), which ``make up`` serves with
  ``mlflow server``. ``QE_TRACKING_URI`` names another tracking server; on AWS the ARN of a
  SageMaker managed MLflow tracking server, which the ``sagemaker-mlflow`` plugin resolves and
  signs for, with the session handed in (the Airflow connection's).
* **Never fails a run**: tracking is a by-product. Any failure to reach or write the tracker is
  logged as a warning and :meth:`Tracker.log_run` returns None; the run goes on. A down HTTP server
  is retried as MLflow's ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT`` say.
* **Idempotent**: a run is found again by its key (tag ``quant_engine.key``), so a rerun task logs
  into the run it logged before instead of adding a duplicate.
* MLflow is imported only when a run is logged: it takes seconds to import.

Where a run went is kept beside the run's own result as ``mlflow.json`` (:class:`TrackedRun`), so
the Quant Engine page links each run to its MLflow page.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from quant_engine.storage.atomic import write_json_atomic

__all__ = ["EXPERIMENTS", "TRACKING_FILE", "TrackedRun", "Tracker", "flatten", "load_tracked_run", "save_tracked_run"]

log = logging.getLogger(__name__)

#: The MLflow experiment of each kind of run.
EXPERIMENTS: dict[str, str] = {
    "wfo": "quant-engine-wfo",
    "training": "quant-engine-training",
    "drift": "quant-engine-drift",
}
#: Where a run's :class:`TrackedRun` is kept, beside its result.
TRACKING_FILE = "mlflow.json"
#: The tag that finds a run again on a rerun.
KEY_TAG = "quant_engine.key"
#: MLflow's batch limits (``mlflow.utils.validation``): params and tags, and metrics, per ``log_batch``.
_PARAMS_PER_BATCH, _METRICS_PER_BATCH = 100, 1000
_PARAM_CHARS = 6000
#: Characters MLflow allows in a key; anything else becomes ``_``.
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /:]")


@dataclass(frozen=True)
class TrackedRun:
    """Where a run was logged: the tracking URI, the experiment and the MLflow run."""

    tracking_uri: str
    experiment_id: str
    run_id: str

    def ui_url(self, base_url: str) -> str:
        """The run's page in the MLflow UI served at ``base_url``."""
        return f"{base_url.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrackedRun:
        return cls(str(data["tracking_uri"]), str(data["experiment_id"]), str(data["run_id"]))


def save_tracked_run(folder: Path, run: TrackedRun) -> Path:
    """Write ``run`` as ``<folder>/mlflow.json`` (atomically)."""
    return write_json_atomic(Path(folder) / TRACKING_FILE, run.to_json())


def load_tracked_run(folder: Path) -> TrackedRun | None:
    """The run recorded in ``<folder>/mlflow.json``; None when there is none or it cannot be read."""
    path = Path(folder) / TRACKING_FILE
    try:
        return TrackedRun.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of ``a.b`` keys; lists and other leaves are kept as they are.

    Examples
    --------
    >>> flatten({"a": 1, "b": {"c": 2, "d": {"e": [3]}}}, "p")
    {'p.a': 1, 'p.b.c': 2, 'p.b.d.e': [3]}
    """
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def _key(name: str) -> str:
    return _BAD_KEY_CHARS.sub("_", name)[:250]


def _number(value: Any) -> float | None:
    """A finite number (booleans as 0/1), or None for anything else: MLflow metrics are numbers."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text[:_PARAM_CHARS]


@dataclass(frozen=True)
class Tracker:
    """Logs runs to one MLflow tracking server; built by :func:`quant_engine.backends.make_tracker`.

    Parameters
    ----------
    tracking_uri : str
        ``sqlite:///...`` (the embedded default), ``http(s)://`` an MLflow server, or the ARN of a
        SageMaker managed MLflow tracking server.
    artifact_root : Path, optional
        Where experiments this tracker creates keep their artifacts (the embedded default's
        ``$QE_HOME/mlflow/artifacts``); None lets the server choose (an HTTP or SageMaker server).
    boto3_session : boto3.Session, optional
        The session the SageMaker MLflow plugin signs requests with (an ARN URI); None: its default.
    """

    tracking_uri: str
    artifact_root: Path | None = None
    boto3_session: Any = None

    def log_run(
        self,
        kind: str,
        key: str,
        *,
        name: str | None = None,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        series: Mapping[str, Sequence[Any]] | None = None,
        tags: Mapping[str, Any] | None = None,
        artifacts: Sequence[Path] = (),
        artifact_dir: str | None = None,
        keep: Callable[[TrackedRun], object] | None = None,
    ) -> TrackedRun | None:
        """Log one finished run of ``kind`` (a key of :data:`EXPERIMENTS`); None when tracking failed.

        ``key`` identifies the run within its kind (the Airflow run id, ``model:version``): a run
        with the same key is logged into again. ``params`` and ``tags`` become strings (non-string
        values as JSON, None values left out); ``metrics`` keep their finite numbers; each of
        ``series`` is one metric with a step per value (the paths' Sharpe ratios); ``artifacts``
        are files copied under ``artifact_dir``. ``keep`` records the logged run beside the run's
        result (:func:`save_tracked_run`). Any error, ``keep``'s included, is a warning, never raised.
        """
        if kind not in EXPERIMENTS:
            raise ValueError(f"kind={kind!r} is not a tracked kind; use one of {', '.join(EXPERIMENTS)}")
        try:
            with self._session():
                tracked = self._log_run(
                    kind,
                    key,
                    name,
                    dict(params or {}),
                    dict(metrics or {}),
                    dict(series or {}),
                    dict(tags or {}),
                    artifacts,
                    artifact_dir,
                )
            if keep is not None:
                keep(tracked)
            return tracked
        except Exception as exc:  # noqa: BLE001 - tracking is a by-product: nothing it does may fail the run
            log.warning(
                "experiment tracking failed, the run goes on without it: could not log %s run %r to %s (%s: %s)",
                kind,
                key,
                self.tracking_uri,
                type(exc).__name__,
                str(exc)[:500],
            )
            return None

    @contextmanager
    def _session(self) -> Iterator[None]:
        """The SageMaker plugin's signer uses :attr:`boto3_session` within (the plugin's own context var)."""
        if self.boto3_session is None:
            yield
            return
        from sagemaker_mlflow import use_session

        with use_session(self.boto3_session):
            yield

    def _client(self) -> Any:
        from mlflow.tracking import MlflowClient

        if self.tracking_uri.startswith("sqlite:///"):  # the embedded database's folder, made on first use
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)

        return MlflowClient(tracking_uri=self.tracking_uri)

    def _experiment_id(self, client: Any, kind: str) -> str:
        from mlflow.exceptions import MlflowException

        name = EXPERIMENTS[kind]
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = None if self.artifact_root is None else (Path(self.artifact_root) / kind).resolve().as_uri()
        try:
            return str(client.create_experiment(name, artifact_location=location))
        except MlflowException:  # another process created it meanwhile
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    def _log_run(
        self,
        kind: str,
        key: str,
        name: str | None,
        params: dict[str, Any],
        metrics: dict[str, Any],
        series: dict[str, Sequence[Any]],
        tags: dict[str, Any],
        artifacts: Sequence[Path],
        artifact_dir: str | None,
    ) -> TrackedRun:
        from mlflow.entities import Metric, Param, RunTag

        client = self._client()
        experiment_id = self._experiment_id(client, kind)
        found = client.search_runs(
            [experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key.replace(chr(39), '')}'", max_results=1
        )
        run_id = found[0].info.run_id if found else client.create_run(experiment_id, run_name=name).info.run_id
        now = int(time.time() * 1000)
        all_tags = [RunTag(_key(k), _text(v)) for k, v in {KEY_TAG: key, **tags}.items() if v is not None]
        all_params = [Param(_key(k), _text(v)) for k, v in params.items() if v is not None]
        values = [Metric(_key(k), v, now, 0) for k, raw in metrics.items() if (v := _number(raw)) is not None]
        for metric, points in series.items():
            values += [Metric(_key(metric), v, now, i) for i, p in enumerate(points) if (v := _number(p)) is not None]
        for start in range(0, max(len(all_tags), len(all_params)), _PARAMS_PER_BATCH):
            client.log_batch(
                run_id,
                params=all_params[start : start + _PARAMS_PER_BATCH],
                tags=all_tags[start : start + _PARAMS_PER_BATCH],
            )
        for start in range(0, len(values), _METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=values[start : start + _METRICS_PER_BATCH])
        for path in artifacts:
            client.log_artifact(run_id, str(path), artifact_dir)
        client.set_terminated(run_id)
        log.info("logged %s run %r to MLflow run %s (experiment %s)", kind, key, run_id, experiment_id)
        return TrackedRun(self.tracking_uri, experiment_id, run_id)
