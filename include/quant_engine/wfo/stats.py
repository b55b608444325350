"""Performance and overfitting statistics: Sharpe, Sortino, drawdown, PSR, deflated Sharpe, PBO.

Conventions
-----------
* Returns are simple per-period returns (``close[t+1] / close[t] - 1``), one row per period; a 2-D
  array holds one strategy (trial) per column and every statistic is taken along axis 0.
* :func:`sharpe_ratio` and :func:`sortino_ratio` are annualised by ``sqrt(periods_per_year)``
  (252 trading days by default; pass ``periods_per_year=1`` for the per-period value). No risk-free
  rate is subtracted: pass excess returns if one matters.
* The standard deviation in the Sharpe ratio uses ``ddof=1``; a series with zero deviation has no
  Sharpe ratio (NaN).
* The probabilistic and deflated Sharpe ratios take **per-period** (non-annualised) Sharpe ratios,
  the sample skewness ``γ3`` and the **non-excess** kurtosis ``γ4`` (3 for a normal distribution),
  both population moments (``scipy.stats.skew(bias=True)``, ``scipy.stats.kurtosis(fisher=False,
  bias=True)``), as :func:`sharpe_moments` computes them.

References
----------
Bailey & López de Prado (2012), "The Sharpe Ratio Efficient Frontier", Journal of Risk 15(2).
Bailey & López de Prado (2014), "The Deflated Sharpe Ratio", Journal of Portfolio Management 40(5).
Bailey, Borwein, López de Prado & Zhu (2017), "The Probability of Backtest Overfitting",
Journal of Computational Finance 20(4).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import stats as sps

from quant_engine.validation import is_whole

ArrayOrFloat = float | np.ndarray
#: Scores each column (trial) of a (periods, trials) block of returns: one value per trial.
Metric = Callable[[np.ndarray], ArrayOrFloat]


def _returns(returns: object) -> np.ndarray:
    values = np.asarray(returns, dtype="float64")
    if values.ndim not in (1, 2):
        raise ValueError(f"returns must be 1-d (periods) or 2-d (periods, trials), got shape {values.shape}")
    return values


def _scalar_or_array(value: np.ndarray) -> ArrayOrFloat:
    return float(value) if np.ndim(value) == 0 else value


def sharpe_ratio(returns: object, periods_per_year: float = 252) -> ArrayOrFloat:
    """Mean over standard deviation (``ddof=1``) of per-period returns, times ``sqrt(periods_per_year)``.

    Examples
    --------
    >>> round(sharpe_ratio([0.01, -0.005, 0.02, 0.0], periods_per_year=1), 4)
    0.5637
    """
    values = _returns(returns)
    with np.errstate(invalid="ignore", divide="ignore"):
        std = values.std(axis=0, ddof=1) if len(values) > 1 else np.full(values.shape[1:], np.nan)
        ratio = np.where(std > 0, values.mean(axis=0) / np.where(std > 0, std, 1.0), np.nan)
    return _scalar_or_array(ratio * math.sqrt(periods_per_year))


def sortino_ratio(returns: object, periods_per_year: float = 252, target: float = 0.0) -> ArrayOrFloat:
    """Mean excess return over the downside deviation, times ``sqrt(periods_per_year)``.

    The downside deviation is ``sqrt(mean(min(r - target, 0)²))`` over *all* periods (Sortino &
    Price), so a rare loss is not blown up by dividing by the count of losing periods only. With no
    period below ``target`` the ratio is NaN.

    Examples
    --------
    >>> round(sortino_ratio([0.01, -0.02, 0.03, 0.0], periods_per_year=1), 4)
    0.5
    """
    values = _returns(returns)
    excess = values - target
    downside = np.sqrt(np.mean(np.minimum(excess, 0.0) ** 2, axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(downside > 0, excess.mean(axis=0) / np.where(downside > 0, downside, 1.0), np.nan)
    return _scalar_or_array(ratio * math.sqrt(periods_per_year))


def max_drawdown(returns: object) -> ArrayOrFloat:
    """Largest peak-to-trough fall of compounded wealth, as a positive fraction of the peak.

    Wealth starts at 1 before the first return, so a loss in the first period is a drawdown.
    No returns, no drawdown (0).

    Examples
    --------
    >>> round(max_drawdown([0.1, -0.2, 0.05, -0.1, 0.3]), 4)
    0.244
    """
    values = _returns(returns)
    wealth = np.cumprod(1.0 + values, axis=0)
    peak = np.maximum(np.maximum.accumulate(wealth, axis=0), 1.0)
    drawdown = 1.0 - wealth / peak
    return _scalar_or_array(drawdown.max(axis=0, initial=0.0))


class SharpeMoments(NamedTuple):
    """What PSR and DSR need from one return series, in their conventions."""

    observed_sr: float  #: per-period Sharpe ratio, ddof=1
    n_obs: int
    skew: float  #: population skewness γ3
    kurtosis: float  #: population non-excess kurtosis γ4 (3 for a normal distribution)


def sharpe_moments(returns: object) -> SharpeMoments:
    """Per-period Sharpe ratio, length, skewness and non-excess kurtosis of one return series.

    Examples
    --------
    >>> m = sharpe_moments([0.01, -0.02, 0.03, 0.0, 0.01])
    >>> m.n_obs, round(m.observed_sr, 4), round(m.kurtosis, 4)
    (5, 0.3303, 2.2686)
    """
    values = _returns(returns)
    if values.ndim != 1:
        raise ValueError(f"sharpe_moments takes one return series (1-d), got shape {values.shape}")
    return SharpeMoments(
        observed_sr=float(sharpe_ratio(values, periods_per_year=1)),
        n_obs=len(values),
        skew=float(sps.skew(values, bias=True)),
        kurtosis=float(sps.kurtosis(values, fisher=False, bias=True)),
    )


def probabilistic_sharpe_ratio(
    observed_sr: object,
    benchmark_sr: object,
    n_obs: object,
    skew: object = 0.0,
    kurtosis: object = 3.0,
) -> ArrayOrFloat:
    """Probability that the true Sharpe ratio exceeds ``benchmark_sr``, given the observed one.

    ``PSR = Φ((SR − SR*)·√(n−1) / √(1 − γ3·SR + (γ4 − 1)/4·SR²))`` (Bailey & López de Prado 2012):
    the estimation error of a Sharpe ratio grows with negative skew and fat tails, so the same
    observed ratio is less convincing on a short, skewed, fat-tailed record.

    Parameters
    ----------
    observed_sr, benchmark_sr : float or array
        Per-period (non-annualised) Sharpe ratios.
    n_obs : int or array
        Number of returns behind ``observed_sr``, at least 2.
    skew : float or array, default=0
        Skewness ``γ3`` of the returns.
    kurtosis : float or array, default=3
        Non-excess kurtosis ``γ4`` of the returns (3 for a normal distribution).

    Examples
    --------
    >>> round(probabilistic_sharpe_ratio(0.1, 0.0, 250), 4)
    0.9423
    >>> probabilistic_sharpe_ratio(0.1, 0.1, 250)
    0.5
    """
    sr, sr_star, n, g3, g4 = np.broadcast_arrays(
        *(np.asarray(v, dtype="float64") for v in (observed_sr, benchmark_sr, n_obs, skew, kurtosis))
    )
    if (n < 2).any():
        raise ValueError(f"n_obs={n_obs!r} must be at least 2 returns")
    variance = 1.0 - g3 * sr + (g4 - 1.0) / 4.0 * sr**2
    if (variance <= 0).any():
        raise ValueError(
            f"1 - skew*SR + (kurtosis-1)/4*SR^2 must be positive, got {variance.min():.4g} for "
            f"observed_sr={observed_sr!r}, skew={skew!r}, kurtosis={kurtosis!r}; kurtosis is the non-excess "
            "one (3 for a normal distribution)"
        )
    return _scalar_or_array(sps.norm.cdf((sr - sr_star) * np.sqrt(n - 1.0) / np.sqrt(variance)))


def expected_max_sharpe(n_trials: int, var_trial_sharpes: float) -> float:
    """Expected largest of ``n_trials`` Sharpe ratios drawn around zero with variance ``var_trial_sharpes``.

    ``√V·[(1−γ)·Φ⁻¹(1−1/N) + γ·Φ⁻¹(1−1/(N·e))]`` with γ the Euler–Mascheroni constant (Bailey et
    al.): the Sharpe ratio the best of ``N`` skill-less trials reaches by luck alone. One trial involves no
    selection, so its expected maximum is 0.

    Examples
    --------
    >>> round(expected_max_sharpe(100, 0.5 / 250), 4)
    0.1132
    """
    if not is_whole(n_trials) or n_trials < 1:
        raise ValueError(f"n_trials={n_trials!r} must be an int of at least 1")
    if not np.isfinite(var_trial_sharpes) or var_trial_sharpes < 0:
        raise ValueError(f"var_trial_sharpes={var_trial_sharpes!r} must be a finite variance >= 0")
    if n_trials == 1:
        return 0.0
    gamma = np.euler_gamma
    quantiles = (1.0 - gamma) * sps.norm.ppf(1.0 - 1.0 / n_trials) + gamma * sps.norm.ppf(
        1.0 - 1.0 / (n_trials * math.e)
    )
    return float(math.sqrt(var_trial_sharpes) * quantiles)


def deflated_sharpe_ratio(
    observed_sr: float,
    n_obs: int,
    *,
    skew: float = 0.0,
    kurtosis: float = 3.0,
    trial_sharpes: object | None = None,
    n_trials: int | None = None,
    var_trial_sharpes: float | None = None,
) -> float:
    """PSR of the selected strategy against the Sharpe ratio its selection would reach by luck.

    The benchmark is :func:`expected_max_sharpe` of all trials (Bailey & López de Prado 2014), so a
    Sharpe ratio picked as the best of many is deflated for the search that found it. Give the
    trials as ``trial_sharpes`` (their per-period Sharpe ratios: ``N`` is their count and ``V`` their
    variance with ``ddof=1``), or as ``n_trials`` and ``var_trial_sharpes``; an explicit value
    overrides the one derived from ``trial_sharpes``.

    Parameters
    ----------
    observed_sr : float
        Per-period Sharpe ratio of the selected strategy.
    n_obs, skew, kurtosis
        As in :func:`probabilistic_sharpe_ratio`; :func:`sharpe_moments` computes all four.
    trial_sharpes : array-like, optional
        Per-period Sharpe ratios of every trial, the selected one included.
    n_trials : int, optional
        Number of independent trials.
    var_trial_sharpes : float, optional
        Variance of the trials' per-period Sharpe ratios.

    Examples
    --------
    The worked example of Bailey & López de Prado (2014): 100 trials with annualised Sharpe
    variance 0.5, the best at an annualised 2.5 over 1,250 daily returns, skew −3, kurtosis 10.

    >>> dsr = deflated_sharpe_ratio(2.5 / 250**0.5, 1250, skew=-3, kurtosis=10,
    ...                             n_trials=100, var_trial_sharpes=0.5 / 250)
    >>> round(dsr, 4)
    0.9004
    """
    if trial_sharpes is not None:
        sharpes = np.asarray(trial_sharpes, dtype="float64").ravel()
        if len(sharpes) < 2 or not np.isfinite(sharpes).all():
            raise ValueError(f"trial_sharpes must hold at least 2 finite Sharpe ratios, got {len(sharpes)}")
        n_trials = len(sharpes) if n_trials is None else n_trials
        var_trial_sharpes = float(sharpes.var(ddof=1)) if var_trial_sharpes is None else var_trial_sharpes
    if n_trials is None or var_trial_sharpes is None:
        raise ValueError("give trial_sharpes, or both n_trials and var_trial_sharpes")
    benchmark = expected_max_sharpe(n_trials, var_trial_sharpes)
    return float(probabilistic_sharpe_ratio(observed_sr, benchmark, n_obs, skew, kurtosis))


@dataclass(frozen=True)
class PBOResult:
    """Outcome of :func:`probability_of_backtest_overfitting`, one entry per IS/OOS combination."""

    #: Share of combinations whose in-sample best trial ranks at or below the out-of-sample median.
    pbo: float
    #: ``λ = ln(ω / (1 − ω))`` of the selected trial's relative out-of-sample rank ``ω``.
    logits: np.ndarray
    #: Column of the trial with the best in-sample metric.
    selected_trials: np.ndarray
    #: In-sample metric of the selected trial.
    is_performance: np.ndarray
    #: Out-of-sample metric of the same trial.
    oos_performance: np.ndarray
    #: Share of combinations whose selected trial loses out of sample (metric < 0).
    probability_of_loss: float
    #: Least-squares slope and intercept of ``oos_performance`` on ``is_performance`` (NaN when the
    #: in-sample values do not vary): a slope below 0 means in-sample success predicts failure.
    degradation_slope: float
    degradation_intercept: float

    @property
    def n_combinations(self) -> int:
        return len(self.logits)


def probability_of_backtest_overfitting(
    performance: object,
    n_blocks: int = 16,
    metric: Metric = sharpe_ratio,
) -> PBOResult:
    """Probability that picking the best backtest picks a below-median strategy, by CSCV.

    Combinatorially symmetric cross-validation (Bailey, Borwein, López de Prado & Zhu 2017): the
    ``T`` rows are cut into ``n_blocks`` contiguous blocks of equal size; each of the
    ``C(n_blocks, n_blocks/2)`` choices of half the blocks is an in-sample set (rows in time order)
    and the other half its out-of-sample set. The trial with the best in-sample metric is "selected";
    its out-of-sample rank ``r`` among the ``N`` trials (1 = worst, ``N`` = best) gives
    ``ω = r / (N + 1)`` and ``λ = ln(ω / (1 − ω))``. PBO is the share of combinations with ``λ ≤ 0``.

    Conventions: when ``T`` is not a multiple of ``n_blocks`` the oldest ``T mod n_blocks`` rows are
    dropped so blocks are equal; an in-sample tie selects the lowest column; out-of-sample ties share
    their average rank. A NaN metric (e.g. a Sharpe ratio of constant returns) is an error.

    Parameters
    ----------
    performance : array-like of shape (T, N)
        Per-period returns (or other per-period performance) of ``N >= 2`` trials.
    n_blocks : int, default=16
        Even number of blocks ``S``, at least 2 and at most ``T``.
    metric : callable, default=sharpe_ratio
        Maps a ``(rows, N)`` array to ``N`` scores, higher is better.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> skill = rng.normal(0, 0.01, (160, 4)) + [0.0, 0.0, 0.0, 0.004]
    >>> result = probability_of_backtest_overfitting(skill, n_blocks=8)
    >>> result.n_combinations, result.pbo
    (70, 0.0)
    """
    values = np.asarray(performance, dtype="float64")
    if values.ndim != 2 or values.shape[1] < 2:
        raise ValueError(f"performance must be 2-d (periods, trials) with at least 2 trials, got shape {values.shape}")
    if not is_whole(n_blocks) or n_blocks < 2 or n_blocks % 2:
        raise ValueError(
            f"n_blocks={n_blocks!r} must be an even int of at least 2, so in- and out-of-sample halves match"
        )
    n_periods, n_trials = values.shape
    if n_periods < n_blocks:
        raise ValueError(f"{n_periods} periods cannot fill n_blocks={n_blocks} blocks; use fewer blocks")
    block_rows = n_periods // n_blocks
    blocks = values[n_periods - block_rows * n_blocks :].reshape(n_blocks, block_rows, n_trials)

    combos = list(itertools.combinations(range(n_blocks), n_blocks // 2))
    selected = np.empty(len(combos), dtype=np.intp)
    is_perf = np.empty(len(combos))
    oos_perf = np.empty(len(combos))
    logits = np.empty(len(combos))
    for k, in_sample in enumerate(combos):
        out_of_sample = [b for b in range(n_blocks) if b not in in_sample]
        is_scores = np.asarray(metric(blocks[list(in_sample)].reshape(-1, n_trials)), dtype="float64")
        oos_scores = np.asarray(metric(blocks[out_of_sample].reshape(-1, n_trials)), dtype="float64")
        if np.isnan(is_scores).any() or np.isnan(oos_scores).any():
            bad = np.flatnonzero(np.isnan(is_scores) | np.isnan(oos_scores)).tolist()
            raise ValueError(f"metric gave NaN for trial(s) {bad} in combination {k} (in-sample blocks {in_sample})")
        best = int(np.argmax(is_scores))
        omega = sps.rankdata(oos_scores)[best] / (n_trials + 1)
        selected[k], is_perf[k], oos_perf[k] = best, is_scores[best], oos_scores[best]
        logits[k] = math.log(omega / (1.0 - omega))

    spread = is_perf - is_perf.mean()
    if np.any(spread != 0):
        slope = float(np.dot(spread, oos_perf - oos_perf.mean()) / np.dot(spread, spread))
        intercept = float(oos_perf.mean() - slope * is_perf.mean())
    else:
        slope = intercept = math.nan
    return PBOResult(
        pbo=float(np.mean(logits <= 0)),
        logits=logits,
        selected_trials=selected,
        is_performance=is_perf,
        oos_performance=oos_perf,
        probability_of_loss=float(np.mean(oos_perf < 0)),
        degradation_slope=slope,
        degradation_intercept=intercept,
    )
