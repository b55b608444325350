"""Feature definitions declared once and executed two ways: over history and bar by bar.

Each feature is ONE numpy function over trailing windows: it receives, for every input column, an
array of shape ``(n_rows, window)`` whose last column is the current bar, and returns ``(n_rows,)``.
The batch path hands it a :func:`~numpy.lib.stride_tricks.sliding_window_view` of a ticker's whole
history; the streaming path hands it a ``(1, window)`` view of a per-ticker ring buffer, each row
in both cases a contiguous run of float64. The same function on the same numbers in the same
layout gives the same bits (the tests check it bit for bit), so offline/online parity holds by
construction rather than by careful re-implementation.

Your own features plug in through :mod:`quant_engine.features.registry` and get the same two
executors; :mod:`quant_engine.features.parity` checks each registered feature against this claim.

The price of that guarantee is that every feature must be a finite-window function. Recursive
indicators (EMA, Wilder's RSI) depend on all history since the first bar, so they would differ
between a backfill and a bridge that started yesterday; here RSI is Cutler's variant over simple
averages, which depends on the last ``n`` changes only.

Volatilities are annualised as if bars were daily: multiplied by ``sqrt(252)``. On other bar
frequencies they stay comparable with each other, only the scale is off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from quant_engine.data.schema import BarValidationError

#: Trading days per year; the annualisation factor of every volatility feature is its square root.
TRADING_DAYS_PER_YEAR = 252
_ANNUALISE = math.sqrt(TRADING_DAYS_PER_YEAR)
_LN2 = math.log(2.0)

_PRICE_INPUTS = frozenset({"open", "high", "low", "close"})
INPUT_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")

#: How many offending rows an error message quotes.
_MAX_QUOTED_ROWS = 5

WindowFunction = Callable[..., np.ndarray]


@dataclass(frozen=True)
class FeatureDefinition:
    """One feature: a name, the bar columns it reads, its window and the function that computes it.

    Parameters
    ----------
    name : str
        Column name in feature frames; a Python identifier.
    inputs : tuple of str
        Bar columns passed to ``compute``, in that order; each from ``open, high, low, close, volume``.
    window : int
        Bars of history ``compute`` sees, the current bar included (a 1-bar return needs 2).
    compute : callable
        ``compute(*windows) -> values``: one ``(n_rows, window)`` float64 array per input, row ``i``
        being the trailing window ending at bar ``i``; returns ``(n_rows,)`` float64.
    description : str
        What the feature measures, for people and the store's metadata.

    Examples
    --------
    >>> import numpy as np
    >>> spread = FeatureDefinition("hl_spread", ("high", "low"), 1,
    ...                            lambda high, low: high[:, -1] - low[:, -1], "high minus low")
    >>> spread.apply(np.array([[3.0], [5.0]]), np.array([[1.0], [4.0]]))
    array([2., 1.])
    """

    name: str
    inputs: tuple[str, ...]
    window: int
    compute: WindowFunction = field(repr=False)
    description: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"feature name {self.name!r} must be a Python identifier")
        object.__setattr__(self, "inputs", tuple(self.inputs))
        unknown = [c for c in self.inputs if c not in INPUT_COLUMNS]
        if not self.inputs or unknown:
            raise ValueError(
                f"feature {self.name!r}: inputs {list(self.inputs)} must be a non-empty selection of "
                f"{list(INPUT_COLUMNS)}" + (f"; unknown: {unknown}" if unknown else "")
            )
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"feature {self.name!r}: window={self.window!r} must be an integer >= 1")
        if not callable(self.compute):
            raise TypeError(f"feature {self.name!r}: compute={self.compute!r} is not callable")

    def apply(self, *windows: np.ndarray) -> np.ndarray:
        """Run ``compute`` on one trailing-window array per input, checking the result's shape."""
        n_rows = windows[0].shape[0]
        values = np.asarray(self.compute(*windows), dtype=np.float64)
        if values.shape != (n_rows,):
            raise ValueError(
                f"feature {self.name!r} returned shape {values.shape} for {n_rows} windows; "
                f"compute must return one value per window, shape ({n_rows},)"
            )
        return values


# --- window functions --------------------------------------------------------------------------
# Each takes (n_rows, window) arrays, last column = current bar, and returns (n_rows,).
# They spell out numpy's mean and sample std as the same ufunc sequence numpy runs (so the bits
# equal ``x.mean(axis=1)`` and ``x.std(axis=1, ddof=1)``), without the Python layers around those
# methods: the bridge calls every function once per bar close, where that overhead dominated.


