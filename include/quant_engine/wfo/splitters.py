"""Purged cross-validation for labels that span time: walk-forward, K-fold and combinatorial (CPCV).

A label that ends at ``t1`` carries information from every bar up to ``t1``. A training sample whose
label span ``[t0, t1]`` overlaps a test period has therefore seen part of the test, and its score is
optimistic. These splitters drop such samples (the *purge*) and, optionally, the samples right after
each test block (the *embargo*), so that serially correlated features cannot carry the test period
into training either.

Sample times
------------
Every row has an event time ``t0`` and a label end time ``t1 >= t0``, both tz-aware (naive timestamps
are an error, as everywhere in quant-engine).

* ``t0`` comes from ``X``'s index: a ``DatetimeIndex``, or a ``MultiIndex`` with a level named ``ts``
  or ``event_time`` (a panel indexed by ``(ts, ticker)``). When ``X`` carries no times (a NumPy array),
  ``t0`` comes from the index of ``t1`` instead.
* ``t1`` is given to the constructor, so the splitter works unchanged inside scikit-learn's
  ``cross_val_score`` and ``GridSearchCV``, which pass only ``X``, ``y`` and ``groups`` to ``split``.
  It is a ``Series`` whose index is the rows' ``t0`` (López de Prado's convention) or ``X``'s own
  index, or an array with one entry per row of ``X``. A ``Series`` with a unique index that differs
  from ``X``'s is aligned to ``X`` by index, so a subset of ``X`` (nested cross-validation) gets its
  own label ends. Without ``t1`` each label ends at its event time.

Rows must be sorted by ``t0``. Many rows may share a timestamp (a panel of tickers): folds are built on
**unique timestamps**, so rows that share one are always on the same side of a split.

Purge and embargo
-----------------
A *test block* is a maximal run of adjacent test groups (or a walk-forward test window). Its span is
``[s, e]`` with ``s`` the first event time in the block and ``e`` the latest label end of its rows.
A training row is purged when its ``[t0, t1]`` overlaps ``[s, e]``. Blocks that are not adjacent are
purged separately, so the training rows between them survive unless they overlap one of them.

The embargo extends each test block past the end of its label span: training rows whose ``t0`` lies
in ``(e, e + embargo]`` are dropped too. It can be given as

* an ``int``: that many unique timestamps (bars) after ``e``;
* a ``float`` in ``[0, 1)``: that fraction of all unique timestamps, rounded up to whole bars;
* a duration (``pd.Timedelta``, ``datetime.timedelta`` or a string such as ``"2D"``).

Walk-forward training data all precede their test window, so there the embargo is a *gap* before the
test window instead: training rows whose ``t0`` lies in the last ``embargo`` before ``s`` are dropped
(the time it takes to retrain before trading). The purge is the same for all splitters.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from quant_engine.validation import is_real, is_whole, whole_number

#: Names of the ``MultiIndex`` level that holds the event time of a panel row.
TIME_LEVELS: tuple[str, ...] = ("ts", "event_time")

#: Each split is one model fit; more than this many is a misconfiguration, not a plan.
MAX_SPLITS = 100_000

Embargo = int | float | str | dt.timedelta
Window = int | str | dt.timedelta


@dataclass(frozen=True)
class _SampleTimes:
    """Row times as int64 nanoseconds, folded onto the sorted unique event times."""

    t0: np.ndarray
    t1: np.ndarray
    unique: np.ndarray
    #: ``starts[j]`` is the first row at ``unique[j]``; ``starts[-1]`` is the row count.
    starts: np.ndarray
    #: ``reach[j]``: the latest label end of all rows at or before ``unique[j]`` (non-decreasing).
    reach: np.ndarray
    #: ``span_end[j]``: the latest label end of the rows at ``unique[j]``.
    span_end: np.ndarray

    @classmethod
    def from_arrays(cls, t0: np.ndarray, t1: np.ndarray) -> _SampleTimes:
        new_time = np.empty(len(t0), dtype=bool)
        new_time[:1] = True
        np.not_equal(t0[1:], t0[:-1], out=new_time[1:])
        first_rows = np.flatnonzero(new_time)
        span_end = np.maximum.reduceat(t1, first_rows)
        return cls(
            t0=t0,
            t1=t1,
            unique=t0[first_rows],
            starts=np.append(first_rows, len(t0)),
            reach=np.maximum.accumulate(span_end),
            span_end=span_end,
        )

    @property
    def n_rows(self) -> int:
        return len(self.t0)

    @property
    def n_times(self) -> int:
        return len(self.unique)


def _n_rows(X: object) -> int:
    shape = getattr(X, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) else len(X)  # type: ignore[arg-type]


def _index_times(index: object) -> pd.Index | None:
    """The event times an index carries, or None when it carries none."""
    if isinstance(index, pd.DatetimeIndex):
        return index
    if isinstance(index, pd.MultiIndex):
        for name in TIME_LEVELS:
            if name in index.names:
                return index.get_level_values(name)
    return None


def _utc_ns(values: object, what: str) -> np.ndarray:
    """Tz-aware timestamps as int64 UTC nanoseconds; naive or missing ones are an error."""
    try:
        times = pd.DatetimeIndex(values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must hold timestamps: {exc}") from exc
    if times.tz is None:
        raise ValueError(
            f"{what} holds naive timestamps; quant-engine needs tz-aware ones "
            "(localize them first, e.g. .tz_localize('UTC'))"
        )
    if times.hasnans:
        raise ValueError(f"{what} is missing a timestamp (NaT) at row {int(np.flatnonzero(times.isna())[0])}")
    return times.tz_convert("UTC").as_unit("ns").asi8


def _aligned_t1(X: object, t1: object, n_rows: int) -> object:
    """``t1`` lined up with the rows of ``X``: by index where both are pandas, else by position."""
    x_index = getattr(X, "index", None)
    if (
        isinstance(t1, pd.Series)
        and x_index is not None
        and _index_times(x_index) is not None
        and type(t1.index) is type(x_index)
        and not t1.index.equals(x_index)
    ):
        if not t1.index.is_unique:
            raise ValueError(
                "t1's index differs from X's index and has duplicates, so t1 cannot be aligned to X; "
                "index t1 like X or pass it as an array with one entry per row"
            )
        aligned = t1.reindex(x_index)
        if aligned.isna().any():
            missing = x_index[aligned.isna().to_numpy()]
            raise ValueError(f"t1 has no label end for {len(missing)} row(s) of X, first {missing[0]!r}")
        return aligned
    n_ends = len(t1)  # type: ignore[arg-type]
    if n_ends != n_rows:
        raise ValueError(f"t1 has {n_ends} entries but X has {n_rows} rows; give one label end per row")
    return t1


def _sample_times(X: object, t1: object | None) -> _SampleTimes:
    """Resolve and check the event and label end times of the rows of ``X``."""
    n_rows = _n_rows(X)
    if t1 is not None:
        t1 = _aligned_t1(X, t1, n_rows)
    t0_source = _index_times(getattr(X, "index", None))
    if t0_source is None and isinstance(t1, pd.Series):
        t0_source = _index_times(t1.index)
    if t0_source is None:
        raise ValueError(
            "cannot find the rows' event times: give X a DatetimeIndex or a MultiIndex level named "
            f"one of {list(TIME_LEVELS)}, or pass t1 as a Series indexed by event time"
        )
    t0 = _utc_ns(t0_source, "the event times (t0)")
    if len(t0) != n_rows:
        raise ValueError(f"t1's index has {len(t0)} event times but X has {n_rows} rows")
    if n_rows == 0:
        raise ValueError("X has no rows to split")
    backwards = np.flatnonzero(t0[1:] < t0[:-1])
    if len(backwards):
        i = int(backwards[0])
        raise ValueError(
            f"event times must be sorted ascending: row {i + 1} at {pd.Timestamp(t0[i + 1], tz='UTC')} "
            f"comes after row {i} at {pd.Timestamp(t0[i], tz='UTC')}; sort the rows by time first"
        )
    t1_ns = t0 if t1 is None else _utc_ns(t1, "t1")
    early = np.flatnonzero(t1_ns < t0)
    if len(early):
        i = int(early[0])
        raise ValueError(
            f"t1 < t0 at row {i}: the label ends at {pd.Timestamp(t1_ns[i], tz='UTC')}, before its event "
            f"time {pd.Timestamp(t0[i], tz='UTC')}; a label cannot end before it starts"
        )
    return _SampleTimes.from_arrays(t0, t1_ns)


def _check_embargo(embargo: Embargo) -> Embargo:
    """Reject an embargo that is not bars, a fraction in [0, 1) or a non-negative duration."""
    if isinstance(embargo, bool):
        raise TypeError(f"embargo={embargo!r} is a bool; give bars (int), a fraction (float) or a duration")
    if is_whole(embargo):
        if embargo < 0:
            raise ValueError(f"embargo={embargo} bars is negative; it must be >= 0")
        return embargo
    if is_real(embargo):
        if not 0.0 <= embargo < 1.0:
            raise ValueError(
                f"embargo={embargo} is a float, read as a fraction of the unique timestamps, so it must be "
                "in [0, 1); pass an int for a number of bars"
            )
        return embargo
    if isinstance(embargo, (str, dt.timedelta, np.timedelta64)):
        duration = _duration("embargo", embargo)
        if duration < pd.Timedelta(0):
            raise ValueError(f"embargo={embargo!r} is a negative duration; it must be >= 0")
        return embargo
    raise TypeError(
        f"embargo={embargo!r} of type {type(embargo).__name__}; give bars (int), a fraction of the "
        "unique timestamps (float in [0, 1)) or a duration (pd.Timedelta or a string like '2D')"
    )


def _duration(name: str, value: str | dt.timedelta | np.timedelta64) -> pd.Timedelta:
    try:
        duration = pd.Timedelta(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}={value!r} is not a duration: {exc}") from exc
    if duration is pd.NaT:
        raise ValueError(f"{name}={value!r} is not a duration")
    return duration


def _duration_ns(value: Embargo | np.timedelta64) -> int:
    """A duration in nanoseconds; windows and embargoes reach here only once they are known not to be bar counts."""
    if not isinstance(value, (str, dt.timedelta, np.timedelta64)):
        raise TypeError(f"{value!r} is not a duration (str, timedelta or np.timedelta64)")
    return int(pd.Timedelta(value).as_unit("ns").value)


def _embargo_bars(embargo: Embargo, n_times: int) -> int | None:
    """The embargo in unique timestamps, or None when it is a duration."""
    if is_whole(embargo):
        return int(embargo)
    if is_real(embargo):
        return math.ceil(round(embargo * n_times, 9))  # round off float noise: 0.07 * 100 = 7.000000000000001
    return None


def _embargo_stop(times: _SampleTimes, span_end: int, embargo: Embargo) -> int:
    """First unique timestamp past the purge and embargo that follow a test span ending at ``span_end``."""
    after = int(np.searchsorted(times.unique, span_end, side="right"))
    bars = _embargo_bars(embargo, times.n_times)
    if bars is not None:
        return min(after + bars, times.n_times)
    return int(np.searchsorted(times.unique, span_end + _duration_ns(embargo), side="right"))


def _purge_before(keep: np.ndarray, times: _SampleTimes, first: int) -> None:
    """Drop rows before unique timestamp ``first`` whose label reaches it.

    Rows before the first timestamp whose running label reach gets to ``unique[first]`` cannot
    overlap, so only the rows from there on are checked.
    """
    start = times.unique[first]
    lo = times.starts[int(np.searchsorted(times.reach, start, side="left"))]
    hi = times.starts[first]
    keep[lo:hi] &= times.t1[lo:hi] < start


def _group_bounds(n_times: int, n_groups: int) -> np.ndarray:
    """Unique-timestamp offsets of ``n_groups`` contiguous groups whose sizes differ by at most one."""
    return np.arange(n_groups + 1) * n_times // n_groups


def _contiguous_runs(groups: tuple[int, ...]) -> list[tuple[int, int]]:
    """``(first, stop)`` of each run of adjacent group ids: (1, 2, 5) -> [(1, 3), (5, 6)]."""
    runs: list[tuple[int, int]] = []
    for group in groups:
        if runs and runs[-1][1] == group:
            runs[-1] = (runs[-1][0], group + 1)
        else:
            runs.append((group, group + 1))
    return runs


def _repr(cv: object, params: dict[str, object]) -> str:
    shown = []
    for name, value in params.items():
        if name == "t1" and value is not None:
            shown.append(f"t1=<{len(value)} label end times>")  # type: ignore[arg-type]
        else:
            shown.append(f"{name}={value!r}")
    return f"{type(cv).__name__}({', '.join(shown)})"


class _GroupPurgedCV(ABC):
    """Purged splits that test a few of ``n_groups`` contiguous groups of unique timestamps each."""

    t1: object | None
    embargo: Embargo

    @property
    @abstractmethod
    def _n_groups(self) -> int:
        """Number of contiguous groups the unique timestamps are cut into."""

    @property
    @abstractmethod
    def test_groups(self) -> np.ndarray:
        """Test groups of each split, shape ``(n_splits, n_test_groups)``, in split order."""

    def get_n_splits(self, X: object = None, y: object = None, groups: object = None) -> int:
        """Number of splits; independent of the data.

        Parameters
        ----------
        X, y, groups : object
            Always ignored, exist for compatibility with scikit-learn.
        """
        return len(self.test_groups)

    def _times(self, X: object) -> _SampleTimes:
        times = _sample_times(X, self.t1)
        if times.n_times < self._n_groups:
            raise ValueError(
                f"X has {times.n_times} unique timestamps, too few for {self._n_groups} groups: each group "
                "needs at least one (rows that share a timestamp always stay together)"
            )
        return times

    def row_groups(self, X: object) -> np.ndarray:
        """Group id of each row of ``X``, to assemble per-group predictions into paths."""
        times = self._times(X)
        bounds = _group_bounds(times.n_times, self._n_groups)
        group_of_time = np.searchsorted(bounds, np.arange(times.n_times), side="right") - 1
        return np.repeat(group_of_time, np.diff(times.starts))

    def _train_mask(self, times: _SampleTimes, bounds: np.ndarray, test_groups: np.ndarray) -> np.ndarray:
        keep = np.ones(times.n_rows, dtype=bool)
        for first_group, stop_group in _contiguous_runs(tuple(int(g) for g in test_groups)):
            first, stop = int(bounds[first_group]), int(bounds[stop_group])
            _purge_before(keep, times, first)
            span_end = int(times.span_end[first:stop].max())
            keep[times.starts[first] : times.starts[_embargo_stop(times, span_end, self.embargo)]] = False
        return keep

    def split(self, X: object, y: object = None, groups: object = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(train, test)`` row positions of each split.

        Every split is checked before the first is yielded: one left without training rows by the
        purge and embargo raises ``ValueError`` naming it.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Rows sorted by event time; a pandas object may carry the event times in its index.
        y : object
            Always ignored, exists for compatibility with scikit-learn.
        groups : object
            Always ignored: rows are grouped by their timestamps.

        Yields
        ------
        train, test : ndarray of int
            Sorted row positions.
        """
        times = self._times(X)
        bounds = _group_bounds(times.n_times, self._n_groups)
        all_test_groups = self.test_groups
        for split_no, test_groups in enumerate(all_test_groups):
            if not self._train_mask(times, bounds, test_groups).any():
                raise ValueError(
                    f"split {split_no} (test groups {tuple(int(g) for g in test_groups)}) has no training "
                    f"rows left after purging overlapping labels and an embargo of {self.embargo!r}; use "
                    "fewer test groups, a shorter embargo or shorter labels"
                )
        for test_groups in all_test_groups:
            test = np.concatenate(
                [np.arange(times.starts[bounds[g]], times.starts[bounds[g + 1]]) for g in test_groups]
            )
            yield np.flatnonzero(self._train_mask(times, bounds, test_groups)), test


