"""Train an XGBoost model with checkpoints on (simulated or managed) spot capacity and register it.

Runs when someone triggers it and whenever the drift monitor asks for retraining (the asset
``qe://drift/retraining-requested``). A run trains what is in production: the champion's own spec,
rolled forward to the newest stored data, any key of the run's conf overriding it. Graph::

    build_dataset -> train -> evaluate -> register -> beats_champion -> promote

The steps are ``quant_engine.training.pipeline``'s: every parameter checked before any data moves;
the trainer under the local spot simulator (``runner=local_spot``) or a SageMaker managed spot job;
the candidate against the floor and the champion on rows neither trained on; every model registered
with its full spec; ``promote`` moves the champion (and emits ``qe://models/champion``) only for a winner.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, Param, dag, task
from qe_airflow import dataset_params

from quant_engine.training.spec import TRAINING_DEFAULTS as D

RETRAINING_REQUESTED = Asset("qe://drift/retraining-requested")
REGISTRY_ASSET = Asset("qe://models/registry")
CHAMPION_ASSET = Asset("qe://models/champion")


@dag(
    schedule=[RETRAINING_REQUESTED],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": pendulum.duration(seconds=30)},
    tags=["quant-engine", "training"],
    params={
        **dataset_params(D),
        "start": Param(D["start"], type=["null", "string"], format="date",
                       description="First day of the data; empty: window_days before end."),
        "end": Param(D["end"], type=["null", "string"], format="date",
                     description="Last day of the data, inclusive; empty: the last day the offline store holds."),
        "window_days": Param(D["window_days"], type="integer", minimum=30,
                             description="Days of data when start is empty."),
        "holdout_fraction": Param(D["holdout_fraction"], type="number", exclusiveMinimum=0, maximum=0.5,
                                  description="Share of the last timestamps held out to judge the model."),
        "embargo_bars": Param(D["embargo_bars"], type="integer", minimum=0,
                              description="Timestamps before the holdout no training row may start in."),
        "runner": Param(D["runner"], type="string", enum=["local_spot", "sagemaker"],
                        description="local_spot: trainer subprocess under the spot simulator; sagemaker: managed "
                                    "spot training job (QE_S3_BUCKET, QE_SAGEMAKER_ROLE_ARN)."),
        "interruptions": Param(D["interruptions"], type="integer", minimum=0,
                               description="local_spot: interruptions at seeded random rounds (kill or SIGTERM)."),
        "interruption_rate_per_hour": Param(D["interruption_rate_per_hour"], type="number", minimum=0,
                                            description="local_spot: random interruptions per hour after those."),
        "hyperparameters": Param(D["hyperparameters"], type="object",
                                 description="num_round, checkpoint_every, seed, subsample, colsample_bytree and "
                                             "XGBoost's own (max_depth, learning_rate, ...)."),
        "model_name": Param(D["model_name"], type="string", description="Registry name of the model."),
        "wfo_report": Param(D["wfo_report"], type=["null", "string"],
                            description="The walk-forward report that justified these settings, kept in the metadata."),
    },
    doc_md=__doc__,
)
def spot_training():
    @task
    def build_dataset(params=None, run_id=None, dag=None, dag_run=None, triggering_asset_events=None) -> dict:
        from qe_airflow import asset_event_extras, fail_fast_on_bad_input, refuse_unknown_params

        from quant_engine.runs import run_dir
        from quant_engine.training.pipeline import prepare

        refuse_unknown_params(params, dag)
        with fail_fast_on_bad_input():  # every parameter is checked before anything trains
            prepared = prepare(dict(dag_run.conf or {}), run_dir("training", run_id),
                               requested_by=asset_event_extras(triggering_asset_events))
        print(f"training {prepared['params']['model_name']} on {prepared['basis']}: {prepared['rows']} rows")
        return prepared

    @task
    def train(prepared: dict, run_id=None) -> dict:
        from quant_engine.training.pipeline import train

        trained = train(prepared, run_id)
        spot = trained.get("spot")
        print(trained["billing"] if spot is None else
              f"local spot: {spot['attempts']} attempts, {spot['interruptions']} interruptions, "
              f"{spot['lost_rounds']} rounds lost, checkpoint overhead {spot['checkpoint_overhead']:.1%}")
        return trained

    @task
    def evaluate(prepared: dict, trained: dict) -> dict:
        from quant_engine.training.pipeline import evaluate

        evaluated = evaluate(prepared, trained)
        print(f"promote={evaluated['promote']}: {evaluated['reason']}")
        return evaluated

    @task(outlets=[REGISTRY_ASSET])
    def register(prepared: dict, trained: dict, evaluated: dict) -> str:
        from quant_engine.training.pipeline import register

        registered = register(prepared, trained, evaluated)
        print(f"registered {prepared['params']['model_name']} {registered['version']}; baselines in "
              f"{registered['baselines']}")
        return registered["version"]

    @task.short_circuit
    def beats_champion(evaluated: dict) -> bool:
        return evaluated["promote"]

    @task(outlets=[CHAMPION_ASSET])
    def promote(prepared: dict, version: str, evaluated: dict) -> dict:
        from quant_engine.config import make_model_registry

        promotion = make_model_registry(name=prepared["params"]["model_name"]).promote(
            version, evaluated["reason"], expected_champion=evaluated["champion"])
        print(f"champion: {promotion.version} (was {promotion.previous or 'none'})")
        return promotion.to_json()

    prepared = build_dataset()
    trained = train(prepared)
    evaluated = evaluate(prepared, trained)
    version = register(prepared, trained, evaluated)
    version >> beats_champion(evaluated) >> promote(prepared, version, evaluated)


spot_training_dag = spot_training()
