"""SageMaker real-time endpoint deployment: Model -> EndpointConfig -> Endpoint, blue/green updates, rollback.

A registry version is deployed as SageMaker's XGBoost framework image serving the booster packed
as ``model.tar.gz`` (one file, ``xgboost-model``, in XGBoost's JSON or UBJ format: never pickle).
Names are derived from the model, the version and the model's digest
(``qe-<model>-<version>-<sha8>``), so a retried task finds what its first try created instead of
creating it twice.

This module decides and checks; it does not wait. :func:`plan_deployment` stages the archive and
says what serving the version still takes (an :class:`EndpointPlan`: the Model and EndpointConfig
requests not made yet, then create the endpoint, update it, or only wait for the update a first
try started), in the request shape of the Amazon provider's ``SageMakerEndpointOperator``, which
carries it out and waits (``plugins/qe_endpoint.py``). The first deployment creates the endpoint;
later ones are blue/green: ``UpdateEndpoint`` with the new EndpointConfig, which SageMaker carries
out by starting the new fleet, shifting traffic to it once healthy and only then retiring the old
one; the endpoint keeps answering throughout. A failed update leaves the old configuration serving
(SageMaker rolls back by itself): :meth:`EndpointDeployer.confirm` tells that apart from success.
A health check that fails after the update is rolled back by planning the previous configuration
again (:meth:`EndpointDeployer.plan`), or, after a first deployment, deleting the endpoint.

The health check asks the endpoint for a sample of rows and compares its answers with the version's
own predictions (computed in process from the registry's model file): an endpoint that answers, but
with another model or garbled numbers, fails it.
"""

from __future__ import annotations

import gzip
import io
import logging
import re
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from botocore.exceptions import ClientError

from quant_engine.aws.images import framework_image_uri
from quant_engine.aws.processing import find_job, split_s3_uri
from quant_engine.aws.session import AwsClients
from quant_engine.config import Settings, env_overrides
from quant_engine.training.deployment import Deployment, DeploymentHistory
from quant_engine.training.registry import ModelRegistry

__all__ = [
    "DeploymentError",
    "EndpointDeployer",
    "EndpointPlan",
    "EndpointSpec",
    "deployment_name",
    "model_archive",
    "plan_deployment",
    "record_endpoint_deployment",
]

log = logging.getLogger(__name__)

#: The file name SageMaker's XGBoost serving container loads from ``model.tar.gz``.
ARCHIVE_MEMBER = "xgboost-model"
VARIANT = "AllTraffic"
_NAME_MAX = 63


class DeploymentError(RuntimeError):
    """SageMaker refused or failed a deployment step; the message says which and why."""


