"""Train an XGBoost model with checkpoints on (simulated or managed) spot capacity and register it.

Runs when triggered and when the drift monitor asks for retraining (``qe://drift/retraining-requested``).
A run trains what is in production: the champion's own spec, rolled forward to the newest stored
data, any key of the run's conf overriding it; or, given a ``wfo_run_id``, the trial that
walk-forward run selected, on the full data, with the run's PBO and deflated Sharpe in the model's
metadata (``min_deflated_sharpe`` makes promotion require the latter above it).

The steps are ``quant_engine.training.pipeline``'s: every parameter checked before any data moves;
the trainer under the local spot simulator (``runner=local_spot``) or a SageMaker managed spot job;
the candidate against the floor and the champion on rows neither trained on; every model registered
with its full spec and its drift baselines; ``promote`` moves the champion (and emits
``qe://models/champion``) only for a winner.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task
from qe_airflow import CHAMPION_ASSET, REGISTRY_ASSET, RETRAINING_REQUESTED, notify_on_failure
from qe_forms import training_form
from qe_sagemaker import QeTrainingOperator


@dag(
    schedule=[RETRAINING_REQUESTED],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=notify_on_failure({"retries": 1, "retry_delay": pendulum.duration(seconds=30)}),
    tags=["quant-engine", "training"],
    params=training_form(),
    doc_md=__doc__,
)
def spot_training():
    @task
    def build_dataset(params=None, run_id=None, dag=None, dag_run=None, triggering_asset_events=None) -> dict:
        from qe_airflow import asset_event_extras, fail_fast_on_bad_input, refuse_unknown_params
        from qe_aws import aws_clients, training_jobs

        from quant_engine.backends import make_bar_store, make_model_registry, make_offline_store
        from quant_engine.config import get_settings
        from quant_engine.runs import run_dir
        from quant_engine.training.pipeline import prepare

        refuse_unknown_params(params, dag)
        settings = get_settings()
        aws = aws_clients(settings)
        with fail_fast_on_bad_input():  # every parameter is checked before anything trains
            prepared = prepare(
                dict(dag_run.conf or {}),
                run_dir("training", run_id, settings),
                registry_of=lambda name: make_model_registry(settings, name, aws=aws),
                store=make_offline_store(settings, aws=aws),
                bar_store=make_bar_store(settings, aws=aws),
                settings=settings,
                jobs=lambda: training_jobs(settings),
                requested_by=asset_event_extras(triggering_asset_events),
            )
        print(f"training {prepared['params']['model_name']} on {prepared['basis']}: {prepared['rows']} rows")
        return prepared

    @task
    def evaluate(prepared: dict, trained: dict) -> dict:
        from qe_aws import model_registry

        from quant_engine.training.pipeline import evaluate

        registry = model_registry(prepared["params"]["model_name"])
        evaluated = evaluate(prepared, trained, registry)
        print(f"promote={evaluated['promote']}: {evaluated['reason']}")
        return evaluated

    @task(outlets=[REGISTRY_ASSET])
    def register(prepared: dict, trained: dict, evaluated: dict) -> str:
        from qe_aws import experiment_tracker, model_registry

        from quant_engine.monitoring.run import record_training_baselines
        from quant_engine.training.pipeline import register

        registry = model_registry(prepared["params"]["model_name"])
        version = register(prepared, trained, evaluated, registry, tracker=experiment_tracker())
        where = record_training_baselines(registry, version, prepared["run_dir"])
        print(f"registered {registry.name} {version}; baselines in {where}")
        return version

    @task.short_circuit
    def beats_champion(evaluated: dict) -> bool:
        return evaluated["promote"]

    @task(outlets=[CHAMPION_ASSET])
    def promote(prepared: dict, version: str, evaluated: dict) -> dict:
        from qe_aws import model_registry

        promotion = model_registry(prepared["params"]["model_name"]).promote(
            version, evaluated["reason"], expected_champion=evaluated["champion"]
        )
        print(f"champion: {promotion.version} (was {promotion.previous or 'none'})")
        return promotion.to_json()

    prepared = build_dataset()
    # A SageMaker job is named after the run: a retried task re-attaches to it (plugins/qe_sagemaker.py).
    trained = QeTrainingOperator(task_id="train", prepared=prepared)
    evaluated = evaluate(prepared, trained.output)
    version = register(prepared, trained.output, evaluated)
    version >> beats_champion(evaluated) >> promote(prepared, version, evaluated)


spot_training_dag = spot_training()
