"""Labels with end times: what a model is asked to predict, and the bar at which the answer is known.

Each label row carries ``t1``, the time of the bar at which its outcome is settled. The purged
splitters in :mod:`quant_engine.wfo.splitters` use ``[ts, t1]`` to keep labels that overlap a test
period out of training. A label looks at no price after its ``t1``, and rows whose full horizon is
not in the data are dropped rather than settled early: keeping only the early-settled ones near the
end of the data would bias the labels towards barrier hits.

Both functions take bars in the schema of :mod:`quant_engine.data.schema` (``ticker``, ``ts`` and
``close`` are used; rows sorted by ``(ticker, ts)`` with one bar per pair, as ``validate_bars``
returns them) and return one row per labelled ``(ticker, ts)``, sorted the same way. Sort by ``ts``
before handing the labels to a splitter.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from quant_engine.validation import whole_number

LABEL_COLUMNS: tuple[str, ...] = ("ticker", "ts", "t1", "ret", "label")

#: Which barrier settled a triple-barrier label.
PROFIT_TAKE, STOP_LOSS, VERTICAL = 1, -1, 0


def _check_multiplier(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive number of volatilities, or None to disable it")
    return float(value)


class _Panel:
    """The columns of a bar frame that labelling needs, as arrays, with per-ticker boundaries."""

    def __init__(self, bars: pd.DataFrame) -> None:
        missing = [c for c in ("ticker", "ts", "close") if c not in bars.columns]
        if missing:
            raise ValueError(f"bars are missing column(s) {missing}; have {list(bars.columns)}")
        ts = pd.DatetimeIndex(bars["ts"])
        if ts.tz is None:
            raise ValueError("bars' ts holds naive timestamps; validate bars with validate_bars first")
        self.tickers = bars["ticker"].to_numpy()
        self.ts = ts.tz_convert("UTC").as_unit("ns")
        self.close = bars["close"].to_numpy(dtype="float64")
        self.codes, _ = pd.factorize(self.tickers, sort=False)
        ts_ns = self.ts.asi8
        same = self.codes[1:] == self.codes[:-1]
        out_of_order = (self.codes[1:] < self.codes[:-1]) | (same & (ts_ns[1:] <= ts_ns[:-1]))
        if out_of_order.any():
            i = int(np.flatnonzero(out_of_order)[0]) + 1
            raise ValueError(
                f"bars must be sorted by (ticker, ts) with one bar per pair, as validate_bars returns them; "
                f"row {i} ({self.tickers[i]}@{self.ts[i]}) breaks that order"
            )
        if not (np.isfinite(self.close) & (self.close > 0)).all():
            raise ValueError("bars' close must be positive and finite; validate bars with validate_bars first")

    def __len__(self) -> int:
        return len(self.close)

    def ahead(self, offset: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows that have a bar of the same ticker ``offset`` bars later, and those later rows."""
        rows = np.arange(max(len(self) - offset, 0))
        later = rows + offset
        same = self.codes[rows] == self.codes[later]
        return rows[same], later[same]

    def frame(self, rows: np.ndarray, ends: np.ndarray, **columns: np.ndarray) -> pd.DataFrame:
        ret = self.close[ends] / self.close[rows] - 1.0
        return pd.DataFrame(
            {
                "ticker": self.tickers[rows],
                "ts": self.ts[rows],
                "t1": self.ts[ends],
                "ret": ret,
                "label": (ret > 0).astype(np.int8),
                **columns,
            }
        )


