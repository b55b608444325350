"""Drift metrics and alarms in CloudWatch: :class:`CloudWatchAlarms`, the AWS side of
:class:`~quant_engine.monitoring.alarms.Alarms`, named and dimensioned as SageMaker Model Monitor emits them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from quant_engine.monitoring.alarms import (
    _NAME,
    _PUT_BATCH,
    BATCH_NAMESPACE,
    COMPARISONS,
    ENDPOINT_NAMESPACE,
    AlarmDefinition,
    AlarmStatus,
    _check_values,
    _now,
)

__all__ = ["CloudWatchAlarms"]


class CloudWatchAlarms:
    """Metrics and alarms in CloudWatch, named and dimensioned as Model Monitor emits them.

    Parameters
    ----------
    client : boto3 CloudWatch client
    monitoring_schedule : str
        The ``MonitoringSchedule`` dimension.
    endpoint : str or None
        The ``Endpoint`` dimension; None for a batch-transform schedule (other namespace).
    """

    def __init__(self, client: Any, monitoring_schedule: str, endpoint: str | None = None) -> None:
        if not (isinstance(monitoring_schedule, str) and _NAME.match(monitoring_schedule)):
            raise ValueError(f"monitoring_schedule={monitoring_schedule!r} must be 1-255 printable characters")
        if endpoint is not None and not (isinstance(endpoint, str) and _NAME.match(endpoint)):
            raise ValueError(f"endpoint={endpoint!r} must be 1-255 printable characters or None")
        self.client = client
        self.endpoint = endpoint
        self.monitoring_schedule = monitoring_schedule

    @property
    def namespace(self) -> str:
        return ENDPOINT_NAMESPACE if self.endpoint is not None else BATCH_NAMESPACE

    @property
    def dimensions(self) -> list[dict[str, str]]:
        dims = [{"Name": "MonitoringSchedule", "Value": self.monitoring_schedule}]
        if self.endpoint is not None:
            dims.insert(0, {"Name": "Endpoint", "Value": self.endpoint})
        return dims

    def put_metrics(self, values: Mapping[str, float], timestamp: datetime | None = None) -> None:
        """``PutMetricData`` one datapoint per metric, in batches CloudWatch accepts."""
        _check_values(values)
        at = timestamp or _now()
        data = [
            {"MetricName": k, "Dimensions": self.dimensions, "Timestamp": at, "Value": float(v), "Unit": "None"}
            for k, v in values.items()
        ]
        for start in range(0, len(data), _PUT_BATCH):
            self.client.put_metric_data(Namespace=self.namespace, MetricData=data[start : start + _PUT_BATCH])

    def put_alarm(self, definition: AlarmDefinition) -> None:
        """``PutMetricAlarm`` on the metric's Maximum per period; missing data leaves the state as is."""
        if not isinstance(definition, AlarmDefinition):
            raise TypeError(f"definition must be an AlarmDefinition, got {type(definition).__name__}")
        self.client.put_metric_alarm(
            AlarmName=definition.name,
            AlarmDescription=f"{definition.metric_name} {COMPARISONS[definition.comparison]} {definition.threshold:g}",
            Namespace=self.namespace,
            MetricName=definition.metric_name,
            Dimensions=self.dimensions,
            Statistic="Maximum",
            Period=definition.period_s,
            EvaluationPeriods=definition.evaluation_periods,
            DatapointsToAlarm=definition.required_breaches,
            Threshold=float(definition.threshold),
            ComparisonOperator=definition.comparison,
            TreatMissingData="missing",
        )

    def state(self, name: str) -> AlarmStatus:
        found = self.client.describe_alarms(AlarmNames=[name]).get("MetricAlarms", [])
        if not found:
            raise KeyError(f"CloudWatch alarm {name!r} does not exist")
        alarm = found[0]
        return AlarmStatus(name, alarm["StateValue"], alarm.get("StateReason", ""), alarm["StateUpdatedTimestamp"])
