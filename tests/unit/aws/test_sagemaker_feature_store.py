"""SageMaker Feature Store: the feature group through moto, record writes through botocore's Stubber.

moto 5.2.5 implements ``CreateFeatureGroup``/``DescribeFeatureGroup`` but not the
``sagemaker-featurestore-runtime`` API, so runtime calls are checked request by request.
"""

from __future__ import annotations

import boto3
import numpy as np
import pandas as pd
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from quant_engine.aws.feature_store import (
    MAX_BATCH_ENTRIES,
    FeatureStoreError,
    SageMakerFeatureGroup,
    feature_definitions,
    format_event_time,
    make_record,
)
from quant_engine.backends import make_sagemaker_feature_group
from quant_engine.config import Settings
from quant_engine.features.offline_store import FeatureGroupSchema
from quant_engine.features.pit import FeatureFrameError

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/sagemaker-feature-store"
S3_URI = "s3://qe-bucket/quant-engine/sagemaker-offline-store"
SCHEMA = FeatureGroupSchema.for_features(["log_return_1", "rsi_14"])
DAY = pd.Timestamp("2024-01-02", tz="UTC")


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture
def stubbed():
    """A group whose two clients answer only what each test queues up."""
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    runtime = boto3.client("sagemaker-featurestore-runtime", region_name=REGION)
    with Stubber(sagemaker) as sagemaker_stub, Stubber(runtime) as runtime_stub:
        yield SageMakerFeatureGroup(sagemaker, runtime, "market_features"), sagemaker_stub, runtime_stub
        sagemaker_stub.assert_no_pending_responses()
        runtime_stub.assert_no_pending_responses()


def frame_of(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ticker": [f"T{i:02d}" for i in range(n)],
            "event_time": DAY + pd.to_timedelta(np.arange(n), "min"),
            "log_return_1": np.linspace(-0.01, 0.01, n),
            "rsi_14": np.linspace(10.0, 90.0, n),
        }
    )


def expected_record(ticker: str, event_time: pd.Timestamp, **values: float) -> list[dict[str, str]]:
    return [
        {"FeatureName": "ticker", "ValueAsString": ticker},
        {"FeatureName": "event_time", "ValueAsString": f"{event_time.value // 10**9}.{event_time.value % 10**9:09d}"},
        *({"FeatureName": k, "ValueAsString": repr(v)} for k, v in values.items()),
    ]


# -- the feature group, against moto -------------------------------------------------------------


def test_create_and_describe_the_feature_group_with_moto():
    with mock_aws():
        group = SageMakerFeatureGroup(
            boto3.client("sagemaker", region_name=REGION),
            boto3.client("sagemaker-featurestore-runtime", region_name=REGION),
            "market_features",
        )
        arn = group.create(SCHEMA, offline_s3_uri=S3_URI, role_arn=ROLE)
        described = group.describe()
        assert group.create(SCHEMA, offline_s3_uri=S3_URI, role_arn=ROLE) == arn  # idempotent
        with pytest.raises(FeatureStoreError, match="exists with keys/definitions"):
            group.create(FeatureGroupSchema.for_features(["rsi_14"]), offline_s3_uri=S3_URI, role_arn=ROLE)
        round_trip = group.schema()

    assert arn == "arn:aws:sagemaker:us-east-1:123456789012:feature-group/market_features"
    assert described["FeatureGroupArn"] == arn
    assert described["RecordIdentifierFeatureName"] == "ticker"
    assert described["EventTimeFeatureName"] == "event_time"
    assert described["FeatureDefinitions"] == [
        {"FeatureName": "ticker", "FeatureType": "String"},
        {"FeatureName": "event_time", "FeatureType": "Fractional"},
        {"FeatureName": "log_return_1", "FeatureType": "Fractional"},
        {"FeatureName": "rsi_14", "FeatureType": "Fractional"},
    ]
    assert described["OfflineStoreConfig"]["S3StorageConfig"]["S3Uri"] == S3_URI
    assert described["RoleArn"] == ROLE
    assert round_trip.same_features(SCHEMA)


