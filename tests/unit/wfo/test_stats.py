"""Overfitting statistics against independently computed references: by hand, plain Python, scipy,
and the published worked example of the deflated Sharpe ratio."""

from __future__ import annotations

import doctest
import itertools
import math
import statistics

import numpy as np
import pytest
from scipy.stats import kurtosis as scipy_kurtosis
from scipy.stats import norm
from scipy.stats import skew as scipy_skew

from quant_engine.wfo import stats
from quant_engine.wfo.stats import (
    deflated_sharpe_ratio,
    expected_max_sharpe,
    max_drawdown,
    probabilistic_sharpe_ratio,
    probability_of_backtest_overfitting,
    sharpe_moments,
    sharpe_ratio,
    sortino_ratio,
)

RETURNS = [0.012, -0.004, 0.007, -0.015, 0.021, 0.003, -0.008, 0.011, 0.0, -0.002]

#: 8 periods x 4 trials; no out-of-sample Sharpe ratio of the CSCV below is near 0.
PERFORMANCE = [
    [0.011, 0.021, -0.013, 0.002],
    [0.024, -0.012, 0.009, 0.014],
    [-0.013, 0.031, 0.022, -0.018],
    [0.003, 0.008, -0.021, 0.027],
    [0.032, -0.019, 0.012, 0.006],
    [-0.017, 0.004, 0.028, 0.019],
    [0.009, 0.013, -0.002, -0.011],
    [0.018, -0.026, 0.007, 0.023],
]


def test_docstring_examples_run():
    assert doctest.testmod(stats).failed == 0


def test_sharpe_and_sortino_match_their_definitions():
    mean, stdev = statistics.mean(RETURNS), statistics.stdev(RETURNS)
    assert sharpe_ratio(RETURNS) == pytest.approx(mean / stdev * math.sqrt(252), rel=1e-12)
    assert sharpe_ratio(RETURNS, periods_per_year=12) == pytest.approx(mean / stdev * math.sqrt(12), rel=1e-12)
    downside = math.sqrt(sum(min(r - 0.001, 0) ** 2 for r in RETURNS) / len(RETURNS))
    assert sortino_ratio(RETURNS, target=0.001) == pytest.approx((mean - 0.001) / downside * math.sqrt(252), rel=1e-12)
    assert math.isnan(sharpe_ratio([0.01, 0.01, 0.01]))
    assert math.isnan(sharpe_ratio([0.01]))
    assert math.isnan(sortino_ratio([0.01, 0.02]))


def test_statistics_of_a_matrix_are_per_column():
    matrix = np.array(PERFORMANCE)
    for func in (sharpe_ratio, sortino_ratio, max_drawdown):
        np.testing.assert_allclose(func(matrix), [func(matrix[:, j]) for j in range(matrix.shape[1])])


def test_max_drawdown_by_hand():
    assert max_drawdown([0.1, -0.2, 0.05, -0.1, 0.3]) == pytest.approx(1 - 0.8316 / 1.1)
    assert max_drawdown([-0.1, 0.05]) == pytest.approx(0.1)  # wealth starts at 1
    assert max_drawdown([0.01, 0.02]) == 0.0
    assert max_drawdown([]) == 0.0


def test_sharpe_moments_conventions():
    moments = sharpe_moments(RETURNS)
    assert moments.n_obs == len(RETURNS)
    assert moments.observed_sr == pytest.approx(statistics.mean(RETURNS) / statistics.stdev(RETURNS))
    m = statistics.mean(RETURNS)
    central = [sum((r - m) ** p for r in RETURNS) / len(RETURNS) for p in (2, 3, 4)]
    assert moments.skew == pytest.approx(central[1] / central[0] ** 1.5)
    assert moments.kurtosis == pytest.approx(central[2] / central[0] ** 2)  # non-excess
    assert moments.kurtosis == pytest.approx(scipy_kurtosis(RETURNS, fisher=False))
    assert moments.skew == pytest.approx(scipy_skew(RETURNS))


@pytest.mark.parametrize(
    "sr,sr_star,n,g3,g4",
    [
        (0.1, 0.0, 250, 0.0, 3.0),
        (0.15, 0.05, 60, -1.2, 7.5),
        (-0.05, 0.0, 1000, 0.4, 4.0),
    ],
)
def test_probabilistic_sharpe_ratio_formula(sr, sr_star, n, g3, g4):
    want = norm.cdf((sr - sr_star) * math.sqrt(n - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr**2))
    assert probabilistic_sharpe_ratio(sr, sr_star, n, g3, g4) == pytest.approx(want, rel=1e-12)


