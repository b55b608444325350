"""Model deployment: the registry's deployment history, the local deployment, and SageMaker endpoints.

moto 5.2.5 implements CreateModel, CreateEndpointConfig, CreateEndpoint, DescribeEndpoint,
DeleteEndpoint and InvokeEndpoint (answering what its ``results_queue`` holds, since it runs no
container), but not ``UpdateEndpoint``: a first deployment's plan, record, check and deletion run
against moto here; what a plan and a confirmation read from an update's DescribeEndpoint answers is
checked with botocore's Stubber. The whole DAG, updates included, runs against a moto server that
plays SageMaker's endpoints in tests/integration/test_model_deployment_dag.py.
"""

from __future__ import annotations

import io
import json
import tarfile

import boto3
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from botocore.stub import Stubber
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sagemakerruntime.models import sagemakerruntime_backends

from quant_engine.aws.deployment import (
    ARCHIVE_MEMBER,
    DeploymentError,
    EndpointDeployer,
    EndpointPlan,
    EndpointSpec,
    deployment_name,
    model_archive,
    plan_deployment,
    record_endpoint_deployment,
)
from quant_engine.aws.session import AwsClients
from quant_engine.backends import make_offline_store
from quant_engine.config import Settings, SettingsError
from quant_engine.storage.filesystem import LocalFileSystem
from quant_engine.training.deployment import (
    DEPLOYED,
    ROLLED_BACK,
    DeploymentHistory,
    HealthCheckError,
    health_sample,
    newest_stored_rows,
    score_version,
    served_version,
)
from quant_engine.training.registry import ModelRegistry, RegistryError

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/quant-engine-sagemaker-execution"
BUCKET = "qe-deploy"
ARN = "arn:aws:sagemaker:us-east-1:123456789012:endpoint/quant-engine"
FEATURES = ["a", "b"]
ROWS = np.random.default_rng(0).normal(size=(32, 2))


def _register(registry: ModelRegistry, seed: int, tmp_path) -> str:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 2))
    booster = xgb.train(
        {"objective": "binary:logistic", "seed": seed, "max_depth": 2},
        xgb.DMatrix(x, label=(x[:, 0] + rng.normal(scale=0.5, size=200) > 0).astype(int), feature_names=FEATURES),
        3 + seed,
    )
    path = tmp_path / f"model-{seed}.json"
    booster.save_model(path)
    metadata = {"features": FEATURES, "data_start": "2024-01-01T00:00Z", "data_end": "2024-06-01T00:00Z"}
    return registry.register(path, {**metadata, "data_fingerprint": f"data-{seed}"})


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    return ModelRegistry(LocalFileSystem(tmp_path / "models"), "xgb_direction")


# -- the history and the local deployment ---------------------------------------------------------


def test_history_records_deployments_and_rollbacks_and_says_what_serves(registry, tmp_path):
    v1, v2, v3 = (_register(registry, seed, tmp_path) for seed in (1, 2, 3))
    history = DeploymentHistory(registry)
    registry.promote(v1, "first model")
    assert history.live() is None and served_version(registry) == v1  # nothing deployed: the champion serves

    history.record_deployed(v1, target="local", by="alice", reason="approved by alice")
    registry.promote(v2, "beats v1")
    assert served_version(registry) == v1  # a promoted champion waits for approval
    second = history.record_deployed(v2, target="local", by="bob", reason="approved by bob")
    assert (second.previous, served_version(registry)) == (v1, v2)
    assert history.record_deployed(v2, target="local", by="bob", reason="retry") == second  # a retry adds nothing

    history.record_deployed(v3, target="local", by="carol", reason="approved by carol")
    rollback = history.record_rollback(v3, by="model_deployment", reason="health check failed")
    assert (rollback.outcome, rollback.previous, served_version(registry)) == (ROLLED_BACK, v2, v2)
    assert history.record_rollback(v3, by="model_deployment", reason="again") is None  # done already
    assert [(e.version, e.outcome, e.by) for e in history.entries()] == [
        (v1, DEPLOYED, "alice"),
        (v2, DEPLOYED, "bob"),
        (v3, DEPLOYED, "carol"),
        (v3, ROLLED_BACK, "model_deployment"),
    ]
    stored = json.loads((tmp_path / "models" / "xgb_direction" / "deployments.json").read_text())
    assert stored["live"] == 1 and len(stored["history"]) == 4


