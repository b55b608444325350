"""Bar aggregation on the calendar: session running values make bars, closes are exact and once, gaps
are the calendar's bars in between, backfilled or counted; intraday bars rebuilt from their ticks."""

from __future__ import annotations

import errno

import pandas as pd
import pytest

from quant_engine.bridge.bars import BarAggregator, BarClock, GuardedHistory
from quant_engine.bridge.ticks import MarketHours, Tick
from quant_engine.calendars import MarketTime, get_calendar

HOUR_MS = 3_600_000
MONDAY = pd.Timestamp("2024-02-05", tz="UTC")  # days below are offsets from this winter Monday (close 21:00 UTC)
NYSE = get_calendar("XNYS")


def at(day: int, hour: float, base: pd.Timestamp = MONDAY) -> int:
    return int((base + pd.Timedelta(days=day, hours=hour)).value // 1_000_000)


def close_of(day: int, base: pd.Timestamp = MONDAY) -> pd.Timestamp:
    return NYSE.session_close((base + pd.Timedelta(days=day)).date())


def tick(
    ticker: str,
    day: int,
    hour: float,
    price: float,
    *,
    post: bool = False,
    volume: int = 1000,
    base: pd.Timestamp = MONDAY,
) -> Tick:
    hours = MarketHours.POST_MARKET if post else MarketHours.REGULAR_MARKET
    return Tick(ticker, price, at(day, hour, base), volume, 100.0, max(price, 105.0), min(price, 95.0), hours)


class FakeHistory:
    """Stored daily bars per ticker (days from MONDAY), stamped at their session closes; records the queries."""

    def __init__(self, days: dict[str, list[int]]) -> None:
        rows = [
            {
                "ticker": t,
                "ts": close_of(d),
                "open": 10.0 + d,
                "high": 12.0 + d,
                "low": 9.0 + d,
                "close": 11.0 + d,
                "volume": 500.0,
            }
            for t, ds in days.items()
            for d in ds
        ]
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


def test_a_summer_session_closes_at_20h_utc_and_a_half_day_at_17h() -> None:
    agg = BarAggregator()
    july = pd.Timestamp("2019-07-02", tz="UTC")
    agg.on_tick(tick("A", 0, 15, 101.0, base=july))
    (summer,) = agg.on_tick(tick("A", 0, 20, 101.0, post=True, base=july))
    agg.on_tick(tick("A", 1, 15, 101.0, base=july))
    (half_day,) = agg.on_tick(tick("A", 1, 17, 101.0, post=True, base=july))
    assert [summer.ts, half_day.ts] == [pd.Timestamp("2019-07-02 20:00Z"), pd.Timestamp("2019-07-03 17:00Z")]
    # July 4 is a holiday: a tick then belongs to no bar; Friday's session is no gap after Wednesday's.
    assert agg.on_tick(tick("A", 2, 15, 101.0, base=july)) == [] and agg.counters["ticks_outside_session"] == 1
    agg.on_tick(tick("A", 3, 15, 101.0, base=july))
    (friday,) = agg.on_tick(tick("A", 3, 20, 102.0, post=True, base=july))
    assert friday.ts == pd.Timestamp("2019-07-05 20:00Z") and agg.counters["bars_unfilled"] == 0


def test_a_session_closes_once_even_when_its_post_market_tick_repeats() -> None:
    agg = BarAggregator()
    first = agg.on_tick(tick("A", 0, 21, 102.0, post=True))
    assert len(first) == 1
    assert agg.on_tick(tick("A", 0, 21, 102.0, post=True)) == []
    assert agg.on_tick(tick("A", 0, 18, 101.0)) == []  # a stale tick of the closed session
    assert agg.counters["late_ticks"] == 2 and agg.counters["bars_closed"] == 1


def test_a_post_market_tick_after_the_close_closes_the_bar_with_the_sessions_values() -> None:
    agg = BarAggregator()
    agg.on_tick(tick("A", 0, 20.5, 101.0))
    (bar,) = agg.on_tick(tick("A", 0, 21.5, 130.0, post=True))  # a post-market trade at 16:30 New York
    assert (bar.ts, bar.close, bar.origin) == (close_of(0), 101.0, "feed")


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


def test_the_reference_clock_closes_a_session_whose_closing_tick_never_came() -> None:
    history = FakeHistory({"A": [0]})
    agg = BarAggregator(GuardedHistory(history), close_grace_ms=HOUR_MS)
    agg.on_tick(tick("A", 0, 15, 101.0))
    agg.on_tick(tick("B", 0, 16, 50.0))  # and then the whole feed goes quiet: no watermark moves
    assert agg.close_due(at(0, 20.9)) == [] and agg.open_bars == 2  # before the close: nothing
    closed = agg.close_due(at(0, 21))
    assert [(b.ticker, b.origin, b.close) for b in closed] == [("A", "stored", 11.0), ("B", "partial", 50.0)]
    assert agg.open_bars == 0 and agg.watermark_ms == at(0, 16)  # the market clock is the ticks' alone
    assert agg.on_tick(tick("A", 0, 21, 101.5, post=True)) == [] and agg.counters["late_ticks"] == 1


class FailingHistory(FakeHistory):
    """Stored bars whose files cannot be opened for the first ``failures`` reads."""

    def __init__(self, days: dict[str, list[int]], failures: int) -> None:
        super().__init__(days)
        self.failures = failures

    def between(self, ticker: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        if self.failures > 0:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().between(ticker, start, end)


def test_unreadable_history_leaves_an_unfilled_gap_and_is_retried_before_giving_up() -> None:
    flaky = GuardedHistory(FailingHistory({"A": [1, 2]}, failures=1), attempts=2)
    agg = BarAggregator(flaky)
    agg.seed("A", close_of(0))
    closed = agg.on_tick(tick("A", 3, 21, 120.0, post=True))  # one failed open, retried at once: filled
    assert [b.origin for b in closed] == ["backfill", "backfill", "feed"] and flaky.error is None
    broken = GuardedHistory(FailingHistory({"A": [1, 2]}, failures=2), attempts=2)
    agg = BarAggregator(broken)
    agg.seed("A", close_of(0))
    closed = agg.on_tick(tick("A", 3, 21, 120.0, post=True))  # never readable: the bar goes on, the gap stays
    assert [b.origin for b in closed] == ["feed"] and agg.counters["bars_unfilled"] == 2
    assert broken.failures == 1 and "Too many open files" in broken.error
    assert broken.between("A", close_of(1), close_of(2)).shape[0] == 2 and broken.error is None  # readable again


def test_gap_is_backfilled_in_time_order_from_the_calendars_sessions() -> None:
    history = FakeHistory({"A": [1, 2, 3, 4]})
    agg = BarAggregator(history)
    agg.seed("A", close_of(0))
    closed = agg.on_tick(tick("A", 7, 21, 120.0, post=True))  # feed down from Tuesday to next Monday
    assert [b.ts for b in closed] == [close_of(d) for d in (1, 2, 3, 4, 7)]
    assert [b.origin for b in closed] == ["backfill", "backfill", "backfill", "backfill", "feed"]
    assert agg.counters["bars_backfill"] == 4 and agg.unfilled == {}


def test_a_session_the_history_cannot_fill_is_counted_and_remembered() -> None:
    history = FakeHistory({"A": [1, 3]})  # Wednesday 2 was never stored (ingestion had not run)
    agg = BarAggregator(history)
    agg.seed("A", close_of(0))
    closed = agg.on_tick(tick("A", 4, 21, 120.0, post=True))
    assert [b.ts for b in closed] == [close_of(d) for d in (1, 3, 4)]
    assert agg.counters["bars_unfilled"] == 1
    assert agg.unfilled == {"A": {int(close_of(2).value // 1_000_000)}}
    assert agg.forget_unfilled("A") and agg.unfilled == {}


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


def test_a_weekend_and_a_holiday_are_no_gap() -> None:
    history = FakeHistory({"A": [0, 4, 7]})
    agg = BarAggregator(history)
    agg.seed("A", close_of(4))  # Friday
    assert [b.origin for b in agg.on_tick(tick("A", 7, 21, 100.0, post=True))] == ["feed"]
    presidents_day = pd.Timestamp("2024-02-19", tz="UTC")  # a Monday the exchange is closed
    agg.seed("A", close_of(11))  # Friday before it
    assert [b.origin for b in agg.on_tick(tick("A", 1, 21, 100.0, post=True, base=presidents_day))] == ["feed"]
    assert history.queries == [] and agg.counters["bars_unfilled"] == 0


def hourly_ticks(ticker: str, session: str, bars: list[tuple[float, float, float, float, int]]) -> list[Tick]:
    """Three ticks per hourly bar (open, the extremes, the close) with the session's running values."""
    clock = BarClock(MarketTime("XNYS", "1h"))
    grid = clock.calendar.bar_grid("1h", *clock.calendar.session_range(session, session))
    out, day_volume, high, low = [], 0, -1e9, 1e9
    session_open = bars[0][0]
    for (open_, hi, lo, close, volume), start, end in zip(
        bars, grid.start_ns // 10**6, grid.close_ns // 10**6, strict=False
    ):
        for k, (price, share) in enumerate(((open_, 0.2), (hi, 0.3), (lo, 0.3), (close, 0.2))):
            day_volume += int(volume * share)
            high, low = max(high, price), min(low, price)
            out.append(
                Tick(ticker, price, int(start + (end - start) * (k + 1) // 4), day_volume, session_open, high, low)
            )
    return out


def test_intraday_bars_are_rebuilt_exactly_from_their_ticks() -> None:
    wanted = [(100.0, 101.0, 99.5, 100.5, 1000), (100.5, 102.0, 100.0, 101.5, 2000), (101.5, 101.6, 98.0, 99.0, 500)]
    agg = BarAggregator(clock=BarClock(MarketTime("XNYS", "1h")))
    closed = [bar for t in hourly_ticks("A", "2019-07-03", wanted) for bar in agg.on_tick(t)]
    assert [str(b.ts) for b in closed] == ["2019-07-03 14:30:00+00:00", "2019-07-03 15:30:00+00:00"]
    assert [(b.open, b.high, b.low, b.close, b.volume, b.origin) for b in closed] == [
        (*w[:4], float(w[4]), "feed") for w in wanted[:2]
    ]


def test_intraday_bars_of_a_half_day_end_with_its_short_last_bar_on_the_post_market_tick() -> None:
    clock = BarClock(MarketTime("XNYS", "1h"))
    agg = BarAggregator(clock=clock)
    wanted = [(100.0 + k, 101.0 + k, 99.0 + k, 100.5 + k, 100) for k in range(4)]  # 13:30-17:00 UTC on July 3
    closed = [bar for t in hourly_ticks("A", "2019-07-03", wanted) for bar in agg.on_tick(t)]
    post = Tick(
        "A", 103.5, at(0, 17, pd.Timestamp("2019-07-03", tz="UTC")), 400, 100.0, 104.0, 99.0, MarketHours.POST_MARKET
    )
    closed += agg.on_tick(post)
    assert [str(b.ts)[11:16] for b in closed] == ["14:30", "15:30", "16:30", "17:00"]
    assert closed[-1].volume == 100.0 and closed[-1].origin == "feed"


def test_the_clock_names_the_bars_missed_between_two_instants() -> None:
    clock = BarClock(MarketTime("XNYS", "1h"))
    first = int(pd.Timestamp("2019-07-03 16:30Z").value // 1_000_000)
    later = int(pd.Timestamp("2019-07-05 14:30Z").value // 1_000_000)
    assert [str(BarClock.ts(ms))[5:16] for ms in clock.closes_between(first, later)] == ["07-03 17:00"]
    assert clock.last_close_before(int(pd.Timestamp("2019-07-04 12:00Z").value // 1_000_000)) == int(
        pd.Timestamp("2019-07-03 17:00Z").value // 1_000_000
    )