def _ratio(numerator: np.ndarray, denominator: np.ndarray, *, when_zero: float) -> np.ndarray:
    """``numerator / denominator`` with a documented value where the denominator is zero."""
    nonzero = denominator != 0
    return np.where(nonzero, numerator / np.where(nonzero, denominator, 1.0), when_zero)


def _row_mean(values: np.ndarray) -> np.ndarray:
    """``values.mean(axis=1)``, bit for bit."""
    return np.add.reduce(values, axis=1) / values.shape[1]


def _row_std(values: np.ndarray) -> np.ndarray:
    """``values.std(axis=1, ddof=1)``, bit for bit."""
    width = values.shape[1]
    deviations = values - np.add.reduce(values, axis=1, keepdims=True) / width
    np.multiply(deviations, deviations, out=deviations)
    return np.sqrt(np.add.reduce(deviations, axis=1) / (width - 1))


def _log_returns(close: np.ndarray) -> np.ndarray:
    return np.log(close[:, 1:] / close[:, :-1])


def _log_return(close: np.ndarray) -> np.ndarray:
    return np.log(close[:, -1] / close[:, 0])


def _realized_vol(close: np.ndarray) -> np.ndarray:
    return _row_std(_log_returns(close)) * _ANNUALISE


def _skip_5_momentum(close: np.ndarray) -> np.ndarray:
    # close[:, -6] is the close five bars before the current one.
    return np.log(close[:, -6] / close[:, 0])


def _cutler_rsi(close: np.ndarray) -> np.ndarray:
    changes = close[:, 1:] - close[:, :-1]
    gains = _row_mean(np.maximum(changes, 0.0))
    losses = _row_mean(np.maximum(-changes, 0.0))
    return 100.0 * _ratio(gains, gains + losses, when_zero=0.5)


def _zscore(values: np.ndarray) -> np.ndarray:
    # A flat window puts the current value exactly at its mean: z = 0.
    return _ratio(values[:, -1] - _row_mean(values), _row_std(values), when_zero=0.0)


def _vol_regime(close: np.ndarray) -> np.ndarray:
    # A flat year has no regime change to report: ratio 1.
    returns = _log_returns(close)
    return _ratio(_row_std(returns[:, -20:]), _row_std(returns), when_zero=1.0)


