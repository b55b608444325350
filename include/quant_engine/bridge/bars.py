"""Daily bars from live ticks: exactly once per ticker and session, gaps filled from stored history.

A tick carries its session's running values (``open_price``, ``day_high``, ``day_low``,
``day_volume``, last ``price``), so a session's bar is the last tick of the session read as a
bar: intermediate ticks lost on the wire change nothing. Bars are stamped as the sources stamp
them, at the session close (21:00 UTC of the session day, :data:`quant_engine.data.synthetic.SESSION_CLOSE`).

A session's bar closes

* on its ``POST_MARKET`` tick, which the feed sends once the session is over: authoritative;
* when a later session's tick of the same ticker arrives, or when the feed's clock (the newest tick
  time of any ticker, the *watermark*) passes the session close plus a grace period. The values
  may then be partial (the last ticks were lost), so the stored bar of that session is preferred
  when the history has one; otherwise the partial bar is used and counted.

Sessions missing between a ticker's last closed bar and a new one (the feed was down for days)
are backfilled from the history, in time order, before the new bar. A weekday the history has no
bar for is a holiday, not an error. A session is closed once: any later tick of it, such as a
``POST_MARKET`` tick repeated after a reconnect, is dropped and counted as late.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from quant_engine.bridge.ticks import MarketHours, Tick
from quant_engine.data.synthetic import SESSION_CLOSE

__all__ = ["Bar", "BarAggregator", "BarSource", "bar_ts", "session_day"]

DAY_MS = 86_400_000
_CLOSE_MS = int(SESSION_CLOSE / pd.Timedelta(milliseconds=1))

#: Where a closed bar's values came from.
ORIGINS: tuple[str, ...] = ("feed", "stored", "partial", "backfill")


class BarSource(Protocol):
    """Stored daily bars: :class:`quant_engine.bridge.history.BarHistory` or anything with its ``between``."""

    def between(self, ticker: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Bars of ``ticker`` with ``start <= ts <= end``: ``ticker, ts, open, high, low, close, volume``."""
        ...


@dataclass(frozen=True, slots=True)
class Bar:
    """One closed daily bar of one ticker, and where its values came from (see :data:`ORIGINS`)."""

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
        return {"ticker": self.ticker, "ts": self.ts, "open": self.open, "high": self.high, "low": self.low,
                "close": self.close, "volume": self.volume}


def session_day(time_ms: int) -> int:
    """The UTC day number (days since 1970-01-01) of a tick time in milliseconds."""
    return time_ms // DAY_MS


@functools.lru_cache(maxsize=4096)
def bar_ts(day: int) -> pd.Timestamp:
    """A session day's bar timestamp: its close, 21:00 UTC (cached: every ticker's bar of a day asks)."""
    return pd.Timestamp(day * DAY_MS + _CLOSE_MS, unit="ms", tz="UTC").as_unit("ns")


def _weekdays_between(first: int, last: int) -> int:
    """Weekdays strictly between two day numbers: sessions a gap may have cost (1970-01-01 was a Thursday)."""
    return sum(1 for day in range(first + 1, last) if (day + 3) % 7 < 5)


def _tick_bar(tick: Tick, day: int, origin: str) -> Bar:
    return Bar(tick.ticker, bar_ts(day), float(tick.open_price), float(tick.day_high), float(tick.day_low),
               float(tick.price), float(tick.day_volume), origin)


def _stored_bars(frame: pd.DataFrame, origin: str) -> Iterator[tuple[int, Bar]]:
    frame = frame.sort_values("ts", kind="stable")
    ts_ms = pd.DatetimeIndex(frame["ts"]).tz_convert("UTC").as_unit("ns").asi8 // 1_000_000
    columns = [frame[c].to_numpy(dtype=np.float64).tolist() for c in ("open", "high", "low", "close", "volume")]
    for ms, ticker, *values in zip(ts_ms.tolist(), frame["ticker"].astype(str).tolist(), *columns, strict=True):
        yield session_day(ms), Bar(ticker, bar_ts(session_day(ms)), *values, origin)


