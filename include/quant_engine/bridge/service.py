"""The bridge service: feed client -> bounded buffer -> state handler -> signal publisher, in one asyncio loop.

Three tasks share the loop. *Ingest* reads ticks from the :class:`~quant_engine.bridge.feed_client.FeedClient`
(which reconnects by itself) into the :class:`~quant_engine.bridge.buffer.TickBuffer` and never
waits on processing. *Process* drains whatever the buffer holds, hands it to the
:class:`~quant_engine.bridge.state.StateHandler` in one batch (so bars that close together are
predicted together) and publishes the signals. The model is refreshed between batches, so a newly
promoted champion takes over without losing a tick: ticks keep arriving in the buffer meanwhile.
*Housekeeping* writes predictions to the prediction log at least every ``log_flush_s`` seconds,
so the drift monitor sees them on quiet days too.

``quant-engine bridge run`` and ``python -m quant_engine.bridge`` run it configured from the
environment (:class:`~quant_engine.bridge.settings.BridgeSettings`), log JSON lines to stderr, and
on SIGTERM or SIGINT stop reading the feed, process what is buffered, flush the prediction log and
close every subscriber.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import signal
import sys
import time
from collections import deque
from typing import Any

from quant_engine.backends import make_aws_clients, make_bar_history, make_model_registry
from quant_engine.bridge.bars import ORIGINS, BarClock
from quant_engine.bridge.buffer import TickBuffer
from quant_engine.bridge.feed_client import FeedClient
from quant_engine.bridge.inference import LocalChampionModel, SageMakerEndpointModel, SignalModel
from quant_engine.bridge.publisher import Metric, SignalPublisher
from quant_engine.bridge.settings import BridgeSettings
from quant_engine.bridge.state import SIGNAL_STATUSES, Signal, StateHandler
from quant_engine.bridge.ticks import Tick
from quant_engine.config import Settings, get_settings

__all__ = ["BridgeService", "JsonLinesFormatter", "add_bridge_commands", "build_model", "main"]

log = logging.getLogger(__name__)

#: Seconds over which ``tick_rate`` is averaged.
RATE_WINDOW_S = 10


class _RateMeter:
    """Events per second over the last :data:`RATE_WINDOW_S` whole seconds, in O(1) per event."""

    def __init__(self) -> None:
        self._buckets: deque[list[int]] = deque()

    def add(self, now: float, count: int = 1) -> None:
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([second, count])
        while self._buckets[0][0] <= second - RATE_WINDOW_S:
            self._buckets.popleft()

    def rate(self, now: float) -> float:
        recent = sum(c for s, c in self._buckets if s > int(now) - RATE_WINDOW_S)
        return recent / RATE_WINDOW_S


def build_model(settings: BridgeSettings, engine: Settings) -> SignalModel:
    """The configured model: the registry's champion, or the SageMaker endpoint fed the champion's features."""
    registry = make_model_registry(engine, settings.model_name)
    if settings.model_source == "local":
        from quant_engine.monitoring.run import load_baseline

        return LocalChampionModel(registry, check_every_s=settings.reload_s,
                                  baseline_loader=lambda name, version: load_baseline(registry, version)[0])
    champion = LocalChampionModel(registry)  # what the endpoint was deployed from: its columns and vol range
    if champion.version is None:
        raise ValueError(f"QE_BRIDGE_MODEL=sagemaker takes the endpoint's input columns from model "
                         f"{registry.name!r}'s champion, and it has none yet; promote one first")
    return SageMakerEndpointModel(make_aws_clients(engine).client("sagemaker-runtime"), settings.sagemaker_endpoint,
                                  champion.features, champion.volatility_range)


class BridgeService:
    """One running bridge.

    Parameters
    ----------
    settings : BridgeSettings
    handler : StateHandler
        Holds the model, the feature state and the prediction log.
    tickers : sequence of str
        What the feed client subscribes to.
    feed_options : dict, optional
        Extra :class:`FeedClient` arguments (backoff, seed, heartbeat) for tests and drills.
    """

    def __init__(self, settings: BridgeSettings, handler: StateHandler, tickers: tuple[str, ...],
                 *, feed_options: dict[str, Any] | None = None) -> None:
        if not tickers:
            raise ValueError("the bridge needs at least one ticker "
                             "(QE_BRIDGE_TICKERS, or stored bars to take them from)")
        self.settings = settings
        self.handler = handler
        self.tickers = tuple(tickers)
        clock = handler.bars.clock
        self.buffer = TickBuffer(settings.buffer_size, settings.check_market_time(clock.market_time), clock=clock)
        self.feed = FeedClient(settings.feed_url, self.tickers, stale_after_s=settings.stale_after_s,
                               **(feed_options or {}))
        self.publisher = SignalPublisher(settings.tokens, host=settings.host, port=settings.port,
                                         max_size=settings.max_size, client_queue=settings.client_queue,
                                         health=self.health, metrics=self.metrics)
        self.started_at = time.time()
        self._received: dict[str, float] = {}
        self._ticks = _RateMeter()
        self.batches = 0
        self._stopping = False

    @property
    def port(self) -> int:
        return self.publisher.port

    # --- running ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, started: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set; then drain the buffer, flush the prediction log and close subscribers."""
        await self.publisher.start()
        log.info("bridge listening", extra={"port": self.port, "feed": self.settings.feed_url,
                                            "tickers": len(self.tickers), "model_version": self.handler.model.version})
        tasks = {asyncio.create_task(self._ingest(), name="bridge-ingest"),
                 asyncio.create_task(self._process(), name="bridge-process"),
                 asyncio.create_task(self._housekeeping(), name="bridge-housekeeping")}
        if started is not None:
            started.set()
        stopped = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({*tasks, stopped}, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stopped}:
                task.result()  # a task that ended on its own failed: let the error out
        finally:
            self._stopping = True
            await self.feed.close()
            for task in (*tasks, stopped):
                task.cancel()
            await asyncio.gather(*tasks, stopped, return_exceptions=True)
            self._handle(self.buffer.drain())
            self.handler.flush()
            await self.publisher.stop()
            log.info("bridge stopped", extra={"counters": self.handler.counters})

    async def _ingest(self) -> None:
        async for tick in self.feed.ticks():
            now = time.time()
            self._received[tick.ticker] = now
            self._ticks.add(now)
            self.buffer.put(tick)

    async def _process(self) -> None:
        while True:
            await self.buffer.wait()
            self._handle(self.buffer.drain())
            await asyncio.sleep(0)  # let ingest and subscribers run between batches

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.settings.log_flush_s)
            self.handler.flush()

    def _handle(self, ticks: list[Tick]) -> list[Signal]:
        if not ticks:
            return []
        self.batches += 1
        signals = self.handler.on_ticks(ticks, self._received)
        for s in signals:
            self.publisher.publish(s.to_json())
        return signals

    # --- observability ------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /health``: is the feed up, how far behind, how busy, what the model is."""
        now = time.time()
        stats = self.feed.stats
        lag = None if stats.last_tick_wall_time is None else round(now - stats.last_tick_wall_time, 3)
        if self._stopping:
            status = "stopping"
        elif not stats.connected:
            status = "degraded"
        else:
            status = "ok" if self.handler.model.version is not None else "waiting_for_model"
        return {
            "status": status,
            "feed_url": self.settings.feed_url,
            "feed_connected": stats.connected,
            "lag_seconds": lag,
            "tick_rate": self._ticks.rate(now),
            "tickers": len(self.tickers),
            "market_time": self.handler.bars.clock.market_time.describe(),
            "bars": dict(self.handler.bars.counters),
            "gaps": self._gaps(),
            "signals": {k: v for k, v in self.handler.counters.items() if k.startswith("signals_")},
            "model_version": self.handler.model.version,
            "uptime_seconds": round(now - self.started_at, 1),
            "counters": {
                "feed": {"connects": stats.connects, "reconnects": stats.reconnects, "disconnects": stats.disconnects,
                         "stale_reconnects": stats.stale_reconnects, "frames": stats.frames, "ticks": stats.ticks,
                         "dropped": dict(stats.dropped)},
                "buffer": self.buffer.counters(),
                "handler": dict(self.handler.counters),
                "publisher": {**self.publisher.counters, "clients": self.publisher.clients},
            },
        }

    def _gaps(self) -> dict[str, Any]:
        """Bars missed and not in the store: per degraded ticker, the first few missing bar times."""
        unfilled = self.handler.bars.unfilled
        return {"unfilled_bars_total": self.handler.bars.counters["bars_unfilled"],
                "degraded_tickers": len(unfilled),
                "missing": {t: [BarClock.ts(ms).isoformat() for ms in sorted(closes)[:5]]
                            for t, closes in sorted(unfilled.items())[:20]}}

    def metrics(self) -> list[Metric]:
        """The bridge's metrics beyond the publisher's own, for ``GET /metrics``."""
        stats, counters, bars = self.feed.stats, self.handler.counters, self.handler.bars.counters
        lag = math.nan if stats.last_tick_wall_time is None else time.time() - stats.last_tick_wall_time
        buffer = self.buffer.counters()
        return [
            Metric.single("qe_bridge_feed_connected", "gauge", "1 while the feed connection is open.",
                          int(stats.connected)),
            Metric.single("qe_bridge_feed_lag_seconds", "gauge", "Seconds since the last valid tick arrived.", lag),
            Metric.single("qe_bridge_feed_reconnects_total", "counter", "Feed connections made after the first.",
                          stats.reconnects),
            Metric.single("qe_bridge_feed_stale_reconnects_total", "counter",
                          "Feed connections aborted for silence.", stats.stale_reconnects),
            Metric.single("qe_bridge_ticks_total", "counter", "Valid ticks received.", stats.ticks),
            Metric("qe_bridge_frames_dropped_total", "counter", "Feed frames dropped, by reason.",
                   [({"reason": r}, n) for r, n in stats.dropped.items()]),
            Metric.single("qe_bridge_tick_rate", "gauge", f"Ticks per second over the last {RATE_WINDOW_S} s.",
                          self._ticks.rate(time.time())),
            Metric("qe_bridge_buffer_ticks_total", "counter", "Ticks through the ingest buffer, by outcome.",
                   [({"outcome": k}, buffer[k]) for k in ("accepted", "coalesced", "dropped")]),
            Metric.single("qe_bridge_buffer_depth", "gauge", "Ticks waiting in the ingest buffer.", buffer["depth"]),
            Metric.single("qe_bridge_late_ticks_total", "counter", "Ticks of sessions already closed.",
                          bars["late_ticks"]),
            Metric("qe_bridge_bars_total", "counter", "Closed bars, by where their values came from.",
                   [({"origin": o}, bars[f"bars_{o}"]) for o in ORIGINS]),
            Metric.single("qe_bridge_bars_unfilled_total", "counter",
                          "Bars missed that the stored history could not fill (the ticker's signals degrade).",
                          bars["bars_unfilled"]),
            Metric.single("qe_bridge_degraded_tickers", "gauge",
                          "Tickers whose feature window lacks a missed bar.", len(self.handler.bars.unfilled)),
            Metric.single("qe_bridge_ticks_outside_session_total", "counter",
                          "Ticks between sessions (no bar takes them).", bars["ticks_outside_session"]),
            Metric("qe_bridge_signals_total", "counter", "Signals, by volatility-check status.",
                   [({"status": s}, counters[f"signals_{s}"]) for s in SIGNAL_STATUSES]),
            Metric.single("qe_bridge_predictions_total", "counter", "Model predictions made.", counters["predictions"]),
            Metric.single("qe_bridge_predictions_logged_total", "counter", "Predictions written to the prediction log.",
                          counters["predictions_logged"]),
            Metric.single("qe_bridge_bar_errors_total", "counter", "Bars refused by the feature state.",
                          counters["bar_errors"]),
            Metric.single("qe_bridge_model_reloads_total", "counter", "Champion changes picked up.",
                          counters["model_reloads"]),
        ]


