"""Alarms: the local state machine and history, and CloudWatch through moto with Model Monitor's names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import boto3
import numpy as np
import pandas as pd
import pytest
from moto import mock_aws

from quant_engine.aws.cloudwatch import CloudWatchAlarms
from quant_engine.backends import make_alarms
from quant_engine.config import Settings
from quant_engine.monitoring.alarms import (
    AlarmDefinition,
    LocalAlarms,
    drift_alarm,
    drift_metrics,
    metric_name,
)
from quant_engine.monitoring.baseline import build_baseline
from quant_engine.monitoring.feature_drift import check_drift

T0 = datetime(2026, 1, 5, tzinfo=UTC)


def _at(i: int) -> datetime:
    return T0 + timedelta(hours=i)


def test_local_alarm_moves_through_states_and_keeps_history(tmp_path) -> None:
    alarms = LocalAlarms(tmp_path)
    alarms.put_alarm(drift_alarm("ret", 0.1))
    assert alarms.state("feature_baseline_drift_ret-alarm").state == "INSUFFICIENT_DATA"
    for i, value in enumerate([0.05, 0.2, 0.3, 0.02]):
        alarms.put_metrics({"feature_baseline_drift_ret": value}, _at(i))
    status = alarms.state("feature_baseline_drift_ret-alarm")
    assert status.state == "OK" and status.updated_at == _at(3)
    history = [h.state for h in alarms.history("feature_baseline_drift_ret-alarm")]
    assert history == ["INSUFFICIENT_DATA", "OK", "ALARM", "OK"]  # changes only: 0.3 kept it in ALARM


def test_m_out_of_n_and_insufficient_data(tmp_path) -> None:
    alarms = LocalAlarms(tmp_path)
    alarms.put_alarm(AlarmDefinition("a", "m", 1.0, evaluation_periods=3, datapoints_to_alarm=2))
    alarms.put_metrics({"m": 2.0}, _at(0))
    alarms.put_metrics({"m": 2.0}, _at(1))
    assert alarms.state("a").state == "INSUFFICIENT_DATA"
    alarms.put_metrics({"m": 0.0}, _at(2))
    assert alarms.state("a").state == "ALARM"  # 2 of the last 3 breach
    alarms.put_metrics({"m": 0.0}, _at(3))
    assert alarms.state("a").state == "OK"


def test_comparisons_and_definition_validation() -> None:
    assert AlarmDefinition("a", "m", 1.0, comparison="LessThanThreshold").breaches(0.5)
    assert AlarmDefinition("a", "m", 1.0, comparison="GreaterThanOrEqualToThreshold").breaches(1.0)
    assert not AlarmDefinition("a", "m", 1.0).breaches(1.0)
    with pytest.raises(ValueError, match="comparison='Above'"):
        AlarmDefinition("a", "m", 1.0, comparison="Above")
    with pytest.raises(ValueError, match="evaluation_periods=0"):
        AlarmDefinition("a", "m", 1.0, evaluation_periods=0)
    with pytest.raises(ValueError, match="datapoints_to_alarm=3"):
        AlarmDefinition("a", "m", 1.0, evaluation_periods=2, datapoints_to_alarm=3)
    with pytest.raises(ValueError, match="period_s=45"):
        AlarmDefinition("a", "m", 1.0, period_s=45)
    with pytest.raises(ValueError, match="name=''"):
        AlarmDefinition("", "m", 1.0)


def test_local_state_persists_is_trimmed_and_replacing_an_alarm_keeps_history(tmp_path) -> None:
    alarms = LocalAlarms(tmp_path, max_datapoints=3)
    alarms.put_alarm(AlarmDefinition("a", "m", 1.0))
    for i in range(5):
        alarms.put_metrics({"m": float(i)}, _at(i))
    reopened = LocalAlarms(tmp_path)
    assert [v for _, v in reopened.datapoints("m")] == [2.0, 3.0, 4.0]
    assert reopened.state("a").state == "ALARM"
    reopened.put_alarm(AlarmDefinition("a", "m", 10.0))  # a looser threshold: evaluated at once
    assert reopened.state("a").state == "OK"
    assert [h.state for h in reopened.history("a")] == ["INSUFFICIENT_DATA", "OK", "ALARM", "OK"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".alarms.json.lock", "alarms.json"]


def test_local_bad_input(tmp_path) -> None:
    alarms = LocalAlarms(tmp_path)
    with pytest.raises(KeyError, match="'nope' does not exist"):
        alarms.state("nope")
    with pytest.raises(ValueError, match="must be a finite number"):
        alarms.put_metrics({"m": float("nan")})
    with pytest.raises(ValueError, match="naive"):
        alarms.put_metrics({"m": 1.0}, datetime(2026, 1, 1))
    with pytest.raises(TypeError, match="AlarmDefinition"):
        alarms.put_alarm({"name": "a"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_datapoints=0"):
        LocalAlarms(tmp_path, max_datapoints=0)


def test_drift_metrics_from_a_report() -> None:
    rng = np.random.default_rng(0)
    base = build_baseline(pd.DataFrame({"a": rng.normal(size=3000), "b": rng.normal(size=3000)}))
    report = check_drift(pd.DataFrame({"a": rng.normal(1.0, size=3000), "b": [np.nan] * 3000}), base)
    metrics = drift_metrics(report)
    assert list(metrics) == [metric_name("a")] == ["feature_baseline_drift_a"]
    assert metrics["feature_baseline_drift_a"] == report.features["a"].robust_distance
    base.constraints["monitoring_config"]["emit_metrics"] = "Disabled"
    assert drift_metrics(check_drift(pd.DataFrame({"a": [0.0], "b": [0.0]}), base)) == {}


@mock_aws
def test_cloudwatch_metrics_use_model_monitor_names_and_dimensions() -> None:
    client = boto3.client("cloudwatch", region_name="us-east-1")
    alarms = CloudWatchAlarms(client, "drift-schedule", endpoint="quant-endpoint")
    alarms.put_metrics({"feature_baseline_drift_ret": 0.25}, _at(0))
    listed = client.list_metrics(Namespace="aws/sagemaker/Endpoints/data-metrics")["Metrics"]
    assert [m["MetricName"] for m in listed] == ["feature_baseline_drift_ret"]
    assert sorted((d["Name"], d["Value"]) for d in listed[0]["Dimensions"]) == [
        ("Endpoint", "quant-endpoint"),
        ("MonitoringSchedule", "drift-schedule"),
    ]
    points = client.get_metric_statistics(
        Namespace=alarms.namespace,
        MetricName="feature_baseline_drift_ret",
        Dimensions=alarms.dimensions,
        StartTime=_at(-1),
        EndTime=_at(1),
        Period=3600,
        Statistics=["Maximum"],
    )["Datapoints"]
    assert [p["Maximum"] for p in points] == [0.25]


@mock_aws
def test_cloudwatch_alarm_definition_and_state_read_back() -> None:
    client = boto3.client("cloudwatch", region_name="us-east-1")
    alarms = CloudWatchAlarms(client, "drift-schedule", endpoint="quant-endpoint")
    alarms.put_alarm(drift_alarm("ret", 0.1, evaluation_periods=3, datapoints_to_alarm=2))
    (alarm,) = client.describe_alarms(AlarmNames=["feature_baseline_drift_ret-alarm"])["MetricAlarms"]
    assert alarm["Namespace"] == "aws/sagemaker/Endpoints/data-metrics"
    assert alarm["MetricName"] == "feature_baseline_drift_ret"
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (0.1, "GreaterThanThreshold")
    assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"], alarm["Statistic"]) == (3, 2, "Maximum")
    assert {d["Name"] for d in alarm["Dimensions"]} == {"Endpoint", "MonitoringSchedule"}
    # moto does not evaluate alarms; set the state as CloudWatch would and read it back
    client.set_alarm_state(AlarmName="feature_baseline_drift_ret-alarm", StateValue="ALARM", StateReason="drift")
    status = alarms.state("feature_baseline_drift_ret-alarm")
    assert (status.state, status.reason) == ("ALARM", "drift")
    with pytest.raises(KeyError, match="'missing' does not exist"):
        alarms.state("missing")


@mock_aws
def test_cloudwatch_batch_schedule_namespace_and_batching() -> None:
    client = boto3.client("cloudwatch", region_name="us-east-1")
    alarms = CloudWatchAlarms(client, "batch-schedule")
    assert alarms.namespace == "aws/sagemaker/ModelMonitoring/data-metrics"
    assert alarms.dimensions == [{"Name": "MonitoringSchedule", "Value": "batch-schedule"}]
    calls: list[int] = []
    put = client.put_metric_data

    def counting_put(**kwargs):  # noqa: ANN202 - wraps boto3's untyped method
        calls.append(len(kwargs["MetricData"]))
        return put(**kwargs)

    client.put_metric_data = counting_put
    alarms.put_metrics({f"feature_baseline_drift_f{i}": 0.01 for i in range(1001)}, _at(0))
    assert calls == [1000, 1]


def test_make_alarms_picks_the_backend(tmp_path) -> None:
    local = make_alarms(Settings(home=tmp_path), monitoring_schedule="drift-daily")
    assert isinstance(local, LocalAlarms) and local.folder == tmp_path / "monitoring" / "drift-daily"
    with mock_aws():
        aws = make_alarms(
            Settings(home=tmp_path, backend="aws", s3_bucket="b"), monitoring_schedule="drift-daily", endpoint="ep"
        )
        assert isinstance(aws, CloudWatchAlarms) and aws.dimensions[0] == {"Name": "Endpoint", "Value": "ep"}
    with pytest.raises(ValueError, match="monitoring_schedule='../x'"):
        make_alarms(Settings(home=tmp_path), monitoring_schedule="../x")
