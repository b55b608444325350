"""Purged splitters: a leakage oracle over random panels, CPCV paths, scikit-learn use, bad inputs.

The oracle recomputes every expected train and test set row by row, in plain Python, from the rules
in the module docstring, so a splitter that purges too little (leakage) or too much (lost training
data) fails alike.
"""

from __future__ import annotations

import doctest
import itertools
import math
import tracemalloc
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score

from quant_engine.wfo import splitters
from quant_engine.wfo.splitters import CombinatorialPurgedCV, PurgedKFold, WalkForward

BASE = pd.Timestamp("2024-01-01", tz="UTC")
HOUR = pd.Timedelta("1h")
ORACLE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- random panels, in whole hours


@st.composite
def panels(draw):
    """Sorted event hours (several rows may share one) and label end hours ``t1 >= t0``."""
    n_times = draw(st.integers(2, 24))
    gaps = draw(st.lists(st.integers(1, 5), min_size=n_times - 1, max_size=n_times - 1))
    times = np.cumsum([0, *gaps])
    rows_per_time = draw(st.lists(st.integers(1, 3), min_size=n_times, max_size=n_times))
    t0 = np.repeat(times, rows_per_time)
    spans = draw(st.lists(st.integers(0, 10), min_size=len(t0), max_size=len(t0)))
    return t0, t0 + np.array(spans)


embargoes = st.one_of(
    st.integers(0, 3),
    st.sampled_from([0.05, 0.1, 0.25]),
    st.integers(0, 8).map(lambda h: pd.Timedelta(hours=h)),
)


def _stamps(hours) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(BASE + np.asarray(hours) * HOUR)


def _t1_series(t0, t1) -> pd.Series:
    return pd.Series(_stamps(t1), index=_stamps(t0))


def _embargo_bars(embargo, n_times):
    if isinstance(embargo, pd.Timedelta):
        return None
    if isinstance(embargo, float):
        return math.ceil(Fraction(str(embargo)) * n_times)
    return embargo


def _in_embargo_after(t0_row, span_end, embargo, unique):
    """Is an event at ``t0_row`` inside the embargo after a label span ending at ``span_end``?"""
    bars = _embargo_bars(embargo, len(unique))
    if bars is None:
        return span_end < t0_row <= span_end + embargo / HOUR
    after = [u for u in unique if u > span_end]
    return t0_row in after[:bars]


def _blocks(test_rows, t0, t1, unique):
    """Spans ``(s, e)`` of the maximal runs of adjacent test timestamps."""
    test_times = sorted({t0[i] for i in test_rows})
    positions = [unique.index(t) for t in test_times]
    runs, run = [], [positions[0]]
    for p in positions[1:]:
        if p == run[-1] + 1:
            run.append(p)
        else:
            runs.append(run)
            run = [p]
    runs.append(run)
    spans = []
    for run in runs:
        in_run = [i for i in test_rows if unique.index(t0[i]) in run]
        spans.append((min(t0[i] for i in in_run), max(t1[i] for i in in_run)))
    return spans


def _assert_no_leak(train, test, t0, t1, embargo, *, embargo_after):
    unique = sorted(set(t0.tolist()))
    assert len(test) and len(train)
    assert not set(train) & set(test)
    assert not {t0[i] for i in train} & {t0[i] for i in test}, "a timestamp is split between train and test"
    for s, e in _blocks(test, t0, t1, unique):
        for i in train:
            assert not (t0[i] <= e and t1[i] >= s), f"train row {i} overlaps test span [{s}, {e}]"
            if embargo_after:
                assert not _in_embargo_after(t0[i], e, embargo, unique), f"train row {i} in the embargo after {e}"


# ---------------------------------------------------------------- oracles, straight from the rules