def _parkinson_vol(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    squared_range = np.log(high / low) ** 2
    return np.sqrt(_row_mean(squared_range) / (4.0 * _LN2)) * _ANNUALISE


def _garman_klass_vol(open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    # Non-negative per bar on valid bars: |ln(C/O)| <= ln(H/L) and 0.5 > 2 ln 2 - 1.
    per_bar = 0.5 * np.log(high / low) ** 2 - (2.0 * _LN2 - 1.0) * np.log(close / open_) ** 2
    return np.sqrt(_row_mean(per_bar)) * _ANNUALISE


def _intrabar_range(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    return np.log(high[:, -1] / low[:, -1])


def _log_return_feature(bars: int) -> FeatureDefinition:
    return FeatureDefinition(
        f"log_return_{bars}",
        ("close",),
        bars + 1,
        _log_return,
        f"log(close_t / close_t-{bars}): the {bars}-bar log return",
    )


def _realized_vol_feature(bars: int) -> FeatureDefinition:
    return FeatureDefinition(
        f"realized_vol_{bars}",
        ("close",),
        bars + 1,
        _realized_vol,
        f"sample standard deviation (ddof=1) of the last {bars} 1-bar log returns, times sqrt(252)",
    )


DEFAULT_FEATURES: tuple[FeatureDefinition, ...] = (
    _log_return_feature(1),
    _log_return_feature(5),
    _log_return_feature(20),
    _realized_vol_feature(20),
    _realized_vol_feature(60),
    FeatureDefinition(
        "momentum_60_5",
        ("close",),
        61,
        _skip_5_momentum,
        "log(close_t-5 / close_t-60): 60-bar momentum skipping the last 5 bars (short-term reversal)",
    ),
    FeatureDefinition(
        "rsi_14",
        ("close",),
        15,
        _cutler_rsi,
        "Cutler's RSI: 100 * mean gain / (mean gain + mean loss) over the last 14 close changes; "
        "50 when the window is flat",
    ),
    FeatureDefinition(
        "close_zscore_20",
        ("close",),
        20,
        _zscore,
        "(close_t - 20-bar mean of close) / 20-bar std of close (ddof=1); 0 on a flat window",
    ),
    FeatureDefinition(
        "vol_regime_20_252",
        ("close",),
        253,
        _vol_regime,
        "std of the last 20 log returns / std of the last 252 (ddof=1); above 1 = a volatile spell; 1 on a flat year",
    ),
    FeatureDefinition(
        "volume_zscore_20",
        ("volume",),
        20,
        _zscore,
        "(volume_t - 20-bar mean volume) / 20-bar std of volume (ddof=1); 0 on a flat window, "
        "so also 0 for sources without volume (reported as 0)",
    ),
)

#: The default features that read the close only: for close-only data (a file of closes).
CLOSE_ONLY_FEATURES: tuple[FeatureDefinition, ...] = tuple(f for f in DEFAULT_FEATURES if f.inputs == ("close",))

RANGE_FEATURES: tuple[FeatureDefinition, ...] = (
    FeatureDefinition(
        "parkinson_vol_20",
        ("high", "low"),
        20,
        _parkinson_vol,
        "Parkinson volatility: sqrt(mean(ln(H/L)^2) / (4 ln 2)) over 20 bars, times sqrt(252)",
    ),
    FeatureDefinition(
        "garman_klass_vol_20",
        ("open", "high", "low", "close"),
        20,
        _garman_klass_vol,
        "Garman-Klass volatility: sqrt(mean(0.5 ln(H/L)^2 - (2 ln 2 - 1) ln(C/O)^2)) over 20 bars, times sqrt(252)",
    ),
    FeatureDefinition("intrabar_range", ("high", "low"), 1, _intrabar_range, "ln(high_t / low_t)"),
)

EXTENDED_FEATURES: tuple[FeatureDefinition, ...] = (*DEFAULT_FEATURES, *RANGE_FEATURES)
#: Close and range features without volume: for OHLC data that has no volume (FX quotes).
OHLC_FEATURES: tuple[FeatureDefinition, ...] = (*CLOSE_ONLY_FEATURES, *RANGE_FEATURES)


# --- input checks, shared by both paths --------------------------------------------------------


def _quote_rows(tickers: np.ndarray, ts: pd.Series, labels: list[object], mask: np.ndarray) -> str:
    """``TICKER@ts (index label)`` for the first offending rows."""
    idx = np.flatnonzero(mask)
    quoted = [f"{tickers[i]}@{ts.iat[i]} (index {labels[i]!r})" for i in idx[:_MAX_QUOTED_ROWS]]
    if len(idx) > _MAX_QUOTED_ROWS:
        quoted.append(f"... {len(idx)} rows in all")
    return ", ".join(quoted)


def _value_problems(column: str, values: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The rules a single input column must satisfy, as (rule, offending-mask) pairs."""
    with np.errstate(invalid="ignore"):
        problems = [("NaN or infinite", ~np.isfinite(values))]
        if column in _PRICE_INPUTS:
            problems.append(("not positive (prices must be > 0)", values <= 0))
        else:
            problems.append(("negative (volume must be >= 0)", values < 0))
    return problems


def _ohlc_problems(columns: Mapping[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """high >= low and open/close inside [low, high], checked only where a feature reads them."""
    high, low = columns.get("high"), columns.get("low")
    if high is None or low is None:
        return []
    problems = [("high < low", high < low)]
    for name in ("open", "close"):
        if name in columns:
            problems.append((f"{name} outside [low, high]", (columns[name] < low) | (columns[name] > high)))
    return problems


def _timestamp_ns(value: object, ticker: str) -> int:
    """A bar's timestamp as UTC nanoseconds; naive timestamps are an error."""
    if isinstance(value, pd.Timestamp) and value.tzinfo is not None:
        return value.value  # the common case, already aware: its UTC nanoseconds
    if not isinstance(value, (pd.Timestamp, datetime, np.datetime64, str)):
        raise BarValidationError(f"bar for {ticker!r}: ts={value!r} is not a timestamp")
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise BarValidationError(f"bar for {ticker!r}: ts={value!r} is not a timestamp: {exc}") from exc
    if ts.tzinfo is None:
        raise BarValidationError(f"bar for {ticker!r}: ts={value!r} is naive; timestamps must carry a time zone (UTC)")
    return ts.tz_convert("UTC").as_unit("ns").value


# --- the feature set ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSet:
    """A named, versioned list of features, computed over history or bar by bar with equal results.

    Parameters
    ----------
    name : str
        Set name, e.g. ``"default"``.
    version : int
        Bumped whenever a definition changes, so stored features name the code that made them.
    features : sequence of FeatureDefinition
        The features, in column order; names must be unique.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> fs = get_feature_set("default").select(["log_return_1", "rsi_14"])
    >>> bars = pd.DataFrame({"ticker": "A", "ts": pd.date_range("2024-01-01", periods=16, tz="UTC"),
    ...                      "close": 100.0 + np.arange(16.0), "volume": 1e6})
    >>> frame = fs.compute_batch(bars)
    >>> list(frame.columns), float(frame["rsi_14"].iloc[-1])
    (['ticker', 'event_time', 'log_return_1', 'rsi_14'], 100.0)
    >>> state = fs.streaming_state()
    >>> for bar in bars.to_dict("records"):
    ...     values = state.update(bar)
    >>> values == {name: float(frame[name].iloc[-1]) for name in fs.names}
    True
    """

    name: str
    version: int
    features: tuple[FeatureDefinition, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"feature set name {self.name!r} must be a non-empty string")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ValueError(f"feature set {self.name!r}: version={self.version!r} must be an integer >= 1")
        object.__setattr__(self, "features", tuple(self.features))
        if not self.features:
            raise ValueError(f"feature set {self.name!r} has no features")
        not_definitions = [f for f in self.features if not isinstance(f, FeatureDefinition)]
        if not_definitions:
            raise TypeError(f"feature set {self.name!r}: {not_definitions!r} are not FeatureDefinition objects")
        names = [f.name for f in self.features]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"feature set {self.name!r} defines {duplicated} more than once")
        reserved = {"ticker", "event_time"} & set(names)
        if reserved:
            raise ValueError(f"feature set {self.name!r}: {sorted(reserved)} are reserved column names")

    @property
    def names(self) -> list[str]:
        """Feature column names, in order."""
        return [f.name for f in self.features]

    @property
    def lookback(self) -> int:
        """Bars of history needed before every feature has a value (the longest window)."""
        return max(f.window for f in self.features)

    @property
    def input_columns(self) -> tuple[str, ...]:
        """Bar columns the features read, in bar-schema order."""
        used = {c for f in self.features for c in f.inputs}
        return tuple(c for c in INPUT_COLUMNS if c in used)

    def select(self, names: Iterable[str]) -> FeatureSet:
        """The same set restricted to ``names``, in the order given.

        Raises
        ------
        ValueError
            If a name is not in the set (the message lists the known ones) or is repeated.
        """
        names = [names] if isinstance(names, str) else list(names)
        by_name = {f.name: f for f in self.features}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(f"feature set {self.name!r} has no feature(s) {unknown}; known: {', '.join(self.names)}")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"select() got {repeated} more than once")
        return FeatureSet(self.name, self.version, tuple(by_name[n] for n in names))

    def schema(self) -> dict[str, str]:
        """Column name -> dtype of :meth:`compute_batch`'s frame, keys first, for store metadata."""
        return {"ticker": "str", "event_time": "datetime64[ns, UTC]", **dict.fromkeys(self.names, "float64")}

    def compute_batch(self, bars: pd.DataFrame) -> pd.DataFrame:
        """Every feature at every bar of ``bars``, NaN where a window lacks history.

        Parameters
        ----------
        bars : DataFrame
            Bars per the bar schema (``ticker``, tz-aware ``ts`` and the input columns the features
            read), any number of tickers, in any order.

        Returns
        -------
        DataFrame
            ``ticker, event_time, <features>``, one row per bar, sorted by ``(ticker, event_time)``.

        Raises
        ------
        BarValidationError
            Missing columns, naive or non-datetime ``ts``, duplicate ``(ticker, ts)``, NaN or
            infinite inputs, non-positive prices, negative volume or inconsistent OHLC; the message
            names the rule and the first offending rows.
        """
        if not isinstance(bars, pd.DataFrame):
            raise TypeError(f"bars must be a pandas DataFrame, got {type(bars).__name__}")
        required = ["ticker", "ts", *self.input_columns]
        missing = [c for c in required if c not in bars.columns]
        if missing:
            raise BarValidationError(
                f"bars are missing column(s) {missing} needed by feature set {self.name!r}; have {list(bars.columns)}"
            )
        ts = bars["ts"]
        if not isinstance(ts.dtype, pd.DatetimeTZDtype):
            raise BarValidationError(
                f"column 'ts' has dtype {ts.dtype}; it must be tz-aware datetime64 (UTC). "
                "Pass the bars through quant_engine.data.schema.validate_bars(frame, assume_tz=...)"
            )
        ordered = bars.sort_values(["ticker", "ts"], kind="stable")
        tickers = ordered["ticker"].astype(str).to_numpy()
        ts = ordered["ts"].dt.tz_convert("UTC").astype("datetime64[ns, UTC]").reset_index(drop=True)
        columns: dict[str, np.ndarray] = {}
        for column in self.input_columns:
            try:
                columns[column] = ordered[column].to_numpy(dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise BarValidationError(f"column {column!r} holds values that are not numbers: {exc}") from exc

        same_ticker = np.concatenate([[False], tickers[1:] == tickers[:-1]])
        ts_ns = ts.to_numpy(dtype="datetime64[ns]").view("int64")
        problems = [
            ("ts missing (NaT)", ts.isna().to_numpy()),
            ("duplicate (ticker, ts)", same_ticker & (np.diff(ts_ns, prepend=0) == 0)),
        ]
        for column, values in columns.items():
            problems += [(f"{column} {rule}", mask) for rule, mask in _value_problems(column, values)]
        problems += _ohlc_problems(columns)
        labels = ordered.index.tolist()
        found = [f"{rule}: {_quote_rows(tickers, ts, labels, mask)}" for rule, mask in problems if mask.any()]
        if found:
            raise BarValidationError("bars cannot be turned into features: " + "; ".join(found))

        out = np.full((len(ordered), len(self.features)), np.nan)
        starts = np.flatnonzero(~same_ticker)
        for start, stop in zip(starts, [*starts[1:], len(ordered)], strict=True):
            for j, feature in enumerate(self.features):
                if stop - start >= feature.window:
                    windows = (sliding_window_view(columns[c][start:stop], feature.window) for c in feature.inputs)
                    out[start + feature.window - 1 : stop, j] = feature.apply(*windows)
        frame = pd.DataFrame({"ticker": pd.Series(tickers, dtype="str"), "event_time": ts})
        return pd.concat([frame, pd.DataFrame(out, columns=self.names)], axis=1)

    def streaming_state(self) -> StreamingFeatureState:
        """Fresh per-ticker state whose ``update(bar)`` returns :meth:`compute_batch`'s row for that bar."""
        return StreamingFeatureState(self)


class StreamingFeatureState:
    """Rolling per-ticker state that computes a feature set one bar at a time.

    Each ticker keeps the last ``lookback`` values of every input column in a doubled ring buffer
    (each value is written twice, ``capacity`` apart), so the trailing window is always one
    contiguous slice: O(1) to append, no copying. The rings of all tickers are rows of one array,
    so :meth:`update_many` gathers many tickers' windows in one indexing call. The window
    function gets a ``(1, window)`` view (or, from :meth:`update_many`, a ``(n, window)`` copy)
    whose rows are laid out in memory as each row of the batch path's sliding-window view.

    Examples
    --------
    >>> import pandas as pd
    >>> state = get_feature_set("default").select(["log_return_1"]).streaming_state()
    >>> state.update({"ticker": "A", "ts": pd.Timestamp("2024-01-02", tz="UTC"), "close": 100.0})
    {'log_return_1': nan}
    >>> state.update({"ticker": "A", "ts": pd.Timestamp("2024-01-03", tz="UTC"), "close": 101.0})
    {'log_return_1': 0.009950330853168092}
    """

    def __init__(self, feature_set: FeatureSet) -> None:
        self._features = feature_set.features
        self._columns = feature_set.input_columns
        self._buffer_rows = [tuple(self._columns.index(c) for c in f.inputs) for f in self._features]
        self._capacity = feature_set.lookback
        self._names = feature_set.names
        # Column offsets of each feature's window relative to the end of a ticker's ring slice.
        self._window_offsets = [np.arange(-f.window, 0) for f in self._features]
        # Per input column, the smallest valid value: prices > 0 (the smallest subnormal), volume >= 0.
        self._minimums = np.array([0.0 if c == "volume" else np.nextafter(0.0, 1.0) for c in self._columns])
        self._ohlc_columns = [
            self._columns.index(c) if c in self._columns else None for c in ("open", "high", "low", "close")
        ]
        # One (tickers, columns, 2 * capacity) array holds every ticker's ring, so update_many
        # gathers all tickers' windows of a feature in one indexing call.
        self._rows: dict[str, int] = {}
        self._ring = np.full((8, len(self._columns), 2 * self._capacity), np.nan)
        self._counts: dict[str, int] = {}
        self._last_ts: dict[str, int] = {}

    @property
    def tickers(self) -> list[str]:
        """Tickers seen so far."""
        return list(self._counts)

    def bars_seen(self, ticker: str) -> int:
        """Bars accepted for ``ticker`` (0 for a ticker never seen)."""
        return self._counts.get(ticker, 0)

    def is_warm(self, ticker: str) -> bool:
        """Whether ``ticker`` has enough history for every feature to have a value."""
        return self.bars_seen(ticker) >= self._capacity

    def last_time(self, ticker: str) -> pd.Timestamp | None:
        """The ``ts`` of ``ticker``'s newest bar (None for a ticker never seen)."""
        ts_ns = self._last_ts.get(ticker)
        return None if ts_ns is None else pd.Timestamp(ts_ns, tz="UTC")

    def reset(self, ticker: str) -> None:
        """Forget ``ticker``'s bars, so a :meth:`warm_up` can rebuild its state from scratch."""
        row = self._rows.get(ticker)
        if row is not None:
            self._ring[row] = np.nan
        self._counts.pop(ticker, None)
        self._last_ts.pop(ticker, None)

    def update(self, bar: Mapping[str, object]) -> dict[str, float]:
        """Add one bar and return every feature's value at it; NaN for features not yet warm.

        Parameters
        ----------
        bar : mapping
            ``ticker``, a tz-aware ``ts`` and the input columns the features read
            (``open, high, low, close, volume``); extra keys are ignored.

        Raises
        ------
        BarValidationError
            A missing key, a naive timestamp, a bad value, or ``ts`` not after the ticker's previous
            bar. The state is left unchanged.
        """
        ticker, ts_ns, values = self._checked(bar)
        end = self._push(ticker, ts_ns, values)
        buffer, count = self._ring[self._rows[ticker]], self._counts[ticker]
        out: dict[str, float] = {}
        for feature, rows in zip(self._features, self._buffer_rows, strict=True):
            if count < feature.window:
                out[feature.name] = math.nan
                continue
            start = end - feature.window
            out[feature.name] = float(feature.apply(*(buffer[r, np.newaxis, start:end] for r in rows))[0])
        return out

    def update_many(self, bars: Sequence[Mapping[str, object]]) -> list[dict[str, float]]:
        """Add one bar for each of several tickers and return each bar's features, in input order.

        The same numbers as calling :meth:`update` per bar, bit for bit, at a fraction of the cost
        when many tickers close at once: each feature runs once over a ``(n_tickers, window)``
        array that stacks the tickers' trailing windows (each row a contiguous copy laid out as
        the batch path's rows), instead of once per ticker.

        Raises
        ------
        BarValidationError
            Any bar :meth:`update` would refuse, or two bars for one ticker (their order would be
            ambiguous). Nothing is added then, not even the valid bars.
        """
        if not bars:
            return []
        identities = [self._identity(bar) for bar in bars]
        tickers = [ticker for ticker, _ in identities]
        if len(set(tickers)) < len(tickers):
            repeated = sorted({t for t in tickers if tickers.count(t) > 1})
            raise BarValidationError(f"update_many got several bars for {repeated}; pass one bar per ticker")
        try:
            values = np.array([[bar[c] for c in self._columns] for bar in bars], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise BarValidationError(f"bars for {tickers} hold a value that is not a number: {exc}") from exc
        if not self._plausible(values):
            columns = dict(zip(self._columns, values.T, strict=True))
            problems = [
                (f"{column} {rule}", mask)
                for column, col in columns.items()
                for rule, mask in _value_problems(column, col)
            ]
            found = [
                f"{rule}: {[tickers[i] for i in np.flatnonzero(mask)]}"
                for rule, mask in problems + _ohlc_problems(columns)
                if mask.any()
            ]
            raise BarValidationError("bars refused: " + "; ".join(found))
        ends = [self._push(t, ts_ns, row) for (t, ts_ns), row in zip(identities, values, strict=True)]
        # Flat positions in the ring array of each ticker's newest value + 1 in input column 0.
        ring, row_length = self._ring.reshape(-1), self._ring.shape[1] * self._ring.shape[2]
        window_ends = np.array([self._rows[t] * row_length + end for t, end in zip(tickers, ends, strict=True)])
        counts = np.array([self._counts[t] for t in tickers])
        all_warm = counts.min() >= self._capacity
        column_length = self._ring.shape[2]
        out = np.full((len(bars), len(self._features)), np.nan)
        for j, (feature, inputs, offsets) in enumerate(
            zip(self._features, self._buffer_rows, self._window_offsets, strict=True)
        ):
            ready: slice | np.ndarray = slice(None)
            if not all_warm:
                ready = np.flatnonzero(counts >= feature.window)
                if ready.size == 0:
                    continue
            positions = window_ends[ready, np.newaxis] + offsets
            out[ready, j] = feature.apply(*(ring.take(positions + r * column_length) for r in inputs))
        return [dict(zip(self._names, row, strict=True)) for row in out.tolist()]

    def warm_up(self, bars: pd.DataFrame) -> None:
        """Load one ticker's past bars into its state without computing features for them.

        What a warm start needs is the trailing ``lookback`` values, not every past feature
        value; loading them directly makes starting many tickers from stored history cheap. The
        state afterwards is exactly what :meth:`update` over the same bars would leave.

        Parameters
        ----------
        bars : DataFrame
            One ticker's bars (``ticker``, tz-aware ``ts``, the input columns), strictly
            increasing in ``ts`` and after the ticker's last bar, if it has one.

        Raises
        ------
        BarValidationError
            More than one ticker, a bad value, or time not moving forward; the state is unchanged.
        """
        if not isinstance(bars, pd.DataFrame):
            raise TypeError(f"bars must be a pandas DataFrame, got {type(bars).__name__}")
        if bars.empty:
            return
        missing = [c for c in ("ticker", "ts", *self._columns) if c not in bars.columns]
        if missing:
            raise BarValidationError(f"warm-up bars are missing column(s) {missing}")
        tickers = bars["ticker"].unique()
        if len(tickers) != 1 or not isinstance(tickers[0], str) or not tickers[0]:
            raise BarValidationError(f"warm-up bars must hold one ticker, got {list(tickers)[:5]}")
        ticker = str(tickers[0])
        ts_ns = np.array([_timestamp_ns(value, ticker) for value in bars["ts"]], dtype=np.int64)
        previous = self._last_ts.get(ticker)
        if (np.diff(ts_ns) <= 0).any() or (previous is not None and ts_ns[0] <= previous):
            raise BarValidationError(
                f"warm-up bars for {ticker!r} must be strictly increasing in ts and after its last bar"
            )
        try:
            values = np.vstack([bars[c].to_numpy(dtype=np.float64) for c in self._columns])
        except (TypeError, ValueError) as exc:
            raise BarValidationError(f"warm-up bars for {ticker!r} hold a value that is not a number: {exc}") from exc
        columns = dict(zip(self._columns, values, strict=True))
        problems = [
            f"{column} {rule}"
            for column, col in columns.items()
            for rule, mask in _value_problems(column, col)
            if mask.any()
        ]
        problems += [rule for rule, mask in _ohlc_problems(columns) if mask.any()]
        if problems:
            raise BarValidationError(f"warm-up bars for {ticker!r}: " + "; ".join(problems))
        row = self._row(ticker)  # first: adding a ticker may replace the ring array
        buffer = self._ring[row]
        count = self._counts.get(ticker, 0)
        kept = min(len(ts_ns), self._capacity)
        slots = (count + len(ts_ns) - kept + np.arange(kept)) % self._capacity
        buffer[:, slots] = values[:, -kept:]
        buffer[:, slots + self._capacity] = values[:, -kept:]
        self._counts[ticker] = count + len(ts_ns)
        self._last_ts[ticker] = int(ts_ns[-1])

    def _checked(self, bar: Mapping[str, Any]) -> tuple[str, int, np.ndarray]:
        """``(ticker, ts in UTC ns, input values)`` of a bar that passes every rule, else the error."""
        ticker, ts_ns = self._identity(bar)
        try:
            values = np.array([float(bar[c]) for c in self._columns])
        except (TypeError, ValueError) as exc:
            raise BarValidationError(f"bar for {ticker!r} holds a value that is not a number: {exc}") from exc
        columns = dict(zip(self._columns, values.reshape(-1, 1), strict=True))
        problems = [
            f"{column} {rule}"
            for column, col_values in columns.items()
            for rule, mask in _value_problems(column, col_values)
            if mask.any()
        ]
        problems += [rule for rule, mask in _ohlc_problems(columns) if mask.any()]
        if problems:
            raise BarValidationError(f"bar for {ticker!r} at {bar['ts']}: " + "; ".join(problems))
        return ticker, ts_ns, values

    def _plausible(self, values: np.ndarray) -> bool:
        """Whether every bar (a row of input values) passes every rule; the cheap test before the detailed one."""
        with np.errstate(invalid="ignore"):
            if not (values >= self._minimums).all() or not np.isfinite(values).all():
                return False
        open_, high, low, close = self._ohlc_columns
        if high is None or low is None:
            return True
        inside = values[:, high] >= values[:, low]
        for column in (open_, close):
            if column is not None:
                inside &= (values[:, column] >= values[:, low]) & (values[:, column] <= values[:, high])
        return bool(inside.all())

    def _identity(self, bar: Mapping[str, object]) -> tuple[str, int]:
        """``(ticker, ts in UTC ns)`` of a bar with every key, a ticker and a time after the ticker's last."""
        if not isinstance(bar, Mapping):
            raise BarValidationError(f"bar {bar!r} is not a mapping of column -> value")
        missing = [k for k in ("ticker", "ts", *self._columns) if k not in bar]
        if missing:
            raise BarValidationError(f"bar {dict(bar)!r} is missing {missing}")
        ticker = bar["ticker"]
        if not isinstance(ticker, str) or not ticker:
            raise BarValidationError(f"bar ticker {ticker!r} must be a non-empty string")
        ts_ns = _timestamp_ns(bar["ts"], ticker)
        previous = self._last_ts.get(ticker)
        if previous is not None and ts_ns <= previous:
            raise BarValidationError(
                f"bar for {ticker!r} at {pd.Timestamp(ts_ns, tz='UTC')} is not after its previous bar at "
                f"{pd.Timestamp(previous, tz='UTC')}; time must move forward per ticker"
            )
        return ticker, ts_ns

    def _push(self, ticker: str, ts_ns: int, values: np.ndarray) -> int:
        """Append a checked bar to the ticker's ring; returns the end of its newest window slice."""
        row = self._row(ticker)  # first: adding a ticker may replace the ring array
        buffer = self._ring[row]
        count = self._counts.get(ticker, 0)
        slot = count % self._capacity
        buffer[:, slot] = values
        buffer[:, slot + self._capacity] = values
        self._counts[ticker] = count + 1
        self._last_ts[ticker] = ts_ns
        return slot + self._capacity + 1  # the newest value sits at end - 1

    def _row(self, ticker: str) -> int:
        """The ticker's row in the ring array, adding one (and doubling the array when full) for a new ticker."""
        row = self._rows.get(ticker)
        if row is None:
            row = self._rows[ticker] = len(self._rows)
            if row == self._ring.shape[0]:
                grown = np.full((2 * row, *self._ring.shape[1:]), np.nan)
                grown[:row] = self._ring
                self._ring = grown
        return row


#: The built-in feature sets by name; :func:`quant_engine.features.registry.get_feature_set` resolves
#: these and the sets your own feature modules register.
BUILTIN_SETS: Mapping[str, FeatureSet] = {
    "default": FeatureSet("default", 1, DEFAULT_FEATURES),
    "extended": FeatureSet("extended", 1, EXTENDED_FEATURES),
    "close_only": FeatureSet("close_only", 1, CLOSE_ONLY_FEATURES),
    "ohlc": FeatureSet("ohlc", 1, OHLC_FEATURES),
}

#: Every built-in feature by name: what a registered feature set may list beside registered ones.
BUILTIN_FEATURES: Mapping[str, FeatureDefinition] = {f.name: f for fs in BUILTIN_SETS.values() for f in fs.features}
