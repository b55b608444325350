"""Exchange calendars and bar sizes: when a session or a bar closes. The engine's one time rule.

The rule
--------
**A bar is stamped at the instant its interval closed, in UTC, from its exchange calendar.**

* A daily bar (``1d``) closes with its session: NYSE's closes at 21:00 UTC in winter, 20:00 UTC in
  summer, 18:00 UTC on a winter half day (13:00 New York).
* An intraday bar (``1h``, ``5m``, ...) closes at the end of its interval. Intervals start at the
  session's open (and again after a lunch break) and the last one of a session, or of the part
  before a break, ends at the close, so it may be shorter: NYSE's ``1h`` bars of a summer day close
  at 14:30, 15:30, ..., 19:30 and 20:00 UTC.
* Sessions come from the calendar (holidays, half days, daylight saving), never from weekdays.

Every source stamps by this rule, every store, label, report and the bridge use the stamps as they
are, so the same bar has the same ``ts`` everywhere and joins are exact. The calendars are those of
`exchange_calendars <https://github.com/gerrymanoim/exchange_calendars>`_ (``XNYS`` for US
equities, ``24/5`` for FX, ``24/7`` for crypto, any other by its name), read once per process into
arrays so that finding the bar of an instant is a binary search.

Examples
--------
>>> nyse = get_calendar("XNYS")
>>> [str(t) for t in nyse.bar_closes("2019-07-03", "2019-07-05", "1d")]
['2019-07-03 17:00:00+00:00', '2019-07-05 20:00:00+00:00']
>>> [str(t) for t in nyse.bar_closes("2019-12-02", "2019-12-02", "1h")][-2:]
['2019-12-02 20:30:00+00:00', '2019-12-02 21:00:00+00:00']
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from quant_engine.timeutil import read_stamp

__all__ = [
    "DEFAULT_BAR_SIZE",
    "DEFAULT_CALENDAR",
    "TIME_RULE",
    "BarSize",
    "CalendarError",
    "MarketCalendar",
    "MarketTime",
    "get_calendar",
]

#: Calendar of a feature group that declares none: the New York Stock Exchange.
DEFAULT_CALENDAR = "XNYS"
DEFAULT_BAR_SIZE = "1d"
#: Name and version of the stamp rule above, stored with every feature group it wrote.
TIME_RULE = "bar-close-utc/calendar-v1"
#: The span every calendar is read for (clipped to what a precomputed calendar covers).
CALENDAR_START, CALENDAR_END = "1900-01-01", "2100-12-31"
#: Years averaged when a calendar annualises: sessions (and bars) a year are counted over them.
ANNUALISATION_YEARS = 10

_NS_PER_MINUTE = 60 * 10**9
_NO_BREAK = np.iinfo(np.int64).min
_BAR_SIZE_PATTERN = re.compile(r"^\s*(\d*)\s*(d|day|days|h|hr|hour|hours|m|min|mins|minute|minutes|t)\s*$", re.I)


class CalendarError(ValueError):
    """An unknown calendar or bar size, or an instant outside the calendar's span."""


# --- bar sizes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BarSize:
    """A bar length: one session (``minutes is None``) or a whole number of minutes.

    Examples
    --------
    >>> BarSize.parse("1D").name, BarSize.parse("60min").name, BarSize.parse("5m").minutes
    ('1d', '1h', 5)
    """

    minutes: int | None = None

    def __post_init__(self) -> None:
        if self.minutes is not None and (
            isinstance(self.minutes, bool) or not isinstance(self.minutes, int) or not 1 <= self.minutes < 24 * 60
        ):
            raise CalendarError(f"a bar of {self.minutes!r} minutes is not a bar size; use 1 to 1439 minutes, or 1d")

    @classmethod
    def parse(cls, value: str | BarSize) -> BarSize:
        """``"1d"`` (also ``"1D"``, ``"D"``) or an intraday length: ``"1h"``, ``"90m"``, ``"5min"``."""
        if isinstance(value, BarSize):
            return value
        match = _BAR_SIZE_PATTERN.match(str(value))
        if match is None:
            raise CalendarError(f"bar size {value!r} is not a bar length; use 1d, or intraday such as 1h, 30m, 5m")
        count = int(match.group(1) or 1)
        unit = match.group(2).lower()
        if unit.startswith("d"):
            if count != 1:
                raise CalendarError(f"bar size {value!r}: a daily bar is one session (1d); longer bars are not served")
            return cls(None)
        return cls(count * 60 if unit.startswith("h") else count)

    @property
    def is_daily(self) -> bool:
        return self.minutes is None

    @property
    def name(self) -> str:
        """Canonical spelling: ``1d``, ``1h``, ``2h``, ``90m``, ``5m``."""
        if self.minutes is None:
            return "1d"
        return f"{self.minutes // 60}h" if self.minutes % 60 == 0 else f"{self.minutes}m"

    @property
    def nanos(self) -> int:
        """Length in nanoseconds (intraday only)."""
        if self.minutes is None:
            raise CalendarError("a daily bar has no fixed length: it lasts one session")
        return self.minutes * _NS_PER_MINUTE

    def __str__(self) -> str:
        return self.name


