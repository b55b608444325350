"""The reference clock: its bound on tick times is never behind a real replay feed, its "passed" instant never
ahead of it, on both replay timelines; auto mode learns which clock rules from the feed and its ticks."""

from __future__ import annotations

import asyncio
import json
import socket

import numpy as np
import pytest
from websockets.asyncio.server import serve

from quant_engine.bridge.clock import ReferenceClock, ReplayReading, health_url
from quant_engine.bridge.feed_server import FeedServer, ReplayClock, ReplaySchedule
from quant_engine.calendars import get_calendar
from quant_engine.data.synthetic import SyntheticMarket

NYSE = get_calendar("XNYS")
BARS = SyntheticMarket(n_tickers=2, seed=1, start="2024-01-01", end="2024-06-28").fetch(
    None, "2024-03-04", "2024-04-30"
)
SPEED = 23_400 / 0.5  # a session every half second


def test_health_url_sits_next_to_the_feed() -> None:
    assert health_url("ws://feed:8765/?v=2") == "http://feed:8765/health"
    assert health_url("wss://streamer.finance.yahoo.com/?version=2") == "https://streamer.finance.yahoo.com/health"
    with pytest.raises(ValueError, match="ws:// or wss://"):
        health_url("http://feed:8765")


def reading_of(server: FeedServer, asked: float, answered: float) -> ReplayReading:
    reading = ReplayReading.from_health(json.loads(json.dumps(server.health())), asked, answered)
    assert reading is not None
    return reading


@pytest.mark.parametrize("timeline", ["sessions", "calendar"])
def test_the_bound_is_never_behind_the_replay_and_the_passed_instant_never_ahead(timeline: str) -> None:
    schedule = ReplaySchedule(BARS, ticks_per_bar=4, timeline=timeline)
    speed = SPEED if timeline == "sessions" else SPEED * 3
    replay = ReplayClock(anchor=1_000.0, speed=speed)
    now = [0.0]
    server = FeedServer(schedule, replay, port=0, now=lambda: now[0])
    skew_s, grace_s = 0.2, 0.3
    for polled_at in (999.5, 1_000.0, 1_003.37, 1_011.9):  # before the replay starts, then while it runs
        now[0] = polled_at
        clock = ReferenceClock("replay", NYSE, max_skew_s=skew_s, wall=lambda: now[0])
        clock.take(reading_of(server, asked=polled_at - 0.004, answered=polled_at + 0.003))
        for wall in polled_at + np.linspace(0.003, 6.0, 400):
            now[0] = float(wall)
            replay_ms = schedule.time_at(replay.position_ms(wall))
            will_be_ms = schedule.time_at(replay.position_ms(wall + skew_s))
            was_ms = schedule.time_at(replay.position_ms(wall - grace_s))
            assert clock.latest_ms() >= will_be_ms >= replay_ms, (timeline, polled_at, wall)
            assert clock.passed_ms(grace_s) <= was_ms, (timeline, polled_at, wall)
        if timeline == "sessions" and polled_at == 1_003.37:  # and not needlessly loose: poll slack only
            now[0] = polled_at
            clock = ReferenceClock("replay", NYSE, max_skew_s=skew_s, wall=lambda: now[0])
            clock.take(reading_of(server, asked=polled_at - 0.004, answered=polled_at + 0.003))
            now[0] = polled_at + 1.0
            slack_s = 0.004 + 0.05  # the poll's age when answered, and the bound's reuse
            expected = (
                NYSE.advance_trading_time(
                    schedule.time_at(replay.position_ms(now[0] + skew_s)) * 10**6, int(slack_s * speed * 1e9)
                )
                // 10**6
            )
            assert clock.latest_ms() <= expected + 1


def test_the_wall_clock_and_what_auto_mode_learns() -> None:
    now = [1_700_000_000.0]
    wall = ReferenceClock("wall", NYSE, max_skew_s=60, wall=lambda: now[0])
    assert wall.latest_ms() == (now[0] + 60) * 1000 and wall.passed_ms(300) == (now[0] - 300) * 1000
    auto = ReferenceClock("auto", NYSE, max_skew_s=60, wall=lambda: now[0])
    assert auto.kind is None and auto.passed_ms(300) is None  # nothing is closed by an unknown clock
    assert auto.latest_ms() == (now[0] + 60) * 1000  # but a tick ahead of the wall clock is refused meanwhile
    auto.observe(1_600_000_000_000)  # a replay of history: not live
    assert auto.kind is None
    ahead = ReplayReading(int((now[0] + 3_600) * 1000), 0.0, 1.0, False, now[0], now[0])
    auto.take(ahead)  # a "replay" ahead of the wall clock is not believed in auto mode
    assert auto.kind is None
    auto.observe(int((now[0] - 2) * 1000))  # live ticks: the wall clock rules
    assert auto.kind == "wall" and auto.describe()["clock"] == "wall"
    replay = ReferenceClock("replay", NYSE, wall=lambda: now[0])
    replay.take(ahead)
    assert replay.kind == "replay" and replay.describe()["replay_speed"] == 1.0
    with pytest.raises(ValueError, match="mode='later'"):
        ReferenceClock("later", NYSE)
    with pytest.raises(ValueError, match="max_skew_s=0"):
        ReferenceClock("auto", NYSE, max_skew_s=0)


def test_polling_finds_a_replay_feed_and_leaves_other_feeds_to_their_ticks() -> None:
    async def poll(url: str, *, polls: int = 1) -> ReferenceClock:
        clock = ReferenceClock("auto", NYSE, health_url=url, poll_s=0.02)
        task = asyncio.create_task(clock.run())
        async with asyncio.timeout(10):
            while clock.polls + clock.poll_failures < polls and not task.done():
                await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return clock

    async def main() -> tuple[ReferenceClock, ReferenceClock, ReferenceClock]:
        schedule = ReplaySchedule(BARS, ticks_per_bar=4)
        async with FeedServer(schedule, ReplayClock(0.0, SPEED), port=0) as replay_feed:
            replay = await poll(health_url(replay_feed.url))
        async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0) as plain:  # a feed without /health
            other = await poll(f"http://127.0.0.1:{plain.sockets[0].getsockname()[1]}/health")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            down = await poll(f"http://127.0.0.1:{probe.getsockname()[1]}/health", polls=2)
        return replay, other, down

    replay, other, down = asyncio.run(main())
    assert replay.kind == "replay" and replay.reading.speed == SPEED
    assert other.kind is None and other.polls == 1  # answered, but not as a replay: asked no more
    assert down.kind is None and down.poll_failures >= 2
