"""Prediction log, label join as of a cutoff, quality bounds against the holdout, volatility regime state."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from quant_engine.monitoring.concept_drift import (
    DEFAULT_TOLERANCES,
    LabelJoin,
    QualityBaseline,
    evaluate_quality,
    join_labels,
    quality_metrics,
    rolling_quality,
)
from quant_engine.monitoring.detectors import ADWIN
from quant_engine.monitoring.predictions import PredictionLog
from quant_engine.monitoring.regimes import VolRegimeState, VolRegimeTracker, market_proxy_returns

T0 = pd.Timestamp("2024-01-02 15:00", tz="UTC")


def _predictions(n: int, prob, *, ticker: str = "A", start: pd.Timestamp = T0, version: str = "v1") -> pd.DataFrame:
    ts = pd.date_range(start, periods=n, freq="h", tz="UTC")
    return pd.DataFrame({"ticker": ticker, "ts": ts, "prob": prob, "model_version": version, "source": "batch"})


def _labels(predictions: pd.DataFrame, label, horizon: str = "1h") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ticker": predictions["ticker"],
            "ts": predictions["ts"],
            "t1": predictions["ts"] + pd.Timedelta(horizon),
            "label": label,
        }
    )


def _model(rng: np.random.Generator, n: int, accuracy: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities (0.45/0.55) that are on the right side with probability ``accuracy``."""
    label = rng.integers(0, 2, n)
    right = rng.uniform(size=n) < accuracy
    prob = np.where(right == (label == 1), 0.55, 0.45)
    return prob, label


# --- prediction log ------------------------------------------------------------------------------


def test_log_round_trip_and_rerun_keeps_one_row(tmp_path) -> None:
    log = PredictionLog.local(tmp_path / "preds")
    first = _predictions(3, [0.6, 0.4, 0.7])
    assert log.append(first) is not None
    # A rerun of the same scorer logs the same rows with new values: the latest wins, once.
    assert log.append(first.assign(prob=[0.1, 0.2, 0.3])) is not None
    log.append(_predictions(2, 0.5, ticker="B"))
    frame = log.read()
    assert len(frame) == 5
    assert frame.loc[frame["ticker"] == "A", "prob"].tolist() == [0.1, 0.2, 0.3]
    assert list(frame.columns) == ["ticker", "ts", "prob", "model_version", "source"]
    assert str(frame["ts"].dtype) == "datetime64[ns, UTC]"
    assert len(log.files()) == 3
    # Only whole part files: no temporary file is left behind.
    assert sorted(p.name for p in (tmp_path / "preds").iterdir()) == [k.rsplit("/", 1)[1] for k in log.files()]


def test_log_keeps_model_versions_apart_and_one_prediction_per_bar_whoever_wrote_it(tmp_path) -> None:
    log = PredictionLog.local(tmp_path / "preds")
    log.append(_predictions(2, 0.6))
    log.append(_predictions(2, 0.6, version="v2"))
    log.append(_predictions(2, 0.6).assign(source="bridge"))  # the bridge said the same of the same bars
    frame = log.read()
    assert len(frame) == 4
    assert frame.groupby("model_version")["source"].agg(set).to_dict() == {"v1": {"bridge"}, "v2": {"batch"}}


def test_empty_log_and_empty_append(tmp_path) -> None:
    log = PredictionLog.local(tmp_path / "preds")
    assert log.read().empty
    assert log.append(_predictions(0, 0.5)) is None
    assert log.files() == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.assign(prob=1.2), r"prob must be a probability in \[0, 1\]; 3 rows"),
        (lambda f: f.assign(prob=np.nan), r"prob must be a probability"),
        (lambda f: f.assign(ts=f["ts"].dt.tz_localize(None)), r"must be tz-aware"),
        (lambda f: f.drop(columns="model_version"), r"missing column\(s\) \['model_version'\]"),
    ],
)
def test_log_rejects_bad_rows(tmp_path, change, message) -> None:
    log = PredictionLog.local(tmp_path / "preds")
    with pytest.raises(ValueError, match=message):
        log.append(change(_predictions(3, 0.5)))
    assert log.files() == []


# --- label join ----------------------------------------------------------------------------------


def test_join_uses_only_labels_settled_by_now() -> None:
    preds = _predictions(5, 0.6)
    labels = _labels(preds, [1, 0, 1, 1, 0], horizon="2h")
    # Labels settle at ts + 2h: by T0 + 4h the first three have.
    joined = join_labels(preds, labels, now=T0 + pd.Timedelta(hours=4))
    assert joined.frame["label"].tolist() == [1, 0, 1]
    assert joined.n_pending == 2
    assert (joined.frame["t1"] <= joined.now).all()
    # Predictions after now are not counted at all; a missing label is pending.
    joined = join_labels(preds, labels.iloc[1:], now=T0 + pd.Timedelta(hours=2))
    assert len(joined.frame) == 0 and joined.n_pending == 3


