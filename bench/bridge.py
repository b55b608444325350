"""Bridge tick-to-signal latency and sustained tick rate, against a plain websockets relay as the floor.

Three processes on one machine: a **feed** (its own process, a websockets server sending
pre-encoded yfinance-format frames, paced or as fast as it can), the **system under test** in
this process, and a **subscriber** (its own process) connected to the system's publisher.

Systems:

* ``bridge``: the real :class:`~quant_engine.bridge.service.BridgeService` (feed client with
  decoding and checks, bounded buffer, bar aggregation, batched features of 100 tickers warmed
  up from 300 stored bars each, one XGBoost call per batch, volatility check, prediction log,
  publisher);
* ``relay`` (the floor): a plain websockets client reading the same feed and a plain websockets
  server forwarding to the subscriber, with no decoding and no work: what websockets alone costs.

**Tick-to-signal latency** is measured from the moment the system receives the bar-closing tick
(the bridge stamps the wall time at which its feed client hands it the tick, ``received_at`` on
the signal; the relay stamps its receipt of the frame) to the moment the signal reaches the
subscribed client in the other process (its wall clock at ``recv``). It covers decode, buffer,
aggregation, features, inference, the volatility check, publishing and one WebSocket hop; it
excludes the feed's own hop into the system (the same for both systems). Workload: 100 tickers,
2,000 ticks/s, 10 regular ticks per ticker and session followed by a ``POST_MARKET`` tick per
ticker, so all 100 bars close together once per session (0.55 s). The first session is played
but not measured: each ticker's first tick loads its 253 stored bars (a one-time warm-up, not
the steady state this measures).

**Sustained tick rate**: the feed sends ``--flood`` ticks (100 tickers, sessions of 50 ticks per
ticker plus the closes) as fast as it can; the rate is the ticks the system fully processed
divided by the time from its first to its last tick. Then the bridge runs paced at the target
rate (20,000 ticks/s) for 3 s, and so does the relay: a system *sustains* the rate when every tick
arrived, none was dropped by the buffer, and it had taken the last tick within 0.5 s of its sending.

**Core placement**: on a machine with two cores or more, the system under test runs on core 0 and
the feed and subscriber processes share the others, for both systems (``--no-pin`` leaves placement
to the kernel). On two cores the kernel otherwise often wakes the subscriber on the core the bridge
is computing on, where it waits for the bridge's next batch to finish: the load generator and the
measuring client would be measured, not the system (printed unpinned figures show the difference).

Targets: p99 <= 5 ms at 2,000 ticks/s, >= 20,000 ticks/s sustained. Run:
``python bench/bridge.py [--sessions 20] [--flood 102000] [--no-pin]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

TICKERS = [f"SYN{i:02d}" for i in range(100)]
TOKEN = "bench"
LATENCY_RATE = 2_000
TARGET_P99_MS = 5.0
TARGET_RATE = 20_000
PACED_SECONDS = 3.0
#: A paced run is sustained when the system has taken every tick this soon after the feed sent the last.
MAX_TAIL_S = 0.5


def core_placement(pin: bool) -> tuple[set[int], set[int]] | None:
    """``(system cores, harness cores)``: core 0 for the system under test, the rest for feed and subscriber."""
    if not pin or not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    return ({cores[0]}, set(cores[1:])) if len(cores) >= 2 else None


def _pin(cores: set[int] | None) -> None:
    if cores:
        os.sched_setaffinity(0, cores)


# --- the feed (its own process) -----------------------------------------------------------------


def session_frames(after: pd.Timestamp, sessions: int, ticks_per_ticker: int, seed: int) -> list[tuple[str, bool]]:
    """``(frame, closes_a_bar)`` in send order for the NYSE sessions after ``after``: regular ticks
    round-robin over tickers, then the closes."""
    from quant_engine.bridge.ticks import MarketHours, Tick
    from quant_engine.bridge.wire import encode_tick
    from quant_engine.calendars import get_calendar

    nyse = get_calendar("XNYS")
    first = nyse.last_closed_session(after) + 1
    rng = np.random.default_rng(seed)
    frames = []
    for session in range(first, first + sessions):
        open_ms, close_ms = int(nyse.open_ns[session]) // 1_000_000, int(nyse.close_ns[session]) // 1_000_000
        paths = np.round(
            50.0 * np.exp(np.cumsum(0.002 * rng.standard_normal((len(TICKERS), ticks_per_ticker)), axis=1)), 2
        )
        for k in range(ticks_per_ticker):
            time_ms = open_ms + (k + 1) * ((close_ms - open_ms) // (ticks_per_ticker + 1))
            for i, ticker in enumerate(TICKERS):
                seen = paths[i, : k + 1]
                tick = Tick(
                    ticker,
                    float(seen[-1]),
                    time_ms,
                    1_000 * (k + 1),
                    float(seen[0]),
                    float(seen.max()),
                    float(seen.min()),
                )
                frames.append((encode_tick(tick), False))
        for i, ticker in enumerate(TICKERS):
            seen = paths[i]
            tick = Tick(
                ticker,
                float(seen[-1]),
                close_ms,
                1_000 * ticks_per_ticker,
                float(seen[0]),
                float(seen.max()),
                float(seen.min()),
                MarketHours.POST_MARKET,
            )
            frames.append((encode_tick(tick), True))
    return frames


def feed_process(
    frames: list[tuple[str, bool]],
    rate: float | None,
    port_queue: mp.Queue,
    go: mp.Event,
    result_queue: mp.Queue,
    cores: set[int] | None,
) -> None:
    """Serve ``frames`` to the first subscriber once ``go`` is set: paced at ``rate``/s, or flat out."""
    from websockets.asyncio.server import broadcast, serve

    _pin(cores)

    async def main() -> None:
        subscribed = asyncio.Event()
        clients = []

        async def handler(ws) -> None:  # noqa: ANN001
            clients.append(ws)
            async for _ in ws:
                subscribed.set()

        async with serve(handler, "127.0.0.1", 0, compression=None, write_limit=2**22, max_queue=None) as server:
            port_queue.put(server.sockets[0].getsockname()[1])
            await subscribed.wait()
            await asyncio.to_thread(go.wait)
            start = time.time()
            chunk = max(1, int(rate * 0.002)) if rate else 256  # paced: a chunk every 2 ms
            for i in range(0, len(frames), chunk):
                for frame, _ in frames[i : i + chunk]:
                    broadcast(clients, frame)
                if rate:
                    await asyncio.sleep(max(0.0, start + (i + chunk) / rate - time.time()))
                else:  # flat out, but never more than 1 MiB ahead of the reader
                    while clients[0].transport.get_write_buffer_size() > 2**20:
                        await asyncio.sleep(0.0005)
                    await asyncio.sleep(0)
            result_queue.put({"sent": len(frames), "start": start, "end": time.time()})
            await asyncio.sleep(30)  # stay up until terminated

    asyncio.run(main())


# --- the subscriber (its own process) -----------------------------------------------------------


def subscriber_process(
    port: int, expected: int, skip: int, ready: mp.Event, result_queue: mp.Queue, cores: set[int] | None
) -> None:
    """Subscribe to everything; latency of each message after the first ``skip`` = now - the system's receipt stamp."""
    from websockets.asyncio.client import connect

    _pin(cores)

    async def main() -> None:
        arrivals: list[tuple[float, str]] = []
        async with connect(f"ws://127.0.0.1:{port}/?token={TOKEN}", max_size=2**20) as ws:
            await ws.send(json.dumps({"subscribe": ["*"]}))
            await ws.recv()
            ready.set()
            while len(arrivals) < skip + expected:
                try:
                    async with asyncio.timeout(15):
                        message = await ws.recv()
                except TimeoutError:
                    break
                arrivals.append((time.time(), message))
        # Parsed after the run, so parsing one message never delays the arrival stamp of the next.
        latencies = [
            now - (json.loads(m)["received_at"] if m.startswith("{") else float(m.split("|")[0]))
            for now, m in arrivals[skip:]
        ]
        result_queue.put({"latencies_ms": [1_000 * x for x in latencies], "last_at": time.time()})

    asyncio.run(main())


