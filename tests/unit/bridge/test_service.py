"""Bridge service: settings from the environment, feed -> signals end to end, SIGTERM flushes and exits cleanly."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from websockets.asyncio.client import connect

from quant_engine.backends import make_group_stores, make_model_registry, make_offline_store
from quant_engine.bridge.feed_server import FeedServer, ReplayClock, ReplaySchedule
from quant_engine.bridge.inference import LocalChampionModel
from quant_engine.bridge.service import BridgeService, JsonLinesFormatter
from quant_engine.bridge.settings import BridgeSettings
from quant_engine.bridge.state import BRIDGE_SOURCE, StateHandler
from quant_engine.config import SettingsError
from quant_engine.data.synthetic import SyntheticMarket
from quant_engine.features.definitions import get_feature_set
from quant_engine.monitoring.predictions import prediction_log

from .conftest import FrameHistory, register_model

SESSION_WALL_S = 0.15  # one replayed session per 150 ms


def test_settings_defaults_and_environment() -> None:
    defaults = BridgeSettings.from_env({})
    assert (defaults.feed_url, defaults.host, defaults.port, defaults.tokens) == (
        "ws://127.0.0.1:8765", "127.0.0.1", 8766, ())
    custom = BridgeSettings.from_env({
        "QE_FEED_URL": "wss://feed.example/?v=2", "QE_BRIDGE_PORT": "9000", "QE_BRIDGE_TOKENS": "a, b,,a",
        "QE_BRIDGE_TICKERS": "SYN00,SYN01", "QE_BRIDGE_MODEL": "SageMaker", "QE_SAGEMAKER_ENDPOINT": "dir",
        "QE_BRIDGE_BUFFER_SIZE": "50", "QE_BRIDGE_BUFFER_POLICY": "drop_oldest", "QE_BRIDGE_STALE_S": "2.5"})
    assert (custom.port, custom.tokens, custom.tickers, custom.model_source, custom.sagemaker_endpoint) == (
        9000, ("a", "b"), ("SYN00", "SYN01"), "sagemaker", "dir")
    assert (custom.buffer_size, custom.buffer_policy, custom.stale_after_s) == (50, "drop_oldest", 2.5)


@pytest.mark.parametrize(("env", "message"), [
    ({"QE_FEED_URL": "http://x"}, "QE_FEED_URL='http://x' must be a ws://"),
    ({"QE_BRIDGE_PORT": "80a"}, "QE_BRIDGE_PORT='80a' is not a whole number"),
    ({"QE_BRIDGE_MODEL": "sagemaker"}, "needs QE_SAGEMAKER_ENDPOINT"),
    ({"QE_BRIDGE_BUFFER_POLICY": "lifo"}, "QE_BRIDGE_BUFFER_POLICY='lifo'"),
    ({"QE_BRIDGE_STALE_S": "soon"}, "QE_BRIDGE_STALE_S='soon' is not a number"),
    ({"QE_BRIDGE_BUFFER_SIZE": "0"}, "QE_BRIDGE_BUFFER_SIZE=0 must be > 0"),
])
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("?", r"\?")):
        BridgeSettings.from_env(env)


def test_a_bridge_set_for_another_market_time_than_its_group_refuses_to_start(qe_home: Path) -> None:
    from quant_engine.bridge.service import build_service
    from quant_engine.calendars import MarketTime
    from quant_engine.features.ingest import IngestionRequest, ingest

    ingest(IngestionRequest.build("synthetic", "2023-06-01", "2023-06-02", tickers="SYN00", group=make_offline_store()), make_group_stores())  # an XNYS 1d group
    with pytest.raises(SettingsError, match="set for 1h bars on the XNYS calendar but its feature group holds 1d"):
        build_service(BridgeSettings(bar_size="1h", tokens=("t",)))
    with pytest.raises(SettingsError, match="coalesce is exact for daily bars only"):
        BridgeSettings(buffer_policy="coalesce").check_market_time(MarketTime("24/5", "1h"))
    assert BridgeSettings().check_market_time(MarketTime("24/5", "1h")) == "drop_oldest"
    assert BridgeSettings().check_market_time(MarketTime("XNYS", "1d")) == "coalesce"
    assert build_service(BridgeSettings(bar_size="1d", calendar="NYSE", tokens=("t",))).tickers == ("SYN00",)


def test_feed_to_subscriber_end_to_end_and_shutdown_flushes(qe_home: Path) -> None:
    version = register_model(qe_home, seed=1, vol_range=(0.0, 5.0))
    market = SyntheticMarket(n_tickers=3, seed=5).fetch(None, "2021-01-01", "2022-03-08")
    live_from = pd.Timestamp("2022-03-01", tz="UTC")
    live = market.loc[market["ts"] >= live_from]
    registry = make_model_registry()
    handler = StateHandler(get_feature_set("default"), LocalChampionModel(registry),
                           history=FrameHistory(market.loc[market["ts"] < live_from]),
                           prediction_log=prediction_log(registry), log_batch=1000)
    settings = BridgeSettings(port=0, tokens=("tok",), feed_url="ws://127.0.0.1:1")

    async def main() -> tuple[list[dict], dict, str]:
        schedule = ReplaySchedule(live, ticks_per_bar=6)
        feed = FeedServer(schedule, ReplayClock(time.time() + 0.5, 23_400 / SESSION_WALL_S), port=0)
        await feed.start()
        service = BridgeService(BridgeSettings(**{**settings.__dict__, "feed_url": feed.url}), handler,
                                tuple(schedule.tickers), feed_options={"backoff_initial_s": 0.05, "seed": 1})
        stop, started = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(service.run(stop, started))
        await started.wait()
        received = []
        async with connect(f"ws://127.0.0.1:{service.port}/?token=tok") as ws:
            await ws.send(json.dumps({"subscribe": ["*"]}))
            await ws.recv()
            while len(received) < len(live):
                received.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            health = await asyncio.to_thread(lambda: json.loads(urllib.request.urlopen(
                f"http://127.0.0.1:{service.port}/health", timeout=5).read()))
            metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(
                f"http://127.0.0.1:{service.port}/metrics", timeout=5).read().decode())
        stop.set()
        await asyncio.wait_for(running, 10)
        await feed.stop()
        return received, health, metrics

    received, health, metrics = asyncio.run(asyncio.wait_for(main(), 60))
    assert sorted((s["ticker"], s["ts"]) for s in received) == sorted(
        (t, ts.isoformat()) for t, ts in zip(live["ticker"], live["ts"], strict=True))
    assert {s["bar_origin"] for s in received} == {"feed"} and {s["model_version"] for s in received} == {version}
    batch = get_feature_set("default").compute_batch(market).set_index(["ticker", "event_time"])
    for s in received:
        expected = batch.loc[(s["ticker"], pd.Timestamp(s["ts"]))]
        assert np.array_equal(np.array([s["features"][n] for n in batch.columns]), expected.to_numpy())
    assert health["feed_connected"] is True and health["model_version"] == version
    assert health["bars"]["bars_feed"] == len(live) and health["counters"]["publisher"]["messages_sent"] >= len(live)
    assert f"qe_bridge_bars_total{{origin=\"feed\"}} {len(live)}" in metrics
    logged = prediction_log(make_model_registry()).read()  # flushed on shutdown although below log_batch
    assert len(logged) == len(live) and set(logged["source"]) == {BRIDGE_SOURCE}


def test_json_lines_formatter_keeps_extra_fields() -> None:
    record = logging.LogRecord("quant_engine.bridge", logging.INFO, __file__, 1, "bridge %s", ("up",), None)
    record.port = 8766
    entry = json.loads(JsonLinesFormatter().format(record))
    assert entry["message"] == "bridge up" and entry["port"] == 8766 and entry["level"] == "INFO"
    assert entry["ts"].endswith("Z")


def test_module_entry_point_serves_and_stops_cleanly_on_sigterm(qe_home: Path) -> None:
    register_model(qe_home, seed=1, promote=False)  # a fresh stack: the bridge starts and waits for a champion
    env = {**os.environ, "QE_HOME": str(qe_home), "QE_BRIDGE_PORT": "0", "QE_BRIDGE_TICKERS": "SYN00",
           "QE_BRIDGE_TOKENS": "t", "QE_FEED_URL": "ws://127.0.0.1:9"}  # nothing listens there: feed down
    process = subprocess.Popen([sys.executable, "-m", "quant_engine.bridge"], env=env, stderr=subprocess.PIPE,
                               text=True)
    try:
        listening = None
        lines = []
        deadline = time.monotonic() + 30
        while listening is None and time.monotonic() < deadline:
            lines.append(json.loads(process.stderr.readline()))
            listening = next((e for e in lines if e["message"] == "bridge listening"), None)
        assert listening is not None, lines
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{listening['port']}/health", timeout=5).read())
        assert health["status"] == "degraded" and health["feed_connected"] is False
        assert health["model_version"] is None
        assert any("has no champion yet" in e["message"] for e in lines)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        rest = [json.loads(line) for line in process.stderr.read().splitlines() if line.strip()]
        assert any(e["message"] == "bridge stopped" for e in rest)
    finally:
        if process.poll() is None:
            process.kill()


def test_housekeeping_logs_predictions_on_quiet_days(qe_home: Path) -> None:
    register_model(qe_home, seed=1, vol_range=(0.0, 5.0))
    market = SyntheticMarket(n_tickers=2, seed=5).fetch(None, "2021-01-01", "2022-03-02")
    live_from = pd.Timestamp("2022-03-01", tz="UTC")
    registry = make_model_registry()
    handler = StateHandler(get_feature_set("default"), LocalChampionModel(registry),
                           history=FrameHistory(market.loc[market["ts"] < live_from]),
                           prediction_log=prediction_log(registry), log_batch=1000)
    service = BridgeService(BridgeSettings(port=0, log_flush_s=0.05), handler, ("SYN00", "SYN01"))

    async def main() -> int:
        stop, started = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(service.run(stop, started))
        await started.wait()
        from .conftest import session_ticks

        for tick in session_ticks(market.loc[market["ts"] >= live_from]):
            service.buffer.put(tick)
        for _ in range(100):  # well below log_batch: only the timer can write them
            await asyncio.sleep(0.02)
            if prediction_log(registry).files():
                break
        files = len(prediction_log(registry).files())
        stop.set()
        await running
        return files

    assert asyncio.run(asyncio.wait_for(main(), 30)) == 1
    assert len(prediction_log(registry).read()) == 4
