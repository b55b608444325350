"""``model_deployment`` under ``airflow dags test`` on the aws backend, against moto's server.

The DAG's AWS access comes only from the ``aws_default`` connection (as in test_aws_connection).
The approval is answered while the run waits in ``awaiting_input``, by ``hitl_answer.py`` doing what
Airflow's HITL REST API does. moto runs no serving container: its InvokeEndpoint answers what the
test queues on the server (``/moto-api/static/sagemaker/endpoint-results``): first another model's
probabilities (a broken deployment: the health check fails and the new endpoint is rolled back),
then the version's own (the deployment stands). moto has no UpdateEndpoint, so both runs are first
deployments; the blue/green update is tested call by call in tests/unit/aws/test_deployment.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import boto3
import numpy as np
import pytest
import xgboost as xgb
from moto_aws import AWS_KEYS as KEYS
from moto_aws import AWS_REGION as REGION

from quant_engine.backends import make_aws_clients, make_group_stores, make_model_registry, make_offline_store
from quant_engine.features.ingest import IngestionRequest, ingest
from quant_engine.training.deployment import ROLLED_BACK, DeploymentHistory, health_sample, score_version

pytestmark = pytest.mark.airflow

REPO_ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_BIN = str(Path(sys.executable).with_name("airflow"))
ROLE = "arn:aws:iam::123456789012:role/quant-engine-sagemaker-execution"
TICKERS = ["SYN00", "SYN01"]


def _queue_answer(server: str, probs: np.ndarray) -> None:
    body = {
        "region": REGION,
        "results": [{"Body": "\n".join(f"{p:.17g}" for p in probs), "ContentType": "text/csv"}],
    }
    request = urllib.request.Request(
        f"{server}/moto-api/static/sagemaker/endpoint-results",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=10).close()


def _deploy_with_approval(airflow_home: Path, qe_home: Path, approver: str) -> tuple[bool, str]:
    """``airflow dags test model_deployment`` with its approval answered from outside; (succeeded, log)."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "QE_HOME": str(qe_home),
    }
    run = subprocess.Popen(
        [AIRFLOW_BIN, "dags", "test", "model_deployment"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        answered = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("hitl_answer.py")), "model_deployment", "approve"]
            + ["Approve", approver],
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
            check=False,
        )
        output, _ = run.communicate(timeout=400)
    finally:
        if run.poll() is None:
            run.kill()
    assert answered.returncode == 0, answered.stdout[-2000:] + answered.stderr[-3000:] + "\n" + run.stdout.read()
    return run.returncode == 0 and "state=success" in output, output


def test_an_approved_version_is_deployed_and_a_broken_endpoint_rolled_back(
    airflow_home: Path,
    qe_home: Path,
    aws_connection,
    moto_server: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("QE_SAGEMAKER_ROLE_ARN", ROLE)
    monkeypatch.setenv("QE_SAGEMAKER_ENDPOINT", "qe-test")
    monkeypatch.setenv("QE_ENDPOINT_IMAGE_URI", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/qe-serving:1")
    aws = make_aws_clients(
        aws_connection, session=boto3.session.Session(region_name=REGION, **KEYS), endpoint_url=moto_server
    )
    stores = make_group_stores(aws_connection, aws=aws)
    ingest(IngestionRequest.build("synthetic", "2024-01-02", "2024-03-27", tickers=TICKERS), stores)
    frame = make_offline_store(aws_connection, aws=aws).read()
    features = [c for c in frame.columns if c not in ("ticker", "event_time")][:4]
    rows = frame[features].dropna().to_numpy()
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2},
        xgb.DMatrix(rows, label=(rows[:, 0] > np.median(rows[:, 0])).astype(int), feature_names=features),
        4,
    )
    booster.save_model(tmp_path / "model.json")
    registry = make_model_registry(aws_connection, aws=aws)
    version = registry.register(
        tmp_path / "model.json",
        {"features": features, "data_start": "2024-01-02T00:00Z", "data_end": "2024-03-28T00:00Z"}
        | {"data_fingerprint": "synthetic-q1"},
    )
    registry.promote(version, "first model")
    sagemaker = aws.client("sagemaker")

    # 1. the endpoint answers with another model's numbers: unhealthy, rolled back, the run fails
    sample = health_sample(make_offline_store(aws_connection, aws=aws).read(), features)
    _queue_answer(moto_server, 1.0 - score_version(registry, version, sample))
    succeeded, log = _deploy_with_approval(airflow_home, qe_home, "alice")
    assert not succeeded and "deployment rolled back: endpoint qe-test answered" in log, log[-6000:]
    assert sagemaker.list_endpoints()["Endpoints"] == []  # a failed first deployment leaves no endpoint
    assert [(e.version, e.outcome, e.by) for e in DeploymentHistory(registry).entries()] == [
        (version, "deployed", "alice"),
        (version, ROLLED_BACK, "model_deployment"),
    ]

    # 2. a new session arrives; the endpoint answers as the version does: deployed, the run succeeds
    ingest(IngestionRequest.build("synthetic", "2024-03-28", "2024-03-28", tickers=TICKERS), stores)
    sample = health_sample(make_offline_store(aws_connection, aws=aws).read(), features)
    _queue_answer(moto_server, score_version(registry, version, sample))
    succeeded, log = _deploy_with_approval(airflow_home, qe_home, "bob")
    assert succeeded, log[-6000:]
    live = DeploymentHistory(registry).live()
    assert (live.version, live.by, live.target) == (version, "bob", "endpoint:qe-test")
    endpoint = sagemaker.describe_endpoint(EndpointName="qe-test")
    assert endpoint["EndpointStatus"] == "InService" and endpoint["EndpointConfigName"] == live.endpoint_config
    model = sagemaker.describe_model(ModelName=live.endpoint_config)
    assert model["PrimaryContainer"]["ModelDataUrl"].endswith(f"/deployments/xgb_direction/{version}/model.tar.gz")
    assert model["PrimaryContainer"]["Image"].endswith("/qe-serving:1") and model["ExecutionRoleArn"] == ROLE