class BarAggregator:
    """Per-ticker session state that turns ticks into closed daily bars, each exactly once.

    Parameters
    ----------
    history : BarSource, optional
        Stored bars, for backfilling gaps and for replacing partial bars; without it gaps stay gaps
        and partial bars are used as they are.
    close_grace_ms : int
        How long past a session's close (21:00 UTC) the watermark must be before a session whose
        ``POST_MARKET`` tick never came is closed anyway.

    Examples
    --------
    >>> from quant_engine.bridge.ticks import Tick, MarketHours
    >>> agg = BarAggregator()
    >>> at_20h, at_21h = 1_704_225_600_000, 1_704_229_200_000  # 2024-01-02 20:00 and 21:00 UTC
    >>> agg.on_tick(Tick("A", 101.0, at_20h, 900, 100.0, 102.0, 99.0))
    []
    >>> [(str(b.ts), b.close, b.origin) for b in agg.on_tick(
    ...     Tick("A", 101.5, at_21h, 1000, 100.0, 102.0, 99.0, MarketHours.POST_MARKET))]
    [('2024-01-02 21:00:00+00:00', 101.5, 'feed')]
    """

    def __init__(self, history: BarSource | None = None, *, close_grace_ms: int = 3_600_000) -> None:
        if isinstance(close_grace_ms, bool) or not isinstance(close_grace_ms, int) or close_grace_ms < 0:
            raise ValueError(f"close_grace_ms={close_grace_ms!r} must be an integer >= 0")
        self.history = history
        self.close_grace_ms = close_grace_ms
        self.watermark_ms = -1
        self._open: dict[str, Tick] = {}
        self._open_day: dict[str, int] = {}
        self._last_closed: dict[str, int] = {}
        self._next_expiry_ms = np.iinfo(np.int64).max
        self.counters: dict[str, int] = dict.fromkeys(
            ("ticks", "late_ticks", "bars_closed", "bars_feed", "bars_stored", "bars_partial", "bars_backfill"), 0)

    def seed(self, ticker: str, last_bar: pd.Timestamp | None) -> None:
        """Say which bar ``ticker``'s state already holds (its warm-up's last), so gaps after it get filled."""
        if last_bar is not None:
            day = session_day(int(pd.Timestamp(last_bar).tz_convert("UTC").value // 1_000_000))
            self._last_closed[ticker] = max(day, self._last_closed.get(ticker, day))

    def last_closed(self, ticker: str) -> pd.Timestamp | None:
        """The timestamp of ``ticker``'s last closed (or seeded) bar."""
        day = self._last_closed.get(ticker)
        return None if day is None else bar_ts(day)

    def is_known(self, ticker: str) -> bool:
        """Whether ``ticker`` has been seeded or has had a tick."""
        return ticker in self._last_closed or ticker in self._open_day

    def on_tick(self, tick: Tick) -> list[Bar]:
        """Take one tick; return the bars it closes (backfilled ones first), in time order per ticker."""
        self.counters["ticks"] += 1
        ticker, day = tick.ticker, session_day(tick.time_ms)
        last = self._last_closed.get(ticker)
        open_day = self._open_day.get(ticker)
        if (last is not None and day <= last) or (open_day is not None and day < open_day):
            self.counters["late_ticks"] += 1
            return []
        closed: list[Bar] = []
        if open_day is not None and day > open_day:
            closed += self._close(ticker, None)
        if tick.market_hours == MarketHours.POST_MARKET:
            self._open.pop(ticker, None)
            self._open_day[ticker] = day
            closed += self._close(ticker, tick)
        else:
            self._open[ticker] = tick
            if ticker not in self._open_day:
                self._open_day[ticker] = day
                self._next_expiry_ms = min(self._next_expiry_ms, self._expiry_ms(day))
        if tick.time_ms > self.watermark_ms:
            closed += self.advance(tick.time_ms)
        return closed

    def advance(self, watermark_ms: int) -> list[Bar]:
        """Move the feed clock to ``watermark_ms``; close the sessions whose grace has run out."""
        self.watermark_ms = max(self.watermark_ms, int(watermark_ms))
        if self.watermark_ms < self._next_expiry_ms:
            return []
        expired = [t for t, d in self._open_day.items() if self._expiry_ms(d) <= self.watermark_ms]
        closed = [bar for ticker in sorted(expired) for bar in self._close(ticker, None)]
        self._next_expiry_ms = min((self._expiry_ms(d) for d in self._open_day.values()),
                                   default=np.iinfo(np.int64).max)
        return closed

    def _expiry_ms(self, day: int) -> int:
        return day * DAY_MS + _CLOSE_MS + self.close_grace_ms

    def _close(self, ticker: str, final: Tick | None) -> list[Bar]:
        """Close ``ticker``'s open session with ``final`` (its POST_MARKET tick) or its latest tick."""
        day = self._open_day.pop(ticker)
        latest = self._open.pop(ticker, None)
        last = self._last_closed.get(ticker)
        stored: dict[int, Bar] = {}
        needs_history = final is None or (last is not None and _weekdays_between(last, day) > 0)
        if self.history is not None and needs_history:
            first = day if last is None else last + 1
            frame = self.history.between(ticker, bar_ts(first), bar_ts(day))
            stored = {d: b for d, b in _stored_bars(frame, "backfill") if first <= d <= day}
        out = [stored[d] for d in sorted(stored) if d < day]
        if final is not None:
            out.append(_tick_bar(final, day, "feed"))
        elif day in stored:
            out.append(Bar(**{**_as_dict(stored[day]), "origin": "stored"}))
        else:
            out.append(_tick_bar(latest, day, "partial"))  # an open session always has a tick
        self._last_closed[ticker] = day
        for bar in out:
            self.counters["bars_closed"] += 1
            self.counters[f"bars_{bar.origin}"] += 1
        return out


def _as_dict(bar: Bar) -> dict[str, object]:
    return {name: getattr(bar, name) for name in Bar.__slots__}
