"""An example feature module: two features of your own and a feature set that uses them.

Make it importable and name it once; every part of the engine then knows the set ``trend_range``:

    PYTHONPATH=examples QE_FEATURE_MODULES=my_features quant-engine features check
    PYTHONPATH=examples QE_FEATURE_MODULES=my_features quant-engine ingest --feature-set trend_range

(docs/features.md walks through it, and how to ship such a module as an installed package.)
"""

from __future__ import annotations

import numpy as np

from quant_engine.features import register_feature, register_feature_set


def _trend_slope(close: np.ndarray) -> np.ndarray:
    """Least-squares slope of log close against the bar index, per window row."""
    log_close = np.log(close)
    steps = np.arange(close.shape[1], dtype=np.float64)
    steps -= steps.mean()
    return (log_close * steps).sum(axis=1) / (steps * steps).sum()


def _range_position(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """Where the close sits in the window's high-low range: 0 at the low, 1 at the high, 0.5 when flat."""
    lowest, highest = low.min(axis=1), high.max(axis=1)
    span = highest - lowest
    return np.where(span > 0, (close[:, -1] - lowest) / np.where(span > 0, span, 1.0), 0.5)


register_feature(
    "trend_slope_20",
    ("close",),
    20,
    _trend_slope,
    "least-squares slope of log close over the last 20 bars: the average log return a bar along the trend",
)
register_feature(
    "range_position_20",
    ("high", "low", "close"),
    20,
    _range_position,
    "(close_t - 20-bar low) / (20-bar high - 20-bar low); 0.5 on a flat window",
)

# Built-in features and your own, in column order; the name is a literal so the DAG forms can list it.
register_feature_set(
    "trend_range",
    ["log_return_1", "log_return_5", "realized_vol_20", "rsi_14", "trend_slope_20", "range_position_20"],
)
