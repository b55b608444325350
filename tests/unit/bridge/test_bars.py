"""Bar aggregation: session running values make bars, closes are exact and once, gaps are backfilled."""

from __future__ import annotations

import pandas as pd
import pytest

from quant_engine.bridge.bars import BarAggregator, bar_ts
from quant_engine.bridge.ticks import MarketHours, Tick

HOUR_MS = 3_600_000
MONDAY = pd.Timestamp("2024-01-08", tz="UTC")  # days below are offsets from this Monday


def at(day: int, hour: float) -> int:
    return int((MONDAY + pd.Timedelta(days=day, hours=hour)).value // 1_000_000)


def tick(ticker: str, day: int, hour: float, price: float, *, post: bool = False, volume: int = 1000) -> Tick:
    hours = MarketHours.POST_MARKET if post else MarketHours.REGULAR_MARKET
    return Tick(ticker, price, at(day, hour), volume, 100.0, max(price, 105.0), min(price, 95.0), hours)


class FakeHistory:
    """Stored bars per ticker; records the queries made."""

    def __init__(self, days: dict[str, list[int]]) -> None:
        rows = [{"ticker": t, "ts": bar_ts(int(MONDAY.value // 86_400_000_000_000) + d), "open": 10.0 + d,
                 "high": 12.0 + d, "low": 9.0 + d, "close": 11.0 + d, "volume": 500.0}
                for t, ds in days.items() for d in ds]
        self.frame = pd.DataFrame(rows)
        self.queries: list[tuple[str, pd.Timestamp, pd.Timestamp]] = []

    def between(self, ticker: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        self.queries.append((ticker, start, end))
        f = self.frame
        return f.loc[(f["ticker"] == ticker) & (f["ts"] >= start) & (f["ts"] <= end)] if len(f) else f


def test_post_market_tick_closes_the_session_with_its_running_values() -> None:
    agg = BarAggregator()
    assert agg.on_tick(tick("A", 0, 15, 101.0)) == []
    assert agg.on_tick(tick("A", 0, 16, 99.0)) == []
    (bar,) = agg.on_tick(tick("A", 0, 21, 102.0, post=True, volume=4000))
    assert (bar.ticker, bar.ts, bar.origin) == ("A", MONDAY + pd.Timedelta(hours=21), "feed")
    assert (bar.open, bar.high, bar.low, bar.close, bar.volume) == (100.0, 105.0, 95.0, 102.0, 4000.0)


def test_a_session_closes_once_even_when_its_post_market_tick_repeats() -> None:
    agg = BarAggregator()
    first = agg.on_tick(tick("A", 0, 21, 102.0, post=True))
    assert len(first) == 1
    assert agg.on_tick(tick("A", 0, 21, 102.0, post=True)) == []
    assert agg.on_tick(tick("A", 0, 18, 101.0)) == []  # a stale tick of the closed session
    assert agg.counters["late_ticks"] == 2 and agg.counters["bars_closed"] == 1


def test_lost_close_prefers_the_stored_bar_else_uses_and_counts_the_partial_one() -> None:
    history = FakeHistory({"A": [0]})
    agg = BarAggregator(history)
    agg.on_tick(tick("A", 0, 15, 101.0))
    agg.on_tick(tick("B", 0, 15, 50.0))
    # A's next session closes A's day 0 (no POST tick came), and moves the watermark past B's close.
    closed = agg.on_tick(tick("A", 1, 15, 103.0))
    assert [(b.ticker, b.origin, b.close) for b in closed] == [("A", "stored", 11.0), ("B", "partial", 50.0)]
    assert agg.on_tick(tick("B", 1, 15, 51.0)) == []
    assert agg.counters["bars_partial"] == 1 and agg.counters["bars_stored"] == 1


def test_watermark_closes_sessions_of_tickers_that_went_quiet() -> None:
    agg = BarAggregator(close_grace_ms=HOUR_MS)
    agg.on_tick(tick("Q", 0, 15, 101.0))
    agg.on_tick(tick("A", 0, 21, 102.0, post=True))  # another ticker's close: Q is still within grace
    assert agg.last_closed("Q") is None
    closed = agg.advance(at(0, 22))
    assert [(b.ticker, b.origin) for b in closed] == [("Q", "partial")]
    assert agg.on_tick(tick("Q", 0, 21, 101.0, post=True)) == []  # too late: closed already


def test_gap_is_backfilled_in_time_order_and_holidays_are_not_errors() -> None:
    history = FakeHistory({"A": [0, 1, 3, 4]})  # day 2 is a holiday: no stored bar
    agg = BarAggregator(history)
    agg.seed("A", bar_ts(int(MONDAY.value // 86_400_000_000_000)))
    closed = agg.on_tick(tick("A", 7, 21, 120.0, post=True))  # feed down from day 1 to day 6
    assert [b.ts for b in closed] == [MONDAY + pd.Timedelta(days=d, hours=21) for d in (1, 3, 4, 7)]
    assert [b.origin for b in closed] == ["backfill", "backfill", "backfill", "feed"]
    assert agg.counters["bars_backfill"] == 3


def test_contiguous_sessions_closed_by_the_feed_do_not_touch_history() -> None:
    history = FakeHistory({"A": [0, 1]})
    agg = BarAggregator(history)
    for day in (0, 1):
        agg.on_tick(tick("A", day, 15, 100.0))
        agg.on_tick(tick("A", day, 21, 101.0, post=True))
    assert history.queries == []


def test_bad_grace_is_refused() -> None:
    with pytest.raises(ValueError, match="close_grace_ms=-1"):
        BarAggregator(close_grace_ms=-1)


def test_a_weekend_is_no_gap_but_a_missing_monday_is() -> None:
    history = FakeHistory({"A": [0, 4, 7]})  # Monday, Friday, next Monday
    agg = BarAggregator(history)
    agg.seed("A", bar_ts(int(MONDAY.value // 86_400_000_000_000) + 4))
    assert [b.origin for b in agg.on_tick(tick("A", 7, 21, 100.0, post=True))] == ["feed"]
    assert history.queries == []  # Saturday and Sunday cost no session: history is not asked
    closed = agg.on_tick(tick("A", 9, 21, 100.0, post=True))  # Tuesday 8 missing, then Wednesday 9
    assert [b.origin for b in closed] == ["feed"] and len(history.queries) == 1  # 8 is a holiday: no stored bar
