"""Drift metrics and alarms: one interface, a local JSON store by default, CloudWatch on AWS.

Metric names and dimensions follow what SageMaker Model Monitor emits for a data-quality schedule
on a real-time endpoint: namespace ``aws/sagemaker/Endpoints/data-metrics``, dimensions
``Endpoint`` and ``MonitoringSchedule``, one ``feature_baseline_drift_<feature>`` metric per feature
(the distance the baseline check judged). Batch-transform schedules use
``aws/sagemaker/ModelMonitoring/data-metrics`` with only ``MonitoringSchedule``; pass
``endpoint=None`` for that.

An alarm fires when at least ``datapoints_to_alarm`` of the last ``evaluation_periods`` datapoints
breach its threshold (CloudWatch's "M out of N"); with fewer datapoints than ``evaluation_periods``
it is ``INSUFFICIENT_DATA``. :class:`LocalAlarms` applies that rule itself, one datapoint per
published check, and keeps every state change;
:class:`quant_engine.aws.cloudwatch.CloudWatchAlarms` defines the alarm with ``PutMetricAlarm`` and
leaves the evaluation to CloudWatch, reading the state back with ``DescribeAlarms``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from quant_engine.storage.atomic import write_json_atomic

if TYPE_CHECKING:
    from quant_engine.monitoring.feature_drift import DriftReport

__all__ = [
    "ALARM_STATES",
    "AlarmDefinition",
    "AlarmStatus",
    "Alarms",
    "LocalAlarms",
    "drift_alarm",
    "drift_metrics",
    "check_schedule_name",
    "metric_name",
]

AlarmState = Literal["OK", "ALARM", "INSUFFICIENT_DATA"]
ALARM_STATES: tuple[str, ...] = ("OK", "ALARM", "INSUFFICIENT_DATA")
ENDPOINT_NAMESPACE = "aws/sagemaker/Endpoints/data-metrics"
BATCH_NAMESPACE = "aws/sagemaker/ModelMonitoring/data-metrics"
DRIFT_METRIC_PREFIX = "feature_baseline_drift_"
COMPARISONS: dict[str, str] = {
    "GreaterThanThreshold": ">",
    "GreaterThanOrEqualToThreshold": ">=",
    "LessThanThreshold": "<",
    "LessThanOrEqualToThreshold": "<=",
}
STATE_FILE = "alarms.json"
#: CloudWatch takes at most this many datapoints per PutMetricData call.
_PUT_BATCH = 1000
_NAME = re.compile(r"^[^\x00-\x1f]{1,255}$")
#: SageMaker's rule for monitoring schedule names; also keeps the local folder name safe.
_SCHEDULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


def metric_name(feature: str) -> str:
    """Model Monitor's drift metric name for ``feature``: ``feature_baseline_drift_<feature>``."""
    return f"{DRIFT_METRIC_PREFIX}{feature}"


def drift_metrics(report: DriftReport) -> dict[str, float]:
    """The ``feature_baseline_drift_*`` values of a drift report (empty when it disables metrics)."""
    if not report.emit_metrics:
        return {}
    return {metric_name(name): float(value) for name, value in report.comparison_distances.items()}


