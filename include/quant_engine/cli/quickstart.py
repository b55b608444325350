"""``quant-engine quickstart FILE``: from your own bar file to a champion (and, with ``--serve``, live signals).

The steps are the DAGs' own library calls, run in this process one after the other:
``market_data_ingestion`` (:func:`~quant_engine.features.ingest.fetch_bars`, ``compute_features``,
``write_features``), ``wfo_pipeline`` (:func:`~quant_engine.wfo.pipeline.run_pipeline`) and
``spot_training`` with the walk-forward run's id (``quant_engine.training.pipeline``'s prepare,
train, evaluate, register, and the promotion rule), through the same functions as ``quant-engine wfo
run`` and ``quant-engine train`` (tracked in MLflow as those are). Nothing is re-implemented here, so
what the quickstart reports is what the Airflow runs would have produced on the same data.

``--serve`` then starts the replay feed (``quant-engine feed serve --source store``) and the bridge
(``quant-engine bridge run``) as subprocesses, replays the file's last sessions through them fast,
prints the first signals a subscriber receives and stops both. The replayed sessions are inside
the data the champion was trained on: this shows the path from ticks to signals working, not skill
out of sample (the walk-forward numbers are the out-of-sample evidence). ``make up DATA=FILE``
runs the quickstart, then the whole stack with the feed replaying the same stored bars
(``--stack-env`` writes the settings it needs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quant_engine.cli.conf import json_object

#: Wall seconds one replayed NYSE session (6.5 hours) takes with the default ``--replay-speed``.
SESSION_WALL_S = 1.0
DEFAULT_REPLAY_SPEED = 23_400 / SESSION_WALL_S
#: Wall seconds from starting the feed to its first replayed tick: time for the feed to start and for
#: the waiting bridge's reconnection backoff to find it. Bars that close before the bridge is
#: connected are not lost, they become its warm-up, but they give no signal.
REPLAY_LEAD_S = 8.0

#: Training parameters of a quickstart: no simulated spot interruptions (they show the checkpoints at
#: work, which is spot_training's story, and each restart costs a trainer start-up).
TRAIN_DEFAULTS: dict[str, Any] = {"interruptions": 0}


class ServeError(RuntimeError):
    """The feed or the bridge did not start, or published too few signals in time: their logs say why."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``quickstart`` command."""
    from quant_engine.data.schema import ON_ERROR_CHOICES
    from quant_engine.features.registry import feature_set_names

    quick = subparsers.add_parser(
        "quickstart",
        help="your bar file -> feature store -> walk-forward (PBO, deflated Sharpe) -> champion [-> live signals]",
        description="Ingest FILE, run walk-forward validation on it, train and promote its selected trial, and "
        "with --serve replay the file's last sessions through the feed and the bridge, printing the first "
        "signals. The same library calls as the DAGs, in one process.",
    )
    quick.add_argument("file", type=Path, help="bars: a .csv or .parquet file (ticker,date,close[,open,...])")
    quick.add_argument("--calendar", help="exchange calendar of the sessions: XNYS (default), 24/5, 24/7, XLON, ...")
    quick.add_argument("--bar-size", help="bar size: 1d (default), 1h, 5m, ...")
    quick.add_argument("--assume-tz", help="time zone of naive timestamps (e.g. UTC, America/New_York)")
    quick.add_argument("--date-close", metavar="HH:MM", help="stamp plain dates at this time in --assume-tz")
    quick.add_argument(
        "--feature-set",
        default="default",
        choices=feature_set_names(),
        help="close_only for a file with closes alone",
    )
    quick.add_argument("--on-error", choices=ON_ERROR_CHOICES, default="raise", help="broken or implausible bars")
    quick.add_argument(
        "--wfo-conf",
        default="{}",
        help="JSON object of walk-forward parameters, as for the wfo_pipeline DAG (default: its defaults "
        "over the file's whole range)",
    )
    quick.add_argument(
        "--train-conf",
        default=json.dumps(TRAIN_DEFAULTS),
        help="JSON object of training parameters, as for the spot_training DAG (default: "
        f"{json.dumps(TRAIN_DEFAULTS)}; the walk-forward run's id is added)",
    )
    quick.add_argument(
        "--promote-anyway",
        action="store_true",
        help="make the model champion even when the promotion rule refuses it (a person's decision, recorded)",
    )
    quick.add_argument("--serve", action="store_true", help="then replay the last sessions through feed and bridge")
    quick.add_argument(
        "--replay-only",
        action="store_true",
        help="only the --serve part: replay FILE's last sessions (already ingested) with the current champion",
    )
    quick.add_argument("--sessions", type=int, default=20, help="--serve: sessions to replay (default 20)")
    quick.add_argument("--signals", type=int, default=5, help="--serve: signals to print before stopping (default 5)")
    quick.add_argument(
        "--replay-speed",
        type=float,
        default=DEFAULT_REPLAY_SPEED,
        help=f"--serve: market seconds per wall second (default {DEFAULT_REPLAY_SPEED:g}: a session a second)",
    )
    quick.add_argument("--timeout", type=float, default=120.0, help="--serve: longest wait for the signals (s)")
    quick.add_argument(
        "--stack-env",
        type=Path,
        help="write the QE_STACK_* settings that make the stack's feed replay these bars (make up DATA=FILE)",
    )
    quick.set_defaults(handler=_quickstart)


