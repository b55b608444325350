"""The endpoint lifecycle ``endpoint_player.py`` plays on moto's server, seen through the library's
plan and confirmation and botocore's ``endpoint_in_service`` waiter (the one the provider's
``SageMakerEndpointOperator`` waits with): SageMaker's refusals, a fleet that fails to start on a
create and on an update, and an endpoint answering with the model in its archive.
"""

from __future__ import annotations

from pathlib import Path

import boto3
import numpy as np
import pytest
import xgboost as xgb
from botocore.exceptions import ClientError, WaiterError
from endpoint_player import EndpointPlayer
from moto_aws import AWS_KEYS as KEYS
from moto_aws import AWS_REGION as REGION

from quant_engine.aws.deployment import DeploymentError, EndpointDeployer, EndpointSpec, plan_deployment
from quant_engine.backends import make_aws_clients, make_model_registry
from quant_engine.training.deployment import score_version

ROLE = "arn:aws:iam::123456789012:role/quant-engine-sagemaker-execution"
FEATURES = ["a", "b", "c"]
ROWS = np.random.default_rng(7).normal(size=(20, 3))


def _register(registry, seed: int, folder: Path) -> str:
    x = np.random.default_rng(seed).normal(size=(300, 3))
    labels = (x[:, seed % 3] > 0).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "seed": seed}, xgb.DMatrix(x, labels, feature_names=FEATURES), 5
    )
    booster.save_model(folder / f"model-{seed}.json")
    metadata = {"features": FEATURES, "data_start": "2024-01-02T00:00Z", "data_end": "2024-03-28T00:00Z"}
    return registry.register(folder / f"model-{seed}.json", metadata | {"data_fingerprint": f"data-{seed}"})


def test_the_player_plays_sagemakers_endpoint_lifecycle_refusals_and_answers(
    aws_connection, moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    player = EndpointPlayer(monkeypatch)
    aws = make_aws_clients(
        aws_connection, session=boto3.session.Session(region_name=REGION, **KEYS), endpoint_url=moto_server
    )
    registry = make_model_registry(aws_connection, aws=aws)
    v1, v2, v3 = (_register(registry, seed, tmp_path) for seed in (1, 2, 3))
    deployer = EndpointDeployer(aws, EndpointSpec("qe-player", ROLE, image_uri="xgb:1", poll_interval_s=1))
    sagemaker, runtime = aws.client("sagemaker"), aws.client("sagemaker-runtime")
    in_service = sagemaker.get_waiter("endpoint_in_service")

    def put_up(version: str) -> str:
        """What SageMakerEndpointOperator does with a plan: the creates, then create or update."""
        plan = plan_deployment(deployer, registry, version, archive_uri=aws_connection.s3_uri("m", f"{version}.tar.gz"))
        sagemaker.create_model(**plan.request["Model"])
        sagemaker.create_endpoint_config(**plan.request["EndpointConfig"])
        getattr(sagemaker, f"{plan.operation}_endpoint")(**plan.request["Endpoint"])
        return plan.config_name

    def answers(rows: np.ndarray) -> np.ndarray:
        body = "\n".join(",".join(repr(v) for v in row) for row in rows.tolist())
        reply = runtime.invoke_endpoint(EndpointName="qe-player", ContentType="text/csv", Body=body)
        return np.array([float(line) for line in reply["Body"].read().decode().splitlines()])

    # a create reports Creating first; the endpoint then answers with the archive's model
    first = put_up(v1)
    assert sagemaker.describe_endpoint(EndpointName="qe-player")["EndpointStatus"] == "Creating"
    in_service.wait(EndpointName="qe-player", WaiterConfig={"Delay": 1})
    assert deployer.confirm(first)["EndpointConfigName"] == first
    np.testing.assert_allclose(answers(ROWS), score_version(registry, v1, ROWS), rtol=0, atol=1e-6)
    with pytest.raises(ClientError, match="Cannot create already existing model"):
        sagemaker.create_model(**deployer.model_request(first, "s3://elsewhere/m.tar.gz"))
    with pytest.raises(ClientError, match="Cannot create already existing endpoint "):
        sagemaker.create_endpoint(EndpointName="qe-player", EndpointConfigName=first)
    with pytest.raises(ClientError, match="Could not find endpoint configuration"):
        sagemaker.update_endpoint(EndpointName="qe-player", EndpointConfigName="qe-missing")

    # an update whose fleet fails to start: Updating, then InService on the old config with the reason
    second = put_up(v2)
    player.fleet_fails[second] = "the container exited: xgboost-model not found"
    with pytest.raises(ClientError, match="Cannot update in-progress endpoint"):
        sagemaker.update_endpoint(EndpointName="qe-player", EndpointConfigName=first)
    # the next DescribeEndpoint reports Updating, the old config serving and the new one pending:
    # a retried deploy task plans to wait for that update, what served before being the old config
    retry = deployer.plan(second)
    assert (retry.operation, retry.previous_config) == ("wait", first)
    in_service.wait(EndpointName="qe-player", WaiterConfig={"Delay": 1})  # the waiter alone calls it a success
    with pytest.raises(DeploymentError, match=f"serves {first}, not {second}: .*xgboost-model not found"):
        deployer.confirm(second)
    np.testing.assert_allclose(answers(ROWS), score_version(registry, v1, ROWS), rtol=0, atol=1e-6)

    # the same fleet started: the update goes through; a container answering wrong numbers is served as asked
    del player.fleet_fails[second]
    sagemaker.update_endpoint(EndpointName="qe-player", EndpointConfigName=second)
    in_service.wait(EndpointName="qe-player", WaiterConfig={"Delay": 1})
    assert deployer.confirm(second)["EndpointConfigName"] == second
    player.answers_wrong.add(second)
    np.testing.assert_allclose(answers(ROWS), 1.0 - score_version(registry, v2, ROWS), rtol=0, atol=1e-6)

    # a create whose fleet fails: the endpoint ends Failed, and the waiter fails on it
    deployer.delete()
    third = put_up(v3)
    player.fleet_fails[third] = "no capacity for ml.m5.large"
    with pytest.raises(WaiterError, match="Failed"):
        in_service.wait(EndpointName="qe-player", WaiterConfig={"Delay": 1})
    with pytest.raises(DeploymentError, match="is Failed, not InService: no capacity"):
        deployer.confirm(third)
