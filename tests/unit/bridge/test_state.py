"""State handler: streamed features equal the batch path's, one model call per batch, vol check, prediction log."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quant_engine.backends import make_model_registry
from quant_engine.bridge.inference import LocalChampionModel
from quant_engine.bridge.state import BRIDGE_SOURCE, StateHandler
from quant_engine.data.synthetic import SyntheticMarket
from quant_engine.features.registry import get_feature_set
from quant_engine.monitoring.predictions import predict_proba, prediction_log

from .conftest import FrameHistory, register_model, session_ticks

FEATURE_SET = get_feature_set("default")
LIVE_FROM = pd.Timestamp("2022-03-01", tz="UTC")


@pytest.fixture(scope="module")
def market() -> pd.DataFrame:
    return SyntheticMarket(n_tickers=3, seed=11).fetch(None, "2020-06-01", "2022-03-31")


def handler_for(market: pd.DataFrame, **options: object) -> StateHandler:
    registry = make_model_registry()
    return StateHandler(
        FEATURE_SET,
        LocalChampionModel(registry),
        history=FrameHistory(market.loc[market["ts"] < LIVE_FROM]),
        prediction_log=prediction_log(registry),
        **options,
    )


def test_live_features_and_predictions_equal_the_batch_path(qe_home: Path, market: pd.DataFrame) -> None:
    version = register_model(qe_home, seed=1, vol_range=(0.0, 5.0))
    handler = handler_for(market, log_batch=1000)
    live = market.loc[market["ts"] >= LIVE_FROM]
    calls: list[int] = []
    predict = handler.model.predict
    handler.model.predict = lambda rows: (calls.append(len(rows)), predict(rows))[1]
    signals = []
    for _, day in live.groupby("ts"):  # one batch of ticks per session
        signals += handler.on_ticks(session_ticks(day))
    assert len(signals) == len(live) and {s.bar_origin for s in signals} == {"feed"}
    assert handler.counters["warmups"] == 3
    assert calls == [3] * live["ts"].nunique()  # one model call per batch, all tickers in it
    batch = FEATURE_SET.compute_batch(market)
    batch = batch.loc[batch["event_time"] >= LIVE_FROM].reset_index(drop=True)
    streamed = pd.DataFrame([{"ticker": s.ticker, "event_time": s.ts, **s.features} for s in signals])
    streamed = streamed.sort_values(["ticker", "event_time"]).reset_index(drop=True)
    assert np.array_equal(batch[FEATURE_SET.names].to_numpy(), streamed[FEATURE_SET.names].to_numpy())
    expected = predict_proba(make_model_registry().load_booster(version), batch, FEATURE_SET.names)
    probs = pd.DataFrame([{"ticker": s.ticker, "event_time": s.ts, "prob": s.prob} for s in signals])
    merged = batch[["ticker", "event_time"]].assign(expected=expected).merge(probs, on=["ticker", "event_time"])
    assert np.array_equal(merged["prob"].to_numpy(), merged["expected"].to_numpy())
    assert {s.status for s in signals} == {"ok"} and {s.regime for s in signals} <= {"calm", "normal", "stressed"}

    assert prediction_log(make_model_registry()).files() == []  # below log_batch: not written yet
    handler.flush()
    logged = prediction_log(make_model_registry()).read()
    assert len(logged) == len(live) and set(logged["source"]) == {BRIDGE_SOURCE}
    assert set(logged["model_version"]) == {version}


def test_signals_outside_the_training_volatility_are_suppressed_or_scaled(qe_home: Path, market: pd.DataFrame) -> None:
    register_model(qe_home, seed=1, vol_range=(0.01, 0.02))  # far below the market's realised vol
    live = market.loc[(market["ts"] >= LIVE_FROM) & (market["ts"] < LIVE_FROM + pd.Timedelta(days=3))]
    suppressed = handler_for(market).on_ticks(session_ticks(live))
    assert {s.status for s in suppressed} == {"suppressed"} and {s.weight for s in suppressed} == {0.0}
    assert {s.regime for s in suppressed} == {"stressed"}
    handler = handler_for(market, vol_policy="scale")
    scaled = handler.on_ticks(session_ticks(live))
    high = handler.model.volatility_range[1]
    for s in scaled:
        assert s.status == "scaled"
        assert s.weight == pytest.approx((2 * s.prob - 1) * high / s.realized_vol)


def test_a_ticker_without_history_warms_up_on_live_bars(qe_home: Path, market: pd.DataFrame) -> None:
    register_model(qe_home, seed=1)
    registry = make_model_registry()
    handler = StateHandler(FEATURE_SET, LocalChampionModel(registry), prediction_log=prediction_log(registry))
    live = market.loc[(market["ts"] >= LIVE_FROM) & (market["ticker"] == "SYN00")].head(5)
    signals = handler.on_ticks(session_ticks(live))
    assert [s.status for s in signals] == ["warming_up"] * 5 and handler.counters["predictions"] == 0
    assert handler.flush() is None


def test_model_without_the_feature_sets_columns_is_refused(qe_home: Path) -> None:
    register_model(qe_home, seed=1)
    with pytest.raises(ValueError, match="does not compute"):
        StateHandler(FEATURE_SET.select(["log_return_1"]), LocalChampionModel(make_model_registry()))
    with pytest.raises(ValueError, match="vol_policy='clip'"):
        StateHandler(FEATURE_SET, LocalChampionModel(make_model_registry()), vol_policy="clip")


def test_a_promoted_champion_takes_over_between_batches_without_losing_bars(
    qe_home: Path, market: pd.DataFrame
) -> None:
    first = register_model(qe_home, seed=1, vol_range=(0.0, 5.0))
    registry = make_model_registry()
    handler = StateHandler(
        FEATURE_SET,
        LocalChampionModel(registry, check_every_s=0),
        history=FrameHistory(market.loc[market["ts"] < LIVE_FROM]),
        prediction_log=prediction_log(registry),
    )
    days = [day for _, day in market.loc[market["ts"] >= LIVE_FROM].groupby("ts")][:4]
    signals = handler.on_ticks(session_ticks(days[0])) + handler.on_ticks(session_ticks(days[1]))
    second = register_model(qe_home, seed=2, vol_range=(0.0, 5.0))
    signals += handler.on_ticks(session_ticks(days[2])) + handler.on_ticks(session_ticks(days[3]))
    assert [s.model_version for s in signals] == [first] * 6 + [second] * 6
    assert handler.counters["model_reloads"] == 1 and len({(s.ticker, s.ts) for s in signals}) == 12
    handler.flush()
    assert prediction_log(registry).read().groupby("model_version").size().to_dict() == {first: 6, second: 6}


def test_signals_wait_for_the_first_champion_without_losing_bars(qe_home: Path, market: pd.DataFrame) -> None:
    version = register_model(qe_home, seed=1, vol_range=(0.0, 5.0), promote=False)
    registry = make_model_registry()
    model = LocalChampionModel(registry, check_every_s=0)
    handler = StateHandler(
        FEATURE_SET,
        model,
        history=FrameHistory(market.loc[market["ts"] < LIVE_FROM]),
        prediction_log=prediction_log(registry),
        log_batch=1,
    )
    days = [day for _, day in market.loc[market["ts"] >= LIVE_FROM].groupby("ts")]
    waiting = handler.on_ticks(session_ticks(days[0]))
    assert {(s.status, s.model_version, s.weight) for s in waiting} == {("no_model", None, 0.0)}
    assert all(np.isnan(s.prob) for s in waiting) and handler.counters["signals_no_model"] == 3
    assert all(np.isfinite(s.features["realized_vol_20"]) for s in waiting)  # features are computed meanwhile
    registry.promote(version, "first model")
    served = handler.on_ticks(session_ticks(days[1]))
    assert {(s.status, s.model_version) for s in served} == {("ok", version)}
    assert handler.counters["model_reloads"] == 1
    assert len(prediction_log(registry).read()) == 3  # only real predictions are logged


def test_five_minute_bars_stream_to_the_batch_paths_features(qe_home: Path) -> None:
    """Intraday at 5m: ticks of the replay feed build each bar exactly; features equal the batch path's."""
    from quant_engine.bridge.bars import BarClock
    from quant_engine.bridge.feed_server import ReplaySchedule
    from quant_engine.calendars import MarketTime

    market_time = MarketTime("XNYS", "5m")
    bars = SyntheticMarket(n_tickers=2, seed=7, freq="5m", start="2019-11-18", end="2019-11-29").fetch(
        None, "2019-11-18", "2019-11-30"
    )  # ends with Thanksgiving (closed) and its half day
    live_from = pd.Timestamp("2019-11-27", tz="UTC")
    registry = make_model_registry()
    handler = StateHandler(
        FEATURE_SET,
        LocalChampionModel(registry),
        history=FrameHistory(bars[bars["ts"] < live_from]),
        clock=BarClock(market_time),
    )
    live = bars[bars["ts"] >= live_from]
    ticks = [tick for _, tick in ReplaySchedule(live, market_time=market_time, ticks_per_bar=4).ticks()]
    signals = [s for start in range(0, len(ticks), 50) for s in handler.on_ticks(ticks[start : start + 50])]
    assert len(signals) == len(live) and {s.bar_origin for s in signals} == {"feed"}
    assert max(s.ts for s in signals) == pd.Timestamp("2019-11-29 18:00", tz="UTC")  # the half day's last bar
    batch = FEATURE_SET.compute_batch(bars).set_index(["ticker", "event_time"])
    streamed = np.array([[s.features[n] for n in FEATURE_SET.names] for s in signals])
    assert np.array_equal(streamed, batch.loc[[(s.ticker, s.ts) for s in signals], FEATURE_SET.names].to_numpy())