@dataclass(frozen=True)
class AlarmDefinition:
    """A threshold alarm on one metric, in ``PutMetricAlarm``'s terms.

    Parameters
    ----------
    name : str
        Alarm name, unique per store.
    metric_name : str
        The metric it watches, e.g. ``feature_baseline_drift_ret_5``.
    threshold : float
        Value compared with each datapoint.
    comparison : str, default "GreaterThanThreshold"
        One of CloudWatch's four threshold comparisons.
    evaluation_periods : int, default 1
        How many recent datapoints are looked at (N).
    datapoints_to_alarm : int, optional
        How many of them must breach (M); default ``evaluation_periods``.
    period_s : int, default 3600
        CloudWatch's aggregation period; one drift check per period is assumed.
    """

    name: str
    metric_name: str
    threshold: float
    comparison: str = "GreaterThanThreshold"
    evaluation_periods: int = 1
    datapoints_to_alarm: int | None = None
    period_s: int = 3600

    def __post_init__(self) -> None:
        for field_name in ("name", "metric_name"):
            value = getattr(self, field_name)
            if not (isinstance(value, str) and _NAME.match(value)):
                raise ValueError(f"{field_name}={value!r} must be 1-255 printable characters")
        if self.comparison not in COMPARISONS:
            raise ValueError(f"comparison={self.comparison!r} must be one of {', '.join(COMPARISONS)}")
        if not (isinstance(self.evaluation_periods, int) and self.evaluation_periods >= 1):
            raise ValueError(f"evaluation_periods={self.evaluation_periods!r} must be an integer >= 1")
        m = self.datapoints_to_alarm
        if m is not None and not (isinstance(m, int) and 1 <= m <= self.evaluation_periods):
            raise ValueError(
                f"datapoints_to_alarm={m!r} must be an integer in [1, evaluation_periods={self.evaluation_periods}]"
            )
        period = self.period_s
        if not (isinstance(period, int) and (period in (10, 30) or (period >= 60 and period % 60 == 0))):
            raise ValueError(f"period_s={self.period_s!r} must be 10, 30 or a multiple of 60 (CloudWatch's rule)")

    @property
    def required_breaches(self) -> int:
        return self.evaluation_periods if self.datapoints_to_alarm is None else self.datapoints_to_alarm

    def breaches(self, value: float) -> bool:
        op = COMPARISONS[self.comparison]
        t = self.threshold
        return {"<": value < t, "<=": value <= t, ">": value > t, ">=": value >= t}[op]


@dataclass(frozen=True)
class AlarmStatus:
    """An alarm's state at one moment and why it is in it."""

    name: str
    state: AlarmState
    reason: str
    updated_at: datetime


def drift_alarm(
    feature: str, threshold: float, *, evaluation_periods: int = 1, datapoints_to_alarm: int | None = None
) -> AlarmDefinition:
    """An alarm named ``<metric>-alarm`` on ``feature_baseline_drift_<feature> > threshold``."""
    name = metric_name(feature)
    return AlarmDefinition(
        name=f"{name}-alarm",
        metric_name=name,
        threshold=threshold,
        evaluation_periods=evaluation_periods,
        datapoints_to_alarm=datapoints_to_alarm,
    )


class Alarms(Protocol):
    """Where drift metrics go and alarm states come from."""

    def put_metrics(self, values: Mapping[str, float], timestamp: datetime | None = None) -> None:
        """Record one datapoint per metric name."""

    def put_alarm(self, definition: AlarmDefinition) -> None:
        """Create or replace an alarm."""

    def state(self, name: str) -> AlarmStatus:
        """The alarm's current state; ``KeyError`` if it does not exist."""


def _now() -> datetime:
    return datetime.now(UTC)


def _check_values(values: Mapping[str, float]) -> None:
    for key, value in values.items():
        if not (isinstance(key, str) and _NAME.match(key)):
            raise ValueError(f"metric name {key!r} must be 1-255 printable characters")
        if not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"metric {key}={value!r} must be a finite number (CloudWatch rejects NaN and infinity)")


