"""Drift thresholds calibrated on training windows: quiet on a stationary regime-switching market,
still finding a volatility shift, and clear errors on frames that cannot be calibrated."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quant_engine.data.synthetic import Shift, SyntheticMarket
from quant_engine.features.registry import get_feature_set
from quant_engine.monitoring.baseline import Baseline, BaselineError, build_baseline
from quant_engine.monitoring.calibration import calibrate_baseline
from quant_engine.monitoring.feature_drift import check_drift

FEATURES = get_feature_set("default").names
TRAIN = ("2014-01-01", "2018-12-31")
LIVE = ("2019-01-01", "2020-12-31")
WINDOW = pd.Timedelta(days=60)


def _features(seed: int, shifts: tuple[Shift, ...] = ()) -> pd.DataFrame:
    market = SyntheticMarket(n_tickers=8, seed=seed, start="2012-06-01", end=LIVE[1], shifts=shifts)
    rows = get_feature_set("default").compute_batch(market.fetch(None, "2012-06-01", LIVE[1])).dropna()
    return rows.reset_index(drop=True)


def _train(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["event_time"].between(*(pd.Timestamp(t, tz="UTC") for t in TRAIN))]


def _live_windows(rows: pd.DataFrame, step_days: int = 20):
    start, end = (pd.Timestamp(t, tz="UTC") for t in LIVE)
    while start + WINDOW <= end:
        yield rows[(rows["event_time"] >= start) & (rows["event_time"] < start + WINDOW)]
        start += pd.Timedelta(days=step_days)


def _flags(baseline: Baseline, rows: pd.DataFrame, *, with_times: bool = True) -> list[int]:
    """Per live window, how many features drifted (without times: the one global threshold)."""
    return [
        len(check_drift(w if with_times else w.drop(columns="event_time"), baseline).drifted_features)
        for w in _live_windows(rows)
    ]


def test_stationary_false_alarm_rate_is_bounded_and_far_below_the_fixed_threshold() -> None:
    # 4 seeds x 33 windows of 60 days over two years the model never saw, same market as training.
    # Bound tested: at most 10 % of windows with two or more drifted features (the monitor's
    # default), against at least 80 % with Model Monitor's fixed 0.1. Measured here: 3.0 % and 100 %
    # (bench/drift_false_alarms.py: 5.0 % over 10 seeds of 10 tickers).
    calibrated, fixed = [], []
    for seed in range(4):
        rows = _features(seed)
        train = _train(rows)
        baseline = calibrate_baseline(build_baseline(train[FEATURES]), train)
        calibrated += _flags(baseline, rows)
        fixed += _flags(baseline, rows, with_times=False)
    assert np.mean(np.array(calibrated) >= 2) <= 0.10, calibrated
    assert np.mean(np.array(fixed) >= 2) >= 0.80, fixed


def test_a_tripled_volatility_is_still_found() -> None:
    # The same seed with and without a tripled volatility from the first live day. Regime spells
    # already move volatility several-fold, so a tripling hides in some windows (measured here: 32 %
    # of windows flagged vs 0 % unshifted; bench/drift_false_alarms.py: 64 % over 10 seeds).
    flagged = {}
    for scale in (1.0, 3.0):
        shifts = (Shift(LIVE[0], "covariate", vol_scale=scale),) if scale != 1.0 else ()
        rows = _features(1, shifts)
        train = _train(rows)
        baseline = calibrate_baseline(build_baseline(train[FEATURES]), train)
        flags = _flags(baseline, rows)
        flagged[scale] = np.mean(np.array(flags) >= 2)
    assert flagged[3.0] >= 0.25 and flagged[3.0] >= flagged[1.0] + 0.2, flagged
    worst = max(_live_windows(rows), key=lambda w: len(check_drift(w, baseline).drifted_features))
    report = check_drift(worst, baseline)
    assert report.calibrated_window_days == 60
    assert {"realized_vol_20", "realized_vol_60"} & set(report.drifted_features)


def test_thresholds_follow_the_data_and_the_window_length() -> None:
    rng = np.random.default_rng(0)
    days = pd.date_range("2020-01-01", periods=800, freq="D", tz="UTC")
    iid = rng.normal(size=800)
    regimes = np.repeat(rng.choice([0.5, 1.0, 3.0], size=20), 40) * rng.normal(size=800)
    frame = pd.DataFrame({"event_time": days, "iid": iid, "regimes": regimes})
    baseline = calibrate_baseline(build_baseline(frame), frame, window_days=[20, 60, 120, 400])
    iid_t, regime_t = baseline.feature("iid").window_thresholds, baseline.feature("regimes").window_thresholds
    assert set(iid_t) == {20, 60, 120, 400}
    assert iid_t[60] == pytest.approx(0.1)  # noise alone stays under the Robust allowance: the floor
    assert regime_t[20] > regime_t[120] > 0.1  # spells of one regime are far from the pooled baseline
    calibration = baseline.monitoring_config["distribution_constraints"]["window_calibration"]
    assert calibration["windows"]["400"] == 80 and calibration["step_days"] == 5
    # A window of 30 days uses the 20-day thresholds, one of 57 the 60-day ones (weekends at its
    # ends), one of 10 days the shortest there is.
    assert check_drift(frame.iloc[:30], baseline).calibrated_window_days == 20
    assert check_drift(frame.iloc[:57], baseline).calibrated_window_days == 60
    assert check_drift(frame.iloc[:10], baseline).calibrated_window_days == 20
    # An explicit threshold or another comparison method sets the calibration aside.
    assert check_drift(frame.iloc[:30], baseline, comparison_threshold=0.5).calibrated_window_days is None
    assert check_drift(frame.iloc[:30], baseline, comparison_method="Simple").calibrated_window_days is None
    # Stored and read back as Model Monitor JSON, the thresholds survive.
    again = Baseline(baseline.statistics, baseline.constraints)
    assert again.feature("regimes").window_thresholds == regime_t


def test_a_short_training_period_leaves_long_windows_uncalibrated() -> None:
    days = pd.date_range("2020-01-01", periods=100, freq="D", tz="UTC")
    frame = pd.DataFrame({"event_time": days, "x": np.random.default_rng(1).normal(size=100)})
    baseline = calibrate_baseline(build_baseline(frame), frame, window_days=[20, 60, 250])
    assert set(baseline.feature("x").window_thresholds) == {20}  # 60 days fit only 9 windows, 250 none


@pytest.mark.parametrize(
    ("frame", "kwargs", "message"),
    [
        (pd.DataFrame({"x": [1.0, 2.0]}), {}, "no event_time column"),
        (pd.DataFrame({"event_time": ["2020-01-01", "yesterday"], "x": [1.0, 2.0]}), {}, "not readable as timestamps"),
        (pd.DataFrame({"event_time": ["2020-01-01", None], "x": [1.0, 2.0]}), {}, "missing values"),
        (
            pd.DataFrame({"event_time": ["2020-01-01", "2020-01-02"], "y": [1.0, 2.0]}),
            {},
            r"lacks the baselined feature\(s\) \['x'\]",
        ),
        (pd.DataFrame({"event_time": ["2020-01-01", "2020-01-02"], "x": [1.0, 2.0]}), {"step_days": 0}, "step_days=0"),
        (
            pd.DataFrame({"event_time": ["2020-01-01", "2020-01-02"], "x": [1.0, 2.0]}),
            {"window_days": [0]},
            "window_days",
        ),
    ],
)
def test_bad_frames_and_arguments_are_named(frame: pd.DataFrame, kwargs: dict, message: str) -> None:
    baseline = build_baseline(pd.DataFrame({"x": [1.0, 2.0, 3.0]}))
    with pytest.raises(BaselineError, match=message):
        calibrate_baseline(baseline, frame, **kwargs)