# --- logging and entry points ----------------------------------------------------------------

_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_json_logging(level: int = logging.INFO) -> None:
    """Send every log record to stderr as a JSON line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLinesFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def build_service(settings: BridgeSettings | None = None, engine: Settings | None = None) -> BridgeService:
    """A service wired from the environment: model, stored history, prediction log, tickers."""
    from quant_engine.features.definitions import get_feature_set
    from quant_engine.monitoring.predictions import prediction_log

    settings = settings or BridgeSettings.from_env()
    engine = engine or get_settings()
    history = make_bar_history(engine)
    settings.check_market_time(history.market_time)
    tickers = settings.tickers or tuple(history.tickers())
    model = build_model(settings, engine)
    handler = StateHandler(get_feature_set(settings.feature_set), model, history=history,
                           prediction_log=prediction_log(make_model_registry(engine, settings.model_name)),
                           vol_policy=settings.vol_policy, log_batch=settings.log_batch,
                           clock=BarClock(history.market_time))
    if not settings.tokens:
        log.warning("QE_BRIDGE_TOKENS is empty: every subscriber will be refused")
    return BridgeService(settings, handler, tickers)


async def serve_until_signalled(service: BridgeService) -> None:
    """Run ``service`` until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await service.run(stop)


def main(argv: list[str] | None = None) -> int:
    """``python -m quant_engine.bridge``: run the bridge configured from the environment."""
    parser = argparse.ArgumentParser(prog="python -m quant_engine.bridge", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    return _run(argparse.Namespace())


def _run(args: argparse.Namespace) -> int:
    configure_json_logging()
    try:
        service = build_service()
    except (ValueError, RuntimeError) as exc:  # settings errors, no tickers
        log.error("bridge cannot start: %s", exc)
        return 2
    asyncio.run(serve_until_signalled(service))
    return 0


def add_bridge_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bridge run`` to the ``quant-engine`` command line."""
    group = subparsers.add_parser("bridge", help="the live signal bridge (feed -> features -> model -> subscribers)")
    commands = group.add_subparsers(dest="bridge_command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run", help="run the bridge service until SIGTERM",
        description="Run the bridge configured from QE_FEED_URL, QE_BRIDGE_* and QE_SAGEMAKER_ENDPOINT "
                    "(see quant_engine.bridge.settings); logs JSON lines to stderr.")
    run.set_defaults(handler=_run)