class LocalAlarms:
    """Metrics and alarms in one JSON file under ``folder``, evaluated on every put.

    Parameters
    ----------
    folder : Path
        Holds ``alarms.json``; created on first write.
    max_datapoints : int, default 1000
        Datapoints kept per metric (oldest dropped); alarms need only the last N.
    """

    def __init__(self, folder: Path | str, *, max_datapoints: int = 1000) -> None:
        if not str(folder):
            raise ValueError("folder must be a non-empty path")
        if not (isinstance(max_datapoints, int) and max_datapoints >= 1):
            raise ValueError(f"max_datapoints={max_datapoints!r} must be an integer >= 1")
        self.folder = Path(folder)
        self.path = self.folder / STATE_FILE
        self.max_datapoints = max_datapoints

    def __repr__(self) -> str:
        return f"LocalAlarms({str(self.folder)!r})"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write under an exclusive lock, so two writers never lose each other's update."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f".{STATE_FILE}.lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                doc = self._load()
                yield doc
                write_json_atomic(self.path, doc)
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"metrics": {}, "alarms": {}}

    @staticmethod
    def _evaluate(alarm: dict[str, Any], datapoints: list[list[Any]], at: datetime) -> None:
        definition = AlarmDefinition(**alarm["definition"])
        recent = [v for _, v in datapoints[-definition.evaluation_periods :]]
        if len(recent) < definition.evaluation_periods:
            state = "INSUFFICIENT_DATA"
            reason = f"{len(recent)} of {definition.evaluation_periods} datapoints needed"
        else:
            breaching = sum(definition.breaches(v) for v in recent)
            state = "ALARM" if breaching >= definition.required_breaches else "OK"
            reason = (
                f"{breaching} of the last {len(recent)} datapoints {recent} were "
                f"{COMPARISONS[definition.comparison]} the threshold ({definition.threshold:g}); "
                f"{definition.required_breaches} needed to alarm"
            )
        if state != alarm["state"]:
            alarm["history"].append({"state": state, "reason": reason, "updated_at": at.isoformat()})
        alarm.update(state=state, reason=reason, updated_at=at.isoformat())

    def put_metrics(self, values: Mapping[str, float], timestamp: datetime | None = None) -> None:
        """Record one datapoint per metric and re-evaluate the alarms that watch them."""
        _check_values(values)
        at = timestamp or _now()
        if at.tzinfo is None:
            raise ValueError(f"timestamp={at!r} is naive; pass a UTC-aware datetime")
        with self._locked() as doc:
            for key, value in values.items():
                points = doc["metrics"].setdefault(key, [])
                points.append([at.isoformat(), float(value)])
                del points[: max(0, len(points) - self.max_datapoints)]
            for alarm in doc["alarms"].values():
                if alarm["definition"]["metric_name"] in values:
                    self._evaluate(alarm, doc["metrics"][alarm["definition"]["metric_name"]], at)

    def put_alarm(self, definition: AlarmDefinition) -> None:
        """Create or replace an alarm; it starts ``INSUFFICIENT_DATA`` and is evaluated at once."""
        if not isinstance(definition, AlarmDefinition):
            raise TypeError(f"definition must be an AlarmDefinition, got {type(definition).__name__}")
        at = _now()
        initial = {
            "state": "INSUFFICIENT_DATA",
            "reason": "Unchecked: initial alarm creation",
            "updated_at": at.isoformat(),
        }
        with self._locked() as doc:
            previous = doc["alarms"].get(definition.name)
            alarm = {
                "definition": asdict(definition),
                **initial,
                "history": previous["history"] if previous else [initial],
            }
            if previous:
                alarm["state"] = previous["state"]
            doc["alarms"][definition.name] = alarm
            self._evaluate(alarm, doc["metrics"].get(definition.metric_name, []), at)

    def state(self, name: str) -> AlarmStatus:
        alarm = self._alarm(name)
        return AlarmStatus(name, alarm["state"], alarm["reason"], datetime.fromisoformat(alarm["updated_at"]))

    def history(self, name: str) -> list[AlarmStatus]:
        """Every state change of the alarm, oldest first (CloudWatch's ``StateUpdate`` history)."""
        return [
            AlarmStatus(name, h["state"], h["reason"], datetime.fromisoformat(h["updated_at"]))
            for h in self._alarm(name)["history"]
        ]

    def datapoints(self, metric: str) -> list[tuple[datetime, float]]:
        """The stored datapoints of ``metric``, oldest first."""
        return [(datetime.fromisoformat(t), v) for t, v in self._load()["metrics"].get(metric, [])]

    def _alarm(self, name: str) -> dict[str, Any]:
        alarms = self._load()["alarms"]
        if name not in alarms:
            raise KeyError(f"alarm {name!r} does not exist in {self.path}; known: {sorted(alarms)}")
        return alarms[name]


def check_schedule_name(monitoring_schedule: object) -> str:
    """``monitoring_schedule`` if it follows SageMaker's rule for schedule names (it becomes a
    CloudWatch dimension on AWS and a folder name locally)."""
    if not (isinstance(monitoring_schedule, str) and _SCHEDULE_NAME.fullmatch(monitoring_schedule)):
        raise ValueError(
            f"monitoring_schedule={monitoring_schedule!r} must be 1-63 letters, digits, '-' or '_' "
            "(SageMaker's rule for schedule names), starting with a letter or digit"
        )
    return monitoring_schedule
