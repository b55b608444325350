"""A yfinance-compatible feed client that survives drops, stalls and garbage.

:class:`FeedClient` connects to Yahoo's streamer (``wss://streamer.finance.yahoo.com/?version=2``)
or the replay server, subscribes, and yields validated :class:`~quant_engine.bridge.ticks.Tick`
objects for as long as it lives. Unlike yfinance's ``AsyncWebSocket`` it never gives up:

* every lost connection is retried with exponential backoff and full jitter (:class:`Backoff`),
  and the subscription is sent again on each new connection. The backoff is reset only once a
  connection has delivered a valid tick or stayed up for ``stable_after_s``, so a server that
  accepts and drops at once is retried ever more slowly instead of in a tight loop;
* a feed that stays silent for ``stale_after_s`` while the client waits on it is treated as
  dead: the connection is aborted and re-made (``stats.stale_reconnects``);
* every frame that is not a usable tick is dropped and counted by reason in ``stats.dropped``:
  the wire's :data:`~quant_engine.bridge.wire.FRAME_ERROR_REASONS`, ``unknown_ticker`` (not
  subscribed), ``future_time`` (stamped later than the reference clock allows: checked before the
  tick touches any per-ticker state, so one frame from 2099 cannot silence its ticker or move the
  market clock), ``time_backwards`` (older than the ticker's last tick) and ``duplicate`` (the
  ticker's last tick again).

Ticks lost while disconnected stay lost, as on any live feed; the bridge backfills whole bars
from the offline store (:class:`~quant_engine.features.bar_history.BarHistory`). The per-ticker order
check outlives reconnects, so nothing already handed on comes back after one; a feed restarted
*earlier* in time is dropped as ``time_backwards`` until it passes the last tick handed on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from quant_engine.bridge.clock import DEFAULT_MAX_SKEW_S
from quant_engine.bridge.ticks import Tick
from quant_engine.bridge.wire import FRAME_ERROR_REASONS, FrameError, decode_frame, subscribe_message

__all__ = ["DROP_REASONS", "YAHOO_STREAMER_URL", "Backoff", "FeedClient", "FeedEvent", "FeedStats"]

log = logging.getLogger(__name__)

YAHOO_STREAMER_URL = "wss://streamer.finance.yahoo.com/?version=2"
#: Every reason a frame is dropped for, the keys of ``FeedStats.dropped``.
DROP_REASONS: tuple[str, ...] = (*FRAME_ERROR_REASONS, "unknown_ticker", "future_time", "time_backwards", "duplicate")


class Backoff:
    """Exponential backoff with full jitter: the n-th delay is uniform in ``[0, min(max_s, initial_s * factor**n)]``.

    Full jitter spreads the reconnects of many clients after an outage instead of synchronising
    them. Seeded, so a test sees the same delays every run.

    Parameters
    ----------
    initial_s : float
        Ceiling of the first delay, seconds.
    max_s : float
        Largest ceiling, seconds.
    factor : float
        Growth of the ceiling per attempt (> 1).
    seed : int, optional
        Seed of the jitter.

    Examples
    --------
    >>> backoff = Backoff(initial_s=1.0, max_s=4.0, seed=0)
    >>> ceilings = []
    >>> for _ in range(4):
    ...     ceilings.append(backoff.ceiling_s)
    ...     assert 0 <= backoff.next_delay() <= ceilings[-1]
    >>> ceilings
    [1.0, 2.0, 4.0, 4.0]
    """

    def __init__(
        self, initial_s: float = 0.5, max_s: float = 30.0, factor: float = 2.0, seed: int | None = None
    ) -> None:
        if not (isinstance(initial_s, (int, float)) and initial_s > 0):
            raise ValueError(f"initial_s={initial_s!r} must be a number of seconds > 0")
        if not (isinstance(max_s, (int, float)) and max_s >= initial_s):
            raise ValueError(f"max_s={max_s!r} must be a number of seconds >= initial_s={initial_s}")
        if not (isinstance(factor, (int, float)) and factor > 1):
            raise ValueError(f"factor={factor!r} must be a number > 1")
        self.initial_s = float(initial_s)
        self.max_s = float(max_s)
        self.factor = float(factor)
        self.attempt = 0
        self._rng = random.Random(seed)

    @property
    def ceiling_s(self) -> float:
        """Upper bound of the next delay."""
        return min(self.max_s, self.initial_s * self.factor ** min(self.attempt, 64))

    def next_delay(self) -> float:
        """The next delay, seconds; each call raises the ceiling of the one after."""
        delay = self._rng.uniform(0.0, self.ceiling_s)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Back to the first ceiling, after a connection proved healthy."""
        self.attempt = 0


