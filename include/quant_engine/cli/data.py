"""``quant-engine data ...``: make synthetic bars, check a bar file, fetch bars from any source.

Thin over the library: every command parses flags, calls one or two functions of
``quant_engine.data`` and reports. Bad input raises ``ValueError`` with the reason, which the root
command prints as one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from quant_engine.calendars import DEFAULT_BAR_SIZE, DEFAULT_CALENDAR, MarketTime
from quant_engine.data.files import read_bars, write_bars
from quant_engine.data.plausibility import STAMPED_AT_CHOICES, conform_bars
from quant_engine.data.schema import ON_ERROR_CHOICES, BarValidationError, ValidationReport
from quant_engine.data.sources import SOURCE_NAMES, make_source
from quant_engine.data.synthetic import Shift, SyntheticMarket


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` group and its sub-commands to the root parser."""
    group = subparsers.add_parser("data", help="synthesise, validate and fetch market bars")
    commands = group.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    synth = commands.add_parser(
        "synth",
        help="write bars of the synthetic market to a CSV or Parquet file",
        description="Simulate the synthetic market (regimes, GARCH volatility, fat tails, a weak "
        "regime-dependent edge) and write its bars atomically.",
    )
    synth.add_argument("--tickers", type=int, default=20, metavar="N", help="number of tickers SYN00.. (default 20)")
    synth.add_argument("--start", default="2010-01-01", help="first UTC day (default 2010-01-01)")
    synth.add_argument("--end", default="2030-12-31", help="last UTC day, inclusive (default 2030-12-31)")
    synth.add_argument("--freq", default="1d", help="bar length: 1d, or intraday such as 1h, 5min (default 1d)")
    synth.add_argument(
        "--calendar",
        default=DEFAULT_CALENDAR,
        help="exchange calendar of the sessions: XNYS (default), 24/5, 24/7, XLON, ...",
    )
    synth.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    synth.add_argument(
        "--shift",
        action="append",
        default=[],
        metavar="DATE:KIND[:OPTS]",
        help="inject a shift, e.g. 2022-01-03:concept or 2022-01-03:covariate:vol_scale=1.5 (repeatable)",
    )
    synth.add_argument("--out", required=True, type=Path, help="output file, .csv or .parquet")
    synth.set_defaults(handler=synth_command)

    validate = commands.add_parser(
        "validate",
        help="check a bar file (or folder of per-ticker files) against the bar schema",
        description="Exit 0 with a summary when the bars are clean; exit 1 listing every problem otherwise.",
    )
    validate.add_argument("file", type=Path, help="a .csv/.parquet file, or a folder of TICKER.csv/.parquet files")
    validate.add_argument(
        "--on-error",
        choices=ON_ERROR_CHOICES,
        default="raise",
        help="raise: any invalid row fails the check (default); drop: report the rows that would be dropped",
    )
    _add_time_options(validate)
    validate.add_argument(
        "--bar-size", default=DEFAULT_BAR_SIZE, help="bar size the stamps must follow: 1d (default), 1h, 5m, ..."
    )
    validate.add_argument(
        "--stamped-at",
        choices=STAMPED_AT_CHOICES,
        default="close",
        help="intraday stamps mark each bar's close (the rule) or its open",
    )
    validate.add_argument("--out", type=Path, help="also write the valid bars here (.csv or .parquet)")
    validate.set_defaults(handler=validate_command)

    fetch = commands.add_parser(
        "fetch",
        help="fetch bars from a source and write them to a file",
        description="Options a source does not take (e.g. --path for yfinance) are rejected by name.",
    )
    fetch.add_argument("--source", required=True, choices=SOURCE_NAMES)
    fetch.add_argument("--tickers", help="comma-separated tickers (default: all the source has)")
    fetch.add_argument("--start", required=True, help="first day (UTC) or tz-aware timestamp")
    fetch.add_argument("--end", required=True, help="last day (UTC, inclusive) or tz-aware timestamp")
    fetch.add_argument("--path", help="csv/parquet: the file or folder to read")
    _add_time_options(fetch)
    fetch.add_argument("--interval", help="yfinance: 1d (default) or an intraday interval such as 1h")
    fetch.add_argument("--out", required=True, type=Path, help="output file, .csv or .parquet")
    fetch.set_defaults(handler=fetch_command)


def _add_time_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--calendar",
        default=DEFAULT_CALENDAR,
        help="exchange calendar whose sessions plain dates name and stamps follow (default XNYS)",
    )
    parser.add_argument("--assume-tz", help="time zone of naive timestamps (e.g. UTC, America/New_York)")
    parser.add_argument(
        "--date-close",
        metavar="HH:MM",
        help="stamp plain dates at this time of day in --assume-tz (default: each session's close)",
    )


def synth_command(args: argparse.Namespace) -> int:
    shifts = [Shift.parse(text) for text in args.shift]
    market = SyntheticMarket(
        n_tickers=args.tickers,
        seed=args.seed,
        start=args.start,
        end=args.end,
        freq=args.freq,
        shifts=shifts,
        calendar=args.calendar,
    )
    bars = market.fetch(None, args.start, args.end)
    path = write_bars(bars, args.out)
    print(
        f"wrote {len(bars)} rows ({market.n_tickers} tickers, {market.freq} bars on {market.calendar.name}) to {path}"
    )
    return 0


def _print_problems(path: Path, report: ValidationReport) -> None:
    print(f"{path}: {report.n_rows_in} rows, {len(report.problems)} rule(s) broken", file=sys.stderr)
    for rule, rows in report.problems.items():
        print(f"  {rule}: {', '.join(rows)}", file=sys.stderr)


def _describe(bars: pd.DataFrame) -> str:
    if bars.empty:
        return "no bars"
    return f"{bars['ticker'].nunique()} ticker(s), {bars['ts'].min()} .. {bars['ts'].max()}"


def validate_command(args: argparse.Namespace) -> int:
    """Each row against the schema, then every bar against its calendar and its recent scale."""
    try:
        bars, report = read_bars(
            args.file,
            on_error=args.on_error,
            assume_tz=args.assume_tz,
            date_close=args.date_close,
            calendar=args.calendar,
        )
        bars, timing = conform_bars(
            bars, MarketTime(args.calendar, args.bar_size), on_error=args.on_error, stamped_at=args.stamped_at
        )
        report = report.merge(timing)
    except BarValidationError as exc:
        if exc.report is None:
            raise
        _print_problems(args.file, exc.report)
        return 1
    if report.ok:
        notes = "".join(f" ({note})" for note in report.notes)
        print(f"{args.file}: {report.n_rows_in} rows, no problems{notes}; {_describe(bars)}")
    else:
        _print_problems(args.file, report)
        print(f"{args.file}: kept {report.n_rows_out} of {report.n_rows_in} rows; {_describe(bars)}")
    if args.out:
        print(f"wrote {len(bars)} rows to {write_bars(bars, args.out)}")
    return 0


def fetch_command(args: argparse.Namespace) -> int:
    given = {
        "path": args.path,
        "assume_tz": args.assume_tz,
        "date_close": args.date_close,
        "interval": args.interval,
        "calendar": args.calendar,
    }
    source = make_source(args.source, **{k: v for k, v in given.items() if v is not None})
    tickers = [t.strip() for t in args.tickers.split(",") if t.strip()] if args.tickers else None
    bars = source.fetch(tickers, args.start, args.end)
    path = write_bars(bars, args.out)
    print(f"wrote {len(bars)} rows ({_describe(bars)}) from {args.source} to {path}")
    return 0
