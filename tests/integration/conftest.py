"""Fixtures that run real DAGs with ``airflow dags test`` against a throw-away Airflow home."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer
from moto_aws import AWS_BUCKET, AWS_KEYS, AWS_REGION

from quant_engine.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_BIN = str(Path(sys.executable).with_name("airflow"))


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Airflow home with a migrated SQLite metadata database, shared by the session's DAG tests."""
    home = tmp_path_factory.mktemp("airflow_home")
    env = {**os.environ, "AIRFLOW_HOME": str(home)}
    result = subprocess.run(
        [AIRFLOW_BIN, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return home


@pytest.fixture
def run_dag(airflow_home: Path, qe_home: Path) -> Callable[..., subprocess.CompletedProcess]:
    """``run_dag(dag_id, conf)`` runs ``airflow dags test`` and fails the test with its log if it fails."""

    def run(
        dag_id: str,
        conf: dict | None = None,
        *,
        expect_success: bool = True,
        timeout: int = 600,
        logical_date: str | None = None,
    ) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "QE_HOME": str(qe_home),
        }
        command = [AIRFLOW_BIN, "dags", "test", dag_id, *([logical_date] if logical_date else [])]
        if conf is not None:
            command += ["--conf", json.dumps(conf)]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        output = result.stdout + result.stderr
        succeeded = result.returncode == 0 and "state=success" in output
        if expect_success:
            assert succeeded, f"airflow dags test {dag_id} failed:\n{output[-6000:]}"
        return result

    return run


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's server on a free loopback port, in this process, shared by the session's AWS tests."""
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_connection(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The aws backend configured by QE_* values only, the connection holding every AWS detail;
    the server's state (shared by the process's servers) reset to an empty bucket."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"), timeout=10).close()
    for key in [k for k in os.environ if k.startswith("AWS_")] + ["QE_AWS_ENDPOINT_URL", "QE_AWS_REGION"]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("QE_BACKEND", "aws")
    monkeypatch.setenv("QE_S3_BUCKET", AWS_BUCKET)
    connection = {
        "conn_type": "aws",
        "login": AWS_KEYS["aws_access_key_id"],
        "password": AWS_KEYS["aws_secret_access_key"],
        "extra": {"region_name": AWS_REGION, "endpoint_url": moto_server},
    }
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    s3 = boto3.client("s3", region_name=AWS_REGION, endpoint_url=moto_server, **AWS_KEYS)
    s3.create_bucket(Bucket=AWS_BUCKET, CreateBucketConfiguration={"LocationConstraint": AWS_REGION})
    return Settings.from_env()
