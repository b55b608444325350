"""``model_deployment``'s endpoint steps through the Amazon provider's ``SageMakerEndpointOperator``.

The provider's operator creates a Model, an EndpointConfig and the endpoint (or updates the
endpoint) from one config, then waits for ``InService``: polling in the worker, or deferred to the
triggerer (``SageMakerTrigger``, ``job_type="endpoint"``) with ``deferrable=True``. What it lacks
for a retried task: it creates the Model and EndpointConfig again (SageMaker refuses: they exist),
and it cannot tell a failed blue/green update from a good one (SageMaker rolls a failed update back
and reports ``InService`` again, on the old configuration). The subclasses here plan first
(:func:`quant_engine.aws.deployment.plan_deployment`: existing resources are reused, an endpoint
already serving or being updated to the configuration is only waited for), hand the rest to the
provider's own ``execute``, and afterwards confirm the endpoint serves the configuration asked for.

* :class:`QeDeployOperator` puts the approved version on the endpoint and records the deployment;
* :class:`QeRollbackOperator` passes a healthy deployment, and rolls an unhealthy one back (the
  previous configuration again, or the endpoint deleted after a failed first deployment), records
  the rollback and fails the run saying why.

On the local backend both do the local step only (``qe_deploy``), so the DAG has one shape.
``deferrable`` defaults to Airflow's ``[operators] default_deferrable``, as for every provider operator.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.operators.sagemaker import SageMakerEndpointOperator
from qe_sagemaker import defer_to_trigger, point_at_connection, wait_attempts

if TYPE_CHECKING:
    from quant_engine.aws.deployment import EndpointDeployer, EndpointPlan

#: The XCom key under which a step keeps what it needs to finish after a deferral.
RESUME_KEY = "endpoint_step"


class _EndpointStep(SageMakerEndpointOperator):
    """Carry out an :class:`~quant_engine.aws.deployment.EndpointPlan` and hand the result to ``served``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(config={}, **kwargs)

    def connect(self) -> EndpointDeployer | None:
        """The endpoint's deployer on the aws backend (pointing the provider's hook at the engine's
        connection and sizing its wait), None on the local backend."""
        from qe_deploy import endpoint_deployer

        from quant_engine.config import get_settings

        settings = get_settings()
        if settings.backend != "aws":
            return None
        deployer = endpoint_deployer(settings)
        spec = deployer.spec
        point_at_connection(self, settings, poll_interval_s=spec.poll_interval_s, wait_timeout_s=spec.wait_timeout_s)
        return deployer

    def carry_out(self, context: Any, deployer: EndpointDeployer, plan: EndpointPlan) -> Any:
        """Create or update through the provider (or only wait for the endpoint), then ``served``.

        What ``served`` needs is kept as an XCom (``endpoint_step``) first: after a deferral the task
        resumes in ``execute_complete`` on a fresh operator (XComs survive the resumption; the
        deferral's kwargs do not under ``airflow dags test``, which passes the trigger's event alone).
        """
        from botocore.exceptions import WaiterError

        self.log.info("endpoint %s: %s %s", plan.endpoint_name, plan.operation, plan.config_name)
        resume = {"config_name": plan.config_name, "previous_config": plan.previous_config}
        context["ti"].xcom_push(key=RESUME_KEY, value=resume)
        try:
            if plan.operation != "wait":
                self.config, self.operation = plan.request, plan.operation
                super().execute(context)  # the provider's creates, then its waiter or its deferral
            elif self.deferrable:
                defer_to_trigger(self, plan.endpoint_name, "endpoint")
            else:
                self.hook.get_waiter("endpoint_in_service").wait(
                    EndpointName=plan.endpoint_name,
                    WaiterConfig={"Delay": self.check_interval, "MaxAttempts": wait_attempts(self)},
                )
        except WaiterError:
            self._confirm(deployer, plan.config_name)  # says why (SageMaker's FailureReason)
            raise
        return self.served(context, deployer, **resume)

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        """Back from the trigger: the provider checks the event (a failure raises), then ``served``."""
        deployer = self.connect()
        super().execute_complete(context, event)
        resume = context["ti"].xcom_pull(task_ids=self.task_id, key=RESUME_KEY)
        return self.served(context, deployer, **resume)

    @staticmethod
    @contextmanager
    def _refusal_is_final() -> Iterator[None]:
        """SageMaker's refusal of the fleet (a ``DeploymentError``) fails the task without retries: a
        retry would start the same fleet again."""
        from airflow.sdk.exceptions import AirflowFailException

        from quant_engine.aws.deployment import DeploymentError

        try:
            yield
        except DeploymentError as exc:
            raise AirflowFailException(str(exc)) from exc

    @classmethod
    def _confirm(cls, deployer: EndpointDeployer, config_name: str) -> None:
        with cls._refusal_is_final():
            deployer.confirm(config_name)

    @abstractmethod
    def served(self, context: Any, deployer: EndpointDeployer, *, config_name: str, previous_config: str | None) -> Any:
        """What the step leaves once the endpoint's create or update is over (each subclass says)."""


