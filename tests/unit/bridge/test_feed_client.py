"""The feed client: reconnects with growing jittered backoff, resubscribes, detects stale feeds,
drops and counts every kind of bad frame, and keeps working after 10,000 of them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import math
import random
import socket
import time
from collections.abc import Callable

import pytest
from websockets.asyncio.server import serve
from yfinance.pricing_pb2 import PricingData

from quant_engine.bridge.feed_client import DROP_REASONS, Backoff, FeedClient, FeedEvent
from quant_engine.bridge.feed_server import (
    DROP_REASON_OF_KIND,
    FUTURE_TIME_MS,
    MALFORMED_KINDS,
    FaultPlan,
    FeedServer,
    ReplayClock,
    ReplaySchedule,
)
from quant_engine.bridge.ticks import Tick
from quant_engine.bridge.wire import encode_tick
from quant_engine.data.synthetic import SyntheticMarket

BARS = SyntheticMarket(n_tickers=3, seed=2, start="2024-01-01", end="2024-12-31").fetch(
    None, "2024-02-01", "2024-06-28"
)
SCHEDULE = ReplaySchedule(BARS, ticks_per_bar=8, seed=1)
ORDER = [t for _, t in SCHEDULE.ticks()]
#: A session every quarter of a second: a tick per ticker about every 31 ms.
FAST = 23_400_000 / 250  # a regular session (6.5 market hours) every quarter of a second
TICKERS = ["SYN00", "SYN02"]


def fast_client(url: str, **options) -> FeedClient:
    settings = dict(stale_after_s=5.0, backoff_initial_s=0.02, backoff_max_s=0.5, seed=4, open_timeout=5.0)
    return FeedClient(url, TICKERS, **{**settings, **options})


async def collect(client: FeedClient, done: Callable[[list[Tick]], bool], timeout: float = 30.0) -> list[Tick]:
    """Ticks from ``client`` until ``done(ticks)``; the consumer stopping closes the connection."""
    ticks: list[Tick] = []
    async with asyncio.timeout(timeout), contextlib.aclosing(client.ticks()) as stream:
        async for tick in stream:
            ticks.append(tick)
            if done(ticks):
                break
    return ticks


def assert_clean_stream(ticks: list[Tick]) -> None:
    """Per ticker: strictly forward in time, no repeats, and every tick one the schedule holds."""
    known = set(ORDER)
    last: dict[str, int] = {}
    for tick in ticks:
        assert tick in known, tick
        assert tick.time_ms > last.get(tick.ticker, 0)
        last[tick.ticker] = tick.time_ms


def test_backoff_ceilings_grow_to_the_cap_and_delays_are_seeded_full_jitter() -> None:
    backoff = Backoff(initial_s=0.1, max_s=1.0, factor=2.0, seed=7)
    ceilings, delays = [], []
    for _ in range(8):
        ceilings.append(backoff.ceiling_s)
        delays.append(backoff.next_delay())
    assert ceilings == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0])
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # jittered, not a fixed ladder
    again = Backoff(initial_s=0.1, max_s=1.0, factor=2.0, seed=7)
    assert [again.next_delay() for _ in range(8)] == delays
    backoff.reset()
    assert backoff.ceiling_s == pytest.approx(0.1)
    for bad in ({"initial_s": 0}, {"initial_s": 2.0, "max_s": 1.0}, {"factor": 1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Backoff(**bad)


def test_drop_at_accept_backs_off_ever_longer_then_resubscribes_and_streams() -> None:
    events: list[FeedEvent] = []

    async def main() -> tuple[list[Tick], FeedClient, FeedServer]:
        async with FeedServer(
            SCHEDULE, ReplayClock(time.time(), FAST), port=0, faults=FaultPlan(drop_at_accept=4)
        ) as server:
            client = fast_client(server.url, on_event=events.append)
            ticks = await collect(client, lambda got: len(got) >= 20)
            return ticks, client, server

    ticks, client, server = asyncio.run(main())
    backoffs = [e for e in events if e.kind == "backoff"]
    # four connections dropped right after the handshake: the backoff was never reset between them
    assert [e.attempt for e in backoffs] == [0, 1, 2, 3]
    assert all(0 <= e.delay_s <= 0.02 * 2**e.attempt for e in backoffs)
    assert client.stats.connects == 5 and client.stats.reconnects == 4 and client.stats.disconnects == 5
    assert server.accepted == 5
    assert {t.ticker for t in ticks} == set(TICKERS)  # subscribed again on the connection that stayed
    assert_clean_stream(ticks)
    assert client.backoff.attempt == 0  # the connection that delivered reset it


def test_a_server_dropping_mid_stream_is_rejoined_resubscribed_and_backoff_restarts() -> None:
    events: list[FeedEvent] = []
    ours = iter([t for t in ORDER if t.ticker in TICKERS])
    subscriptions: list[dict] = []

    async def three_ticks_then_drop(ws) -> None:
        subscriptions.append(json.loads(await ws.recv()))
        for _ in range(3):
            await ws.send(encode_tick(next(ours)))
        ws.transport.abort()

    async def main() -> tuple[list[Tick], FeedClient]:
        async with serve(three_ticks_then_drop, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            client = fast_client(f"ws://127.0.0.1:{port}", on_event=events.append)
            ticks = await collect(client, lambda got: len(got) == 12)
            return ticks, client

    ticks, client = asyncio.run(main())
    assert ticks == [t for t in ORDER if t.ticker in TICKERS][:12]  # nothing lost, nothing repeated
    assert subscriptions == [{"subscribe": TICKERS}] * 4  # subscribed again on every connection
    assert client.stats.connects == 4 and client.stats.disconnects == 4 and not client.stats.connected
    # each dropped connection had delivered ticks, so every retry starts from the first ceiling
    assert [e.attempt for e in events if e.kind == "backoff"] == [0, 0, 0]


def test_a_stalled_feed_is_detected_and_reconnected() -> None:
    events: list[FeedEvent] = []

    async def main() -> FeedClient:
        faults = FaultPlan(seed=1, stall_rate=0.2, stall_s=60.0)  # each connection soon goes silent for good
        async with FeedServer(SCHEDULE, ReplayClock(time.time(), FAST), port=0, faults=faults) as server:
            client = fast_client(server.url, stale_after_s=0.3, on_event=events.append)
            await collect(client, lambda got: client.stats.stale_reconnects >= 2)
            return client

    client = asyncio.run(main())
    assert client.stats.stale_reconnects >= 2 and client.stats.reconnects >= 2
    assert [e.kind for e in events].count("stale") == client.stats.stale_reconnects
    assert client.stats.last_tick_wall_time is not None


def test_injected_faults_of_every_kind_are_dropped_and_counted_by_reason() -> None:
    async def main() -> tuple[list[Tick], FeedClient, dict[str, int]]:
        faults = FaultPlan(seed=11, malformed_rate=0.9)
        server = await FeedServer(SCHEDULE, ReplayClock(time.time(), FAST), port=0, faults=faults).start()
        client = fast_client(server.url)
        consumer = asyncio.create_task(collect(client, lambda got: False))
        async with asyncio.timeout(30):
            while client.stats.ticks < 150:
                await asyncio.sleep(0.01)
            await server.stop()  # everything sent before the close reaches the client first
            while client.stats.connected:
                await asyncio.sleep(0.01)
        await client.close()
        return await consumer, client, dict(server.injected)

    ticks, client, injected = asyncio.run(main())
    assert all(injected[kind] > 0 for kind in MALFORMED_KINDS), injected
    expected = dict.fromkeys(DROP_REASONS, 0)
    for kind, count in injected.items():
        expected[DROP_REASON_OF_KIND[kind]] += count
    assert client.stats.dropped == expected
    assert client.stats.frames == client.stats.ticks + sum(expected.values())
    assert_clean_stream(ticks)
    by_ticker = {name: [t for t in ORDER if t.ticker == name] for name in TICKERS}
    for name in TICKERS:  # nothing lost either: a contiguous run of the schedule per ticker
        got = [t for t in ticks if t.ticker == name]
        start = by_ticker[name].index(got[0])
        assert got == by_ticker[name][start : start + len(got)]


def _fuzz_frames(rng: random.Random, anchor: Tick, count: int) -> list[str | bytes]:
    """``count`` frames none of which is a new valid tick of a subscribed ticker."""

    def pricing(**fields) -> str:
        return json.dumps(
            {"type": "pricing", "message": base64.b64encode(PricingData(**fields).SerializeToString()).decode()}
        )

    good = dict(
        id=anchor.ticker,
        price=anchor.price,
        time=anchor.time_ms,
        day_volume=anchor.day_volume,
        open_price=anchor.open_price,
        day_high=anchor.day_high,
        day_low=anchor.day_low,
        market_hours=1,
        price_hint=2,
    )
    breakers = [
        {"price": math.nan},
        {"price": -rng.uniform(0, 100)},
        {"price": 0.0},
        {"day_high": math.inf},
        {"day_low": anchor.day_high + 1},
        {"day_volume": -rng.randint(1, 10**9)},
        {"time": anchor.time_ms // 1000},
        {"time": -rng.randint(1, 10**6)},
        {"id": ""},
        {"market_hours": rng.randint(4, 100)},
        {"price_hint": rng.randint(13, 10**6)},
        {"id": "NOT" + str(rng.randint(0, 10**6))},
        {"time": anchor.time_ms - rng.randint(1, 10**6)},  # backwards
        {"time": rng.randint(4_000_000_000_000, 4_102_444_800_000)},  # 2096..2100: within the wire's range
    ]
    frames: list[str | bytes] = []
    for _ in range(count):
        kind = rng.randrange(8)
        if kind == 0:
            frames.append(rng.randbytes(rng.randint(0, 120)))
        elif kind == 1:
            frames.append("".join(chr(rng.randint(32, 0x2FF)) for _ in range(rng.randint(0, 80))))
        elif kind == 2:
            frames.append(json.dumps(rng.choice([[1, 2], {"type": "pricing"}, {"message": rng.random()}, None, "x"])))
        elif kind == 3:
            frames.append(
                json.dumps({"type": "pricing", "message": "".join(rng.choice("!@#$%^&*()") for _ in range(12))})
            )
        elif kind == 4:
            frames.append(
                json.dumps({"type": "pricing", "message": base64.b64encode(rng.randbytes(rng.randint(1, 60))).decode()})
            )
        elif kind == 5:
            frames.append(pricing(**{**good, **rng.choice(breakers)}))
        elif kind == 6:
            frames.append(encode_tick(anchor))  # duplicate of the last valid tick
        else:
            raw = bytearray(PricingData(**good).SerializeToString())
            cut = rng.randint(1, len(raw) - 1)
            frames.append(
                json.dumps({"type": "pricing", "message": base64.b64encode(bytes(raw[:cut]) + b"\xff").decode()})
            )
    return frames


def test_the_client_keeps_working_after_10000_malformed_frames() -> None:
    rng = random.Random(20_241)
    anchor = ORDER[0] if ORDER[0].ticker in TICKERS else next(t for t in ORDER if t.ticker in TICKERS)
    garbage = _fuzz_frames(rng, anchor, 10_000)
    later = [t for t in ORDER if t.ticker in TICKERS and t.time_ms > anchor.time_ms][:50]

    async def feed(ws) -> None:
        await ws.recv()  # the subscription
        for frame in [encode_tick(anchor), *garbage, *(encode_tick(t) for t in later)]:
            await ws.send(frame)
        await ws.wait_closed()

    async def main() -> tuple[list[Tick], FeedClient]:
        async with serve(feed, "127.0.0.1", 0, max_size=2**16) as server:
            port = server.sockets[0].getsockname()[1]
            client = fast_client(f"ws://127.0.0.1:{port}")
            ticks = await collect(client, lambda got: len(got) == 51, timeout=120)
            return ticks, client

    ticks, client = asyncio.run(main())
    assert ticks == [anchor, *later]
    assert client.stats.frames == 10_051 and sum(client.stats.dropped.values()) == 10_000
    assert client.stats.connects == 1 and client.stats.disconnects == 1
    counted = {reason for reason, n in client.stats.dropped.items() if n}
    assert counted == set(DROP_REASONS)  # the generator reached every reason


def test_close_ends_the_stream_while_the_server_is_down() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main() -> FeedClient:
        client = fast_client(f"ws://127.0.0.1:{port}", backoff_max_s=0.05)
        consumer = asyncio.create_task(collect(client, lambda got: False))
        while client.stats.failed_connects < 3:
            await asyncio.sleep(0.01)
        await client.close()
        assert await asyncio.wait_for(consumer, 5) == []
        return client

    client = asyncio.run(main())
    assert client.stats.connects == 0 and client.stats.failed_connects >= 3 and client.closed
    assert "connect" in client.stats.last_error


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="url="):
        FeedClient("http://example.com", ["A"])
    with pytest.raises(TypeError, match="not one string"):
        FeedClient("ws://x", "AAPL")
    with pytest.raises(ValueError, match="stale_after_s=0"):
        FeedClient("ws://x", ["A"], stale_after_s=0)
    with pytest.raises(ValueError, match="heartbeat_s"):
        FeedClient("ws://x", ["A"], heartbeat_s=-1)


def test_a_far_future_tick_is_dropped_before_it_can_silence_its_ticker() -> None:
    """One frame stamped 2099 (inside the wire's range) would be the ticker's newest time for good; it is
    dropped as future_time against the reference clock, and the ticker's real ticks keep coming."""
    real = [t for t in ORDER if t.ticker in TICKERS][:6]
    frames = [
        encode_tick(real[0]),
        encode_tick(dataclasses.replace(real[0], time_ms=FUTURE_TIME_MS)),
        *(encode_tick(t) for t in real[1:]),
    ]

    async def feed(ws) -> None:
        await ws.recv()
        for frame in frames:
            await ws.send(frame)
        await ws.wait_closed()

    async def main(expect: int = 6, **options) -> tuple[list[Tick], FeedClient]:
        async with serve(feed, "127.0.0.1", 0) as server:
            client = fast_client(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", **options)
            return await collect(client, lambda got: len(got) == expect, timeout=10), client

    ticks, client = asyncio.run(main())  # the default reference: the wall clock plus a minute
    assert ticks == real and client.stats.dropped["future_time"] == 1
    assert client.stats.dropped["time_backwards"] == 0
    # a replay's reference: a tick later than it allows is future_time too, whatever its year
    bound = [real[1].time_ms]
    judged = FeedClient("ws://127.0.0.1:1", TICKERS, latest_time_ms=lambda: bound[0])
    assert [judged._accept(encode_tick(t)) for t in real[:2]] == real[:2]
    assert judged._accept(encode_tick(real[4])) is None and judged.stats.dropped["future_time"] == 1
    bound[0] = real[4].time_ms  # the replay moved on: the same tick is on time now
    assert judged._accept(encode_tick(real[4])) == real[4]