@dataclass
class FeedStats:
    """Counters of a :class:`FeedClient`, updated in place (read them at any time)."""

    connects: int = 0  # handshakes that succeeded
    reconnects: int = 0  # connects after the first
    failed_connects: int = 0  # attempts that never reached an open connection
    disconnects: int = 0  # open connections lost, for any reason
    stale_reconnects: int = 0  # connections aborted because the feed went silent
    frames: int = 0  # frames received
    ticks: int = 0  # valid ticks handed on
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    connected: bool = False
    last_tick_wall_time: float | None = None  # the ``clock`` reading when the last valid tick arrived
    last_error: str = ""


@dataclass(frozen=True)
class FeedEvent:
    """Something that happened to the connection, for ``on_event`` listeners.

    ``kind`` is ``connected``, ``disconnected``, ``stale`` or ``backoff`` (then ``delay_s`` says
    how long the client waits before the next attempt, and ``attempt`` counts the attempts since
    the backoff was last reset, from 0).
    """

    kind: str
    wall_time: float
    detail: str = ""
    delay_s: float = 0.0
    attempt: int = 0


class FeedClient:
    """Validated ticks from a yfinance-compatible WebSocket feed, reconnecting for ever.

    Parameters
    ----------
    url : str
        ``ws://`` or ``wss://`` URL, e.g. :data:`YAHOO_STREAMER_URL` or a replay server's.
    tickers : sequence of str
        What to subscribe to; ticks of other tickers are dropped as ``unknown_ticker``.
    stale_after_s : float
        Silence, while waiting for data, after which the connection is considered dead.
    backoff_initial_s, backoff_max_s, backoff_factor : float
        The reconnect :class:`Backoff`.
    stable_after_s : float
        A connection that stayed up this long resets the backoff even without a valid tick.
    seed : int, optional
        Seed of the backoff jitter.
    clock : callable
        Wall clock for ``stats.last_tick_wall_time`` and events (default ``time.time``).
    latest_time_ms : callable, optional
        ``() -> ms``: the newest tick time accepted now (the service passes its
        :meth:`~quant_engine.bridge.clock.ReferenceClock.latest_ms`); default ``clock()`` plus
        :data:`~quant_engine.bridge.clock.DEFAULT_MAX_SKEW_S`.
    open_timeout : float
        Longest wait for a connection's handshake, seconds.
    heartbeat_s : float, optional
        Resend the subscription this often on a live connection (Yahoo's streamer expects it, as
        yfinance does every 15 s); None to never.
    max_size, max_queue : int
        Largest frame accepted, and frames buffered before the client stops reading the socket.
    on_event : callable, optional
        Called with each :class:`FeedEvent`; it must not block.

    Examples
    --------
    ``async for tick in FeedClient(url, ["AAPL"]).ticks(): ...`` runs until ``close()``.
    """

    def __init__(
        self,
        url: str,
        tickers: Sequence[str],
        *,
        stale_after_s: float = 30.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        backoff_factor: float = 2.0,
        stable_after_s: float = 10.0,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        latest_time_ms: Callable[[], float] | None = None,
        open_timeout: float = 10.0,
        heartbeat_s: float | None = 15.0,
        max_size: int = 2**16,
        max_queue: int = 1024,
        on_event: Callable[[FeedEvent], None] | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            raise ValueError(f"url={url!r} must be a ws:// or wss:// URL")
        if isinstance(tickers, str):
            raise TypeError(f"tickers={tickers!r} must be a sequence of tickers, not one string")
        names = tuple(dict.fromkeys(tickers))
        if not names or not all(isinstance(t, str) and t for t in names):
            raise ValueError(f"tickers={tickers!r} must be a non-empty sequence of non-empty strings")
        for name, value in (
            ("stale_after_s", stale_after_s),
            ("stable_after_s", stable_after_s),
            ("open_timeout", open_timeout),
        ):
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name}={value!r} must be a number of seconds > 0")
        if heartbeat_s is not None and not (isinstance(heartbeat_s, (int, float)) and heartbeat_s > 0):
            raise ValueError(f"heartbeat_s={heartbeat_s!r} must be a number of seconds > 0, or None")
        self.url = url
        self.tickers = names
        self.stale_after_s = float(stale_after_s)
        self.stable_after_s = float(stable_after_s)
        self.open_timeout = float(open_timeout)
        self.heartbeat_s = heartbeat_s
        self.max_size = max_size
        self.max_queue = max_queue
        self.backoff = Backoff(backoff_initial_s, backoff_max_s, backoff_factor, seed)
        self.stats = FeedStats()
        self._clock = clock
        self._latest_time_ms = latest_time_ms or (lambda: (clock() + DEFAULT_MAX_SKEW_S) * 1000.0)
        self._on_event = on_event
        self._subscribed = frozenset(names)
        self._last: dict[str, Tick] = {}
        self._ws: ClientConnection | None = None
        self._closed = asyncio.Event()
        self._iterating = False
        self._stale = False
        self._waiting_since: float | None = None

    def __repr__(self) -> str:
        return f"FeedClient({self.url!r}, {len(self.tickers)} tickers, connected={self.stats.connected})"

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def close(self) -> None:
        """End :meth:`ticks` (it returns after the current connection closes) and stop reconnecting."""
        self._closed.set()
        ws = self._ws
        if ws is not None:
            await ws.close()

    def __aiter__(self) -> AsyncIterator[Tick]:
        return self.ticks()

    async def ticks(self) -> AsyncIterator[Tick]:
        """Every valid tick, across reconnects, until :meth:`close`. One consumer at a time.

        A consumer that may stop early should close the iterator, so the connection closes at
        once: ``async with contextlib.aclosing(client.ticks()) as ticks: async for tick in ticks``.
        """
        if self._iterating:
            raise RuntimeError("FeedClient.ticks() is already being consumed; use one consumer per client")
        self._iterating = True
        loop = asyncio.get_running_loop()
        stats = self.stats
        try:
            first = True
            while not self.closed:
                if not first and await self._wait_before_retry():
                    return
                first = False
                ws = await self._connect()
                if ws is None:
                    continue
                opened = loop.time()
                watchdog = self._opened(ws)
                delivered = False
                try:
                    await ws.send(subscribe_message(self.tickers))
                    subscribed_at = opened
                    while True:
                        self._waiting_since = loop.time()
                        frame = await ws.recv()
                        now = loop.time()
                        self._waiting_since = None
                        tick = self._accept(frame)
                        if self.heartbeat_s is not None and now - subscribed_at >= self.heartbeat_s:
                            await ws.send(subscribe_message(self.tickers))
                            subscribed_at = now
                        if tick is not None:
                            if not delivered:
                                delivered = True
                                self.backoff.reset()
                            yield tick
                except ConnectionClosed as exc:
                    stats.last_error = "stale feed" if self._stale else f"connection closed: {exc}"
                finally:
                    await self._lost(ws, watchdog, stable=loop.time() - opened >= self.stable_after_s)
        finally:
            self._iterating = False

    async def _wait_before_retry(self) -> bool:
        """Sleep the backoff delay; True when :meth:`close` was called meanwhile."""
        attempt = self.backoff.attempt
        delay = self.backoff.next_delay()
        self._emit("backoff", delay_s=delay, attempt=attempt)
        try:
            await asyncio.wait_for(self._closed.wait(), timeout=delay)
        except TimeoutError:
            return False
        return True

    async def _connect(self) -> ClientConnection | None:
        try:
            ws = await connect(
                self.url,
                open_timeout=self.open_timeout,
                max_size=self.max_size,
                max_queue=self.max_queue,
                ping_interval=20,
                ping_timeout=20,
                close_timeout=1,
            )
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
            self.stats.failed_connects += 1
            self.stats.last_error = f"connect: {type(exc).__name__}: {exc}"
            log.info("feed %s: cannot connect (%s)", self.url, self.stats.last_error)
            return None
        except InvalidURI as exc:
            raise ValueError(f"url={self.url!r} is not a WebSocket URL: {exc}") from exc
        if self.closed:
            await ws.close()
            return None
        return ws

    def _opened(self, ws: ClientConnection) -> asyncio.Task[None]:
        """Count and report a new connection; start and return its stale-feed watchdog."""
        self._ws, self._stale, self._waiting_since = ws, False, None
        self.stats.connects += 1
        if self.stats.connects > 1:
            self.stats.reconnects += 1
        self.stats.connected = True
        self._emit("connected", detail=self.url)
        return asyncio.create_task(self._watch(ws), name="feed-stale-watchdog")

    async def _lost(self, ws: ClientConnection, watchdog: asyncio.Task[None], *, stable: bool) -> None:
        """Count and report the end of a connection, and close it."""
        watchdog.cancel()
        self._ws = None
        self.stats.connected = False
        self.stats.disconnects += 1
        if stable:
            self.backoff.reset()
        if not self.closed:
            log.info("feed %s: disconnected (%s)", self.url, self.stats.last_error)
        self._emit("disconnected", detail=self.stats.last_error)
        if self._stale:
            ws.transport.abort()  # a silent peer would not answer a closing handshake either
        else:
            await ws.close()

    async def _watch(self, ws: ClientConnection) -> None:
        """Abort ``ws`` once the client has waited ``stale_after_s`` for a frame that never came."""
        loop = asyncio.get_running_loop()
        period = self.stale_after_s / 4
        while True:
            await asyncio.sleep(period)
            since = self._waiting_since
            if since is not None and loop.time() - since >= self.stale_after_s:
                self._stale = True
                self.stats.stale_reconnects += 1
                log.warning("feed %s: no data for %.1fs; reconnecting", self.url, loop.time() - since)
                self._emit("stale", detail=f"no data for {loop.time() - since:.1f}s")
                ws.transport.abort()
                return

    def _accept(self, frame: str | bytes) -> Tick | None:
        """The frame's tick if it is valid and new for its ticker, else None (counted by reason)."""
        stats = self.stats
        stats.frames += 1
        try:
            tick = decode_frame(frame)
        except FrameError as exc:
            stats.dropped[exc.reason] += 1
            return None
        ticker = tick.ticker
        if ticker not in self._subscribed:
            stats.dropped["unknown_ticker"] += 1
            return None
        if tick.time_ms > self._latest_time_ms():
            stats.dropped["future_time"] += 1
            return None
        last = self._last.get(ticker)
        if last is not None and tick.time_ms <= last.time_ms:
            if tick.time_ms < last.time_ms:
                stats.dropped["time_backwards"] += 1
                return None
            if tick == last:
                stats.dropped["duplicate"] += 1
                return None
        self._last[ticker] = tick
        stats.ticks += 1
        stats.last_tick_wall_time = self._clock()
        return tick

    def _emit(self, kind: str, *, detail: str = "", delay_s: float = 0.0, attempt: int = 0) -> None:
        if self._on_event is not None:
            self._on_event(FeedEvent(kind, self._clock(), detail, delay_s, attempt))
