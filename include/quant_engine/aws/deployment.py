"""SageMaker real-time endpoint deployment: Model -> EndpointConfig -> Endpoint, blue/green updates, rollback.

A registry version is deployed as SageMaker's XGBoost framework image serving the booster packed
as ``model.tar.gz`` (one file, ``xgboost-model``, in XGBoost's JSON or UBJ format: never pickle).
Names are derived from the model, the version and the model's digest
(``qe-<model>-<version>-<sha8>``), so a retried task finds what its first try created instead of
creating it twice.

The first deployment creates the endpoint. Later ones are blue/green: a new EndpointConfig and
``UpdateEndpoint``, which SageMaker carries out by starting the new fleet, shifting traffic to it
once healthy and only then retiring the old one; the endpoint keeps answering throughout. A failed
update leaves the old configuration serving (SageMaker rolls back by itself); a health check that
fails after the update is rolled back here, by updating to the previous configuration again.

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
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from botocore.exceptions import ClientError

from quant_engine.aws.images import framework_image_uri
from quant_engine.aws.processing import find_job, split_s3_uri
from quant_engine.aws.session import AwsClients
from quant_engine.training.deployment import Deployment, DeploymentHistory
from quant_engine.training.registry import ModelRegistry

__all__ = [
    "DeploymentError",
    "EndpointDeployer",
    "EndpointSpec",
    "deploy_to_endpoint",
    "deployment_name",
    "model_archive",
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
    poll_s, timeout_s : float
        How often and how long to wait for the endpoint to be ``InService``.
    """

    endpoint_name: str
    role_arn: str
    instance_type: str = "ml.m5.large"
    instance_count: int = 1
    image_uri: str | None = None
    poll_s: float = 30.0
    timeout_s: float = 3600.0

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
        if not self.poll_s >= 0 or not self.timeout_s > 0:
            raise ValueError(f"poll_s={self.poll_s!r} must be >= 0 and timeout_s={self.timeout_s!r} > 0")


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
    """Deploy, check and roll back one endpoint through a session's ``sagemaker``, ``sagemaker-runtime``
    and ``s3`` clients."""

    def __init__(self, aws: AwsClients, spec: EndpointSpec, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.aws = aws
        self.spec = spec
        self._sleep = sleep
        self.sagemaker = aws.client("sagemaker")

    def __repr__(self) -> str:
        return f"EndpointDeployer({self.spec.endpoint_name!r})"

    # -- the resources ------------------------------------------------------------------------
    def stage(self, model_bytes: bytes, archive_uri: str) -> str:
        """Upload the model archive to ``archive_uri`` (``s3://bucket/key.tar.gz``) and return it."""
        bucket, key = split_s3_uri(archive_uri)
        self.aws.client("s3").put_object(Bucket=bucket, Key=key, Body=model_archive(model_bytes))
        return archive_uri

    def create_model(self, name: str, archive_uri: str) -> str:
        """The SageMaker Model ``name`` serving ``archive_uri``; an existing one is kept (a retry)."""
        image = self.spec.image_uri or framework_image_uri(self.aws.region, instance_type=self.spec.instance_type)
        try:
            self.sagemaker.create_model(
                ModelName=name,
                ExecutionRoleArn=self.spec.role_arn,
                PrimaryContainer={"Image": image, "ModelDataUrl": archive_uri},
            )
        except ClientError as exc:
            if not _already_exists(exc):
                raise DeploymentError(f"CreateModel {name} failed: {_message(exc)}") from None
        return name

    def create_endpoint_config(self, name: str, model_name: str) -> str:
        """The EndpointConfig ``name``: one variant of ``model_name`` taking all traffic; kept when it exists."""
        try:
            self.sagemaker.create_endpoint_config(
                EndpointConfigName=name,
                ProductionVariants=[
                    {
                        "VariantName": VARIANT,
                        "ModelName": model_name,
                        "InitialInstanceCount": self.spec.instance_count,
                        "InstanceType": self.spec.instance_type,
                        "InitialVariantWeight": 1.0,
                    }
                ],
            )
        except ClientError as exc:
            if not _already_exists(exc):
                raise DeploymentError(f"CreateEndpointConfig {name} failed: {_message(exc)}") from None
        return name

    # -- the endpoint -------------------------------------------------------------------------
    def describe(self) -> dict[str, Any] | None:
        """``DescribeEndpoint``, or None when the endpoint does not exist."""
        return find_job(lambda: self.sagemaker.describe_endpoint(EndpointName=self.spec.endpoint_name))

    def live_config(self) -> str | None:
        """The EndpointConfig the endpoint serves now, or None before the first deployment."""
        described = self.describe()
        return None if described is None else described["EndpointConfigName"]

    def switch(self, config_name: str) -> str | None:
        """Serve ``config_name``: create the endpoint, or update it blue/green; wait until ``InService``.

        Returns the configuration served before (None for a new endpoint). Switching to the
        configuration already served only waits for it.
        """
        described = self.describe()
        previous = None if described is None else described["EndpointConfigName"]
        if described is None:
            self.sagemaker.create_endpoint(EndpointName=self.spec.endpoint_name, EndpointConfigName=config_name)
            log.info("creating endpoint %s with %s", self.spec.endpoint_name, config_name)
        elif previous != config_name:
            if described["EndpointStatus"] not in ("InService", "Failed"):
                self.wait_in_service()  # SageMaker takes no update while one is in progress
            self.sagemaker.update_endpoint(EndpointName=self.spec.endpoint_name, EndpointConfigName=config_name)
            log.info("updating endpoint %s: %s -> %s (blue/green)", self.spec.endpoint_name, previous, config_name)
        self.wait_in_service(config_name)
        return previous

    def wait_in_service(self, config_name: str | None = None) -> dict[str, Any]:
        """Poll until the endpoint is ``InService`` (serving ``config_name`` when given).

        Raises
        ------
        DeploymentError
            The endpoint is ``Failed``, serves another configuration once the update is over (SageMaker
            rolled the update back), or is not in service within ``timeout_s``.
        """
        waited = 0.0
        while True:
            described = self.describe()
            if described is None:
                raise DeploymentError(f"endpoint {self.spec.endpoint_name} does not exist")
            status = described["EndpointStatus"]
            if status == "Failed":
                raise DeploymentError(
                    f"endpoint {self.spec.endpoint_name} failed: {described.get('FailureReason', 'no reason given')}"
                )
            if status == "InService":
                if config_name is not None and described["EndpointConfigName"] != config_name:
                    raise DeploymentError(
                        f"endpoint {self.spec.endpoint_name} serves {described['EndpointConfigName']}, not "
                        f"{config_name}: the update failed and SageMaker kept the old configuration "
                        f"({described.get('FailureReason', 'no reason given')})"
                    )
                return described
            if waited >= self.spec.timeout_s:
                raise DeploymentError(
                    f"endpoint {self.spec.endpoint_name} is still {status} after {self.spec.timeout_s:g} s"
                )
            self._sleep(self.spec.poll_s)
            waited += self.spec.poll_s

    def rollback(self, previous_config: str | None) -> None:
        """Serve ``previous_config`` again; with None (a failed first deployment) delete the endpoint."""
        if previous_config is None:
            if self.describe() is not None:
                self.sagemaker.delete_endpoint(EndpointName=self.spec.endpoint_name)
                log.info("deleted endpoint %s: its first deployment failed", self.spec.endpoint_name)
            return
        self.switch(previous_config)

    # -- the health check ---------------------------------------------------------------------
    def check(self, config_name: str, rows: np.ndarray, expected: np.ndarray, *, atol: float = 1e-5) -> str:
        """Raise :class:`DeploymentError` unless the endpoint serves ``config_name`` in service with its
        variant up, and answers ``rows`` with ``expected`` (the version's own probabilities) within ``atol``."""
        described = self.wait_in_service(config_name)
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


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", exc))


def _already_exists(exc: ClientError) -> bool:
    message = _message(exc).lower()
    return _error_code(exc) in ("ValidationException", "ResourceInUse") and (
        "already exist" in message or "cannot create already existing" in message
    )


def deploy_to_endpoint(
    deployer: EndpointDeployer, registry: ModelRegistry, version: object, *, archive_uri: str, by: str, reason: str
) -> Deployment:
    """Stage ``version``'s model, create its Model and EndpointConfig, switch the endpoint to it
    (create, or blue/green update) and record the deployment in the registry's history."""
    record = registry.get(version)
    name = deployment_name(registry.name, record.version, record.model_sha256)
    deployer.stage(registry.model_bytes(record.version), archive_uri)
    deployer.create_endpoint_config(name, deployer.create_model(name, archive_uri))
    live = DeploymentHistory(registry).live()
    previous = deployer.switch(name)
    if previous == name:  # a retried task: the endpoint switched already; the history says from what
        if live is not None and live.version == record.version:
            return live
        previous = None if live is None else live.endpoint_config
    return DeploymentHistory(registry).record_deployed(
        record.version,
        target=f"endpoint:{deployer.spec.endpoint_name}",
        by=by,
        reason=reason,
        endpoint_config=name,
        previous_endpoint_config=previous,
    )
