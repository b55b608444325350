"""The bridge as an exposed service, attacked: a real ``quant-engine bridge run`` fed by a real
``quant-engine feed serve`` replaying the store, with an honest subscriber connected throughout.

* abuse: waves of silent TCP connections from several addresses, an authenticated subscription
  flood, frames nested too deep or too big, wrong tokens, and frames stamped 2099 in the feed: the
  bridge stays up, the honest subscriber gets every bar once and in order (none closed early by a
  2099 market clock), each limit is counted in ``/metrics``, no token reaches the log, and its
  memory returns to within 10 % of what it was before;
* out of file descriptors: started under a low ``RLIMIT_NOFILE`` its connection cap is lowered to
  fit; then its limit is cut below what its connections take, so accepting, loading the champion
  and writing the prediction log all fail with ``EMFILE``: it keeps publishing, logs the errors a
  bounded number of times, says why it is degraded in ``/health`` and catches up once descriptors
  are free (every prediction ends up in the log);
* a session whose closing ticks never come (the feed dies mid-session) is closed by the replay's
  clock a grace period after its close, from the stored bar;
* a SageMaker endpoint that hangs, errors and recovers: processing never stops, signals are marked
  ``endpoint_unavailable`` (or answered by the local champion) and the circuit closes again.

Timings are not asserted here (bench/bridge_abuse.py measures them).
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from collections.abc import Callable

import pandas as pd
import pytest
from bridge_process import (
    TOKEN,
    BridgeProcess,
    FeedProcess,
    Subscriber,
    assert_every_bar_once_in_order,
    register_champion,
)
from fake_endpoint import FakeEndpoint
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from quant_engine.backends import make_bar_history, make_group_stores, make_model_registry, make_offline_store
from quant_engine.features.ingest import IngestionRequest, ingest
from quant_engine.monitoring.predictions import prediction_log

TICKERS = ["SYN00", "SYN01", "SYN02"]
REPLAY_START, REPLAY_END = "2021-03-01", "2021-06-30"
SESSION_WALL_S = 0.5
SPEED = 23_400 / SESSION_WALL_S


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A QE_HOME with two years of stored bars and features for three tickers, and a promoted champion."""
    home = tmp_path_factory.mktemp("abuse_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QE_HOME", str(home))
        patch.setenv("QE_BACKEND", "local")
        ingest(
            IngestionRequest.build("synthetic", "2019-06-01", REPLAY_END, tickers=TICKERS, group=make_offline_store()),
            make_group_stores(),
        )
        version = register_champion(home)
        bars = make_bar_history().read(
            TICKERS, pd.Timestamp(REPLAY_START, tz="UTC"), pd.Timestamp(REPLAY_END, tz="UTC") + pd.Timedelta(days=1)
        )
    return {"home": home, "version": version, "bars": bars}


def start(
    store: dict, settings: dict[str, str] | None = None, *, speed: float = SPEED, feed_extra=(), preexec_fn=None
) -> tuple[FeedProcess, BridgeProcess]:  # noqa: ANN001
    """The feed (its replay starting in a few seconds) and the bridge following it."""
    feed = FeedProcess(store["home"], REPLAY_START, REPLAY_END, speed=speed, anchor=time.time() + 5, extra=feed_extra)
    bridge = BridgeProcess(store["home"], feed.url, TICKERS, settings, preexec_fn=preexec_fn)
    return feed, bridge


async def subscribed(
    bridge: BridgeProcess, feed: FeedProcess, **options: object
) -> tuple[Subscriber, asyncio.Task, pd.Timestamp]:
    """An honest subscriber, and the replay time once both it and the bridge's feed are connected."""
    subscriber = Subscriber(bridge.port, **options)
    task = asyncio.create_task(subscriber.run())
    await asyncio.wait_for(subscriber.subscribed.wait(), 30)
    async with asyncio.timeout(60):
        while not (await asyncio.to_thread(bridge.health))["feed_connected"]:
            await asyncio.sleep(0.05)
    ready = pd.Timestamp((await asyncio.to_thread(feed.health))["replay_time"])
    return subscriber, task, ready


def sessions_after(bars: pd.DataFrame, after: pd.Timestamp) -> list[pd.Timestamp]:
    return sorted(t for t in bars["ts"].unique() if t > after)


