"""The bridge service: feed client -> bounded buffer -> state handler -> signal publisher, in one asyncio loop.

Three tasks share the loop. *Ingest* reads ticks from the :class:`~quant_engine.bridge.feed_client.FeedClient`
(which reconnects by itself, and drops ticks from the future against the
:class:`~quant_engine.bridge.clock.ReferenceClock`) into the :class:`~quant_engine.bridge.buffer.TickBuffer`
and never waits on processing. *Process* drains whatever the buffer holds and hands it to the
:class:`~quant_engine.bridge.state.StateHandler` in one batch (so bars that close together are
predicted together): features in process, then the prediction (the local champion in process, or
a SageMaker endpoint through :class:`~quant_engine.bridge.remote.EndpointPredictor`, awaited while
ticks keep arriving), then the signals, which are published. *Housekeeping* closes bars the
reference clock passed more than ``QE_BRIDGE_CLOSE_GRACE_S`` ago when their closing tick never came
(the whole feed went quiet), and writes predictions to the prediction log at least every
``log_flush_s`` seconds (in a thread), so the drift monitor sees them on quiet days too.

Beside them, the reference clock polls a replay feed's ``/health``, and a new champion is loaded,
compiled and checked in a background thread every ``QE_BRIDGE_RELOAD_S`` and swapped in between
batches. Nothing that fails on the way (a file that cannot be opened, an endpoint that hangs, a
batch that raises) ends the service: it is retried, counted, and said in ``GET /health``
(``status: degraded`` with ``problems``) until it works again. At start the file-descriptor
limit is raised for ``QE_BRIDGE_MAX_CONNECTIONS`` (or the cap lowered to fit), and errors that reach
the event loop are counted and logged at a bounded rate.

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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from quant_engine.backends import make_aws_clients, make_bar_history, make_model_registry
from quant_engine.bridge.bars import ORIGINS, Bar, BarClock
from quant_engine.bridge.buffer import TickBuffer
from quant_engine.bridge.clock import ReferenceClock, health_url
from quant_engine.bridge.feed_client import FeedClient
from quant_engine.bridge.inference import LocalChampionModel, SageMakerEndpointModel, SignalModel
from quant_engine.bridge.publisher import Metric, SignalPublisher
from quant_engine.bridge.remote import BREAKER_STATES, CircuitBreaker, EndpointPredictor, endpoint_client_config
from quant_engine.bridge.resources import LoopErrors, fit_file_limit
from quant_engine.bridge.settings import BridgeSettings
from quant_engine.bridge.state import SIGNAL_STATUSES, Signal, StateHandler
from quant_engine.bridge.ticks import Tick
from quant_engine.config import Settings, get_settings
from quant_engine.online.layer import OnlineLayer

__all__ = ["BridgeService", "JsonLinesFormatter", "add_bridge_commands", "build_model", "build_predictor", "main"]

log = logging.getLogger(__name__)

#: ``(model version, tickers, first ts, market now) -> labels`` (``ticker, ts, t1, label``) from stored bars.
OnlineLabels = Callable[[str, list[str], pd.Timestamp, pd.Timestamp], pd.DataFrame]

#: Seconds over which ``tick_rate`` is averaged.
RATE_WINDOW_S = 10
#: How often housekeeping looks at the reference clock (and whether the prediction log is due).
HOUSEKEEPING_S = 0.25
#: A failure (event-loop error, failed batch) shows in ``/health`` this long after it last happened.
PROBLEM_WINDOW_S = 60.0


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
    """The configured model: the registry's champion, or the SageMaker endpoint fed the champion's features.

    The endpoint's botocore client gives up within ``QE_BRIDGE_ENDPOINT_TIMEOUT_S`` and never retries
    by itself (:func:`~quant_engine.bridge.remote.endpoint_client_config`).
    """
    registry = make_model_registry(engine, settings.model_name)
    if settings.model_source == "local":
        return LocalChampionModel(registry, check_every_s=settings.reload_s)
    champion = LocalChampionModel(registry)  # what the endpoint was deployed from: its columns and vol range
    if champion.version is None:
        raise ValueError(
            f"QE_BRIDGE_MODEL=sagemaker takes the endpoint's input columns from model "
            f"{registry.name!r}'s champion, and it has none yet; promote one first"
        )
    assert settings.sagemaker_endpoint, "BridgeSettings refuses QE_BRIDGE_MODEL=sagemaker without an endpoint"
    client = make_aws_clients(engine).client(
        "sagemaker-runtime", config=endpoint_client_config(settings.endpoint_timeout_s, settings.endpoint_workers)
    )
    return SageMakerEndpointModel(client, settings.sagemaker_endpoint, champion.features, champion.volatility_range)


def build_predictor(settings: BridgeSettings, endpoint: SageMakerEndpointModel, engine: Settings) -> EndpointPredictor:
    """The endpoint behind its timeout, retries and circuit breaker, with the local champion as fallback if asked."""
    fallback = None
    if settings.fallback == "local":
        fallback = LocalChampionModel(make_model_registry(engine, settings.model_name), check_every_s=settings.reload_s)
    return EndpointPredictor(
        endpoint,
        CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s),
        fallback=fallback,
        workers=settings.endpoint_workers,
        timeout_s=settings.endpoint_timeout_s,
        retries=settings.endpoint_retries,
    )


class BridgeService:
    """One running bridge.

    Parameters
    ----------
    settings : BridgeSettings
    handler : StateHandler
        Holds the model, the feature state and the prediction log.
    tickers : sequence of str
        What the feed client subscribes to, and all a subscriber may subscribe to.
    predictor : EndpointPredictor, optional
        Predicts batches off the loop when the handler's model is an endpoint.
    feed_options : dict, optional
        Extra :class:`FeedClient` arguments (backoff, seed, heartbeat) for tests and drills.
    """

    def __init__(
        self,
        settings: BridgeSettings,
        handler: StateHandler,
        tickers: tuple[str, ...],
        *,
        predictor: EndpointPredictor | None = None,
        feed_options: dict[str, Any] | None = None,
        online_labels: OnlineLabels | None = None,
        online_state: Path | None = None,
    ) -> None:
        if not tickers:
            raise ValueError(
                "the bridge needs at least one ticker (QE_BRIDGE_TICKERS, or stored bars to take them from)"
            )
        self.settings = settings
        self.handler = handler
        self.tickers = tuple(tickers)
        self.predictor = predictor
        self.online_labels = online_labels
        self.online_state = online_state
        clock = handler.bars.clock
        self.buffer = TickBuffer(settings.buffer_size, settings.check_market_time(clock.market_time), clock=clock)
        self.reference = ReferenceClock(
            settings.clock,
            clock.calendar,
            max_skew_s=settings.max_skew_s,
            health_url=health_url(settings.feed_url),
            poll_s=settings.clock_poll_s,
        )
        self.feed = FeedClient(
            settings.feed_url,
            self.tickers,
            stale_after_s=settings.stale_after_s,
            **{"latest_time_ms": self.reference.latest_ms, **(feed_options or {})},
        )
        self.publisher = SignalPublisher(
            settings.tokens,
            host=settings.host,
            port=settings.port,
            max_size=settings.max_size,
            client_queue=settings.client_queue,
            served=self.tickers,
            max_connections=settings.max_connections,
            max_connections_per_address=settings.max_connections_per_address,
            handshake_timeout_s=settings.handshake_timeout_s,
            max_subscriptions=settings.max_subscriptions,
            max_depth=settings.max_depth,
            control_rate=settings.control_rate,
            ssl=settings.ssl_context(),
            health=self.health,
            metrics=self.metrics,
        )
        #: The champion a background thread reloads: the model itself, or the endpoint's fallback.
        self.champion = (
            handler.model
            if isinstance(handler.model, LocalChampionModel)
            else (predictor.fallback if predictor is not None else None)
        )
        self.loop_errors = LoopErrors()
        self.started_at = time.time()
        self._received: dict[str, float] = {}
        self._ticks = _RateMeter()
        self._state = asyncio.Lock()  # a batch, a clock close and a champion swap never interleave
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bridge-champion")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bridge-log")
        self._flushing: asyncio.Task[None] | None = None
        self._settling: asyncio.Task[None] | None = None
        self.batches = 0
        self.batch_errors = 0
        self.closed_by_clock = 0
        self._last_failure: tuple[float, str] | None = None
        self._stopping = False

    @property
    def port(self) -> int:
        return self.publisher.port

    # --- running ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, started: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set; then drain the buffer, flush the prediction log and close subscribers."""
        loop = asyncio.get_running_loop()
        previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self.loop_errors)
        self.publisher.max_connections = fit_file_limit(self.settings.max_connections)
        await self.publisher.start()
        log.info(
            "bridge listening",
            extra={
                "port": self.port,
                "feed": self.settings.feed_url,
                "tickers": len(self.tickers),
                "model_version": self.handler.model.version,
                "max_connections": self.publisher.max_connections,
                "tls": self.publisher.ssl is not None,
                "clock": self.settings.clock,
            },
        )
        tasks = {
            asyncio.create_task(self._ingest(), name="bridge-ingest"),
            asyncio.create_task(self._process(), name="bridge-process"),
            asyncio.create_task(self._housekeeping(), name="bridge-housekeeping"),
        }
        helpers = {
            asyncio.create_task(self.reference.run(), name="bridge-reference-clock"),
            asyncio.create_task(self._watch_champion(), name="bridge-champion"),
        }
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
            for task in (*tasks, *helpers, stopped):
                task.cancel()
            await asyncio.gather(*tasks, *helpers, stopped, return_exceptions=True)
            await self._survive(self._handle(self.buffer.drain()))
            for pending in (self._flushing, self._settling):
                if pending is not None:
                    await asyncio.gather(pending, return_exceptions=True)
            self.handler.flush()
            if self.handler.online is not None and self.online_state is not None:
                try:
                    self.handler.online.save(self.online_state)
                except OSError as exc:
                    log.error("online state not saved at stop: %s", exc)
            await self.publisher.stop()
            self._loader.shutdown(wait=False, cancel_futures=True)
            self._writer.shutdown(wait=True)
            if self.predictor is not None:
                self.predictor.close()
            loop.set_exception_handler(previous_handler)
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
            await self._survive(self._handle(self.buffer.drain()))
            await asyncio.sleep(0)  # let ingest and subscribers run between batches

    async def _handle(self, ticks: list[Tick]) -> list[Signal]:
        if not ticks:
            return []
        self.batches += 1
        received = dict(self._received)  # as the batch began: ingest goes on while it awaits an endpoint
        async with self._state:
            return await self._publish(self.handler.take(ticks), received)

    async def _publish(self, bars: Sequence[Bar], received: dict[str, float] | None = None) -> list[Signal]:
        """Prepare, predict (awaiting an endpoint, if that is the model) and publish the signals of closed bars."""
        if not bars:
            return []
        batch = self.handler.prepare(bars)
        prediction = await self.predictor.predict(batch) if self.predictor is not None else self.handler.predict(batch)
        signals = self.handler.finish(batch, prediction, received)
        for s in signals:
            self.publisher.publish(s.to_json())
        if self.handler.pending_log >= self.handler.log_batch:
            self._flush_soon()
        return signals

    async def _survive(self, work: Any) -> None:
        """Await ``work``; an error it raises is counted, logged and shown in ``/health``, and the service goes on."""
        try:
            await work
        except Exception as exc:  # noqa: BLE001 - one failed batch must not end the processing of all others
            self.batch_errors += 1
            first = self._last_failure is None
            self._last_failure = (time.monotonic(), f"{type(exc).__name__}: {exc}")
            log.error("a batch failed and was skipped: %s", self._last_failure[1], exc_info=exc if first else None)

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        flush_at = loop.time() + self.settings.log_flush_s
        while True:
            await asyncio.sleep(min(HOUSEKEEPING_S, self.settings.log_flush_s))
            self.reference.observe(self.handler.bars.watermark_ms)
            await self._survive(self._close_passed_bars())
            if loop.time() >= flush_at:
                flush_at = loop.time() + self.settings.log_flush_s
                self._flush_soon()
                self._settle_soon()

    async def _close_passed_bars(self) -> None:
        """Close the bars whose close the reference clock passed ``close_grace_s`` ago, once every tick is in."""
        if len(self.buffer) or not self.handler.bars.open_bars:
            return
        until = self.reference.passed_ms(self.settings.close_grace_s)
        if until is None:
            return
        async with self._state:
            bars = self.handler.bars.close_due(until)
            if bars:
                self.closed_by_clock += len(bars)
                log.info(
                    "closed %d bars whose closing tick never came (the reference clock passed them %g s ago)",
                    len(bars),
                    self.settings.close_grace_s,
                )
                await self._publish(bars)

    def _flush_soon(self) -> None:
        """Write the waiting predictions in the log thread, unless a write is already under way."""
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush(), name="bridge-prediction-log")

    async def _flush(self) -> None:
        rows = self.handler.take_log_rows()
        if not rows:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self._writer, self.handler.write_log_rows, rows)
        except OSError as exc:
            self.handler.log_written(rows, exc)
        else:
            self.handler.log_written(rows, None)

    def _settle_soon(self) -> None:
        """Teach the online layer the labels the stored bars settle, unless that is already under way."""
        if self.handler.online is not None and (self._settling is None or self._settling.done()):
            self._settling = asyncio.create_task(self._settle(), name="bridge-online-labels")

    async def _settle(self) -> None:
        """Labels read from the stored bars in the log thread, learnt between batches, the state saved in the thread."""
        online, wanted = self.handler.online, self.handler.online_labels_wanted()
        if online is None or wanted is None or self.online_labels is None:
            return
        tickers, first, now = wanted
        version = online.version
        assert version is not None, "pending predictions (wanted) are kept by adapt(), which sets the version"
        loop = asyncio.get_running_loop()
        try:
            labels = await loop.run_in_executor(self._writer, self.online_labels, version, tickers, first, now)
        except OSError as exc:
            self.handler.problems["online"] = f"labels not read: {exc}"
            return
        async with self._state:
            if online.version != version:  # a new champion meanwhile: these labels are not its
                return
            updates = online.settle(labels, now)
            self.handler.counters["online_labels"] += len(updates)
            state = online.to_json()
        try:
            await loop.run_in_executor(self._writer, self._save_online, updates, state)
        except OSError as exc:
            self.handler.problems["online"] = f"state not saved: {exc}"
        else:
            self.handler.problems.pop("online", None)

    def _save_online(self, updates: Any, state: dict[str, Any] | None = None) -> None:
        online = self.handler.online
        if online is None:
            return
        online.write_updates(updates)
        if self.online_state is not None:
            online.save(self.online_state, state)

    async def _watch_champion(self) -> None:
        """Load a newly promoted champion in the background thread every ``reload_s``; swap it in between batches."""
        champion = self.champion
        if champion is None:
            return
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.reload_s)
            try:
                served = await loop.run_in_executor(self._loader, champion.check)
            except Exception as exc:  # noqa: BLE001 - an unreadable or broken champion: the old one serves on
                self.handler.counters["model_load_errors"] += 1
                if "model" not in self.handler.problems:
                    log.warning(
                        "new champion not loaded (%s: %s); tried again in %g s",
                        type(exc).__name__,
                        exc,
                        self.settings.reload_s,
                    )
                self.handler.problems["model"] = f"new champion not loaded: {type(exc).__name__}: {exc}"
                continue
            if self.handler.problems.pop("model", None) is not None:
                log.info("the champion is readable again")
            if served is not None:
                async with self._state:
                    champion.install(served)
                    self.handler.counters["model_reloads"] += 1

    # --- observability ------------------------------------------------------------------------

    def problems(self) -> dict[str, str]:
        """What does not work now, by part, and why: the reasons ``/health`` says ``degraded``."""
        out: dict[str, str] = {}
        stats = self.feed.stats
        if not stats.connected:
            out["feed"] = "disconnected" + (f": {stats.last_error}" if stats.last_error else "")
        out.update(self.handler.current_problems)
        if self.predictor is not None and self.predictor.problem is not None:
            out["endpoint"] = self.predictor.problem
        recent = self.loop_errors.recent(PROBLEM_WINDOW_S)
        if recent:
            out["event_loop"] = "errors in the last minute: " + ", ".join(
                f"{k} x{n}" for k, n in sorted(recent.items())
            )
        if self._last_failure is not None and time.monotonic() - self._last_failure[0] <= PROBLEM_WINDOW_S:
            out["processing"] = f"a batch failed: {self._last_failure[1]}"
        return out

    def health(self) -> dict[str, Any]:
        """``GET /health``: is the feed up, how far behind, how busy, what the model is, and what is wrong."""
        now = time.time()
        stats = self.feed.stats
        lag = None if stats.last_tick_wall_time is None else round(now - stats.last_tick_wall_time, 3)
        problems = self.problems()
        if self._stopping:
            status = "stopping"
        elif problems:
            status = "degraded"
        else:
            status = "ok" if self.handler.model.version is not None else "waiting_for_model"
        publisher = self.publisher
        health = {
            "status": status,
            "problems": problems,
            "feed_url": self.settings.feed_url,
            "feed_connected": stats.connected,
            "lag_seconds": lag,
            "tick_rate": self._ticks.rate(now),
            "tickers": len(self.tickers),
            "market_time": self.handler.bars.clock.market_time.describe(),
            "reference_clock": self.reference.describe(),
            "bars": {**self.handler.bars.counters, "closed_by_clock": self.closed_by_clock},
            "gaps": self._gaps(),
            "signals": {k: v for k, v in self.handler.counters.items() if k.startswith("signals_")},
            "model_version": self.handler.model.version,
            "uptime_seconds": round(now - self.started_at, 1),
            "limits": {
                "max_connections": publisher.max_connections,
                "max_connections_per_address": publisher.max_connections_per_address,
                "handshake_timeout_s": publisher.handshake_timeout_s,
                "max_subscriptions": publisher.max_subscriptions,
                "max_size": publisher.max_size,
                "max_depth": publisher.max_depth,
                "control_rate": publisher.control_rate,
                "tls": publisher.ssl is not None,
            },
            "counters": {
                "feed": {
                    "connects": stats.connects,
                    "reconnects": stats.reconnects,
                    "disconnects": stats.disconnects,
                    "stale_reconnects": stats.stale_reconnects,
                    "frames": stats.frames,
                    "ticks": stats.ticks,
                    "dropped": dict(stats.dropped),
                },
                "buffer": self.buffer.counters(),
                "handler": dict(self.handler.counters),
                "publisher": {
                    **publisher.counters,
                    "clients": publisher.clients,
                    "connections": publisher.open_connections,
                    "subscriptions": publisher.subscriptions,
                    "refused": dict(publisher.refused),
                    "bad_messages": dict(publisher.bad_messages),
                    "subscriptions_refused": dict(publisher.subscriptions_refused),
                },
                "batches": self.batches,
                "batch_errors": self.batch_errors,
                "loop_errors": dict(self.loop_errors.counts),
            },
        }
        if self.handler.online is not None:
            health["online"] = self.handler.online.status()
        if self.predictor is not None:
            health["endpoint"] = {
                "circuit": self.predictor.breaker.state,
                "calls": dict(self.predictor.calls),
                "fallbacks": self.predictor.fallbacks,
            }
        return health

    def _gaps(self) -> dict[str, Any]:
        """Bars missed and not in the store: per degraded ticker, the first few missing bar times."""
        unfilled = self.handler.bars.unfilled
        return {
            "unfilled_bars_total": self.handler.bars.counters["bars_unfilled"],
            "degraded_tickers": len(unfilled),
            "missing": {
                t: [BarClock.ts(ms).isoformat() for ms in sorted(closes)[:5]]
                for t, closes in sorted(unfilled.items())[:20]
            },
        }

    def metrics(self) -> list[Metric]:
        """The bridge's metrics beyond the publisher's own, for ``GET /metrics``."""
        stats, counters, bars = self.feed.stats, self.handler.counters, self.handler.bars.counters
        lag = math.nan if stats.last_tick_wall_time is None else time.time() - stats.last_tick_wall_time
        buffer = self.buffer.counters()
        history = self.handler.history
        metrics = [
            Metric.single(
                "qe_bridge_feed_connected", "gauge", "1 while the feed connection is open.", int(stats.connected)
            ),
            Metric.single("qe_bridge_feed_lag_seconds", "gauge", "Seconds since the last valid tick arrived.", lag),
            Metric.single(
                "qe_bridge_feed_reconnects_total", "counter", "Feed connections made after the first.", stats.reconnects
            ),
            Metric.single(
                "qe_bridge_feed_stale_reconnects_total",
                "counter",
                "Feed connections aborted for silence.",
                stats.stale_reconnects,
            ),
            Metric.single("qe_bridge_ticks_total", "counter", "Valid ticks received.", stats.ticks),
            Metric(
                "qe_bridge_frames_dropped_total",
                "counter",
                "Feed frames dropped, by reason.",
                [({"reason": r}, n) for r, n in stats.dropped.items()],
            ),
            Metric.single(
                "qe_bridge_tick_rate",
                "gauge",
                f"Ticks per second over the last {RATE_WINDOW_S} s.",
                self._ticks.rate(time.time()),
            ),
            Metric(
                "qe_bridge_reference_clock",
                "gauge",
                "1 for the clock ticks are judged by (wall, replay, or undecided while auto mode cannot tell).",
                [({"clock": self.reference.kind or "undecided"}, 1)],
            ),
            Metric(
                "qe_bridge_buffer_ticks_total",
                "counter",
                "Ticks through the ingest buffer, by outcome.",
                [({"outcome": k}, buffer[k]) for k in ("accepted", "coalesced", "dropped")],
            ),
            Metric.single("qe_bridge_buffer_depth", "gauge", "Ticks waiting in the ingest buffer.", buffer["depth"]),
            Metric.single(
                "qe_bridge_late_ticks_total", "counter", "Ticks of sessions already closed.", bars["late_ticks"]
            ),
            Metric(
                "qe_bridge_bars_total",
                "counter",
                "Closed bars, by where their values came from.",
                [({"origin": o}, bars[f"bars_{o}"]) for o in ORIGINS],
            ),
            Metric.single(
                "qe_bridge_bars_closed_by_clock_total",
                "counter",
                "Bars closed by the reference clock because their closing tick never came.",
                self.closed_by_clock,
            ),
            Metric.single(
                "qe_bridge_bars_unfilled_total",
                "counter",
                "Bars missed that the stored history could not fill (the ticker's signals degrade).",
                bars["bars_unfilled"],
            ),
            Metric.single(
                "qe_bridge_degraded_tickers",
                "gauge",
                "Tickers whose feature window lacks a missed bar.",
                len(self.handler.bars.unfilled),
            ),
            Metric.single(
                "qe_bridge_ticks_outside_session_total",
                "counter",
                "Ticks between sessions (no bar takes them).",
                bars["ticks_outside_session"],
            ),
            Metric(
                "qe_bridge_signals_total",
                "counter",
                "Signals, by volatility-check status.",
                [({"status": s}, counters[f"signals_{s}"]) for s in SIGNAL_STATUSES],
            ),
            Metric.single("qe_bridge_predictions_total", "counter", "Model predictions made.", counters["predictions"]),
            Metric.single(
                "qe_bridge_predictions_logged_total",
                "counter",
                "Predictions written to the prediction log.",
                counters["predictions_logged"],
            ),
            Metric.single(
                "qe_bridge_predictions_unlogged_total",
                "counter",
                "Predictions dropped after the prediction log could not be written for too long.",
                counters["predictions_unlogged"],
            ),
            Metric.single(
                "qe_bridge_bar_errors_total", "counter", "Bars refused by the feature state.", counters["bar_errors"]
            ),
            Metric.single(
                "qe_bridge_model_reloads_total", "counter", "Champion changes picked up.", counters["model_reloads"]
            ),
            Metric(
                "qe_bridge_io_errors_total",
                "counter",
                "Reads and writes that failed (a file that could not be opened), by what they were for.",
                [
                    ({"what": "history"}, 0 if history is None else history.failures),
                    ({"what": "prediction_log"}, counters["log_write_errors"]),
                    ({"what": "champion"}, counters["model_load_errors"]),
                ],
            ),
            Metric(
                "qe_bridge_problems",
                "gauge",
                "1 per part that does not work now (/health says why).",
                [({"part": part}, 1) for part in self.problems()],
            ),
            Metric.single(
                "qe_bridge_batch_errors_total", "counter", "Batches that failed and were skipped.", self.batch_errors
            ),
            Metric(
                "qe_bridge_loop_errors_total",
                "counter",
                "Errors that reached the event loop, by kind.",
                [({"kind": k}, n) for k, n in sorted(self.loop_errors.counts.items())],
            ),
        ]
        if self.predictor is not None:
            predictor = self.predictor
            metrics += [
                Metric(
                    "qe_bridge_endpoint_calls_total",
                    "counter",
                    "Endpoint calls, by outcome.",
                    [({"outcome": k}, n) for k, n in predictor.calls.items()],
                ),
                Metric.single(
                    "qe_bridge_endpoint_circuit_state",
                    "gauge",
                    "The endpoint's circuit breaker: 0 closed, 1 half-open, 2 open.",
                    BREAKER_STATES.index(predictor.breaker.state),
                ),
                Metric.single(
                    "qe_bridge_endpoint_circuit_opens_total",
                    "counter",
                    "Times the circuit opened.",
                    predictor.breaker.opened,
                ),
                Metric.single(
                    "qe_bridge_endpoint_fallbacks_total",
                    "counter",
                    "Batches the local champion answered for the endpoint.",
                    predictor.fallbacks,
                ),
            ]
        online = self.handler.online
        if online is not None:
            losses = online.rolling_logloss
            metrics += [
                Metric.single(
                    "qe_bridge_online_active",
                    "gauge",
                    "1 while signals use the adapted probability.",
                    int(online.active),
                ),
                Metric.single(
                    "qe_bridge_online_labels_total",
                    "counter",
                    "Settled labels the online layer learnt from.",
                    online.labels,
                ),
                Metric.single(
                    "qe_bridge_online_switched_off_total",
                    "counter",
                    "Times its rolling log-loss fell behind the batch model's and it switched itself off.",
                    online.switched_off,
                ),
                Metric(
                    "qe_bridge_online_rolling_logloss",
                    "gauge",
                    "Exponentially weighted log-loss on settled labels, by probability.",
                    [({"prob": k}, math.nan if v is None else v) for k, v in losses.items()],
                ),
            ]
        return metrics


