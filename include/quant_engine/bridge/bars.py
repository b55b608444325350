"""Bars from live ticks, on the group's calendar: exactly once per ticker and bar, gaps filled or counted.

Every bar is stamped by the engine's one rule (:mod:`quant_engine.calendars`): at the instant its
interval closed, from the feature group's exchange calendar and bar size, so a bar the bridge
builds has the ``ts`` ingestion stored for the same bar. :class:`BarClock` answers, per tick,
which bar an instant belongs to.

* **Daily bars**: a tick carries its session's running values (``open_price``, ``day_high``,
  ``day_low``, ``day_volume``, last ``price``), so the session's bar is its last tick read as a bar:
  intermediate ticks lost on the wire change nothing.
* **Intraday bars**: a bar's open is its first tick's price (the session's ``open_price`` for a
  session's first bar), high and low the extremes of its ticks, close its last price, volume the
  growth of ``day_volume`` over the bar (exact when the tick before it was seen in the same session).

A bar closes

* on the session's ``POST_MARKET`` tick, which the feed sends once the session is over
  (authoritative for the session's last bar);
* intraday, when a tick of a later bar of the same ticker arrives;
* when a later session's tick of the same ticker arrives, or when the feed's clock (the newest
  tick time of any ticker, the *watermark*) passes the bar's close plus a grace period;
* when the service's reference clock has passed the bar's close (:meth:`BarAggregator.close_due`):
  the whole feed went quiet before the closing tick.

A daily bar closed without its closing tick may be partial (its last ticks were lost), as may an
intraday bar closed by a clock: the stored bar of that ``ts`` is preferred when the history has
one; otherwise the partial bar is used and counted.

Bars missing between a ticker's last closed bar and a new one (the feed was down) are the
calendar's bar closes in between, never "weekdays": each is backfilled from the stored history in
time order; one the history does not have is *unfilled*, counted and remembered per ticker
(:attr:`BarAggregator.unfilled`), because the ticker's features now differ from the store's
until it is rebuilt from a store that has the bar. A bar is closed once: any later tick of it, such
as a ``POST_MARKET`` tick repeated after a reconnect, is dropped and counted as late.

Stored history is read through :class:`GuardedHistory`: a read that fails (a file that cannot be
opened: out of descriptors, a disk gone) is retried, then the bar goes on without it (a backfill
becomes an unfilled gap, mended later like any other) and the failure is reported, never raised
into the service's processing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import pandas as pd

from quant_engine.bridge.ticks import MarketHours, Tick
from quant_engine.calendars import MarketTime

__all__ = ["Bar", "BarAggregator", "BarClock", "BarSource", "GuardedHistory", "HistoryUnavailable", "ORIGINS"]

log = logging.getLogger(__name__)

_NS_PER_MS = 1_000_000
_NEVER = np.iinfo(np.int64).max

#: Where a closed bar's values came from.
ORIGINS: tuple[str, ...] = ("feed", "stored", "partial", "backfill")


class BarSource(Protocol):
    """Stored bars: :class:`quant_engine.features.bar_history.BarHistory` or anything with its ``between``."""

    def between(self, ticker: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Bars of ``ticker`` with ``start <= ts <= end``: ``ticker, ts, open, high, low, close, volume``."""
        ...


class HistoryUnavailable(RuntimeError):
    """Stored bars could not be read (after retrying); the caller goes on without them."""