def every_bar_after(bars: pd.DataFrame, after: pd.Timestamp) -> Callable[[list[dict]], bool]:
    """A wait condition: every ticker's bar of every session after ``after`` was received (one ticker's
    bar of the last session is not enough: the others may still be on their way)."""
    expected = {(t, ts) for t, ts in zip(bars["ticker"], bars["ts"], strict=True) if ts > after}
    return lambda got: {(s["ticker"], pd.Timestamp(s["ts"])) for s in got} >= expected


async def silent_connections(port: int, count: int, sources: int) -> list[asyncio.StreamWriter]:
    """``count`` TCP connections from 127.0.0.2.. that never send a byte; some of them must be answered 503."""
    opened = []
    for i in range(count):
        try:
            opened.append(
                await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.0.{2 + i % sources}", 0)), 2.0
                )
            )
        except (OSError, TimeoutError):
            continue
    await asyncio.sleep(0.5)  # the refused ones have their answer by now
    refused = 0
    for reader, _ in opened:
        try:
            refused += (await asyncio.wait_for(reader.read(16), 0.001)).startswith(b"HTTP/1.1 503")
        except TimeoutError:
            pass  # admitted: held silent until the handshake timeout
    assert refused > 0, "no connection was ever refused"
    return [writer for _, writer in opened]


async def admitted(url: str, **options: object):  # noqa: ANN201
    """A WebSocket connection, retried while the bridge answers 503 (it is full of silent sockets)."""
    async with asyncio.timeout(30):
        while True:
            try:
                return await connect(url, **options)
            except InvalidStatus as refused:
                if refused.response.status_code != 503:
                    raise
                await asyncio.sleep(0.2)


async def subscription_flood(port: int, messages: int, names: int) -> tuple[list[int], float]:
    """An authenticated client subscribing ``names`` new tickers per message (and the served ones): the
    replies' sizes and the seconds from its first message to its last reply."""
    sizes = []
    async with await admitted(f"ws://127.0.0.1:{port}/?token={TOKEN}") as ws:
        started = time.monotonic()
        for m in range(messages):
            await ws.send(json.dumps({"subscribe": [*TICKERS, *(f"F{m:03d}{i:05d}" for i in range(names))]}))
            reply = await ws.recv()
            while '"ticker"' in reply[:12]:  # a signal of a served ticker it subscribed to; the reply follows
                reply = await ws.recv()
            sizes.append(len(reply))
        return sizes, time.monotonic() - started


async def bad_frames(port: int) -> list[str]:
    """Frames too deep and too big, and connections with wrong tokens; what the bridge answered."""
    answers = []
    async with await admitted(f"ws://127.0.0.1:{port}/?token={TOKEN}") as ws:
        for frame in ("[" * 60_000, json.dumps({"subscribe": [[[["SYN00"]]]]}), "{not json"):
            await ws.send(frame)
            answers.append(json.loads(await ws.recv())["reason"])
        await ws.send("x" * 70_000)
        try:
            await ws.recv()
        except ConnectionClosed as closed:
            answers.append(f"closed {closed.rcvd.code}")
    for token in ("wrong", "Honest-token-7f3a", ""):
        try:
            async with await admitted(
                f"ws://127.0.0.1:{port}/", additional_headers={"Authorization": f"Bearer {token}"}
            ):
                pass
        except InvalidStatus as refused:
            answers.append(str(refused.response.status_code))
    return answers


