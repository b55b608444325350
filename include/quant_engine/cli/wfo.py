"""``quant-engine wfo``: run the walk-forward pipeline in one process, or show a report's headline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from quant_engine.cli.conf import json_object

if TYPE_CHECKING:
    from quant_engine.config import Settings
    from quant_engine.wfo.config import WfoConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``wfo`` command group."""
    from quant_engine.wfo.defaults import SPLITTERS

    group = subparsers.add_parser("wfo", help="walk-forward validation: CPCV, purged K-fold or walk-forward splits")
    commands = group.add_subparsers(dest="wfo_command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="run the whole pipeline here, without Airflow")
    run.add_argument(
        "--conf",
        default="{}",
        help="JSON object of parameters, as for the wfo_pipeline DAG (missing keys take its defaults)",
    )
    run.add_argument("--run-id", help="name of the run folder and report (default: cli__<UTC time>)")
    run.add_argument(
        "--splitter",
        choices=SPLITTERS,
        help="cpcv (many paths, the default), purged_kfold (n_groups folds) or walk_forward (one path each)",
    )
    run.add_argument(
        "--train-window", help="walk_forward: bars (504) or a duration ('730D') of the first training window"
    )
    run.add_argument("--test-window", help="walk_forward: bars (252) or a duration ('365D') of each test window")
    run.add_argument(
        "--rolling",
        dest="anchored",
        action="store_false",
        default=None,
        help="walk_forward: rolling training windows of --train-window (default: anchored, expanding)",
    )
    run.add_argument("--embargo", help="bars (5) or a duration ('5D') kept out of training beside each test block")
    run.add_argument(
        "--no-purge",
        dest="purge",
        action="store_false",
        default=None,
        help="keep training labels that overlap the test (leaks; for measuring the leak only)",
    )
    run.set_defaults(handler=_run)

    show = commands.add_parser("show", help="print a report's headline numbers")
    where = show.add_mutually_exclusive_group(required=True)
    where.add_argument("location", nargs="?", type=Path, help="a report folder, its report.json, or a run id")
    where.add_argument("--latest", action="store_true", help="the most recently written report")
    show.set_defaults(handler=_show)


def _run(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from quant_engine.config import get_settings
    from quant_engine.wfo.config import WfoConfig
    from quant_engine.wfo.defaults import DEFAULT_PARAMS
    from quant_engine.wfo.report import headline, load_report

    conf = json_object(args.conf, "--conf")
    for key in ("splitter", "train_window", "test_window", "anchored", "embargo", "purge"):
        value = getattr(args, key)
        if value is None:
            continue
        if key in conf:
            flag = {"anchored": "--rolling", "purge": "--no-purge"}.get(key, f"--{key.replace('_', '-')}")
            raise ValueError(f"{flag} and --conf's {key!r} both set {key}; give it once")
        conf[key] = value
    settings = get_settings()
    config = WfoConfig.from_params({**DEFAULT_PARAMS, **conf}, default_tickers=settings.default_tickers)
    folder = run_walk_forward(config, args.run_id or f"cli__{datetime.now(UTC):%Y%m%dT%H%M%S}", settings)
    print(headline(load_report(folder)))
    return 0


def run_walk_forward(config: WfoConfig, run_id: str, settings: Settings) -> Path:
    """``wfo_pipeline`` from a terminal: the run folder, stores, fit runner and tracker of ``settings``;
    returns the report folder."""
    from quant_engine.backends import make_bar_store, make_offline_store, make_tracker, make_wfo_fits
    from quant_engine.runs import run_dir
    from quant_engine.wfo.pipeline import run_pipeline

    return run_pipeline(
        config,
        run_dir("wfo", run_id, settings),
        make_offline_store(settings),
        make_bar_store(settings),
        make_wfo_fits(settings),
        settings.reports_dir,
        tracker=make_tracker(settings),
    )


def _show(args: argparse.Namespace) -> int:
    from quant_engine.config import get_settings
    from quant_engine.wfo.report import headline, latest_report, load_report, report_dir

    reports = get_settings().reports_dir
    if args.latest:
        location = latest_report(reports)
    elif args.location.exists():
        location = args.location
    else:
        location = report_dir(str(args.location), reports)
    print(headline(load_report(location)))
    return 0
