"""The ``model_deployment`` DAG's steps on either backend, over the library's deployment history and
the AWS layer's endpoint deployer.

On the local backend a deployment moves the registry's live deployment, which the bridge's local
model serves (:func:`quant_engine.training.deployment.served_version`); on the aws backend
``plugins/qe_endpoint.py``'s operators also put the version on the SageMaker endpoint
``QE_SAGEMAKER_ENDPOINT`` (and take it off again). The health check scores the newest stored
feature rows with the deployed version (and, on aws, asks the endpoint for the same rows); a failed
check is rolled back to what served before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quant_engine.aws.deployment import EndpointDeployer
    from quant_engine.config import Settings


def candidate(model_name: str, version: object | None) -> dict[str, Any]:
    """What a run would deploy: ``version``, or the champion; and what serves now."""
    from qe_aws import model_registry

    from quant_engine.training.deployment import DeploymentHistory

    registry = model_registry(model_name)
    if version is None:
        promotion = registry.champion()
        if promotion is None:
            raise ValueError(f"model {model_name!r} has no champion to deploy; train and promote one first")
        version = promotion.version
    record = registry.get(version)
    live = DeploymentHistory(registry).live()
    metrics = record.metadata.metrics
    return {
        "model_name": registry.name,
        "version": record.version,
        "live": None if live is None else live.version,
        "summary": f"{registry.name} {record.version} (trained on data to {record.metadata.data_end[:10]}, "
        f"holdout log-loss {metrics.get('logloss', float('nan')):.5f}, AUC {metrics.get('auc', float('nan')):.4f}); "
        f"serving now: {'nothing' if live is None else live.version}",
    }


def approver(approval: dict[str, Any] | None) -> str:
    """Who approved, from the approval task's answer (``responded_by_user``)."""
    user = (approval or {}).get("responded_by_user") or {}
    return str(user.get("name") or user.get("id") or "unknown")


def endpoint_deployer(settings: Settings) -> EndpointDeployer:
    """The endpoint ``QE_SAGEMAKER_ENDPOINT`` through the connection."""
    from qe_aws import aws_clients

    from quant_engine.aws.deployment import EndpointDeployer, EndpointSpec

    return EndpointDeployer(aws_clients(settings), EndpointSpec.from_settings(settings))


def deploy(chosen: dict[str, Any], by: str) -> dict[str, Any]:
    """Local backend: the registry's live deployment moves to the approved version, which the
    bridge's local model serves (on aws, ``qe_endpoint.QeDeployOperator`` puts it on the endpoint)."""
    from qe_aws import model_registry

    from quant_engine.training.deployment import DeploymentHistory

    registry = model_registry(chosen["model_name"])
    entry = DeploymentHistory(registry).record_deployed(
        chosen["version"], target="local", by=by, reason=f"approved by {by}"
    )
    return entry.to_json() | {"model_name": registry.name}


def health_check(deployed: dict[str, Any]) -> str:
    """Score the newest stored feature rows with the deployed version (and on aws, through the endpoint);
    raise :class:`~quant_engine.training.deployment.HealthCheckError` or ``DeploymentError`` when unhealthy."""
    from qe_aws import aws_clients, model_registry

    from quant_engine.backends import make_offline_store
    from quant_engine.config import get_settings
    from quant_engine.training.deployment import newest_stored_rows, score_version

    settings = get_settings()
    registry = model_registry(deployed["model_name"])
    features = registry.get(deployed["version"]).metadata.features
    rows = newest_stored_rows(make_offline_store(settings, aws=aws_clients(settings)), features)
    expected = score_version(registry, deployed["version"], rows)
    if not deployed["target"].startswith("endpoint:"):
        return f"{registry.name} {deployed['version']} loads and scores {len(rows)} stored rows"
    return endpoint_deployer(settings).check(deployed["endpoint_config"], rows, expected)


def roll_back(deployed: dict[str, Any], reason: str) -> str:
    """Record the rollback of ``deployed`` (on aws, once the endpoint serves its previous configuration
    again or, after a first deployment, is deleted: ``qe_endpoint.QeRollbackOperator``); a rollback
    recorded already changes nothing."""
    from qe_aws import model_registry

    from quant_engine.training.deployment import DeploymentHistory

    registry = model_registry(deployed["model_name"])
    DeploymentHistory(registry).record_rollback(deployed["version"], by="model_deployment", reason=reason)
    return f"rolled {registry.name} {deployed['version']} back; serving {deployed['previous'] or 'nothing'} again"
