"""The engine's SageMaker jobs through the Amazon provider's operators, re-attaching on retry.

The provider's ``SageMakerTrainingOperator`` / ``SageMakerProcessingOperator`` start a job and wait
for it: polling in the worker, or deferred to the triggerer (``SageMakerTrigger``) with
``deferrable=True``. What they lack is re-attachment: their ``action_if_job_exists`` only fails or
renames, so a task retried while its job runs would start a second one. The subclasses here give
every job a deterministic name (the library's ``attach_or_name``: the run and the task, never the
try) and describe it first:

* running (``InProgress``, ``Stopping``): wait for it as the provider waits for the jobs it starts,
  deferring to ``SageMakerTrigger`` when deferrable;
* ``Completed``: collect its output without starting anything;
* absent (or only failed / stopped attempts, whose retry takes the next name ``<name>-2``): start it
  through the provider's own ``execute`` (its config checks, its create call, its wait or deferral).

A failed or stopped job fails the task with SageMaker's reason (the provider's messages). Each
operator also runs the local backend's path, so a DAG has one shape whatever ``QE_BACKEND`` says.
``deferrable`` defaults to Airflow's ``[operators] default_deferrable``, as for every provider
operator; ``make up`` and compose turn it on, and the triggerer polls with ``aiobotocore`` (docs/aws.md).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.amazon.aws.operators.sagemaker import SageMakerProcessingOperator, SageMakerTrainingOperator
from airflow.providers.amazon.aws.triggers.sagemaker import SageMakerTrigger

if TYPE_CHECKING:
    from quant_engine.config import Settings


def point_at_connection(operator: Any, settings: Settings, *, poll_interval_s: int, wait_timeout_s: int) -> None:
    """Point a provider SageMaker operator's hook at the engine's connection and region (where the
    library's clients staged its work), and size its wait (``max_attempts`` is what the provider's
    own deferral of a job it started gives its trigger)."""
    from qe_aws import connection_region

    operator.aws_conn_id = settings.aws_conn_id
    operator.region_name = connection_region(settings)
    operator.check_interval = int(poll_interval_s)
    operator.max_ingestion_time = int(wait_timeout_s)
    operator.max_attempts = wait_attempts(operator)


def wait_attempts(operator: Any) -> int:
    """How many polls of ``check_interval`` seconds fit in the operator's wait (``max_ingestion_time`` s)."""
    return max(1, operator.max_ingestion_time // max(1, operator.check_interval))


def defer_to_trigger(operator: Any, job_name: str, job_type: str) -> None:
    """Hand the wait for ``job_name`` (a job, or an endpoint with ``job_type="endpoint"``) to the
    triggerer; the task resumes in the operator's ``execute_complete`` with the trigger's event."""
    operator.defer(
        trigger=SageMakerTrigger(
            job_name=job_name,
            job_type=job_type,
            waiter_delay=operator.check_interval,
            waiter_max_attempts=wait_attempts(operator),
            aws_conn_id=operator.aws_conn_id,
            region_name=operator.region_name,
            verify=operator.verify,
            botocore_config=operator.botocore_config,
        ),
        method_name="execute_complete",
        timeout=datetime.timedelta(seconds=operator.max_ingestion_time),
    )


class _ReattachingJob:
    """What the training and processing operators share: connect, re-attach or start, collect."""

    job_type: ClassVar[str]  # SageMakerTrigger's job_type and the description's status key prefix
    result_key: ClassVar[str]  # the provider's result dict key: "Training" / "Processing"

    def _connect(self, settings: Settings, spec: Any) -> None:
        """Point the provider's hook at the engine's connection and region, and size the wait from ``spec``."""
        point_at_connection(self, settings, poll_interval_s=spec.poll_interval_s, wait_timeout_s=spec.wait_timeout_s)

    def _describe(self, name: str) -> dict[str, Any]:
        return getattr(self.hook, f"describe_{self.job_type.lower()}_job")(name)

    def _start_or_reattach(self, context: Any, plan: Any) -> Any:
        """Start ``plan``'s job through the provider, or wait for / collect the job that exists."""
        if plan.request is not None:
            self.config = plan.request
            self.action_if_job_exists = "fail"  # a job of this name appearing meanwhile is an error, not a rename
            result = super().execute(context)  # type: ignore[misc]  # the provider's create, wait or defer
            return self.collect(context, result[self.result_key])
        status = plan.existing[f"{self.job_type}JobStatus"]
        self.log.info("re-attaching to %s job %s (%s)", self.job_type, plan.name, status)
        if status == "Completed":
            return self.collect(context, plan.existing)
        if self.deferrable:
            defer_to_trigger(self, plan.name, self.job_type)
        job = self.hook.check_status(
            plan.name, f"{self.job_type}JobStatus", self._describe, self.check_interval, self.max_ingestion_time
        )
        return self.collect(context, job)

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        """Back from the trigger: the provider checks the event (failure raises), then collect."""
        self.connect()
        result = super().execute_complete(context, event)  # type: ignore[misc]
        return self.collect(context, result[self.result_key])


class QeTrainingOperator(_ReattachingJob, SageMakerTrainingOperator):
    """Train the run's model: the local spot simulator, or a managed spot job re-attached to on retry.

    ``prepared`` is ``training.pipeline.prepare``'s result (an XCom); it returns what
    ``training.pipeline.train`` returns.
    """

    job_type = "Training"
    result_key = "Training"
    template_fields = (*SageMakerTrainingOperator.template_fields, "prepared")

    def __init__(self, *, prepared: Any, **kwargs: Any) -> None:
        super().__init__(config={}, print_log=False, **kwargs)
        self.prepared = prepared

    def connect(self) -> Any:
        from qe_aws import training_jobs

        from quant_engine.config import get_settings

        settings = get_settings()
        jobs = training_jobs(settings)
        self._connect(settings, jobs.job_spec)
        return jobs

    def execute(self, context: Any) -> dict[str, Any]:
        from quant_engine.training.pipeline import describe_training, train

        params = self.prepared["params"]
        if params["runner"] != "sagemaker":
            trained = train(self.prepared, context["run_id"])
            print(describe_training(trained))
            return trained
        # The job is named after the run, so a retried task re-attaches to it instead of starting another.
        plan = self.connect().plan(self.prepared["channels"], params["hyperparameters"], run_id=context["run_id"])
        return self._start_or_reattach(context, plan)

    def collect(self, context: Any, job: dict[str, Any]) -> dict[str, Any]:
        from quant_engine.training.pipeline import describe_training, sagemaker_trained

        trained = sagemaker_trained(self.connect().collect(job, Path(self.prepared["run_dir"]) / "model"))
        print(describe_training(trained))
        return trained


class QeFitsOperator(_ReattachingJob, SageMakerProcessingOperator):
    """One mapped walk-forward task: its fits here (local backend) or as one Processing job (aws).

    Takes ``wfo.plan.mapped_batches``' keyword arguments; returns the fits' prediction files.
    """

    job_type = "Processing"
    result_key = "Processing"

    def __init__(self, *, run_dir: str, fits: list, label: str, position: int, of: int, **kwargs: Any) -> None:
        super().__init__(config={}, print_log=False, **kwargs)
        # ``label`` is BaseOperator's (the task group's) name for the task id: the batch's is ``batch_label``.
        self.run_dir, self.fits, self.batch_label, self.position, self.of = run_dir, fits, label, position, of

    @property
    def tasks(self) -> list[tuple[int, int]]:
        return [(int(t), int(s)) for t, s in self.fits]

    def headline(self, results: list) -> str:
        return f"WFO task {self.position}/{self.of} done ({self.batch_label}): {len(results)} fit(s)"

    def connect(self) -> Any:
        from qe_aws import aws_clients

        from quant_engine.backends import make_wfo_fits
        from quant_engine.config import get_settings

        settings = get_settings()
        fits = make_wfo_fits(settings, aws=aws_clients(settings))
        if settings.backend == "aws":
            self._connect(settings, fits.job_spec)
        return fits

    def execute(self, context: Any) -> dict[str, Any]:
        import time

        from quant_engine.config import get_settings

        if get_settings().backend != "aws":
            begun = time.perf_counter()
            results = self.connect().run(self.run_dir, self.tasks)
            compute_s = time.perf_counter() - begun
            print(f"{self.headline(results)} in {compute_s:.2f} s")  # the task log
            return {"fits": results, "compute_s": compute_s}
        # One Processing job per mapped task, named after the run and its fits: a retry re-attaches.
        return self._start_or_reattach(context, self.connect().plan(self.run_dir, self.tasks))

    def collect(self, context: Any, job: dict[str, Any]) -> dict[str, Any]:
        name = job["ProcessingJobName"]
        results = self.connect().collect(self.run_dir, self.tasks, name)
        print(f"{self.headline(results)} in Processing job {name}")
        return {"fits": results, "job_name": name}