def test_join_sorts_by_settle_time() -> None:
    preds = _predictions(2, 0.6)
    labels = _labels(preds, [1, 0])
    labels.loc[0, "t1"] = T0 + pd.Timedelta(hours=5)  # the first prediction settles last
    joined = join_labels(preds, labels, now=T0 + pd.Timedelta(hours=6))
    assert joined.frame["ts"].tolist() == [preds["ts"][1], preds["ts"][0]]


@pytest.mark.parametrize(
    ("now", "labels_change", "message"),
    [
        ("2024-01-03", lambda f: f, r"now='2024-01-03' is naive"),
        ("2024-01-03 00:00Z", lambda f: f.assign(label=2), r"label must hold only 0 and 1"),
        ("2024-01-03 00:00Z", lambda f: pd.concat([f, f]), r"more than one row per \(ticker, ts\)"),
        ("2024-01-03 00:00Z", lambda f: f.drop(columns="t1"), r"missing column\(s\) \['t1'\]"),
    ],
)
def test_join_rejects_bad_input(now, labels_change, message) -> None:
    preds = _predictions(3, 0.6)
    with pytest.raises(ValueError, match=message):
        join_labels(preds, labels_change(_labels(preds, [1, 0, 1])), now=now)


# --- metrics and bounds --------------------------------------------------------------------------


def test_quality_metrics_by_hand() -> None:
    metrics = quality_metrics([0.9, 0.2, 0.6], [1, 0, 0])
    assert metrics["n"] == 3
    assert metrics["hit_rate"] == pytest.approx(2 / 3)
    assert metrics["log_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.8) + math.log(0.4)) / 3)
    assert metrics["brier"] == pytest.approx((0.01 + 0.04 + 0.36) / 3)
    with pytest.raises(ValueError, match="only 0 and 1"):
        quality_metrics([0.5], [2])
    with pytest.raises(ValueError, match=r"finite probabilities in \[0, 1\]"):
        quality_metrics([1.5], [1])


def test_baseline_round_trips_and_validates() -> None:
    prob, label = _model(np.random.default_rng(0), 500, 0.55)
    baseline = QualityBaseline.from_predictions(prob, label)
    assert baseline.n == 500
    assert baseline.hit_rate == pytest.approx(quality_metrics(prob, label)["hit_rate"])
    assert QualityBaseline.from_dict(json.loads(json.dumps(baseline.to_dict()))) == baseline
    with pytest.raises(ValueError, match=r"hit_rate=1.5 must be in \[0, 1\]"):
        QualityBaseline(n=10, hit_rate=1.5, log_loss=0.7, brier=0.25, log_loss_std=0.1, brier_std=0.1)
    with pytest.raises(ValueError, match=r"n=1 must be an integer >= 2"):
        QualityBaseline(n=1, hit_rate=0.5, log_loss=0.7, brier=0.25, log_loss_std=0.1, brier_std=0.1)


def _joined(prob, label, start: pd.Timestamp = T0) -> LabelJoin:
    preds = _predictions(len(prob), prob, start=start)
    return join_labels(preds, _labels(preds, label), now=start + pd.Timedelta(hours=len(prob) + 1))


def test_wilson_interval_matches_the_textbook_value() -> None:
    # 50 hits in 100 at 95%: Wilson (0.4038, 0.5962).
    label = np.array([1, 0] * 50)
    prob = np.where(np.arange(100) < 50, label, 1 - label) * 0.2 + 0.4
    baseline = QualityBaseline(n=10_000, hit_rate=0.5, log_loss=0.7, brier=0.25, log_loss_std=0.1, brier_std=0.1)
    check = evaluate_quality(_joined(prob, label), baseline, confidence=0.95, detectors={}).checks["hit_rate"]
    assert check.value == 0.5
    assert (check.lower, check.upper) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))


def test_bounds_false_alarm_rate_when_quality_is_unchanged() -> None:
    # Window and baseline drawn from the same 55%-accurate model, tolerance 0: at confidence 0.99
    # each one-sided check should breach about 0.5% of the time. Bound tested: <= 2% of 300 runs.
    rng = np.random.default_rng(42)
    breaches = {"hit_rate": 0, "log_loss": 0, "brier": 0}
    for _ in range(300):
        baseline = QualityBaseline.from_predictions(*_model(rng, 2000, 0.55))
        report = evaluate_quality(
            _joined(*_model(rng, 2000, 0.55)), baseline, tolerances=dict.fromkeys(breaches, 0.0), detectors={}
        )
        for name in report.breached_metrics:
            breaches[name] += 1
    assert all(count <= 6 for count in breaches.values()), breaches