@dataclass(frozen=True)
class EndpointSpec:
    """Where and on what a model is served.

    Parameters
    ----------
    endpoint_name : str
        The endpoint the bridge calls (``QE_SAGEMAKER_ENDPOINT``).
    role_arn : str
        SageMaker's execution role (``QE_SAGEMAKER_ROLE_ARN``): it reads the model archive.
    instance_type, instance_count
        The fleet of the production variant.
    image_uri : str, optional
        Serving image; default SageMaker's XGBoost framework image of the region.
    poll_interval_s, wait_timeout_s : int
        How often and how long to wait for the endpoint to be ``InService``
        (``QE_ENDPOINT_POLL_INTERVAL_S``, ``QE_ENDPOINT_WAIT_TIMEOUT_S``).
    """

    endpoint_name: str
    role_arn: str
    instance_type: str = "ml.m5.large"
    instance_count: int = 1
    image_uri: str | None = None
    poll_interval_s: int = 30
    wait_timeout_s: int = 3600

    def __post_init__(self) -> None:
        if not isinstance(self.endpoint_name, str) or not re.fullmatch(
            r"[A-Za-z0-9](-*[A-Za-z0-9]){0,62}", self.endpoint_name
        ):
            raise ValueError(
                f"endpoint_name={self.endpoint_name!r} must be 1-63 letters, digits and hyphens (QE_SAGEMAKER_ENDPOINT)"
            )
        if not isinstance(self.role_arn, str) or not self.role_arn.startswith("arn:"):
            raise ValueError(f"role_arn={self.role_arn!r} must be an IAM role ARN (QE_SAGEMAKER_ROLE_ARN)")
        if isinstance(self.instance_count, bool) or not isinstance(self.instance_count, int) or self.instance_count < 1:
            raise ValueError(f"instance_count={self.instance_count!r} must be an integer >= 1")
        for name in ("poll_interval_s", "wait_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a whole number of seconds >= 1")

    @classmethod
    def from_settings(cls, settings: Settings, env: Mapping[str, str] | None = None) -> EndpointSpec:
        """The endpoint the settings name, its wait from ``QE_ENDPOINT_POLL_INTERVAL_S`` and
        ``QE_ENDPOINT_WAIT_TIMEOUT_S`` in ``env`` (default: ``os.environ``)."""
        if not settings.sagemaker_role_arn:
            raise ValueError(
                "deploying to SageMaker needs QE_SAGEMAKER_ROLE_ARN, the role the endpoint reads the model with"
            )
        waits = {"poll_interval_s": "QE_ENDPOINT_POLL_INTERVAL_S", "wait_timeout_s": "QE_ENDPOINT_WAIT_TIMEOUT_S"}
        return cls(
            settings.sagemaker_endpoint,
            settings.sagemaker_role_arn,
            instance_type=settings.endpoint_instance_type,
            image_uri=settings.endpoint_image_uri,
            **env_overrides(env, waits, whole_numbers=tuple(waits)),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class EndpointPlan:
    """What serving ``config_name`` on the endpoint still takes, decided from what exists.

    ``operation`` is ``create`` (no endpoint yet), ``update`` (blue/green from ``previous_config``)
    or ``wait`` (the endpoint serves ``config_name`` already, or is being updated to it: a retried
    task). ``request`` is ``SageMakerEndpointOperator``'s config: ``Model`` and ``EndpointConfig``
    (CreateModel / CreateEndpointConfig requests) only when they do not exist yet, and ``Endpoint``.
    ``previous_config`` is what served before the deployment (None: nothing).
    """

    endpoint_name: str
    config_name: str
    operation: str
    request: dict[str, Any]
    previous_config: str | None


def deployment_name(model_name: str, version: str, sha256: str) -> str:
    """The SageMaker Model and EndpointConfig name of a version: ``qe-<model>-<version>-<sha8>``.

    Examples
    --------
    >>> deployment_name("direction_xgb", "v0003", "ab" * 32)
    'qe-direction-xgb-v0003-abababab'
    """
    tail = f"-{version}-{sha256[:8]}"
    head = re.sub(r"[^A-Za-z0-9]+", "-", f"qe-{model_name}").strip("-")[: _NAME_MAX - len(tail)].rstrip("-")
    return head + tail


def model_archive(model_bytes: bytes) -> bytes:
    """``model.tar.gz`` holding the booster as ``xgboost-model``, byte-identical for the same model
    (fixed member time and owner), so a re-upload of the same version changes nothing."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        member = tarfile.TarInfo(ARCHIVE_MEMBER)
        member.size, member.mtime, member.mode = len(model_bytes), 0, 0o644
        archive.addfile(member, io.BytesIO(model_bytes))
    return buffer.getvalue()


class EndpointDeployer:
    """Plan, check and roll back one endpoint through a session's ``sagemaker``, ``sagemaker-runtime``
    and ``s3`` clients."""

    def __init__(self, aws: AwsClients, spec: EndpointSpec) -> None:
        self.aws = aws
        self.spec = spec
        self.sagemaker = aws.client("sagemaker")

    def __repr__(self) -> str:
        return f"EndpointDeployer({self.spec.endpoint_name!r})"

    # -- the resources ------------------------------------------------------------------------
    def stage(self, model_bytes: bytes, archive_uri: str) -> str:
        """Upload the model archive to ``archive_uri`` (``s3://bucket/key.tar.gz``) and return it."""
        bucket, key = split_s3_uri(archive_uri)
        self.aws.client("s3").put_object(Bucket=bucket, Key=key, Body=model_archive(model_bytes))
        return archive_uri

    def model_request(self, name: str, archive_uri: str) -> dict[str, Any]:
        """The CreateModel request of Model ``name``: the serving image reading ``archive_uri``."""
        image = self.spec.image_uri or framework_image_uri(self.aws.region, instance_type=self.spec.instance_type)
        return {
            "ModelName": name,
            "ExecutionRoleArn": self.spec.role_arn,
            "PrimaryContainer": {"Image": image, "ModelDataUrl": archive_uri},
        }

    def endpoint_config_request(self, name: str, model_name: str) -> dict[str, Any]:
        """The CreateEndpointConfig request of ``name``: one variant of ``model_name`` taking all traffic."""
        variant = {
            "VariantName": VARIANT,
            "ModelName": model_name,
            "InitialInstanceCount": self.spec.instance_count,
            "InstanceType": self.spec.instance_type,
            "InitialVariantWeight": 1.0,
        }
        return {"EndpointConfigName": name, "ProductionVariants": [variant]}

    def resource_requests(self, name: str, archive_uri: str) -> dict[str, Any]:
        """The Model and EndpointConfig ``name`` requests still to make: those that exist are kept (a retry)."""
        requests: dict[str, Any] = {}
        if find_job(lambda: self.sagemaker.describe_model(ModelName=name)) is None:
            requests["Model"] = self.model_request(name, archive_uri)
        if find_job(lambda: self.sagemaker.describe_endpoint_config(EndpointConfigName=name)) is None:
            requests["EndpointConfig"] = self.endpoint_config_request(name, name)
        return requests

    # -- the endpoint -------------------------------------------------------------------------
    def describe(self) -> dict[str, Any] | None:
        """``DescribeEndpoint``, or None when the endpoint does not exist."""
        return find_job(lambda: self.sagemaker.describe_endpoint(EndpointName=self.spec.endpoint_name))

    def live_config(self) -> str | None:
        """The EndpointConfig the endpoint serves now, or None before the first deployment."""
        described = self.describe()
        return None if described is None else described["EndpointConfigName"]

    def plan(self, config_name: str, resources: dict[str, Any] | None = None) -> EndpointPlan:
        """What serving ``config_name`` takes from the endpoint's state: create, update or only wait.

        While an update runs, SageMaker still names the old configuration ``EndpointConfigName`` and
        the new one in ``PendingDeploymentSummary``; an update to ``config_name`` under way is waited for.
        """
        endpoint = {"EndpointName": self.spec.endpoint_name, "EndpointConfigName": config_name}
        request = {**(resources or {}), "Endpoint": endpoint}
        described = self.describe()
        if described is None:
            return EndpointPlan(self.spec.endpoint_name, config_name, "create", request, None)
        serving = described["EndpointConfigName"]
        pending = (described.get("PendingDeploymentSummary") or {}).get("EndpointConfigName")
        operation = "wait" if config_name in (serving, pending) else "update"
        return EndpointPlan(self.spec.endpoint_name, config_name, operation, request, serving)

    def confirm(self, config_name: str) -> dict[str, Any]:
        """The endpoint's description once a create or update is over; :class:`DeploymentError` unless
        it is ``InService`` serving ``config_name`` (a failed update leaves the old one serving)."""
        described = self.describe()
        if described is None:
            raise DeploymentError(f"endpoint {self.spec.endpoint_name} does not exist")
        status, reason = described["EndpointStatus"], described.get("FailureReason", "no reason given")
        if status != "InService":
            raise DeploymentError(f"endpoint {self.spec.endpoint_name} is {status}, not InService: {reason}")
        if described["EndpointConfigName"] != config_name:
            raise DeploymentError(
                f"endpoint {self.spec.endpoint_name} serves {described['EndpointConfigName']}, not {config_name}: "
                f"the update failed and SageMaker kept the old configuration ({reason})"
            )
        return described

    def delete(self) -> None:
        """Delete the endpoint (a failed first deployment's rollback); a deleted one stays deleted."""
        if self.describe() is not None:
            self.sagemaker.delete_endpoint(EndpointName=self.spec.endpoint_name)
            log.info("deleted endpoint %s: its first deployment failed", self.spec.endpoint_name)

    # -- the health check ---------------------------------------------------------------------
    def check(self, config_name: str, rows: np.ndarray, expected: np.ndarray, *, atol: float = 1e-5) -> str:
        """Raise :class:`DeploymentError` unless the endpoint serves ``config_name`` in service with its
        variant up, and answers ``rows`` with ``expected`` (the version's own probabilities) within ``atol``."""
        described = self.confirm(config_name)
        variants = {v["VariantName"]: v for v in described.get("ProductionVariants", [])}
        variant = variants.get(VARIANT)
        if variant is None or variant.get("CurrentInstanceCount", self.spec.instance_count) < 1:
            raise DeploymentError(f"endpoint {self.spec.endpoint_name} has no running {VARIANT} variant: {variants}")
        payload = io.StringIO()
        np.savetxt(payload, np.asarray(rows, dtype=np.float64), delimiter=",", fmt="%.17g")
        try:
            response = self.aws.client("sagemaker-runtime").invoke_endpoint(
                EndpointName=self.spec.endpoint_name,
                ContentType="text/csv",
                Accept="text/csv",
                Body=payload.getvalue().encode(),
            )
        except ClientError as exc:
            raise DeploymentError(f"endpoint {self.spec.endpoint_name} did not answer: {_message(exc)}") from None
        text = response["Body"].read().decode().strip()
        try:
            answer = np.array([float(v) for v in text.replace("\n", ",").split(",") if v.strip()])
        except ValueError:
            raise DeploymentError(
                f"endpoint {self.spec.endpoint_name} answered {text[:80]!r}, not probabilities"
            ) from None
        expected = np.asarray(expected, dtype=np.float64)
        if answer.shape != expected.shape or not np.allclose(answer, expected, rtol=0.0, atol=atol):
            raise DeploymentError(
                f"endpoint {self.spec.endpoint_name} answered {answer[:3].tolist()}... for {len(expected)} rows; "
                f"the deployed version predicts {expected[:3].tolist()}..."
            )
        return f"endpoint {self.spec.endpoint_name} serves {config_name}: {len(expected)} rows answered as expected"


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", exc))


def plan_deployment(
    deployer: EndpointDeployer, registry: ModelRegistry, version: object, *, archive_uri: str
) -> EndpointPlan:
    """Stage ``version``'s model archive and plan its Model, EndpointConfig and endpoint step.

    When the endpoint serves the version's configuration already (a retried task whose first try
    switched it), what served before comes from the deployment history.
    """
    record = registry.get(version)
    name = deployment_name(registry.name, record.version, record.model_sha256)
    deployer.stage(registry.model_bytes(record.version), archive_uri)
    plan = deployer.plan(name, deployer.resource_requests(name, archive_uri))
    if plan.previous_config == name:
        live = DeploymentHistory(registry).live()
        if live is None:
            plan = replace(plan, previous_config=None)
        else:  # the first try recorded the deployment too, or not yet
            before = live.previous_endpoint_config if live.endpoint_config == name else live.endpoint_config
            plan = replace(plan, previous_config=before)
    return plan


def record_endpoint_deployment(
    deployer: EndpointDeployer,
    registry: ModelRegistry,
    version: object,
    *,
    previous_config: str | None,
    by: str,
    reason: str,
) -> Deployment:
    """Once the endpoint's create or update is over: confirm it serves ``version`` and record the
    deployment in the registry's history (a deployment recorded already is returned as it is)."""
    record = registry.get(version)
    name = deployment_name(registry.name, record.version, record.model_sha256)
    deployer.confirm(name)
    history = DeploymentHistory(registry)
    live = history.live()
    if live is not None and live.version == record.version and live.endpoint_config == name:
        return live
    return history.record_deployed(
        record.version,
        target=f"endpoint:{deployer.spec.endpoint_name}",
        by=by,
        reason=reason,
        endpoint_config=name,
        previous_endpoint_config=previous_config,
    )
