"""Backtest of predicted probabilities: positions, costs, a portfolio per timestamp, CPCV paths.

Timing
------
A prediction for the row ``(ticker, ts)`` uses features known at the close of ``ts``. The position
it implies is taken at that close and held to the next bar's close, earning
``fwd_ret_1 = close[t+1] / close[t] - 1``. Every return in this module is stamped with ``ts``, the
time the decision was made.

Portfolios
----------
Positions are fractions of capital, one per ``(ticker, ts)``; the portfolio's return at ``ts`` is
``sum_i position_i * fwd_ret_1_i``. Two constructions (``portfolio=``):

``"market_neutral"`` (the default)
    The cross-sectionally demeaned probability, ``d_i = prob_i - mean_ts(prob)``, scaled so the
    longs sum to +0.5 and the shorts to -0.5: ``position_i = d_i / sum_ts |d|``
    (:func:`market_neutral_positions`). The book is dollar-neutral with gross exposure 1, so a
    market move common to every ticker cancels and what is left is the model's ranking of the
    tickers against each other. With ``threshold`` > 0 tickers with ``|d_i| <= threshold`` are not
    held and each side is rescaled over the rest; a timestamp with one ticker, or without a long
    *and* a short, is flat.
``"directional"``
    ``+1`` when ``prob > 0.5 + threshold``, ``-1`` when ``prob < 0.5 - threshold``, ``0`` in
    between (:func:`positions_from_probability`), each ticker weighted ``1 / N_t`` over the ``N_t``
    tickers present at ``ts``. With one common market factor every ticker tends to take the same
    side, so this book is mostly a bet on the market's direction.

A threshold keeps the strategy out of tickers where the model barely separates them from the
neutral point (0.5, or the cross-sectional mean), which is where costs eat the edge.

Costs, turnover, exposure, hits
-------------------------------
Each ticker pays ``cost_bps / 10_000 * |Δposition|`` at ``ts``, ``Δposition`` being the change
from its previous row (its first position is traded from flat; the last one is never closed, so
no exit cost is charged at the end of the data). A directional position is counted in units of
``±1`` and weighted ``1 / N_t`` like its return, so the portfolio's cost, turnover (one-way,
fraction of capital) and gross exposure are the means over tickers of ``cost``, ``|Δposition|``
and ``|position|``; a market-neutral position already is a fraction of capital, so they are sums.
A *bet* is a ticker-bar with a non-zero position; it is a *hit* when the position has the sign of
the return it is paid on: ``fwd_ret_1`` for a directional book, ``fwd_ret_1`` minus its
cross-sectional mean at ``ts`` for a market-neutral one (the only part of a ticker's return a
dollar-neutral book earns).

Paths
-----
Combinatorial purged CV predicts every group of rows several times, once per split that tests
it. :func:`assemble_paths` stitches complete histories from them: path ``p`` takes group ``g``
from split ``paths[p, g]`` (the splitter's :attr:`~quant_engine.wfo.splitters.CombinatorialPurgedCV.paths`),
so each path is one out-of-sample backtest over the whole sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from quant_engine.wfo.stats import max_drawdown, sharpe_ratio, sortino_ratio

#: Bars per year used to annualise daily figures.
PERIODS_PER_YEAR = 252

PREDICTION_COLUMNS: tuple[str, ...] = ("ticker", "ts", "prob", "fwd_ret_1")
#: Portfolio constructions of :func:`backtest`; see the module docstring.
PORTFOLIOS: tuple[str, ...] = ("market_neutral", "directional")
#: Demeaned probabilities closer to the mean than this are ties: the mean of equal probabilities
#: can differ from them in the last bit, and that rounding must not become a full-size position.
_TIE = 1e-12


def _check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold < 0.5:
        raise ValueError(f"threshold={threshold!r} must be in [0, 0.5): it is a distance from the neutral probability")


def _check_probabilities(p: np.ndarray) -> None:
    if np.isnan(p).any():
        raise ValueError(f"{int(np.isnan(p).sum())} probabilities are NaN; every prediction needs a value")


def positions_from_probability(prob: np.ndarray | pd.Series, threshold: float = 0.0) -> np.ndarray:
    """Long above ``0.5 + threshold``, short below ``0.5 - threshold``, flat in between.

    Examples
    --------
    >>> positions_from_probability([0.9, 0.55, 0.5, 0.45, 0.1], threshold=0.05)
    array([ 1.,  0.,  0.,  0., -1.])
    """
    _check_threshold(threshold)
    p = np.asarray(prob, dtype=np.float64)
    _check_probabilities(p)
    return np.where(p > 0.5 + threshold, 1.0, np.where(p < 0.5 - threshold, -1.0, 0.0))


def market_neutral_positions(
    prob: np.ndarray | pd.Series, ts: np.ndarray | pd.Series, threshold: float = 0.0
) -> np.ndarray:
    """Dollar-neutral weights with gross exposure 1 per timestamp, from the demeaned probabilities.

    ``d = prob - mean(prob at the same ts)``; tickers with ``|d| <= threshold`` are not held; the
    rest get ``d`` scaled so each side holds half the capital (longs sum to +0.5, shorts to -0.5).
    Without a threshold that is ``d / sum |d|``. A timestamp left without a long or without a short
    (one ticker, equal probabilities) is flat, since it cannot be dollar-neutral.

    Examples
    --------
    >>> market_neutral_positions([0.6, 0.5, 0.4, 0.7], ["a", "a", "a", "b"]).tolist()
    [0.5, 0.0, -0.5, 0.0]
    >>> market_neutral_positions([0.58, 0.54, 0.48, 0.4], ["a"] * 4, threshold=0.05).tolist()
    [0.5, 0.0, 0.0, -0.5]
    """
    _check_threshold(threshold)
    p = np.asarray(prob, dtype=np.float64)
    _check_probabilities(p)
    codes, _ = pd.factorize(np.asarray(ts))
    d = p - (np.bincount(codes, p) / np.bincount(codes))[codes]
    d[np.abs(d) <= max(threshold, _TIE)] = 0.0
    long_side = np.bincount(codes, np.maximum(d, 0.0))[codes]
    short_side = np.bincount(codes, np.maximum(-d, 0.0))[codes]
    held = (long_side > 0) & (short_side > 0) & (d != 0)
    side = np.where(d > 0, long_side, short_side)
    return np.divide(d, 2.0 * side, out=np.zeros_like(d), where=held)


@dataclass(frozen=True)
class BacktestResult:
    """Per-timestamp portfolio series of one backtest, indexed by decision time ``ts``.

    Attributes
    ----------
    returns : Series
        Net portfolio return (gross minus costs).
    gross : Series
        Portfolio return before costs.
    costs : Series
        Costs paid, as a fraction of capital.
    turnover : Series
        One-way turnover, ``|Δposition|`` over tickers as a fraction of capital.
    exposure : Series
        Gross exposure, ``|position|`` over tickers as a fraction of capital.
    hits, bets : int
        Ticker-bars with a non-zero position whose sign matched the return it is paid on (see the
        module docstring), and all ticker-bars with a non-zero position.
    """

    returns: pd.Series
    gross: pd.Series
    costs: pd.Series
    turnover: pd.Series
    exposure: pd.Series
    hits: int
    bets: int

    @property
    def equity(self) -> pd.Series:
        """Compounded equity curve starting from 1."""
        return (1.0 + self.returns).cumprod()

    @property
    def hit_rate(self) -> float:
        """Fraction of bets whose direction was right; NaN when the strategy never bet."""
        return self.hits / self.bets if self.bets else math.nan

    def summary(self, periods_per_year: float = PERIODS_PER_YEAR) -> dict[str, float]:
        """Headline metrics, annualised with ``periods_per_year``; see :func:`performance_summary`."""
        return performance_summary(self, periods_per_year)


def backtest(
    predictions: pd.DataFrame, *, threshold: float = 0.0, cost_bps: float = 5.0, portfolio: str = "market_neutral"
) -> BacktestResult:
    """Trade ``predictions`` and return the portfolio's series.

    Parameters
    ----------
    predictions : DataFrame
        Columns ``ticker, ts, prob, fwd_ret_1``, one row per ``(ticker, ts)`` in any order.
    threshold : float
        Distance from the neutral probability (0.5, or the cross-sectional mean for a
        market-neutral book) the probability must exceed before a ticker is held.
    cost_bps : float
        Cost per unit of position traded, in basis points.
    portfolio : {"market_neutral", "directional"}
        How probabilities become positions; see the module docstring.

    Examples
    --------
    >>> ts = pd.date_range("2024-01-01", periods=3, tz="UTC")
    >>> frame = pd.DataFrame({"ticker": "A", "ts": ts, "prob": [0.9, 0.9, 0.1],
    ...                       "fwd_ret_1": [0.01, -0.02, -0.03]})
    >>> result = backtest(frame, cost_bps=10, portfolio="directional")
    >>> result.returns.round(4).tolist()  # long, long, flip to short (2 units traded)
    [0.009, -0.02, 0.028]
    >>> two = pd.DataFrame({"ticker": ["A", "B"], "ts": ts[0], "prob": [0.6, 0.4],
    ...                     "fwd_ret_1": [0.03, 0.01]})
    >>> backtest(two, cost_bps=0).returns.round(4).tolist()  # +0.5 A, -0.5 B: the spread, halved
    [0.01]
    """
    if portfolio not in PORTFOLIOS:
        raise ValueError(f"portfolio={portfolio!r} is not a portfolio construction; use one of {', '.join(PORTFOLIOS)}")
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lack column(s) {missing}; need {list(PREDICTION_COLUMNS)}")
    if cost_bps < 0 or not math.isfinite(cost_bps):
        raise ValueError(f"cost_bps={cost_bps!r} must be a finite number >= 0")
    frame = predictions.loc[:, list(PREDICTION_COLUMNS)].sort_values(["ticker", "ts"], kind="stable")
    duplicated = frame.duplicated(["ticker", "ts"])
    if duplicated.any():
        first = frame.loc[duplicated].iloc[0]
        raise ValueError(
            f"{int(duplicated.sum())} duplicate (ticker, ts) rows, first {first['ticker']}@{first['ts']}; "
            "a backtest needs one prediction per ticker and bar"
        )
    fwd = frame["fwd_ret_1"].to_numpy(dtype=np.float64)
    if not np.isfinite(fwd).all():
        raise ValueError("fwd_ret_1 holds NaN or infinite values; drop rows without a next bar first")

    codes, times = pd.factorize(frame["ts"], sort=True)
    count = np.bincount(codes)
    prob = frame["prob"].to_numpy()
    if portfolio == "directional":
        position = positions_from_probability(prob, threshold)
        weight = 1.0 / count[codes]  # units of +-1, each ticker 1 / N_t of capital
        paid_on = fwd
    else:
        position = market_neutral_positions(prob, codes, threshold)
        weight = np.ones_like(fwd)  # already fractions of capital
        paid_on = fwd - (np.bincount(codes, fwd) / count)[codes]
    tickers = frame["ticker"].to_numpy()
    previous = np.concatenate([[0.0], position[:-1]])
    previous[np.concatenate([[True], tickers[1:] != tickers[:-1]])] = 0.0  # each ticker starts flat
    traded = np.abs(position - previous)
    pnl = position * fwd
    cost = traded * cost_bps / 10_000.0

    def per_ts(values: np.ndarray, name: str) -> pd.Series:
        return pd.Series(
            np.bincount(codes, weight * values, minlength=len(times)),
            index=pd.DatetimeIndex(times, name="ts"),
            name=name,
        )

    bets = position != 0
    return BacktestResult(
        returns=per_ts(pnl - cost, "return"),
        gross=per_ts(pnl, "gross"),
        costs=per_ts(cost, "cost"),
        turnover=per_ts(traded, "turnover"),
        exposure=per_ts(np.abs(position), "exposure"),
        hits=int((bets & (position * paid_on > 0)).sum()),
        bets=int(bets.sum()),
    )


def performance_summary(result: BacktestResult, periods_per_year: float = PERIODS_PER_YEAR) -> dict[str, float]:
    """Annualised Sharpe and Sortino, max drawdown, hit rate, turnover and returns of a backtest.

    ``turnover`` is the mean one-way turnover per bar; ``annual_turnover`` scales it by
    ``periods_per_year``. ``max_drawdown`` is the largest peak-to-trough fall of the compounded
    equity curve, as a positive fraction. Undefined values (a flat strategy's Sharpe) are NaN.
    """
    returns = result.returns.to_numpy(dtype=np.float64)
    n = len(returns)
    final = float(np.prod(1.0 + returns)) if n else 1.0
    return {
        "sharpe": float(sharpe_ratio(returns, periods_per_year=periods_per_year)),
        "sortino": float(sortino_ratio(returns, periods_per_year=periods_per_year)),
        "max_drawdown": float(max_drawdown(returns)),
        "hit_rate": float(result.hit_rate),
        "turnover": float(result.turnover.mean()) if n else math.nan,
        "annual_turnover": float(result.turnover.mean() * periods_per_year) if n else math.nan,
        "exposure": float(result.exposure.mean()) if n else math.nan,
        "total_return": final - 1.0,
        "annual_return": final ** (periods_per_year / n) - 1.0 if n and final > 0 else math.nan,
        "annual_volatility": float(np.std(returns, ddof=1) * math.sqrt(periods_per_year)) if n > 1 else math.nan,
        "cost_drag": float(result.costs.sum()),
        "n_periods": float(n),
    }


def assemble_paths(
    predictions: Mapping[int, pd.DataFrame],
    paths: np.ndarray,
    group_sizes: np.ndarray | None = None,
) -> list[pd.DataFrame]:
    """Stitch per-split test predictions into complete CPCV backtest paths.

    Parameters
    ----------
    predictions : mapping of split id to DataFrame
        Each split's test predictions, with a ``group`` column naming the group of each row.
    paths : ndarray of shape (n_paths, n_groups)
        ``paths[p, g]`` is the split whose prediction fills group ``g`` of path ``p``.
    group_sizes : ndarray of shape (n_groups,), optional
        Rows each group holds in the dataset; when given, every piece must have exactly that many,
        so a lost or duplicated prediction fails loudly instead of thinning a path.

    Returns
    -------
    list of DataFrame
        One frame per path, the pieces in group order, each row tagged with its ``split``.

    Examples
    --------
    >>> one = pd.DataFrame({"group": [0, 1], "prob": [0.1, 0.2]})
    >>> two = pd.DataFrame({"group": [0, 1], "prob": [0.3, 0.4]})
    >>> [p["prob"].tolist() for p in assemble_paths({0: one, 1: two}, np.array([[0, 1], [1, 0]]))]
    [[0.1, 0.4], [0.3, 0.2]]
    """
    paths = np.asarray(paths)
    if paths.ndim != 2:
        raise ValueError(f"paths must be a 2-d (n_paths, n_groups) array, got shape {paths.shape}")
    n_paths, n_groups = paths.shape
    if group_sizes is not None and len(group_sizes) != n_groups:
        raise ValueError(f"group_sizes has {len(group_sizes)} entries for {n_groups} groups")
    assembled = []
    for p in range(n_paths):
        pieces = []
        for g in range(n_groups):
            split = int(paths[p, g])
            if split not in predictions:
                raise ValueError(f"path {p} needs split {split} for group {g}, but its predictions are missing")
            frame = predictions[split]
            piece = frame.loc[frame["group"].to_numpy() == g]
            if piece.empty:
                raise ValueError(f"split {split} holds no prediction for group {g}, which path {p} takes from it")
            if group_sizes is not None and len(piece) != int(group_sizes[g]):
                raise ValueError(
                    f"split {split} predicts {len(piece)} rows of group {g}, but the group holds "
                    f"{int(group_sizes[g])}; its predictions are incomplete or duplicated"
                )
            pieces.append(piece.assign(split=split))
        assembled.append(pd.concat(pieces, ignore_index=True))
    return assembled
