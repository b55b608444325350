"""The bridge's online layer on a replay of a market whose edge flips: it adapts, restarts exactly,
resets on a promotion, warms up from the prediction log and switches itself off when it hurts.

The store holds the whole market (a replay, so stored bars exist for every session); the bridge's
state handler gets each session's ticks from a replay schedule, and after each session the labels
the market has settled by then are read from the stored bars and learnt, as the service's
housekeeping does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from quant_engine.backends import (
    make_bar_history,
    make_bar_store,
    make_group_stores,
    make_model_registry,
    make_offline_store,
)
from quant_engine.bridge.bars import BarClock
from quant_engine.bridge.feed_server import ReplaySchedule
from quant_engine.bridge.service import build_model, build_online
from quant_engine.bridge.settings import BridgeSettings
from quant_engine.bridge.state import StateHandler
from quant_engine.config import get_settings
from quant_engine.data.synthetic import Shift, SyntheticMarket
from quant_engine.features.ingest import IngestionRequest, ingest
from quant_engine.features.registry import get_feature_set
from quant_engine.monitoring.predictions import prediction_log
from quant_engine.monitoring.run import record_baseline
from quant_engine.online.layer import OnlineLayer
from quant_engine.training.dataset import TrainingSetConfig, build_training_set
from quant_engine.training.registry import ModelMetadata

SHIFT_AT = "2020-03-02"
SERVE = ("2020-01-02", "2020-05-29")
#: An edge three times the default market's (so six tickers show it within weeks), flipped on SHIFT_AT.
SHIFTS = [Shift("2016-06-01", "concept", edge_scale=3.0), Shift(SHIFT_AT, "concept", edge_scale=-1.0)]


@pytest.fixture
def market(qe_home: Path) -> dict:
    """Six tickers whose (strong) edge flips on SHIFT_AT, stored through 2020-05; a champion of 2017-2019."""
    path = qe_home / "bars.parquet"
    bars = SyntheticMarket(n_tickers=6, seed=11, start="2016-06-01", end="2020-06-30", shifts=SHIFTS).fetch(
        None, "2016-06-01", "2020-06-30"
    )
    bars.to_parquet(path)
    ingest(
        IngestionRequest.build("parquet", "2016-09-01", SERVE[1], path=str(path), group=make_offline_store()),
        make_group_stores(),
    )
    version = champion(qe_home, "a", "2017-01-01", "2019-12-31")
    live = bars[bars["ts"].between(pd.Timestamp(SERVE[0], tz="UTC"), pd.Timestamp(SERVE[1] + " 23:59", tz="UTC"))]
    return {"version": version, "live": live}


def champion(home: Path, name: str, start: str, end: str) -> str:
    folder = home / f"training-{name}"
    summary = build_training_set(
        TrainingSetConfig.from_params({"start": start, "end": end}, make_offline_store()),
        folder,
        make_offline_store(),
        make_bar_store(),
    )
    features = summary["features"]
    train, holdout = pd.read_parquet(folder / "train" / "train.parquet"), pd.read_parquet(folder / "holdout.parquet")
    xgb.train(
        {"objective": "binary:logistic", "max_depth": 2, "eta": 0.1, "min_child_weight": 20, "seed": 0},
        xgb.DMatrix(train[features].to_numpy(np.float32), label=train["label"], feature_names=features),
        30,
    ).save_model(str(folder / "model.json"))
    registry = make_model_registry()
    version = registry.register(
        folder / "model.json",
        ModelMetadata(
            features=features,
            data_start=summary["train_start"],
            data_end=summary["holdout_end"],
            data_fingerprint=summary["fingerprint"],
            training={"dataset": summary["params"]},
        ),
    )
    record_baseline(registry, version, registry.load_booster(version), train, holdout, features)
    registry.promote(version, f"model {name}")
    return version


class Bridge:
    """A state handler with the service's online wiring (build_online), driven session by session."""

    def __init__(self, settings: BridgeSettings, *, online: OnlineLayer | None = None) -> None:
        engine = get_settings()
        self.history = make_bar_history(engine)
        model = build_model(settings, engine)
        built = build_online(settings, engine, self.history, model)
        assert built is not None
        self.online, self.labels, self.state = built
        if online is not None:
            self.online = online
        self.handler = StateHandler(
            get_feature_set("default"),
            model,
            history=self.history,
            prediction_log=prediction_log(make_model_registry()),
            clock=BarClock(self.history.market_time),
            log_batch=settings.log_batch,
            online=self.online,
        )

    def sessions(self, live: pd.DataFrame) -> dict[pd.Timestamp, list]:
        out: dict[pd.Timestamp, list] = {}
        for _, tick in ReplaySchedule(live, ticks_per_bar=4).ticks():
            out.setdefault(BarClock.ts(self.handler.bars.clock.locate(tick.time_ms).close_ms), []).append(tick)
        return out

    def run(self, live: pd.DataFrame, *, until: pd.Timestamp | None = None, after: pd.Timestamp | None = None) -> list:
        signals = []
        for close, ticks in self.sessions(live).items():
            if (until is not None and close > until) or (after is not None and close <= after):
                continue
            signals += self.handler.on_ticks(ticks)
            wanted = self.handler.online_labels_wanted()
            if wanted is not None:
                tickers, first, now = wanted
                self.handler.settle_online(self.labels(self.online.version, tickers, first, now), now)
        return signals