def _expected_group_splits(t0, t1, n_groups, test_groups, embargo):
    unique = sorted(set(t0.tolist()))
    bounds = [g * len(unique) // n_groups for g in range(n_groups + 1)]
    group_of = {u: g for g in range(n_groups) for u in unique[bounds[g] : bounds[g + 1]]}
    out = []
    for groups in test_groups:
        test = [i for i in range(len(t0)) if group_of[t0[i]] in groups]
        spans = _blocks(test, t0, t1, unique)
        train = [
            i
            for i in range(len(t0))
            if i not in test
            and not any(t0[i] <= e and t1[i] >= s for s, e in spans)
            and not any(_in_embargo_after(t0[i], e, embargo, unique) for _, e in spans)
        ]
        out.append((train, test))
    return out


def _expected_walk_forward(t0, t1, train_window, test_window, anchored, step, embargo):
    unique = sorted(set(t0.tolist()))
    m = len(unique)
    step = test_window if step is None else step
    bars = lambda w: not isinstance(w, pd.Timedelta)  # noqa: E731
    hours = lambda w: w / HOUR  # noqa: E731
    if bars(train_window):
        first, start = train_window, unique[min(train_window, m - 1)]
    else:
        start = unique[0] + hours(train_window)
        first = sum(u < start for u in unique)
    if first >= m:
        return None
    windows = []
    if bars(test_window):
        windows = [(a, min(a + test_window, m)) for a in range(first, m, step)]
    else:
        k = 0
        while start + k * hours(step) <= unique[-1]:
            lo = start + k * hours(step)
            windows.append((sum(u < lo for u in unique), sum(u < lo + hours(test_window) for u in unique)))
            k += 1
    out = []
    for a, b in windows:
        if a == b:
            continue
        if anchored:
            lo = 0
        elif bars(train_window):
            lo = max(0, a - train_window)
        else:
            lo = sum(u < unique[a] - hours(train_window) for u in unique)
        gap_bars = _embargo_bars(embargo, m)
        in_gap = (
            (lambda j: j >= a - gap_bars)
            if gap_bars is not None
            else (lambda j: unique[j] >= unique[a] - hours(embargo))
        )
        train = [
            i
            for i in range(len(t0))
            if lo <= unique.index(t0[i]) < a and t1[i] < unique[a] and not in_gap(unique.index(t0[i]))
        ]
        test = [i for i in range(len(t0)) if a <= unique.index(t0[i]) < b]
        out.append((train, test))
    return out


def _check_against(cv, X, expected, empty_message):
    """The splitter yields exactly ``expected``, or raises naming the first split left empty."""
    empty = [k for k, (train, _) in enumerate(expected) if not train]
    event("a split left empty" if empty else "splits compared")
    if empty:
        with pytest.raises(ValueError, match=rf"split {empty[0]} .*{empty_message}"):
            list(cv.split(X))
        return None
    got = list(cv.split(X))
    assert cv.get_n_splits(X) == len(got) == len(expected)
    for (train, test), (want_train, want_test) in zip(got, expected, strict=True):
        assert train.tolist() == want_train
        assert test.tolist() == want_test
    return got


@ORACLE
@given(panels(), st.integers(2, 6), st.integers(1, 5), embargoes)
def test_combinatorial_purged_cv_oracle(panel, n_groups, n_test_groups, embargo):
    t0, t1 = panel
    n_test_groups = min(n_test_groups, n_groups - 1)
    cv = CombinatorialPurgedCV(n_groups, n_test_groups, embargo=embargo, t1=_t1_series(t0, t1))
    X = np.zeros((len(t0), 1))
    if len(set(t0.tolist())) < n_groups:
        with pytest.raises(ValueError, match=f"too few for {n_groups} groups"):
            list(cv.split(X))
        return
    expected = _expected_group_splits(t0, t1, n_groups, cv.test_groups.tolist(), embargo)
    got = _check_against(cv, X, expected, "no training rows left")
    if got is None:
        return
    for train, test in got:
        _assert_no_leak(train, test, t0, t1, embargo, embargo_after=True)
    row_groups = cv.row_groups(X)
    for path in cv.paths:
        covered = np.concatenate(
            [np.intersect1d(got[split][1], np.flatnonzero(row_groups == g)) for g, split in enumerate(path)]
        )
        assert sorted(covered.tolist()) == list(range(len(t0))), "a path must cover every row exactly once"


@ORACLE
@given(panels(), st.integers(2, 5), embargoes)
def test_purged_kfold_oracle(panel, n_splits, embargo):
    t0, t1 = panel
    cv = PurgedKFold(n_splits, embargo=embargo, t1=_t1_series(t0, t1))
    X = np.zeros((len(t0), 1))
    if len(set(t0.tolist())) < n_splits:
        with pytest.raises(ValueError, match="too few"):
            list(cv.split(X))
        return
    expected = _expected_group_splits(t0, t1, n_splits, [[g] for g in range(n_splits)], embargo)
    got = _check_against(cv, X, expected, "no training rows left")
    if got is None:
        return
    for train, test in got:
        _assert_no_leak(train, test, t0, t1, embargo, embargo_after=True)
    assert sorted(np.concatenate([test for _, test in got]).tolist()) == list(range(len(t0)))


windows = st.one_of(st.integers(1, 8), st.integers(1, 30).map(lambda h: pd.Timedelta(hours=h)))


@ORACLE
@given(panels(), windows, windows, st.booleans(), st.integers(1, 4), st.booleans(), embargoes)
def test_walk_forward_oracle(panel, train_window, test_window, anchored, step_size, default_step, embargo):
    t0, t1 = panel
    step = None if default_step else (step_size if isinstance(test_window, int) else step_size * 3 * HOUR)
    cv = WalkForward(train_window, test_window, anchored=anchored, step=step, embargo=embargo, t1=_t1_series(t0, t1))
    X = np.zeros((len(t0), 1))
    expected = _expected_walk_forward(t0, t1, train_window, test_window, anchored, step, embargo)
    if expected is None:
        with pytest.raises(ValueError, match="leaving none to test on"):
            list(cv.split(X))
        return
    got = _check_against(cv, X, expected, "no training rows left")
    if got is None:
        return
    unique = sorted(set(t0.tolist()))
    for train, test in got:
        _assert_no_leak(train, test, t0, t1, embargo, embargo_after=False)
        start = t0[test].min()
        assert t0[train].max() < start and t1[train].max() < start
        gap_bars = _embargo_bars(embargo, len(unique))
        if gap_bars is None:
            assert t0[train].max() < start - embargo / HOUR
        else:
            assert unique.index(t0[train].max()) < unique.index(start) - gap_bars


@ORACLE
@given(
    start=st.datetimes(
        min_value=pd.Timestamp("1900-01-01").to_pydatetime(), max_value=pd.Timestamp("2090-01-01").to_pydatetime()
    ),
    train_days=st.integers(1, 400),
    test_days=st.integers(1, 120),
    folds=st.integers(1, 6),
    extra=st.integers(0, 3),
)
def test_walk_forward_tests_every_day_after_the_first_window_on_real_epochs(start, train_days, test_days, folds, extra):
    """Daily stamps as real epoch nanoseconds (before 1970 too), the data ending on the step grid or past it:
    every stamp after the first training window is tested exactly once, the last one included."""
    t0 = pd.date_range(
        pd.Timestamp(start).normalize(), periods=train_days + (folds - 1) * test_days + 1 + extra, freq="D", tz="UTC"
    )
    cv = WalkForward(f"{train_days}D", f"{test_days}D", t1=pd.Series(t0, index=t0))
    tested = np.concatenate([test for _, test in cv.split(pd.DataFrame(index=t0))])
    assert tested.tolist() == list(range(train_days, len(t0)))


def test_walk_forward_keeps_the_window_that_ends_exactly_with_the_data() -> None:
    t0 = pd.date_range("2020-01-01", "2021-12-26", freq="D", tz="UTC")
    folds = list(
        WalkForward(train_window="365D", test_window="90D", t1=pd.Series(t0, index=t0)).split(pd.DataFrame(index=t0))
    )
    assert len(folds) == 5 and t0[folds[-1][1][-1]] == t0[-1]


# ---------------------------------------------------------------- worked cases and paths


def test_docstring_examples_run():
    assert doctest.testmod(splitters).failed == 0


def test_non_adjacent_test_blocks_purge_only_their_neighbourhoods():
    t0 = np.arange(10)
    t1 = t0 + 1  # each label ends one bar later
    cv = CombinatorialPurgedCV(5, 2, t1=_t1_series(t0, t1))
    split = cv.test_groups.tolist().index([0, 2])
    train, test = list(cv.split(np.zeros((10, 1))))[split]
    assert test.tolist() == [0, 1, 4, 5]
    # Row 2 overlaps block 0's span [0, 2], row 3 reaches block 2 at 4, row 6 starts inside [4, 6].
    assert train.tolist() == [7, 8, 9]
    cv = CombinatorialPurgedCV(5, 2, t1=_t1_series(t0, t0))
    train, _ = list(cv.split(np.zeros((10, 1))))[split]
    assert train.tolist() == [2, 3, 6, 7, 8, 9]


def test_embargo_in_bars_fraction_and_time_by_hand():
    t0 = np.arange(20)
    X = np.zeros((20, 1))
    for embargo, dropped in [(2, [5, 6]), (0.1, [5, 6]), (pd.Timedelta(hours=3), [5, 6, 7])]:
        cv = PurgedKFold(4, embargo=embargo, t1=_t1_series(t0, t0))
        train, test = next(cv.split(X))
        assert test.tolist() == [0, 1, 2, 3, 4]
        assert train.tolist() == [i for i in range(5, 20) if i not in dropped]


@pytest.mark.parametrize("n_groups,n_test_groups", [(2, 1), (5, 1), (6, 2), (6, 3), (8, 5), (10, 2)])
def test_paths_cover_every_group_once(n_groups, n_test_groups):
    cv = CombinatorialPurgedCV(n_groups, n_test_groups)
    assert cv.n_splits == math.comb(n_groups, n_test_groups) == cv.get_n_splits()
    assert cv.n_paths == math.comb(n_groups, n_test_groups) * n_test_groups // n_groups
    assert cv.paths.shape == (cv.n_paths, n_groups)
    assert cv.test_groups.tolist() == [list(c) for c in itertools.combinations(range(n_groups), n_test_groups)]
    used = [(int(cv.paths[p, g]), g) for p in range(cv.n_paths) for g in range(n_groups)]
    assert sorted(used) == sorted((s, g) for s, groups in enumerate(cv.test_groups) for g in groups)
    for p, g in itertools.product(range(cv.n_paths), range(n_groups)):
        assert g in cv.test_groups[cv.paths[p, g]]


def test_rows_sharing_a_timestamp_share_a_group():
    t0 = np.repeat(np.arange(7), [3, 1, 2, 2, 1, 3, 2])
    row_groups = CombinatorialPurgedCV(3, 1, t1=_t1_series(t0, t0)).row_groups(np.zeros((len(t0), 1)))
    assert row_groups.tolist() == [0] * 4 + [1] * 4 + [2] * 6


def test_memory_does_not_grow_with_the_number_of_splits():
    n = 200_000
    t0 = pd.date_range("2020-01-01", periods=n, freq="min", tz="UTC")
    t1 = pd.Series(t0[np.minimum(np.arange(n) + 5, n - 1)], index=t0)
    X = np.zeros((n, 1), dtype=np.float32)

    def peak(cv):
        tracemalloc.start()
        for _ in cv.split(X):
            pass
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    few, many = (
        peak(CombinatorialPurgedCV(4, 2, embargo=3, t1=t1)),
        peak(CombinatorialPurgedCV(16, 3, embargo=3, t1=t1)),
    )
    assert many < 1.5 * few, f"6 splits peaked at {few:,} B, 560 at {many:,} B: memory grows with splits"
    # About eight int64 arrays of n rows; a dense rows x splits mask alone would be 560 bytes a row.
    assert many < 100 * n, f"peak {many:,} B for {n:,} rows"


# ---------------------------------------------------------------- times from X, and scikit-learn


def _panel_frame(n_times=60, tickers=("A", "B", "C"), seed=0):
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-01-01", periods=n_times, freq="D", tz="UTC")
    index = pd.MultiIndex.from_product([ts, list(tickers)], names=["ts", "ticker"])
    X = pd.DataFrame({"f": rng.normal(size=len(index))}, index=index)
    y = (X["f"] + rng.normal(scale=0.5, size=len(index)) > 0).astype(int).to_numpy()
    t1 = pd.Series(index.get_level_values("ts") + pd.Timedelta("3D"), index=index)
    return X, y, t1


SPLITTERS = [
    lambda t1: WalkForward(20, "10D", anchored=False, embargo=1, t1=t1),
    lambda t1: WalkForward("20D", 10, embargo="1D", t1=t1),
    lambda t1: PurgedKFold(4, embargo=0.02, t1=t1),
    lambda t1: CombinatorialPurgedCV(5, 2, embargo="2D", t1=t1),
]


@pytest.mark.parametrize("make", SPLITTERS)
def test_works_in_cross_val_score_and_grid_search(make):
    X, y, t1 = _panel_frame()
    cv = make(t1)
    n_splits = cv.get_n_splits(X)
    scores = cross_val_score(LogisticRegression(), X, y, cv=cv)
    assert len(scores) == n_splits and np.isfinite(scores).all()
    search = GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}, cv=cv).fit(X, y)
    assert search.n_splits_ == n_splits
    # A NumPy X takes its event times from t1's index instead.
    assert len(cross_val_score(LogisticRegression(), X.to_numpy(), y, cv=cv)) == n_splits


