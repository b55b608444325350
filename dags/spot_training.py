"""Train an XGBoost model with checkpoints on (simulated or managed) spot capacity and register it.

Runs when someone triggers it and whenever the drift monitor asks for retraining (the asset
``qe://drift/retraining-requested``). Graph::

    build_dataset -> train -> evaluate -> register -> beats_champion -> promote

* ``build_dataset``: point-in-time join + labels, the last ``holdout_fraction`` of time held out
  behind a purge gap (``quant_engine.training.dataset``); run folder ``$QE_HOME/runs/training/<run_id>``.
* ``train``: ``runner=local_spot`` runs the script-mode trainer as a subprocess that the local spot
  simulator interrupts (``interruptions`` seeded ones, then ``interruption_rate_per_hour``) and
  restarts from its checkpoints; ``runner=sagemaker`` runs it as a SageMaker managed spot job
  (needs ``QE_S3_BUCKET`` and ``QE_SAGEMAKER_ROLE_ARN``).
* ``evaluate``: the new model against the floor (log-loss below the holdout's base rate, AUC above
  0.505) and the current champion on the holdout rows neither trained on (log-loss lower by >= 0.5 %,
  AUC not lower by more than 0.005); too few such rows and the comparison is refused, said so.
* ``register``: every trained model becomes an immutable registry version (a rerun of the same
  run returns the same version) and updates the asset ``qe://models/registry``; the version's
  feature baseline (Model Monitor ``statistics.json`` / ``constraints.json`` of the training
  channel, drift thresholds calibrated on its windows) and holdout quality baseline are stored with
  it in the registry's storage for the drift monitor (``quant_engine.monitoring.run.record_baseline``).
* ``beats_champion`` short-circuits when the rule says no, so ``promote`` moves the champion
  pointer and emits ``qe://models/champion`` only for a model that won: consumers of the champion
  asset (the bridge) reload only when the serving model changed.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, Param, dag, task
from qe_airflow import dataset_params

from quant_engine.training.dataset import DEFAULT_PARAMS as D

RETRAINING_REQUESTED = Asset("qe://drift/retraining-requested")
REGISTRY_ASSET = Asset("qe://models/registry")
CHAMPION_ASSET = Asset("qe://models/champion")
#: Shallow, slow, heavily regularised trees: the synthetic market's edge is weak (see the wfo defaults).
DEFAULT_HYPERPARAMETERS = {"num_round": 100, "max_depth": 2, "learning_rate": 0.05, "min_child_weight": 100,
                           "subsample": 0.8, "colsample_bytree": 0.8, "checkpoint_every": 10, "seed": 42}
DATASET_KEYS = tuple(D)


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
                     description="Last day of the data, inclusive; empty: the last day the offline store holds "
                                 "(what a run the drift monitor triggers uses)."),
        "window_days": Param(D["window_days"], type="integer", minimum=30,
                             description="Days of data when start is empty."),
        "holdout_fraction": Param(D["holdout_fraction"], type="number", exclusiveMinimum=0, maximum=0.5,
                                  description="Share of the last timestamps held out to judge the model."),
        "embargo_bars": Param(D["embargo_bars"], type="integer", minimum=0,
                              description="Timestamps before the holdout no training row may start in, beyond "
                                          "the purge of labels that end inside it."),
        "runner": Param("local_spot", type="string", enum=["local_spot", "sagemaker"],
                        description="local_spot: trainer subprocess under the spot simulator; sagemaker: managed "
                                    "spot training job (QE_S3_BUCKET, QE_SAGEMAKER_ROLE_ARN)."),
        "interruptions": Param(2, type="integer", minimum=0,
                               description="local_spot: interruptions at seeded random rounds (kill or SIGTERM)."),
        "interruption_rate_per_hour": Param(0.0, type="number", minimum=0,
                                            description="local_spot: random interruptions per hour after those."),
        "hyperparameters": Param(DEFAULT_HYPERPARAMETERS, type="object",
                                 description="Trainer hyperparameters: num_round, checkpoint_every, seed, subsample, "
                                             "colsample_bytree and XGBoost's own (max_depth, learning_rate, ...)."),
        "model_name": Param("xgb_direction", type="string", description="Registry name of the model."),
        "wfo_report": Param(None, type=["null", "string"],
                            description="The walk-forward report that justified these settings, kept in the metadata."),
    },
    doc_md=__doc__,
)
def spot_training():
    @task
    def build_dataset(params=None, run_id=None, dag=None) -> dict:
        from qe_airflow import fail_fast_on_bad_input, refuse_unknown_params
        from quant_engine.config import get_settings
        from quant_engine.runs import run_dir
        from quant_engine.training.dataset import TrainingSetConfig, build_training_set
        from quant_engine.config import make_model_registry
        from quant_engine.training.trainer import TrainingParams

        refuse_unknown_params(params, dag)
        folder = run_dir("training", run_id)
        with fail_fast_on_bad_input():  # every parameter is checked before anything trains
            TrainingParams.from_hyperparameters(params["hyperparameters"])
            make_model_registry(name=params["model_name"])
            if params["runner"] == "sagemaker":
                from quant_engine.training.sagemaker_spot import (
                    SpotTrainingSpec,
                    check_settings,
                    encode_hyperparameters,
                )

                check_settings(get_settings())
                SpotTrainingSpec.from_env()
                encode_hyperparameters(params["hyperparameters"])
            config = TrainingSetConfig.from_params({k: v for k, v in params.items() if k in DATASET_KEYS})
            summary = build_training_set(config, folder)
        print(f"training set: {summary['rows']} rows, holdout from {summary['holdout_start']}")
        return {"run_dir": str(folder), "rows": summary["rows"], "channels": summary["channels"],
                "holdout": summary["holdout"]}

    @task
    def train(staged: dict, params=None, run_id=None) -> dict:
        import json
        from pathlib import Path

        folder, channels = Path(staged["run_dir"]), staged["channels"]
        hyperparameters = params["hyperparameters"]
        if params["runner"] == "sagemaker":
            from quant_engine.training.sagemaker_spot import run_spot_training

            result = run_spot_training(channels, folder / "model", hyperparameters, run_id=run_id)
            print(result["billing"])
            return {"runner": "sagemaker", "model_path": result["model_path"], "job_name": result["job_name"],
                    "savings": result["savings"]}
        from quant_engine.training.spot import random_schedule, simulate
        from quant_engine.training.trainer import TrainingParams

        trainer = TrainingParams.from_hyperparameters(hyperparameters)
        report = simulate(
            ["--train", channels["train"], "--validation", channels["validation"],
             "--model-dir", str(folder / "model"), "--checkpoint-dir", str(folder / "checkpoints"),
             "--hyperparameters", json.dumps(hyperparameters)],
            schedule=random_schedule(params["interruptions"], trainer.num_round, seed=trainer.seed, kind="mixed"),
            # The trainer leaves within a round of SIGTERM, so a short notice suffices (SageMaker gives 120 s).
            rate_per_hour=params["interruption_rate_per_hour"], seed=trainer.seed, grace_s=10.0,
        ).as_dict()
        print(f"local spot: {report['attempts']} attempts, {report['interruptions']} interruptions, "
              f"{report['lost_rounds']} rounds lost, checkpoint overhead {report['checkpoint_overhead']:.1%}")
        return {"runner": "local_spot", "model_path": str(folder / "model" / "model.json"), "spot": report}

    @task
    def evaluate(staged: dict, trained: dict, params=None) -> dict:
        import pandas as pd

        from quant_engine.training.dataset import load_summary
        from quant_engine.config import make_model_registry
        from quant_engine.training.registry import evaluate_candidate

        summary = load_summary(staged["run_dir"])
        holdout = pd.read_parquet(staged["holdout"])
        result = evaluate_candidate(make_model_registry(name=params["model_name"]), trained["model_path"],
                                    holdout, summary["features"])
        print(f"promote={result['promote']}: {result['reason']}")
        return result

    @task(outlets=[REGISTRY_ASSET])
    def register(staged: dict, trained: dict, evaluated: dict, params=None) -> str:
        import pandas as pd

        from quant_engine.config import make_model_registry
        from quant_engine.monitoring.run import record_baseline
        from quant_engine.training.dataset import load_summary, load_train_frame
        from quant_engine.training.registry import ModelMetadata

        summary = load_summary(staged["run_dir"])
        metadata = ModelMetadata(
            features=summary["features"], data_start=summary["train_start"], data_end=summary["holdout_end"],
            data_fingerprint=summary["fingerprint"], params=params["hyperparameters"],
            metrics=evaluated["candidate"], wfo_report=params["wfo_report"],
            training={**{k: v for k, v in trained.items() if k != "model_path"}, "dataset": summary["params"],
                      "holdout_start": summary["holdout_start"], "rows": summary["rows"], "evaluation": evaluated},
        )
        registry = make_model_registry(name=params["model_name"])
        version = registry.register(trained["model_path"], metadata)
        print(f"registered {params['model_name']} {version}")
        # The drift monitor judges this version against these baselines, never the training data.
        where = record_baseline(registry.name, version, registry.load_booster(version),
                                load_train_frame(staged["run_dir"]), pd.read_parquet(staged["holdout"]),
                                summary["features"])
        print(f"baseline of {params['model_name']} {version} stored in {where}")
        return version

    @task.short_circuit
    def beats_champion(evaluated: dict) -> bool:
        return evaluated["promote"]

    @task(outlets=[CHAMPION_ASSET])
    def promote(version: str, evaluated: dict, params=None) -> dict:
        from quant_engine.config import make_model_registry

        promotion = make_model_registry(name=params["model_name"]).promote(
            version, evaluated["reason"], expected_champion=evaluated["champion"])
        print(f"champion: {promotion.version} (was {promotion.previous or 'none'})")
        return promotion.to_json()

    staged = build_dataset()
    trained = train(staged)
    evaluated = evaluate(staged, trained)
    version = register(staged, trained, evaluated)
    version >> beats_champion(evaluated) >> promote(version, evaluated)


spot_training_dag = spot_training()
