"""``quant-engine feed serve``: replay daily bars as a live yfinance-style tick feed.

The server turns each daily bar into the ticks a live feed would have sent during its session
(:class:`ReplaySchedule`), plays them against a clock anchored to wall time (:class:`ReplayClock`),
and sends every connection the ticks of the tickers it subscribed to, in yfinance's wire format
(:mod:`quant_engine.bridge.wire`). It behaves like a live feed, not like a file:

* the clock is shared by every connection and reproducible from its anchor, so a server restarted
  with the same anchor (``--anchor-file``) resumes where a live feed would be *now*, and ticks sent
  while a client was away, or while the server was down, are gone;
* a client that reads too slowly loses ticks instead of growing the server's memory (counted as
  ``lagged`` in ``GET /health``);
* a seeded :class:`FaultPlan` drops connections (also right after accept), stalls them, and sends
  malformed frames of every kind the feed client must survive.

Sessions come from the bars' exchange calendar (:mod:`quant_engine.calendars`): a daily bar's
session runs from the calendar's open to its close (20:00 UTC on a summer NYSE day, 18:00 on a
winter half day), an intraday bar's interval from its start to its close. Per bar and ticker,
``ticks_per_bar`` regular-market ticks walk from the open to the close through the bar's high and
low, the last one at the bar's close, their running ``open_price``, ``day_high``, ``day_low`` and
``day_volume`` being the *session's* (as Yahoo sends them), so the last tick of a daily bar and
the ticks of an intraday bar give back the bar's exact values; one ``POST_MARKET`` tick at the
session's close repeats the final values: it tells a consumer that the session is complete. Each
ticker's ticks move strictly forward in time.
Prices are quoted with the decimals the bars need (``price_hint``, derived from them unless given).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import dataclasses
import http
import json
import logging
import math
import random
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from quant_engine.bridge.ticks import MarketHours, Tick
from quant_engine.bridge.wire import MAX_PRICE_HINT, FrameError, encode_tick, parse_control
from quant_engine.calendars import MarketTime
from quant_engine.data.schema import validate_bars
from quant_engine.storage.atomic import write_bytes_atomic

__all__ = [
    "DEFAULT_PORT",
    "DROP_REASON_OF_KIND",
    "MALFORMED_KINDS",
    "MIN_TICKS_PER_BAR",
    "TIMELINES",
    "FaultPlan",
    "FeedServer",
    "ReplayClock",
    "ReplaySchedule",
    "malformed_frame",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765
#: Open, high, low and close each need a tick of their own.
MIN_TICKS_PER_BAR = 4
#: ``sessions``: the replay clock runs through trading sessions only, nights and weekends take no
#: time; ``calendar``: it runs through every hour, as a live feed does.
TIMELINES: tuple[str, ...] = ("sessions", "calendar")
#: Malformed frames the fault plan can inject; the first seven are the wire's ``FrameError``
#: reasons, the rest decode but break the feed client's checks (``future_time``: a tick stamped
#: in 2099, which the wire's 1971..2100 range lets through and only a reference clock catches).
MALFORMED_KINDS: tuple[str, ...] = (
    "bad_json",
    "bad_base64",
    "bad_protobuf",
    "missing_field",
    "bad_price",
    "bad_volume",
    "bad_time",
    "nan_price",
    "negative_price",
    "unknown_ticker",
    "future_time",
    "time_backwards",
    "duplicate",
)
#: The reason a feed client drops each kind of malformed frame for.
DROP_REASON_OF_KIND: dict[str, str] = {
    **{kind: kind for kind in MALFORMED_KINDS},
    "nan_price": "bad_price",
    "negative_price": "bad_price",
}
#: Kinds that only make sense after the connection received a tick of the same ticker.
_KINDS_AFTER_A_TICK = ("time_backwards", "duplicate")
#: Ticker of the injected ``unknown_ticker`` frames; no source has it.
UNKNOWN_TICKER = "ZZZZ-UNKNOWN"
#: Time of the injected ``future_time`` frames: 2099-06-01 UTC, inside the wire's range.
FUTURE_TIME_MS = 4_083_955_200_000
#: Ticks sent in a row before the replay lets other tasks run (when it is behind the clock).
_YIELD_EVERY = 256


# --------------------------------------------------------------------------------------------
# The tick schedule
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Session:
    """One replayed session: its trading hours and its bars, each ``(close, start, tickers, values)``."""

    open_ms: int
    close_ms: int
    bars: tuple[tuple[int, int, tuple[str, ...], np.ndarray], ...]  # values: (tickers, 5) OHLCV

    @property
    def length_ms(self) -> int:
        return self.close_ms - self.open_ms


def price_decimals(prices: np.ndarray) -> int:
    """The fewest decimals every price is written with (0 to :data:`MAX_PRICE_HINT`), for ``price_hint``.

    Examples
    --------
    >>> price_decimals(np.array([10.0, 10.5, 10.25])), price_decimals(np.array([3.1416]))
    (2, 4)
    """
    for decimals in range(MAX_PRICE_HINT + 1):
        if (np.round(prices, decimals) == prices).all():
            return decimals
    row = int(np.flatnonzero(np.round(prices, MAX_PRICE_HINT) != prices)[0])
    raise ValueError(
        f"price {prices.ravel()[row]!r} has more than {MAX_PRICE_HINT} decimals; the float32 wire cannot carry it"
    )


class ReplaySchedule:
    """The ticks a live feed would have sent for a set of bars, in send order.

    Parameters
    ----------
    bars : DataFrame
        Validated bars (``ticker, ts, open, high, low, close, volume``) stamped by ``market_time``.
    market_time : MarketTime, optional
        The bars' calendar and bar size (default: NYSE daily).
    ticks_per_bar : int
        Regular-market ticks per bar and ticker (>= 4); one post-market tick follows each session.
    seed : int
        Seed of the intraday paths. A bar's ticks depend only on the seed, the ticker and the
        bar, never on the range replayed, so a restart replays the same ticks.
    price_hint : int, optional
        Decimals the prices are quoted in; every bar price must have at most that many. Default:
        the fewest the bars need (:func:`price_decimals`).
    timeline : {"sessions", "calendar"}
        How the replay position advances, see :data:`TIMELINES`.

    Examples
    --------
    >>> from quant_engine.data.synthetic import SyntheticMarket
    >>> bars = SyntheticMarket(n_tickers=2, seed=1).fetch(None, "2024-03-04", "2024-03-05")
    >>> schedule = ReplaySchedule(bars, ticks_per_bar=4)
    >>> ticks = [tick for _, tick in schedule.ticks()]
    >>> len(ticks), ticks[-1].market_hours.name, ticks[-1].price == float(bars["close"].iloc[-1])
    (20, 'POST_MARKET', True)
    """

    def __init__(
        self,
        bars: pd.DataFrame,
        *,
        market_time: MarketTime | None = None,
        ticks_per_bar: int = 8,
        seed: int = 0,
        price_hint: int | None = None,
        timeline: str = "sessions",
    ) -> None:
        if (
            isinstance(ticks_per_bar, bool)
            or not isinstance(ticks_per_bar, int)
            or not (MIN_TICKS_PER_BAR <= ticks_per_bar <= 60_000)
        ):
            raise ValueError(
                f"ticks_per_bar={ticks_per_bar!r} must be a whole number from {MIN_TICKS_PER_BAR} "
                "(open, high, low, close) to 60000"
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed={seed!r} must be a whole number >= 0")
        if price_hint is not None and (
            isinstance(price_hint, bool) or not isinstance(price_hint, int) or not 0 <= price_hint <= MAX_PRICE_HINT
        ):
            raise ValueError(f"price_hint={price_hint!r} must be a whole number from 0 to {MAX_PRICE_HINT}")
        if timeline not in TIMELINES:
            raise ValueError(f"timeline={timeline!r} must be one of {', '.join(TIMELINES)}")
        bars, _ = validate_bars(bars)
        if bars.empty:
            raise ValueError("no bars to replay; check the tickers and the date range")
        self.market_time = market_time or MarketTime()
        self.ticks_per_bar = ticks_per_bar
        self.seed = seed
        prices = bars[["open", "high", "low", "close"]].to_numpy()
        self.price_hint = price_decimals(prices) if price_hint is None else price_hint
        self.timeline = timeline
        self._check_quoted(bars)
        self.tickers: tuple[str, ...] = tuple(sorted(bars["ticker"].astype(str).unique()))
        self._sessions = self._group_sessions(bars)
        self._close_ms = [session.close_ms for session in self._sessions]
        lengths = [session.length_ms for session in self._sessions]
        self._offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64).tolist()

    def _check_quoted(self, bars: pd.DataFrame) -> None:
        prices = bars[["open", "high", "low", "close"]].to_numpy()
        off_grid = np.round(prices, self.price_hint) != prices
        if off_grid.any():
            row = int(np.flatnonzero(off_grid.any(axis=1))[0])
            raise ValueError(
                f"{bars['ticker'].iat[row]}@{bars['ts'].iat[row]} has prices with more than "
                f"{self.price_hint} decimals; raise price_hint so they survive the float32 wire"
            )
        volume = bars["volume"].to_numpy()
        if (volume != np.round(volume)).any():
            row = int(np.flatnonzero(volume != np.round(volume))[0])
            raise ValueError(
                f"{bars['ticker'].iat[row]}@{bars['ts'].iat[row]} has a fractional volume "
                f"{volume[row]}; the wire's day_volume is a whole number of shares"
            )

    def _group_sessions(self, bars: pd.DataFrame) -> list[_Session]:
        calendar, size = self.market_time.exchange, self.market_time.size
        sessions = self.market_time.session_indices(bars["ts"])
        close_ms = pd.DatetimeIndex(bars["ts"]).as_unit("ns").asi8 // 1_000_000
        if size.is_daily:  # a daily stamp may name its session without being its close
            sessions = np.where(calendar.close_ns[np.maximum(sessions, 0)] // 1_000_000 == close_ms, sessions, -1)
        if (sessions < 0).any():
            row = int(np.flatnonzero(sessions < 0)[0])
            raise ValueError(
                f"{bars['ticker'].iat[row]}@{bars['ts'].iat[row]} is not a bar close of "
                f"{self.market_time.describe()}; replay bars stamped by that calendar"
            )
        values = bars[["open", "high", "low", "close", "volume"]].to_numpy(dtype="float64")
        tickers = bars["ticker"].astype(str).to_numpy()
        out = []
        for session in np.unique(sessions):
            grid = calendar.bar_grid(size, int(session), int(session) + 1)
            starts = dict(
                zip((grid.close_ns // 1_000_000).tolist(), (grid.start_ns // 1_000_000).tolist(), strict=True)
            )
            in_session = sessions == session
            session_bars = []
            for close in np.unique(close_ms[in_session]):
                rows = np.flatnonzero(close_ms == close)
                order = rows[np.argsort(tickers[rows], kind="stable")]
                session_bars.append((int(close), starts[int(close)], tuple(tickers[order]), values[order]))
            out.append(
                _Session(
                    int(calendar.open_ns[session]) // 1_000_000,
                    int(calendar.close_ns[session]) // 1_000_000,
                    tuple(session_bars),
                )
            )
        return out

    @property
    def n_sessions(self) -> int:
        return len(self._sessions)

    @property
    def first_session_ms(self) -> int:
        """Exchange time (ms) at which the first replayed session opens."""
        return self._sessions[0].open_ms

    @property
    def length_ms(self) -> int:
        """Replay position of the last tick (the last session's post-market tick)."""
        return self._position(len(self._sessions) - 1, self._sessions[-1].close_ms)

    def _position(self, index: int, time_ms: int) -> int:
        if self.timeline == "calendar":
            return time_ms - self.first_session_ms
        return self._offsets[index] + time_ms - self._sessions[index].open_ms

    def position_of(self, time_ms: int) -> int:
        """Replay position (ms from the first session's open) of a tick sent at exchange time ``time_ms``."""
        index = min(bisect.bisect_left(self._close_ms, time_ms), len(self._sessions) - 1)
        return self._position(index, time_ms)

    def session_ticks(self, index: int) -> list[tuple[int, Tick]]:
        """``(position, tick)`` of one session's ticks, every ticker interleaved in time order."""
        session = self._sessions[index]
        running: dict[str, list[float]] = {}  # ticker -> [session open, high, low, day volume]
        ticks: list[Tick] = []
        for close_ms, start_ms, tickers, values in session.bars:
            rows = []
            for i, ticker in enumerate(tickers):
                state = running.setdefault(ticker, [values[i][0], -math.inf, math.inf, 0.0])
                rows.append(self.bar_ticks(ticker, start_ms, close_ms, *values[i], session=state))
            ticks += [tick for step in zip(*rows, strict=True) for tick in step]  # same time grid per ticker
        for ticker, (open_, high, low, volume) in sorted(running.items()):
            last = next(t for t in reversed(ticks) if t.ticker == ticker)
            ticks.append(
                Tick(
                    ticker,
                    last.price,
                    session.close_ms,
                    int(volume),
                    float(open_),
                    float(high),
                    float(low),
                    MarketHours.POST_MARKET,
                )
            )
        return [(self._position(index, tick.time_ms), tick) for tick in ticks]

    def ticks(self, from_position: float = -math.inf) -> Iterator[tuple[int, Tick]]:
        """Every ``(position, tick)`` at or after ``from_position``, in send order."""
        first = self._session_at(from_position) if from_position > 0 else 0
        for index in range(first, len(self._sessions)):
            for position, tick in self.session_ticks(index):
                if position >= from_position:
                    yield position, tick

    def _session_at(self, position: float) -> int:
        """Index of the session whose trading hours hold replay position ``position`` (or the next one)."""
        if self.timeline == "calendar":
            index = bisect.bisect_left(self._close_ms, self.first_session_ms + position)
        else:
            index = bisect.bisect_right(self._offsets, position) - 1
        return max(0, min(index, len(self._sessions) - 1))

    def time_at(self, position: float) -> int:
        """The exchange time (ms) at replay position ``position``, within the replayed range."""
        position = min(max(position, 0.0), self.length_ms)
        if self.timeline == "calendar":
            return int(self.first_session_ms + position)
        index = self._session_at(position)
        return int(self._sessions[index].open_ms + position - self._offsets[index])

    def bar_ticks(
        self,
        ticker: str,
        start_ms: int,
        close_ms: int,
        open_: float,
        high: float,
        low: float,
        close: float,
        volume: float,
        *,
        session: list[float] | None = None,
    ) -> list[Tick]:
        """The ticks of one bar: ``ticks_per_bar`` regular ticks evenly inside ``(start, close)``.

        The path visits the open (first tick), the high and the low (two random inner ticks, in a
        random order) and the close (last tick), moving in straight lines between them, so the
        running high and low reach the bar's exactly when the path touches them. ``session`` holds
        the session's running ``[open, high, low, volume]`` before this bar (updated in place);
        without it the bar is a whole session.
        """
        n = self.ticks_per_bar
        session = [open_, -math.inf, math.inf, 0.0] if session is None else session
        rng = np.random.default_rng([self.seed, zlib.crc32(ticker.encode()), close_ms])
        inner = np.sort(rng.choice(np.arange(1, n - 1), size=2, replace=False))
        first, second = (high, low) if rng.random() < 0.5 else (low, high)
        path = np.interp(np.arange(n), [0, inner[0], inner[1], n - 1], [open_, first, second, close])
        path = np.clip(np.round(path, self.price_hint), low, high)
        path[[0, inner[0], inner[1], n - 1]] = [open_, first, second, close]  # exact, whatever rounding did
        running_high = np.maximum(np.maximum.accumulate(path), session[1])
        running_low = np.minimum(np.minimum.accumulate(path), session[2])
        weights = np.cumsum(rng.random(n) + 0.25)
        bar_volume = np.floor(volume * weights / weights[-1]).astype("int64")
        bar_volume[-1] = int(volume)
        day_volume = int(session[3]) + bar_volume
        times = start_ms + ((close_ms - start_ms) * np.arange(1, n + 1)) // (n + 1)
        ticks = [
            Tick(
                ticker,
                float(path[k]),
                int(times[k]),
                int(day_volume[k]),
                float(session[0]),
                float(running_high[k]),
                float(running_low[k]),
                MarketHours.REGULAR_MARKET,
            )
            for k in range(n)
        ]
        session[1], session[2], session[3] = float(running_high[-1]), float(running_low[-1]), float(day_volume[-1])
        return ticks


# --------------------------------------------------------------------------------------------
# The replay clock
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayClock:
    """Replay position as a function of wall time: ``(now - anchor) * speed`` seconds of market time.

    Parameters
    ----------
    anchor : float
        Unix time (seconds) at which the replay is at position 0, the first session's open.
    speed : float
        Market milliseconds per wall millisecond (1 = real time).

    Examples
    --------
    >>> clock = ReplayClock(anchor=1_000.0, speed=60.0)
    >>> clock.position_ms(1_001.0), clock.wall_time(120_000)
    (60000.0, 1002.0)
    """

    anchor: float
    speed: float

    def __post_init__(self) -> None:
        if not (isinstance(self.anchor, (int, float)) and math.isfinite(self.anchor)):
            raise ValueError(f"anchor={self.anchor!r} must be a finite Unix time in seconds")
        if not (isinstance(self.speed, (int, float)) and math.isfinite(self.speed) and self.speed > 0):
            raise ValueError(f"speed={self.speed!r} must be a finite number > 0")

    def position_ms(self, now: float) -> float:
        """Replay position (ms) at Unix time ``now``."""
        return (now - self.anchor) * self.speed * 1000.0

    def wall_time(self, position_ms: float) -> float:
        """Unix time at which the replay reaches ``position_ms``."""
        return self.anchor + position_ms / (self.speed * 1000.0)

    @classmethod
    def from_anchor_file(cls, path: str | Path, speed: float, *, now: float | None = None) -> ReplayClock:
        """The clock stored in ``path``, or a new one anchored at ``now`` and stored there.

        A server restarted with the same file resumes at the position a live feed would be at.

        Raises
        ------
        ValueError
            The file holds a different speed (the positions would jump), or is not a clock.
        """
        path = Path(path)
        if path.exists():
            try:
                stored = json.loads(path.read_text())
                clock = cls(anchor=float(stored["anchor"]), speed=float(stored["speed"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path} is not a replay anchor file ({exc}); remove it to start afresh") from exc
            if clock.speed != speed:
                raise ValueError(
                    f"{path} anchors a replay at speed {clock.speed}, not {speed}; "
                    "use that speed or remove the file to start afresh"
                )
            return clock
        clock = cls(anchor=time.time() if now is None else now, speed=speed)
        write_bytes_atomic(path, json.dumps(dataclasses.asdict(clock)).encode())
        return clock


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultPlan:
    """What goes wrong, and how often, on a seeded schedule (for tests and drills).

    Rates are probabilities per frame sent to a connection, drawn from one ``random.Random(seed)``.

    Parameters
    ----------
    seed : int
        Seed of every draw.
    drop_at_accept : int
        The first this many connections are dropped right after the handshake.
    accept_drop_rate : float
        Probability that any later connection is dropped right after the handshake.
    drop_rate : float
        Probability per frame that the connection is dropped (aborted, no closing handshake).
    stall_rate : float
        Probability per frame that the connection goes silent for ``stall_s`` (frames are lost).
    stall_s : float
        Length of a stall, seconds.
    malformed_rate : float
        Probability per frame that a malformed frame precedes it, of a kind drawn from ``kinds``.
    kinds : tuple of str
        Kinds of malformed frames (see :data:`MALFORMED_KINDS`).
    """

    seed: int = 0
    drop_at_accept: int = 0
    accept_drop_rate: float = 0.0
    drop_rate: float = 0.0
    stall_rate: float = 0.0
    stall_s: float = 1.0
    malformed_rate: float = 0.0
    kinds: tuple[str, ...] = MALFORMED_KINDS

    def __post_init__(self) -> None:
        for name in ("accept_drop_rate", "drop_rate", "stall_rate", "malformed_rate"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name}={value!r} must be a probability between 0 and 1")
        if isinstance(self.drop_at_accept, bool) or not isinstance(self.drop_at_accept, int) or self.drop_at_accept < 0:
            raise ValueError(f"drop_at_accept={self.drop_at_accept!r} must be a whole number >= 0")
        if not (isinstance(self.stall_s, (int, float)) and self.stall_s >= 0):
            raise ValueError(f"stall_s={self.stall_s!r} must be a number of seconds >= 0")
        unknown = [k for k in self.kinds if k not in MALFORMED_KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"kinds={self.kinds!r} must name some of {', '.join(MALFORMED_KINDS)}")

    @property
    def per_frame(self) -> bool:
        """Whether any fault is drawn per frame (the server then sends connection by connection)."""
        return bool(self.drop_rate or self.stall_rate or self.malformed_rate)


def malformed_frame(kind: str, tick: Tick, last_sent: Tick | None, *, price_hint: int = 2) -> str:
    """A frame of ``kind`` (see :data:`MALFORMED_KINDS`) built around ``tick``.

    ``last_sent`` is the last tick of the same ticker this connection received; ``duplicate``
    repeats it and ``time_backwards`` goes one millisecond before it, so both need it.
    """
    good = encode_tick(tick, price_hint=price_hint)
    if kind == "bad_json":
        return good[:-3]
    if kind == "bad_base64":
        return good.replace('"message":"', '"message":"#!', 1)
    if kind == "missing_field":
        return encode_tick(dataclasses.replace(tick, ticker=""), price_hint=price_hint)
    if kind == "bad_protobuf":
        raw = base64.b64decode(json.loads(good)["message"])
        return json.dumps({"type": "pricing", "message": base64.b64encode(raw[:4]).decode()})  # cut inside the id
    one_field_wrong = {
        "bad_price": dataclasses.replace(tick, price=0.0),
        "nan_price": dataclasses.replace(tick, price=math.nan),
        "negative_price": dataclasses.replace(tick, price=-tick.price),
        "bad_volume": dataclasses.replace(tick, day_volume=-1),
        "bad_time": dataclasses.replace(tick, time_ms=tick.time_ms // 1000),  # seconds instead of milliseconds
        "unknown_ticker": dataclasses.replace(tick, ticker=UNKNOWN_TICKER),
        "future_time": dataclasses.replace(tick, time_ms=FUTURE_TIME_MS),
    }
    if kind in one_field_wrong:
        return encode_tick(one_field_wrong[kind], price_hint=price_hint)
    if kind not in _KINDS_AFTER_A_TICK:
        raise ValueError(f"kind={kind!r} is not one of {', '.join(MALFORMED_KINDS)}")
    if last_sent is None:
        raise ValueError(f"a {kind} frame repeats the connection's last tick of {tick.ticker}; there is none yet")
    if kind == "duplicate":
        return encode_tick(last_sent, price_hint=price_hint)
    return encode_tick(dataclasses.replace(last_sent, time_ms=last_sent.time_ms - 1), price_hint=price_hint)


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Client:
    """One connection and what it asked for."""

    ws: ServerConnection
    tickers: set[str] = field(default_factory=set)
    silent_until: float = 0.0
    lagged: int = 0
    last_sent: dict[str, Tick] = field(default_factory=dict)


class FeedServer:
    """A yfinance-compatible WebSocket feed that replays a :class:`ReplaySchedule` live.

    Parameters
    ----------
    schedule : ReplaySchedule
        The ticks to play.
    clock : ReplayClock
        When each tick is due; shared by every connection.
    host, port : str, int
        Where to listen; port 0 lets the OS pick (see :attr:`port` after :meth:`start`).
    faults : FaultPlan, optional
        Faults to inject; none by default.
    max_size : int
        Largest client message accepted, bytes (subscriptions are small).
    max_queue : int
        Client messages buffered before the server stops reading from that client.
    write_limit : int
        Bytes waiting in a connection's write buffer beyond which its ticks are dropped (``lagged``).
    now : callable
        Wall clock (Unix seconds) the replay runs against; ``time.time`` outside tests.

    Examples
    --------
    ``async with FeedServer(schedule, ReplayClock(time.time(), 1000.0), port=0) as server:`` then
    connect a :class:`~quant_engine.bridge.feed_client.FeedClient` to ``server.url``.
    """

    def __init__(
        self,
        schedule: ReplaySchedule,
        clock: ReplayClock,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        faults: FaultPlan | None = None,
        max_size: int = 2**16,
        max_queue: int = 16,
        write_limit: int = 2**18,
        now: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(schedule, ReplaySchedule):
            raise TypeError(f"schedule must be a ReplaySchedule, not {type(schedule).__name__}")
        if not isinstance(clock, ReplayClock):
            raise TypeError(f"clock must be a ReplayClock, not {type(clock).__name__}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port={port!r} must be 0..65535 (0: any free port)")
        for name, value in (("max_size", max_size), ("max_queue", max_queue), ("write_limit", write_limit)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a whole number >= 1")
        self.schedule = schedule
        self.clock = clock
        self.host = host
        self.port = port
        self.faults = faults or FaultPlan()
        self.max_size = max_size
        self.max_queue = max_queue
        self.write_limit = write_limit
        self._now = now
        self._rng = random.Random(self.faults.seed)
        self._clients: set[_Client] = set()
        self._subscribers: dict[str, set[_Client]] = {}
        self._server: Server | None = None
        self._replay: asyncio.Task[None] | None = None
        self.accepted = 0
        self.injected: dict[str, int] = dict.fromkeys(MALFORMED_KINDS, 0)
        self.ticks_played = 0
        self.position_ms = 0.0
        self.finished = False

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> FeedServer:
        """Listen and start the replay from the clock's current position."""
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=self.max_size,
            max_queue=self.max_queue,
            write_limit=self.write_limit,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=2,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._replay = asyncio.create_task(self._play(), name="feed-replay")
        log.info(
            "feed serving %d tickers, %d sessions of %s on %s (speed %s, %s timeline)",
            len(self.schedule.tickers),
            self.schedule.n_sessions,
            self.schedule.market_time.describe(),
            self.url,
            self.clock.speed,
            self.schedule.timeline,
        )
        return self

    async def stop(self) -> None:
        """Stop the replay and close every connection."""
        if self._replay is not None:
            self._replay.cancel()
            await asyncio.gather(self._replay, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> FeedServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def serve_forever(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set (forever without one)."""
        async with self:
            await (stop.wait() if stop is not None else asyncio.Future())

    def health(self) -> dict[str, object]:
        """What ``GET /health`` answers: replay position and connection counts."""
        position = self.clock.position_ms(self._now())
        return {
            "status": "finished" if self.finished else "ok",
            "position_ms": position,
            "replay_time": pd.Timestamp(self.schedule.time_at(position), unit="ms", tz="UTC").isoformat(),
            "speed": self.clock.speed,
            "tickers": len(self.schedule.tickers),
            "connections": len(self._clients),
            "accepted": self.accepted,
            "ticks_played": self.ticks_played,
            "lagged": sum(c.lagged for c in self._clients),
            "injected": sum(self.injected.values()),
        }

    # -- connections ------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?", 1)[0] != "/health":
            return None
        response = connection.respond(http.HTTPStatus.OK, json.dumps(self.health()) + "\n")
        del response.headers["Content-Type"]  # websockets' Headers add a value on assignment
        response.headers["Content-Type"] = "application/json"
        return response

    async def _handle(self, ws: ServerConnection) -> None:
        self.accepted += 1
        if self.accepted <= self.faults.drop_at_accept or (
            self.faults.accept_drop_rate and self._rng.random() < self.faults.accept_drop_rate
        ):
            log.info("fault: dropping connection %d at accept", self.accepted)
            ws.transport.abort()
            return
        client = _Client(ws)
        self._clients.add(client)
        try:
            async for message in ws:
                try:
                    control = parse_control(message)
                except FrameError as exc:
                    log.debug("ignoring a bad control frame: %s", exc)
                    continue
                for ticker in control["subscribe"]:
                    client.tickers.add(ticker)
                    self._subscribers.setdefault(ticker, set()).add(client)
                for ticker in control["unsubscribe"]:
                    client.tickers.discard(ticker)
                    self._subscribers.get(ticker, set()).discard(client)
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)
            for ticker in client.tickers:
                self._subscribers.get(ticker, set()).discard(client)

    # -- the replay -------------------------------------------------------------------------
    async def _play(self) -> None:
        start = self.clock.position_ms(self._now())
        in_a_row = 0
        for position, tick in self.schedule.ticks(from_position=start):
            delay = self.clock.wall_time(position) - self._now()
            if delay > 0:
                await asyncio.sleep(delay)
                in_a_row = 0
            elif in_a_row >= _YIELD_EVERY:
                await asyncio.sleep(0)
                in_a_row = 0
            in_a_row += 1
            self.position_ms = position
            self._send(tick)
            self.ticks_played += 1
        self.finished = True
        log.info("feed replay finished after %d ticks", self.ticks_played)

    def _send(self, tick: Tick) -> None:
        subscribers = self._subscribers.get(tick.ticker)
        if not subscribers:
            return
        frame = encode_tick(tick, price_hint=self.schedule.price_hint).encode()
        per_frame = self.faults.per_frame
        now = self._now() if per_frame else 0.0
        receivers = []
        for client in tuple(subscribers):
            if per_frame and not self._inject(client, tick, now):
                continue
            if client.silent_until > now:
                continue
            if client.ws.transport.get_write_buffer_size() > self.write_limit:
                client.lagged += 1  # a slow reader loses ticks, as on a live feed; memory stays bounded
                continue
            receivers.append(client.ws)
            client.last_sent[tick.ticker] = tick
        broadcast(receivers, frame, text=True)  # never waits; skips connections that are closing

    def _inject(self, client: _Client, tick: Tick, now: float) -> bool:
        """Draw this frame's faults for ``client``; False when the tick must not be sent to it."""
        faults, rng = self.faults, self._rng
        if faults.drop_rate and rng.random() < faults.drop_rate:
            log.info("fault: dropping a connection mid-stream")
            client.ws.transport.abort()
            return False
        if faults.stall_rate and rng.random() < faults.stall_rate:
            log.info("fault: stalling a connection for %.2fs", faults.stall_s)
            client.silent_until = now + faults.stall_s
            return False
        if faults.malformed_rate and rng.random() < faults.malformed_rate and client.silent_until <= now:
            kind = faults.kinds[rng.randrange(len(faults.kinds))]
            last_sent = client.last_sent.get(tick.ticker)
            if last_sent is not None or kind not in _KINDS_AFTER_A_TICK:
                broadcast((client.ws,), malformed_frame(kind, tick, last_sent, price_hint=self.schedule.price_hint))
                self.injected[kind] += 1
        return True