@pytest.mark.parametrize("make", SPLITTERS)
def test_nested_cross_validation_aligns_t1_to_the_subset(make):
    X, y, t1 = _panel_frame(n_times=90)
    inner = GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}, cv=make(t1))
    scores = cross_val_score(inner, X, y, cv=PurgedKFold(3, t1=t1))
    assert len(scores) == 3


def test_panel_timestamps_stay_on_one_side():
    X, _, t1 = _panel_frame(n_times=31)
    ts = X.index.get_level_values("ts")
    for cv in (PurgedKFold(4, t1=t1), CombinatorialPurgedCV(6, 2, t1=t1), WalkForward(7, 5, t1=t1)):
        for train, test in cv.split(X):
            assert not set(ts[train]) & set(ts[test])
            assert len(test) % 3 == 0


def test_event_times_from_an_event_time_level_and_without_t1():
    index = pd.MultiIndex.from_product(
        [pd.date_range("2024-01-01", periods=6, tz="UTC"), ["A", "B"]], names=["event_time", "ticker"]
    )
    X = pd.DataFrame({"f": 0.0}, index=index)
    train, test = next(PurgedKFold(3).split(X))
    assert test.tolist() == [0, 1, 2, 3] and train.tolist() == list(range(4, 12))


def test_walk_forward_windows_by_hand():
    t0 = np.arange(12) * 24  # daily, in hours
    t1 = _t1_series(t0, t0)
    X = np.zeros((12, 1))
    anchored = [(tr.tolist(), te.tolist()) for tr, te in WalkForward(4, 3, t1=t1).split(X)]
    assert anchored == [([0, 1, 2, 3], [4, 5, 6]), (list(range(7)), [7, 8, 9]), (list(range(10)), [10, 11])]
    rolling = [
        (tr.tolist(), te.tolist()) for tr, te in WalkForward("4D", "3D", anchored=False, step="2D", t1=t1).split(X)
    ]
    assert rolling[:2] == [([0, 1, 2, 3], [4, 5, 6]), ([2, 3, 4, 5], [6, 7, 8])]
    assert rolling[-1] == ([6, 7, 8, 9], [10, 11])
    assert WalkForward(4, 3, t1=t1).get_n_splits() == 3