class QeDeployOperator(_EndpointStep):
    """Deploy the approved version: ``chosen`` is the ``candidate`` task's result, ``approval`` the
    approval task's answer (who approved). Returns the deployment's history entry."""

    template_fields = (*SageMakerEndpointOperator.template_fields, "chosen", "approval")

    def __init__(self, *, chosen: Any, approval: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chosen, self.approval = chosen, approval

    def execute(self, context: Any) -> dict[str, Any]:
        from qe_airflow import fail_fast_on_bad_input
        from qe_aws import model_registry
        from qe_deploy import approver, deploy

        from quant_engine.aws.deployment import plan_deployment
        from quant_engine.config import get_settings

        with fail_fast_on_bad_input():
            deployer = self.connect()
            if deployer is None:
                return self._said(deploy(self.chosen, approver(self.approval)))
            registry = model_registry(self.chosen["model_name"])
            archive = get_settings().s3_uri("deployments", registry.name, self.chosen["version"], "model.tar.gz")
            plan = plan_deployment(deployer, registry, self.chosen["version"], archive_uri=archive)
        return self.carry_out(context, deployer, plan)

    def served(self, context: Any, deployer: EndpointDeployer, *, config_name: str, previous_config: str | None) -> Any:
        from qe_aws import model_registry
        from qe_deploy import approver

        from quant_engine.aws.deployment import record_endpoint_deployment

        registry, by = model_registry(self.chosen["model_name"]), approver(self.approval)
        with self._refusal_is_final():  # it confirms the endpoint serves config_name before recording
            entry = record_endpoint_deployment(
                deployer,
                registry,
                self.chosen["version"],
                previous_config=previous_config,
                by=by,
                reason=f"approved by {by}",
            )
        return self._said(entry.to_json() | {"model_name": registry.name})

    @staticmethod
    def _said(deployed: dict[str, Any]) -> dict[str, Any]:
        print(
            f"{deployed['model_name']} {deployed['version']} live on {deployed['target']} (was {deployed['previous']})"
        )
        return deployed


class QeRollbackOperator(_EndpointStep):
    """Roll ``deployed`` (the deploy task's entry) back when ``verdict`` (the health check's) says
    unhealthy, and fail the run saying why; a healthy deployment passes."""

    template_fields = (*SageMakerEndpointOperator.template_fields, "deployed", "verdict")

    def __init__(self, *, deployed: Any, verdict: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deployed, self.verdict = deployed, verdict

    def execute(self, context: Any) -> None:
        if self.verdict["healthy"]:
            print("healthy: nothing to roll back")
            return None
        deployer = self.connect()
        previous = self.deployed.get("previous_endpoint_config")
        if deployer is None or not self.deployed["target"].startswith("endpoint:"):
            return self.served(context, deployer, config_name=None, previous_config=None)
        if previous is None:  # a first deployment: nothing served before it
            deployer.delete()
            return self.served(context, deployer, config_name=None, previous_config=None)
        return self.carry_out(context, deployer, deployer.plan(previous))

    def served(self, context: Any, deployer: EndpointDeployer | None, *, config_name: str | None, **_: Any) -> None:
        from airflow.sdk.exceptions import AirflowFailException
        from qe_deploy import roll_back

        if deployer is not None and config_name is not None:
            self._confirm(deployer, config_name)
        print(roll_back(self.deployed, f"health check failed: {self.verdict['detail']}"))
        raise AirflowFailException(f"deployment rolled back: {self.verdict['detail']}")
