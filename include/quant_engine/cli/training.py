"""``quant-engine train`` and ``quant-engine models``: train here, list the registry's versions, show one,
promote one by hand.

``train`` runs the ``spot_training`` DAG's steps in one process, the promotion rule included
(``--wfo-run-id`` trains a walk-forward run's selected trial). A promotion from ``models promote``
is a person's decision and skips the promotion rule; the reason given is stored in the champion
pointer.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from quant_engine.cli.conf import json_object

if TYPE_CHECKING:
    from quant_engine.config import Settings
    from quant_engine.training.registry import ModelRegistry


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` command and the ``models`` command group."""
    from quant_engine.training.defaults import DEFAULT_MODEL_NAME

    train = subparsers.add_parser(
        "train",
        help="train, register and (by the promotion rule) promote a model here, without Airflow",
        description="Train what the spot_training DAG would: the champion's spec rolled forward, or with "
        "--wfo-run-id the selected trial of a finished walk-forward run on the full data.",
    )
    train.add_argument(
        "--conf",
        default="{}",
        help="JSON object of parameters, as for the spot_training DAG (missing keys: the champion's or defaults)",
    )
    train.add_argument(
        "--wfo-run-id",
        help="a finished walk-forward run (wfo_pipeline or `quant-engine wfo run`): train its selected trial",
    )
    train.add_argument(
        "--min-deflated-sharpe",
        type=float,
        help="promote only when the walk-forward run's deflated Sharpe ratio is above this (0..1)",
    )
    train.add_argument("--run-id", help="name of the training run folder (default: cli__<UTC time>)")
    train.set_defaults(handler=_train)

    group = subparsers.add_parser("models", help="the model registry: versions and the champion")
    group.add_argument("--name", default=DEFAULT_MODEL_NAME, help=f"model name (default: {DEFAULT_MODEL_NAME})")
    commands = group.add_subparsers(dest="models_command", metavar="COMMAND", required=True)

    listing = commands.add_parser("list", help="every version, oldest first; * marks the champion")
    listing.set_defaults(handler=_list)

    show = commands.add_parser("show", help="a version's metadata as JSON")
    show.add_argument("version", help="version: 3, v3 or v0003")
    show.set_defaults(handler=_show)

    promote = commands.add_parser("promote", help="make a version the champion (skips the promotion rule)")
    promote.add_argument("version", help="version: 3, v3 or v0003")
    promote.add_argument(
        "--reason", default="promoted by hand from the command line", help="why; stored in the champion pointer"
    )
    promote.set_defaults(handler=_promote)

    deployments = commands.add_parser(
        "deployments", help="what serves now, and every deployment and rollback (model_deployment), oldest first"
    )
    deployments.set_defaults(handler=_deployments)


def prepare_training(conf: dict, run_id: str, settings: Settings) -> dict:
    """``spot_training``'s prepare step from a terminal: the run folder, stores and jobs of ``settings``."""
    from quant_engine.backends import make_bar_store, make_model_registry, make_offline_store, make_training_jobs
    from quant_engine.runs import run_dir
    from quant_engine.training import pipeline

    return pipeline.prepare(
        conf,
        run_dir("training", run_id, settings),
        registry_of=lambda name: make_model_registry(settings, name),
        store=make_offline_store(settings),
        bar_store=make_bar_store(settings),
        settings=settings,
        jobs=lambda: make_training_jobs(settings),
    )


def train_and_register(prepared: dict, run_id: str, settings: Settings) -> tuple[ModelRegistry, dict, dict, str]:
    """``spot_training``'s train, evaluate and register steps from a terminal (the run logged to the
    tracker of ``settings``, its drift baselines recorded): the registry, the training and evaluation
    results and the new version. Promotion is the caller's."""
    from quant_engine.backends import make_model_registry, make_tracker, make_training_jobs
    from quant_engine.monitoring.run import record_training_baselines
    from quant_engine.training import pipeline

    registry = make_model_registry(settings, prepared["params"]["model_name"])
    trained = pipeline.train(prepared, run_id, jobs=lambda: make_training_jobs(settings))
    evaluated = pipeline.evaluate(prepared, trained, registry)
    version = pipeline.register(prepared, trained, evaluated, registry, tracker=make_tracker(settings))
    record_training_baselines(registry, version, prepared["run_dir"])
    return registry, trained, evaluated, version