def test_abuse_leaves_the_bridge_up_serving_an_honest_subscriber_with_every_limit_counted(store: dict) -> None:
    feed, bridge = start(
        store,
        {
            "QE_BRIDGE_MAX_CONNECTIONS": "64",
            "QE_BRIDGE_HANDSHAKE_TIMEOUT_S": "1",
            "QE_BRIDGE_MAX_SUBSCRIPTIONS": "10",
            "QE_BRIDGE_CONTROL_RATE": "5",
            "QE_BRIDGE_LOG_FLUSH_S": "1",
        },
        feed_extra=["--malformed-rate", "0.02", "--malformed-kinds", "future_time", "--fault-seed", "5"],
    )
    bars = store["bars"]

    async def main() -> dict:
        subscriber, task, ready = await subscribed(bridge, feed, scheme="bearer")  # the scheme in any case
        sessions = sessions_after(bars, ready)
        await subscriber.wait_for(lambda got: {pd.Timestamp(s["ts"]) for s in got} >= set(sessions[:3]))
        baseline = bridge.rss_kib()
        held, floods = [], []
        for sources in (1, 8, 1, 8):  # waves of silent sockets: 503 over either cap, cut at the handshake timeout
            held += await silent_connections(bridge.port, 300, sources=sources)
            floods += await asyncio.gather(*(subscription_flood(bridge.port, 20, 4_000) for _ in range(4)))
            answers = await bad_frames(bridge.port)
        during = bridge.rss_kib()
        for writer in held:
            writer.close()
        await subscriber.wait_for(every_bar_after(bars, ready), timeout=180)
        async with asyncio.timeout(30):
            while bridge.metrics()["qe_bridge_publisher_connections"] > 2:  # the subscriber and this probe
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        after = bridge.rss_kib()
        metrics, health = bridge.metrics(), bridge.health()
        task.cancel()
        return {
            "subscriber": subscriber,
            "ready": ready,
            "baseline": baseline,
            "during": during,
            "after": after,
            "floods": floods,
            "answers": answers,
            "metrics": metrics,
            "health": health,
        }

    try:
        run = asyncio.run(main())
        assert bridge.alive()
    finally:
        code = bridge.stop()
        feed.stop()
    signals = run["subscriber"].signals
    assert_every_bar_once_in_order(signals, bars, run["ready"])
    assert {s["bar_origin"] for s in signals} == {"feed"}  # no session closed early by a 2099 market clock
    assert {s["status"] for s in signals} == {"ok"} and {s["model_version"] for s in signals} == {store["version"]}
    m = run["metrics"]
    assert m['qe_bridge_frames_dropped_total{reason="future_time"}'] >= 1
    assert m['qe_bridge_frames_dropped_total{reason="time_backwards"}'] == 0
    assert m['qe_bridge_connections_refused_total{reason="max_connections"}'] >= 1
    assert m['qe_bridge_connections_refused_total{reason="max_connections_per_address"}'] >= 1
    assert m["qe_bridge_handshake_timeouts_total"] >= 1
    assert m['qe_bridge_subscriptions_refused_total{reason="unknown_ticker"}'] == 4 * 4 * 20 * 4_000
    assert m["qe_bridge_subscriptions"] == 1  # the honest subscriber's "*": the flood's are gone with it
    # 5 control messages a second after a burst of 5: the 20th reply comes after the 19th message's
    # wait, so each flood of 20 took at least (19 - 5) / 5 s, and every flooding client was held back
    # (how many of its messages depends on how fast it could send them: the machine's load).
    assert min(seconds for _, seconds in run["floods"]) >= (19 - 5) / 5 - 0.05, run["floods"]
    assert m["qe_bridge_control_messages_delayed_total"] >= 4 * 4
    assert m['qe_bridge_bad_client_messages_total{reason="too_deep"}'] == 8
    assert m['qe_bridge_bad_client_messages_total{reason="too_big"}'] == 4
    assert m['qe_bridge_bad_client_messages_total{reason="bad_json"}'] == 4
    assert m["qe_bridge_auth_failures_total"] == 12 and m["qe_bridge_publisher_max_connections"] == 64
    assert max(size for sizes, _ in run["floods"] for size in sizes) < 2_000  # the change, never the whole list
    assert run["answers"] == ["too_deep", "too_deep", "bad_json", "closed 1009", "401", "401", "401"]
    assert run["health"]["counters"]["publisher"]["refused"]["max_connections"] >= 1
    assert abs(run["after"] - run["baseline"]) <= 0.10 * run["baseline"], (run["baseline"], run["during"], run["after"])
    output = "\n".join(bridge.lines)
    assert TOKEN not in output and "Honest-token-7f3a" not in output  # tokens never logged
    assert code == 0