def test_worse_quality_breaches_and_better_does_not() -> None:
    rng = np.random.default_rng(1)
    baseline = QualityBaseline.from_predictions(*_model(rng, 5000, 0.56))
    worse = evaluate_quality(_joined(*_model(rng, 5000, 0.48)), baseline, detectors={})
    assert set(worse.breached_metrics) == {"hit_rate", "log_loss", "brier"}
    assert worse.drifted
    assert worse.checks["hit_rate"].diff_upper < -DEFAULT_TOLERANCES["hit_rate"]
    better = evaluate_quality(_joined(*_model(rng, 5000, 0.62)), baseline, detectors={})
    assert better.breached_metrics == [] and not better.drifted


def test_tolerance_absorbs_a_small_significant_drop() -> None:
    rng = np.random.default_rng(2)
    baseline = QualityBaseline.from_predictions(*_model(rng, 50_000, 0.56))
    joined = _joined(*_model(rng, 50_000, 0.545))
    assert "hit_rate" in evaluate_quality(joined, baseline, tolerances={"hit_rate": 0.0}, detectors={}).breached_metrics
    assert (
        "hit_rate"
        not in evaluate_quality(joined, baseline, tolerances={"hit_rate": 0.01}, detectors={}).breached_metrics
    )


def test_detectors_run_over_the_error_stream_in_settle_order() -> None:
    rng = np.random.default_rng(3)
    prob_a, label_a = _model(rng, 3000, 0.6)
    prob_b, label_b = _model(rng, 1000, 0.3)
    joined = _joined(np.concatenate([prob_a, prob_b]), np.concatenate([label_a, label_b]))
    baseline = QualityBaseline.from_predictions(prob_a, label_a)
    report = evaluate_quality(joined, baseline, detectors={"adwin": ADWIN()})
    first_bad_t1 = T0 + pd.Timedelta(hours=3000 + 1)
    assert report.detector_alarms["adwin"]
    assert first_bad_t1 <= report.detector_alarms["adwin"][0] < first_bad_t1 + pd.Timedelta(hours=300)
    # The default detectors are used when none are given, and JSON output carries the alarms.
    default = evaluate_quality(joined, baseline)
    assert set(default.detector_alarms) == {"adwin", "page_hinkley"}
    for times in default.detector_alarms.values():
        assert times and first_bad_t1 <= times[0] < first_bad_t1 + pd.Timedelta(hours=300)
    assert json.loads(json.dumps(default.to_dict()))["detector_alarms"]["page_hinkley"]


def test_evaluate_rejects_bad_input() -> None:
    prob, label = _model(np.random.default_rng(4), 100, 0.55)
    baseline = QualityBaseline.from_predictions(prob, label)
    preds = _predictions(3, 0.6)
    nothing_settled = join_labels(preds, _labels(preds, [1, 0, 1], horizon="10h"), now=T0 + pd.Timedelta(hours=3))
    with pytest.raises(ValueError, match=r"no prediction has a label settled by .* \(3 pending\)"):
        evaluate_quality(nothing_settled, baseline)
    joined = _joined(prob, label)
    with pytest.raises(ValueError, match=r"confidence=1.0 must be a number in \(0, 1\)"):
        evaluate_quality(joined, baseline, confidence=1.0)
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        evaluate_quality(joined, baseline, tolerances={"auc": 0.1})
    with pytest.raises(ValueError, match=r"tolerances\['brier'\]=-1 must be a finite number >= 0"):
        evaluate_quality(joined, baseline, tolerances={"brier": -1})


