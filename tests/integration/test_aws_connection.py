"""DAGs on the aws backend with AWS access only from an Airflow connection, against moto's server.

A real ``moto.server.ThreadedMotoServer`` listens on a loopback port; the ``aws_default`` connection
(``AIRFLOW_CONN_AWS_DEFAULT``, JSON) carries the keys, the region and the endpoint. The DAG process
gets no ``AWS_*`` variable and no ``QE_AWS_ENDPOINT_URL``: without the connection it would have no
credentials and no way to reach the server, so data landing there proves the connection was used.
"""

from __future__ import annotations

import boto3
import pandas as pd
import pytest
from moto_aws import AWS_BUCKET as BUCKET
from moto_aws import AWS_KEYS as KEYS
from moto_aws import AWS_REGION as REGION

from quant_engine.backends import make_aws_clients, make_offline_store, make_online_store
from quant_engine.config import Settings

pytestmark = pytest.mark.airflow


def test_ingestion_runs_against_moto_with_credentials_only_from_the_connection(
    run_dag, aws_connection: Settings, moto_server: str
) -> None:
    conf = {"source": "synthetic", "tickers": "SYN00,SYN01", "start": "2024-03-04", "end": "2024-03-08"}
    result = run_dag("market_data_ingestion", conf)
    assert "ingested 10 feature rows for 2 tickers" in result.stdout + result.stderr

    # what the DAG wrote is on the server, in the connection's region
    aws = make_aws_clients(
        aws_connection, session=boto3.session.Session(region_name=REGION, **KEYS), endpoint_url=moto_server
    )
    assert aws.region == REGION
    keys = [o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert any(k.startswith("quant-engine/offline-store/market_features/") for k in keys)
    assert len(make_offline_store(aws_connection, aws=aws).read()) == 10
    assert make_online_store(aws_connection, aws=aws).get("SYN01")["event_time"] == pd.Timestamp(
        "2024-03-08 21:00", tz="UTC"
    )
    assert aws_connection.dynamodb_table in aws.client("dynamodb").list_tables()["TableNames"]
    us_east = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=moto_server, **KEYS)
    assert us_east.list_tables()["TableNames"] == []  # not the settings' default region