# --- the systems (this process) -------------------------------------------------------------------


class _MemoryHistory:
    """Stored bars in memory, with BarHistory's reading methods."""

    def __init__(self, bars: pd.DataFrame) -> None:
        self.by_ticker = {t: g.reset_index(drop=True) for t, g in bars.groupby("ticker")}

    def between(self, ticker: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        f = self.by_ticker[ticker]
        return f.loc[(f["ts"] >= start) & (f["ts"] <= end)]

    def last_bars(self, ticker: str, until: pd.Timestamp, count: int) -> pd.DataFrame:
        f = self.by_ticker[ticker]
        return f.loc[f["ts"] <= until].tail(count)


def build_bridge(feed_url: str, history_end: pd.Timestamp):  # noqa: ANN201
    """A bridge over 100 tickers with a small registered champion and 300 stored bars per ticker."""
    import xgboost as xgb

    from quant_engine.backends import make_model_registry
    from quant_engine.bridge.inference import LocalChampionModel
    from quant_engine.bridge.service import BridgeService
    from quant_engine.bridge.settings import BridgeSettings
    from quant_engine.bridge.state import StateHandler
    from quant_engine.data.synthetic import SyntheticMarket
    from quant_engine.features.registry import get_feature_set
    from quant_engine.monitoring.predictions import prediction_log
    from quant_engine.monitoring.run import record_baseline
    from quant_engine.training.registry import ModelMetadata

    feature_set = get_feature_set("default")
    bars = SyntheticMarket(n_tickers=100, seed=3).fetch(None, history_end - pd.Timedelta(days=440), history_end)
    batch = feature_set.compute_batch(bars).dropna()
    names = feature_set.names
    label = (batch["log_return_1"] > 0).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 4, "seed": 0},
        xgb.DMatrix(batch[names].to_numpy(np.float32), label=label, feature_names=names),
        50,
    )
    home = Path(os.environ["QE_HOME"])
    booster.save_model(str(home / "model.json"))
    registry = make_model_registry()
    version = registry.register(
        home / "model.json",
        ModelMetadata(
            features=names,
            data_start=str(batch["event_time"].min()),
            data_end=str(batch["event_time"].max()),
            data_fingerprint="bench",
        ),
    )
    record_baseline(registry, version, booster, batch.assign(label=label), batch.assign(label=label), names)
    registry.promote(version, "bench")
    settings = BridgeSettings(port=0, tokens=(TOKEN,), feed_url=feed_url, log_batch=10_000, buffer_size=100_000)
    handler = StateHandler(
        feature_set,
        LocalChampionModel(registry),
        history=_MemoryHistory(bars),
        prediction_log=prediction_log(registry),
        log_batch=settings.log_batch,
    )
    return BridgeService(settings, handler, tuple(TICKERS), feed_options={"heartbeat_s": None})