class PurgedKFold(_GroupPurgedCV):
    """K-fold over contiguous groups of unique timestamps, purged by label spans and embargoed.

    Each of the ``n_splits`` contiguous groups is the test set once; the training set is every
    other row less the purged and embargoed ones (see the module docstring for the exact rules).

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds, at least 2. Unique timestamps are split into groups whose sizes differ by
        at most one.
    embargo : int, float or duration, default=0
        Bars (int), fraction of unique timestamps (float in [0, 1)) or duration after the end of each
        test fold's label span whose rows are kept out of training.
    t1 : Series or array-like, optional
        Label end time of each row; see the module docstring for how it lines up with ``X``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> t0 = pd.date_range("2024-01-01", periods=8, freq="D", tz="UTC")
    >>> t1 = pd.Series(t0 + pd.Timedelta("1D"), index=t0)  # each label ends one bar later
    >>> cv = PurgedKFold(n_splits=4, t1=t1)
    >>> for train, test in cv.split(np.zeros((8, 1))):
    ...     print(train, test)
    [3 4 5 6 7] [0 1]
    [0 5 6 7] [2 3]
    [0 1 2 7] [4 5]
    [0 1 2 3 4] [6 7]
    """

    def __init__(self, n_splits: int = 5, *, embargo: Embargo = 0, t1: object | None = None) -> None:
        self.n_splits = whole_number(n_splits, "n_splits", minimum=2)
        self.embargo = _check_embargo(embargo)
        self.t1 = t1

    @property
    def _n_groups(self) -> int:
        return self.n_splits

    @property
    def test_groups(self) -> np.ndarray:
        """Test fold of each split, shape ``(n_splits, 1)``."""
        return np.arange(self.n_splits).reshape(-1, 1)

    @property
    def n_paths(self) -> int:
        """One backtest path: each fold is tested exactly once."""
        return 1

    @property
    def paths(self) -> np.ndarray:
        """Split whose test prediction fills each fold of the one path, shape ``(1, n_splits)``.

        Fold ``k`` comes from split ``k``, the only one that tests it.
        """
        return np.arange(self.n_splits).reshape(1, -1)

    def __repr__(self) -> str:
        return _repr(self, {"n_splits": self.n_splits, "embargo": self.embargo, "t1": self.t1})


