"""The SageMaker feature group is created by its first write, from the frame's features, against moto.

moto 5.2.5 implements CreateFeatureGroup / DescribeFeatureGroup (a group is ``Created`` at once) but
not the ``sagemaker-featurestore-runtime`` API nor an online store in its description, so records
go to a Stubber and the request is read as sent; the wait for a group SageMaker is still creating
is checked with a Stubber too.
"""

from __future__ import annotations

import dataclasses
from unittest.mock import ANY

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from quant_engine.aws.feature_store import FeatureStoreError, SageMakerFeatureGroup
from quant_engine.backends import make_group_stores
from quant_engine.config import Settings
from quant_engine.features.ingest import IngestionRequest, ingest
from quant_engine.features.offline_store import FeatureGroupSchema

BUCKET = "qe-fg-bucket"
ROLE = "arn:aws:iam::123456789012:role/quant-engine-sagemaker-execution"
REQUEST = IngestionRequest.build("synthetic", "2024-03-04", "2024-03-05", tickers=["SYN00"])


def test_the_first_ingestion_creates_the_group_with_offline_and_online_stores(tmp_path) -> None:
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        settings = Settings(
            home=tmp_path, backend="aws", s3_bucket=BUCKET, sagemaker_feature_store=True, sagemaker_role_arn=ROLE
        )
        built = make_group_stores(settings)
        runtime = boto3.client("sagemaker-featurestore-runtime", region_name="us-east-1")
        sagemaker = built.mirror.sagemaker
        assert (built.mirror.offline_s3_uri, built.mirror.role_arn) == (
            f"s3://{BUCKET}/quant-engine/feature-store",
            ROLE,
        )
        mirror = SageMakerFeatureGroup(
            sagemaker, runtime, "market_features", offline_s3_uri=built.mirror.offline_s3_uri, role_arn=ROLE
        )
        requests: list[dict] = []  # moto's DescribeFeatureGroup leaves the online store out: read the request
        sagemaker.meta.events.register(
            "before-parameter-build.sagemaker.CreateFeatureGroup", lambda params, **_: requests.append(params)
        )
        with Stubber(runtime) as stub:
            for _ in range(2):
                stub.add_response("batch_write_record", {"Errors": [], "UnprocessedEntries": []}, {"Entries": ANY})
            ingest(REQUEST, dataclasses.replace(built, mirror=mirror))
            described = sagemaker.describe_feature_group(FeatureGroupName="market_features")
            # a later run (a new process) finds the group and only writes records
            again = SageMakerFeatureGroup(
                sagemaker, runtime, "market_features", offline_s3_uri=mirror.offline_s3_uri, role_arn=ROLE
            )
            ingest(
                IngestionRequest.build("synthetic", "2024-03-06", "2024-03-06", tickers=["SYN00"]),
                dataclasses.replace(built, mirror=again),
            )
            stub.assert_no_pending_responses()
        stored = built.offline.schema.feature_names
    assert described["FeatureGroupStatus"] == "Created"
    assert [r["OnlineStoreConfig"] for r in requests] == [{"EnableOnlineStore": True}] * 2  # the 2nd: "exists"
    assert described["OfflineStoreConfig"]["S3StorageConfig"]["S3Uri"] == (f"s3://{BUCKET}/quant-engine/feature-store")
    assert [d["FeatureName"] for d in described["FeatureDefinitions"]] == ["ticker", "event_time", *stored]
    assert described["RoleArn"] == ROLE


def _group(sagemaker, **kwargs) -> SageMakerFeatureGroup:
    runtime = boto3.client("sagemaker-featurestore-runtime", region_name="us-east-1")
    return SageMakerFeatureGroup(sagemaker, runtime, "market_features", poll_s=0, timeout_s=1, **kwargs)


def test_creation_waits_for_the_group_and_says_why_it_failed() -> None:
    sagemaker = boto3.client("sagemaker", region_name="us-east-1")
    schema = FeatureGroupSchema.for_features(["rsi_14"])
    group = _group(sagemaker, offline_s3_uri=f"s3://{BUCKET}/fs", role_arn=ROLE)
    arn = "arn:aws:sagemaker:us-east-1:123456789012:feature-group/market_features"
    definitions = [
        {"FeatureName": "ticker", "FeatureType": "String"},
        {"FeatureName": "event_time", "FeatureType": "Fractional"},
        {"FeatureName": "rsi_14", "FeatureType": "Fractional"},
    ]

    def described(status: str, **extra) -> dict:
        return {
            "FeatureGroupArn": arn,
            "FeatureGroupName": "market_features",
            "RecordIdentifierFeatureName": "ticker",
            "EventTimeFeatureName": "event_time",
            "FeatureDefinitions": definitions,
            "CreationTime": "2026-01-01T00:00:00Z",
            "NextToken": "",
            "FeatureGroupStatus": status,
            **extra,
        }

    with Stubber(sagemaker) as stub:
        stub.add_response("create_feature_group", {"FeatureGroupArn": arn})
        stub.add_response("describe_feature_group", described("Creating"))
        stub.add_response("describe_feature_group", described("Created"))
        assert group.ensure(schema) == arn
        stub.add_response("create_feature_group", {"FeatureGroupArn": arn})
        stub.add_response("describe_feature_group", described("CreateFailed", FailureReason="role cannot write S3"))
        with pytest.raises(FeatureStoreError, match="CreateFailed: role cannot write S3"):
            group.ensure(schema)
        stub.assert_no_pending_responses()
    with pytest.raises(FeatureStoreError, match="QE_SAGEMAKER_ROLE_ARN"):
        _group(sagemaker, offline_s3_uri=f"s3://{BUCKET}/fs").ensure(schema)
