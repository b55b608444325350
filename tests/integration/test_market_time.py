"""One timestamp rule everywhere, on the NYSE calendar across 2019-2021: the store, the labels, the
bridge's signals and the prediction log agree on both sides of each daylight-saving change, around
July 4, Thanksgiving's half day and Good Friday; the bridge's logged predictions settle against their
labels in summer and in winter; sessions the bridge missed and the store does not hold are counted,
shown, and degrade the ticker's signals until the store has them."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb
from bridge_harness import run_bridge

from quant_engine.backends import make_bar_history, make_group_stores, make_model_registry, make_offline_store
from quant_engine.bridge.bars import BarClock
from quant_engine.bridge.feed_server import ReplaySchedule
from quant_engine.bridge.service import BridgeService, build_model
from quant_engine.bridge.settings import BridgeSettings
from quant_engine.bridge.state import StateHandler
from quant_engine.calendars import get_calendar
from quant_engine.config import get_settings
from quant_engine.data.synthetic import SyntheticMarket
from quant_engine.features.ingest import IngestionRequest, ingest
from quant_engine.features.registry import get_feature_set
from quant_engine.monitoring.concept_drift import join_labels
from quant_engine.monitoring.predictions import prediction_log
from quant_engine.training.registry import ModelMetadata
from quant_engine.wfo.labels import fixed_horizon_labels

TICKERS = ["SYN00", "SYN01", "SYN02"]
NYSE = get_calendar("XNYS")
WINDOWS = {  # replayed through the bridge; each holds a change the old weekday / 21:00 rule got wrong
    "spring DST": ("2019-03-04", "2019-03-15"),
    "July 4": ("2019-07-01", "2019-07-12"),
    "autumn DST": ("2019-10-28", "2019-11-08"),
    "Thanksgiving": ("2019-11-25", "2019-12-06"),
    "Good Friday": ("2021-03-29", "2021-04-09"),
}


def register_champion(qe_home: Path, until: str) -> str:
    """A small model on the stored rows up to ``until``, registered and promoted."""
    rows = make_offline_store().read(None, None, pd.Timestamp(until, tz="UTC"))
    features = get_feature_set("default").names
    label = (rows["log_return_5"] > rows["log_return_5"].median()).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2, "seed": 0},
        xgb.DMatrix(rows[features].to_numpy(np.float32), label=label, feature_names=features),
        5,
    )
    booster.save_model(str(qe_home / "model.json"))
    registry = make_model_registry()
    version = registry.register(
        qe_home / "model.json",
        ModelMetadata(
            features=features,
            data_start=str(rows["event_time"].min()),
            data_end=str(rows["event_time"].max()),
            data_fingerprint="market-time",
        ),
    )
    registry.promote(version, "first model")
    return version


def test_store_bridge_labels_and_prediction_log_share_every_stamp(qe_home: Path) -> None:
    for start, end in (("2018-01-02", "2019-12-31"), ("2020-03-02", "2021-04-16")):  # a year of warm-up each
        ingest(
            IngestionRequest.build("synthetic", start, end, tickers=TICKERS, group=make_offline_store()),
            make_group_stores(),
        )
    version = register_champion(qe_home, "2019-02-28")
    history = make_bar_history()
    store = make_offline_store()
    for name, (start, end) in WINDOWS.items():
        first = pd.Timestamp(int(NYSE.open_ns[NYSE.session_range(start, end)[0]]), tz="UTC")
        last = pd.Timestamp(int(NYSE.close_ns[NYSE.session_range(start, end)[1] - 1]), tz="UTC")
        replay = history.read(TICKERS, first, last)
        received, _ = asyncio.run(run_bridge(replay))
        closes = list(NYSE.bar_closes(start, end))
        # the bridge's signals, the stored features and the stored bars: the same instants, the calendar's
        stamps = sorted({pd.Timestamp(s["ts"]) for s in received})
        stored = store.read(TICKERS, first, last)
        assert stamps == closes == sorted(stored["event_time"].unique()) == sorted(replay["ts"].unique()), name
        features = get_feature_set("default").names
        by_key = stored.set_index(["ticker", "event_time"])
        got = np.array([[s["features"][n] for n in features] for s in received])
        want = by_key.loc[[(s["ticker"], pd.Timestamp(s["ts"])) for s in received], features].to_numpy()
        assert np.array_equal(got, want), name
        # the bridge's logged predictions settle against labels priced from the same stored bars
        log = prediction_log(make_model_registry()).read()
        logged = log[(log["source"] == "bridge") & log["ts"].between(first, last)]
        assert len(logged) == len(received) and set(logged["model_version"]) == {version}
        labels = fixed_horizon_labels(history.read(TICKERS, first, last + pd.Timedelta(days=7)), 1)
        joined = join_labels(logged, labels, now=last + pd.Timedelta(days=7))
        assert joined.n_pending == 0 and len(joined.frame) == len(logged), name
    summer = [c for c in NYSE.bar_closes("2019-03-11", "2019-11-01")]
    assert {c.hour for c in summer} == {20, 17}  # summer closes, and July 3's half day
    assert pd.Timestamp("2019-11-29 18:00", tz="UTC") in NYSE.bar_closes(*WINDOWS["Thanksgiving"])


def test_sessions_missed_without_history_are_counted_shown_and_degrade_until_the_store_has_them(qe_home: Path) -> None:
    ingest(
        IngestionRequest.build("synthetic", "2018-06-01", "2019-11-22", tickers=TICKERS, group=make_offline_store()),
        make_group_stores(),
    )
    register_champion(qe_home, "2019-06-28")
    engine = get_settings()
    history = make_bar_history(engine)
    settings = BridgeSettings(port=0, tokens=("tok",), log_batch=10_000)
    handler = StateHandler(
        get_feature_set("default"),
        build_model(settings, engine),
        history=history,
        prediction_log=prediction_log(make_model_registry()),
        clock=BarClock(history.market_time),
    )
    service = BridgeService(settings, handler, tuple(TICKERS))
    live = SyntheticMarket().fetch(TICKERS, "2019-11-25", "2019-12-06")
    by_session: dict[str, list] = {}
    for _, tick in ReplaySchedule(live, ticks_per_bar=4).ticks():
        day = str(BarClock.ts(handler.bars.clock.locate(tick.time_ms).close_ms).date())
        by_session.setdefault(day, []).append(tick)

    signals = {}
    for day, ticks in by_session.items():
        if day in ("2019-11-26", "2019-11-27"):
            continue  # the feed was down for two sessions the store does not hold either
        signals[day] = handler.on_ticks(ticks)
        if day != "2019-11-29":
            continue
        assert {s.status for s in signals["2019-11-25"]} != {"degraded"}
        assert {s.status for s in signals["2019-11-29"]} == {"degraded"}  # the half day, after the gap
        assert all(s.weight == 0.0 and math.isfinite(s.prob) for s in signals["2019-11-29"])
        gaps = service.health()["gaps"]
        assert gaps["unfilled_bars_total"] == 6 and gaps["degraded_tickers"] == 3
        assert gaps["missing"]["SYN01"] == ["2019-11-26T21:00:00+00:00", "2019-11-27T21:00:00+00:00"]
        metrics = {m.name: m for m in service.metrics()}
        assert list(metrics["qe_bridge_bars_unfilled_total"].samples) == [({}, 6)]
        assert list(metrics["qe_bridge_degraded_tickers"].samples) == [({}, 3)]
        # the nightly ingestion catches up: the store now has the missed sessions and the bridge's own
        ingest(
            IngestionRequest.build(
                "synthetic", "2019-11-25", "2019-11-29", tickers=TICKERS, group=make_offline_store()
            ),
            make_group_stores(),
        )

    assert handler.counters["rebuilds"] == 3 and service.health()["gaps"]["degraded_tickers"] == 0
    assert {s.status for day in ("2019-12-02", "2019-12-06") for s in signals[day]}.isdisjoint({"degraded"})
    ingest(
        IngestionRequest.build("synthetic", "2019-12-02", "2019-12-06", tickers=TICKERS, group=make_offline_store()),
        make_group_stores(),
    )
    stored = (
        make_offline_store().read(TICKERS, "2019-12-02T00:00Z", "2019-12-06T23:59Z").set_index(["ticker", "event_time"])
    )
    names = get_feature_set("default").names
    for day in ("2019-12-02", "2019-12-06"):  # rebuilt from the store: the same features as the store's again
        for signal in signals[day]:
            assert [signal.features[n] for n in names] == stored.loc[(signal.ticker, signal.ts), names].tolist()
    logged = prediction_log(make_model_registry()).read()
    assert pd.Timestamp("2019-11-29 18:00", tz="UTC") not in set(logged["ts"])  # degraded predictions: not logged
    assert handler.counters["signals_degraded"] == 3
