"""Plays SageMaker's part for the real-time endpoints a moto server records: their lifecycle and their answers.

moto (5.2.5, and 5.2.6, the newest) fills a gap only halfway here: it keeps Models, EndpointConfigs
and Endpoints, but it has no ``UpdateEndpoint`` at all, reports an endpoint ``InService`` the moment
it is created, overwrites a Model, EndpointConfig or Endpoint created twice (SageMaker refuses:
``Cannot create already existing ...``), and ``InvokeEndpoint`` answers static text instead of the
model. :class:`EndpointPlayer` patches the in-process server (``ThreadedMotoServer``) to behave as
SageMaker's API reference says instead:

* ``CreateModel`` / ``CreateEndpointConfig`` / ``CreateEndpoint`` of an existing name fail with
  ``ValidationException`` "Cannot create already existing <resource> ..." (the Amazon provider's
  ``SageMakerEndpointOperator`` turns the endpoint's into an update);
* ``CreateEndpoint`` reports ``Creating``, then ``InService`` (or ``Failed`` with a ``FailureReason``);
* ``UpdateEndpoint`` (the request of botocore's service model: ``EndpointName``,
  ``EndpointConfigName``) needs the endpoint ``InService`` and the new EndpointConfig to exist, else
  ``ValidationException``; the endpoint reports ``Updating`` (still serving the old configuration,
  the new one in ``PendingDeploymentSummary``), then ``InService`` with the new configuration. An
  update whose new fleet fails to start leaves the old configuration serving: ``InService`` again,
  with the old ``EndpointConfigName`` and a ``FailureReason``, as SageMaker rolls back by itself;
* ``InvokeEndpoint`` answers as SageMaker's XGBoost serving container does: it loads
  ``xgboost-model`` from the served Model's ``ModelDataUrl`` (a ``model.tar.gz`` in moto's S3) and
  scores the request's CSV rows, one probability a line.

Each transition takes one ``DescribeEndpoint``: the first call after a create or update reports the
in-between status, the next the outcome, so a waiter always sees both and no thread or clock is
involved. Faults are injected only where a test asks, by Model name: ``fleet_fails`` (the fleet
does not start: a failed create or update) and ``answers_wrong`` (the container answers, with
another output than the model's: ``1 - p``).
"""

from __future__ import annotations

import io
import tarfile
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest
import xgboost as xgb
from moto.core.responses import ActionResult
from moto.core.utils import utcnow
from moto.s3.models import s3_backends
from moto.sagemaker.exceptions import ValidationError
from moto.sagemaker.models import FakeEndpoint, FakeEndpointConfig, sagemaker_backends
from moto.sagemaker.responses import SageMakerResponse
from moto.sagemakerruntime.responses import SageMakerRuntimeResponse

from quant_engine.aws.deployment import ARCHIVE_MEMBER
from quant_engine.aws.processing import split_s3_uri