def _train(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from quant_engine.config import get_settings

    conf = json_object(args.conf, "--conf")
    for key, value in (("wfo_run_id", args.wfo_run_id), ("min_deflated_sharpe", args.min_deflated_sharpe)):
        if value is None:
            continue
        if key in conf:
            raise ValueError(f"--{key.replace('_', '-')} and --conf's {key!r} both set {key}; give it once")
        conf[key] = value
    settings = get_settings()
    run_id = args.run_id or f"cli__{datetime.now(UTC):%Y%m%dT%H%M%S}"
    prepared = prepare_training(conf, run_id, settings)
    print(f"training {prepared['params']['model_name']} on {prepared['basis']}: {prepared['rows']} rows")
    registry, _, evaluated, version = train_and_register(prepared, run_id, settings)
    print(f"registered {registry.name} {version}")
    wfo_run = prepared["wfo_run"]
    if wfo_run:
        print(
            f"  from walk-forward run {wfo_run['run_id']} ({wfo_run['splitter']}): selected trial "
            f"{wfo_run['selected_trial']}, PBO {_metric(wfo_run, 'pbo')}, deflated Sharpe "
            f"{_metric(wfo_run, 'deflated_sharpe')}"
        )
    print(f"promote={evaluated['promote']}: {evaluated['reason']}")
    if evaluated["promote"]:
        promotion = registry.promote(version, evaluated["reason"], expected_champion=evaluated["champion"])
        print(f"champion: {promotion.version} (was {promotion.previous or 'none'})")
    return 0


def _registry(args: argparse.Namespace):  # noqa: ANN202 - the registry module is imported lazily
    from quant_engine.backends import make_model_registry

    return make_model_registry(name=args.name)


def _metric(metrics: dict, name: str) -> str:
    value = metrics.get(name)
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def _list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    versions = registry.list()
    if not versions:
        print(f"model {registry.name!r} has no versions yet; run the spot_training DAG")
        return 0
    champion = registry.champion()
    print(f"  {'version':<8} {'created':<26} {'data':<23} {'logloss':>8} {'auc':>7}  runner      wfo run")
    for record in versions:
        meta = record.metadata
        mark = "*" if champion is not None and champion.version == record.version else " "
        print(
            f"{mark} {record.version:<8} {record.created_at:<26} {meta.data_start[:10]}..{meta.data_end[:10]} "
            f"{_metric(meta.metrics, 'logloss'):>8} {_metric(meta.metrics, 'auc'):>7}  "
            f"{meta.training.get('runner', '-'):<11} {meta.wfo_run['run_id'] if meta.wfo_run else '-'}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    registry = _registry(args)
    record = registry.get(args.version)
    champion = registry.champion()
    payload = {**record.to_json(), "champion": champion is not None and champion.version == record.version}
    print(json.dumps(payload, indent=2))
    return 0


def _promote(args: argparse.Namespace) -> int:
    promotion = _registry(args).promote(args.version, args.reason)
    previous = f" (was {promotion.previous})" if promotion.previous else ""
    print(f"champion: {promotion.version}{previous}: {promotion.reason}")
    return 0


def _deployments(args: argparse.Namespace) -> int:
    from quant_engine.training.deployment import DeploymentHistory, served_version

    registry = _registry(args)
    history = DeploymentHistory(registry)
    entries = history.entries()
    serving = served_version(registry)
    basis = (
        "the live deployment"
        if history.live()
        else "the champion, nothing deployed"
        if not entries
        else "the last deployment was rolled back"
    )
    print(f"serving: {serving or 'nothing'} ({basis})")
    for entry in entries:
        print(
            f"  {entry.at[:19]}  {entry.version}  {entry.outcome:<11} {entry.target:<24} by {entry.by}: {entry.reason}"
        )
    return 0
