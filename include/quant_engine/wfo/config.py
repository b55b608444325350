"""What a walk-forward run is asked to do: its parameters, validated before any data moves.

:meth:`WfoConfig.from_params` reads the loosely typed parameters of the ``wfo_pipeline`` DAG, the
``--conf`` JSON and ``quant-engine wfo run`` into one frozen config; every rule that needs no data
is checked here, so a typo fails in the first second with the parameter named.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from quant_engine.features.registry import get_feature_set
from quant_engine.timeutil import utc_day
from quant_engine.validation import parse_tickers, whole_number
from quant_engine.wfo.backtest import PORTFOLIOS
from quant_engine.wfo.defaults import (
    DEFAULT_PARAMS,
    LABEL_KINDS,
    LABEL_TARGETS,
    SPLITTERS,
    TRIAL_KEYS,
    TRIAL_MODEL_KEYS,
)
from quant_engine.wfo.labels import LABEL_COLUMNS, fixed_horizon_labels, triple_barrier_labels
from quant_engine.wfo.splitters import CombinatorialPurgedCV, PurgedKFold, WalkForward

#: The splitters :meth:`WfoConfig.splitter` builds.
Splitter = CombinatorialPurgedCV | PurgedKFold | WalkForward

__all__ = ["LabelConfig", "Trial", "WfoConfig", "WfoConfigError"]


class WfoConfigError(ValueError):
    """A walk-forward request that cannot run; the message names the parameter and the rule."""


@dataclass(frozen=True)
class Trial:
    """One model configuration: XGBoost settings and the position threshold of its backtest."""

    max_depth: int = 3
    learning_rate: float = 0.1
    n_estimators: int = 60
    threshold: float = 0.0
    subsample: float = 1.0
    colsample_bytree: float = 1.0
    min_child_weight: float = 1.0

    def __post_init__(self) -> None:
        whole_number(self.max_depth, "max_depth", minimum=1, maximum=12, error=WfoConfigError)
        whole_number(self.n_estimators, "n_estimators", minimum=1, maximum=5000, error=WfoConfigError)
        for name, low, high in (("learning_rate", 0.0, 1.0), ("subsample", 0.0, 1.0), ("colsample_bytree", 0.0, 1.0)):
            value = getattr(self, name)
            if not _is_real(value) or not low < value <= high:
                raise WfoConfigError(f"{name}={value!r} must be a number in ({low:g}, {high:g}]")
        if not _is_real(self.min_child_weight) or self.min_child_weight < 0:
            raise WfoConfigError(f"min_child_weight={self.min_child_weight!r} must be a number >= 0")
        if not _is_real(self.threshold) or not 0.0 <= self.threshold < 0.5:
            raise WfoConfigError(
                f"threshold={self.threshold!r} must be in [0, 0.5): the distance from 0.5 a "
                "probability must exceed before the backtest takes a position"
            )

    @property
    def model_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in TRIAL_MODEL_KEYS}


@dataclass(frozen=True)
class LabelConfig:
    """How rows are labelled: a fixed horizon, or triple barriers with a vertical one at ``horizon``.

    ``target="excess"`` labels a row 1 when its return beats the mean return of the run's tickers
    over the same bars: the question a market-neutral book asks, which ticker beats the others,
    rather than which way the market goes. Only a fixed horizon has such a common span.
    """

    kind: str = "fixed"
    horizon: int = 1
    target: str = "excess"
    pt_mult: float | None = 2.0
    sl_mult: float | None = 2.0
    vol_window: int = 20

    def __post_init__(self) -> None:
        if self.kind not in LABEL_KINDS:
            raise WfoConfigError(f"label_kind={self.kind!r} is not a label kind; use one of {', '.join(LABEL_KINDS)}")
        if self.target not in LABEL_TARGETS:
            raise WfoConfigError(
                f"label_target={self.target!r} is not a label target; use one of {', '.join(LABEL_TARGETS)}"
            )
        if self.target == "excess" and self.kind != "fixed":
            raise WfoConfigError(
                f"label_target='excess' needs label_kind='fixed', not {self.kind!r}: triple-barrier labels end at "
                "different bars per ticker, so they share no cross-section to take the mean of; use "
                "label_target='absolute' with triple barriers"
            )
        whole_number(self.horizon, "horizon", minimum=1, maximum=252, error=WfoConfigError)
        whole_number(self.vol_window, "vol_window", minimum=2, maximum=1000, error=WfoConfigError)
        for name in ("pt_mult", "sl_mult"):
            value = getattr(self, name)
            if value is not None and (not _is_real(value) or not value > 0):
                raise WfoConfigError(f"{name}={value!r} must be a positive number of volatilities, or null")

    @property
    def history_bars(self) -> int:
        """Bars before ``start`` a label needs (the volatility window of triple barriers)."""
        return self.vol_window + 1 if self.kind == "triple_barrier" else 0

    def labels(self, bars: pd.DataFrame) -> pd.DataFrame:
        """``ticker, ts, t1, ret, label`` for ``bars`` (sorted by ticker, ts).

        With the excess target ``ret`` is the return minus the mean return of all the tickers in
        ``bars`` at the same ``ts``, and ``label`` is ``ret > 0`` as for the absolute target.
        """
        if self.kind == "fixed":
            labels = fixed_horizon_labels(bars, self.horizon)
            if self.target == "excess":
                ret = labels["ret"] - labels.groupby("ts")["ret"].transform("mean")
                labels = labels.assign(ret=ret, label=(ret > 0).astype("int8"))
            return labels
        labels = triple_barrier_labels(
            bars, vol_window=self.vol_window, pt_mult=self.pt_mult, sl_mult=self.sl_mult, max_holding=self.horizon
        )
        return labels.loc[:, list(LABEL_COLUMNS)]


@dataclass(frozen=True)
class WfoConfig:
    """Everything a walk-forward run needs, validated.

    Parameters
    ----------
    start, end : Timestamp
        Inclusive UTC days of the sample.
    tickers : tuple of str, optional
        ``None``: every ticker the offline store holds in the range.
    feature_set : str
        Features to join from the offline store.
    label : LabelConfig
    splitter_kind : str
        The ``splitter`` parameter: ``cpcv`` (combinatorial purged CV, many backtest paths),
        ``purged_kfold`` or ``walk_forward`` (one path each); see :mod:`quant_engine.wfo.splitters`.
    n_groups, n_test_groups : int
        CPCV: ``C(n_groups, n_test_groups)`` splits, ``n_test_groups * n_splits / n_groups`` paths.
        Purged K-fold: ``n_groups`` folds (``n_test_groups`` is not used).
    train_window, test_window : int or str
        Walk-forward: bars (int) or a duration (``"730D"``) of the first training window and of each
        test window; test windows follow each other back to back.
    anchored : bool
        Walk-forward: expanding training windows from the first bar (True) or rolling ones of
        ``train_window`` (False).
    embargo : int or str
        Bars (int) or a duration (``"5D"``) kept out of training after each test block (CPCV, K-fold)
        or before each test window (walk-forward: the time it takes to retrain).
    purge : bool
        Drop training rows whose label span ``[ts, t1]`` overlaps a test block (True, the sound
        choice); False keeps them, which leaks the test labels into training and flatters every
        statistic (for measuring that leak only).
    trials : tuple of Trial
    portfolio : str
        How the backtest turns probabilities into positions: ``market_neutral`` or ``directional``
        (see :mod:`quant_engine.wfo.backtest`).
    cost_bps : float
        Transaction cost per unit of position traded, in basis points.
    seed : int
        Seed of every model.
    min_group_rows : int
        Fewest rows a CPCV group, K-fold fold or walk-forward test window may hold; a path made of
        smaller pieces says little. A walk-forward's last window holds what is left of the data and
        is exempt.
    """

    start: pd.Timestamp
    end: pd.Timestamp
    tickers: tuple[str, ...] | None = None
    feature_set: str = "default"
    label: LabelConfig = field(default_factory=LabelConfig)
    splitter_kind: str = "cpcv"
    n_groups: int = 6
    n_test_groups: int = 2
    train_window: int | str = "730D"
    test_window: int | str = "365D"
    anchored: bool = True
    embargo: int | str = "5D"
    purge: bool = True
    trials: tuple[Trial, ...] = ()
    portfolio: str = "market_neutral"
    cost_bps: float = 5.0
    seed: int = 42
    min_group_rows: int = 100

    @classmethod
    def from_params(cls, params: Mapping[str, Any], *, default_tickers: Sequence[str] | None = None) -> WfoConfig:
        """Validate loosely typed parameters (DAG params, ``--conf`` JSON) into a config.

        Missing keys take :data:`DEFAULT_PARAMS`, and missing or null ``tickers`` take
        ``default_tickers`` (the settings' universe, ``QE_DEFAULT_TICKERS``) when given. Every rule
        that does not need data is checked here; :func:`build_dataset` and :func:`plan` check the
        rest (tickers, the range's data, group sizes, purging) before any model trains. Unknown keys
        are an error, so a misspelt parameter never falls back to its default.
        """
        if not isinstance(params, Mapping):
            raise WfoConfigError(f"parameters must be a JSON object, got {type(params).__name__}")
        unknown = sorted(set(params) - set(DEFAULT_PARAMS))
        if unknown:
            raise WfoConfigError(f"unknown parameter(s) {unknown}; known: {', '.join(DEFAULT_PARAMS)}")
        # null means "the default", except for a barrier multiplier, where it disables the barrier.
        given = {k: v for k, v in params.items() if v is not None or k in ("pt_mult", "sl_mult")}
        p = {**DEFAULT_PARAMS, **({} if default_tickers is None else {"tickers": list(default_tickers)}), **given}
        start, end = utc_day(p["start"], "start", error=WfoConfigError), utc_day(p["end"], "end", error=WfoConfigError)
        if end < start:
            raise WfoConfigError(f"end {end.date()} is before start {start.date()}: the date range is empty")
        try:
            get_feature_set(p["feature_set"])
        except ValueError as exc:
            raise WfoConfigError(str(exc)) from None
        label = LabelConfig(
            kind=p["label_kind"],
            horizon=p["horizon"],
            target=p["label_target"],
            pt_mult=p["pt_mult"],
            sl_mult=p["sl_mult"],
            vol_window=p["vol_window"],
        )
        splitter = p["splitter"]
        if splitter not in SPLITTERS:
            raise WfoConfigError(f"splitter={splitter!r} is not a splitter; use one of {', '.join(SPLITTERS)}")
        n_groups = whole_number(p["n_groups"], "n_groups", minimum=2, maximum=30, error=WfoConfigError)
        n_test_groups = whole_number(p["n_test_groups"], "n_test_groups", minimum=1, maximum=29, error=WfoConfigError)
        if splitter == "cpcv" and n_test_groups >= n_groups:
            raise WfoConfigError(
                f"n_test_groups={n_test_groups} must be smaller than n_groups={n_groups}: at least one group "
                "has to be left for training"
            )
        embargo = _parse_embargo(p["embargo"])
        train_window, test_window = (
            _parse_window(p["train_window"], "train_window"),
            _parse_window(p["test_window"], "test_window"),
        )
        for name in ("anchored", "purge"):
            if not isinstance(p[name], bool):
                raise WfoConfigError(f"{name}={p[name]!r} must be true or false")
        try:  # the windows are checked whichever splitter runs: a typo never waits for the day it is used
            WalkForward(train_window, test_window, anchored=p["anchored"], embargo=embargo)
            _build_splitter(splitter, n_groups, n_test_groups, train_window, test_window, p["anchored"], embargo)
        except (TypeError, ValueError) as exc:
            raise WfoConfigError(str(exc)) from None
        if splitter == "walk_forward":
            _check_walk_forward_span(train_window, start, end)
        if p["portfolio"] not in PORTFOLIOS:
            raise WfoConfigError(
                f"portfolio={p['portfolio']!r} is not a portfolio construction; use one of {', '.join(PORTFOLIOS)}"
            )
        if not _is_real(p["cost_bps"]) or not 0 <= p["cost_bps"] <= 1000:
            raise WfoConfigError(f"cost_bps={p['cost_bps']!r} must be a number of basis points in [0, 1000]")
        return cls(
            start=start,
            end=end,
            tickers=parse_tickers(p["tickers"], error=WfoConfigError),
            feature_set=p["feature_set"],
            label=label,
            splitter_kind=splitter,
            n_groups=n_groups,
            n_test_groups=n_test_groups,
            train_window=train_window,
            test_window=test_window,
            anchored=p["anchored"],
            embargo=embargo,
            purge=p["purge"],
            trials=_parse_trials(p["trials"]),
            portfolio=p["portfolio"],
            cost_bps=float(p["cost_bps"]),
            seed=whole_number(p["seed"], "seed", minimum=0, maximum=2**31 - 1, error=WfoConfigError),
            min_group_rows=whole_number(
                p["min_group_rows"], "min_group_rows", minimum=1, maximum=10**9, error=WfoConfigError
            ),
        )

    def to_params(self) -> dict[str, Any]:
        """The JSON form, which :meth:`from_params` reads back into an equal config."""
        return {
            "start": str(self.start.date()),
            "end": str(self.end.date()),
            "tickers": list(self.tickers) if self.tickers else None,
            "feature_set": self.feature_set,
            "label_kind": self.label.kind,
            "horizon": self.label.horizon,
            "label_target": self.label.target,
            "pt_mult": self.label.pt_mult,
            "sl_mult": self.label.sl_mult,
            "vol_window": self.label.vol_window,
            "splitter": self.splitter_kind,
            "n_groups": self.n_groups,
            "n_test_groups": self.n_test_groups,
            "train_window": self.train_window,
            "test_window": self.test_window,
            "anchored": self.anchored,
            "embargo": self.embargo,
            "purge": self.purge,
            "trials": [asdict(t) for t in self.trials],
            "portfolio": self.portfolio,
            "cost_bps": self.cost_bps,
            "seed": self.seed,
            "min_group_rows": self.min_group_rows,
        }

    def splitter(self, t1: object | None = None) -> Splitter:
        """The splitter this config names, purging by the label ends ``t1`` (not at all when ``purge`` is off)."""
        return _build_splitter(
            self.splitter_kind,
            self.n_groups,
            self.n_test_groups,
            self.train_window,
            self.test_window,
            self.anchored,
            self.embargo,
            t1=t1 if self.purge else None,
        )

    @property
    def single_path(self) -> bool:
        """Whether the splits test every row at most once, so their test segments form one backtest path."""
        return self.splitter_kind != "cpcv"


def _build_splitter(
    kind: str,
    n_groups: int,
    n_test_groups: int,
    train_window: int | str,
    test_window: int | str,
    anchored: bool,
    embargo: int | str,
    t1: object | None = None,
) -> Splitter:
    if kind == "cpcv":
        return CombinatorialPurgedCV(n_groups, n_test_groups, embargo=embargo, t1=t1)
    if kind == "purged_kfold":
        return PurgedKFold(n_groups, embargo=embargo, t1=t1)
    return WalkForward(train_window, test_window, anchored=anchored, embargo=embargo, t1=t1)


def _parse_window(value: object, name: str) -> int | str:
    """A walk-forward window: bars (an int, or a string of digits) or a duration string (``"365D"``);
    :class:`~quant_engine.wfo.splitters.WalkForward` checks that it is positive."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, str)):
        raise WfoConfigError(f"{name}={value!r} must be a number of bars (252) or a duration ('365D')")
    return int(value) if isinstance(value, numbers.Integral) else value.strip()


def _check_walk_forward_span(train_window: int | str, start: pd.Timestamp, end: pd.Timestamp) -> None:
    """A duration training window must leave part of ``[start, end]`` to test; bars are checked on the data."""
    if isinstance(train_window, int):
        return
    days = end - start + pd.Timedelta(days=1)
    if pd.Timedelta(train_window) >= days:
        raise WfoConfigError(
            f"train_window={train_window!r} is not shorter than the sample {start.date()} .. {end.date()} "
            f"({days.days} days): nothing is left to test; widen the range or shorten train_window"
        )


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _parse_embargo(value: object) -> int | str:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, str)):
        raise WfoConfigError(f"embargo={value!r} must be a number of bars (5) or a duration ('5D')")
    return int(value) if isinstance(value, numbers.Integral) else value.strip()