class CombinatorialPurgedCV(_GroupPurgedCV):
    """Combinatorial purged cross-validation (CPCV) with backtest-path reconstruction.

    Unique timestamps are split into ``n_groups`` contiguous groups; every choice of
    ``n_test_groups`` of them is the test set of one split, ``C(n_groups, n_test_groups)`` splits in
    all. Each group is tested in ``n_paths = C(n_groups, n_test_groups) * n_test_groups / n_groups``
    splits, so the test predictions assemble into ``n_paths`` complete backtest paths, each covering
    every group exactly once (:attr:`paths`). Purge and embargo follow the module docstring; adjacent
    test groups form one block, and non-adjacent blocks are purged separately.

    Parameters
    ----------
    n_groups : int, default=6
        Number of groups, at least 2.
    n_test_groups : int, default=2
        Number of test groups per split, at least 1 and smaller than ``n_groups``.
    embargo : int, float or duration, default=0
        Bars (int), fraction of unique timestamps (float in [0, 1)) or duration after the end of each
        test block's label span whose rows are kept out of training.
    t1 : Series or array-like, optional
        Label end time of each row; see the module docstring for how it lines up with ``X``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> t0 = pd.date_range("2024-01-01", periods=8, freq="D", tz="UTC")
    >>> cv = CombinatorialPurgedCV(n_groups=4, n_test_groups=2, t1=pd.Series(t0, index=t0))
    >>> cv.n_splits, cv.n_paths
    (6, 3)
    >>> cv.test_groups[:3]
    array([[0, 1],
           [0, 2],
           [0, 3]])
    >>> cv.paths  # the split whose test prediction fills each (path, group)
    array([[0, 0, 1, 2],
           [1, 3, 3, 4],
           [2, 4, 5, 5]])
    >>> train, test = next(cv.split(np.zeros((8, 1))))
    >>> train, test
    (array([4, 5, 6, 7]), array([0, 1, 2, 3]))
    """

    def __init__(
        self,
        n_groups: int = 6,
        n_test_groups: int = 2,
        *,
        embargo: Embargo = 0,
        t1: object | None = None,
    ) -> None:
        self.n_groups = whole_number(n_groups, "n_groups", minimum=2)
        self.n_test_groups = whole_number(n_test_groups, "n_test_groups", minimum=1)
        if self.n_test_groups >= self.n_groups:
            raise ValueError(
                f"n_test_groups={n_test_groups} must be smaller than n_groups={n_groups}: at least one "
                "group has to be left for training"
            )
        n_splits = math.comb(self.n_groups, self.n_test_groups)
        if n_splits > MAX_SPLITS:
            raise ValueError(
                f"n_groups={n_groups} and n_test_groups={n_test_groups} make {n_splits:,} splits, more than "
                f"{MAX_SPLITS:,}; each split is a model fit, so choose fewer groups"
            )
        self.embargo = _check_embargo(embargo)
        self.t1 = t1

    @property
    def _n_groups(self) -> int:
        return self.n_groups

    @property
    def n_splits(self) -> int:
        """Number of splits, ``C(n_groups, n_test_groups)``."""
        return math.comb(self.n_groups, self.n_test_groups)

    @property
    def n_paths(self) -> int:
        """Number of complete backtest paths, ``C(n_groups, n_test_groups) * n_test_groups / n_groups``."""
        return self.n_splits * self.n_test_groups // self.n_groups

    @property
    def test_groups(self) -> np.ndarray:
        """Test groups of each split, shape ``(n_splits, n_test_groups)``, in lexicographic order."""
        combos = itertools.combinations(range(self.n_groups), self.n_test_groups)
        return np.array(list(combos), dtype=np.intp).reshape(-1, self.n_test_groups)

    @property
    def paths(self) -> np.ndarray:
        """Split whose test prediction fills each group of each path, shape ``(n_paths, n_groups)``.

        Path ``p`` takes group ``g`` from the ``p``-th split (in split order) that tests ``g``, so every
        (split, test group) pair is used by exactly one path.
        """
        test_groups = self.test_groups
        split_of = np.repeat(np.arange(self.n_splits), self.n_test_groups)
        by_group = np.argsort(test_groups.ravel(), kind="stable")
        return split_of[by_group].reshape(self.n_groups, self.n_paths).T

    def __repr__(self) -> str:
        return _repr(
            self,
            {
                "n_groups": self.n_groups,
                "n_test_groups": self.n_test_groups,
                "embargo": self.embargo,
                "t1": self.t1,
            },
        )