def test_the_backend_builds_the_group_in_the_configured_region():
    with mock_aws():
        group = make_sagemaker_feature_group(
            Settings(
                aws_region="eu-west-1",
                feature_group="fg-eu",
                backend="aws",
                s3_bucket="b",
                sagemaker_feature_store=True,
            )
        )
        arn = group.create(SCHEMA, offline_s3_uri=S3_URI, role_arn=ROLE)
    assert arn.startswith("arn:aws:sagemaker:eu-west-1:") and arn.endswith(":feature-group/fg-eu")


def test_the_create_request_is_exactly_what_sagemaker_expects(stubbed):
    group, sagemaker_stub, _ = stubbed
    group_string = SageMakerFeatureGroup(group.sagemaker, group.runtime, "market_features", event_time_type="String")
    sagemaker_stub.add_response(
        "create_feature_group",
        {"FeatureGroupArn": "arn:aws:sagemaker:us-east-1:123456789012:feature-group/market_features"},
        expected_params={
            "FeatureGroupName": "market_features",
            "RecordIdentifierFeatureName": "ticker",
            "EventTimeFeatureName": "event_time",
            "FeatureDefinitions": [
                {"FeatureName": "ticker", "FeatureType": "String"},
                {"FeatureName": "event_time", "FeatureType": "String"},
                {"FeatureName": "log_return_1", "FeatureType": "Fractional"},
                {"FeatureName": "rsi_14", "FeatureType": "Fractional"},
            ],
            "OnlineStoreConfig": {"EnableOnlineStore": True},
            "OfflineStoreConfig": {"S3StorageConfig": {"S3Uri": S3_URI}},
            "RoleArn": ROLE,
            "Description": "daily bar features",
        },
    )
    group_string.create(SCHEMA, offline_s3_uri=S3_URI, role_arn=ROLE, description="daily bar features")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"offline_s3_uri": "qe-bucket/prefix"}, "s3://bucket/prefix"),
        ({"role_arn": "sagemaker-role"}, "IAM role ARN"),
    ],
)
def test_create_rejects_bad_locations_before_calling_aws(stubbed, kwargs, message):
    group, _, _ = stubbed
    with pytest.raises(ValueError, match=message):
        group.create(SCHEMA, **{"offline_s3_uri": S3_URI, "role_arn": ROLE, **kwargs})


def test_bad_group_arguments():
    with pytest.raises(ValueError, match="event_time_type='Integral'"):
        SageMakerFeatureGroup(None, None, "fg", event_time_type="Integral")
    with pytest.raises(ValueError, match="feature group name 'has space'"):
        SageMakerFeatureGroup(None, None, "has space")


# -- records, against the service model with Stubber -------------------------------------------


def test_put_record_sends_feature_name_value_as_string_pairs(stubbed):
    group, _, runtime_stub = stubbed
    when = DAY + pd.Timedelta(hours=14, minutes=30, microseconds=250)
    runtime_stub.add_response(
        "put_record",
        {},
        expected_params={
            "FeatureGroupName": "market_features",
            "Record": [
                {"FeatureName": "ticker", "ValueAsString": "AAPL"},
                {"FeatureName": "event_time", "ValueAsString": "1704205800.000250000"},
                {"FeatureName": "log_return_1", "ValueAsString": "0.0125"},
            ],
        },
    )
    group.put_record("AAPL", when, {"log_return_1": 0.0125, "rsi_14": float("nan")})  # NaN: left out


def test_write_batches_25_records_per_call_in_order(stubbed):
    group, _, runtime_stub = stubbed
    frame = frame_of(MAX_BATCH_ENTRIES + 5)
    records = [
        expected_record(r.ticker, r.event_time, log_return_1=r.log_return_1, rsi_14=r.rsi_14)
        for r in frame.itertuples()
    ]
    for chunk in (records[:MAX_BATCH_ENTRIES], records[MAX_BATCH_ENTRIES:]):
        runtime_stub.add_response(
            "batch_write_record",
            {"Errors": [], "UnprocessedEntries": []},
            expected_params={"Entries": [{"FeatureGroupName": "market_features", "Record": r} for r in chunk]},
        )
    assert group.write(frame) == len(frame)


