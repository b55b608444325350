"""Stored bars from the offline store: the one price history after ingestion.

Ingestion stores the bars it computed features from in the offline group ``<feature group>_bars``
(:func:`quant_engine.features.stores.bars_group_name`), one record per ``(ticker, bar ts)``,
versioned and point-in-time like the features. This module reads them back in the bar schema every
source returns (``ticker, ts, open, high, low, close, volume``), so

* labels (walk-forward, training, the drift check) are priced from the very bars the features
  were computed from, and the source is read by ingestion alone (:meth:`BarHistory.read`, with
  ``history_bars`` before the range where a label needs them);
* the bridge fills its rolling windows before the first live tick (:meth:`BarHistory.last_bars`)
  and the bars a feed outage cost it (:meth:`BarHistory.between`);
* the replay server streams stored history instead of the synthetic market."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from quant_engine.calendars import MarketTime
from quant_engine.data.schema import BAR_COLUMNS, empty_bars, validate_bars
from quant_engine.features.ingest import group_market_time
from quant_engine.features.offline_store import OfflineStore
from quant_engine.timeutil import utc_timestamp

__all__ = ["BarHistory"]

#: Sessions added to what ``count`` bars need on the first read (a gap in the data).
_SPARE_SESSIONS = 5


class BarHistory:
    """Stored bars of one feature group, read as validated bar frames.

    Parameters
    ----------
    store : OfflineStore
        The bars group (``<feature group>_bars``; ``quant_engine.backends.make_bar_history`` builds it).
    market_time : MarketTime, optional
        The group's calendar and bar size (default: what the group declares, else NYSE daily).

    Raises
    ------
    StaleStoreError
        The group was written before the calendar time rule.
    """

    def __init__(self, store: OfflineStore, market_time: MarketTime | None = None) -> None:
        if not isinstance(store, OfflineStore):
            raise TypeError(f"store must be an OfflineStore, not {type(store).__name__}")
        self.store = store
        self.market_time = market_time or group_market_time(store) or MarketTime()

    def __repr__(self) -> str:
        return f"BarHistory({self.store!r})"

    @property
    def exists(self) -> bool:
        """Whether any ingestion has stored bars in this group yet."""
        return self.store.schema is not None

    def read(
        self, tickers: Sequence[str] | None = None, start: object = None, end: object = None, *, history_bars: int = 0
    ) -> pd.DataFrame:
        """Bars of ``tickers`` (default: all) with ``start <= ts <= end`` (tz-aware, inclusive; None: open).

        ``history_bars`` widens the range back by that many of the calendar's bars before ``start``
        (a label's volatility window), as far as the store has them.

        Returns
        -------
        DataFrame
            ``ticker, ts, open, high, low, close, volume`` sorted by ``(ticker, ts)``; empty when
            nothing matches or no bars have been stored yet.
        """
        if not self.exists:
            return empty_bars()
        if history_bars and start is not None:
            start = self._start_for(history_bars, utc_timestamp(start, "start"))
        rows = self.store.read(tickers, start, end)
        return _rows_to_bars(rows)

    def last_bars(self, ticker: str, until: object, count: int) -> pd.DataFrame:
        """The last ``count`` bars of ``ticker`` with ``ts <= until``: what was complete at ``until``.

        Fewer rows come back when the store holds fewer; the caller decides whether that is enough.
        """
        _check_ticker(ticker)
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"count={count!r} must be a whole number of bars >= 1")
        until_ts = utc_timestamp(until, "until")
        bars = self.read([ticker], self._start_for(count, until_ts), until_ts)
        if len(bars) < count:  # a long holiday or a gap in the data: look at everything before
            bars = self.read([ticker], None, until_ts)
        return bars.tail(int(count)).reset_index(drop=True)

    def _start_for(self, count: int, until: pd.Timestamp) -> pd.Timestamp:
        """An instant early enough that ``count`` bars of the calendar lie between it and ``until``."""
        calendar, size = self.market_time.exchange, self.market_time.size
        per_session = 1 if size.minutes is None else max(1, calendar.regular_minutes // size.minutes)
        last = calendar.last_closed_session(until)
        first = max(0, (last if last is not None else 0) - math.ceil(count / per_session) - _SPARE_SESSIONS)
        return pd.Timestamp(int(calendar.open_ns[first]), tz="UTC")

    def between(self, ticker: str, start: object, end: object) -> pd.DataFrame:
        """Bars of ``ticker`` with ``start <= ts <= end`` (both tz-aware), e.g. those a feed outage lost."""
        _check_ticker(ticker)
        start_ts, end_ts = utc_timestamp(start, "start"), utc_timestamp(end, "end")
        if end_ts < start_ts:
            raise ValueError(f"end={end_ts} is before start={start_ts}")
        return self.read([ticker], start_ts, end_ts)

    def tickers(self) -> list[str]:
        """Every ticker with stored bars, sorted."""
        if not self.exists:
            return []
        return sorted(self.store.read(None)["ticker"].unique().tolist())


def _check_ticker(ticker: object) -> None:
    if not isinstance(ticker, str) or not ticker:
        raise ValueError(f"ticker={ticker!r} must be a non-empty string")


def _rows_to_bars(rows: pd.DataFrame) -> pd.DataFrame:
    """Stored rows in the bar schema (validated again: what comes out is what every source returns)."""
    if rows.empty:
        return empty_bars()
    bars, _ = validate_bars(rows.rename(columns={"event_time": "ts"})[list(BAR_COLUMNS)])
    return bars