def test_rolling_quality_is_a_trailing_window_per_settle_time() -> None:
    prob = np.array([0.9, 0.9, 0.1, 0.1])
    label = np.array([1, 1, 1, 1])
    rolled = rolling_quality(_joined(prob, label), window=2)
    assert rolled["hit_rate"].tolist() == [1.0, 1.0, 0.5, 0.0]
    assert rolled["n"].tolist() == [1, 2, 2, 2]
    assert rolled["brier"].iloc[-1] == pytest.approx(0.81)
    assert list(rolled.columns) == ["t1", "n", "hit_rate", "hit_rate_lower", "hit_rate_upper", "log_loss", "brier"]
    assert (rolled["hit_rate_lower"] <= rolled["hit_rate"]).all() and (
        rolled["hit_rate"] <= rolled["hit_rate_upper"]
    ).all()
    # The last window's bounds are evaluate_quality's Wilson interval for the same 2 predictions.
    last = _joined(prob[-2:], label[-2:])
    baseline = QualityBaseline(n=100, hit_rate=0.5, log_loss=0.7, brier=0.25, log_loss_std=0.1, brier_std=0.1)
    check = evaluate_quality(last, baseline, detectors={}).checks["hit_rate"]
    assert rolled["hit_rate_lower"].iloc[-1] == pytest.approx(check.lower)
    assert rolled["hit_rate_upper"].iloc[-1] == pytest.approx(check.upper)
    with pytest.raises(ValueError, match="window=0 must be an integer >= 1"):
        rolling_quality(_joined(prob, label), window=0)


# --- volatility regime ---------------------------------------------------------------------------


def _returns(vols: list[tuple[int, float]], seed: int = 0) -> pd.Series:
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.normal(0.0, vol, n) for n, vol in vols])
    index = pd.date_range("2020-01-01 21:00", periods=len(values), freq="B", tz="UTC")
    return pd.Series(values, index=index)


def test_vol_regime_follows_the_percentile_and_persists(tmp_path) -> None:
    path = tmp_path / "state" / "vol_regime.json"
    tracker = VolRegimeTracker(path, window=10, history=100)
    # A short stressed spell: its vols are under 20% of the history, so the newest ranks >= 0.8.
    calm_then_stressed = _returns([(300, 0.01), (15, 0.05)])
    state = tracker.update(calm_then_stressed)
    assert state.regime == "stressed" and state.percentile >= 0.8
    assert state.as_of == calm_then_stressed.index[-1]
    assert calm_then_stressed.index[300] <= state.since <= calm_then_stressed.index[-1]
    assert VolRegimeState.from_dict(json.loads(path.read_text())) == state
    assert tracker.read() == state

    # Back to quiet: calm once the recent vol ranks low among the last 100 values.
    later = _returns([(300, 0.01), (15, 0.05), (80, 0.005)])
    assert tracker.update(later).regime == "calm"


def test_vol_regime_since_survives_reruns_on_a_shorter_history(tmp_path) -> None:
    tracker = VolRegimeTracker(tmp_path / "s.json", window=10, history=100)
    returns = _returns([(200, 0.01), (18, 0.05)])
    first = tracker.update(returns.iloc[:212])
    assert first.regime == "stressed"
    # The next run sees only the last 111 returns (3 classified bars, all stressed): `since`
    # stays where the spell began in the earlier run.
    second = tracker.update(returns.iloc[-111:])
    assert second.regime == "stressed" and second.since == first.since


def test_vol_regime_classify_and_validation(tmp_path) -> None:
    tracker = VolRegimeTracker(tmp_path / "s.json")
    assert [tracker.classify(p) for p in (0.1, 0.3, 0.79, 0.8, 1.0)] == [
        "calm",
        "normal",
        "normal",
        "stressed",
        "stressed",
    ]
    with pytest.raises(ValueError, match="needs 271 returns"):
        tracker.update(_returns([(100, 0.01)]))
    with pytest.raises(ValueError, match="calm_below=0.9 and stressed_above=0.8 must satisfy"):
        VolRegimeTracker(tmp_path / "s.json", calm_below=0.9)
    with pytest.raises(ValueError, match="window=1 must be a whole number >= 2"):
        VolRegimeTracker(tmp_path / "s.json", window=1)
    tracker = VolRegimeTracker(tmp_path / "t.json", window=5, history=20)
    returns = _returns([(60, 0.01)])
    tracker.update(returns)
    with pytest.raises(ValueError, match="time must move forward"):
        tracker.update(returns.iloc[:-5])


def test_market_proxy_is_the_equal_weighted_log_return() -> None:
    ts = pd.date_range("2024-01-01 21:00", periods=3, freq="D", tz="UTC")
    bars = pd.DataFrame(
        {
            "ticker": ["A"] * 3 + ["B"] * 3,
            "ts": list(ts) * 2,
            "close": [100.0, 110.0, 99.0, 50.0, 50.0, 55.0],
        }
    )
    proxy = market_proxy_returns(bars)
    assert proxy.index.tolist() == list(ts[1:])
    assert proxy.iloc[0] == pytest.approx((math.log(1.1) + 0.0) / 2)
    assert proxy.iloc[1] == pytest.approx((math.log(0.9) + math.log(1.1)) / 2)