def test_probabilistic_sharpe_ratio_penalises_short_skewed_fat_tailed_records():
    base = probabilistic_sharpe_ratio(0.1, 0.0, 250)
    assert probabilistic_sharpe_ratio(0.1, 0.0, 100) < base
    assert probabilistic_sharpe_ratio(0.1, 0.0, 250, skew=-2.0) < base
    assert probabilistic_sharpe_ratio(0.1, 0.0, 250, kurtosis=9.0) < base
    assert probabilistic_sharpe_ratio(0.1, 0.1, 250) == 0.5
    np.testing.assert_allclose(
        probabilistic_sharpe_ratio(np.array([0.1, 0.2]), 0.0, 250),
        [probabilistic_sharpe_ratio(0.1, 0.0, 250), probabilistic_sharpe_ratio(0.2, 0.0, 250)],
    )


def test_deflated_sharpe_ratio_reproduces_the_published_example():
    # Bailey & López de Prado (2014), "The Deflated Sharpe Ratio", numerical example: N = 100 trials,
    # V[SR] = 0.5 annualised, best SR = 2.5 annualised over T = 1250 daily returns (250 a year),
    # skewness -3, kurtosis 10; the paper reports SR0 ≈ 0.1132 (non-annualised) and DSR ≈ 0.9004.
    sr0 = expected_max_sharpe(100, 0.5 / 250)
    assert sr0 == pytest.approx(0.1132, abs=5e-5)
    dsr = deflated_sharpe_ratio(
        2.5 / math.sqrt(250), 1250, skew=-3, kurtosis=10, n_trials=100, var_trial_sharpes=0.5 / 250
    )
    assert dsr == pytest.approx(0.9004, abs=5e-5)


def test_expected_max_sharpe_formula():
    gamma = 0.5772156649015329
    for n_trials, variance in [(2, 1.0), (10, 0.04), (1000, 0.002)]:
        quantiles = (1 - gamma) * norm.ppf(1 - 1 / n_trials) + gamma * norm.ppf(1 - 1 / (n_trials * math.e))
        want = math.sqrt(variance) * quantiles
        assert expected_max_sharpe(n_trials, variance) == pytest.approx(want, rel=1e-12)
    assert expected_max_sharpe(1, 0.5) == 0.0
    assert expected_max_sharpe(50, 0.0) == 0.0


def test_deflated_sharpe_ratio_from_trial_sharpes():
    trials = np.random.default_rng(2).normal(0.0, 0.05, 40)
    observed = float(trials.max())
    variance = statistics.variance(trials.tolist())
    want = probabilistic_sharpe_ratio(observed, expected_max_sharpe(40, variance), 500, -0.5, 5.0)
    assert deflated_sharpe_ratio(observed, 500, skew=-0.5, kurtosis=5.0, trial_sharpes=trials) == pytest.approx(want)
    # A larger count of trials than Sharpe ratios at hand deflates harder.
    assert deflated_sharpe_ratio(observed, 500, trial_sharpes=trials, n_trials=400) < deflated_sharpe_ratio(
        observed, 500, trial_sharpes=trials
    )