# --- logging and entry points ----------------------------------------------------------------

_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
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


def build_online(
    settings: BridgeSettings, engine: Settings, history: Any, model: SignalModel
) -> tuple[OnlineLayer, OnlineLabels, Path] | None:
    """The online layer over the local champion (None when off or serving an endpoint), with its label source
    and state file; restored from its state, or warmed up from the champion's logged predictions."""
    if settings.online == "off" or not isinstance(model, LocalChampionModel):
        return None
    from quant_engine.monitoring.predictions import prediction_log
    from quant_engine.monitoring.run import label_config

    registry = model.registry
    folder = engine.home / "online" / registry.name
    layer = OnlineLayer(
        forgetting=settings.online_forgetting,
        max_shift=settings.online_max_shift,
        min_labels=settings.online_min_labels,
        updates_dir=folder / "updates",
    )
    state = folder / "state.json"

    def labels(version: str, tickers: list[str], first: pd.Timestamp, now: pd.Timestamp) -> pd.DataFrame:
        return label_config(registry.get(version)).labels(history.read(tickers, first, now))

    version = model.version
    if layer.load(state) and layer.version == version:
        log.info("online layer restored", extra={"model_version": version, "labels": layer.labels})
    elif version is not None:
        logged = prediction_log(registry).read()
        logged = logged[logged["model_version"] == version].drop_duplicates(["ticker", "ts"])
        if not logged.empty:
            settled = labels(version, sorted(logged["ticker"].unique()), logged["ts"].min(), logged["ts"].max())
            learnt = layer.warm_up(logged, settled, version)
            log.info(
                "online layer warmed up from the prediction log", extra={"model_version": version, "labels": learnt}
            )
    return layer, labels, state