class EndpointPlayer:
    """Patches moto's SageMaker (and SageMaker Runtime) responses in this process for a test's duration."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fleet_fails: dict[str, str] = {}  # Model name -> the FailureReason its fleet fails with
        self.answers_wrong: set[str] = set()  # Model names whose container answers 1 - p
        self._pending: dict[str, dict[str, Any]] = {}  # endpoint ARN -> the transition under way
        for action in ("create_model", "create_endpoint_config", "create_endpoint", "describe_endpoint"):
            original = getattr(SageMakerResponse, action)
            monkeypatch.setattr(SageMakerResponse, action, self._handler(getattr(self, f"_{action}"), original))
        # moto dispatches to the response class's functions: each handler is one, calling this player
        monkeypatch.setattr(SageMakerResponse, "update_endpoint", self._handler(self._update_endpoint), raising=False)
        monkeypatch.setattr(SageMakerRuntimeResponse, "invoke_endpoint", self._handler(self._invoke_endpoint))

    # -- the control plane ----------------------------------------------------------------------
    @staticmethod
    def _handler(method: Any, *args: Any) -> Any:
        def handler(response: Any) -> Any:
            return method(response, *args)

        return handler

    @staticmethod
    def _refuse_existing(response: SageMakerResponse, kind: str, name: str, known: dict[str, Any]) -> None:
        if name in known:
            backend = response.sagemaker_backend
            arn = f"arn:aws:sagemaker:{backend.region_name}:{backend.account_id}:{kind.replace(' ', '-')}/{name}"
            label = {"endpoint-config": "endpoint configuration"}.get(kind, kind)
            raise ValidationError(message=f'Cannot create already existing {label} "{arn.lower()}".')

    def _create_model(self, response: SageMakerResponse, original: Any) -> Any:
        self._refuse_existing(response, "model", response._get_param("ModelName"), response.sagemaker_backend._models)
        return original(response)

    def _create_endpoint_config(self, response: SageMakerResponse, original: Any) -> Any:
        name, backend = response._get_param("EndpointConfigName"), response.sagemaker_backend
        self._refuse_existing(response, "endpoint-config", name, backend.endpoint_configs)
        return original(response)

    def _create_endpoint(self, response: SageMakerResponse, original: Any) -> Any:
        name, backend = response._get_param("EndpointName"), response.sagemaker_backend
        self._refuse_existing(response, "endpoint", name, backend.endpoints)
        result = original(response)
        endpoint = backend.endpoints[name]
        endpoint.endpoint_status = "Creating"
        self._pending[endpoint.arn] = {"to": endpoint.endpoint_config_name, "seen": False}
        return result

    def _update_endpoint(self, response: SageMakerResponse) -> ActionResult:
        backend = response.sagemaker_backend
        name, config = response._get_param("EndpointName"), response._get_param("EndpointConfigName")
        endpoint = backend.endpoints.get(name)
        if endpoint is None:
            arn = FakeEndpoint.arn_formatter(name, backend.account_id, backend.region_name)
            raise ValidationError(message=f'Could not find endpoint "{arn}".')
        if endpoint.endpoint_status != "InService":
            raise ValidationError(message=f'Cannot update in-progress endpoint "{endpoint.arn}".')
        if config not in backend.endpoint_configs:
            arn = FakeEndpointConfig.arn_formatter(config, backend.account_id, backend.region_name)
            raise ValidationError(message=f'Could not find endpoint configuration "{arn}".')
        endpoint.endpoint_status, endpoint.last_modified_time = "Updating", utcnow()
        endpoint.failure_reason = None
        endpoint.pending_deployment_summary = {"EndpointConfigName": config, "StartTime": utcnow()}
        self._pending[endpoint.arn] = {"to": config, "seen": False}
        return ActionResult({"EndpointArn": endpoint.arn})

    def _describe_endpoint(self, response: SageMakerResponse, original: Any) -> Any:
        endpoint = response.sagemaker_backend.endpoints.get(response._get_param("EndpointName"))
        pending = None if endpoint is None else self._pending.get(endpoint.arn)
        if pending is not None:
            if pending["seen"]:
                self._settle(response, endpoint, pending["to"])
            pending["seen"] = True
        return original(response)

    def _settle(self, response: SageMakerResponse, endpoint: FakeEndpoint, config_name: str) -> None:
        """The transition's outcome: the new fleet serves, or it failed to start."""
        del self._pending[endpoint.arn]
        backend = response.sagemaker_backend
        variants = backend.endpoint_configs[config_name].production_variants
        failure = next((self.fleet_fails[v["ModelName"]] for v in variants if v["ModelName"] in self.fleet_fails), None)
        endpoint.pending_deployment_summary = None
        endpoint.last_modified_time = utcnow()
        if failure is None:
            endpoint.endpoint_config_name = config_name
            endpoint.production_variants = endpoint._process_production_variants(variants)
            endpoint.endpoint_status, endpoint.failure_reason = "InService", None
        elif endpoint.endpoint_config_name == config_name:  # a create: nothing served before
            endpoint.endpoint_status, endpoint.failure_reason = "Failed", failure
        else:  # an update: SageMaker keeps the old fleet serving
            endpoint.endpoint_status, endpoint.failure_reason = "InService", failure

    # -- the data plane -------------------------------------------------------------------------
    def _invoke_endpoint(self, response: SageMakerRuntimeResponse) -> Any:
        """Score the request's CSV rows with the served Model, as the XGBoost container does."""
        backend = sagemaker_backends[response.current_account][response.region]
        name = unquote(response.path.split("/")[2])  # /endpoints/<name>/invocations: moto parses no path
        endpoint = backend.endpoints.get(name)
        if endpoint is None or endpoint.endpoint_status not in ("InService", "Updating"):
            state = "not found" if endpoint is None else f"not in service ({endpoint.endpoint_status})"
            raise ValidationError(message=f"Endpoint {name} of account {response.current_account} {state}.")
        (variant,) = backend.endpoint_configs[endpoint.endpoint_config_name].production_variants
        model = backend._models[variant["ModelName"]]
        bucket, key = split_s3_uri(model.primary_container["ModelDataUrl"])
        archive = s3_backends[response.current_account]["aws"].get_object(bucket, key).value
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            model_file = tar.extractfile(ARCHIVE_MEMBER).read()
        booster = xgb.Booster()
        booster.load_model(bytearray(model_file))
        body = response.body if isinstance(response.body, str) else response.body.decode()
        rows = np.loadtxt(io.StringIO(body), delimiter=",", ndmin=2)
        probabilities = booster.predict(xgb.DMatrix(rows), validate_features=False)
        if model.model_name in self.answers_wrong:
            probabilities = 1.0 - probabilities
        headers = {"Content-Type": "text/csv", "x-Amzn-Invoked-Production-Variant": variant["VariantName"]}
        return 200, headers, "\n".join(repr(float(p)) for p in probabilities)
