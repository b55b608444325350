"""No ticker's label or feature depends on another ticker's prices: scrambling one ticker's future leaves
every other ticker's values the same, bit for bit (a look-ahead channel, however small, is a leak)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quant_engine.data.synthetic import SyntheticMarket
from quant_engine.features.registry import feature_set_names, get_feature_set
from quant_engine.wfo.labels import fixed_horizon_labels, triple_barrier_labels

PANEL = SyntheticMarket(n_tickers=4, seed=9, start="2019-01-01", end="2020-12-31").fetch(
    None, "2019-01-01", "2020-12-31"
)


def scrambled(bars: pd.DataFrame, ticker: str, after: pd.Timestamp, seed: int) -> pd.DataFrame:
    """``bars`` with ``ticker``'s prices after ``after`` replaced by another random path (OHLC kept valid)."""
    out = bars.copy()
    rows = (out["ticker"] == ticker) & (out["ts"] > after)
    factor = np.exp(np.random.default_rng(seed).normal(0.0, 0.05, rows.sum()).cumsum())
    for column in ("open", "high", "low", "close"):
        out.loc[rows, column] = np.round(out.loc[rows, column].to_numpy() * factor, 2)
    out.loc[rows, "volume"] = out.loc[rows, "volume"].to_numpy()[::-1]
    return out


def others(frame: pd.DataFrame, ticker: str) -> pd.DataFrame:
    return frame.loc[frame["ticker"] != ticker].reset_index(drop=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ticker=st.sampled_from(["SYN00", "SYN01", "SYN02", "SYN03"]),
    day=st.integers(30, 450),
    seed=st.integers(0, 10_000),
    horizon=st.integers(1, 10),
    vol_window=st.integers(2, 60),
)
def test_scrambling_one_tickers_future_changes_no_other_tickers_labels_or_features(
    ticker, day, seed, horizon, vol_window
) -> None:
    after = PANEL["ts"].drop_duplicates().iloc[day]
    changed = scrambled(PANEL, ticker, after, seed)
    pairs = [
        (fixed_horizon_labels(PANEL, horizon), fixed_horizon_labels(changed, horizon)),
        (
            triple_barrier_labels(PANEL, vol_window=vol_window, pt_mult=1.5, sl_mult=1.0, max_holding=horizon),
            triple_barrier_labels(changed, vol_window=vol_window, pt_mult=1.5, sl_mult=1.0, max_holding=horizon),
        ),
        *(
            (get_feature_set(name).compute_batch(PANEL), get_feature_set(name).compute_batch(changed))
            for name in feature_set_names()
        ),
    ]
    for before, after_scramble in pairs:
        pd.testing.assert_frame_equal(others(before, ticker), others(after_scramble, ticker), check_exact=True)
