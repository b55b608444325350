"""The bridge end to end: stored history replayed through the feed server -> feed client -> bridge -> subscriber.

* parity: features equal the offline store's for the same (ticker, time), predictions equal the
  batch scorer's;
* fuzz: 10,000+ malformed frames interleaved with the feed, counted by reason, and the output is
  still exactly the parity output;
* reliability: the feed server is killed and restarted 10 times during one replay (one outage
  longer than two sessions); every bar arrives exactly once, with the stored bar's values, and
  the bridge reconnects by itself each time.

Replays run at one session per 0.3 s (11 sessions, Good Friday closed; 26 for the reliability test)
over three tickers, so each test takes seconds.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from bridge_harness import SESSION_WALL_S, run_bridge

from quant_engine.backends import make_bar_history, make_group_stores, make_model_registry, make_offline_store
from quant_engine.bridge.feed_server import DROP_REASON_OF_KIND, MALFORMED_KINDS, FaultPlan
from quant_engine.features.ingest import IngestionRequest, ingest
from quant_engine.features.registry import get_feature_set
from quant_engine.monitoring.predictions import prediction_log
from quant_engine.monitoring.scoring import score_batch
from quant_engine.training.registry import ModelMetadata

TICKERS = ["SYN00", "SYN01", "SYN02"]
REPLAY_START, REPLAY_END = "2021-04-01", "2021-04-16"  # 11 sessions: Good Friday, April 2, is closed
#: The reliability replay is longer, so its ten outages (about 5.5 s) end well before it does.
LONG_REPLAY_END = "2021-05-07"  # 26 sessions


@pytest.fixture
def stored(qe_home: Path) -> dict[str, object]:
    """Ingested history (features + bars) and a registered champion trained before the replay."""
    ingest(
        IngestionRequest.build("synthetic", "2020-01-01", LONG_REPLAY_END, tickers=TICKERS, group=make_offline_store()),
        make_group_stores(),
    )
    rows = make_offline_store().read(None, "2020-01-01T00:00Z", "2021-03-31T23:59Z")
    features = get_feature_set("default").names
    label = (rows["log_return_5"] > rows["log_return_5"].median()).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "seed": 0},
        xgb.DMatrix(rows[features].to_numpy(np.float32), label=label, feature_names=features),
        8,
    )
    booster.save_model(str(qe_home / "model.json"))
    registry = make_model_registry()
    version = registry.register(
        qe_home / "model.json",
        ModelMetadata(
            features=features, data_start="2020-01-01T00:00Z", data_end="2021-03-31T21:00Z", data_fingerprint="f"
        ),
    )
    registry.promote(version, "first model")
    offline = make_offline_store().read(None, f"{REPLAY_START}T00:00Z", f"{LONG_REPLAY_END}T23:59Z")
    return {
        "version": version,
        "replay": replay_bars(REPLAY_END),
        "long_replay": replay_bars(LONG_REPLAY_END),
        "offline": offline.set_index(["ticker", "event_time"]),
    }


def replay_bars(end: str) -> pd.DataFrame:
    """The stored bars from REPLAY_START to ``end``: what the feed replays."""
    return make_bar_history().read(
        TICKERS, pd.Timestamp(REPLAY_START, tz="UTC"), pd.Timestamp(end, tz="UTC") + pd.Timedelta(days=1)
    )


def assert_parity(received: list[dict], stored: dict[str, object], replay: pd.DataFrame) -> None:
    """Every replayed bar once; its features equal the offline store's row, to 1e-9 (they are equal)."""
    offline = stored["offline"]
    keys = [(s["ticker"], pd.Timestamp(s["ts"])) for s in received]
    assert len(keys) == len(set(keys)), "a bar was emitted twice"
    expected = set(zip(replay["ticker"], replay["ts"], strict=True))
    assert set(keys) == expected, f"missing {sorted(expected - set(keys))}, unexpected {sorted(set(keys) - expected)}"
    names = get_feature_set("default").names
    got = np.array([[s["features"][n] for n in names] for s in received])
    want = offline.loc[keys, names].to_numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    assert np.array_equal(got, want)  # and in fact bit for bit


def test_replayed_features_and_predictions_equal_the_offline_pipeline(stored: dict[str, object]) -> None:
    received, service = asyncio.run(run_bridge(stored["replay"]))
    assert_parity(received, stored, stored["replay"])
    assert {s["bar_origin"] for s in received} == {"feed"}
    bridge = prediction_log(make_model_registry()).read().set_index(["ticker", "ts"])["prob"]
    # The batch scorer finds each of its predictions already logged by the bridge with the same
    # probability, bit for bit, so it appends none: one prediction per (version, ticker, bar).
    scored = score_batch(make_model_registry(), make_offline_store(), REPLAY_START, REPLAY_END)
    assert scored.rows_scored == len(received) and scored.rows_appended == 0
    log = prediction_log(make_model_registry()).read()
    assert len(log) == len(bridge) == len(received) and set(log["source"]) == {"bridge"}
    assert set(log["model_version"]) == {stored["version"]}
    sent = {(s["ticker"], pd.Timestamp(s["ts"])): s["prob"] for s in received}
    assert all(sent[key] == prob for key, prob in bridge.items())


def test_ten_thousand_malformed_frames_are_counted_and_change_nothing(stored: dict[str, object]) -> None:
    faults = FaultPlan(seed=3, malformed_rate=1.0)  # a malformed frame before every good one
    received, service = asyncio.run(run_bridge(stored["replay"], faults=faults, ticks_per_bar=310))
    dropped = service.feed.stats.dropped
    assert sum(dropped.values()) >= 10_000
    assert {DROP_REASON_OF_KIND[k] for k in MALFORMED_KINDS} <= {r for r, n in dropped.items() if n > 0}
    assert_parity(received, stored, stored["replay"])
    assert service.handler.bars.counters["bars_feed"] == len(stored["replay"])


def test_feed_killed_and_restarted_ten_times_loses_and_duplicates_no_bar(stored: dict[str, object]) -> None:
    rng = random.Random(11)

    async def disrupt(kill: Callable[[], Awaitable[None]], restart: Callable[[], Awaitable[None]]) -> None:
        await asyncio.sleep(0.6 + 0.5 * SESSION_WALL_S)
        for outage in range(10):
            await kill()
            # One outage spans more than two whole sessions: those bars must come from the store.
            await asyncio.sleep(2.4 * SESSION_WALL_S if outage == 4 else rng.uniform(0.1, 0.5) * SESSION_WALL_S)
            await restart()
            # Up long enough for the client's longest backoff (0.1 s): it must reconnect every time.
            await asyncio.sleep(rng.uniform(0.6, 0.9) * SESSION_WALL_S)

    received, service = asyncio.run(run_bridge(stored["long_replay"], disrupt=disrupt))
    assert_parity(received, stored, stored["long_replay"])
    replay = stored["long_replay"]
    # Bars whose close was lost came from the store (stored / backfill), never as partial values.
    assert {s["bar_origin"] for s in received} <= {"feed", "stored", "backfill"}
    bars = service.handler.bars.counters
    assert service.feed.stats.reconnects >= 10 and bars["bars_partial"] == 0
    assert bars["bars_backfill"] >= len(TICKERS)  # the long outage cost every ticker a whole session
    assert bars["bars_closed"] == len(replay) == len(received)
