"""Backtest arithmetic checked by hand: both portfolio constructions, costs, equity, metrics and CPCV paths."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from quant_engine.wfo.backtest import (
    assemble_paths,
    backtest,
    market_neutral_positions,
    performance_summary,
    positions_from_probability,
)
from quant_engine.wfo.splitters import CombinatorialPurgedCV

DAYS = pd.date_range("2024-01-01 21:00", periods=3, freq="D", tz="UTC")


def two_tickers() -> pd.DataFrame:
    """A: long, long, short. B: flat (inside the threshold), short, short."""
    return pd.DataFrame(
        {
            "ticker": ["A", "A", "A", "B", "B", "B"],
            "ts": list(DAYS) * 2,
            "prob": [0.8, 0.8, 0.3, 0.55, 0.2, 0.2],
            "fwd_ret_1": [0.01, 0.02, -0.01, 0.03, -0.01, 0.02],
        }
    )


def test_positions_threshold_is_strict_on_both_sides() -> None:
    prob = [0.61, 0.6, 0.5, 0.4, 0.39]
    assert positions_from_probability(prob, 0.1).tolist() == [1.0, 0.0, 0.0, 0.0, -1.0]
    assert positions_from_probability([0.5000001, 0.5, 0.4999999]).tolist() == [1.0, 0.0, -1.0]


@pytest.mark.parametrize("threshold", [-0.01, 0.5, math.nan])
def test_positions_reject_thresholds_outside_range(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        positions_from_probability([0.7], threshold)


def test_positions_reject_nan_probabilities() -> None:
    with pytest.raises(ValueError, match="NaN"):
        positions_from_probability([0.7, math.nan])


# --- directional: +-1 per ticker, equal weight ---------------------------------------------------


def test_portfolio_returns_costs_and_turnover_by_hand() -> None:
    result = backtest(two_tickers(), threshold=0.1, cost_bps=10, portfolio="directional")
    # A: positions 1, 1, -1 -> traded 1, 0, 2; pnl .01, .02, .01; net .009, .02, .008
    # B: positions 0, -1, -1 -> traded 0, 1, 0; pnl 0, .01, -.02; net 0, .009, -.02
    np.testing.assert_allclose(result.returns.to_numpy(), [0.0045, 0.0145, -0.006])
    np.testing.assert_allclose(result.gross.to_numpy(), [0.005, 0.015, -0.005])
    np.testing.assert_allclose(result.costs.to_numpy(), [0.0005, 0.0005, 0.001])
    np.testing.assert_allclose(result.turnover.to_numpy(), [0.5, 0.5, 1.0])
    np.testing.assert_allclose(result.exposure.to_numpy(), [0.5, 1.0, 1.0])
    assert list(result.returns.index) == list(DAYS)
    np.testing.assert_allclose(result.equity.to_numpy(), np.cumprod([1.0045, 1.0145, 0.994]))
    # bets: A x3 (all right), B x2 (d2 right, d3 wrong)
    assert (result.hits, result.bets) == (4, 5)
    assert result.hit_rate == pytest.approx(0.8)


@pytest.mark.parametrize("portfolio", ["directional", "market_neutral"])
def test_row_order_does_not_matter(portfolio: str) -> None:
    third = pd.DataFrame({"ticker": "C", "ts": DAYS, "prob": [0.4, 0.6, 0.5], "fwd_ret_1": [0.0, 0.02, -0.01]})
    frame = pd.concat([two_tickers(), third], ignore_index=True)
    expected = backtest(frame, threshold=0.01, cost_bps=10, portfolio=portfolio)
    result = backtest(frame.sample(frac=1.0, random_state=3), threshold=0.01, cost_bps=10, portfolio=portfolio)
    pd.testing.assert_series_equal(result.returns, expected.returns)
    pd.testing.assert_series_equal(result.turnover, expected.turnover)
    assert (result.hits, result.bets) == (expected.hits, expected.bets)


def test_equal_weight_uses_the_tickers_present_at_each_time() -> None:
    frame = two_tickers().drop(index=[3])  # B has no bar on day 1
    result = backtest(frame, threshold=0.1, cost_bps=0, portfolio="directional")
    assert result.returns.iloc[0] == pytest.approx(0.01)  # A alone
    assert result.returns.iloc[1] == pytest.approx((0.02 + 0.01) / 2)
    assert result.turnover.iloc[1] == pytest.approx((0 + 1) / 2)  # B enters short from flat


@pytest.mark.parametrize("portfolio", ["directional", "market_neutral"])
def test_zero_cost_gross_equals_net(portfolio: str) -> None:
    result = backtest(two_tickers(), cost_bps=0, portfolio=portfolio)
    pd.testing.assert_series_equal(result.returns, result.gross, check_names=False)


def test_backtest_rejects_bad_frames() -> None:
    with pytest.raises(ValueError, match=r"lack column\(s\) \['fwd_ret_1'\]"):
        backtest(two_tickers().drop(columns="fwd_ret_1"))
    with pytest.raises(ValueError, match="duplicate"):
        backtest(pd.concat([two_tickers(), two_tickers().iloc[:1]]))
    with pytest.raises(ValueError, match="fwd_ret_1 holds NaN"):
        backtest(two_tickers().assign(fwd_ret_1=[0.01, np.nan, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="cost_bps"):
        backtest(two_tickers(), cost_bps=-1)
    with pytest.raises(
        ValueError,
        match="portfolio='long_only' is not a portfolio construction; use one of market_neutral, directional",
    ):
        backtest(two_tickers(), portfolio="long_only")


def test_summary_metrics_by_hand() -> None:
    returns = np.array([0.01, -0.02, 0.015, 0.005, -0.01, 0.02])
    frame = pd.DataFrame(
        {"ticker": "A", "ts": pd.date_range("2024-01-01", periods=6, tz="UTC"), "prob": 0.9, "fwd_ret_1": returns}
    )
    result = backtest(frame, cost_bps=0, portfolio="directional")
    summary = performance_summary(result)
    assert summary["sharpe"] == pytest.approx(returns.mean() / returns.std(ddof=1) * math.sqrt(252))
    equity = np.cumprod(1 + returns)
    assert summary["max_drawdown"] == pytest.approx(1 - equity[1] / equity[0])  # 1.01 -> 0.9898
    assert summary["total_return"] == pytest.approx(equity[-1] - 1)
    assert summary["annual_return"] == pytest.approx(equity[-1] ** (252 / 6) - 1)
    assert summary["hit_rate"] == pytest.approx(4 / 6)
    assert summary["turnover"] == pytest.approx(1 / 6)  # one unit traded on the first day only
    assert summary["annual_turnover"] == pytest.approx(252 / 6)
    assert summary["exposure"] == 1.0
    assert summary["n_periods"] == 6
    downside = np.sqrt(np.mean(np.minimum(returns, 0.0) ** 2))
    assert summary["sortino"] == pytest.approx(returns.mean() / downside * math.sqrt(252))


@pytest.mark.parametrize("portfolio", ["directional", "market_neutral"])
def test_flat_strategy_has_no_hit_rate(portfolio: str) -> None:
    result = backtest(two_tickers().assign(prob=0.5), cost_bps=5, portfolio=portfolio)
    assert result.bets == 0 and math.isnan(result.hit_rate)
    assert (result.returns == 0).all()


# --- market neutral: demeaned probabilities, dollar-neutral, gross 1 ---------------------------------


def three_tickers() -> pd.DataFrame:
    """Day 1: probabilities .7 / .5 / .3 around a mean of .5; day 2: .4 / .6 / .5."""
    return pd.DataFrame(
        {
            "ticker": ["A", "A", "B", "B", "C", "C"],
            "ts": list(DAYS[:2]) * 3,
            "prob": [0.7, 0.4, 0.5, 0.6, 0.3, 0.5],
            "fwd_ret_1": [0.02, 0.0, 0.01, -0.02, -0.01, 0.05],
        }
    )


def test_market_neutral_returns_costs_turnover_and_hits_by_hand() -> None:
    result = backtest(three_tickers(), cost_bps=10)
    # day 1: d = +.2, 0, -.2, sum|d| = .4 -> A +.5, B 0, C -.5; gross .5 * .02 - .5 * -.01 = .015
    # day 2: d = -.1, +.1, 0 -> A -.5, B +.5, C 0; gross -.5 * 0 + .5 * -.02 = -.01
    np.testing.assert_allclose(result.gross.to_numpy(), [0.015, -0.01])
    # traded: day 1 .5 + 0 + .5 = 1 (from flat); day 2 A 1, B .5, C .5 = 2
    np.testing.assert_allclose(result.turnover.to_numpy(), [1.0, 2.0])
    np.testing.assert_allclose(result.costs.to_numpy(), [0.001, 0.002])
    np.testing.assert_allclose(result.returns.to_numpy(), [0.014, -0.012])
    np.testing.assert_allclose(result.exposure.to_numpy(), [1.0, 1.0])
    assert list(result.returns.index) == list(DAYS[:2])
    # hits against the cross-sectional mean: day 1 mean .00667, A (+) beats it, C (-) trails it: 2 hits;
    # day 2 mean .01: A (-) at 0 trails it (hit), B (+) at -.02 trails it (miss)
    assert (result.hits, result.bets) == (3, 4)


def test_market_neutral_book_ignores_a_common_move() -> None:
    base = backtest(three_tickers(), cost_bps=5)
    shifted = backtest(three_tickers().assign(fwd_ret_1=lambda f: f["fwd_ret_1"] + 0.05), cost_bps=5)
    pd.testing.assert_series_equal(shifted.returns, base.returns)
    # the directional book carries the market: net exposure (1 + 0) / 2, (1 - 1) / 2, (-1 - 1) / 2
    directional = backtest(two_tickers(), threshold=0.1, cost_bps=5, portfolio="directional")
    moved = backtest(
        two_tickers().assign(fwd_ret_1=lambda f: f["fwd_ret_1"] + 0.05),
        threshold=0.1,
        cost_bps=5,
        portfolio="directional",
    )
    np.testing.assert_allclose(moved.returns - directional.returns, [0.025, 0.0, -0.05], atol=1e-15)


def test_market_neutral_positions_sum_to_zero_with_gross_one() -> None:
    rng = np.random.default_rng(0)
    ts = np.repeat(np.arange(50), 7)
    positions = market_neutral_positions(rng.uniform(size=len(ts)), ts)
    np.testing.assert_allclose(np.bincount(ts, positions), 0.0, atol=1e-15)
    np.testing.assert_allclose(np.bincount(ts, np.abs(positions)), 1.0)
    np.testing.assert_allclose(np.bincount(ts, np.maximum(positions, 0)), 0.5)


def test_market_neutral_threshold_drops_tickers_near_the_mean_and_rescales() -> None:
    # mean .5: d = +.08, +.04, -.02, -.10; threshold .05 keeps A (long) and D (short), half the capital each
    positions = market_neutral_positions([0.58, 0.54, 0.48, 0.40], ["t"] * 4, threshold=0.05)
    np.testing.assert_allclose(positions, [0.5, 0.0, 0.0, -0.5])
    # two longs share their side in proportion to d: .08 and .04 of .12
    positions = market_neutral_positions([0.58, 0.54, 0.48, 0.40], ["t"] * 4, threshold=0.03)
    np.testing.assert_allclose(positions, [0.5 * 0.08 / 0.12, 0.5 * 0.04 / 0.12, 0.0, -0.5])
    # mean .5: d = +.2, -.05, -.05, -.1; threshold .15 leaves a long without a short: flat
    assert market_neutral_positions([0.7, 0.45, 0.45, 0.4], ["t"] * 4, threshold=0.15).tolist() == [0.0] * 4


def test_market_neutral_is_flat_alone_or_on_ties() -> None:
    # one ticker at a ts cannot be hedged; equal probabilities (whose mean differs in the last bit) are a tie
    assert market_neutral_positions([0.9, 0.1, 0.1, 0.1], ["a", "b", "b", "b"]).tolist() == [0.0] * 4
    frame = three_tickers().loc[lambda f: f["ticker"] == "A"]
    result = backtest(frame, cost_bps=5)
    assert result.bets == 0 and (result.returns == 0).all() and (result.exposure == 0).all()


@pytest.mark.parametrize("threshold", [-0.01, 0.5])
def test_market_neutral_rejects_thresholds_outside_range(threshold: float) -> None:
    with pytest.raises(ValueError, match=rf"threshold={threshold} must be in \[0, 0.5\)"):
        market_neutral_positions([0.7, 0.3], ["t", "t"], threshold)
    with pytest.raises(ValueError, match="NaN"):
        market_neutral_positions([0.7, math.nan], ["t", "t"])


# --- CPCV paths ----------------------------------------------------------------------------------


def split_predictions(cv: CombinatorialPurgedCV, rows_per_group: int) -> dict[int, pd.DataFrame]:
    """Test predictions of every split, each row tagged with its split in ``prob`` for tracing."""
    out = {}
    for s, groups in enumerate(cv.test_groups):
        out[s] = pd.concat(
            [
                pd.DataFrame({"group": g, "row": np.arange(rows_per_group) + g * rows_per_group, "prob": float(s)})
                for g in groups
            ],
            ignore_index=True,
        )
    return out


@pytest.mark.parametrize(("n_groups", "k"), [(6, 2), (5, 3), (4, 1)])
def test_every_path_covers_each_group_exactly_once(n_groups: int, k: int) -> None:
    cv = CombinatorialPurgedCV(n_groups, k)
    paths = assemble_paths(split_predictions(cv, 3), cv.paths, np.full(n_groups, 3))
    assert len(paths) == cv.n_paths
    used = set()
    for frame in paths:
        assert frame["group"].tolist() == [g for g in range(n_groups) for _ in range(3)]
        assert frame["row"].tolist() == list(range(3 * n_groups))  # every row once, in order
        for g, split in frame.groupby("group")["split"].first().items():
            assert g in cv.test_groups[split]
            assert (frame.loc[frame["group"] == g, "prob"] == split).all()
            used.add((split, g))
    # every (split, test group) prediction is used by exactly one path
    assert used == {(s, int(g)) for s, gs in enumerate(cv.test_groups) for g in gs}
    assert len(used) == cv.n_paths * n_groups


def test_assemble_paths_fails_loudly_on_missing_or_partial_predictions() -> None:
    cv = CombinatorialPurgedCV(4, 2)
    predictions = split_predictions(cv, 3)
    with pytest.raises(ValueError, match="needs split 5"):
        assemble_paths({s: f for s, f in predictions.items() if s != 5}, cv.paths)
    predictions[0] = predictions[0].iloc[1:]
    with pytest.raises(ValueError, match="split 0 predicts 2 rows of group 0"):
        assemble_paths(predictions, cv.paths, np.full(4, 3))
    predictions[0] = predictions[0].loc[predictions[0]["group"] != 0]
    with pytest.raises(ValueError, match="split 0 holds no prediction for group 0"):
        assemble_paths(predictions, cv.paths)
