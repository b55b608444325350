"""The batch = stream check: every feature, built-in or registered, on a seeded synthetic market.

:mod:`~quant_engine.features.definitions` argues that one window function run by two executors
gives the same bits; that holds only for a function that treats each window row on its own. A
user's function can break it without any error: one that reads a neighbouring row (the next bar
in the batch path's history: a look-ahead) or normalises over all rows gives other numbers in the
bridge, whose windows arrive one ticker at a time. This check runs each feature through
:meth:`~quant_engine.features.definitions.FeatureSet.compute_batch` and through both streaming
paths the bridge uses (``update`` per bar, ``update_many`` per closing time across tickers) and
reports every value that differs, NaNs counting as equal.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from quant_engine.features.definitions import BUILTIN_FEATURES, FeatureDefinition, FeatureSet
from quant_engine.features.registry import BUILTIN_MODULE, RegisteredFeature, registry

#: Sessions of the check's market beyond the longest window, so every feature has many values.
_EXTRA_BARS = 120
#: The check's market starts here; a fixed range keeps a seed's market the same from run to run.
_MARKET_START = pd.Timestamp("2020-01-01")


@dataclass(frozen=True)
class ParityResult:
    """What the check found for one feature.

    ``mismatches`` counts the values (over both streaming paths) that differ from the batch
    path; ``first_mismatch`` describes the earliest; ``error`` is set when a path raised.
    """

    feature: str
    module: str
    values: int
    mismatches: int
    first_mismatch: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.mismatches == 0

    def describe(self) -> str:
        """One line for a report."""
        where = f"{self.feature} ({self.module})"
        if self.error is not None:
            return f"ERROR     {where}: {self.error}"
        if self.mismatches:
            differ = f"{self.mismatches} of {self.values} streamed values differ"
            return f"MISMATCH  {where}: {differ}; {self.first_mismatch}"
        return f"ok        {where}: {self.values} values equal"


def registered_features() -> list[RegisteredFeature]:
    """The built-in features, then every registered one (discovering the feature modules first)."""
    builtin = [RegisteredFeature(definition, BUILTIN_MODULE) for definition in BUILTIN_FEATURES.values()]
    return builtin + list(registry().features().values())


def synthetic_bars(longest_window: int, *, seed: int = 7, tickers: int = 3) -> pd.DataFrame:
    """A seeded synthetic market (OHLCV, several tickers) long enough for ``longest_window``."""
    from quant_engine.data.synthetic import SyntheticMarket

    # NYSE has ~250 sessions in 365 days: 1.5 calendar days a session leaves room to spare.
    end = _MARKET_START + pd.Timedelta(days=int(1.5 * (longest_window + _EXTRA_BARS)))
    market = SyntheticMarket(n_tickers=tickers, seed=seed, start=_MARKET_START, end=end)
    return market.fetch(None, _MARKET_START, end)


def check_parity(
    features: Iterable[RegisteredFeature] | None = None, *, bars: pd.DataFrame | None = None, seed: int = 7
) -> list[ParityResult]:
    """Run each feature batch and streaming over the same bars and compare every value.

    Parameters
    ----------
    features : iterable of RegisteredFeature, optional
        Default: :func:`registered_features`, everything this process knows.
    bars : DataFrame, optional
        The market (bar schema, several tickers on shared timestamps); default
        :func:`synthetic_bars` for the longest window, from ``seed``.

    Returns
    -------
    list of ParityResult
        One per feature, in order; :attr:`ParityResult.ok` is False for a feature whose
        streaming values differ from its batch values or whose computation raised.
    """
    features = registered_features() if features is None else list(features)
    if not features:
        return []
    if bars is None:
        bars = synthetic_bars(max(f.definition.window for f in features), seed=seed)
    ordered = bars.sort_values(["ts", "ticker"], kind="stable").reset_index(drop=True)
    by_time = [list(group) for _, group in itertools.groupby(ordered.to_dict("records"), key=lambda bar: bar["ts"])]
    return [_check_one(f, ordered, by_time) for f in features]


def _check_one(feature: RegisteredFeature, bars: pd.DataFrame, by_time: Sequence[list[dict]]) -> ParityResult:
    definition: FeatureDefinition = feature.definition
    one = FeatureSet(f"parity_{definition.name}", 1, (definition,))
    try:
        batch = one.compute_batch(bars).set_index(["ticker", "event_time"])[definition.name]
        per_bar, many = one.streaming_state(), one.streaming_state()
        streamed = []
        for group in by_time:
            at_once = many.update_many(group)
            for bar, from_many in zip(group, at_once, strict=True):
                from_update = per_bar.update(bar)[definition.name]
                streamed.append((bar["ticker"], bar["ts"], from_update, from_many[definition.name]))
    except Exception as exc:  # a user's function may raise anything; the report says which feature
        return ParityResult(definition.name, feature.module, 0, 0, error=f"{type(exc).__name__}: {exc}")
    tickers, times, updated, updated_many = zip(*streamed, strict=True)
    expected = batch.reindex(pd.MultiIndex.from_arrays([list(tickers), list(times)])).to_numpy()
    mismatches, first = 0, None
    for path, values in (("update", np.array(updated)), ("update_many", np.array(updated_many))):
        differs = ~((values == expected) | (np.isnan(values) & np.isnan(expected)))
        mismatches += int(differs.sum())
        if differs.any() and first is None:
            i = int(np.flatnonzero(differs)[0])
            first = f"first at {tickers[i]} {times[i]}: batch {float(expected[i])!r}, {path} {float(values[i])!r}"
    return ParityResult(definition.name, feature.module, 2 * len(expected), mismatches, first)