@ORACLE
@given(panels(), windows, windows, st.booleans(), st.integers(1, 4), st.booleans())
def test_walk_forward_row_groups_are_the_test_windows(panel, train_window, test_window, anchored, step_size, default):
    t0, t1 = panel
    step = None if default else (step_size if isinstance(test_window, int) else step_size * 3 * HOUR)
    cv = WalkForward(train_window, test_window, anchored=anchored, step=step, t1=_t1_series(t0, t1))
    X = np.zeros((len(t0), 1))
    expected_windows = _expected_walk_forward(t0, t1, train_window, test_window, anchored, step, 0)
    if expected_windows is None:
        with pytest.raises(ValueError, match="leaving none to test on"):
            cv.row_groups(X)
        return
    tested = [i for _, test in expected_windows for i in test]
    if len(tested) != len(set(tested)):
        event("overlapping test windows")
        with pytest.raises(ValueError, match="the test windows overlap"):
            cv.row_groups(X)
        return
    expected = [-1] * len(t0)
    for fold, (_, test) in enumerate(expected_windows):
        for i in test:
            expected[i] = fold
    groups = cv.row_groups(X)
    assert groups.tolist() == expected
    if step is not None and not expected_windows:
        return  # a long step over a gappy panel can miss every row
    # rows before the first test window are never tested; with back-to-back windows every later row is
    first_test = int(np.flatnonzero(groups >= 0)[0])
    assert (groups[:first_test] == -1).all()
    if step is None:
        assert (groups[first_test:] >= 0).all() and (np.diff(groups[first_test:]) >= 0).all()