class Relay:
    """The floor: a plain websockets client on the feed, a plain websockets server for the subscriber."""

    def __init__(self, feed_url: str, forward: bool) -> None:
        self.feed_url, self.forward = feed_url, forward
        self.subscribers: list = []
        self.received = 0
        self.first_at = self.last_at = 0.0
        self.port = 0

    async def run(self, stop: asyncio.Event, started: asyncio.Event) -> None:
        from websockets.asyncio.client import connect
        from websockets.asyncio.server import broadcast, serve

        pad = "x" * 600  # about a signal's size

        async def handler(ws) -> None:  # noqa: ANN001
            await ws.recv()
            self.subscribers.append(ws)
            await ws.send("{}")
            await ws.wait_closed()

        async with (
            serve(handler, "127.0.0.1", 0, compression=None) as server,
            connect(self.feed_url, max_size=2**20, max_queue=None, compression=None) as feed,
        ):
            self.port = server.sockets[0].getsockname()[1]
            await feed.send(json.dumps({"subscribe": TICKERS}))
            started.set()
            reading = asyncio.ensure_future(self._read(feed, broadcast, pad))
            await stop.wait()
            reading.cancel()

    async def _read(self, feed, broadcast, pad: str) -> None:  # noqa: ANN001
        async for _frame in feed:
            now = time.time()
            if not self.received:
                self.first_at = now
            self.received += 1
            self.last_at = now
            if self.forward and self.received % 11 == 0:  # as many messages as the bridge's signals
                broadcast(self.subscribers, f"{now:.6f}|{pad}")


