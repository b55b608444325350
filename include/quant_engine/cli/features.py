"""``quant-engine ingest`` and ``quant-engine features ...``: the feature store from a terminal."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

from quant_engine.data.sources import SOURCE_NAMES


def register(subparsers: argparse._SubParsersAction) -> None:
    from quant_engine.data.plausibility import (
        DEFAULT_MAX_RETURN_MULTIPLE,
        DEFAULT_MAX_VOLUME_MULTIPLE,
        STAMPED_AT_CHOICES,
    )
    from quant_engine.data.schema import ON_ERROR_CHOICES

    ingest = subparsers.add_parser(
        "ingest",
        help="fetch bars, compute features, write the offline and online stores",
        description="Ingest the sessions of a range into the feature store (idempotent: reruns write nothing new). "
        "Bars are stamped at their close from the group's exchange calendar.",
    )
    ingest.add_argument(
        "--source", choices=SOURCE_NAMES, help="where bars come from (default: QE_DEFAULT_SOURCE, else synthetic)"
    )
    ingest.add_argument(
        "--path",
        help="file or folder of bars, for the csv and parquet sources (default: QE_DEFAULT_SOURCE_PATH "
        "with the default source)",
    )
    ingest.add_argument(
        "--tickers", help="comma-separated tickers (default: QE_DEFAULT_TICKERS, else all the source has)"
    )
    ingest.add_argument(
        "--start",
        help="first session, YYYY-MM-DD (default: the last closed session; for csv / "
        "parquet without dates, the whole file)",
    )
    ingest.add_argument("--end", help="last session, inclusive (default: start)")
    # Not argparse choices: listing them would import every registered feature module for any command.
    ingest.add_argument(
        "--feature-set",
        default="default",
        help="default, extended, close_only, ohlc or a set your feature modules register (quant-engine features list)",
    )
    ingest.add_argument(
        "--calendar",
        help="exchange calendar of a new feature group: XNYS (default), 24/5 (FX), "
        "24/7 (crypto), XLON, ...; an existing group keeps its own",
    )
    ingest.add_argument("--bar-size", help="bar size of a new feature group: 1d (default), 1h, 5m, ...")
    ingest.add_argument("--assume-tz", help="csv/parquet: time zone of naive timestamps (e.g. UTC, America/New_York)")
    ingest.add_argument(
        "--date-close",
        metavar="HH:MM",
        help="csv/parquet: stamp plain dates at this time in --assume-tz instead of the session close",
    )
    ingest.add_argument(
        "--on-error",
        choices=ON_ERROR_CHOICES,
        default="raise",
        help="broken or implausible bars: refuse the run (raise), drop them, or keep the merely "
        "implausible ones (keep)",
    )
    ingest.add_argument(
        "--stamped-at",
        choices=STAMPED_AT_CHOICES,
        default="close",
        help="csv/parquet intraday bars: stamped at their close (the rule) or at their open",
    )
    ingest.add_argument(
        "--max-return-multiple",
        type=float,
        default=DEFAULT_MAX_RETURN_MULTIPLE,
        help="a return beyond this multiple of its ticker's recent median is implausible "
        f"(default {DEFAULT_MAX_RETURN_MULTIPLE:g})",
    )
    ingest.add_argument(
        "--max-volume-multiple",
        type=float,
        default=DEFAULT_MAX_VOLUME_MULTIPLE,
        help=f"likewise for volume (default {DEFAULT_MAX_VOLUME_MULTIPLE:g})",
    )
    ingest.set_defaults(handler=_ingest)

    features = subparsers.add_parser("features", help="read the feature store; list and check feature definitions")
    commands = features.add_subparsers(dest="features_command", metavar="COMMAND", required=True)
    get = commands.add_parser("get", help="latest feature vector of a ticker from the online store")
    get.add_argument("ticker")
    get.add_argument("--features", help="comma-separated feature names (default: all)")
    get.add_argument("--ttl-days", type=float, help="treat values older than this many days as missing")
    get.set_defaults(handler=_features_get)

    history = commands.add_parser("history", help="feature rows of a ticker from the offline store")
    history.add_argument("ticker")
    history.add_argument("--start", type=_instant, help="first day or time (UTC unless it says)")
    history.add_argument("--end", type=_instant, help="last day (inclusive) or time")
    history.add_argument("--as-of", type=_instant, help="only what had been written by this time (bitemporal)")
    history.set_defaults(handler=_features_history)

    compact = commands.add_parser(
        "compact",
        help="rewrite the offline store's day files into one sorted snapshot "
        "that point-in-time joins read (the day files stay)",
    )
    compact.set_defaults(handler=_features_compact)

    drop = commands.add_parser(
        "drop",
        help="delete a feature group, its bars group and its online rows",
        description="Delete everything stored for a feature group (to re-ingest it, "
        "e.g. after the time rule changed). Cannot be undone.",
    )
    drop.add_argument("group", help="the feature group (QE_FEATURE_GROUP), e.g. market_features")
    drop.add_argument("--yes", action="store_true", help="really delete (without it, only say what would go)")
    drop.set_defaults(handler=_features_drop)

    listing = commands.add_parser(
        "list",
        help="feature sets by name, built-in and registered (QE_FEATURE_MODULES, entry points), and their features",
    )
    listing.set_defaults(handler=_features_list)

    check = commands.add_parser(
        "check",
        help="run every feature batch and streaming on a seeded synthetic market; exit 1 if any value differs",
        description="The batch = stream parity check over the built-in features and every registered one, "
        "and whether the DAG forms can list every registered set.",
    )
    check.add_argument("--feature", action="append", help="check only this feature (repeat for several)")
    check.add_argument("--seed", type=int, default=7, help="seed of the synthetic market (default 7)")
    check.set_defaults(handler=_features_check)


INGEST_FLAGS = (
    "source",
    "path",
    "tickers",
    "start",
    "end",
    "feature_set",
    "calendar",
    "bar_size",
    "assume_tz",
    "date_close",
    "on_error",
    "stamped_at",
    "max_return_multiple",
    "max_volume_multiple",
)


def _ingest(args: argparse.Namespace) -> int:
    from quant_engine.backends import make_group_stores
    from quant_engine.config import get_settings
    from quant_engine.features.ingest import IngestionRequest, NoSessionToIngest, ingest

    settings = get_settings()
    stores = make_group_stores(settings)
    try:
        request = IngestionRequest.from_params(
            {name: getattr(args, name) for name in INGEST_FLAGS}, stores.offline, defaults=settings.run_defaults
        )
    except NoSessionToIngest as skipped:
        print(f"{skipped}")
        return 0
    print(f"ingesting {request.describe()} from {request.source}")
    print(json.dumps(dataclasses.asdict(ingest(request, stores)), indent=2))
    return 0


def _features_get(args: argparse.Namespace) -> int:
    import pandas as pd

    from quant_engine.backends import make_online_store

    names = [n.strip() for n in args.features.split(",")] if args.features else None
    ttl = pd.Timedelta(days=args.ttl_days) if args.ttl_days is not None else None
    record = make_online_store().get(args.ticker, names, ttl=ttl)
    if record is None:
        print(f"no fresh features for {args.ticker!r} in the online store")
        return 1
    print(json.dumps({k: (str(v) if k == "event_time" else _json_number(v)) for k, v in record.items()}, indent=2))
    return 0


def _features_history(args: argparse.Namespace) -> int:
    from quant_engine.backends import make_offline_store

    frame = make_offline_store().read(
        [args.ticker], _utc(args.start), _utc(args.end, end_of_day=True), as_of=_utc(args.as_of)
    )
    if frame.empty:
        print(f"no rows for {args.ticker!r} in the offline store")
        return 1
    print(frame.to_string(index=False))
    return 0


def _features_compact(args: argparse.Namespace) -> int:
    from quant_engine.backends import make_offline_store

    snapshot = make_offline_store().compact()
    print(f"snapshot: {snapshot}" if snapshot else "the feature group holds no rows yet")
    return 0


def _features_drop(args: argparse.Namespace) -> int:
    from quant_engine.backends import make_group_stores
    from quant_engine.features.ingest import drop_feature_group

    removed = drop_feature_group(make_group_stores(feature_group=args.group), dry_run=not args.yes)
    for line in removed:
        print(("deleted " if args.yes else "would delete ") + line)
    if not args.yes:
        print("nothing deleted; pass --yes to delete")
    return 0


def _features_list(args: argparse.Namespace) -> int:
    from quant_engine.features.registry import BUILTIN_MODULE, feature_set_names, get_feature_set, registry

    registered = registry().feature_sets()
    for name in feature_set_names():
        feature_set = get_feature_set(name)
        module = registered[name].module if name in registered else BUILTIN_MODULE
        print(f"{name} (v{feature_set.version}, {module}): {', '.join(feature_set.names)}")
    return 0


def _features_check(args: argparse.Namespace) -> int:
    from quant_engine.features.parity import check_parity, registered_features
    from quant_engine.features.registry import declared_feature_set_names, feature_set_names

    features = registered_features()
    if args.feature:
        known = {f.definition.name for f in features}
        unknown = [name for name in args.feature if name not in known]
        if unknown:
            raise ValueError(f"no feature(s) {unknown} registered; known: {', '.join(sorted(known))}")
        features = [f for f in features if f.definition.name in args.feature]
    results = check_parity(features, seed=args.seed)
    for result in results:
        print(result.describe())
    unseen = sorted(set(feature_set_names()) - set(declared_feature_set_names()))
    for name in unseen:
        print(f"UNLISTED  feature set {name!r}: the DAG forms cannot offer it; register it with a literal name")
    failed = sum(not r.ok for r in results)
    print(f"{len(results) - failed} of {len(results)} features agree batch = stream")
    return 1 if failed or unseen else 0


def _instant(value: str) -> str:
    """An argparse type: a date or time kept as written; text that is neither is refused."""
    import pandas as pd

    try:
        pd.Timestamp(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date or time; write YYYY-MM-DD or ISO 8601") from None
    return value


def _utc(value: str | None, *, end_of_day: bool = False):
    """A CLI date or time as a UTC instant; a bare date means that whole UTC day."""
    import pandas as pd

    if value is None:
        return None
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:
        is_bare_date = stamp == stamp.normalize() and len(value) <= 10
        stamp = stamp.tz_localize("UTC")
        if end_of_day and is_bare_date:
            stamp += pd.Timedelta(days=1) - pd.Timedelta(1, "ns")
    return stamp


def _json_number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else value
