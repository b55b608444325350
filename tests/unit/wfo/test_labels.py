"""Labels with end times: checked against a row-by-row reference and for look-ahead beyond t1."""

from __future__ import annotations

import doctest
import statistics

import numpy as np
import pandas as pd
import pytest

from quant_engine.wfo import labels
from quant_engine.wfo.labels import (
    PROFIT_TAKE,
    STOP_LOSS,
    VERTICAL,
    fixed_horizon_labels,
    triple_barrier_labels,
)


def _bars(n_per_ticker: dict[str, int], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for ticker, n in n_per_ticker.items():
        ts = pd.date_range("2024-01-01", periods=n, freq="D", tz="UTC")
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
        frames.append(pd.DataFrame({"ticker": ticker, "ts": ts, "close": close}))
    return pd.concat(frames, ignore_index=True)


def _reference_triple_barrier(bars, vol_window, pt_mult, sl_mult, max_holding):
    """Row by row, straight from the definition."""
    out = []
    for ticker, group in bars.groupby("ticker", sort=False):
        close = group["close"].tolist()
        ts = group["ts"].tolist()
        returns = [close[i] / close[i - 1] - 1 for i in range(1, len(close))]
        for i in range(len(close)):
            if i < vol_window or i + max_holding >= len(close):
                continue
            vol = statistics.stdev(returns[i - vol_window : i])
            if vol == 0:
                continue
            end, barrier = i + max_holding, VERTICAL
            for j in range(i + 1, i + max_holding + 1):
                ret = close[j] / close[i] - 1
                if pt_mult is not None and ret >= pt_mult * vol:
                    end, barrier = j, PROFIT_TAKE
                    break
                if sl_mult is not None and ret <= -sl_mult * vol:
                    end, barrier = j, STOP_LOSS
                    break
            ret = close[end] / close[i] - 1
            out.append((ticker, ts[i], ts[end], ret, int(ret > 0), barrier, vol))
    return pd.DataFrame(out, columns=["ticker", "ts", "t1", "ret", "label", "barrier", "vol"])


def test_docstring_examples_run():
    assert doctest.testmod(labels).failed == 0


def test_fixed_horizon_by_hand_keeps_tickers_apart():
    bars = pd.DataFrame(
        {
            "ticker": ["A"] * 4 + ["B"] * 3,
            "ts": [
                *pd.date_range("2024-01-01", periods=4, tz="UTC"),
                *pd.date_range("2024-01-02", periods=3, tz="UTC"),
            ],
            "close": [10.0, 11.0, 9.0, 12.0, 50.0, 40.0, 60.0],
        }
    )
    got = fixed_horizon_labels(bars, 2)
    assert got["ticker"].tolist() == ["A", "A", "B"]
    assert got["t1"].tolist() == [
        pd.Timestamp("2024-01-03", tz="UTC"),
        pd.Timestamp("2024-01-04", tz="UTC"),
        pd.Timestamp("2024-01-04", tz="UTC"),
    ]
    np.testing.assert_allclose(got["ret"], [9 / 10 - 1, 12 / 11 - 1, 60 / 50 - 1])
    assert got["label"].tolist() == [0, 1, 1]
    assert list(got.columns) == list(labels.LABEL_COLUMNS)
    assert str(got["ts"].dtype) == "datetime64[ns, UTC]"


def test_fixed_horizon_drops_bars_without_a_full_horizon():
    bars = _bars({"A": 10, "B": 3, "C": 6})
    got = fixed_horizon_labels(bars, 4)
    assert got.groupby("ticker").size().to_dict() == {"A": 6, "C": 2}
    assert (got["t1"] - got["ts"] == pd.Timedelta("4D")).all()


def test_triple_barrier_matches_row_by_row_reference():
    bars = _bars({"A": 120, "B": 80, "C": 15}, seed=3)
    for pt, sl in [(1.0, 1.5), (2.0, None), (None, 0.5), (None, None)]:
        got = triple_barrier_labels(bars, vol_window=10, pt_mult=pt, sl_mult=sl, max_holding=7)
        want = _reference_triple_barrier(bars, 10, pt, sl, 7)
        assert len(got) == len(want) > 0
        pd.testing.assert_frame_equal(
            got.astype({"label": "int64", "barrier": "int64"}).reset_index(drop=True),
            want.astype({"ts": got["ts"].dtype, "t1": got["t1"].dtype}),
            check_exact=False,
            rtol=1e-12,
        )


def test_triple_barrier_hits_each_barrier_by_hand():
    # Returns alternate +-1% for the volatility window, then three scripted paths.
    base = [100.0, 101.0, 100.0, 101.0, 100.0]
    bars = pd.DataFrame(
        {
            "ticker": ["UP"] * 8 + ["DN"] * 8 + ["FLAT"] * 8,
            "ts": list(pd.date_range("2024-01-01", periods=8, tz="UTC")) * 3,
            "close": base + [100.5, 104.0, 90.0] + base + [99.5, 95.0, 110.0] + base + [100.2, 99.8, 100.1],
        }
    )
    got = triple_barrier_labels(bars, vol_window=4, pt_mult=2.0, sl_mult=2.0, max_holding=3)
    first = got.groupby("ticker", sort=False).first()
    assert first.loc["UP", "barrier"] == PROFIT_TAKE and first.loc["UP", "t1"] == pd.Timestamp("2024-01-07", tz="UTC")
    assert first.loc["DN", "barrier"] == STOP_LOSS and first.loc["DN", "t1"] == pd.Timestamp("2024-01-07", tz="UTC")
    assert first.loc["FLAT", "barrier"] == VERTICAL and first.loc["FLAT", "t1"] == pd.Timestamp("2024-01-08", tz="UTC")
    assert first["label"].to_dict() == {"UP": 1, "DN": 0, "FLAT": 1}


@pytest.mark.parametrize(
    "make",
    [
        lambda b: fixed_horizon_labels(b, 5),
        lambda b: triple_barrier_labels(b, vol_window=8, pt_mult=1.0, sl_mult=1.0, max_holding=6),
    ],
)
def test_no_look_ahead_beyond_t1(make):
    bars = _bars({"A": 60, "B": 60}, seed=7)
    before = make(bars)
    rng = np.random.default_rng(11)
    for row in before.sample(10, random_state=1).itertuples():
        shocked = bars.copy()
        after_t1 = (shocked["ticker"] == row.ticker) & (shocked["ts"] > row.t1)
        shocked.loc[after_t1, "close"] *= rng.uniform(0.5, 2.0, after_t1.sum())
        after = make(shocked)
        same = after[(after["ticker"] == row.ticker) & (after["ts"] == row.ts)].iloc[0]
        assert (same["t1"], same["ret"], same["label"]) == (row.t1, row.ret, row.label)


def test_labels_need_validated_bars():
    bars = _bars({"A": 10, "B": 10})
    with pytest.raises(ValueError, match=r"sorted by \(ticker, ts\).*row 11 "):
        fixed_horizon_labels(pd.concat([bars.iloc[:10], bars.iloc[10:].iloc[::-1]], ignore_index=True), 1)
    with pytest.raises(ValueError, match="row 11"):
        fixed_horizon_labels(pd.concat([bars.iloc[:11], bars.iloc[10:]], ignore_index=True), 1)
    with pytest.raises(ValueError, match="sorted"):
        fixed_horizon_labels(pd.concat([bars.iloc[:5], bars.iloc[10:], bars.iloc[5:10]], ignore_index=True), 1)
    with pytest.raises(ValueError, match="naive"):
        fixed_horizon_labels(bars.assign(ts=bars["ts"].dt.tz_localize(None)), 1)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['close'\]"):
        fixed_horizon_labels(bars.drop(columns="close"), 1)
    with pytest.raises(ValueError, match="positive and finite"):
        fixed_horizon_labels(bars.assign(close=0.0), 1)


def test_bad_parameters_are_named():
    bars = _bars({"A": 30})
    with pytest.raises(ValueError, match="horizon=0 must be a whole number >= 1"):
        fixed_horizon_labels(bars, 0)
    with pytest.raises(ValueError, match="horizon=2.5 must be a whole number"):
        fixed_horizon_labels(bars, 2.5)
    with pytest.raises(ValueError, match="vol_window=1 must be a whole number >= 2"):
        triple_barrier_labels(bars, vol_window=1, pt_mult=1, sl_mult=1, max_holding=3)
    with pytest.raises(ValueError, match="max_holding=0"):
        triple_barrier_labels(bars, vol_window=5, pt_mult=1, sl_mult=1, max_holding=0)
    with pytest.raises(ValueError, match="pt_mult=-1"):
        triple_barrier_labels(bars, vol_window=5, pt_mult=-1, sl_mult=1, max_holding=3)
    with pytest.raises(ValueError, match="sl_mult=nan"):
        triple_barrier_labels(bars, vol_window=5, pt_mult=1, sl_mult=float("nan"), max_holding=3)
