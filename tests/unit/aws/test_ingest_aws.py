"""Ingestion on the aws backend: S3 offline store and DynamoDB online store (moto), SageMaker
Feature Store records through the runtime (botocore Stubber: moto has no featurestore-runtime)."""

from __future__ import annotations

import dataclasses

import boto3
import pandas as pd
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from quant_engine.aws.feature_store import SageMakerFeatureGroup
from quant_engine.backends import make_group_stores, make_offline_store, make_online_store
from quant_engine.config import Settings, SettingsError
from quant_engine.features.ingest import IngestionRequest, ingest

BUCKET = "qe-test-bucket"
REQUEST = IngestionRequest.build("synthetic", "2024-03-04", "2024-03-06", tickers=["SYN00", "SYN01"])


@pytest.fixture
def aws_settings(tmp_path):
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        settings = Settings(home=tmp_path, backend="aws", s3_bucket=BUCKET, sagemaker_feature_store=True)
        runtime = boto3.client("sagemaker-featurestore-runtime", region_name="us-east-1")
        built = make_group_stores(settings)
        assert isinstance(built.mirror, SageMakerFeatureGroup)  # the backend mirrors into SageMaker...
        mirror = SageMakerFeatureGroup(built.mirror.sagemaker, runtime, built.mirror.name)  # ...here, stubbed
        with Stubber(runtime) as stub:
            yield settings, stub, dataclasses.replace(built, mirror=mirror)


def test_aws_ingestion_writes_s3_dynamodb_and_sagemaker(aws_settings) -> None:
    settings, stub, stores = aws_settings
    written: list[dict] = []
    stub.add_response("batch_write_record", {"Errors": [], "UnprocessedEntries": []}, expected_params={"Entries": ANY})
    stub.client.meta.events.register(
        "before-parameter-build.sagemaker-featurestore-runtime.BatchWriteRecord",
        lambda params, **_: written.extend(params["Entries"]),
    )
    result = ingest(REQUEST, stores)
    stub.assert_no_pending_responses()
    assert result.rows_written_offline == 6
    assert len(written) == 6 and {e["FeatureGroupName"] for e in written} == {"market_features"}
    first = {f["FeatureName"]: f["ValueAsString"] for f in written[0]["Record"]}
    assert (
        first["ticker"] == "SYN00"
        and float(first["event_time"]) == pd.Timestamp("2024-03-04 21:00", tz="UTC").timestamp()
    )
    objects = boto3.client("s3", region_name="us-east-1").list_objects_v2(Bucket=BUCKET)["Contents"]
    assert any("/offline-store/market_features/data/year=2024/month=03/day=04/" in o["Key"] for o in objects)
    assert make_offline_store(settings).read()["ticker"].value_counts().to_dict() == {"SYN00": 3, "SYN01": 3}
    latest = make_online_store(settings).get("SYN01")
    assert latest["event_time"] == pd.Timestamp("2024-03-06 21:00", tz="UTC")


def test_rejected_sagemaker_records_undo_the_whole_ingestion(aws_settings) -> None:
    settings, stub, stores = aws_settings
    stub.add_client_error("batch_write_record", "ValidationError", "record rejected")
    with pytest.raises(Exception, match="record rejected"):
        ingest(REQUEST, stores)
    assert make_offline_store(settings).commits() == []
    assert make_online_store(settings).get_many(["SYN00", "SYN01"]) == {}


def test_sagemaker_feature_store_needs_the_aws_backend() -> None:
    with pytest.raises(SettingsError, match="QE_SAGEMAKER_FEATURE_STORE needs QE_BACKEND=aws"):
        Settings.from_env({"QE_SAGEMAKER_FEATURE_STORE": "1"})
    with pytest.raises(SettingsError, match="not a yes/no value"):
        Settings.from_env({"QE_BACKEND": "aws", "QE_S3_BUCKET": "b", "QE_SAGEMAKER_FEATURE_STORE": "maybe"})
