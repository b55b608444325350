"""What every market data source shares: the protocol, its errors, and how a requested range is read.

Each source module (:mod:`~quant_engine.data.synthetic`, :mod:`~quant_engine.data.files`,
:mod:`~quant_engine.data.yfinance_source`) builds on this module alone; the factory that picks a
source by name, :mod:`quant_engine.data.sources`, sits above them all.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeAlias, runtime_checkable

import pandas as pd

__all__ = [
    "EmptyRangeError",
    "MarketDataSource",
    "TimeLike",
    "UnknownTickerError",
    "check_tickers",
    "parse_time_of_day",
    "resolve_range",
]

TimeLike: TypeAlias = str | dt.date | dt.datetime | pd.Timestamp


class UnknownTickerError(ValueError):
    """Tickers a source does not have; ``tickers`` lists them."""

    def __init__(self, message: str, tickers: Sequence[str]) -> None:
        super().__init__(message)
        self.tickers = tuple(tickers)


class EmptyRangeError(ValueError):
    """A request that matched no bars at all: the range falls outside what the source covers."""


@runtime_checkable
class MarketDataSource(Protocol):
    """Anything that returns bars for tickers over an inclusive time range.

    ``fetch`` returns a frame that went through :func:`quant_engine.data.schema.validate_bars`:
    columns ``ticker, ts, open, high, low, close, volume``, ``ts`` in UTC, sorted by
    ``(ticker, ts)``. ``tickers=None`` means every ticker the source has. ``start`` and ``end``
    are inclusive; see :func:`resolve_range` for how dates and timestamps are read.
    Unknown tickers raise :class:`UnknownTickerError`; a request without any bars raises
    :class:`EmptyRangeError`.
    """

    name: str

    def fetch(self, tickers: Sequence[str] | None, start: TimeLike, end: TimeLike) -> pd.DataFrame: ...


def _is_calendar_date(value: TimeLike) -> bool:
    if isinstance(value, dt.datetime):
        return False
    if isinstance(value, dt.date):
        return True
    return isinstance(value, str) and len(value.strip()) == 10


def _bound(value: TimeLike, name: str, *, end: bool) -> pd.Timestamp:
    if value is None:
        raise ValueError(f"{name} is missing; pass a date like '2024-01-31' or a tz-aware timestamp")
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name}={value!r} is not a date or timestamp") from exc
    if stamp is pd.NaT:
        raise ValueError(f"{name}={value!r} is not a date or timestamp")
    if stamp.tzinfo is not None:
        return stamp.tz_convert("UTC")
    if not _is_calendar_date(value) and stamp != stamp.normalize():
        raise ValueError(
            f"{name}={value!r} is a naive timestamp with a time of day; give it a time zone "
            "(e.g. '2024-01-31T21:00Z') or pass a plain date"
        )
    day = stamp.normalize().tz_localize("UTC")
    return day + pd.Timedelta(days=1) - pd.Timedelta(1, "ns") if end else day


def resolve_range(start: TimeLike, end: TimeLike) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The inclusive UTC instants ``[first, last]`` a ``fetch(start, end)`` covers.

    A plain date (``"2024-01-31"``, :class:`datetime.date`, or a naive timestamp at midnight) is a
    UTC calendar day: as ``start`` it means that day's first instant, as ``end`` its last. A
    tz-aware timestamp is an exact instant. A naive timestamp with a time of day is ambiguous and
    rejected, as everywhere in the engine.

    Examples
    --------
    >>> first, last = resolve_range("2024-01-02", "2024-01-03")
    >>> str(first), str(last)
    ('2024-01-02 00:00:00+00:00', '2024-01-03 23:59:59.999999999+00:00')
    """
    first = _bound(start, "start", end=False)
    last = _bound(end, "end", end=True)
    if last < first:
        raise ValueError(f"end {end!r} is before start {start!r}")
    return first, last


def parse_time_of_day(value: str, name: str) -> pd.Timedelta:
    """``"HH:MM"`` as the offset from midnight; the error names the parameter."""
    hours, _, minutes = str(value).partition(":")
    if not (len(value) == 5 and hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60):
        raise ValueError(f"{name}={value!r} must be a time of day HH:MM, e.g. '16:00'")
    return pd.Timedelta(hours=int(hours), minutes=int(minutes))


def check_tickers(requested: Sequence[str] | None, available: Iterable[str], source: str) -> list[str]:
    """The tickers to serve: all of ``available`` for ``None``, else ``requested`` if all exist."""
    available = list(available)
    if requested is None:
        return available
    if isinstance(requested, str):
        raise TypeError(f"tickers={requested!r} must be a sequence of names, not one string")
    requested = list(dict.fromkeys(requested))
    if not requested:
        raise ValueError("tickers is an empty list; pass None for every ticker the source has")
    known = set(available)
    unknown = [t for t in requested if t not in known]
    if unknown:
        shown = ", ".join(available[:5]) + (f", ... ({len(available)} in all)" if len(available) > 5 else "")
        raise UnknownTickerError(f"{source} has no ticker(s) {', '.join(unknown)}; it has {shown}", unknown)
    return requested