def _quickstart(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from quant_engine.config import get_settings

    for name in ("sessions", "signals"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name}={getattr(args, name)} must be at least 1")
    wfo_conf = json_object(args.wfo_conf, "--wfo-conf")
    train_conf = json_object(args.train_conf, "--train-conf")
    if not args.file.exists():
        raise FileNotFoundError(2, "no such bar file", str(args.file))
    settings = get_settings()
    run_id = f"quickstart__{datetime.now(UTC):%Y%m%dT%H%M%S}"
    if args.replay_only:
        bars, _ = _ingest(args, settings, write=False)
        tickers = sorted(bars["ticker"].unique())
        _serve(settings, tickers, _replay_window(bars, args.sessions), args, run_id)
        return 0
    took: dict[str, float] = {}
    begun = time.monotonic()
    bars, request = _ingest(args, settings)
    took["ingest"] = time.monotonic() - begun
    tickers = sorted(bars["ticker"].unique())
    wfo_run = _walk_forward(wfo_conf, tickers, request, run_id, settings)
    took["walk-forward"] = time.monotonic() - begun - sum(took.values())
    champion = _train(train_conf, run_id, args.promote_anyway, settings)
    took["training"] = time.monotonic() - begun - sum(took.values())
    steps = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in took.items())
    print(f"quickstart: done in {time.monotonic() - begun:.0f} s ({steps})")

    if champion is None:
        print("no champion: signals say no_model until one is promoted (quant-engine models promote VERSION)")
    replay = _replay_window(bars, args.sessions)
    if args.stack_env:
        _write_stack_env(args.stack_env, tickers, replay)
    if args.serve:
        _serve(settings, tickers, replay, args, run_id)
    else:
        print(
            f"next: quant-engine quickstart {args.file} --serve (replays the last {args.sessions} sessions through the"
            f" bridge), or make up DATA={args.file} (the whole stack); walk-forward report: {wfo_run}"
        )
    return 0


def _ingest(args: argparse.Namespace, settings, *, write: bool = True):  # noqa: ANN001, ANN202 - imported lazily
    """The ingestion DAG's three steps on the whole file (only its reading without ``write``); the bars and the
    request."""
    from quant_engine.backends import make_group_stores
    from quant_engine.features.ingest import (
        IngestionRequest,
        bars_in_range,
        compute_features,
        fetch_bars,
        write_features,
    )

    stores = make_group_stores(settings)
    source = "parquet" if args.file.suffix.lower() in (".parquet", ".pq") else "csv"
    params = {
        "source": source,
        "path": str(args.file),
        "tickers": None,
        "feature_set": args.feature_set,
        "calendar": args.calendar,
        "bar_size": args.bar_size,
        "assume_tz": args.assume_tz,
        "date_close": args.date_close,
        "on_error": args.on_error,
    }
    # Every ticker of the file, whatever QE_DEFAULT_TICKERS says: the quickstart is about this file.
    request = IngestionRequest.from_params(params, stores.offline, defaults={**settings.run_defaults, "tickers": None})
    bars = fetch_bars(request)
    if not write:
        return bars, request
    print(f"quickstart: ingesting {args.file}: {request.describe()}")
    result = write_features(
        compute_features(bars, request), stores, bars=bars_in_range(bars, request), market_time=request.market_time
    )
    print(
        f"  ingested {result.rows_received} bars of {result.tickers} tickers ({result.start[:10]} .. "
        f"{result.end[:10]}): {result.rows_written_offline} new feature rows, {result.bars_written_offline} new bars"
    )
    return bars, request


