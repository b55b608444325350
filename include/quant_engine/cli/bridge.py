"""``quant-engine feed ...``: the replay feed from a terminal or a compose service.

Each command group of the bridge is added by its own function (:func:`add_feed_commands`), and
:func:`register` adds them all, so the groups stay independent of each other.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the bridge's command groups."""
    from quant_engine.bridge.service import add_bridge_commands

    add_feed_commands(subparsers)
    add_bridge_commands(subparsers)


def add_feed_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``feed serve``: a yfinance-compatible WebSocket feed replaying history."""
    from quant_engine.bridge.feed_server import DEFAULT_PORT, MALFORMED_KINDS, MIN_TICKS_PER_BAR, TIMELINES

    group = subparsers.add_parser("feed", help="the replay tick feed (yfinance's streaming format)")
    commands = group.add_subparsers(dest="feed_command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="stream ticks built from bars over WebSocket, at a chosen speed",
        description="Replay bars as a live yfinance-style feed: ticks per bar ending at each bar's exact OHLCV, "
        "one POST_MARKET tick at each session's close (from the bars' exchange calendar). "
        "GET /health on the same port.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 in a container)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any)")
    serve.add_argument(
        "--source",
        choices=("synthetic", "store"),
        default="synthetic",
        help="synthetic market, or the bars ingestion stored in the offline store",
    )
    serve.add_argument("--tickers", help="comma-separated tickers (default: all the source has)")
    serve.add_argument("--start", required=True, help="first session to replay, YYYY-MM-DD")
    serve.add_argument("--end", help="last session to replay, inclusive (default: a year after start)")
    serve.add_argument("--calendar", help="synthetic: exchange calendar (default XNYS); the store's is its group's")
    serve.add_argument("--bar-size", help="synthetic: bar size (default 1d); the store's is its group's")
    serve.add_argument(
        "--speed",
        type=float,
        default=60.0,
        help="market seconds per wall second (default 60: a session in 6.5 minutes)",
    )
    serve.add_argument(
        "--timeline",
        choices=TIMELINES,
        default="sessions",
        help="sessions: nights and weekends take no time; calendar: every hour passes",
    )
    serve.add_argument(
        "--ticks-per-bar", type=int, default=8, help=f"regular-market ticks per bar and ticker (>= {MIN_TICKS_PER_BAR})"
    )
    serve.add_argument(
        "--price-hint", type=int, help="decimals prices are quoted in (default: the fewest the bars' prices need)"
    )
    serve.add_argument(
        "--anchor-file",
        help="JSON file holding the replay clock's anchor: a restart with "
        "the same file resumes where a live feed would be now",
    )
    serve.add_argument("--seed", type=int, default=0, help="seed of the intraday tick paths")
    faults = serve.add_argument_group("fault injection (seeded, for tests and drills)")
    faults.add_argument("--fault-seed", type=int, default=0)
    faults.add_argument(
        "--drop-at-accept",
        type=int,
        default=0,
        metavar="N",
        help="drop the first N connections right after the handshake",
    )
    faults.add_argument("--accept-drop-rate", type=float, default=0.0, metavar="P")
    faults.add_argument("--drop-rate", type=float, default=0.0, metavar="P", help="per frame: drop the connection")
    faults.add_argument("--stall-rate", type=float, default=0.0, metavar="P", help="per frame: go silent")
    faults.add_argument("--stall-s", type=float, default=5.0, help="length of a stall, seconds")
    faults.add_argument(
        "--malformed-rate", type=float, default=0.0, metavar="P", help="per frame: send a malformed frame first"
    )
    faults.add_argument("--malformed-kinds", help=f"comma-separated, of {', '.join(MALFORMED_KINDS)} (default: all)")
    serve.set_defaults(handler=_serve)


def _load_bars(args: argparse.Namespace):  # noqa: ANN202 - pandas is imported lazily
    """The bars to replay and their market time: the group's for the store, the flags' for synthetic."""
    import pandas as pd

    from quant_engine.calendars import MarketTime
    from quant_engine.timeutil import utc_day

    tickers = [t.strip() for t in args.tickers.split(",") if t.strip()] if args.tickers else None
    start = utc_day(args.start, "--start")
    end = utc_day(args.end, "--end") if args.end else start + pd.Timedelta(days=365)
    if end < start:
        raise ValueError(f"--end {end.date()} is before --start {start.date()}")
    if args.source == "store":
        from quant_engine.backends import make_bar_history

        history = make_bar_history()
        if args.calendar or args.bar_size:
            raise ValueError("--calendar and --bar-size are for the synthetic source; the store replays its group's")
        market_time = history.market_time
    else:
        market_time = MarketTime(args.calendar or "XNYS", args.bar_size or "1d")
    calendar = market_time.exchange
    lo, hi = calendar.session_range(start, end)
    if hi <= lo:
        raise ValueError(f"no {calendar.name} session between {start.date()} and {end.date()}")
    first = pd.Timestamp(int(calendar.open_ns[lo]), tz="UTC")
    last = pd.Timestamp(int(calendar.close_ns[hi - 1]), tz="UTC")
    if args.source == "store":
        bars = history.read(tickers, first, last)
        if bars.empty:
            raise ValueError(
                f"the offline store holds no bars between {start.date()} and {end.date()}"
                f"{' for ' + ', '.join(tickers) if tickers else ''}; run `quant-engine ingest` first"
            )
        return bars, market_time
    from quant_engine.data.sources import source_on

    return source_on("synthetic", market_time).fetch(tickers, first, last), market_time


def _serve(args: argparse.Namespace) -> int:
    import time

    from quant_engine.bridge.feed_server import MALFORMED_KINDS, FaultPlan, FeedServer, ReplayClock, ReplaySchedule

    kinds = tuple(k.strip() for k in args.malformed_kinds.split(",")) if args.malformed_kinds else MALFORMED_KINDS
    fault_plan = FaultPlan(
        seed=args.fault_seed,
        drop_at_accept=args.drop_at_accept,
        accept_drop_rate=args.accept_drop_rate,
        drop_rate=args.drop_rate,
        stall_rate=args.stall_rate,
        stall_s=args.stall_s,
        malformed_rate=args.malformed_rate,
        kinds=kinds,
    )
    bars, market_time = _load_bars(args)
    schedule = ReplaySchedule(
        bars,
        market_time=market_time,
        ticks_per_bar=args.ticks_per_bar,
        seed=args.seed,
        price_hint=args.price_hint,
        timeline=args.timeline,
    )
    clock = (
        ReplayClock.from_anchor_file(args.anchor_file, args.speed)
        if args.anchor_file
        else ReplayClock(time.time(), args.speed)
    )
    server = FeedServer(schedule, clock, host=args.host, port=args.port, faults=fault_plan)
    asyncio.run(_serve_until_signalled(server))
    return 0


async def _serve_until_signalled(server) -> None:  # noqa: ANN001 - FeedServer, imported lazily
    """Serve until SIGTERM or SIGINT, then close every connection and exit cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        print(f"feed serving on {server.url} (health: http://{server.host}:{server.port}/health)", flush=True)
        await stop.wait()
    log.info("feed stopped")