def test_a_failed_first_deployment_serves_nothing_and_bad_requests_are_refused(registry, tmp_path):
    v1 = _register(registry, 1, tmp_path)
    registry.promote(v1, "first")
    history = DeploymentHistory(registry)
    history.record_deployed(v1, target="local", by="alice", reason="approved")
    history.record_rollback(v1, by="model_deployment", reason="unhealthy")
    assert history.live() is None and served_version(registry) is None
    with pytest.raises(RegistryError, match="no version v0009"):
        history.record_deployed("v9", target="local", by="alice", reason="approved")
    with pytest.raises(RegistryError, match="by=' '"):
        history.record_deployed(v1, target="local", by=" ", reason="approved")


@pytest.mark.parametrize("window_days", [1, 4, 40, 5000])
def test_the_newest_stored_rows_are_the_whole_stores_newest_whatever_the_first_window(tmp_path, window_days):
    """Oracle: the sample of the whole store; 30 rows of 3 tickers take 10 days, so the first windows of
    1 and 4 days are too thin and must widen."""
    rng = np.random.default_rng(window_days)
    times = pd.date_range("2037-12-20", "2038-02-10", freq="D", tz="UTC")  # across 2038-01-19
    frame = pd.DataFrame(
        {"ticker": np.repeat(["AAA", "BBB", "CCC"], len(times)), "event_time": np.tile(times, 3)}
    ).assign(a=rng.normal(size=3 * len(times)), b=rng.normal(size=3 * len(times)))
    store = make_offline_store(Settings(home=tmp_path))
    store.write(frame)
    sample = newest_stored_rows(store, FEATURES, rows=30, window_days=window_days)
    np.testing.assert_array_equal(sample, health_sample(store.read(), FEATURES, rows=30))
    assert len(sample) == 30


def test_a_store_thinner_than_the_sample_is_read_whole_once_the_window_passes_its_first_day(tmp_path, monkeypatch):
    times = pd.date_range("2024-01-01", periods=40, freq="D", tz="UTC")
    store = make_offline_store(Settings(home=tmp_path))
    store.write(pd.DataFrame({"ticker": "AAA", "event_time": times, "a": np.arange(40.0), "b": np.arange(40.0)}))
    starts = []
    read = store.read
    monkeypatch.setattr(store, "read", lambda start=None: starts.append(start) or read(start=start))
    assert len(newest_stored_rows(store, FEATURES, rows=64, window_days=4)) == 40
    # 4, 8, 16, 32 days back from 2024-02-09, then everything; never the whole store twice
    assert starts == [*(times[-1] - pd.Timedelta(days=d) for d in (4, 8, 16, 32)), None]


def test_health_check_scores_a_sample_and_fails_on_an_altered_model_file(registry, tmp_path):
    v1 = _register(registry, 1, tmp_path)
    frame = pd.DataFrame({"a": [np.nan, *ROWS[:, 0]], "b": [0.0, *ROWS[:, 1]]})
    sample = health_sample(frame, FEATURES, rows=10)
    np.testing.assert_array_equal(sample, ROWS[-10:])
    probs = score_version(registry, v1, sample)
    oracle = registry.load_booster(v1).predict(xgb.DMatrix(sample.astype(np.float32), feature_names=FEATURES))
    np.testing.assert_array_equal(probs, oracle)
    with pytest.raises(HealthCheckError, match=r"lacks feature\(s\) \['c'\]"):
        health_sample(frame, ["a", "c"])
    # as the store returns rows, by ticker first: the newest rows are every ticker's last, not one ticker's
    times = pd.date_range("2024-01-01", periods=5, freq="D", tz="UTC")
    stored = pd.DataFrame(
        {"ticker": ["A"] * 5 + ["B"] * 5, "event_time": [*times, *times], "a": range(10), "b": range(10, 20)}
    )
    np.testing.assert_array_equal(health_sample(stored, FEATURES, rows=4), [[3, 13], [8, 18], [4, 14], [9, 19]])

    model_file = next((tmp_path / "models" / "xgb_direction" / "versions" / v1).glob("model-*.json"))
    model_file.write_bytes(model_file.read_bytes()[:-40])  # a damaged artifact
    with pytest.raises(HealthCheckError, match="cannot be loaded: .*sha256"):
        score_version(registry, v1, sample)