def _parse_trials(value: object) -> tuple[Trial, ...]:
    """A list of trial objects, or a grid (object of lists) expanded to its Cartesian product."""
    if isinstance(value, Mapping):
        grid = {k: (v if isinstance(v, list) else [v]) for k, v in value.items()}
        empty = [k for k, v in grid.items() if not v]
        if empty:
            raise WfoConfigError(f"trial grid entries {empty} are empty lists; give at least one value each")
        keys = list(grid)
        value = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]
    if not isinstance(value, list) or not value:
        raise WfoConfigError("trials must be a non-empty list of objects or a grid object of lists")
    trials = []
    for i, spec in enumerate(value):
        if not isinstance(spec, Mapping):
            raise WfoConfigError(f"trial {i} is {spec!r}; each trial is an object such as {{'max_depth': 3}}")
        unknown = sorted(set(spec) - set(TRIAL_KEYS))
        if unknown:
            raise WfoConfigError(f"trial {i} has unknown setting(s) {unknown}; known: {', '.join(TRIAL_KEYS)}")
        try:
            trials.append(Trial(**spec))
        except WfoConfigError as exc:
            raise WfoConfigError(f"trial {i}: {exc}") from None
    if len(trials) < 2:
        raise WfoConfigError(
            f"{len(trials)} trial; give at least 2: PBO and the deflated Sharpe measure the selection among trials"
        )
    if len(trials) > 64:
        raise WfoConfigError(f"{len(trials)} trials; at most 64, each multiplies the number of model fits")
    duplicated = sorted({i for i, t in enumerate(trials) if trials.index(t) != i})
    if duplicated:
        raise WfoConfigError(f"trial(s) {duplicated} repeat an earlier trial; each trial must differ")
    return tuple(trials)
