"""``model_deployment`` under ``airflow dags test`` on the aws backend, against moto's server.

The DAG's AWS access comes only from the ``aws_default`` connection (as in test_aws_connection).
The approval is answered while the run waits in ``awaiting_input``, by ``hitl_answer.py`` doing what
Airflow's HITL REST API does. ``endpoint_player.py`` makes the server play SageMaker's endpoints
(``UpdateEndpoint``, the Creating / Updating states, an endpoint answering with the model in its
archive), so the runs go through the provider's ``SageMakerEndpointOperator`` as on AWS: a first
version creates the endpoint (deferred to ``SageMakerTrigger``, run in line by ``dags test``), a
second one updates it blue/green (the worker polling), and a third, whose container answers wrong
numbers, is rolled back to the second's configuration by a task that finds its Model,
EndpointConfig and update left by an earlier try.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest
import xgboost as xgb
from endpoint_player import EndpointPlayer
from moto_aws import AWS_KEYS as KEYS
from moto_aws import AWS_REGION as REGION

from quant_engine.aws.deployment import EndpointDeployer, EndpointSpec, deployment_name
from quant_engine.backends import make_aws_clients, make_group_stores, make_model_registry, make_offline_store
from quant_engine.features.ingest import IngestionRequest, ingest
from quant_engine.training.deployment import ROLLED_BACK, DeploymentHistory

pytestmark = pytest.mark.airflow

REPO_ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_BIN = str(Path(sys.executable).with_name("airflow"))
ROLE = "arn:aws:iam::123456789012:role/quant-engine-sagemaker-execution"
TICKERS = ["SYN00", "SYN01"]
INLINE_TRIGGER = "[DAG TEST] running trigger in line"  # dags test running a deferred task's trigger


def _deploy_with_approval(
    airflow_home: Path, qe_home: Path, approver: str, *, deferrable: bool = False
) -> tuple[bool, str]:
    """``airflow dags test model_deployment`` with its approval answered from outside; (succeeded, log)."""
    env = {
        **os.environ,
        "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": str(deferrable),
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


def _register(registry, features: list[str], rows: np.ndarray, seed: int, folder: Path) -> str:
    """A version trained on its own label (column ``seed`` above its median), so versions predict apart."""
    labels = (rows[:, seed] > np.median(rows[:, seed])).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2, "seed": seed},
        xgb.DMatrix(rows, label=labels, feature_names=features),
        4,
    )
    booster.save_model(folder / f"model-{seed}.json")
    metadata = {"features": features, "data_start": "2024-01-02T00:00Z", "data_end": "2024-03-28T00:00Z"}
    return registry.register(folder / f"model-{seed}.json", metadata | {"data_fingerprint": f"synthetic-{seed}"})


def test_versions_are_created_updated_blue_green_and_an_unhealthy_update_rolled_back(
    airflow_home: Path,
    qe_home: Path,
    aws_connection,
    moto_server: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    player = EndpointPlayer(monkeypatch)
    monkeypatch.setenv("QE_SAGEMAKER_ROLE_ARN", ROLE)
    monkeypatch.setenv("QE_SAGEMAKER_ENDPOINT", "qe-test")
    monkeypatch.setenv("QE_ENDPOINT_IMAGE_URI", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/qe-serving:1")
    monkeypatch.setenv("QE_ENDPOINT_POLL_INTERVAL_S", "1")
    aws = make_aws_clients(
        aws_connection, session=boto3.session.Session(region_name=REGION, **KEYS), endpoint_url=moto_server
    )
    ingest(
        IngestionRequest.build("synthetic", "2024-01-02", "2024-03-27", tickers=TICKERS),
        make_group_stores(aws_connection, aws=aws),
    )
    frame = make_offline_store(aws_connection, aws=aws).read()
    features = [c for c in frame.columns if c not in ("ticker", "event_time")][:4]
    rows = frame[features].dropna().to_numpy()
    registry = make_model_registry(aws_connection, aws=aws)
    v1, v2, v3 = (_register(registry, features, rows, seed, tmp_path) for seed in (1, 2, 3))
    config = {v: deployment_name(registry.name, v, registry.get(v).model_sha256) for v in (v1, v2, v3)}
    sagemaker = aws.client("sagemaker")

    def endpoint() -> dict:
        return sagemaker.describe_endpoint(EndpointName="qe-test")

    def history_of() -> list:
        return DeploymentHistory(registry).entries()

    # 1. the first version creates the endpoint, whose wait is deferred to SageMakerTrigger
    registry.promote(v1, "first model")
    succeeded, log = _deploy_with_approval(airflow_home, qe_home, "alice", deferrable=True)
    assert succeeded, log[-6000:]
    assert "endpoint qe-test: create" in log and log.count(INLINE_TRIGGER) == 1
    assert (endpoint()["EndpointStatus"], endpoint()["EndpointConfigName"]) == ("InService", config[v1])
    model = sagemaker.describe_model(ModelName=config[v1])
    assert model["PrimaryContainer"]["ModelDataUrl"].endswith(f"/deployments/xgb_direction/{v1}/model.tar.gz")
    assert model["PrimaryContainer"]["Image"].endswith("/qe-serving:1") and model["ExecutionRoleArn"] == ROLE
    assert "rows answered as expected" in log  # the endpoint scored the sample with v1's own booster

    # 2. the second version: blue/green, UpdateEndpoint, the worker polling until InService
    registry.promote(v2, "better")
    succeeded, log = _deploy_with_approval(airflow_home, qe_home, "bob")
    assert succeeded, log[-6000:]
    assert "endpoint qe-test: update" in log and log.count(INLINE_TRIGGER) == 0
    assert (endpoint()["EndpointStatus"], endpoint()["EndpointConfigName"]) == ("InService", config[v2])
    live = DeploymentHistory(registry).live()
    assert (live.version, live.by, live.previous, live.endpoint_config, live.previous_endpoint_config) == (
        v2,
        "bob",
        v1,
        config[v2],
        config[v1],
    )

    # 3. an earlier try of v3's deploy task created its Model and EndpointConfig and started the
    # update before it died; v3's container answers wrong numbers: the retry only waits, the health
    # check fails, and the endpoint is updated back to v2's configuration
    deployer = EndpointDeployer(aws, EndpointSpec("qe-test", ROLE, image_uri="qe-serving:1"))
    archive = aws_connection.s3_uri("deployments", registry.name, v3, "model.tar.gz")
    deployer.stage(registry.model_bytes(v3), archive)
    sagemaker.create_model(**deployer.model_request(config[v3], archive))
    sagemaker.create_endpoint_config(**deployer.endpoint_config_request(config[v3], config[v3]))
    sagemaker.update_endpoint(EndpointName="qe-test", EndpointConfigName=config[v3])
    player.answers_wrong.add(config[v3])
    registry.promote(v3, "looks better on paper")
    succeeded, log = _deploy_with_approval(airflow_home, qe_home, "carol", deferrable=True)
    assert not succeeded and "deployment rolled back: endpoint qe-test answered" in log, log[-6000:]
    assert f"endpoint qe-test: wait {config[v3]}" in log and f"endpoint qe-test: update {config[v2]}" in log
    assert log.count(INLINE_TRIGGER) == 2  # the deploy's wait and the rollback's, both deferred
    assert (endpoint()["EndpointStatus"], endpoint()["EndpointConfigName"]) == ("InService", config[v2])
    history = [(e.version, e.outcome, e.by, e.endpoint_config, e.previous_endpoint_config) for e in history_of()]
    assert history == [
        (v1, "deployed", "alice", config[v1], None),
        (v2, "deployed", "bob", config[v2], config[v1]),
        (v3, "deployed", "carol", config[v3], config[v2]),  # what served before: the update's old config
        (v3, ROLLED_BACK, "model_deployment", config[v2], config[v3]),  # v2's config serving again
    ]
    assert DeploymentHistory(registry).live().version == v2