def test_unprocessed_entries_are_retried_and_rejections_raise(stubbed):
    group, _, runtime_stub = stubbed
    frame = frame_of(3)
    entries = [{"FeatureGroupName": "market_features", "Record": r} for r in group.records(frame)]
    runtime_stub.add_response(
        "batch_write_record", {"Errors": [], "UnprocessedEntries": entries[1:]}, expected_params={"Entries": entries}
    )
    runtime_stub.add_response(
        "batch_write_record", {"Errors": [], "UnprocessedEntries": []}, expected_params={"Entries": entries[1:]}
    )
    assert group.write(frame) == 3

    runtime_stub.add_response(
        "batch_write_record",
        {
            "Errors": [{"Entry": entries[2], "ErrorCode": "ValidationError", "ErrorMessage": "bad value"}],
            "UnprocessedEntries": [],
        },
        expected_params={"Entries": entries},
    )
    with pytest.raises(FeatureStoreError, match=r"rejected 1 of 3 records.*T02@.*ValidationError bad value"):
        group.write(frame)


def test_entries_still_unprocessed_after_max_attempts_raise(stubbed):
    group, _, runtime_stub = stubbed
    frame = frame_of(2)
    entries = [{"FeatureGroupName": "market_features", "Record": r} for r in group.records(frame)]
    for _ in range(2):
        runtime_stub.add_response("batch_write_record", {"Errors": [], "UnprocessedEntries": entries[:1]})
    with pytest.raises(FeatureStoreError, match="1 records .* still unprocessed after 2"):
        group.write(frame, max_attempts=2)


@pytest.mark.parametrize(
    ("frame", "kwargs", "error", "message"),
    [
        (frame_of(2).assign(event_time=lambda f: f["event_time"].dt.tz_localize(None)), {}, FeatureFrameError, "naive"),
        (frame_of(2).assign(rsi_14=1), {}, FeatureFrameError, "'rsi_14' is int64"),
        (frame_of(2).assign(rsi_14=np.inf), {}, FeatureFrameError, "is inf"),
        (frame_of(2).drop(columns="ticker"), {}, FeatureFrameError, "lacks column"),
        (frame_of(2), {"batch_size": 26}, ValueError, r"batch_size=26 must be an integer in \[1, 25\]"),
        (frame_of(2), {"max_attempts": 0}, ValueError, "max_attempts=0"),
    ],
)
def test_bad_frames_are_rejected_before_any_call(stubbed, frame, kwargs, error, message):
    group, _, _ = stubbed
    with pytest.raises(error, match=message):
        group.write(frame, **kwargs)


# -- value formats -----------------------------------------------------------------------------


def test_event_time_formats():
    ns = pd.Timestamp("2024-01-02 14:30:00", tz="UTC").value
    assert format_event_time(ns, "String") == "2024-01-02T14:30:00Z"
    assert format_event_time(ns + 7_000_000, "String") == "2024-01-02T14:30:00.007Z"
    assert format_event_time(ns + 1, "Fractional") == "1704205800.000000001"
    assert format_event_time(-1_500_000_000, "Fractional") == "-1.500000000"
    with pytest.raises(FeatureFrameError, match="sub-millisecond"):
        format_event_time(ns + 1_000, "String")


def test_feature_definitions_and_record_shape():
    definitions = feature_definitions(SCHEMA, event_time_type="String")
    assert [d["FeatureType"] for d in definitions] == ["String", "String", "Fractional", "Fractional"]
    record = make_record("MSFT", DAY.value, {"log_return_1": 1e-05, "rsi_14": 50.0}, event_time_type="String")
    assert record == [
        {"FeatureName": "ticker", "ValueAsString": "MSFT"},
        {"FeatureName": "event_time", "ValueAsString": "2024-01-02T00:00:00Z"},
        {"FeatureName": "log_return_1", "ValueAsString": "1e-05"},
        {"FeatureName": "rsi_14", "ValueAsString": "50.0"},
    ]
    assert float(record[2]["ValueAsString"]) == 1e-05  # repr round-trips every float exactly