# --- calendars -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BarGrid:
    """Bars of consecutive sessions: each bar's close and start (UTC ns) and its session's index."""

    close_ns: np.ndarray
    start_ns: np.ndarray
    session: np.ndarray

    def __len__(self) -> int:
        return len(self.close_ns)

    @property
    def closes(self) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(self.close_ns.astype("datetime64[ns]"), tz="UTC")


class MarketCalendar:
    """One exchange calendar as arrays: session labels, opens, closes and breaks (UTC nanoseconds).

    Build it with :func:`get_calendar` (cached per process). Sessions are indexed ``0..n-1`` in
    time order; a session's *label* is its date at the exchange.
    """

    def __init__(self, name: str, tz: str, schedule: pd.DataFrame) -> None:
        self.name = name
        self.tz = tz
        self.labels = schedule.index.to_numpy(dtype="datetime64[D]")
        self.open_ns = _ns(schedule["open"])
        self.close_ns = _ns(schedule["close"])
        if "break_start" in schedule.columns:
            starts, ends = schedule["break_start"], schedule["break_end"]
            has_break = (starts.notna() & ends.notna()).to_numpy()
            self.break_start_ns = np.where(has_break, _ns(starts.fillna(schedule["open"])), _NO_BREAK)
            self.break_end_ns = np.where(has_break, _ns(ends.fillna(schedule["open"])), _NO_BREAK)
        else:
            self.break_start_ns = np.full(len(self.labels), _NO_BREAK)
            self.break_end_ns = np.full(len(self.labels), _NO_BREAK)
        if len(self.labels) == 0:
            raise CalendarError(f"calendar {name!r} has no sessions")

    def __repr__(self) -> str:
        return f"MarketCalendar({self.name!r}, {self.first_session.date()} .. {self.last_session.date()})"

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def first_session(self) -> pd.Timestamp:
        return pd.Timestamp(self.labels[0])

    @property
    def last_session(self) -> pd.Timestamp:
        return pd.Timestamp(self.labels[-1])

    @functools.cached_property
    def regular_minutes(self) -> int:
        """The most common trading minutes of a session (390 for NYSE, 1440 for 24/5)."""
        minutes = self._trading_ns(np.arange(len(self))) // _NS_PER_MINUTE
        values, counts = np.unique(minutes, return_counts=True)
        return int(values[np.argmax(counts)])

    # -- sessions ---------------------------------------------------------------------------------

    def session_range(self, first: object, last: object) -> tuple[int, int]:
        """Indices ``[lo, hi)`` of the sessions whose labels lie in the dates ``first..last``."""
        lo = int(np.searchsorted(self.labels, _day(first, "first"), side="left"))
        hi = int(np.searchsorted(self.labels, _day(last, "last"), side="right"))
        return lo, max(lo, hi)

    def sessions(self, first: object, last: object) -> pd.DatetimeIndex:
        """Session labels (dates at the exchange) from ``first`` to ``last`` inclusive."""
        lo, hi = self.session_range(first, last)
        return pd.DatetimeIndex(self.labels[lo:hi].astype("datetime64[ns]"))

    def is_session(self, day: object) -> bool:
        """Whether the exchange trades on ``day`` (a date)."""
        return self.session_index(day) is not None

    def session_index(self, day: object) -> int | None:
        """Index of the session labelled ``day``, or None on a holiday or weekend."""
        label = _day(day, "day")
        i = int(np.searchsorted(self.labels, label))
        return i if i < len(self.labels) and self.labels[i] == label else None

    def session_label(self, index: int) -> pd.Timestamp:
        return pd.Timestamp(self.labels[index])

    def session_close(self, day: object) -> pd.Timestamp:
        """The UTC instant session ``day`` closes; :class:`CalendarError` when it is not a session."""
        i = self.session_index(day)
        if i is None:
            raise CalendarError(f"{_day(day, 'day')} is not a session of {self.name}")
        return pd.Timestamp(int(self.close_ns[i]), tz="UTC")

    def last_closed_session(self, moment: object) -> int | None:
        """Index of the latest session closed at or before ``moment`` (tz-aware), or None."""
        i = int(np.searchsorted(self.close_ns, _utc_ns(moment, "moment"), side="right")) - 1
        return i if i >= 0 else None

    def sessions_closing_in(self, after: object, until: object) -> tuple[int, int]:
        """Indices ``[lo, hi)`` of the sessions that closed in ``(after, until]`` (tz-aware instants)."""
        lo = int(np.searchsorted(self.close_ns, _utc_ns(after, "after"), side="right"))
        hi = int(np.searchsorted(self.close_ns, _utc_ns(until, "until"), side="right"))
        return lo, max(lo, hi)

    # -- bars -------------------------------------------------------------------------------------

    def bar_grid(self, bar_size: str | BarSize, lo: int, hi: int) -> BarGrid:
        """Every bar of sessions ``lo..hi-1`` (indices), in time order."""
        size = BarSize.parse(bar_size)
        index = np.arange(lo, hi)
        if size.is_daily:
            return BarGrid(self.close_ns[index].copy(), self.open_ns[index].copy(), index)
        step = size.nanos
        seg_start, seg_end, seg_session = self._segments(index)
        counts = -(-(seg_end - seg_start) // step)  # ceil: the last bar of a segment may be short
        seg_of_bar = np.repeat(np.arange(len(counts)), counts)
        k = np.arange(len(seg_of_bar)) - np.repeat(np.cumsum(counts) - counts, counts)
        start = seg_start[seg_of_bar] + k * step
        close = np.minimum(start + step, seg_end[seg_of_bar])
        return BarGrid(close, start, seg_session[seg_of_bar])

    def bar_closes(self, first: object, last: object, bar_size: str | BarSize = DEFAULT_BAR_SIZE) -> pd.DatetimeIndex:
        """Close instants (UTC) of every bar of the sessions labelled ``first..last``."""
        return self.bar_grid(bar_size, *self.session_range(first, last)).closes

    def locate(self, t_ns: int, bar_size: str | BarSize) -> tuple[int, int, int] | None:
        """``(close_ns, start_ns, session)`` of the bar whose interval ``[start, close]`` holds ``t_ns``.

        An instant that is both a bar's close and the next bar's start belongs to the bar it
        closes. None outside every session (nights, weekends, holidays, a lunch break).
        """
        size = BarSize.parse(bar_size)
        s = int(np.searchsorted(self.close_ns, t_ns, side="left"))
        if s >= len(self.labels) or t_ns < self.open_ns[s]:
            return None
        close, opens = int(self.close_ns[s]), int(self.open_ns[s])
        if size.is_daily:
            return close, opens, s
        seg_start, seg_end = opens, close
        b_start, b_end = int(self.break_start_ns[s]), int(self.break_end_ns[s])
        if b_start != _NO_BREAK:
            if b_start < t_ns < b_end:
                return None
            seg_start, seg_end = (opens, b_start) if t_ns <= b_start else (b_end, close)
        step = size.nanos
        k = max(1, -(-(t_ns - seg_start) // step))
        bar_close = min(seg_start + k * step, seg_end)
        return bar_close, seg_start + (k - 1) * step, s

    def previous_close(self, t_ns: int) -> int | None:
        """The latest session close at or before ``t_ns``."""
        i = int(np.searchsorted(self.close_ns, t_ns, side="right")) - 1
        return int(self.close_ns[i]) if i >= 0 else None

    def daily_sessions_of(self, ts: pd.Series | pd.DatetimeIndex) -> np.ndarray:
        """Session index of each daily bar stamp, -1 where the stamp names no session.

        A daily bar is identified by its session: a stamp exactly at a session's close is that
        session; a stamp at midnight UTC on a calendar not in UTC is a date written as an instant
        (pandas writes dates so) and names that UTC date; any other stamp names the session of its
        date at the exchange (yfinance's local midnight, a close written in another convention).
        """
        stamps = pd.DatetimeIndex(ts).tz_convert("UTC")
        t_ns = stamps.as_unit("ns").asi8
        at = np.searchsorted(self.close_ns, t_ns, side="left")
        exact = (at < len(self.close_ns)) & (self.close_ns[np.minimum(at, len(self.close_ns) - 1)] == t_ns)
        local_days = stamps.tz_convert(self.tz).tz_localize(None).normalize().to_numpy(dtype="datetime64[D]")
        if self.tz != "UTC":
            utc_days = stamps.tz_localize(None).normalize()
            midnight = np.asarray(stamps.tz_localize(None) == utc_days)
            local_days = np.where(midnight, utc_days.to_numpy(dtype="datetime64[D]"), local_days)
        by_label = np.searchsorted(self.labels, local_days)
        found = (by_label < len(self.labels)) & (self.labels[np.minimum(by_label, len(self.labels) - 1)] == local_days)
        return np.where(exact, at, np.where(found, by_label, -1)).astype(np.int64)

    def intraday_sessions_of(self, ts: pd.Series | pd.DatetimeIndex, bar_size: str | BarSize) -> np.ndarray:
        """Session index of each intraday bar close, -1 outside sessions, -2 inside one but off the grid."""
        size = BarSize.parse(bar_size)
        t_ns = pd.DatetimeIndex(ts).tz_convert("UTC").as_unit("ns").asi8
        s = np.searchsorted(self.close_ns, t_ns, side="left")
        inside = s < len(self.labels)
        s_safe = np.minimum(s, len(self.labels) - 1)
        inside &= t_ns > self.open_ns[s_safe]
        b_start, b_end = self.break_start_ns[s_safe], self.break_end_ns[s_safe]
        has_break = b_start != _NO_BREAK
        inside &= ~(has_break & (t_ns > b_start) & (t_ns <= b_end))
        seg_start = np.where(has_break & (t_ns > b_end), b_end, self.open_ns[s_safe])
        seg_end = np.where(has_break & (t_ns <= b_start), b_start, self.close_ns[s_safe])
        on_grid = ((t_ns - seg_start) % size.nanos == 0) | (t_ns == seg_end)
        return np.where(~inside, -1, np.where(on_grid, s_safe, -2)).astype(np.int64)

    def bars_per_year(self, bar_size: str | BarSize, last_year: int) -> tuple[float, float]:
        """``(sessions a year, bars a session)`` averaged over the ten years ending with ``last_year``.

        Their product is the annualisation factor of per-bar returns.
        """
        first = max(last_year - ANNUALISATION_YEARS + 1, self.first_session.year)
        last = min(last_year, self.last_session.year)
        if last < first:
            raise CalendarError(f"{self.name} has no sessions in {last_year}")
        lo, hi = self.session_range(f"{first}-01-01", f"{last}-12-31")
        years = last - first + 1
        n_bars = len(self.bar_grid(bar_size, lo, hi))
        return (hi - lo) / years, n_bars / max(hi - lo, 1)

    # -- trading time -----------------------------------------------------------------------------

    def advance_trading_time(self, t_ns: int, amount_ns: int) -> int:
        """The instant ``amount_ns`` of *trading* time after ``t_ns`` (before it when negative).

        Nights, weekends, holidays and lunch breaks take no trading time, so a replay that skips
        them (``quant-engine feed serve``'s ``sessions`` timeline) reaches exactly this instant
        after ``amount_ns`` of replay, and one that lives through them (a live feed, the
        ``calendar`` timeline) reaches at most this far. That makes it an upper bound of where any
        feed can be when moving forward, and a lower bound when moving back. Where two instants
        share the same trading time (a close and the next open), the earlier is returned. Outside
        the calendar's span time runs as on a wall clock.

        Examples
        --------
        >>> nyse = get_calendar("XNYS")
        >>> friday_close = pd.Timestamp("2024-03-01 21:00", tz="UTC").value
        >>> str(pd.Timestamp(nyse.advance_trading_time(friday_close, 30 * _NS_PER_MINUTE), tz="UTC"))
        '2024-03-04 15:00:00+00:00'
        """
        t_ns, amount_ns = int(t_ns), int(amount_ns)
        if amount_ns == 0:
            return t_ns
        return self._instant_at(self._trading_elapsed(t_ns) + amount_ns)

    @functools.cached_property
    def _trading_stretches(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every trading stretch ``[start, end]`` in time order, and the trading time before and after each."""
        start, end, _ = self._segments(np.arange(len(self)))
        after = np.cumsum(end - start)
        return start, end, after - (end - start), after

    def _trading_elapsed(self, t_ns: int) -> int:
        """Trading time from the calendar's first open to ``t_ns`` (wall time outside the span)."""
        start, end, before, after = self._trading_stretches
        if t_ns < start[0]:
            return t_ns - int(start[0])
        if t_ns > end[-1]:
            return int(after[-1]) + t_ns - int(end[-1])
        k = int(np.searchsorted(start, t_ns, side="right")) - 1
        return int(before[k]) + min(t_ns - int(start[k]), int(end[k] - start[k]))

    def _instant_at(self, elapsed_ns: int) -> int:
        """The earliest instant with ``elapsed_ns`` of trading time behind it (the inverse of the above)."""
        start, end, before, after = self._trading_stretches
        if elapsed_ns < 0:
            return int(start[0]) + elapsed_ns
        if elapsed_ns > after[-1]:
            return int(end[-1]) + elapsed_ns - int(after[-1])
        j = int(np.searchsorted(after, elapsed_ns, side="left"))
        return int(start[j]) + elapsed_ns - int(before[j])

    # -- internals --------------------------------------------------------------------------------

    def _segments(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Trading stretches of sessions ``index``: ``[open, close]``, or ``[open, break]`` and ``[break, close]``."""
        has_break = self.break_start_ns[index] != _NO_BREAK
        first_end = np.where(has_break, self.break_start_ns[index], self.close_ns[index])
        starts = [self.open_ns[index], self.break_end_ns[index][has_break]]
        ends = [first_end, self.close_ns[index][has_break]]
        sessions = [index, index[has_break]]
        order_key = [self.open_ns[index], self.break_end_ns[index][has_break]]
        start, end, session, key = (np.concatenate(parts) for parts in (starts, ends, sessions, order_key))
        order = np.argsort(key, kind="stable")
        return start[order], end[order], session[order]

    def _trading_ns(self, index: np.ndarray) -> np.ndarray:
        start, end, session = self._segments(index)
        return np.bincount(np.searchsorted(index, session), weights=end - start, minlength=len(index)).astype(np.int64)


def _ns(column: pd.Series) -> np.ndarray:
    return pd.DatetimeIndex(column).tz_convert("UTC").as_unit("ns").asi8.copy()


def _day(value: object, name: str) -> np.datetime64:
    """A date (string, date, or timestamp read in its own zone) as numpy's day."""
    stamp = read_stamp(value, name, error=CalendarError)
    wall = stamp.tz_localize(None) if stamp.tzinfo is not None else stamp
    return np.datetime64(wall.normalize().date(), "D")


def _utc_ns(value: object, name: str) -> int:
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:
        raise CalendarError(f"{name}={value!r} is a naive time; give it a time zone (UTC)")
    return int(stamp.tz_convert("UTC").as_unit("ns").value)


@functools.lru_cache(maxsize=32)
def get_calendar(name: str = DEFAULT_CALENDAR) -> MarketCalendar:
    """The calendar ``name`` (``XNYS``, ``24/5``, ``24/7``, ``XLON``, an alias such as ``NYSE``), cached.

    Read from ``exchange_calendars`` for 1900-2100, or for what a precomputed calendar covers.
    """
    import exchange_calendars as xcals

    try:
        canonical = xcals.resolve_alias(str(name))
    except Exception:  # noqa: BLE001 - exchange_calendars raises its own error type for unknown names
        canonical = str(name)
    known = xcals.get_calendar_names(include_aliases=True)
    if canonical not in known:
        raise CalendarError(
            f"unknown calendar {name!r}; use XNYS (US equities), 24/5 (FX), 24/7 (crypto) or "
            "another exchange_calendars name such as XLON or XTKS"
        )
    with warnings.catch_warnings():
        # exchange_calendars still uses pandas APIs that pandas 3.1 deprecates (DatetimeIndex.weekday,
        # Series.values of tz-aware columns, which pandas attributes to itself): not ours to fix.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"exchange_calendars\b")
        warnings.filterwarnings("ignore", message="Series.values returning an ndarray that drops timezone")
        return _read_calendar(xcals.get_calendar, canonical)


def _read_calendar(factory: Any, canonical: str) -> MarketCalendar:
    try:
        calendar = factory(canonical, start=CALENDAR_START, end=CALENDAR_END)
    except Exception:  # noqa: BLE001 - a precomputed calendar refuses a span beyond its data
        probe = factory(canonical)
        start, end = pd.Timestamp(CALENDAR_START), pd.Timestamp(CALENDAR_END)
        if probe.bound_min() is not None:
            start = max(start, probe.bound_min().tz_localize(None))
        if probe.bound_max() is not None:
            end = min(end, probe.bound_max().tz_localize(None))
        calendar = factory(canonical, start=start, end=end)
    return MarketCalendar(canonical, str(calendar.tz), calendar.schedule)


# --- a feature group's market time ----------------------------------------------------------------


@dataclass(frozen=True)
class MarketTime:
    """The calendar and bar size a feature group declares: which instants its bars are stamped at.

    Parameters
    ----------
    calendar : str
        An exchange calendar name (see :func:`get_calendar`); stored in canonical form.
    bar_size : str
        ``1d`` or an intraday length (see :class:`BarSize`); stored in canonical form.

    Examples
    --------
    >>> MarketTime("NYSE", "60min")
    MarketTime(calendar='XNYS', bar_size='1h')
    >>> MarketTime.from_json(MarketTime("24/5", "1h").to_json()).annualisation(2020)["bars_per_session"]
    24.0
    """

    calendar: str = DEFAULT_CALENDAR
    bar_size: str = DEFAULT_BAR_SIZE

    def __post_init__(self) -> None:
        object.__setattr__(self, "calendar", get_calendar(self.calendar).name)
        object.__setattr__(self, "bar_size", BarSize.parse(self.bar_size).name)

    @property
    def exchange(self) -> MarketCalendar:
        return get_calendar(self.calendar)

    @property
    def size(self) -> BarSize:
        return BarSize.parse(self.bar_size)

    def session_indices(self, ts: pd.Series | pd.DatetimeIndex) -> np.ndarray:
        """Session index of each bar stamp (negative where a stamp breaks the rule; see the calendar's methods)."""
        if self.size.is_daily:
            return self.exchange.daily_sessions_of(ts)
        return self.exchange.intraday_sessions_of(ts, self.size)

    def to_json(self) -> dict[str, str]:
        return {"time_rule": TIME_RULE, "calendar": self.calendar, "bar_size": self.bar_size}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MarketTime:
        if data.get("time_rule") != TIME_RULE:
            raise CalendarError(f"time rule {data.get('time_rule')!r} is not this engine's {TIME_RULE!r}")
        return cls(str(data["calendar"]), str(data["bar_size"]))

    def annualisation(self, last_year: int) -> dict[str, float | str]:
        """Periods a year for per-bar returns, and what they are made of (for reports)."""
        sessions, bars = self.exchange.bars_per_year(self.bar_size, last_year)
        return {
            "calendar": self.calendar,
            "bar_size": self.bar_size,
            "sessions_per_year": round(sessions, 2),
            "bars_per_session": round(bars, 4),
            "periods_per_year": round(sessions * bars, 2),
            "years_averaged": ANNUALISATION_YEARS,
        }

    def describe(self) -> str:
        return f"{self.bar_size} bars on the {self.calendar} calendar"