def _walk_forward(conf: dict[str, Any], tickers: list[str], request, run_id: str, settings) -> str:  # noqa: ANN001
    """The walk-forward pipeline over the file's tickers and range; prints the headline, returns the report."""
    from quant_engine.cli.wfo import run_walk_forward
    from quant_engine.wfo.config import WfoConfig
    from quant_engine.wfo.defaults import DEFAULT_PARAMS
    from quant_engine.wfo.report import load_report

    params = {
        **DEFAULT_PARAMS,
        "start": str(request.first_session.date()),
        "end": str(request.last_session.date()),
        "tickers": ",".join(tickers),
        "feature_set": request.feature_set,
        **conf,
    }
    config = WfoConfig.from_params(params, default_tickers=settings.default_tickers)
    print(f"quickstart: walk-forward validation ({params['splitter']}) of {len(tickers)} tickers, run {run_id}")
    folder = run_walk_forward(config, run_id, settings)
    report = load_report(folder)
    selected = report["trials"][report["selected_trial"]]
    print(
        f"  {report['n_splits']} splits, {report['n_paths']} path(s), {report['n_trials']} trials; selected trial "
        f"{report['selected_trial']}, mean path Sharpe {_number(selected['mean_path_sharpe'], 2)}"
    )
    print(f"  PBO {_number(report['pbo'])} (probability the selection is overfit; lower is better)")
    print(f"  deflated Sharpe {_number(report['deflated_sharpe'])} (probability the edge is no luck; higher is better)")
    print(f"  report: {folder / 'report.html'}")
    return str(folder / "report.html")


def _train(conf: dict[str, Any], run_id: str, promote_anyway: bool, settings) -> str | None:  # noqa: ANN001
    """``spot_training`` with the walk-forward run's id; the champion's version afterwards (None: none)."""
    if "wfo_run_id" in conf:
        raise ValueError("--train-conf's wfo_run_id is the quickstart's own walk-forward run; leave it out")
    from quant_engine.cli.training import prepare_training, train_and_register
    from quant_engine.training.pipeline import describe_training

    prepared = prepare_training({**conf, "wfo_run_id": run_id}, run_id, settings)
    rows = prepared["rows"]
    print(f"quickstart: training on {rows['train']} rows, judged on {rows['holdout']} later ones ({prepared['basis']})")
    registry, trained, evaluated, version = train_and_register(prepared, run_id, settings)
    print(f"  {describe_training(trained)}")
    print(f"  registered {registry.name} {version}; promote={evaluated['promote']}: {evaluated['reason']}")
    if evaluated["promote"]:
        promotion = registry.promote(version, evaluated["reason"], expected_champion=evaluated["champion"])
        print(f"  champion: {promotion.version} (was {promotion.previous or 'none'})")
    elif promote_anyway:
        promotion = registry.promote(version, f"quickstart --promote-anyway over the rule: {evaluated['reason']}")
        print(f"  champion: {promotion.version} by --promote-anyway (was {promotion.previous or 'none'})")
    champion = registry.champion()
    return None if champion is None else champion.version


def _replay_window(bars, sessions: int) -> tuple[str, str]:  # noqa: ANN001 - pandas, imported lazily
    """First and last day of the file's last ``sessions`` days with bars (UTC dates of the bars' closes)."""
    days = sorted(bars["ts"].dt.tz_convert("UTC").dt.date.unique())
    return str(days[-min(sessions, len(days))]), str(days[-1])


def _write_stack_env(path: Path, tickers: list[str], replay: tuple[str, str]) -> None:
    """Settings for ops/stack.py (``make up DATA=FILE``): the feed replays the stored bars of these tickers."""
    from quant_engine.storage.atomic import write_bytes_atomic

    lines = [
        "QE_STACK_FEED_SOURCE=store",
        f"QE_STACK_TICKERS={','.join(tickers)}",
        f"QE_STACK_FEED_START={replay[0]}",
    ]
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())
    print(f"  stack settings: {path}")


