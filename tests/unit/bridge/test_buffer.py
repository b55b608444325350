"""Tick buffer: coalescing is exact and keeps POST_MARKET ticks, memory stays bounded under bursts."""

from __future__ import annotations

import asyncio
import random
import tracemalloc

import pytest

from quant_engine.bridge.bars import BarAggregator
from quant_engine.bridge.buffer import TickBuffer
from quant_engine.bridge.ticks import MarketHours, Tick

DAY_MS = 86_400_000
BASE_MS = 19_730 * DAY_MS  # 2024-01-08 00:00 UTC


def tick(ticker: str, day: int, minute: int, price: float, post: bool = False) -> Tick:
    hours = MarketHours.POST_MARKET if post else MarketHours.REGULAR_MARKET
    return Tick(
        ticker,
        price,
        BASE_MS + day * DAY_MS + (14 * 60 + 30 + minute) * 60_000,
        100 + minute,
        100.0,
        max(100.0, price),
        min(100.0, price),
        hours,
    )


def session_ticks(tickers: list[str], days: int, per_session: int, seed: int) -> list[Tick]:
    rng = random.Random(seed)
    out = []
    for day in range(days):
        for minute in range(per_session):
            for ticker in tickers:
                out.append(tick(ticker, day, minute, 100.0 + rng.uniform(-5, 5)))
        out += [tick(t, day, 390, 100.0 + rng.uniform(-5, 5), post=True) for t in tickers]
    return out


def bars_of(ticks: list[Tick]) -> list[tuple]:
    agg = BarAggregator()
    return [(b.ticker, b.ts, b.open, b.high, b.low, b.close, b.volume) for t in ticks for b in agg.on_tick(t)]


def test_coalescing_gives_the_same_bars_as_every_tick() -> None:
    ticks = session_ticks(["A", "B", "C"], days=4, per_session=50, seed=1)
    buffer = TickBuffer(64, "coalesce")
    through: list[Tick] = []
    for i, t in enumerate(ticks):
        buffer.put(t)
        if i % 37 == 0:  # a slow consumer that drains now and then
            through += buffer.drain()
    through += buffer.drain()
    assert sorted(bars_of(through)) == sorted(bars_of(ticks))  # per ticker in order; across tickers any
    counters = buffer.counters()
    assert counters["coalesced"] > 0 and counters["dropped"] == 0
    assert counters["accepted"] == len(ticks) == len(through) + counters["coalesced"]


def test_post_market_ticks_are_never_coalesced_away() -> None:
    buffer = TickBuffer(16, "coalesce")
    buffer.put(tick("A", 0, 1, 101.0))
    buffer.put(tick("A", 0, 390, 102.0, post=True))  # replaces the waiting regular tick
    buffer.put(tick("A", 1, 1, 103.0))  # next session: must not replace the POST tick
    buffer.put(tick("A", 1, 2, 104.0))
    out = buffer.drain()
    assert [(t.price, t.market_hours) for t in out] == [
        (102.0, MarketHours.POST_MARKET),
        (104.0, MarketHours.REGULAR_MARKET),
    ]


def test_drop_oldest_keeps_the_newest_and_counts_the_rest() -> None:
    buffer = TickBuffer(3, "drop_oldest")
    for minute in range(10):
        buffer.put(tick("A", 0, minute, 100.0 + minute))
    assert [t.price for t in buffer.drain()] == [107.0, 108.0, 109.0]
    assert buffer.counters() == {"accepted": 10, "coalesced": 0, "dropped": 7, "depth": 0, "high_water": 3}


@pytest.mark.parametrize("policy", ["coalesce", "drop_oldest"])
def test_memory_is_bounded_under_a_burst(policy: str) -> None:
    buffer = TickBuffer(1_000, policy)
    burst = session_ticks([f"T{i:03d}" for i in range(200)], days=1, per_session=5, seed=2)
    for t in burst:  # warm up allocations so the measurement sees growth, not first use
        buffer.put(t)
    buffer.drain()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(20):  # 20 x 1,200 ticks, nobody consuming
        for t in burst:
            buffer.put(t)
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert len(buffer) <= 1_000
    assert grown < 400_000, f"buffer grew by {grown} bytes holding at most 1,000 ticks"
    assert buffer.accepted == 21 * len(burst)


def test_wait_wakes_a_consumer() -> None:
    async def main() -> list[float]:
        buffer = TickBuffer(4)
        waiter = asyncio.create_task(buffer.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        buffer.put(tick("A", 0, 1, 101.0))
        await asyncio.wait_for(waiter, 1)
        return [t.price for t in buffer.drain()]

    assert asyncio.run(main()) == [101.0]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="capacity=0"):
        TickBuffer(0)
    with pytest.raises(ValueError, match="policy='lifo'"):
        TickBuffer(4, "lifo")