def test_out_of_file_descriptors_the_bridge_keeps_publishing_and_says_why(store: dict) -> None:
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))

    feed, bridge = start(
        store,
        {
            "QE_BRIDGE_MAX_CONNECTIONS": "1000",
            "QE_BRIDGE_HANDSHAKE_TIMEOUT_S": "60",
            "QE_BRIDGE_RELOAD_S": "0.2",
            "QE_BRIDGE_LOG_FLUSH_S": "0.2",
            "QE_BRIDGE_MAX_CONNECTIONS_PER_ADDRESS": "100",
        },
        preexec_fn=low_limit,
    )
    bars = store["bars"]

    async def main() -> dict:
        assert bridge.metrics()["qe_bridge_publisher_max_connections"] == 200 - 64  # lowered to fit, and said
        subscriber, task, ready = await subscribed(bridge, feed)
        sessions = sessions_after(bars, ready)
        await subscriber.wait_for(lambda got: {pd.Timestamp(s["ts"]) for s in got} >= set(sessions[:2]))
        free = 12
        resource.prlimit(bridge.pid, resource.RLIMIT_NOFILE, (bridge.open_files() + free,) * 2)
        writers = []
        for i in range(300):  # more than the descriptors left: accept() itself fails with EMFILE
            try:  # until the kernel's backlog is full too: then a connection waits for ever
                writers.append(
                    (
                        await asyncio.wait_for(
                            asyncio.open_connection("127.0.0.1", bridge.port, local_addr=(f"127.0.0.{2 + i % 5}", 0)),
                            1.0,
                        )
                    )[1]
                )
            except (OSError, TimeoutError):
                break
        starved = len(subscriber.signals)
        await subscriber.wait_for(lambda got: len(got) >= starved + 3 * len(TICKERS))  # still publishing
        await asyncio.sleep(2.0)  # champion checks and log flushes every 0.2 s: all fail meanwhile
        for writer in writers:
            writer.close()
        await subscriber.wait_for(every_bar_after(bars, ready), timeout=180)
        async with asyncio.timeout(30):
            while set(bridge.health()["problems"]) - {"event_loop"}:
                await asyncio.sleep(0.2)
        health, metrics = bridge.health(), bridge.metrics()
        task.cancel()
        return {"subscriber": subscriber, "ready": ready, "health": health, "metrics": metrics}

    try:
        run = asyncio.run(main())
        assert bridge.alive()
    finally:
        code = bridge.stop()
        feed.stop()
    records = bridge.records()
    assert any("at most 136 connections are served" in r["message"] for r in records)
    emfile_lines = [r for r in records if r.get("error_kind") == "EMFILE"]
    m = run["metrics"]
    assert 1 <= len(emfile_lines) <= 5 < m['qe_bridge_loop_errors_total{kind="EMFILE"}']  # counted, logged rarely
    assert m['qe_bridge_io_errors_total{what="prediction_log"}'] >= 1
    assert m['qe_bridge_io_errors_total{what="champion"}'] >= 1
    assert run["health"]["status"] == "degraded" and "EMFILE" in run["health"]["problems"]["event_loop"]
    signals = run["subscriber"].signals
    assert_every_bar_once_in_order(signals, bars, run["ready"])
    assert code == 0
    with pytest.MonkeyPatch.context() as patch:  # every prediction made it to the log in the end
        patch.setenv("QE_HOME", str(store["home"]))
        logged = prediction_log(make_model_registry()).read()
    assert set(zip(logged["ticker"], logged["ts"], strict=True)) >= {
        (s["ticker"], pd.Timestamp(s["ts"])) for s in signals
    }


def test_a_session_whose_closing_ticks_never_come_is_closed_by_the_replay_clock(store: dict) -> None:
    feed, bridge = start(store, {"QE_BRIDGE_CLOSE_GRACE_S": "0.5"}, speed=23_400 / 3.0)  # a session every 3 s
    bars = store["bars"]
    closes = sorted(bars["ts"].unique())

    async def main() -> dict:
        subscriber, task, ready = await subscribed(bridge, feed)
        first = sessions_after(bars, ready)[0]
        await subscriber.wait_for(lambda got: any(pd.Timestamp(s["ts"]) == first for s in got))
        async with asyncio.timeout(60):  # into the middle of the next session, then the feed dies
            while True:
                now = pd.Timestamp(feed.health()["replay_time"])
                cut = next(c for c in closes if c > now)
                if cut > first and pd.Timedelta(hours=2) <= cut - now <= pd.Timedelta(hours=4.5):
                    break
                await asyncio.sleep(0.02)
        feed.kill()
        await subscriber.wait_for(lambda got: sum(pd.Timestamp(s["ts"]) == cut for s in got) == len(TICKERS))
        metrics, health = bridge.metrics(), bridge.health()
        task.cancel()
        return {"subscriber": subscriber, "cut": cut, "metrics": metrics, "health": health}

    try:
        run = asyncio.run(main())
        assert bridge.alive()
    finally:
        code = bridge.stop()
    closed = [s for s in run["subscriber"].signals if pd.Timestamp(s["ts"]) == run["cut"]]
    assert {s["bar_origin"] for s in closed} == {"stored"}  # the stored bar of that session, not a partial one
    assert run["metrics"]["qe_bridge_bars_closed_by_clock_total"] == len(TICKERS)
    assert run["health"]["reference_clock"]["clock"] == "replay" and "feed" in run["health"]["problems"]
    assert code == 0