def _check_window(name: str, value: Window) -> Window:
    """A window is a positive number of bars (int) or a positive duration."""
    if isinstance(value, bool):
        raise TypeError(f"{name}={value!r} is a bool; give bars (int) or a duration")
    if is_whole(value):
        if value <= 0:
            raise ValueError(f"{name}={value} bars must be positive")
        return value
    if isinstance(value, (str, dt.timedelta, np.timedelta64)):
        if _duration(name, value) <= pd.Timedelta(0):
            raise ValueError(f"{name}={value!r} must be a positive duration")
        return value
    raise TypeError(
        f"{name}={value!r} of type {type(value).__name__}; give bars (int) or a duration "
        "(pd.Timedelta or a string like '365D')"
    )


class WalkForward:
    """Walk-forward splits: train on the past, test on the next window, step forward, repeat.

    Windows are counted in unique timestamps (``int``, bars) or in time (a duration such as ``"365D"``).
    The first test window starts ``train_window`` after the first timestamp; each next one starts
    ``step`` later. The last test window ends with the data and may be shorter; windows that hold no
    timestamp (a calendar gap) are skipped. Training rows are purged when their label reaches the
    test window, and the embargo is a gap before the test window (see the module docstring).

    Parameters
    ----------
    train_window : int or duration
        Rolling: the length of every training window. Anchored: the length of the first one; later
        ones expand back to the first timestamp.
    test_window : int or duration
        Length of each test window.
    anchored : bool, default=True
        Expanding (anchored at the first timestamp) or rolling training windows.
    step : int or duration, optional
        How far each test window starts after the previous one, in the unit of ``test_window``;
        defaults to ``test_window`` (back-to-back test windows).
    embargo : int, float or duration, default=0
        Gap before each test window, in bars, fraction of unique timestamps or time, whose rows are
        kept out of training.
    t1 : Series or array-like, optional
        Label end time of each row; see the module docstring for how it lines up with ``X``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> t0 = pd.date_range("2024-01-01", periods=10, freq="D", tz="UTC")
    >>> t1 = pd.Series(t0 + pd.Timedelta("1D"), index=t0)
    >>> cv = WalkForward(train_window="4D", test_window=3, anchored=False, t1=t1)
    >>> for train, test in cv.split(np.zeros((10, 1))):
    ...     print(train, test)
    [0 1 2] [4 5 6]
    [3 4 5] [7 8 9]
    """

    def __init__(
        self,
        train_window: Window,
        test_window: Window,
        *,
        anchored: bool = True,
        step: Window | None = None,
        embargo: Embargo = 0,
        t1: object | None = None,
    ) -> None:
        self.train_window = _check_window("train_window", train_window)
        self.test_window = _check_window("test_window", test_window)
        if step is not None:
            _check_window("step", step)
            if is_whole(step) != is_whole(test_window):
                raise TypeError(
                    f"step={step!r} must be in the unit of test_window={test_window!r}: both bars (int) "
                    "or both durations"
                )
        if not isinstance(anchored, bool):
            raise TypeError(f"anchored={anchored!r} must be True (expanding) or False (rolling)")
        self.anchored = anchored
        self.step = step
        self.embargo = _check_embargo(embargo)
        self.t1 = t1

    def _windows(self, times: _SampleTimes) -> list[tuple[int, int, int]]:
        """``(train_first, test_first, test_stop)`` unique-timestamp offsets of each fold."""
        unique, n_times = times.unique, times.n_times
        if is_whole(self.train_window):
            first_test = int(self.train_window)
            test_start = int(unique[min(first_test, n_times - 1)])
        else:
            test_start = int(unique[0]) + _duration_ns(self.train_window)
            first_test = int(np.searchsorted(unique, test_start))
        if first_test >= n_times:
            raise ValueError(
                f"train_window={self.train_window!r} covers all {n_times} unique timestamps of X, leaving "
                "none to test on"
            )
        step = self.test_window if self.step is None else self.step
        if is_whole(self.test_window) and is_whole(step):  # __init__ holds both in bars or both durations
            firsts = np.arange(first_test, n_times, int(step))
            stops = np.minimum(firsts + int(self.test_window), n_times)
        else:
            # Counted in integers: np.arange sizes an int64 range through float64, which loses the
            # last grid point when the data ends exactly on it.
            step_ns = _duration_ns(step)
            n_steps = max(0, (int(unique[-1]) - test_start) // step_ns + 1)
            grid = test_start + step_ns * np.arange(n_steps, dtype=np.int64)
            firsts = np.searchsorted(unique, grid)
            stops = np.searchsorted(unique, grid + _duration_ns(self.test_window))
        windows = []
        for first, stop in zip(firsts.tolist(), stops.tolist(), strict=True):
            if first == stop:
                continue
            if self.anchored:
                train_first = 0
            elif is_whole(self.train_window):
                train_first = max(0, first - int(self.train_window))
            else:
                train_first = int(np.searchsorted(unique, unique[first] - _duration_ns(self.train_window)))
            windows.append((train_first, first, stop))
        return windows

    def _train(self, times: _SampleTimes, train_first: int, test_first: int) -> np.ndarray:
        bars = _embargo_bars(self.embargo, times.n_times)
        if bars is not None:
            gap_first = max(train_first, test_first - bars)
        else:
            gap_start = times.unique[test_first] - _duration_ns(self.embargo)
            gap_first = max(train_first, int(np.searchsorted(times.unique, gap_start, side="left")))
        lo, hi = times.starts[train_first], times.starts[gap_first]
        return lo + np.flatnonzero(times.t1[lo:hi] < times.unique[test_first])

    def get_n_splits(self, X: object = None, y: object = None, groups: object = None) -> int:
        """Number of folds, which depends on the sample times.

        Parameters
        ----------
        X : array-like, optional
            The rows to split; may be omitted when ``t1`` is a Series indexed by event time.
        y, groups : object
            Always ignored, exist for compatibility with scikit-learn.
        """
        if X is None:
            if not isinstance(self.t1, pd.Series):
                raise ValueError("WalkForward's number of splits depends on the sample times; pass X")
            X = np.empty((len(self.t1), 0))
        return len(self._windows(_sample_times(X, self.t1)))

    def row_groups(self, X: object) -> np.ndarray:
        """Fold whose test window holds each row of ``X``, or ``-1`` for rows no fold tests.

        Rows before the first test window (the first training window) and rows in a calendar gap
        between test windows (a ``step`` longer than ``test_window``) are never tested. With
        back-to-back windows the test windows in fold order are one out-of-sample path over the
        rest of the data.

        Raises
        ------
        ValueError
            Test windows overlap (``step`` shorter than ``test_window``): a row would be tested by
            more than one fold, so there is no single group per row.

        Examples
        --------
        >>> import numpy as np, pandas as pd
        >>> t0 = pd.date_range("2024-01-01", periods=10, freq="D", tz="UTC")
        >>> WalkForward(train_window=4, test_window=3).row_groups(pd.DataFrame(index=t0))
        array([-1, -1, -1, -1,  0,  0,  0,  1,  1,  1])
        """
        times = _sample_times(X, self.t1)
        group_of_time = np.full(times.n_times, -1, dtype=np.intp)
        for fold, (_, first, stop) in enumerate(self._windows(times)):
            if (group_of_time[first:stop] >= 0).any():
                raise ValueError(
                    f"the test windows overlap (step={self.step!r} is shorter than test_window="
                    f"{self.test_window!r}): a row would be tested by more than one fold"
                )
            group_of_time[first:stop] = fold
        return np.repeat(group_of_time, np.diff(times.starts))

    def split(self, X: object, y: object = None, groups: object = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(train, test)`` row positions of each fold, oldest test window first.

        Every fold is checked before the first is yielded: one left without training rows by the
        purge and embargo raises ``ValueError`` naming it.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Rows sorted by event time; a pandas object may carry the event times in its index.
        y : object
            Always ignored, exists for compatibility with scikit-learn.
        groups : object
            Always ignored: rows are grouped by their timestamps.

        Yields
        ------
        train, test : ndarray of int
            Sorted row positions.
        """
        times = _sample_times(X, self.t1)
        windows = self._windows(times)
        for split_no, (train_first, first, _) in enumerate(windows):
            if not len(self._train(times, train_first, first)):
                raise ValueError(
                    f"split {split_no} (test window from {pd.Timestamp(times.unique[first], tz='UTC')}) has "
                    f"no training rows left after purging labels that reach the test window and an embargo "
                    f"of {self.embargo!r}; use a longer train_window, a shorter embargo or shorter labels"
                )
        for train_first, first, stop in windows:
            test = np.arange(times.starts[first], times.starts[stop])
            yield self._train(times, train_first, first), test

    def __repr__(self) -> str:
        return _repr(
            self,
            {
                "train_window": self.train_window,
                "test_window": self.test_window,
                "anchored": self.anchored,
                "step": self.step,
                "embargo": self.embargo,
                "t1": self.t1,
            },
        )
