"""A feed server replaying bars into a running bridge, and a subscriber: the bridge end to end, in-process.

Used by the replay tests; each replay runs at one session per ``SESSION_WALL_S`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import pandas as pd
from websockets.asyncio.client import connect

from quant_engine.backends import make_bar_history, make_model_registry
from quant_engine.bridge.bars import BarClock
from quant_engine.bridge.feed_server import FaultPlan, FeedServer, ReplayClock, ReplaySchedule
from quant_engine.bridge.service import BridgeService, build_model
from quant_engine.bridge.settings import BridgeSettings
from quant_engine.bridge.state import StateHandler
from quant_engine.config import get_settings
from quant_engine.features.registry import get_feature_set
from quant_engine.monitoring.predictions import prediction_log

SESSION_WALL_S = 0.3
SPEED = 23_400 / SESSION_WALL_S  # market ms per wall ms: a 6.5 h session in SESSION_WALL_S


async def run_bridge(
    replay: pd.DataFrame,
    *,
    faults: FaultPlan | None = None,
    ticks_per_bar: int = 6,
    feature_set: str = "default",
    disrupt: Callable[[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]], Awaitable[None]] | None = None,
) -> tuple[list[dict], BridgeService]:
    """Replay ``replay`` through a feed server into a bridge; return what a subscriber received."""
    history = make_bar_history(get_settings())
    schedule = ReplaySchedule(replay, market_time=history.market_time, ticks_per_bar=ticks_per_bar, seed=1)
    clock = ReplayClock(time.time() + 0.6, SPEED)  # the first tick comes once everyone is connected
    feed = await FeedServer(schedule, clock, port=0, faults=faults).start()
    port = feed.port
    servers = [feed]

    async def kill() -> None:
        await servers[-1].stop()

    async def restart() -> None:
        servers.append(await FeedServer(schedule, clock, port=port, faults=faults).start())

    engine, settings = get_settings(), BridgeSettings(port=0, tokens=("tok",), feed_url=feed.url, log_batch=10_000)
    handler = StateHandler(
        get_feature_set(feature_set),
        build_model(settings, engine),
        history=history,
        prediction_log=prediction_log(make_model_registry()),
        log_batch=settings.log_batch,
        clock=BarClock(history.market_time),
    )
    service = BridgeService(
        settings,
        handler,
        tuple(sorted(replay["ticker"].unique())),
        feed_options={"backoff_initial_s": 0.02, "backoff_max_s": 0.1, "seed": 7, "stable_after_s": 0.05},
    )
    stop, started = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(service.run(stop, started))
    await started.wait()
    received: list[dict] = []
    async with connect(f"ws://127.0.0.1:{service.port}/?token=tok") as ws:
        await ws.send(json.dumps({"subscribe": ["*"]}))
        await ws.recv()
        disruption = asyncio.create_task(disrupt(kill, restart)) if disrupt else None
        deadline = time.monotonic() + 30
        while len(received) < len(replay) and time.monotonic() < deadline:
            try:
                received.append(json.loads(await asyncio.wait_for(ws.recv(), 1.0)))
            except TimeoutError:
                continue
        if disruption is not None:
            await disruption
        try:  # anything beyond the expected bars would be a duplicate: give it a moment to show up
            received.append(json.loads(await asyncio.wait_for(ws.recv(), 3 * SESSION_WALL_S)))
        except TimeoutError:
            pass
    stop.set()
    await running
    await servers[-1].stop()
    return received, service