def test_purged_kfold_has_one_path_of_its_folds():
    cv = PurgedKFold(5)
    assert cv.n_paths == 1 and cv.paths.tolist() == [[0, 1, 2, 3, 4]]
    for g, split in enumerate(cv.paths[0]):
        assert cv.test_groups[split].tolist() == [g]


# ---------------------------------------------------------------- bad inputs, each message checked


def test_bad_constructor_arguments_are_named():
    cases = [
        (lambda: CombinatorialPurgedCV(4, 4), ValueError, "n_test_groups=4 must be smaller than n_groups=4"),
        (lambda: CombinatorialPurgedCV(4, 5), ValueError, "n_test_groups=5 must be smaller than n_groups=4"),
        (lambda: CombinatorialPurgedCV(1, 1), ValueError, "n_groups=1 must be a whole number >= 2"),
        (lambda: CombinatorialPurgedCV(6, 0), ValueError, "n_test_groups=0 must be a whole number >= 1"),
        (lambda: CombinatorialPurgedCV(6.0, 2), ValueError, "n_groups=6.0 must be a whole number"),
        (lambda: CombinatorialPurgedCV(40, 20), ValueError, "137,846,528,820 splits"),
        (lambda: PurgedKFold(1), ValueError, "n_splits=1 must be a whole number >= 2"),
        (lambda: PurgedKFold(embargo=-1), ValueError, "embargo=-1 bars is negative"),
        (lambda: PurgedKFold(embargo=1.5), ValueError, r"embargo=1.5 is a float.*\[0, 1\)"),
        (lambda: PurgedKFold(embargo="-2D"), ValueError, "negative duration"),
        (lambda: PurgedKFold(embargo="soon"), ValueError, "embargo='soon' is not a duration"),
        (lambda: PurgedKFold(embargo=True), TypeError, "embargo=True is a bool"),
        (lambda: PurgedKFold(embargo=[1]), TypeError, "embargo=.1. of type list"),
        (lambda: WalkForward(0, 5), ValueError, "train_window=0 bars must be positive"),
        (lambda: WalkForward(5, "0D"), ValueError, "test_window='0D' must be a positive duration"),
        (lambda: WalkForward(5, 2.5), TypeError, "test_window=2.5 of type float"),
        (lambda: WalkForward(5, 5, step="1D"), TypeError, "step='1D' must be in the unit of test_window=5"),
        (lambda: WalkForward(5, 5, anchored="yes"), TypeError, "anchored='yes'"),
    ]
    for make, error, message in cases:
        with pytest.raises(error, match=message):
            make()