def _brute_force_cscv(matrix, n_blocks):
    """CSCV written out in plain Python, straight from Bailey et al. (2017)."""
    n_rows, n_trials = len(matrix), len(matrix[0])
    size = n_rows // n_blocks
    rows = matrix[n_rows - size * n_blocks :]
    blocks = [rows[b * size : (b + 1) * size] for b in range(n_blocks)]

    def sharpe(sample, j):
        column = [row[j] for row in sample]
        return statistics.mean(column) / statistics.stdev(column) * math.sqrt(252)

    out = []
    for chosen in itertools.combinations(range(n_blocks), n_blocks // 2):
        in_sample = [row for b in chosen for row in blocks[b]]
        out_of_sample = [row for b in range(n_blocks) if b not in chosen for row in blocks[b]]
        is_scores = [sharpe(in_sample, j) for j in range(n_trials)]
        oos_scores = [sharpe(out_of_sample, j) for j in range(n_trials)]
        best = is_scores.index(max(is_scores))
        below = sum(s < oos_scores[best] for s in oos_scores)
        equal = sum(s == oos_scores[best] for s in oos_scores)
        rank = below + (equal + 1) / 2
        omega = rank / (n_trials + 1)
        out.append((best, is_scores[best], oos_scores[best], math.log(omega / (1 - omega))))
    return out


def test_pbo_matches_a_brute_force_enumeration():
    result = probability_of_backtest_overfitting(PERFORMANCE, n_blocks=4)
    want = _brute_force_cscv(PERFORMANCE, 4)
    assert result.n_combinations == math.comb(4, 2) == len(want)
    assert result.selected_trials.tolist() == [w[0] for w in want]
    np.testing.assert_allclose(result.is_performance, [w[1] for w in want], rtol=1e-12)
    np.testing.assert_allclose(result.oos_performance, [w[2] for w in want], rtol=1e-12)
    np.testing.assert_allclose(result.logits, [w[3] for w in want], rtol=1e-12)
    assert result.pbo == sum(w[3] <= 0 for w in want) / len(want)
    assert result.probability_of_loss == sum(w[2] < 0 for w in want) / len(want)
    slope, intercept = np.polyfit([w[1] for w in want], [w[2] for w in want], 1)
    assert result.degradation_slope == pytest.approx(slope)
    assert result.degradation_intercept == pytest.approx(intercept)


def test_pbo_drops_the_oldest_rows_to_make_equal_blocks():
    rng = np.random.default_rng(5)
    matrix = rng.normal(0, 0.01, (42, 5))
    result = probability_of_backtest_overfitting(matrix, n_blocks=8)
    want = _brute_force_cscv(matrix.tolist(), 8)
    np.testing.assert_allclose(result.logits, [w[3] for w in want], rtol=1e-12)
    np.testing.assert_array_equal(result.logits, probability_of_backtest_overfitting(matrix[2:], n_blocks=8).logits)


def test_pbo_extremes_by_hand():
    # Trial 0 shines only in the first half, trial 1 only in the second: whichever wins in-sample
    # is the worst out of sample, so every selection is overfit.
    first = [[0.02, -0.02, 0.001, 0.0], [0.03, -0.01, 0.0, 0.001]] * 2
    second = [[-0.02, 0.02, 0.001, 0.0], [-0.01, 0.03, 0.0, 0.001]] * 2
    result = probability_of_backtest_overfitting(first + second, n_blocks=2)
    assert result.pbo == 1.0 and result.probability_of_loss == 1.0
    np.testing.assert_allclose(result.logits, [math.log(1 / 4)] * 2)
    assert result.selected_trials.tolist() == [0, 1]
    # A trial that is best in every block is never overfit: its rank is N, its logit ln(N).
    rng = np.random.default_rng(1)
    dominant = rng.normal(0, 0.01, (64, 6))
    dominant[:, 2] += 0.05
    result = probability_of_backtest_overfitting(dominant, n_blocks=8)
    assert result.pbo == 0.0 and result.probability_of_loss == 0.0
    np.testing.assert_allclose(result.logits, math.log(6))


def test_pbo_with_another_metric_and_in_sample_ties():
    result = probability_of_backtest_overfitting(
        [[0.01, 0.01, 0.0], [0.01, 0.01, 0.02], [0.0, 0.03, 0.01], [0.0, 0.01, 0.01]],
        n_blocks=2,
        metric=lambda x: x.mean(axis=0),
    )
    assert result.selected_trials.tolist() == [0, 1]  # a tie in-sample selects the lowest column
    np.testing.assert_allclose(result.is_performance, [0.01, 0.02])
    np.testing.assert_allclose(result.oos_performance, [0.0, 0.01])


def test_bad_inputs_are_named():
    cases = [
        (lambda: probabilistic_sharpe_ratio(0.1, 0.0, 1), "n_obs=1 must be at least 2"),
        (lambda: probabilistic_sharpe_ratio(1.0, 0.0, 100, skew=2.0, kurtosis=1.0), "must be positive.*non-excess"),
        (lambda: expected_max_sharpe(0, 0.1), "n_trials=0 must be an int of at least 1"),
        (lambda: expected_max_sharpe(10, -0.1), "var_trial_sharpes=-0.1 must be a finite variance"),
        (lambda: deflated_sharpe_ratio(0.1, 100, n_trials=10), "give trial_sharpes, or both"),
        (lambda: deflated_sharpe_ratio(0.1, 100, trial_sharpes=[0.1]), "at least 2 finite Sharpe ratios"),
        (lambda: sharpe_moments(np.zeros((4, 2))), "one return series"),
        (lambda: sharpe_ratio(np.zeros((2, 2, 2))), "must be 1-d .* or 2-d"),
        (lambda: probability_of_backtest_overfitting([0.1, 0.2, 0.3, 0.4]), "must be 2-d"),
        (lambda: probability_of_backtest_overfitting(PERFORMANCE, n_blocks=3), "n_blocks=3 must be an even int"),
        (lambda: probability_of_backtest_overfitting(PERFORMANCE, n_blocks=10), "8 periods cannot fill n_blocks=10"),
        (
            lambda: probability_of_backtest_overfitting(np.zeros((8, 3)), n_blocks=2),
            r"NaN for trial\(s\) \[0, 1, 2\] in combination 0",
        ),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
