"""The replay feed: ticks that end at each bar's exact values, a shared live clock, subscriptions, health."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import defaultdict

import pandas as pd
import pytest
from websockets.asyncio.client import connect

from quant_engine.backends import make_group_stores, make_offline_store
from quant_engine.bridge.bars import BarAggregator, BarClock
from quant_engine.bridge.feed_server import (
    DROP_REASON_OF_KIND,
    MALFORMED_KINDS,
    FaultPlan,
    FeedServer,
    ReplayClock,
    ReplaySchedule,
    malformed_frame,
)
from quant_engine.bridge.ticks import MarketHours, Tick
from quant_engine.bridge.wire import FrameError, decode_frame, subscribe_message, unsubscribe_message
from quant_engine.calendars import MarketTime
from quant_engine.data.synthetic import SyntheticMarket

MARKET = SyntheticMarket(n_tickers=4, seed=5, start="2024-01-01", end="2024-06-28")
BARS = MARKET.fetch(None, "2024-03-04", "2024-03-29")  # daylight saving starts on March 10 in New York
#: Long enough that a replay at FAST speed outlasts any network test (about 20 s).
LONG_BARS = MARKET.fetch(None, "2024-03-04", "2024-06-28")
#: A regular session (6.5 market hours) every quarter of a second.
SESSION_MS = 23_400_000
FAST = SESSION_MS / 250
CLOCK = BarClock()


def grouped(ticks: list[Tick]) -> dict[tuple[str, int], list[Tick]]:
    """Ticks per (ticker, bar close), the close found on the calendar."""
    sessions: dict[tuple[str, int], list[Tick]] = defaultdict(list)
    for tick in ticks:
        sessions[(tick.ticker, CLOCK.locate(tick.time_ms).close_ms)].append(tick)
    return sessions


@pytest.mark.parametrize("ticks_per_bar", [4, 9])
def test_each_session_walks_to_the_bars_exact_values_and_ends_with_one_post_market_tick(ticks_per_bar) -> None:
    schedule = ReplaySchedule(BARS, ticks_per_bar=ticks_per_bar, seed=3)
    ticks = [decode_frame(_encode(tick)) for _, tick in schedule.ticks()]  # through the wire, exactly
    sessions = grouped(ticks)
    assert len(sessions) == len(BARS)
    for bar in BARS.itertuples(index=False):
        session = sessions[(bar.ticker, int(bar.ts.value // 1_000_000))]
        regular, post = session[:-1], session[-1]
        assert len(regular) == ticks_per_bar and all(t.market_hours == MarketHours.REGULAR_MARKET for t in regular)
        assert post.market_hours == MarketHours.POST_MARKET and post.time_ms == bar.ts.value // 1_000_000
        assert regular[-1].price == bar.close and regular[0].price == bar.open
        for earlier, later in zip(session, session[1:], strict=False):
            assert later.time_ms > earlier.time_ms
            assert later.day_high >= earlier.day_high and later.day_low <= earlier.day_low
            assert later.day_volume >= earlier.day_volume
        for k, tick in enumerate(regular):
            prices = [t.price for t in regular[: k + 1]]
            assert (tick.day_high, tick.day_low, tick.open_price) == (max(prices), min(prices), bar.open)
            assert bar.low <= tick.price <= bar.high
        final = (post.price, post.open_price, post.day_high, post.day_low, post.day_volume)
        assert final == (bar.close, bar.open, bar.high, bar.low, int(bar.volume))
        assert (regular[-1].day_high, regular[-1].day_low, regular[-1].day_volume) == (bar.high, bar.low, bar.volume)


def _encode(tick: Tick) -> str:
    from quant_engine.bridge.wire import encode_tick

    return encode_tick(tick)


def test_tickers_interleave_in_time_and_each_ticker_moves_strictly_forward() -> None:
    schedule = ReplaySchedule(BARS, ticks_per_bar=5)
    played = list(schedule.ticks())
    positions = [p for p, _ in played]
    assert positions == sorted(positions)
    assert [t.time_ms for _, t in played] == sorted(t.time_ms for _, t in played)
    last: dict[str, int] = {}
    for position, tick in played:
        assert tick.time_ms > last.get(tick.ticker, 0)
        last[tick.ticker] = tick.time_ms
        assert schedule.position_of(tick.time_ms) == position
    assert positions[-1] == schedule.length_ms == len(BARS["ts"].unique()) * SESSION_MS  # no half day in March


def test_a_days_ticks_do_not_depend_on_the_range_replayed() -> None:
    short = ReplaySchedule(MARKET.fetch(None, "2024-03-14", "2024-03-15"), ticks_per_bar=6, seed=9)
    long = ReplaySchedule(BARS, ticks_per_bar=6, seed=9)
    day = pd.Timestamp("2024-03-15 20:00", tz="UTC").value // 1_000_000  # a summer-time close
    assert [t for _, t in short.ticks() if t.time_ms <= day and t.time_ms > day - SESSION_MS] == [
        t for _, t in long.ticks() if t.time_ms <= day and t.time_ms > day - SESSION_MS
    ]


def test_sessions_follow_the_calendar_across_daylight_saving_and_a_half_day() -> None:
    bars = SyntheticMarket(n_tickers=2, seed=5, start="2024-11-01", end="2024-12-31").fetch(
        None, "2024-11-01", "2024-11-29"
    )  # DST ends on November 3; November 28 is a holiday, 29 a half day
    played = [t for _, t in ReplaySchedule(bars, ticks_per_bar=4).ticks()]
    post = sorted(
        {pd.Timestamp(t.time_ms, unit="ms", tz="UTC") for t in played if t.market_hours == MarketHours.POST_MARKET}
    )
    assert post[:2] == [pd.Timestamp("2024-11-01 20:00Z"), pd.Timestamp("2024-11-04 21:00Z")]
    assert post[-1] == pd.Timestamp("2024-11-29 18:00Z") and len(post) == bars["ts"].nunique()
    first_tick = min(t.time_ms for t in played if pd.Timestamp(t.time_ms, unit="ms").day == 29)
    assert pd.Timestamp("2024-11-29 14:30Z").value // 10**6 < first_tick <= post[-1].value // 10**6


@pytest.mark.parametrize(
    ("calendar", "bar_size", "start", "end"),
    [
        ("XNYS", "1h", "2019-07-01", "2019-07-05"),
        ("24/5", "1h", "2020-01-02", "2020-01-07"),
        ("XNYS", "5m", "2019-11-27", "2019-11-29"),
    ],
)
def test_intraday_replay_gives_back_each_stored_bar_through_the_bridges_aggregator(
    calendar, bar_size, start, end
) -> None:
    market_time = MarketTime(calendar, bar_size)
    sessions = market_time.exchange.session_range(start, end)
    first_open, last_close = (
        pd.Timestamp(int(t), tz="UTC")
        for t in (market_time.exchange.open_ns[sessions[0]], market_time.exchange.close_ns[sessions[1] - 1])
    )
    bars = SyntheticMarket(n_tickers=3, seed=2, freq=bar_size, calendar=calendar, start=start, end=end).fetch(
        None, first_open, last_close
    )
    schedule = ReplaySchedule(bars, market_time=market_time, ticks_per_bar=5, seed=1)
    aggregator = BarAggregator(clock=BarClock(market_time))
    closed = [bar for _, tick in schedule.ticks() for bar in aggregator.on_tick(decode_frame(_encode(tick)))]
    rebuilt = pd.DataFrame([{**b.as_record(), "origin": b.origin} for b in closed])
    assert set(rebuilt["origin"]) == {"feed"} and len(rebuilt) == len(bars)
    pd.testing.assert_frame_equal(
        rebuilt.drop(columns="origin").sort_values(["ticker", "ts"]).reset_index(drop=True),
        bars.reset_index(drop=True),
        check_dtype=False,
    )


@pytest.mark.parametrize("timeline", ["sessions", "calendar"])
def test_starting_from_a_position_skips_exactly_the_earlier_ticks(timeline) -> None:
    schedule = ReplaySchedule(BARS, ticks_per_bar=4, timeline=timeline)
    everything = list(schedule.ticks())
    cut = everything[len(everything) // 2][0] - 1
    assert list(schedule.ticks(from_position=cut)) == [(p, t) for p, t in everything if p >= cut]


def test_schedule_refuses_what_it_cannot_replay_exactly() -> None:
    with pytest.raises(ValueError, match="ticks_per_bar=3"):
        ReplaySchedule(BARS, ticks_per_bar=3)
    fine = BARS.copy()
    fine.loc[0, ["open", "high"]] = [round(fine.loc[0, "open"] + 0.001, 3), round(fine.loc[0, "high"] + 0.001, 3)]
    with pytest.raises(ValueError, match="more than 2 decimals"):
        ReplaySchedule(fine, price_hint=2)
    assert ReplaySchedule(BARS).price_hint == 2 and ReplaySchedule(fine).price_hint == 3  # the data says
    off_calendar = BARS.copy()
    off_calendar.loc[0, "ts"] = pd.Timestamp("2024-03-04 21:30Z")
    with pytest.raises(ValueError, match="is not a bar close of 1d bars on the XNYS calendar"):
        ReplaySchedule(off_calendar)
    fractional = BARS.copy()
    fractional.loc[1, "volume"] = 10.5
    with pytest.raises(ValueError, match="fractional volume"):
        ReplaySchedule(fractional)
    with pytest.raises(ValueError, match="timeline"):
        ReplaySchedule(BARS, timeline="weekly")
    with pytest.raises(ValueError, match="no bars"):
        ReplaySchedule(BARS.iloc[:0])


def test_anchor_file_gives_the_same_clock_after_a_restart(tmp_path) -> None:
    path = tmp_path / "anchor.json"
    first = ReplayClock.from_anchor_file(path, 120.0, now=1_000.0)
    assert ReplayClock.from_anchor_file(path, 120.0, now=5_000.0) == first
    assert first.position_ms(1_010.0) == 1_200_000.0 and first.wall_time(1_200_000.0) == 1_010.0
    with pytest.raises(ValueError, match="speed 120.0, not 60.0"):
        ReplayClock.from_anchor_file(path, 60.0)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a replay anchor file"):
        ReplayClock.from_anchor_file(path, 120.0)
    with pytest.raises(ValueError, match="speed=0"):
        ReplayClock(anchor=0.0, speed=0)


def test_every_malformed_kind_is_dropped_for_its_reason() -> None:
    tick = Tick("SYN01", 101.25, 1_709_586_000_000, 100, 100.0, 102.0, 99.5)
    previous = Tick("SYN01", 101.0, 1_709_585_000_000, 50, 100.0, 102.0, 99.5)
    for kind in MALFORMED_KINDS:
        frame = malformed_frame(kind, tick, previous)
        try:
            decoded = decode_frame(frame)
        except FrameError as exc:
            assert exc.reason == DROP_REASON_OF_KIND[kind], kind
            continue
        reason = DROP_REASON_OF_KIND[kind]
        if reason == "unknown_ticker":
            assert decoded.ticker not in MARKET.tickers
        elif reason == "duplicate":
            assert decoded == previous
        elif reason == "future_time":  # a real tick's fields, stamped in 2099: only a reference clock tells
            assert decoded.ticker == tick.ticker and decoded.time_ms > time.time() * 1000 + 50 * 365 * 86_400_000
        else:
            assert reason == "time_backwards" and decoded.time_ms < previous.time_ms
    with pytest.raises(ValueError, match="there is none yet"):
        malformed_frame("duplicate", tick, None)
    with pytest.raises(ValueError, match="stall_rate=2"):
        FaultPlan(stall_rate=2)


async def _receive(ws, count: int) -> list[Tick]:
    ticks = []
    async with asyncio.timeout(20):
        while len(ticks) < count:
            ticks.append(decode_frame(await ws.recv()))
    return ticks


def test_only_subscribed_tickers_are_sent_and_unsubscribe_stops_them() -> None:
    schedule = ReplaySchedule(LONG_BARS, ticks_per_bar=8)
    order = [t for _, t in schedule.ticks()]

    async def main() -> tuple[list[Tick], list[Tick]]:
        async with FeedServer(schedule, ReplayClock(time.time(), FAST), port=0) as server:
            async with connect(server.url) as ws:
                await ws.send(subscribe_message(["SYN01"]))
                first = await _receive(ws, 6)
                await ws.send(subscribe_message(["SYN02"]))
                await ws.send(unsubscribe_message(["SYN01"]))
                while (tick := decode_frame(await ws.recv())).ticker != "SYN02":
                    pass  # SYN01 ticks sent before the server read the change
                second = [tick, *await _receive(ws, 12)]
        return first, second

    first, second = asyncio.run(main())
    assert {t.ticker for t in first} == {"SYN01"} and {t.ticker for t in second} == {"SYN02"}
    for received in (first, second):  # contiguous runs of the schedule: nothing lost, nothing added
        expected = [t for t in order if t.ticker == received[0].ticker]
        start = expected.index(received[0])
        assert received == expected[start : start + len(received)]


def test_health_answers_plain_http_on_the_feed_port() -> None:
    schedule = ReplaySchedule(LONG_BARS, ticks_per_bar=4)

    async def main() -> tuple[dict, str]:
        async with FeedServer(schedule, ReplayClock(time.time(), FAST), port=0) as server:
            reply = await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{server.port}/health", None, 5)
            return json.loads(reply.read()), reply.headers["Content-Type"]

    health, content_type = asyncio.run(main())
    assert content_type == "application/json"
    assert health["status"] in ("ok", "finished") and health["tickers"] == 4 and health["speed"] == FAST
    assert health["replay_time"].startswith("2024-0")


def test_a_restart_with_the_same_anchor_resumes_at_the_live_position(tmp_path) -> None:
    schedule = ReplaySchedule(LONG_BARS, ticks_per_bar=8)
    anchor = tmp_path / "anchor.json"

    async def main():
        clock = ReplayClock.from_anchor_file(anchor, FAST)
        received: list[Tick] = []
        async with FeedServer(schedule, clock, port=0) as server:
            port = server.port
            async with connect(server.url) as ws:
                await ws.send(subscribe_message(list(schedule.tickers)))
                received += await _receive(ws, 10)
        stopped_at = clock.position_ms(time.time())
        await asyncio.sleep(0.3)  # the feed is down: what it would have sent meanwhile is gone
        restarted = ReplayClock.from_anchor_file(anchor, FAST)
        resumed_at = restarted.position_ms(time.time())
        async with FeedServer(schedule, restarted, port=port) as server:
            async with connect(server.url) as ws:
                await ws.send(subscribe_message(list(schedule.tickers)))
                after = await _receive(ws, 10)
        return clock, restarted, stopped_at, resumed_at, received, after

    clock, restarted, stopped_at, resumed_at, before, after = asyncio.run(main())
    assert restarted == clock
    assert all(schedule.position_of(t.time_ms) <= stopped_at for t in before)
    assert all(schedule.position_of(t.time_ms) >= resumed_at for t in after)
    assert resumed_at > stopped_at


def test_feed_serve_command_reads_its_bars_from_either_source() -> None:
    from quant_engine.cli import build_parser
    from quant_engine.cli.bridge import _load_bars
    from quant_engine.features.ingest import IngestionRequest, ingest

    parser = build_parser()
    args = parser.parse_args(
        [
            "feed",
            "serve",
            "--source",
            "store",
            "--tickers",
            "SYN01",
            "--start",
            "2024-03-04",
            "--end",
            "2024-03-08",
            "--port",
            "0",
            "--malformed-rate",
            "0.1",
        ]
    )
    assert args.port == 0 and args.malformed_rate == 0.1 and args.speed == 60.0
    with pytest.raises(ValueError, match="run `quant-engine ingest` first"):
        _load_bars(args)
    ingest(
        IngestionRequest.build("synthetic", "2024-03-04", "2024-03-08", tickers="SYN01", group=make_offline_store()),
        make_group_stores(),
    )
    stored, stored_time = _load_bars(args)
    synthetic, synthetic_time = _load_bars(
        parser.parse_args(["feed", "serve", "--tickers", "SYN01", "--start", "2024-03-04", "--end", "2024-03-08"])
    )
    pd.testing.assert_frame_equal(stored, synthetic)
    assert len(stored) == 5 and stored_time == synthetic_time == MarketTime("XNYS", "1d")
