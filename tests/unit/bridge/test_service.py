"""Bridge service: settings from the environment, feed -> signals end to end, SIGTERM flushes and exits cleanly."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import threading
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
from quant_engine.features.registry import get_feature_set
from quant_engine.monitoring.predictions import prediction_log

from .conftest import FrameHistory, register_model

SESSION_WALL_S = 0.15  # one replayed session per 150 ms


def test_settings_defaults_and_environment() -> None:
    defaults = BridgeSettings.from_env({})
    assert (defaults.feed_url, defaults.host, defaults.port, defaults.tokens) == (
        "ws://127.0.0.1:8765",
        "127.0.0.1",
        8766,
        (),
    )
    custom = BridgeSettings.from_env(
        {
            "QE_FEED_URL": "wss://feed.example/?v=2",
            "QE_BRIDGE_PORT": "9000",
            "QE_BRIDGE_TOKENS": "a, b,,a",
            "QE_BRIDGE_TICKERS": "SYN00,SYN01",
            "QE_BRIDGE_MODEL": "SageMaker",
            "QE_SAGEMAKER_ENDPOINT": "dir",
            "QE_BRIDGE_BUFFER_SIZE": "50",
            "QE_BRIDGE_BUFFER_POLICY": "drop_oldest",
            "QE_BRIDGE_STALE_S": "2.5",
        }
    )
    assert (custom.port, custom.tokens, custom.tickers, custom.model_source, custom.sagemaker_endpoint) == (
        9000,
        ("a", "b"),
        ("SYN00", "SYN01"),
        "sagemaker",
        "dir",
    )
    assert (custom.buffer_size, custom.buffer_policy, custom.stale_after_s) == (50, "drop_oldest", 2.5)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"QE_FEED_URL": "http://x"}, "QE_FEED_URL='http://x' must be a ws://"),
        ({"QE_BRIDGE_PORT": "80a"}, "QE_BRIDGE_PORT='80a' is not a whole number"),
        ({"QE_BRIDGE_MODEL": "sagemaker"}, "needs QE_SAGEMAKER_ENDPOINT"),
        ({"QE_BRIDGE_BUFFER_POLICY": "lifo"}, "QE_BRIDGE_BUFFER_POLICY='lifo'"),
        ({"QE_BRIDGE_STALE_S": "soon"}, "QE_BRIDGE_STALE_S='soon' is not a number"),
        ({"QE_BRIDGE_BUFFER_SIZE": "0"}, "QE_BRIDGE_BUFFER_SIZE=0 must be > 0"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("?", r"\?")):
        BridgeSettings.from_env(env)


def test_a_bridge_set_for_another_market_time_than_its_group_refuses_to_start(qe_home: Path) -> None:
    from quant_engine.bridge.service import build_service
    from quant_engine.calendars import MarketTime
    from quant_engine.features.ingest import IngestionRequest, ingest

    ingest(
        IngestionRequest.build("synthetic", "2023-06-01", "2023-06-02", tickers="SYN00", group=make_offline_store()),
        make_group_stores(),
    )  # an XNYS 1d group
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
    handler = StateHandler(
        get_feature_set("default"),
        LocalChampionModel(registry),
        history=FrameHistory(market.loc[market["ts"] < live_from]),
        prediction_log=prediction_log(registry),
        log_batch=1000,
    )
    settings = BridgeSettings(port=0, tokens=("tok",), feed_url="ws://127.0.0.1:1")

    async def main() -> tuple[list[dict], dict, str]:
        schedule = ReplaySchedule(live, ticks_per_bar=6)
        feed = FeedServer(schedule, ReplayClock(time.time() + 0.5, 23_400 / SESSION_WALL_S), port=0)
        await feed.start()
        service = BridgeService(
            BridgeSettings(**{**settings.__dict__, "feed_url": feed.url}),
            handler,
            tuple(schedule.tickers),
            feed_options={"backoff_initial_s": 0.05, "seed": 1},
        )
        stop, started = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(service.run(stop, started))
        await started.wait()
        received = []
        async with connect(f"ws://127.0.0.1:{service.port}/?token=tok") as ws:
            await ws.send(json.dumps({"subscribe": ["*"]}))
            await ws.recv()
            while len(received) < len(live):
                received.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            health = await asyncio.to_thread(
                lambda: json.loads(urllib.request.urlopen(f"http://127.0.0.1:{service.port}/health", timeout=5).read())
            )
            metrics = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{service.port}/metrics", timeout=5).read().decode()
            )
        stop.set()
        await asyncio.wait_for(running, 10)
        await feed.stop()
        return received, health, metrics

    received, health, metrics = asyncio.run(asyncio.wait_for(main(), 60))
    assert sorted((s["ticker"], s["ts"]) for s in received) == sorted(
        (t, ts.isoformat()) for t, ts in zip(live["ticker"], live["ts"], strict=True)
    )
    assert {s["bar_origin"] for s in received} == {"feed"} and {s["model_version"] for s in received} == {version}
    batch = get_feature_set("default").compute_batch(market).set_index(["ticker", "event_time"])
    for s in received:
        expected = batch.loc[(s["ticker"], pd.Timestamp(s["ts"]))]
        assert np.array_equal(np.array([s["features"][n] for n in batch.columns]), expected.to_numpy())
    assert health["feed_connected"] is True and health["model_version"] == version
    assert health["bars"]["bars_feed"] == len(live) and health["counters"]["publisher"]["messages_sent"] >= len(live)
    assert f'qe_bridge_bars_total{{origin="feed"}} {len(live)}' in metrics
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
    env = {
        **os.environ,
        "QE_HOME": str(qe_home),
        "QE_BRIDGE_PORT": "0",
        "QE_BRIDGE_TICKERS": "SYN00",
        "QE_BRIDGE_TOKENS": "t",
        "QE_FEED_URL": "ws://127.0.0.1:9",
    }  # nothing listens there: feed down
    process = subprocess.Popen(
        [sys.executable, "-m", "quant_engine.bridge"], env=env, stderr=subprocess.PIPE, text=True
    )
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
    handler = StateHandler(
        get_feature_set("default"),
        LocalChampionModel(registry),
        history=FrameHistory(market.loc[market["ts"] < live_from]),
        prediction_log=prediction_log(registry),
        log_batch=1000,
    )
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


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"QE_BRIDGE_MAX_CONNECTIONS": "0"}, "QE_BRIDGE_MAX_CONNECTIONS=0 must be > 0"),
        (
            {"QE_BRIDGE_MAX_CONNECTIONS_PER_ADDRESS": "many"},
            "QE_BRIDGE_MAX_CONNECTIONS_PER_ADDRESS='many' is not a whole",
        ),
        ({"QE_BRIDGE_HANDSHAKE_TIMEOUT_S": "-1"}, "QE_BRIDGE_HANDSHAKE_TIMEOUT_S=-1.0 must be a finite number > 0"),
        ({"QE_BRIDGE_MAX_SUBSCRIPTIONS": "0"}, "QE_BRIDGE_MAX_SUBSCRIPTIONS=0 must be > 0"),
        ({"QE_BRIDGE_MAX_DEPTH": "1"}, "QE_BRIDGE_MAX_DEPTH=1 must be >= 2"),
        ({"QE_BRIDGE_CONTROL_RATE": "fast"}, "QE_BRIDGE_CONTROL_RATE='fast' is not a number per second"),
        ({"QE_BRIDGE_TLS_CERT": "/no/cert.pem"}, "QE_BRIDGE_TLS_CERT and QE_BRIDGE_TLS_KEY go together"),
        (
            {"QE_BRIDGE_TLS_CERT": "/no/cert.pem", "QE_BRIDGE_TLS_KEY": "/no/key.pem"},
            "QE_BRIDGE_TLS_CERT='/no/cert.pem' is not a readable file",
        ),
        ({"QE_BRIDGE_CLOCK": "sundial"}, "QE_BRIDGE_CLOCK='sundial' must be one of auto, wall, replay"),
        ({"QE_BRIDGE_CLOCK_POLL_S": "0"}, "QE_BRIDGE_CLOCK_POLL_S=0.0 must be a finite number > 0"),
        ({"QE_BRIDGE_MAX_SKEW_S": "inf"}, "QE_BRIDGE_MAX_SKEW_S=inf must be a finite number > 0"),
        ({"QE_BRIDGE_CLOSE_GRACE_S": "soon"}, "QE_BRIDGE_CLOSE_GRACE_S='soon' is not a number of seconds"),
        ({"QE_BRIDGE_ENDPOINT_TIMEOUT_S": "nan"}, "QE_BRIDGE_ENDPOINT_TIMEOUT_S=nan must be a finite number > 0"),
        ({"QE_BRIDGE_ENDPOINT_RETRIES": "-1"}, "QE_BRIDGE_ENDPOINT_RETRIES='-1' is not a whole number"),
        ({"QE_BRIDGE_ENDPOINT_WORKERS": "0"}, "QE_BRIDGE_ENDPOINT_WORKERS=0 must be > 0"),
        ({"QE_BRIDGE_BREAKER_FAILURES": "0"}, "QE_BRIDGE_BREAKER_FAILURES=0 must be > 0"),
        ({"QE_BRIDGE_BREAKER_RESET_S": "0"}, "QE_BRIDGE_BREAKER_RESET_S=0.0 must be a finite number > 0"),
        ({"QE_BRIDGE_FALLBACK": "champion"}, "QE_BRIDGE_FALLBACK='champion' must be one of none, local"),
    ],
)
def test_bad_limits_clock_endpoint_and_tls_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("?", r"\?")):
        BridgeSettings.from_env(env)


def test_limit_clock_and_endpoint_settings_are_read(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ],
        check=True,
        capture_output=True,
    )
    settings = BridgeSettings.from_env(
        {
            "QE_BRIDGE_MAX_CONNECTIONS": "100",
            "QE_BRIDGE_MAX_CONNECTIONS_PER_ADDRESS": "7",
            "QE_BRIDGE_HANDSHAKE_TIMEOUT_S": "2.5",
            "QE_BRIDGE_MAX_SUBSCRIPTIONS": "50",
            "QE_BRIDGE_MAX_DEPTH": "3",
            "QE_BRIDGE_CONTROL_RATE": "5",
            "QE_BRIDGE_CLOCK": "Replay",
            "QE_BRIDGE_MAX_SKEW_S": "30",
            "QE_BRIDGE_CLOSE_GRACE_S": "90",
            "QE_BRIDGE_FALLBACK": "local",
            "QE_BRIDGE_ENDPOINT_RETRIES": "0",
            "QE_BRIDGE_TLS_CERT": str(cert),
            "QE_BRIDGE_TLS_KEY": str(key),
        }
    )
    assert (
        settings.max_connections,
        settings.max_connections_per_address,
        settings.handshake_timeout_s,
        settings.max_subscriptions,
        settings.max_depth,
        settings.control_rate,
    ) == (100, 7, 2.5, 50, 3, 5.0)
    assert (
        settings.clock,
        settings.max_skew_s,
        settings.close_grace_s,
        settings.fallback,
        settings.endpoint_retries,
    ) == ("replay", 30.0, 90.0, "local", 0)
    assert settings.ssl_context() is not None and BridgeSettings().ssl_context() is None
    with pytest.raises(SettingsError, match="not a certificate and its key"):
        BridgeSettings(tls_cert=str(key), tls_key=str(cert)).ssl_context()


@pytest.mark.parametrize(("limits", "expected"), [((200, 4096), (1000, 1064)), ((200, 200), (136, 200))])
def test_the_connection_cap_fits_the_file_descriptor_limit(limits: tuple[int, int], expected: tuple[int, int]) -> None:
    """Raised toward the hard limit when it can be; otherwise the cap is lowered to what fits, with a warning."""
    code = (
        "import resource, logging; logging.basicConfig(); "
        "from quant_engine.bridge.resources import fit_file_limit; "
        "print(fit_file_limit(1000), resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    import resource

    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limits),
    )
    assert tuple(map(int, result.stdout.split())) == expected
    assert ("at most 136 connections are served" in result.stderr) == (expected[0] == 136)


def test_event_loop_errors_are_counted_by_kind_and_logged_at_a_bounded_rate(caplog: pytest.LogCaptureFixture) -> None:
    from quant_engine.bridge.resources import LoopErrors

    now = [0.0]
    errors = LoopErrors(every_s=10, clock=lambda: now[0])
    out_of_files = OSError(errno.EMFILE, "Too many open files")
    with caplog.at_level(logging.ERROR, logger="quant_engine.bridge.resources"):
        for i in range(95_797):  # what asyncio's accept loop wrote in 20 s, once per line
            now[0] = i * 20 / 95_797
            errors(None, {"message": "socket.accept() out of system resource", "exception": out_of_files})
        errors(None, {"message": "Task exception was never retrieved", "exception": ValueError("x")})
    assert errors.counts == {"EMFILE": 95_797, "ValueError": 1}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 + 1  # EMFILE at 0 and 10 s (the 20 s end just short of the next); the ValueError once
    assert "more since the last line" in lines[1] and errors.recent(60) == {"EMFILE": 95_797, "ValueError": 1}
    now[0] = 100.0
    assert errors.recent(60) == {}


def test_a_bar_whose_closing_tick_never_comes_is_closed_by_the_wall_clock(qe_home: Path) -> None:
    """A 24/7 hourly market fed live ticks of the last hour, then nothing: housekeeping closes the bar."""
    from quant_engine.bridge.bars import BarClock
    from quant_engine.bridge.ticks import Tick
    from quant_engine.calendars import MarketTime

    version = register_model(qe_home, seed=1, vol_range=(0.0, 5.0))
    registry = make_model_registry()
    handler = StateHandler(
        get_feature_set("default"),
        LocalChampionModel(registry),
        prediction_log=prediction_log(registry),
        clock=BarClock(MarketTime("24/7", "1h")),
    )
    settings = BridgeSettings(port=0, tokens=("tok",), clock="wall", close_grace_s=0.1)
    service = BridgeService(settings, handler, ("SYN00",))
    last_hour_ms = int((time.time() // 3600 - 1) * 3600 * 1000)

    async def main() -> list[dict]:
        stop, started = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(service.run(stop, started))
        await started.wait()
        async with connect(f"ws://127.0.0.1:{service.port}/?token=tok") as ws:
            await ws.send(json.dumps({"subscribe": ["SYN00"]}))
            await ws.recv()
            for k in range(3):  # no tick of a later hour follows: only the clock can close this bar
                service.buffer.put(
                    Tick("SYN00", 100.0 + k, last_hour_ms + 600_000 * (k + 1), 10 * k, 100.0, 102.0, 99.0)
                )
            signal = json.loads(await asyncio.wait_for(ws.recv(), 20))
        stop.set()
        await running
        return [signal]

    (signal,) = asyncio.run(asyncio.wait_for(main(), 60))
    assert signal["ts"] == pd.Timestamp(last_hour_ms + 3_600_000, unit="ms", tz="UTC").isoformat()
    assert signal["bar_origin"] == "partial" and signal["model_version"] == version
    assert service.closed_by_clock == 1 and service.reference.kind == "wall"


def test_a_new_champion_is_loaded_off_the_loop_and_an_unreadable_one_shows_in_health(qe_home: Path) -> None:
    first = register_model(qe_home, seed=1)
    registry = make_model_registry()
    model = LocalChampionModel(registry)
    handler = StateHandler(get_feature_set("default"), model, prediction_log=prediction_log(registry))
    service = BridgeService(BridgeSettings(port=0, reload_s=0.05), handler, ("SYN00",))
    loaded_in: list[str] = []
    check = model.check

    def unreadable_then_real():  # noqa: ANN202
        loaded_in.append(threading.current_thread().name)
        if len(loaded_in) <= 3:
            raise OSError(errno.EMFILE, "Too many open files")
        return check()

    model.check = unreadable_then_real

    async def main() -> tuple[dict, dict]:
        stop, started = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(service.run(stop, started))
        await started.wait()
        second = register_model(qe_home, seed=2)
        async with asyncio.timeout(20):
            while "model" not in service.problems():
                await asyncio.sleep(0.01)
            failing = service.health()
            while model.version != second:
                await asyncio.sleep(0.01)
        healed = service.health()
        stop.set()
        await running
        return failing, healed

    failing, healed = asyncio.run(main())
    assert failing["status"] == "degraded" and failing["model_version"] == first
    assert failing["problems"]["model"] == "new champion not loaded: OSError: [Errno 24] Too many open files"
    assert "model" not in healed["problems"] and healed["counters"]["handler"]["model_reloads"] == 1
    assert healed["counters"]["handler"]["model_load_errors"] == 3
    assert set(loaded_in) == {"bridge-champion_0"}  # one background thread, never the event loop's