def test_bad_sample_times_are_named():
    t0 = _stamps(np.arange(10))
    X = np.zeros((10, 1))
    cv = lambda t1: PurgedKFold(2, t1=t1)  # noqa: E731
    with pytest.raises(ValueError, match="t1 has 9 entries but X has 10 rows"):
        list(cv(pd.Series(t0[:9], index=t0[:9])).split(X))
    with pytest.raises(ValueError, match="t1 < t0 at row 3"):
        list(cv(pd.Series(t0.insert(3, t0[2]).delete(4), index=t0)).split(X))
    with pytest.raises(ValueError, match=r"must be sorted ascending: row 5 .* comes after row 4"):
        list(cv(pd.Series(t0, index=t0[[0, 1, 2, 3, 5, 4, 6, 7, 8, 9]])).split(X))
    with pytest.raises(ValueError, match=r"event times \(t0\) holds naive timestamps"):
        list(cv(pd.Series(t0, index=t0.tz_localize(None))).split(X))
    with pytest.raises(ValueError, match="t1 holds naive timestamps"):
        list(cv(pd.Series(t0.tz_localize(None), index=t0)).split(X))
    with pytest.raises(ValueError, match="missing a timestamp"):
        list(cv(pd.Series(t0.insert(9, pd.NaT).delete(10), index=t0)).split(X))
    with pytest.raises(ValueError, match="cannot find the rows' event times"):
        list(cv(np.asarray(t0)).split(X))
    with pytest.raises(ValueError, match="10 unique timestamps, too few for 12 groups"):
        list(CombinatorialPurgedCV(12, 2, t1=pd.Series(t0, index=t0)).split(X))
    with pytest.raises(ValueError, match="covers all 10 unique timestamps"):
        list(WalkForward("30D", 2, t1=pd.Series(t0, index=t0)).split(X))
    with pytest.raises(ValueError, match="depends on the sample times"):
        WalkForward(2, 2).get_n_splits()