def _quant_engine() -> str:
    command = Path(sys.executable).with_name("quant-engine")
    if not command.exists():
        raise FileNotFoundError(2, "the quant-engine command is not installed beside this Python", str(command))
    return str(command)


class _Service:
    """A subprocess logging to a file; waits for a line saying it is ready, and stops on SIGTERM."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        with log.open("w") as out:
            self.process = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

    def wait_for(self, marker: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text(errors="replace").splitlines():
                if marker in line:
                    return line
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        tail = self.log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise ServeError(f"the {self.name} did not start ({tail[0][:300]}); its log: {self.log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def _serve(settings, tickers: list[str], replay: tuple[str, str], args: argparse.Namespace, run_id: str) -> None:  # noqa: ANN001
    """Bridge and feed as subprocesses; print the first ``args.signals`` signals a subscriber gets, then stop both.

    The bridge starts first and a subscriber connects to it before the feed starts, so a slow start
    of either (a loaded machine) delays the replay instead of losing its first sessions.
    """
    from quant_engine.runs import run_dir

    folder = run_dir("quickstart", run_id, settings)
    token = secrets.token_urlsafe(16)
    feed_port = _free_port()
    env = {**os.environ, "QE_HOME": str(settings.home), "PYTHONUNBUFFERED": "1"}
    print(f"quickstart: replaying {replay[0]} .. {replay[1]} of the stored bars through the feed and the bridge")
    command = _quant_engine()
    bridge_env = {
        **env,
        "QE_FEED_URL": f"ws://127.0.0.1:{feed_port}",
        "QE_BRIDGE_HOST": "127.0.0.1",
        "QE_BRIDGE_PORT": "0",
        "QE_BRIDGE_TOKENS": token,
        "QE_BRIDGE_TICKERS": ",".join(tickers),
    }
    services = [_Service("bridge", [command, "bridge", "run"], bridge_env, folder / "bridge.log")]

    def start_feed() -> None:
        anchor = folder / "anchor.json"
        anchor.write_text(json.dumps({"anchor": time.time() + REPLAY_LEAD_S, "speed": args.replay_speed}))
        services.append(
            _Service(
                "feed",
                [
                    command,
                    "feed",
                    "serve",
                    "--source",
                    "store",
                    "--port",
                    str(feed_port),
                    "--start",
                    replay[0],
                    "--end",
                    replay[1],
                    "--tickers",
                    ",".join(tickers),
                    "--speed",
                    f"{args.replay_speed:g}",
                    "--anchor-file",
                    str(anchor),
                ],
                env,
                folder / "feed.log",
            )  # fmt: skip
        )
        services[-1].wait_for("feed serving on ", args.timeout)

    try:
        port = json.loads(services[0].wait_for('"bridge listening"', args.timeout))["port"]
        print(f"  bridge  ws://127.0.0.1:{port}  (http://127.0.0.1:{port}/health, /metrics, /signals/latest)")
        print(f"  feed    ws://127.0.0.1:{feed_port}  (http://127.0.0.1:{feed_port}/health)")
        print(f"  logs    {folder}")
        received = asyncio.run(_first_signals(port, token, args.signals, args.timeout, start_feed))
    finally:
        for service in reversed(services):
            service.stop()
    for item in received:
        print(
            f"  signal {item['ticker']} {item['ts']} prob {_number(item['prob'], 4)} weight "
            f"{_number(item['weight'], 4)} status {item['status']} model {item['model_version'] or '-'}"
        )
    if len(received) < args.signals:
        raise ServeError(
            f"the bridge published {len(received)} of {args.signals} signals within {args.timeout:g} s; "
            f"its log: {folder / 'bridge.log'}"
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _first_signals(
    port: int, token: str, count: int, timeout: float, start_feed: Callable[[], None]
) -> list[dict[str, Any]]:
    """Subscribe to every ticker, then start the feed and collect the first ``count`` signals (fewer if
    ``timeout`` passes)."""
    from websockets.asyncio.client import connect

    received: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(f"ws://127.0.0.1:{port}/", additional_headers=headers) as ws:
        await ws.send(json.dumps({"subscribe": ["*"]}))
        await ws.recv()  # the subscription's acknowledgement
        await asyncio.to_thread(start_feed)
        try:
            async with asyncio.timeout(timeout):
                while len(received) < count:
                    received.append(json.loads(await ws.recv()))
        except TimeoutError:
            pass
    return received


def _number(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"