def build_service(settings: BridgeSettings | None = None, engine: Settings | None = None) -> BridgeService:
    """A service wired from the environment: model, stored history, prediction log, tickers."""
    from quant_engine.features.registry import get_feature_set
    from quant_engine.monitoring.predictions import prediction_log

    settings = settings or BridgeSettings.from_env()
    engine = engine or get_settings()
    history = make_bar_history(engine)
    settings.check_market_time(history.market_time)
    tickers = settings.tickers or tuple(history.tickers())
    model = build_model(settings, engine)
    online = build_online(settings, engine, history, model)
    handler = StateHandler(
        get_feature_set(settings.feature_set),
        model,
        history=history,
        prediction_log=prediction_log(make_model_registry(engine, settings.model_name)),
        vol_policy=settings.vol_policy,
        log_batch=settings.log_batch,
        clock=BarClock(history.market_time),
        online=None if online is None else online[0],
    )
    if not settings.tokens:
        log.warning("QE_BRIDGE_TOKENS is empty: every subscriber will be refused")
    predictor = build_predictor(settings, model, engine) if isinstance(model, SageMakerEndpointModel) else None
    return BridgeService(
        settings,
        handler,
        tickers,
        predictor=predictor,
        online_labels=None if online is None else online[1],
        online_state=None if online is None else online[2],
    )


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
        "run",
        help="run the bridge service until SIGTERM",
        description="Run the bridge configured from QE_FEED_URL, QE_BRIDGE_* and QE_SAGEMAKER_ENDPOINT "
        "(see quant_engine.bridge.settings); logs JSON lines to stderr.",
    )
    run.set_defaults(handler=_run)