# -- SageMaker endpoints --------------------------------------------------------------------------


def _answer(body: str) -> None:
    """What moto's InvokeEndpoint answers next (it runs no container: the test says what one would)."""
    sagemakerruntime_backends[DEFAULT_ACCOUNT_ID][REGION].results_queue.append((body, "text/csv", "AllTraffic", ""))


def _csv(probs: np.ndarray) -> str:
    return "\n".join(f"{p:.17g}" for p in probs)


@pytest.fixture
def aws():
    with mock_aws():
        clients = AwsClients(boto3.Session(region_name=REGION))
        clients.client("s3").create_bucket(Bucket=BUCKET)
        yield clients


def _deployer(aws: AwsClients) -> EndpointDeployer:
    return EndpointDeployer(aws, EndpointSpec("quant-engine", ROLE, image_uri="xgb:1"))


def _carry_out(aws: AwsClients, plan: EndpointPlan) -> None:
    """What ``SageMakerEndpointOperator`` does with a plan's request (tested under Airflow in
    tests/integration/test_model_deployment_dag.py)."""
    sagemaker = aws.client("sagemaker")
    if "Model" in plan.request:
        sagemaker.create_model(**plan.request["Model"])
    if "EndpointConfig" in plan.request:
        sagemaker.create_endpoint_config(**plan.request["EndpointConfig"])
    assert plan.operation == "create"  # moto 5.2.5 has no UpdateEndpoint
    sagemaker.create_endpoint(**plan.request["Endpoint"])