@pytest.mark.parametrize("fallback", ["none", "local"])
def test_an_endpoint_that_hangs_fails_and_recovers_never_stops_processing(store: dict, fallback: str) -> None:
    with FakeEndpoint() as endpoint:
        feed, bridge = start(
            store,
            {
                "QE_BRIDGE_MODEL": "sagemaker",
                "QE_SAGEMAKER_ENDPOINT": "direction",
                "QE_AWS_ENDPOINT_URL": endpoint.url,
                "QE_BRIDGE_ENDPOINT_TIMEOUT_S": "0.3",
                "QE_BRIDGE_ENDPOINT_RETRIES": "1",
                "QE_BRIDGE_BREAKER_FAILURES": "2",
                "QE_BRIDGE_BREAKER_RESET_S": "1",
                "QE_BRIDGE_FALLBACK": fallback,
            },
        )
        bars = store["bars"]

        async def main() -> dict:
            subscriber, task, ready = await subscribed(bridge, feed)
            phases = {}
            for mode, sessions in (("ok", 2), ("hang", 3), ("error", 3), ("ok", 2)):
                endpoint.mode = mode
                seen = len(subscriber.signals)
                await subscriber.wait_for(lambda got: len(got) >= seen + sessions * len(TICKERS))
                if mode == "error":
                    async with asyncio.timeout(30):  # the half-open trial meets the error
                        while bridge.metrics().get('qe_bridge_endpoint_calls_total{outcome="error"}', 0) < 1:
                            await asyncio.sleep(0.1)
                phases[mode] = bridge.metrics()
            async with asyncio.timeout(60):  # and recovers: the circuit closes, the endpoint answers again
                while not (
                    subscriber.signals[-1]["detail"] is None
                    and subscriber.signals[-1]["model_version"] == "endpoint:direction"
                ):
                    await asyncio.sleep(0.05)
            final = bridge.metrics()
            last = pd.Timestamp(subscriber.signals[-1]["ts"])
            task.cancel()
            return {"subscriber": subscriber, "ready": ready, "final": final, "last": last, "phases": phases}

        try:
            run = asyncio.run(main())
            assert bridge.alive()
        finally:
            code = bridge.stop()
            feed.stop()
    signals = run["subscriber"].signals
    assert_every_bar_once_in_order(signals, bars.loc[bars["ts"] <= run["last"]], run["ready"])
    marked = "endpoint_unavailable" if fallback == "none" else "local_fallback"
    details = [s["detail"] for s in signals]
    first, last = details.index(marked), len(details) - 1 - details[::-1].index(marked)
    assert set(details[:first]) == {None} and set(details[last + 1 :]) == {None}  # answered, then marked, then again
    unavailable = [s for s in signals if s["detail"] == marked]
    if fallback == "none":
        assert {(s["status"], s["prob"], s["model_version"]) for s in unavailable} == {
            ("degraded", None, "endpoint:direction")
        }
    else:
        assert {(s["status"], s["model_version"]) for s in unavailable} == {("ok", store["version"])}
    answered = [s for s in signals if s["detail"] is None]
    assert {(s["prob"], s["model_version"]) for s in answered} == {(0.625, "endpoint:direction")}
    final = run["final"]
    assert final["qe_bridge_endpoint_circuit_state"] == 0 and final["qe_bridge_endpoint_circuit_opens_total"] >= 2
    assert final['qe_bridge_endpoint_calls_total{outcome="timeout"}'] >= 2
    assert final['qe_bridge_endpoint_calls_total{outcome="short_circuited"}'] >= 1
    assert run["phases"]["hang"]["qe_bridge_endpoint_circuit_state"] == 2  # open while it hung
    assert code == 0