def fixed_horizon_labels(bars: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """Label each bar by the return over the next ``horizon`` bars of its ticker.

    Parameters
    ----------
    bars : DataFrame
        Bars with ``ticker``, ``ts`` (tz-aware) and ``close``, sorted by ``(ticker, ts)``.
    horizon : int
        Bars ahead, at least 1. The label ends at the ``horizon``-th next bar (``t1``).

    Returns
    -------
    DataFrame
        ``ticker, ts, t1, ret, label``: ``ret = close(t1) / close(ts) - 1`` and ``label`` is 1 when
        ``ret > 0``, else 0. Bars with fewer than ``horizon`` later bars are dropped.

    Examples
    --------
    >>> import pandas as pd
    >>> bars = pd.DataFrame({"ticker": "A", "ts": pd.date_range("2024-01-01", periods=4, tz="UTC"),
    ...                      "close": [10.0, 11.0, 9.9, 12.0]})
    >>> fixed_horizon_labels(bars, 2)[["ts", "t1", "label"]]
                             ts                        t1  label
    0 2024-01-01 00:00:00+00:00 2024-01-03 00:00:00+00:00      0
    1 2024-01-02 00:00:00+00:00 2024-01-04 00:00:00+00:00      1
    """
    horizon = whole_number(horizon, "horizon", minimum=1)
    panel = _Panel(bars)
    rows, ends = panel.ahead(horizon)
    return panel.frame(rows, ends)


def _rolling_volatility(panel: _Panel, window: int) -> np.ndarray:
    """Sample std (ddof=1) of the last ``window`` one-bar returns of each ticker, known at each bar.

    Each ticker's windows are computed from its own returns alone (two-pass, per window), so no
    value depends on any other ticker, not even through a running sum's rounding; a window that
    reaches back past a ticker's first return is NaN.
    """
    vol = np.full(len(panel), np.nan)
    rows, later = panel.ahead(1)
    returns = np.full(len(panel), np.nan)
    returns[later] = panel.close[later] / panel.close[rows] - 1.0
    starts = np.flatnonzero(np.r_[True, panel.codes[1:] != panel.codes[:-1]])
    for start, stop in zip(starts, [*starts[1:], len(panel)], strict=True):
        own = returns[start + 1 : stop]  # the ticker's first bar has no return
        if len(own) >= window:
            vol[start + window : stop] = sliding_window_view(own, window).std(axis=1, ddof=1)
    return vol


def triple_barrier_labels(
    bars: pd.DataFrame,
    *,
    vol_window: int,
    pt_mult: float | None,
    sl_mult: float | None,
    max_holding: int,
) -> pd.DataFrame:
    """Label each bar by the first of three barriers its ticker's price touches.

    From bar ``ts`` the return ``close / close(ts) - 1`` is followed bar by bar. The profit-take
    barrier sits at ``+pt_mult * vol`` and the stop-loss at ``-sl_mult * vol``, where ``vol`` is the
    std of the last ``vol_window`` one-bar returns up to ``ts`` (so barriers are as wide in quiet
    markets as in wild ones, in units of their own noise). The first bar at or beyond a barrier
    settles the label; if neither is touched within ``max_holding`` bars, the vertical barrier at the
    ``max_holding``-th bar does.

    Parameters
    ----------
    bars : DataFrame
        Bars with ``ticker``, ``ts`` (tz-aware) and ``close``, sorted by ``(ticker, ts)``.
    vol_window : int
        One-bar returns in the volatility estimate, at least 2.
    pt_mult, sl_mult : float or None
        Barrier distances in volatilities, positive; None disables that barrier.
    max_holding : int
        Bars until the vertical barrier, at least 1.

    Returns
    -------
    DataFrame
        ``ticker, ts, t1, ret, label, barrier, vol``: ``t1`` is the settling bar, ``ret`` the return
        from ``ts`` to ``t1``, ``label`` 1 when ``ret > 0`` else 0, ``barrier`` which barrier settled
        it (:data:`PROFIT_TAKE` 1, :data:`STOP_LOSS` -1, :data:`VERTICAL` 0). Bars without a full
        volatility window, with zero volatility, or with fewer than ``max_holding`` later bars are
        dropped.

    Examples
    --------
    >>> import pandas as pd
    >>> bars = pd.DataFrame({"ticker": "A", "ts": pd.date_range("2024-01-01", periods=7, tz="UTC"),
    ...                      "close": [100.0, 101.0, 100.0, 101.0, 104.0, 103.0, 103.5]})
    >>> labels = triple_barrier_labels(bars, vol_window=3, pt_mult=2.0, sl_mult=2.0, max_holding=2)
    >>> labels[["ts", "t1", "label", "barrier"]]
                             ts                        t1  label  barrier
    0 2024-01-04 00:00:00+00:00 2024-01-05 00:00:00+00:00      1        1
    1 2024-01-05 00:00:00+00:00 2024-01-07 00:00:00+00:00      0        0
    """
    vol_window = whole_number(vol_window, "vol_window", minimum=2)
    max_holding = whole_number(max_holding, "max_holding", minimum=1)
    upper_mult = _check_multiplier("pt_mult", pt_mult)
    lower_mult = _check_multiplier("sl_mult", sl_mult)
    panel = _Panel(bars)
    vol = _rolling_volatility(panel, vol_window)
    rows, ends = panel.ahead(max_holding)
    rows_vol = vol[rows]
    usable = np.isfinite(rows_vol) & (rows_vol > 0)
    rows, ends, rows_vol = rows[usable], ends[usable], rows_vol[usable]

    barrier = np.full(len(rows), VERTICAL, dtype=np.int8)
    open_ = np.ones(len(rows), dtype=bool)
    entry = panel.close[rows]
    for offset in range(1, max_holding + 1):
        ret = panel.close[rows + offset] / entry - 1.0
        up = open_ & (ret >= upper_mult * rows_vol) if upper_mult is not None else np.zeros_like(open_)
        down = open_ & (ret <= -lower_mult * rows_vol) if lower_mult is not None else np.zeros_like(open_)
        barrier[up] = PROFIT_TAKE
        barrier[down] = STOP_LOSS
        ends[up | down] = rows[up | down] + offset
        open_ &= ~(up | down)
    return panel.frame(rows, ends, barrier=barrier, vol=rows_vol)