def test_a_first_deployment_plans_model_config_and_endpoint_and_a_retry_repeats_none(aws, registry, tmp_path):
    v1 = _register(registry, 1, tmp_path)
    deployer = _deployer(aws)
    archive = f"s3://{BUCKET}/quant-engine/deployments/xgb_direction/{v1}/model.tar.gz"
    plan = plan_deployment(deployer, registry, v1, archive_uri=archive)

    name = deployment_name("xgb_direction", v1, registry.get(v1).model_sha256)
    assert (plan.operation, plan.config_name, plan.previous_config) == ("create", name, None)
    assert plan.request["Model"]["PrimaryContainer"] == {"Image": "xgb:1", "ModelDataUrl": archive}
    assert plan.request["EndpointConfig"]["ProductionVariants"][0]["ModelName"] == name
    assert plan.request["Endpoint"] == {"EndpointName": "quant-engine", "EndpointConfigName": name}
    staged = aws.client("s3").get_object(Bucket=BUCKET, Key=archive.split(f"{BUCKET}/")[1])["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(staged)) as tar:
        assert tar.getnames() == [ARCHIVE_MEMBER]
        assert tar.extractfile(ARCHIVE_MEMBER).read() == registry.model_bytes(v1)
    assert staged == model_archive(registry.model_bytes(v1))  # the same bytes on a retry

    _carry_out(aws, plan)
    entry = record_endpoint_deployment(deployer, registry, v1, previous_config=None, by="alice", reason="approved")
    assert (entry.endpoint_config, entry.previous_endpoint_config, entry.target) == (
        name,
        None,
        "endpoint:quant-engine",
    )
    assert deployer.live_config() == name
    expected = score_version(registry, v1, ROWS)
    _answer(_csv(expected))
    assert "32 rows answered as expected" in deployer.check(name, ROWS, expected)

    # a retried deploy task finds everything in place: it creates nothing, only waits, records nothing new
    again = plan_deployment(deployer, registry, v1, archive_uri=archive)
    assert (again.operation, again.previous_config, sorted(again.request)) == ("wait", None, ["Endpoint"])
    assert record_endpoint_deployment(deployer, registry, v1, previous_config=None, by="alice", reason="x") == entry
    assert len(DeploymentHistory(registry).entries()) == 1


def test_an_endpoint_answering_for_another_model_fails_the_check_and_a_first_deployment_is_deleted(
    aws, registry, tmp_path
):
    v1, v2 = _register(registry, 1, tmp_path), _register(registry, 2, tmp_path)
    deployer = _deployer(aws)
    plan = plan_deployment(deployer, registry, v2, archive_uri=f"s3://{BUCKET}/m/{v2}.tar.gz")
    _carry_out(aws, plan)
    _answer(_csv(score_version(registry, v1, ROWS)))  # the container serves another model's answers
    with pytest.raises(DeploymentError, match="the deployed version predicts"):
        deployer.check(plan.config_name, ROWS, score_version(registry, v2, ROWS))
    _answer("<html>502 Bad Gateway</html>")
    with pytest.raises(DeploymentError, match="not probabilities"):
        deployer.check(plan.config_name, ROWS[:1], score_version(registry, v2, ROWS[:1]))
    with pytest.raises(DeploymentError, match=f"serves {plan.config_name}, not qe-other"):
        deployer.confirm("qe-other")

    deployer.delete()
    assert deployer.describe() is None  # nothing served before: the failed endpoint is gone
    deployer.delete()  # a retried rollback changes nothing
    with pytest.raises(DeploymentError, match="does not exist"):
        deployer.confirm(plan.config_name)


def test_an_update_is_planned_blue_green_waited_for_when_under_way_and_a_kept_old_config_is_a_failure():
    """What the plan and the confirmation read from DescribeEndpoint, SageMaker's answers queued
    (the whole update runs against moto in tests/integration/test_model_deployment_dag.py)."""
    aws = AwsClients(boto3.Session(region_name=REGION))
    deployer, sagemaker = _deployer(aws), aws.client("sagemaker")

    def endpoint(config: str, status: str = "InService", **more) -> dict:
        return {
            "EndpointName": "quant-engine",
            "EndpointArn": ARN,
            "EndpointConfigName": config,
            "EndpointStatus": status,
            "CreationTime": pd.Timestamp("2026-01-01").to_pydatetime(),
            "LastModifiedTime": pd.Timestamp("2026-01-01").to_pydatetime(),
            **more,
        }

    with Stubber(sagemaker) as stub:
        stub.add_response("describe_endpoint", endpoint("qe-old"))
        plan = deployer.plan("qe-new", {"EndpointConfig": {"EndpointConfigName": "qe-new"}})
        assert (plan.operation, plan.previous_config) == ("update", "qe-old")
        assert plan.request["Endpoint"] == {"EndpointName": "quant-engine", "EndpointConfigName": "qe-new"}

        # SageMaker names the old config while updating, the new one pending: a retried task waits
        pending = {"PendingDeploymentSummary": {"EndpointConfigName": "qe-new"}}
        stub.add_response("describe_endpoint", endpoint("qe-old", "Updating", **pending))
        assert deployer.plan("qe-new").operation == "wait"

        # an update SageMaker rolled back by itself is a failure, not a success
        stub.add_response("describe_endpoint", endpoint("qe-old", FailureReason="model failed to load"))
        with pytest.raises(DeploymentError, match="kept the old configuration .model failed to load"):
            deployer.confirm("qe-new")
        stub.add_response("describe_endpoint", endpoint("qe-new", "Failed", FailureReason="no capacity"))
        with pytest.raises(DeploymentError, match="is Failed, not InService: no capacity"):
            deployer.confirm("qe-new")
        stub.assert_no_pending_responses()


def test_names_and_specs_are_checked(tmp_path):
    assert deployment_name("m" * 80, "v0001", "f" * 64).endswith("-v0001-ffffffff")
    assert len(deployment_name("m" * 80, "v0001", "f" * 64)) == 63
    with pytest.raises(ValueError, match="QE_SAGEMAKER_ENDPOINT"):
        EndpointSpec("bad_name!", ROLE)
    with pytest.raises(ValueError, match="QE_SAGEMAKER_ROLE_ARN"):
        EndpointSpec("quant-engine", "not-an-arn")
    with pytest.raises(ValueError, match="poll_interval_s=0 must be a whole number"):
        EndpointSpec("quant-engine", ROLE, poll_interval_s=0)
    settings = Settings(
        home=tmp_path, sagemaker_role_arn=ROLE, sagemaker_endpoint="qe-live", endpoint_image_uri="xgb:1"
    )
    spec = EndpointSpec.from_settings(settings, {"QE_ENDPOINT_POLL_INTERVAL_S": "5"})
    assert (spec.endpoint_name, spec.image_uri, spec.poll_interval_s, spec.wait_timeout_s) == (
        "qe-live",
        "xgb:1",
        5,
        3600,
    )
    with pytest.raises(SettingsError, match="QE_ENDPOINT_WAIT_TIMEOUT_S='1h' is not a whole number"):
        EndpointSpec.from_settings(settings, {"QE_ENDPOINT_WAIT_TIMEOUT_S": "1h"})
    with pytest.raises(ValueError, match="needs QE_SAGEMAKER_ROLE_ARN"):
        EndpointSpec.from_settings(Settings(home=tmp_path))


def test_the_bridge_serves_the_deployed_version_and_returns_to_the_previous_one_on_rollback(registry, tmp_path):
    from quant_engine.bridge.inference import LocalChampionModel

    v1, v2 = _register(registry, 1, tmp_path), _register(registry, 2, tmp_path)
    registry.promote(v1, "first")

    def no_baseline(name: str, version: str):
        raise FileNotFoundError(f"{name} {version} has no baseline")

    model = LocalChampionModel(registry, baseline_loader=no_baseline, check_every_s=0)
    assert model.version == v1  # nothing deployed yet: the champion, as before
    history = DeploymentHistory(registry)
    history.record_deployed(v1, target="local", by="alice", reason="approved")
    registry.promote(v2, "beats v1")
    assert model.refresh() is False and model.version == v1  # promoted, not approved: still v1
    history.record_deployed(v2, target="local", by="bob", reason="approved")
    assert model.refresh() is True and model.version == v2
    np.testing.assert_allclose(model.predict(ROWS), score_version(registry, v2, ROWS), rtol=0, atol=1e-6)
    history.record_rollback(v2, by="model_deployment", reason="unhealthy")
    assert model.refresh() is True and model.version == v1


def test_the_command_line_says_what_serves_and_lists_the_history(tmp_path, monkeypatch, capsys):
    import argparse

    from quant_engine.backends import make_model_registry
    from quant_engine.cli import training as cli

    def models(*argv: str) -> list[str]:
        parser = argparse.ArgumentParser(prog="quant-engine")
        cli.register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(["models", *argv])
        assert args.handler(args) == 0
        return capsys.readouterr().out.splitlines()

    registry = make_model_registry()
    v1, v2 = _register(registry, 1, tmp_path), _register(registry, 2, tmp_path)
    registry.promote(v1, "first")
    assert models("deployments") == [f"serving: {v1} (the champion, nothing deployed)"]
    history = DeploymentHistory(registry)
    history.record_deployed(v2, target="local", by="alice", reason="approved by alice", now="2026-12-01T10:00Z")
    history.record_rollback(v2, by="model_deployment", reason="health check failed", now="2026-12-01T10:05Z")
    lines = models("deployments")
    assert lines[0] == "serving: nothing (the last deployment was rolled back)"
    assert lines[1].split() == [
        "2026-12-01T10:00:00",
        v2,
        "deployed",
        "local",
        "by",
        "alice:",
        "approved",
        "by",
        "alice",
    ]
    assert lines[2].split()[:4] == ["2026-12-01T10:05:00", v2, "rolled_back", "local"]