class GuardedHistory:
    """Reads of stored bars that fail with an :class:`OSError` (a file that cannot be opened) retried,
    then raised as :class:`HistoryUnavailable`; the last failure is kept for ``/health`` until a read succeeds.

    Parameters
    ----------
    history : BarSource
        :class:`~quant_engine.features.bar_history.BarHistory` or anything with its reading methods.
    attempts : int
        Reads tried before giving up (at once: a processing batch must not sleep).
    """

    def __init__(self, history: Any, attempts: int = 2) -> None:
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"attempts={attempts!r} must be an integer >= 1")
        self.history = history
        self.attempts = attempts
        self.can_warm_up = hasattr(history, "last_bars")
        self.failures = 0
        self.error: str | None = None

    def between(self, ticker: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        return self._read(self.history.between, ticker, start, end)

    def last_bars(self, ticker: str, until: pd.Timestamp, count: int) -> pd.DataFrame:
        return self._read(self.history.last_bars, ticker, until, count)

    def _read(self, method: Callable[..., pd.DataFrame], *args: Any) -> pd.DataFrame:
        for attempt in range(1, self.attempts + 1):
            try:
                frame = method(*args)
            except OSError as exc:
                if attempt == self.attempts:
                    self.failures += 1
                    if self.error is None:
                        log.warning("stored bars unreadable (%s); going on without them", exc)
                    self.error = f"stored bars unreadable: {exc}"
                    raise HistoryUnavailable(self.error) from exc
            else:
                if self.error is not None:
                    log.info("stored bars readable again")
                self.error = None
                return frame
        raise AssertionError("unreachable: the loop returns or raises")


@dataclass(frozen=True, slots=True)
class Bar:
    """One closed bar of one ticker, and where its values came from (see :data:`ORIGINS`)."""

    ticker: str
    ts: pd.Timestamp
    open: float
    high: float
    low: float
    close: float
    volume: float
    origin: str

    def as_record(self) -> dict[str, object]:
        """The bar as the mapping :meth:`StreamingFeatureState.update` takes."""
        return {
            "ticker": self.ticker,
            "ts": self.ts,
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "volume": self.volume,
        }


@dataclass(frozen=True, slots=True)
class Slot:
    """One bar of the calendar: ``[start_ms, close_ms]`` of session ``session``; whether it opens or ends it."""

    close_ms: int
    start_ms: int
    session: int
    opens_session: bool
    closes_session: bool


class BarClock:
    """A feature group's market time, asked per tick: which bar an instant (ms) belongs to.

    Examples
    --------
    >>> clock = BarClock(MarketTime("XNYS", "1h"))
    >>> slot = clock.locate(int(pd.Timestamp("2019-07-03 16:10Z").value // 10**6))
    >>> str(pd.Timestamp(slot.close_ms, unit="ms", tz="UTC")), slot.closes_session
    ('2019-07-03 16:30:00+00:00', False)
    """

    def __init__(self, market_time: MarketTime | None = None) -> None:
        self.market_time = market_time or MarketTime()
        self.calendar = self.market_time.exchange
        self.size = self.market_time.size
        self._last: Slot | None = None

    def __repr__(self) -> str:
        return f"BarClock({self.market_time!r})"

    def locate(self, t_ms: int) -> Slot | None:
        """The bar whose ``[start, close]`` holds ``t_ms`` (a close belongs to the bar it ends); None outside sessions.

        The last bar found is kept: ticks of every ticker arrive in the same bar, so most calls end there.
        """
        last = self._last
        if last is not None and last.start_ms < t_ms <= last.close_ms:
            return last
        found = self.calendar.locate(int(t_ms) * _NS_PER_MS, self.size)
        if found is None:
            return None
        close_ns, start_ns, session = found
        self._last = Slot(
            close_ns // _NS_PER_MS,
            start_ns // _NS_PER_MS,
            session,
            bool(start_ns == self.calendar.open_ns[session]),
            bool(close_ns == self.calendar.close_ns[session]),
        )
        return self._last

    def last_close_before(self, t_ms: int) -> int | None:
        """The newest bar close at or before ``t_ms`` (the bar a tick after it, outside sessions, follows)."""
        slot = self.locate(t_ms)
        if slot is not None and slot.close_ms == t_ms:
            return t_ms
        t_ns = int(t_ms) * _NS_PER_MS
        session = int(np.searchsorted(self.calendar.close_ns, t_ns, side="right"))  # sessions [.., session) closed
        lo = max(0, session - 1)
        grid = self.calendar.bar_grid(self.size, lo, min(session + 1, len(self.calendar)))
        before = grid.close_ns[grid.close_ns <= t_ns]
        return int(before[-1]) // _NS_PER_MS if len(before) else None

    def closes_between(self, after_ms: int, before_ms: int) -> list[int]:
        """Bar closes strictly between two instants: the bars a ticker missed between two of its bars."""
        if before_ms <= after_ms:
            return []
        after_ns, before_ns = int(after_ms) * _NS_PER_MS, int(before_ms) * _NS_PER_MS
        lo = int(np.searchsorted(self.calendar.close_ns, after_ns, side="right"))
        hi = int(np.searchsorted(self.calendar.open_ns, before_ns, side="left"))
        if hi <= lo:
            return []
        closes = self.calendar.bar_grid(self.size, lo, hi).close_ns
        inside = closes[(closes > after_ns) & (closes < before_ns)]
        return (inside // _NS_PER_MS).tolist()

    @staticmethod
    def ts(close_ms: int) -> pd.Timestamp:
        return pd.Timestamp(int(close_ms) * _NS_PER_MS, tz="UTC")


@dataclass(slots=True)
class _OpenBar:
    """A bar that ticks are still building."""

    slot: Slot
    open: float
    high: float
    low: float
    close: float
    day_volume: int
    volume_base: int | None  # the session's day_volume when the bar began; None when unknown
    last: Tick


def _stored_bars(frame: pd.DataFrame, origin: str) -> Iterator[tuple[int, Bar]]:
    frame = frame.sort_values("ts", kind="stable")
    ts_ms = pd.DatetimeIndex(frame["ts"]).tz_convert("UTC").as_unit("ns").asi8 // _NS_PER_MS
    columns = [frame[c].to_numpy(dtype=np.float64).tolist() for c in ("open", "high", "low", "close", "volume")]
    rows = zip(ts_ms.tolist(), frame["ticker"].astype(str).tolist(), *columns, strict=True)
    for ms, ticker, open_, high, low, close, volume in rows:
        yield ms, Bar(ticker, BarClock.ts(ms), open_, high, low, close, volume, origin)


class BarAggregator:
    """Per-ticker bar state that turns ticks into closed bars on a calendar, each exactly once.

    Parameters
    ----------
    history : BarSource, optional
        Stored bars, for backfilling gaps and for replacing partial bars; without it gaps stay gaps
        (counted as unfilled) and partial bars are used as they are.
    clock : BarClock, optional
        The group's calendar and bar size (default: NYSE daily).
    close_grace_ms : int
        How long past a bar's close the watermark must be before a bar whose closing tick never
        came is closed anyway.

    Examples
    --------
    >>> from quant_engine.bridge.ticks import Tick, MarketHours
    >>> agg = BarAggregator()
    >>> at_20h, at_21h = 1_704_225_600_000, 1_704_229_200_000  # 2024-01-02 20:00 and 21:00 UTC (winter)
    >>> agg.on_tick(Tick("A", 101.0, at_20h, 900, 100.0, 102.0, 99.0))
    []
    >>> [(str(b.ts), b.close, b.origin) for b in agg.on_tick(
    ...     Tick("A", 101.5, at_21h, 1000, 100.0, 102.0, 99.0, MarketHours.POST_MARKET))]
    [('2024-01-02 21:00:00+00:00', 101.5, 'feed')]
    """

    def __init__(
        self, history: BarSource | None = None, *, clock: BarClock | None = None, close_grace_ms: int = 3_600_000
    ) -> None:
        if isinstance(close_grace_ms, bool) or not isinstance(close_grace_ms, int) or close_grace_ms < 0:
            raise ValueError(f"close_grace_ms={close_grace_ms!r} must be an integer >= 0")
        self.history = history
        self.clock = clock or BarClock()
        self.daily = self.clock.size.is_daily
        self.close_grace_ms = close_grace_ms
        self.watermark_ms = -1
        self._open: dict[str, _OpenBar] = {}
        self._last_closed: dict[str, int] = {}
        self._volume_mark: dict[str, tuple[int, int]] = {}  # ticker -> (bar close it ended, day_volume)
        self._next_close_ms = _NEVER  # the earliest close of an open bar
        #: Per ticker, the closes (ms) of bars it missed that the history did not have.
        self.unfilled: dict[str, set[int]] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "ticks",
                "late_ticks",
                "ticks_outside_session",
                "bars_closed",
                "bars_feed",
                "bars_stored",
                "bars_partial",
                "bars_backfill",
                "bars_unfilled",
            ),
            0,
        )

    def seed(self, ticker: str, last_bar: pd.Timestamp | None) -> None:
        """Say which bar ``ticker``'s state already holds (its warm-up's last), so gaps after it get filled."""
        if last_bar is not None:
            ms = int(pd.Timestamp(last_bar).tz_convert("UTC").value // _NS_PER_MS)
            self._last_closed[ticker] = max(ms, self._last_closed.get(ticker, ms))

    def last_closed(self, ticker: str) -> pd.Timestamp | None:
        """The timestamp of ``ticker``'s last closed (or seeded) bar."""
        ms = self._last_closed.get(ticker)
        return None if ms is None else BarClock.ts(ms)

    def is_known(self, ticker: str) -> bool:
        """Whether ``ticker`` has been seeded or has had a tick."""
        return ticker in self._last_closed or ticker in self._open

    def bar_start(self, time_ms: int) -> pd.Timestamp:
        """Where the bar of an instant began (outside sessions: the last close before it): what warm-up may read."""
        slot = self.clock.locate(time_ms)
        if slot is not None:
            return BarClock.ts(slot.start_ms)
        previous = self.clock.last_close_before(time_ms)
        return BarClock.ts(previous if previous is not None else time_ms)

    def on_tick(self, tick: Tick) -> list[Bar]:
        """Take one tick; return the bars it closes (backfilled ones first), in time order per ticker."""
        self.counters["ticks"] += 1
        ticker = tick.ticker
        slot = self.clock.locate(tick.time_ms)
        closed: list[Bar] = []
        if slot is None:
            closed += self._outside_session(tick)
        else:
            last = self._last_closed.get(ticker, -1)
            current = self._open.get(ticker)
            if slot.close_ms <= last or (current is not None and slot.close_ms < current.slot.close_ms):
                self.counters["late_ticks"] += 1
            else:
                if current is not None and current.slot.close_ms < slot.close_ms:
                    closed += self._close(ticker, complete=not self.daily)
                self._add(tick, slot)
                if tick.market_hours == MarketHours.POST_MARKET and slot.closes_session:
                    closed += self._close(ticker, complete=True)
        if tick.time_ms > self.watermark_ms:
            closed += self.advance(tick.time_ms)
        return closed

    def _outside_session(self, tick: Tick) -> list[Bar]:
        """A tick between sessions: a ``POST_MARKET`` tick after the close still closes the session's last bar.

        Its own price is a post-market trade, not the session's, so the bar keeps the regular ticks' values.
        """
        current = self._open.get(tick.ticker)
        if (
            tick.market_hours == MarketHours.POST_MARKET
            and current is not None
            and current.slot.closes_session
            and self.clock.last_close_before(tick.time_ms) == current.slot.close_ms
        ):
            return self._close(tick.ticker, complete=True)
        self.counters["ticks_outside_session"] += 1
        return []

    def _add(self, tick: Tick, slot: Slot) -> None:
        current = self._open.get(tick.ticker)
        if current is None:
            if self.daily or slot.opens_session:  # a session's running values are its first bar's too
                current = _OpenBar(
                    slot, tick.open_price, tick.day_high, tick.day_low, tick.price, tick.day_volume, 0, tick
                )
            else:
                mark = self._volume_mark.get(tick.ticker)
                base = mark[1] if mark is not None and mark[0] == slot.start_ms else None
                current = _OpenBar(slot, tick.price, tick.price, tick.price, tick.price, tick.day_volume, base, tick)
            self._open[tick.ticker] = current
            self._next_close_ms = min(self._next_close_ms, slot.close_ms)
            return
        if self.daily or current.slot.opens_session:
            current.open, current.high, current.low = tick.open_price, tick.day_high, tick.day_low
        else:
            current.high, current.low = max(current.high, tick.price), min(current.low, tick.price)
        current.close, current.day_volume, current.last = tick.price, tick.day_volume, tick

    def advance(self, watermark_ms: int) -> list[Bar]:
        """Move the feed clock to ``watermark_ms``; close the bars whose grace has run out."""
        self.watermark_ms = max(self.watermark_ms, int(watermark_ms))
        return self.close_due(self.watermark_ms - self.close_grace_ms)

    def close_due(self, until_ms: int) -> list[Bar]:
        """Close every open bar whose close is at or before ``until_ms`` without waiting for its closing tick.

        The service calls it with the instant its reference clock had passed a grace period ago
        (:meth:`~quant_engine.bridge.clock.ReferenceClock.passed_ms`), so a session whose last ticks never
        came is closed anyway; the watermark does the same through :meth:`advance`.
        """
        if until_ms < self._next_close_ms:
            return []
        expired = [t for t, b in self._open.items() if b.slot.close_ms <= until_ms]
        closed = [bar for ticker in sorted(expired) for bar in self._close(ticker, complete=False)]
        self._next_close_ms = min((b.slot.close_ms for b in self._open.values()), default=_NEVER)
        return closed

    @property
    def open_bars(self) -> int:
        """Bars that ticks are still building."""
        return len(self._open)

    def _close(self, ticker: str, *, complete: bool) -> list[Bar]:
        """Close ``ticker``'s open bar: from the feed when ``complete``, else the stored bar when there is one."""
        current = self._open.pop(ticker)
        close_ms = current.slot.close_ms
        last = self._last_closed.get(ticker)
        missed = [] if last is None else self.clock.closes_between(last, close_ms)
        exact = complete and (self.daily or current.volume_base is not None)
        stored: dict[int, Bar] = {}
        if self.history is not None and (missed or not exact):
            first = missed[0] if missed else close_ms
            try:
                frame = self.history.between(ticker, BarClock.ts(first), BarClock.ts(close_ms))
            except HistoryUnavailable:  # counted by GuardedHistory: the gap stays unfilled, mended later
                frame = None
            if frame is not None:
                stored = {ms: bar for ms, bar in _stored_bars(frame, "backfill")}
        out = [stored[ms] for ms in missed if ms in stored]
        unfilled = [ms for ms in missed if ms not in stored]
        if unfilled:
            self.unfilled.setdefault(ticker, set()).update(unfilled)
            self.counters["bars_unfilled"] += len(unfilled)
        if exact:
            out.append(self._feed_bar(ticker, current, "feed"))
        elif close_ms in stored:
            out.append(replace(stored[close_ms], origin="stored"))
        else:
            out.append(self._feed_bar(ticker, current, "partial"))
        self._last_closed[ticker] = close_ms
        self._volume_mark[ticker] = (close_ms, current.day_volume)
        for bar in out:
            self.counters["bars_closed"] += 1
            self.counters[f"bars_{bar.origin}"] += 1
        return out

    def _feed_bar(self, ticker: str, bar: _OpenBar, origin: str) -> Bar:
        volume = bar.day_volume - (bar.volume_base or 0) if not self.daily else bar.day_volume
        return Bar(
            ticker,
            BarClock.ts(bar.slot.close_ms),
            float(bar.open),
            float(bar.high),
            float(bar.low),
            float(bar.close),
            float(max(volume, 0)),
            origin,
        )

    def forget_unfilled(self, ticker: str) -> set[int]:
        """Clear and return ``ticker``'s unfilled bars (its state was rebuilt from a store that has them)."""
        return self.unfilled.pop(ticker, set())
