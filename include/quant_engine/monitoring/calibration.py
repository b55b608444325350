"""Drift thresholds calibrated on windows of the training data itself.

A market that switches regimes can be stationary over years and still not over weeks: a 60-day
window of a calm spell lies far from a baseline pooled over calm, trending and crisis spells. With
Model Monitor's fixed ``comparison_threshold`` (0.1) every 60-day window of an *unchanged* synthetic
market raised a drift violation (measured over 10 seeds: 100 % of windows; 89 % at 0.25).

So a window is judged against windows of the same length cut from the training period: per feature
and window length, the threshold is the largest distance (Robust or Simple, as the baseline says)
that any training window of that length showed, never below the baseline's own
``comparison_threshold``. A feature drifts when the live window is further from the baseline than
any stretch of the training data was. Measured on the stationary synthetic market (10 seeds, 60-day
windows every 20 days over the 3 years after 5 training years, ``bench/drift_false_alarms.py``):
14.6 % of windows flag at least one feature, 5.0 % flag two (the drift monitor's default
``min_drifted_features``); a volatility scaled by 2 or 3 is flagged (two features) in 34 % and
64 % of windows. Regime spells already move volatility several-fold, so a shift of that size
hides in some windows.

The thresholds go into ``constraints.json`` beside Model Monitor's fields, under each feature's
``monitoringConfigOverrides.distribution_constraints.window_thresholds`` (days -> threshold), with
how they were made under ``monitoring_config.distribution_constraints.window_calibration``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import pandas as pd

from quant_engine.monitoring.baseline import Baseline, BaselineError
from quant_engine.monitoring.feature_drift import comparison_distance

__all__ = ["CALIBRATION_STEP_DAYS", "CALIBRATION_WINDOW_DAYS", "MIN_CALIBRATION_WINDOWS", "calibrate_baseline"]

#: Window lengths (days) calibrated; a drift check uses the longest one its window covers.
CALIBRATION_WINDOW_DAYS: tuple[int, ...] = (20, 60, 120, 250)
#: Days between the starts of consecutive calibration windows.
CALIBRATION_STEP_DAYS = 5
#: A window length is calibrated only when the training period holds at least this many windows of it.
MIN_CALIBRATION_WINDOWS = 10


def calibrate_baseline(
    baseline: Baseline,
    frame: pd.DataFrame,
    *,
    window_days: Sequence[int] = CALIBRATION_WINDOW_DAYS,
    step_days: int = CALIBRATION_STEP_DAYS,
    alpha: float = 0.01,
) -> Baseline:
    """A copy of ``baseline`` whose constraints carry per-feature, per-window-length thresholds.

    Parameters
    ----------
    baseline : Baseline
        Built from ``frame`` by :func:`~quant_engine.monitoring.baseline.build_baseline`.
    frame : DataFrame
        The same training rows, with their ``event_time``.
    window_days : sequence of int
        Window lengths to calibrate; lengths the training period is too short for are left out.
    step_days : int
        Days between window starts.
    alpha : float
        Level of the Robust method's KS allowance, as the drift check uses it.

    Raises
    ------
    BaselineError
        ``frame`` lacks ``event_time`` or a baselined feature, or an argument is out of range.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from quant_engine.monitoring.baseline import build_baseline
    >>> days = pd.date_range("2020-01-01", periods=400, freq="D", tz="UTC")
    >>> frame = pd.DataFrame({"event_time": days, "x": np.random.default_rng(0).normal(size=400)})
    >>> calibrated = calibrate_baseline(build_baseline(frame), frame, window_days=[20, 60])
    >>> sorted(calibrated.feature("x").window_thresholds)
    [20, 60]
    """
    if "event_time" not in frame.columns:
        raise BaselineError("the training frame has no event_time column; windows of time cannot be cut from it")
    lengths = sorted({int(d) for d in window_days})
    if not lengths or lengths[0] < 1:
        raise BaselineError(f"window_days={list(window_days)!r} must be whole numbers of days >= 1")
    if isinstance(step_days, bool) or not isinstance(step_days, int) or step_days < 1:
        raise BaselineError(f"step_days={step_days!r} must be a whole number of days >= 1")
    missing = [name for name in baseline.names if name not in frame.columns]
    if missing:
        raise BaselineError(f"the training frame lacks the baselined feature(s) {missing}")

    method = baseline.monitoring_config["distribution_constraints"]["comparison_method"]
    floor = float(baseline.monitoring_config["distribution_constraints"]["comparison_threshold"])
    try:
        stamps = pd.to_datetime(frame["event_time"], utc=True).dt.tz_localize(None).to_numpy("datetime64[ns]")
    except (TypeError, ValueError) as exc:
        raise BaselineError(f"the training frame's event_time is not readable as timestamps: {exc}") from exc
    if np.isnat(stamps).any():
        raise BaselineError("the training frame's event_time has missing values")
    order = np.argsort(stamps, kind="stable")
    times = stamps[order]
    columns = {name: frame[name].to_numpy(dtype="float64", na_value=np.nan)[order] for name in baseline.names}

    thresholds: dict[str, dict[str, float]] = {name: {} for name in baseline.names}
    counts: dict[str, int] = {}
    for days in lengths:
        width = np.timedelta64(days, "D")
        starts = np.arange(times[0], times[-1] - width + np.timedelta64(1, "ns"), np.timedelta64(step_days, "D"))
        if len(starts) < MIN_CALIBRATION_WINDOWS:
            continue
        lo = np.searchsorted(times, starts, side="left")
        hi = np.searchsorted(times, starts + width, side="left")
        counts[str(days)] = len(starts)
        for feature in baseline.features:
            largest = floor
            for a, b in zip(lo, hi, strict=True):
                values = columns[feature.name][a:b]
                present = np.sort(values[np.isfinite(values)])
                if present.size:
                    largest = max(largest, comparison_distance(feature, present, method, alpha))
            thresholds[feature.name][str(days)] = round(largest, 6)

    constraints = copy.deepcopy(baseline.constraints)
    for entry in constraints["features"]:
        overrides = entry.setdefault("monitoringConfigOverrides", {})
        overrides.setdefault("distribution_constraints", {})["window_thresholds"] = thresholds[entry["name"]]
    constraints["monitoring_config"]["distribution_constraints"]["window_calibration"] = {
        "statistic": f"largest {method} distance of a training window, at least comparison_threshold",
        "alpha": alpha,
        "step_days": step_days,
        "windows": counts,
    }
    return Baseline(baseline.statistics, constraints)