# --- runs -------------------------------------------------------------------------------------------


async def _run(
    system: str,
    frames: list[tuple[str, bool]],
    rate: float | None,
    expected_signals: int,
    history_end: pd.Timestamp,
    skip: int = 0,
    placement: tuple[set[int], set[int]] | None = None,
) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    port_q, feed_q, sub_q = ctx.Queue(), ctx.Queue(), ctx.Queue()
    go, ready = ctx.Event(), ctx.Event()
    harness_cores = placement[1] if placement else None
    feed = ctx.Process(target=feed_process, args=(frames, rate, port_q, go, feed_q, harness_cores), daemon=True)
    feed.start()
    feed_url = f"ws://127.0.0.1:{await asyncio.to_thread(port_q.get, True, 60)}"
    target = build_bridge(feed_url, history_end) if system == "bridge" else Relay(feed_url, forward=rate is not None)
    stop, started = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(target.run(stop, started))
    await started.wait()
    subscriber = ctx.Process(
        target=subscriber_process, args=(target.port, expected_signals, skip, ready, sub_q, harness_cores), daemon=True
    )
    subscriber.start()
    await asyncio.to_thread(ready.wait, 60)
    if system == "bridge":
        while not target.feed.stats.connected:
            await asyncio.sleep(0.01)
    go.set()
    sent = await asyncio.to_thread(feed_q.get, True, 600)
    n_ticks = len(frames)
    deadline = time.time() + 30
    while time.time() < deadline:  # until the system has taken every tick
        done = (
            (target.feed.stats.ticks >= n_ticks and len(target.buffer) == 0)
            if system == "bridge"
            else target.received >= n_ticks
        )
        if done:
            break
        await asyncio.sleep(0.001)
    finished_at = time.time()
    subscribed = await asyncio.to_thread(sub_q.get, True, 60) if expected_signals else {"latencies_ms": []}
    stop.set()
    await running
    for process in (feed, subscriber):
        process.terminate()
        process.join(5)
    latencies = np.array(subscribed["latencies_ms"])
    out = {
        "sent": sent["sent"],
        "send_seconds": sent["end"] - sent["start"],
        "signals": len(latencies),
        "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) if latencies.size else float("nan"),
    }
    if system == "bridge":
        stats = target.feed.stats
        out.update(
            received=stats.ticks,
            dropped=target.buffer.dropped,
            coalesced=target.buffer.coalesced,
            rate=stats.ticks / max(finished_at - sent["start"], 1e-9),
            tail_s=finished_at - sent["end"],
        )
    else:
        out.update(
            received=target.received,
            dropped=0,
            coalesced=0,
            rate=target.received / max(target.last_at - target.first_at, 1e-9),
            tail_s=finished_at - sent["end"],
        )
    return out


def _latency_runs(
    frames: list[tuple[str, bool]],
    sessions: int,
    history_end: pd.Timestamp,
    placement: tuple[set[int], set[int]] | None,
    all_cores: set[int] | None,
) -> dict[str, dict]:
    """Both systems' latency runs, this process on the system cores (or all of them when unpinned)."""
    _pin(placement[0] if placement else all_cores)
    return {
        system: asyncio.run(
            _run(
                system,
                frames,
                LATENCY_RATE,
                sessions * len(TICKERS),
                history_end,
                skip=len(TICKERS),
                placement=placement,
            )
        )
        for system in ("bridge", "relay")
    }


