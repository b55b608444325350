"""``quant-engine models``: list the registry's versions, show one, promote one by hand.

A promotion from here is a person's decision and skips the promotion rule the ``spot_training``
DAG applies; the reason given is stored in the champion pointer.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``models`` command group."""
    from quant_engine.training.defaults import DEFAULT_MODEL_NAME

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
    print(f"  {'version':<8} {'created':<26} {'data':<23} {'logloss':>8} {'auc':>7}  runner")
    for record in versions:
        meta = record.metadata
        mark = "*" if champion is not None and champion.version == record.version else " "
        print(
            f"{mark} {record.version:<8} {record.created_at:<26} {meta.data_start[:10]}..{meta.data_end[:10]} "
            f"{_metric(meta.metrics, 'logloss'):>8} {_metric(meta.metrics, 'auc'):>7}  "
            f"{meta.training.get('runner', '-')}"
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