def unopenable(*args: object) -> None:
    raise OSError(errno.EMFILE, "Too many open files")


class UnopenableHistory(FrameHistory):
    """Stored bars whose files cannot be opened for the first ``failures`` reads (out of descriptors)."""

    def __init__(self, bars: pd.DataFrame, failures: int) -> None:
        super().__init__(bars)
        self.failures = failures

    def last_bars(self, ticker: str, until: pd.Timestamp, count: int) -> pd.DataFrame:
        if self.failures > 0:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().last_bars(ticker, until, count)


def test_files_that_cannot_be_opened_never_end_processing(
    qe_home: Path, market: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = register_model(qe_home, seed=1, vol_range=(0.0, 5.0))
    registry = make_model_registry()
    history = UnopenableHistory(market.loc[market["ts"] < LIVE_FROM], failures=2)
    handler = StateHandler(
        FEATURE_SET,
        LocalChampionModel(registry, check_every_s=0),
        history=history,
        prediction_log=prediction_log(registry),
        log_batch=1000,
    )
    days = [session_ticks(day) for _, day in market.loc[market["ts"] >= LIVE_FROM].groupby("ts")][:3]
    # the stored bars: SYN00's warm-up fails (both attempts) on its first tick and succeeds on its next
    signals = handler.on_ticks(days[0][:1])
    assert handler.current_problems["history"].endswith("Too many open files") and handler.counters["warmups"] == 0
    signals += handler.on_ticks(days[0][1:])
    assert "history" not in handler.current_problems and handler.counters["warmups"] == 3
    reference = handler_for(market, log_batch=1000).on_ticks(days[0])
    assert [(s.ticker, s.features, s.status) for s in signals] == [(s.ticker, s.features, s.status) for s in reference]
    # the prediction log: a failed write keeps the rows for the next flush
    append = handler.prediction_log.append
    monkeypatch.setattr(handler.prediction_log, "append", unopenable)
    assert handler.flush() is None and handler.pending_log == 3 and "prediction_log" in handler.problems
    monkeypatch.setattr(handler.prediction_log, "append", append)
    # a new champion whose pointer cannot be read: the old one serves on, the next look picks it up
    second = register_model(qe_home, seed=2, vol_range=(0.0, 5.0))
    champion = registry.champion
    monkeypatch.setattr(handler.model.registry, "champion", unopenable)
    served = handler.on_ticks(days[1])
    assert {s.model_version for s in served} == {first} and "model" in handler.problems
    monkeypatch.setattr(handler.model.registry, "champion", champion)
    served = handler.on_ticks(days[2])
    assert {s.model_version for s in served} == {second} and "model" not in handler.problems
    assert handler.flush() is not None and handler.problems == {}
    logged = prediction_log(registry).read()
    assert len(logged) == 9 and handler.counters["log_write_errors"] == 1
    assert served[0].to_json()["detail"] is None and handler.counters["model_load_errors"] == 1