def run(sessions: int, flood: int, placement: tuple[set[int], set[int]] | None) -> dict[str, dict[str, float]]:
    history_end = pd.Timestamp("2024-01-05 21:00", tz="UTC")
    latency_frames = session_frames(history_end, sessions + 1, 10, seed=1)  # + the warm-up session
    flood_sessions = max(1, flood // (51 * len(TICKERS)))
    flood_frames = session_frames(history_end, flood_sessions, 50, seed=2)
    paced_frames = session_frames(
        history_end, max(1, int(TARGET_RATE * PACED_SECONDS) // (51 * len(TICKERS))), 50, seed=3
    )
    all_cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as home:
        os.environ["QE_HOME"] = home
        if placement:
            results["latency_unpinned"] = _latency_runs(latency_frames, sessions, history_end, None, all_cores)
        results["latency"] = _latency_runs(latency_frames, sessions, history_end, placement, all_cores)
        for system in ("bridge", "relay"):
            results[f"{system}_flood"] = asyncio.run(
                _run(system, flood_frames, None, 0, history_end, placement=placement)
            )
        for system in ("bridge", "relay"):
            results[f"{system}_paced"] = asyncio.run(
                _run(system, paced_frames, TARGET_RATE, 0, history_end, placement=placement)
            )
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20, help="sessions (100 closes each) in the latency run")
    parser.add_argument("--flood", type=int, default=102_000, help="ticks in the flat-out run")
    parser.add_argument("--no-pin", action="store_true", help="leave process placement to the kernel")
    args = parser.parse_args(argv)
    placement = core_placement(not args.no_pin)
    load_before = os.getloadavg()[0]
    r = run(args.sessions, args.flood, placement)
    print(
        f"machine: {os.cpu_count()} cores, 1-min load average {load_before:.1f} before and "
        f"{os.getloadavg()[0]:.1f} after the run (other work on the machine slows every figure, floor included)"
    )
    where = (
        "kernel placement"
        if placement is None
        else f"system on core {min(placement[0])}, feed and subscriber on cores {sorted(placement[1])}"
    )
    lat, floor = r["latency"]["bridge"], r["latency"]["relay"]
    print(
        f"tick-to-signal at {LATENCY_RATE:,} ticks/s, {len(TICKERS)} tickers, {lat['signals']} signals "
        f"(relay floor: {floor['signals']} messages); {where}"
    )
    print(f"  bridge      p50 {lat['p50_ms']:7.3f} ms   p99 {lat['p99_ms']:7.3f} ms")
    print(f"  relay floor p50 {floor['p50_ms']:7.3f} ms   p99 {floor['p99_ms']:7.3f} ms")
    print(f"  ratio       p50 {lat['p50_ms'] / floor['p50_ms']:7.2f}x     p99 {lat['p99_ms'] / floor['p99_ms']:7.2f}x")
    print(f"  target p99 <= {TARGET_P99_MS} ms: {'met' if lat['p99_ms'] <= TARGET_P99_MS else 'NOT met'}")
    if "latency_unpinned" in r:
        lat, floor = r["latency_unpinned"]["bridge"], r["latency_unpinned"]["relay"]
        print("  the same with kernel placement (feed, system and subscriber competing for the cores):")
        print(f"  bridge      p50 {lat['p50_ms']:7.3f} ms   p99 {lat['p99_ms']:7.3f} ms")
        print(f"  relay floor p50 {floor['p50_ms']:7.3f} ms   p99 {floor['p99_ms']:7.3f} ms")
    flood, relay = r["bridge_flood"], r["relay_flood"]
    print(f"flat-out feed, {flood['sent']:,} ticks")
    print(
        f"  bridge      {flood['rate']:10,.0f} ticks/s  (received {flood['received']:,}, buffer coalesced "
        f"{flood['coalesced']:,}, dropped {flood['dropped']:,})"
    )
    print(f"  relay floor {relay['rate']:10,.0f} ticks/s")
    print(f"  ratio       {flood['rate'] / relay['rate']:10.2f}x")
    print(
        f"paced at {TARGET_RATE:,} ticks/s (target: sustained = every tick in, none dropped, caught up "
        f"within {MAX_TAIL_S} s of the last tick)"
    )
    for name in ("bridge", "relay"):
        paced = r[f"{name}_paced"]
        sustained = paced["received"] == paced["sent"] and paced["dropped"] == 0 and paced["tail_s"] <= MAX_TAIL_S
        label = "relay floor" if name == "relay" else name
        print(
            f"  {label:11} sent {paced['sent']:,} in {paced['send_seconds']:.1f} s, received {paced['received']:,}, "
            f"dropped {paced['dropped']}, caught up {paced['tail_s'] * 1000:.0f} ms after the last tick: "
            f"{'sustained' if sustained else 'NOT sustained'}"
        )


if __name__ == "__main__":
    main()
