"""Deploy a model version after a person approves it; roll it back when its health check fails.

Runs when ``spot_training`` promotes a champion (``qe://models/champion``) and when triggered
(``version`` picks another registry version than the champion); a version that serves already
is skipped. ``approve`` is Airflow's human-in-the-loop ``ApprovalOperator``: the run waits in
``awaiting_input`` until someone answers in the UI's Required Actions (or the HITL REST API);
"Reject" skips the deployment. Then:

- local backend: the registry's live deployment moves to the version, and the bridge's local
  model serves it (until then it serves the champion, as before the first deployment);
- aws backend: the version is also put on the SageMaker endpoint ``QE_SAGEMAKER_ENDPOINT`` through
  the Amazon provider's ``SageMakerEndpointOperator`` (``plugins/qe_endpoint.py``): a Model and an
  EndpointConfig named after the version, the endpoint created, or updated blue/green, and awaited
  ``InService`` (deferred to the triggerer when deferrable).

``health_check`` scores the newest stored feature rows with the version (on aws: asks the endpoint
for them and compares its answers with the version's own); when unhealthy, ``roll_back`` serves
what served before again (the previous EndpointConfig) and fails the run, saying why. Every
deployment and rollback is recorded with who approved it in ``<model>/deployments.json``.
"""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, task
from qe_airflow import CHAMPION_ASSET, notify_on_failure
from qe_endpoint import QeDeployOperator, QeRollbackOperator


@dag(
    schedule=[CHAMPION_ASSET],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=notify_on_failure({"retries": 1, "retry_delay": pendulum.duration(seconds=30)}),
    tags=["quant-engine", "deployment"],
    params={
        "model_name": Param("xgb_direction", type="string", description="The registry model to deploy."),
        "version": Param(None, type=["null", "string", "integer"], description="A version; empty: the champion."),
    },
    doc_md=__doc__,
)
def model_deployment():
    @task
    def candidate(params=None, dag=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException
        from qe_airflow import fail_fast_on_bad_input, refuse_unknown_params
        from qe_deploy import candidate

        refuse_unknown_params(params, dag)
        with fail_fast_on_bad_input():
            chosen = candidate(params["model_name"], params["version"])
        if chosen["version"] == chosen["live"]:
            raise AirflowSkipException(f"{chosen['version']} serves already: nothing to approve")
        print(f"asking for approval of {chosen['summary']}")
        return chosen

    chosen = candidate()
    approve = ApprovalOperator(
        task_id="approve",
        subject="Deploy {{ ti.xcom_pull(task_ids='candidate')['model_name'] }} "
        "{{ ti.xcom_pull(task_ids='candidate')['version'] }}?",
        body="{{ ti.xcom_pull(task_ids='candidate')['summary'] }}",
        response_timeout=pendulum.duration(days=3),
        retries=0,
    )

    @task
    def health_check(deployed: dict) -> dict:
        from qe_deploy import health_check

        from quant_engine.aws.deployment import DeploymentError
        from quant_engine.training.deployment import HealthCheckError

        try:
            detail, healthy = health_check(deployed), True
        except (HealthCheckError, DeploymentError) as exc:
            detail, healthy = str(exc), False
        print(f"healthy={healthy}: {detail}")
        return {"healthy": healthy, "detail": detail}

    chosen >> approve
    deployed = QeDeployOperator(task_id="deploy", chosen=chosen, approval=approve.output).output
    QeRollbackOperator(task_id="roll_back", deployed=deployed, verdict=health_check(deployed))


model_deployment_dag = model_deployment()
