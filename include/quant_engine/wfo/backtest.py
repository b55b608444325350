"""Backtest of predicted probabilities: positions, costs, an equal-weight portfolio, CPCV paths.

Timing
------
A prediction for the row ``(ticker, ts)`` uses features known at the close of ``ts``. The position
it implies is taken at that close and held to the next bar's close, earning
``fwd_ret_1 = close[t+1] / close[t] - 1``. Every return in this module is stamped with ``ts``, the
time the decision was made.

Positions
---------
``+1`` when ``prob > 0.5 + threshold``, ``-1`` when ``prob < 0.5 - threshold``, ``0`` in between
(:func:`positions_from_probability`). A threshold keeps the strategy flat where the model is
barely better than a coin, which is where costs eat the edge.

Costs and portfolio
-------------------
Each ticker pays ``cost_bps / 10_000 * |position[t] - position[t-1]|`` at ``ts`` (its first
position is traded from flat; the last one is never closed, so no exit cost is charged at the
end of the data). The portfolio holds every ticker present at ``ts`` with weight ``1 / N_t``,
so its return is the mean of the tickers' net returns and its turnover the mean of their
``|Δposition|`` (one-way, as a fraction of capital).

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


def positions_from_probability(prob: np.ndarray | pd.Series, threshold: float = 0.0) -> np.ndarray:
    """Long above ``0.5 + threshold``, short below ``0.5 - threshold``, flat in between.

    Examples
    --------
    >>> positions_from_probability([0.9, 0.55, 0.5, 0.45, 0.1], threshold=0.05)
    array([ 1.,  0.,  0.,  0., -1.])
    """
    if not 0.0 <= threshold < 0.5:
        raise ValueError(f"threshold={threshold!r} must be in [0, 0.5): it is a distance from 0.5")
    p = np.asarray(prob, dtype=np.float64)
    if np.isnan(p).any():
        raise ValueError(f"{int(np.isnan(p).sum())} probabilities are NaN; every prediction needs a value")
    return np.where(p > 0.5 + threshold, 1.0, np.where(p < 0.5 - threshold, -1.0, 0.0))


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
        Mean over tickers of ``|Δposition|``.
    exposure : Series
        Mean over tickers of ``|position|``.
    hits, bets : int
        Ticker-bars with a non-zero position whose sign matched the next bar's return, and all
        ticker-bars with a non-zero position.
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

    def summary(self, periods_per_year: int = PERIODS_PER_YEAR) -> dict[str, float]:
        """Headline metrics, annualised with ``periods_per_year``; see :func:`performance_summary`."""
        return performance_summary(self, periods_per_year)


def backtest(predictions: pd.DataFrame, *, threshold: float = 0.0, cost_bps: float = 5.0) -> BacktestResult:
    """Trade ``predictions`` and return the equal-weight portfolio's series.

    Parameters
    ----------
    predictions : DataFrame
        Columns ``ticker, ts, prob, fwd_ret_1``, one row per ``(ticker, ts)`` in any order.
    threshold : float
        Distance from 0.5 the probability must exceed before taking a position.
    cost_bps : float
        Cost per unit of position traded, in basis points.

    Examples
    --------
    >>> ts = pd.date_range("2024-01-01", periods=3, tz="UTC")
    >>> frame = pd.DataFrame({"ticker": "A", "ts": ts, "prob": [0.9, 0.9, 0.1],
    ...                       "fwd_ret_1": [0.01, -0.02, -0.03]})
    >>> result = backtest(frame, cost_bps=10)
    >>> result.returns.round(4).tolist()  # long, long, flip to short (2 units traded)
    [0.009, -0.02, 0.028]
    """
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

    position = positions_from_probability(frame["prob"].to_numpy(), threshold)
    tickers = frame["ticker"].to_numpy()
    previous = np.concatenate([[0.0], position[:-1]])
    previous[np.concatenate([[True], tickers[1:] != tickers[:-1]])] = 0.0  # each ticker starts flat
    traded = np.abs(position - previous)
    pnl = position * fwd
    cost = traded * cost_bps / 10_000.0

    per_row = pd.DataFrame({
        "gross": pnl, "cost": cost, "net": pnl - cost, "traded": traded, "exposure": np.abs(position),
    }, index=frame.index).assign(ts=frame["ts"])
    by_ts = per_row.groupby("ts", sort=True).mean()
    bets = position != 0
    return BacktestResult(
        returns=by_ts["net"].rename("return"),
        gross=by_ts["gross"].rename("gross"),
        costs=by_ts["cost"].rename("cost"),
        turnover=by_ts["traded"].rename("turnover"),
        exposure=by_ts["exposure"].rename("exposure"),
        hits=int((bets & (pnl > 0)).sum()),
        bets=int(bets.sum()),
    )


def performance_summary(result: BacktestResult, periods_per_year: int = PERIODS_PER_YEAR) -> dict[str, float]:
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