SETTINGS = BridgeSettings(port=0, tokens=("t",), reload_s=0.001, log_batch=10_000)


def logloss(signals: list, labels: pd.DataFrame, column: str) -> float:
    frame = pd.DataFrame([s.to_json() for s in signals]).assign(ts=lambda f: pd.to_datetime(f["ts"]))
    joined = frame.merge(labels[["ticker", "ts", "label"]], on=["ticker", "ts"])
    p, y = joined[column].clip(1e-6, 1 - 1e-6).to_numpy(), joined["label"].to_numpy()
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_the_bridge_adapts_after_the_flip_and_a_restart_changes_nothing(market: dict) -> None:
    live, shift = market["live"], pd.Timestamp(SHIFT_AT, tz="UTC")
    through = Bridge(SETTINGS)
    signals = through.run(live, until=shift - pd.Timedelta(hours=1))
    slope_at_shift = through.online.calibration.a
    signals += through.run(live, after=shift - pd.Timedelta(hours=1))
    assert {s.model_version for s in signals} == {market["version"]}
    predicted = [s for s in signals if s.prob_batch is not None]
    labels = through.labels(market["version"], sorted(live["ticker"].unique()), live["ts"].min(), live["ts"].max())
    # the edge flipped: the map that kept the batch probability's direction turns it around, and where
    # the batch model now loses, the adapted probability loses less
    assert slope_at_shift > 0 > through.online.calibration.a
    settled = [s for s in predicted if s.ts >= shift + pd.Timedelta(days=30)]
    assert logloss(settled, labels, "prob_adapted") < logloss(settled, labels, "prob_batch")
    assert all(abs(s.prob_adapted - s.prob_batch) <= SETTINGS.online_max_shift + 1e-12 for s in predicted)
    assert {s.prob_source for s in predicted} <= {"adapted", "batch"}
    assert through.online.labels == len(predicted) - 6  # the last session's labels are not known yet
    logged = through.handler.take_log_rows()
    assert [row[2] for row in logged] == [s.prob_batch for s in predicted]  # the log keeps the champion's own

    # a restart in the middle: the state saved at stop, a fresh bridge restored from it
    middle = shift + pd.Timedelta(days=10)
    first = Bridge(SETTINGS, online=OnlineLayer(max_shift=SETTINGS.online_max_shift))
    early = first.run(live, until=middle)
    first.online.save(first.state)
    second = Bridge(SETTINGS)
    assert second.online.version == market["version"] and second.online.labels == first.online.labels
    late = second.run(live, after=middle)
    assert [s.to_json() for s in early + late] == [s.to_json() for s in signals]


def test_warm_up_from_the_prediction_log_equals_the_layer_that_ran(market: dict) -> None:
    live = market["live"]
    ran = Bridge(SETTINGS)
    ran.run(live)
    ran.handler.flush()  # the prediction log now holds every prediction; no state was saved
    assert not ran.state.exists()
    warmed = Bridge(SETTINGS)
    assert warmed.online.labels == ran.online.labels
    assert warmed.online.calibration.to_json() == ran.online.calibration.to_json()


def test_a_promotion_resets_the_layer(market: dict, qe_home: Path) -> None:
    live, middle = market["live"], pd.Timestamp("2020-04-01", tz="UTC")
    bridge = Bridge(SETTINGS)
    bridge.run(live, until=middle)
    assert bridge.online.labels > 100
    newer = champion(qe_home, "b", "2017-06-01", "2020-02-28")
    late = bridge.run(live, after=middle)
    assert late[-1].model_version == newer and bridge.online.version == newer
    assert bridge.online.labels == len([s for s in late if s.model_version == newer and s.prob_batch]) - 6


def test_when_adapting_hurts_it_switches_itself_off_and_says_so(market: dict) -> None:
    live = market["live"]
    noisy = BridgeSettings(
        port=0, tokens=("t",), online_forgetting=0.5, online_max_shift=0.5, online_min_labels=30, log_batch=10_000
    )
    bridge = Bridge(noisy)  # a memory of two labels: the map chases noise
    signals = bridge.run(live, until=pd.Timestamp(SHIFT_AT, tz="UTC"))
    assert bridge.online.switched_off >= 1
    used_batch = [s for s in signals if s.prob_source == "batch"]
    assert used_batch and all(s.prob == s.prob_batch for s in used_batch)
    status = bridge.online.status()
    losses = status["rolling_logloss"]
    assert status["active"] == (losses["adapted"] <= losses["batch"])
    if not status["active"]:
        assert status["reason"] == "off: its rolling log-loss is worse than the batch model's"