def test_a_split_left_without_training_data_is_named():
    t0 = _stamps(np.arange(10))
    reach_fold_1 = pd.Series(t0[[5] * 5 + [5, 6, 7, 8, 9]], index=t0)  # fold 0's labels all reach fold 1
    with pytest.raises(ValueError, match=r"split 1 \(test groups \(1,\)\) has no training rows"):
        list(PurgedKFold(2, t1=reach_fold_1).split(np.zeros((10, 1))))
    with pytest.raises(ValueError, match=r"split 0 \(test groups \(0, 1\)\).*embargo of 6"):
        list(CombinatorialPurgedCV(3, 2, embargo=6, t1=pd.Series(t0, index=t0)).split(np.zeros((10, 1))))
    with pytest.raises(ValueError, match=r"split 0 \(test window from 2024-01-01 04:00:00\+00:00\) has no training"):
        list(WalkForward(4, 2, embargo=4, t1=pd.Series(t0, index=t0)).split(np.zeros((10, 1))))


def test_t1_that_cannot_be_aligned_is_named():
    X, _, t1 = _panel_frame(n_times=10)
    with pytest.raises(ValueError, match=r"t1 has no label end for 3 row\(s\) of X"):
        list(PurgedKFold(2, t1=t1.iloc[3:]).split(X))
    duplicated = pd.concat([t1.iloc[:3], t1])
    with pytest.raises(ValueError, match="has duplicates, so t1 cannot be aligned"):
        list(PurgedKFold(2, t1=duplicated).split(X))


def test_repr_names_parameters_not_data():
    t0 = _stamps(np.arange(4))
    assert repr(CombinatorialPurgedCV(6, 2, embargo="1D", t1=pd.Series(t0, index=t0))) == (
        "CombinatorialPurgedCV(n_groups=6, n_test_groups=2, embargo='1D', t1=<4 label end times>)"
    )
    assert repr(WalkForward(5, 2)) == (
        "WalkForward(train_window=5, test_window=2, anchored=True, step=None, embargo=0, t1=None)"
    )
