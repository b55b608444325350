"""The steps of a training run, as the ``spot_training`` DAG wires them: prepare, train, evaluate, register.

Each step takes plain values (the run's resolved parameters, paths) and returns a JSON-ready dict,
so a task hands it to the next through XCom. :func:`prepare` checks every parameter before any data
moves (a deterministic error fails at once) and builds the training set; :func:`train` runs the
script-mode trainer under the chosen runner; :func:`evaluate` applies the promotion rule;
:func:`register` stores the version with its full spec (the DAG records its drift baselines next).
A run naming ``wfo_run_id`` trains that walk-forward run's selected trial and records the run in
the model's metadata (:mod:`quant_engine.training.spec`); ``min_deflated_sharpe`` makes promotion
require the run's deflated Sharpe above it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from quant_engine.config import Settings, SettingsError
from quant_engine.features.offline_store import OfflineStore
from quant_engine.runs import RunIdError, find_run_dir
from quant_engine.tracking import Tracker, flatten
from quant_engine.training.dataset import TrainingSetConfig, TrainingSetError, build_training_set, load_summary
from quant_engine.training.defaults import DATASET_DEFAULTS
from quant_engine.training.registry import ModelMetadata, ModelRegistry, PromotionRule, evaluate_candidate
from quant_engine.training.spec import resolve_training_params
from quant_engine.training.spot import random_schedule, simulate
from quant_engine.training.trainer import TrainingParams
from quant_engine.wfo.report import report_dir
from quant_engine.wfo.run_folder import WfoOutcome, load_outcome

RUNNERS: tuple[str, ...] = ("local_spot", "sagemaker")
#: The dataset's own parameters among a run's (the rest pick the runner, the model and its name).
DATASET_KEYS: tuple[str, ...] = tuple(DATASET_DEFAULTS)


class TrainingJobs(Protocol):
    """Managed training jobs (SageMaker's: :class:`quant_engine.aws.sagemaker_spot.SpotTrainingJobs`)."""

    def check(self, hyperparameters: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` when a job of ``hyperparameters`` could not be started with these settings."""
        ...

    def run(
        self, channels: Mapping[str, Any], destination: Path, hyperparameters: Mapping[str, Any], *, run_id: str
    ) -> dict[str, Any]:
        """Train (or re-attach to the run's job), and return ``job_name``, ``model_path``, ``savings``, ``billing``."""
        ...


def _jobs(jobs: Callable[[], TrainingJobs] | None) -> TrainingJobs:
    if jobs is None:
        raise SettingsError("runner='sagemaker' needs SageMaker training jobs: set QE_BACKEND=aws")
    return jobs()


def prepare(
    conf: Mapping[str, Any],
    run_dir: Path,
    *,
    registry_of: Callable[[str], ModelRegistry],
    store: OfflineStore,
    bar_store: OfflineStore,
    settings: Settings,
    jobs: Callable[[], TrainingJobs] | None = None,
    requested_by: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Resolve the run's parameters (the champion's spec, rolled forward, or the selected trial of the
    walk-forward run ``wfo_run_id`` names; overridden by ``conf``), check them all, and build the
    training set in ``run_dir``.

    ``registry_of`` gives a model's registry by name; ``store`` and ``bar_store`` are the feature
    group and its bars; ``jobs`` makes the managed training jobs, asked to check the run when its
    runner is ``sagemaker``; ``settings`` locate the walk-forward runs (``$QE_HOME/runs/wfo``) and
    their reports, and their ``QE_DEFAULT_TICKERS`` stand in for a universe neither ``conf``, a
    walk-forward run nor a champion names. The returned ``wfo_run`` is that run's record
    for the model's metadata (None without one).

    Raises
    ------
    ValueError
        Any parameter that cannot be used (the subclass names the family); nothing was built.
    """
    params, basis, wfo_run = resolve_training_params(
        conf,
        registry_of,
        requested_by=requested_by,
        wfo_run_of=lambda run_id: _wfo_outcome(run_id, settings),
        default_tickers=settings.default_tickers,
    )
    promotion_rule(params, wfo_run)  # checked now, applied by evaluate
    if wfo_run is not None and params["wfo_report"] is None:
        report = report_dir(wfo_run["run_id"], settings.reports_dir) / "report.html"
        params["wfo_report"] = str(report) if report.is_file() else None
    if params["runner"] not in RUNNERS:
        raise TrainingSetError(f"runner={params['runner']!r} is not a runner; use one of {', '.join(RUNNERS)}")
    TrainingParams.from_hyperparameters(params["hyperparameters"])
    if params["runner"] == "sagemaker":
        _jobs(jobs).check(params["hyperparameters"])
    config = TrainingSetConfig.from_params({k: params[k] for k in DATASET_KEYS}, store)
    summary = build_training_set(config, run_dir, store, bar_store)
    return {
        "run_dir": str(run_dir),
        "params": params,
        "basis": basis,
        "wfo_run": wfo_run,
        "feature_group": store.feature_group,
        "rows": summary["rows"],
        "channels": summary["channels"],
        "holdout": summary["holdout"],
    }


def _wfo_outcome(run_id: object, settings: Settings) -> WfoOutcome:
    """The finished walk-forward run ``run_id`` under ``$QE_HOME/runs/wfo``; the errors name the parameter."""
    try:
        return load_outcome(find_run_dir("wfo", run_id, settings))  # type: ignore[arg-type]
    except RunIdError as exc:
        raise TrainingSetError(f"wfo_run_id={run_id!r}: {exc}") from None
    except FileNotFoundError as exc:
        raise TrainingSetError(f"wfo_run_id={run_id!r}: {exc}") from None


def promotion_rule(params: Mapping[str, Any], wfo_run: Mapping[str, Any] | None) -> PromotionRule:
    """The promotion rule of a run: the default one, requiring its walk-forward run's deflated Sharpe
    above ``min_deflated_sharpe`` when that is set.

    Raises
    ------
    TrainingSetError
        ``min_deflated_sharpe`` is not a number in [0, 1), or is set for a run without a walk-forward
        run (nothing measured its deflated Sharpe).
    """
    threshold = params.get("min_deflated_sharpe")
    if threshold is None:
        return PromotionRule()
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise TrainingSetError(
            f"min_deflated_sharpe={threshold!r} must be a number in [0, 1): the deflated Sharpe ratio is a "
            "probability; leave it empty to promote without one"
        )
    if wfo_run is None:
        raise TrainingSetError(
            f"min_deflated_sharpe={threshold!r} needs a wfo_run_id: only a walk-forward run measures the deflated "
            "Sharpe ratio this model's configuration earned; name the run, or leave min_deflated_sharpe empty"
        )
    return PromotionRule(min_deflated_sharpe=float(threshold))


def train(
    prepared: Mapping[str, Any], run_id: str, *, jobs: Callable[[], TrainingJobs] | None = None
) -> dict[str, Any]:
    """Train with the run's runner: the trainer under the local spot simulator, or a SageMaker managed spot job.

    ``jobs`` makes the managed training jobs, asked for only when the runner is ``sagemaker``.
    """
    folder, channels, params = Path(prepared["run_dir"]), prepared["channels"], prepared["params"]
    hyperparameters = params["hyperparameters"]
    if params["runner"] == "sagemaker":
        return sagemaker_trained(_jobs(jobs).run(channels, folder / "model", hyperparameters, run_id=run_id))
    trainer = TrainingParams.from_hyperparameters(hyperparameters)
    report = simulate(
        [
            "--train",
            channels["train"],
            "--validation",
            channels["validation"],
            "--model-dir",
            str(folder / "model"),
            "--checkpoint-dir",
            str(folder / "checkpoints"),
            "--hyperparameters",
            json.dumps(hyperparameters),
        ],
        schedule=random_schedule(params["interruptions"], trainer.num_round, seed=trainer.seed, kind="mixed"),
        # The trainer leaves within a round of SIGTERM, so a short notice suffices (SageMaker gives 120 s).
        rate_per_hour=params["interruption_rate_per_hour"],
        seed=trainer.seed,
        grace_s=10.0,
    ).as_dict()
    return {"runner": "local_spot", "model_path": str(folder / "model" / "model.json"), "spot": report}


def sagemaker_trained(result: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`train`'s result for a SageMaker job, from what the job's collection returned."""
    return {"runner": "sagemaker", **{k: result[k] for k in ("model_path", "job_name", "savings", "billing")}}


def describe_training(trained: Mapping[str, Any]) -> str:
    """One line on how training went: the local spot simulator's interruptions, or the job's billing."""
    spot = trained.get("spot")
    if spot is None:
        return str(trained["billing"])
    return (
        f"local spot: {spot['attempts']} attempts, {spot['interruptions']} interruptions, "
        f"{spot['lost_rounds']} rounds lost, checkpoint overhead {spot['checkpoint_overhead']:.1%}"
    )


def evaluate(prepared: Mapping[str, Any], trained: Mapping[str, Any], registry: ModelRegistry) -> dict[str, Any]:
    """The candidate against the floor, the champion of ``registry`` on rows neither trained on, and
    (with ``min_deflated_sharpe``) its walk-forward run's deflated Sharpe against the threshold."""
    summary = load_summary(prepared["run_dir"])
    return evaluate_candidate(
        registry,
        trained["model_path"],
        pd.read_parquet(prepared["holdout"]),
        summary["features"],
        promotion_rule(prepared["params"], prepared.get("wfo_run")),
        wfo_run=prepared.get("wfo_run"),
    )


def register(
    prepared: Mapping[str, Any],
    trained: Mapping[str, Any],
    evaluated: Mapping[str, Any],
    registry: ModelRegistry,
    *,
    tracker: Tracker | None = None,
) -> str:
    """Register the model in ``registry`` with its full spec (dataset, feature group, hyperparameters,
    evaluation); returns the version. With a ``tracker`` the run is then logged to MLflow
    (:func:`track_training`). Its drift baselines are recorded next
    (:func:`quant_engine.monitoring.run.record_training_baselines`)."""
    params = prepared["params"]
    summary = load_summary(prepared["run_dir"])
    metadata = ModelMetadata(
        features=summary["features"],
        data_start=summary["train_start"],
        data_end=summary["holdout_end"],
        data_fingerprint=summary["fingerprint"],
        params=params["hyperparameters"],
        metrics=evaluated["candidate"],
        wfo_report=params["wfo_report"],
        wfo_run=prepared.get("wfo_run"),
        training={
            **{k: v for k, v in trained.items() if k != "model_path"},
            "dataset": summary["params"],
            "feature_group": prepared["feature_group"],
            "holdout_start": summary["holdout_start"],
            "rows": summary["rows"],
            "evaluation": dict(evaluated),
            "basis": prepared["basis"],
        },
    )
    version = registry.register(trained["model_path"], metadata)
    if tracker is not None:
        track_training(tracker, registry, version, Path(trained["model_path"]))
    return version


def track_training(tracker: Tracker, registry: ModelRegistry, version: str, model_path: Path) -> None:
    """Log a registered version's training run to ``tracker``: hyperparameters and dataset as params,
    holdout metrics, the spot interruptions (local simulator) or savings (SageMaker) as metrics, the
    model file (``model_path``, the bytes the version holds) as an artifact. The MLflow run is
    recorded beside the version (:meth:`ModelRegistry.record_tracked_run`)."""
    record = registry.get(version)
    metadata, training = record.metadata, record.metadata.training
    evaluation = training.get("evaluation") or {}
    metrics = {
        **flatten(metadata.metrics, "holdout"),
        **flatten(training.get("spot") or {}, "spot"),
        **flatten(training.get("savings") or {}, "spot"),
        "rows": training.get("rows"),
        "promote": evaluation.get("promote"),
    }
    tracker.log_run(
        "training",
        f"{registry.name}:{version}",
        name=f"{registry.name} {version}",
        params={
            **flatten(metadata.params, "hyperparameters"),
            **flatten(training.get("dataset") or {}, "dataset"),
            "feature_group": training.get("feature_group"),
            "runner": training.get("runner"),
            "features": list(metadata.features),
            "data_start": metadata.data_start,
            "data_end": metadata.data_end,
        },
        metrics=metrics,
        tags={
            "model_name": registry.name,
            "model_version": version,
            "basis": training.get("basis"),
            "wfo_run_id": (metadata.wfo_run or {}).get("run_id"),
            "promotion": evaluation.get("reason"),
            "billing": training.get("billing"),
        },
        artifacts=[model_path],
        artifact_dir="model",
        keep=lambda tracked: registry.record_tracked_run(version, tracked.to_json()),
    )
