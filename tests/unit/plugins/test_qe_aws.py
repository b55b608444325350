"""``plugins/qe_aws.py``: the DAGs' AWS clients come from the Airflow connection, through the provider's hook."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

REPO_ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO_ROOT / "plugins"))

import qe_aws  # noqa: E402 - the plugins folder is on the path only from here

from quant_engine.config import Settings  # noqa: E402


def _connection(**extra: str) -> str:
    return json.dumps({"conn_type": "aws", "login": "AKIDCONNECTION", "password": "secret-key", "extra": extra})


def test_the_connection_gives_credentials_region_and_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_QE_AWS", _connection(region_name="eu-west-2", endpoint_url="http://127.0.0.1:9"))
    settings = Settings(backend="aws", s3_bucket="b", aws_conn_id="qe_aws", aws_endpoint_url="http://elsewhere:1")
    clients = qe_aws.aws_clients(settings)
    assert (clients.region, clients.endpoint_url) == ("eu-west-2", "http://127.0.0.1:9")
    assert clients.session.get_credentials().access_key == "AKIDCONNECTION"
    assert clients.client("s3").meta.endpoint_url == "http://127.0.0.1:9"


def test_without_region_or_endpoint_in_the_connection_the_settings_fill_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", _connection())
    settings = Settings(backend="aws", s3_bucket="b", aws_region="ap-south-1", aws_endpoint_url="http://moto:5000")
    clients = qe_aws.aws_clients(settings)
    assert (clients.region, clients.endpoint_url) == ("ap-south-1", "http://moto:5000")


def test_the_local_backend_needs_no_connection_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", _connection(region_name="eu-west-1"))
    assert qe_aws.aws_clients(Settings()) is None
    assert qe_aws.aws_clients(Settings(), always=True).region == "eu-west-1"  # SageMaker training jobs


def test_the_clients_reach_aws_with_the_connections_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", _connection(region_name="us-east-1"))
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="qe-conn")
        clients = qe_aws.aws_clients(Settings(backend="aws", s3_bucket="qe-conn"))
        assert [b["Name"] for b in clients.client("s3").list_buckets()["Buckets"]] == ["qe-conn"]


def test_a_bad_connection_id_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="QE_AWS_CONN_ID must name an Airflow connection"):
        Settings.from_env({"QE_AWS_CONN_ID": " "})
