"""Training baselines in SageMaker Model Monitor's ``statistics.json`` / ``constraints.json`` shapes.

A baseline is built once from the training set and written next to the model, so a later drift
check needs only these two files, never the training data. Each numeric feature stores, as Model
Monitor does under ``numerical_statistics.distribution.kll``:

* ``buckets``: ten equal-width histogram buckets between min and max (what people read);
* ``sketch``: a KLL quantile sketch, ``parameters: {c, k}`` and ``data``, a list of levels where an
  item at level ``l`` stands for ``2**l`` training values (what the drift check reads).

The sketch is built deterministically from the sorted column: a level is compacted (every other
item kept, the offset alternating by level, an odd leftover staying behind) while it holds more
than ``k`` items. Weights sum exactly to ``num_present`` and the CDF read back from it is off by at
most ``2**L / num_present`` (``L`` the top level; about ``1/k`` to ``2/k``), exact when
``num_present <= k``. The same training data always gives the same bytes.

Files are written atomically (temp file, fsync, rename); ``statistics.json`` first, then
``constraints.json``, and :meth:`Baseline.read` refuses a pair whose features disagree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from quant_engine.storage.atomic import write_json_atomic

__all__ = [
    "Baseline",
    "BaselineError",
    "FeatureBaseline",
    "CONSTRAINTS_FILE",
    "IDENTIFIER_COLUMNS",
    "STATISTICS_FILE",
    "build_baseline",
    "write_json_atomic",
]

STATISTICS_FILE = "statistics.json"
CONSTRAINTS_FILE = "constraints.json"
#: Columns of a feature frame that identify a row and are never features.
IDENTIFIER_COLUMNS: tuple[str, ...] = ("ticker", "event_time")
#: Model Monitor's KLL parameters (its statistics files show ``c: 0.64, k: 2048``).
KLL_K = 2048
KLL_C = 0.64
N_BUCKETS = 10
FORMAT_VERSION = 0
COMPARISON_METHODS: tuple[str, ...] = ("Simple", "Robust")


class BaselineError(ValueError):
    """A training set cannot be baselined, or stored baseline files are unreadable or inconsistent."""


def _kll_levels(sorted_values: np.ndarray, k: int) -> list[list[float]]:
    """Compact sorted values into KLL levels: level ``l`` items weigh ``2**l``."""
    levels: list[list[float]] = []
    current = sorted_values
    level = 0
    while current.size > k:
        if current.size % 2:  # the odd leftover stays at this level, so weights still sum to n
            levels.append([float(current[-1])])
            current = current[:-1]
        else:
            levels.append([])
        current = current[level % 2 :: 2]
        level += 1
    levels.append(current.tolist())
    return levels


def _buckets(values: np.ndarray, vmin: float, vmax: float) -> list[dict[str, float]]:
    if vmin == vmax:
        return [{"lower_bound": vmin, "upper_bound": vmax, "count": float(values.size)}]
    counts, edges = np.histogram(values, bins=N_BUCKETS, range=(vmin, vmax))
    return [
        {"lower_bound": float(edges[i]), "upper_bound": float(edges[i + 1]), "count": float(counts[i])}
        for i in range(N_BUCKETS)
    ]


def _feature_columns(frame: pd.DataFrame, features: Sequence[str] | None) -> list[str]:
    if features is None:
        return [str(c) for c in frame.columns if c not in IDENTIFIER_COLUMNS]
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise BaselineError(f"features {missing} are not columns of the training frame")
    return list(features)


def _feature_statistics(name: str, column: pd.Series, k: int) -> dict[str, Any]:
    if not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)):
        raise BaselineError(f"feature {name!r} has dtype {column.dtype}; baselines take numeric features only")
    values = column.to_numpy(dtype="float64", na_value=np.nan)
    present = values[~np.isnan(values)]
    if present.size == 0:
        raise BaselineError(f"feature {name!r} has no values (all NaN); drop it before baselining")
    if not np.isfinite(present).all():
        raise BaselineError(f"feature {name!r} holds infinite values; a baseline needs finite numbers")
    present.sort()
    integral = (
        pd.api.types.is_integer_dtype(column)
        or pd.api.types.is_bool_dtype(column)
        or bool(np.all(present == np.round(present)))
    )
    vmin, vmax = float(present[0]), float(present[-1])
    return {
        "name": name,
        "inferred_type": "Integral" if integral else "Fractional",
        "numerical_statistics": {
            "common": {"num_present": int(present.size), "num_missing": int(values.size - present.size)},
            "mean": float(present.mean()),
            "sum": float(present.sum()),
            "std_dev": float(present.std()),
            "min": vmin,
            "max": vmax,
            "distribution": {
                "kll": {
                    "buckets": _buckets(present, vmin, vmax),
                    "sketch": {"parameters": {"c": KLL_C, "k": k}, "data": _kll_levels(present, k)},
                }
            },
        },
    }


def build_baseline(
    frame: pd.DataFrame,
    *,
    features: Sequence[str] | None = None,
    comparison_threshold: float = 0.1,
    comparison_method: Literal["Simple", "Robust"] = "Robust",
    sketch_k: int = KLL_K,
) -> Baseline:
    """Baseline statistics and suggested constraints of a training set.

    Parameters
    ----------
    frame : DataFrame
        The training features, one row per sample. ``ticker`` and ``event_time`` are skipped.
    features : sequence of str, optional
        Columns to baseline; default every column but the identifiers.
    comparison_threshold : float, default 0.1
        Model Monitor's ``distribution_constraints.comparison_threshold`` (its default, 0.1): the
        largest CDF distance a feature may show before ``baseline_drift_check`` fires.
    comparison_method : {"Simple", "Robust"}, default "Robust"
        ``Simple`` compares the raw CDF distance; ``Robust`` first subtracts the KS sample-size
        allowance (see :mod:`quant_engine.monitoring.feature_drift`).
    sketch_k : int, default 2048
        Items per KLL level; the stored CDF is off by at most about ``2/k``.

    Returns
    -------
    Baseline

    Examples
    --------
    >>> import pandas as pd
    >>> b = build_baseline(pd.DataFrame({"x": [0.5, 1.5, 2.5], "n": [1, 2, 3]}))
    >>> [(f.name, f.inferred_type) for f in b.features]
    [('x', 'Fractional'), ('n', 'Integral')]
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    if len(frame) == 0:
        raise BaselineError("the training frame has no rows; a baseline needs at least one")
    duplicated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
    if duplicated:
        raise BaselineError(f"columns {duplicated} appear more than once; feature names must be unique")
    if not (isinstance(comparison_threshold, (int, float)) and 0.0 < comparison_threshold <= 1.0):
        raise BaselineError(f"comparison_threshold={comparison_threshold!r} must be in (0, 1], a CDF distance")
    if comparison_method not in COMPARISON_METHODS:
        raise BaselineError(f"comparison_method={comparison_method!r} must be one of {', '.join(COMPARISON_METHODS)}")
    if not (isinstance(sketch_k, int) and sketch_k >= 8):
        raise BaselineError(f"sketch_k={sketch_k!r} must be an integer >= 8")
    names = _feature_columns(frame, features)
    if not names:
        raise BaselineError("the training frame has no feature columns besides the identifiers")
    stats_features = [_feature_statistics(n, frame[n], sketch_k) for n in names]
    statistics = {"version": FORMAT_VERSION, "dataset": {"item_count": len(frame)}, "features": stats_features}
    constraints = {
        "version": FORMAT_VERSION,
        "features": [
            {
                "name": f["name"],
                "inferred_type": f["inferred_type"],
                "completeness": f["numerical_statistics"]["common"]["num_present"] / len(frame),
                "num_constraints": {"is_non_negative": f["numerical_statistics"]["min"] >= 0.0},
            }
            for f in stats_features
        ],
        "monitoring_config": {
            "evaluate_constraints": "Enabled",
            "emit_metrics": "Enabled",
            "datatype_check_threshold": 0.1,
            "domain_content_threshold": 0.1,
            "distribution_constraints": {
                "perform_comparison": "Enabled",
                "comparison_threshold": float(comparison_threshold),
                "comparison_method": comparison_method,
                "categorical_comparison_threshold": 0.1,
                "categorical_drift_method": "LInfinity",
            },
        },
    }
    return Baseline(statistics, constraints)


@dataclass(frozen=True, eq=False)  # holds arrays, which have no single truth value to compare by
class FeatureBaseline:
    """One feature's stored statistics and constraint, with its CDF read back from the sketch."""

    name: str
    inferred_type: str
    num_present: int
    num_missing: int
    mean: float
    std_dev: float
    min: float
    max: float
    completeness: float
    sketch_values: np.ndarray
    sketch_weights: np.ndarray
    #: Window length in days -> calibrated comparison threshold (see ``monitoring.calibration``).
    window_thresholds: dict[int, float] = field(default_factory=dict)

    @cached_property
    def cumulative_weights(self) -> np.ndarray:
        """``cumulative_weights[i]`` = training values ``<= sketch_values[i - 1]`` (0 at ``i = 0``)."""
        return np.concatenate([[0.0], np.cumsum(self.sketch_weights)])

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """The baseline's empirical CDF at ``x``, as the sketch reconstructs it (right-continuous)."""
        idx = np.searchsorted(self.sketch_values, x, side="right")
        return self.cumulative_weights[idx] / self.num_present

    def quantile(self, q: np.ndarray) -> np.ndarray:
        """Smallest sketch value whose CDF reaches ``q``."""
        idx = np.searchsorted(self.cumulative_weights[1:], np.asarray(q) * self.num_present, side="left")
        return self.sketch_values[np.minimum(idx, self.sketch_values.size - 1)]


class Baseline:
    """A training baseline: Model Monitor's statistics and constraints documents.

    Parameters
    ----------
    statistics, constraints : mapping
        The two documents, as :func:`build_baseline` makes them or :meth:`read` loads them.
    """

    def __init__(self, statistics: Mapping[str, Any], constraints: Mapping[str, Any]) -> None:
        self.statistics = dict(statistics)
        self.constraints = dict(constraints)
        self.features = self._parse()

    def _parse(self) -> tuple[FeatureBaseline, ...]:
        try:
            stats = {f["name"]: f for f in self.statistics["features"]}
            cons = {f["name"]: f for f in self.constraints["features"]}
            dist = self.constraints["monitoring_config"]["distribution_constraints"]
            if dist["comparison_method"] not in COMPARISON_METHODS:
                raise BaselineError(f"comparison_method {dist['comparison_method']!r} is not Simple or Robust")
            if list(stats) != list(cons):
                raise BaselineError(
                    f"statistics features {list(stats)} differ from constraints features {list(cons)}; "
                    "the two files come from different baselines"
                )
            out = []
            for name, f in stats.items():
                num = f["numerical_statistics"]
                levels = num["distribution"]["kll"]["sketch"]["data"]
                values = np.concatenate([np.asarray(lv, dtype="float64") for lv in levels])
                weights = np.concatenate([np.full(len(lv), 2.0**i) for i, lv in enumerate(levels)])
                order = np.argsort(values, kind="stable")
                present = int(num["common"]["num_present"])
                if int(weights.sum()) != present:
                    raise BaselineError(f"feature {name!r}: sketch weights sum to {weights.sum():g}, not {present}")
                out.append(
                    FeatureBaseline(
                        name=name,
                        inferred_type=f["inferred_type"],
                        num_present=present,
                        num_missing=int(num["common"]["num_missing"]),
                        mean=float(num["mean"]),
                        std_dev=float(num["std_dev"]),
                        min=float(num["min"]),
                        max=float(num["max"]),
                        completeness=float(cons[name]["completeness"]),
                        sketch_values=values[order],
                        sketch_weights=weights[order],
                        window_thresholds={
                            int(days): float(value)
                            for days, value in cons[name]
                            .get("monitoringConfigOverrides", {})
                            .get("distribution_constraints", {})
                            .get("window_thresholds", {})
                            .items()
                        },
                    )
                )
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise BaselineError(f"baseline documents are not in Model Monitor's shape: missing or bad {exc}") from exc
        return tuple(out)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def monitoring_config(self) -> dict[str, Any]:
        return self.constraints["monitoring_config"]

    def feature(self, name: str) -> FeatureBaseline:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"feature {name!r} is not in the baseline; it has {self.names}")

    def write(self, folder: Path | str) -> tuple[Path, Path]:
        """Write ``statistics.json`` then ``constraints.json`` into ``folder``, each atomically."""
        folder = Path(folder)
        stats_path, cons_path = folder / STATISTICS_FILE, folder / CONSTRAINTS_FILE
        write_json_atomic(stats_path, self.statistics)
        write_json_atomic(cons_path, self.constraints)
        return stats_path, cons_path

    @classmethod
    def read(cls, folder: Path | str) -> Baseline:
        """Load the baseline stored in ``folder``; a missing or mismatched file raises :class:`BaselineError`."""
        folder = Path(folder)
        docs = []
        for name in (STATISTICS_FILE, CONSTRAINTS_FILE):
            try:
                docs.append(json.loads((folder / name).read_text()))
            except FileNotFoundError as exc:
                raise BaselineError(f"{folder / name} does not exist; build and write a baseline first") from exc
            except json.JSONDecodeError as exc:
                raise BaselineError(f"{folder / name} is not valid JSON: {exc}") from exc
        return cls(docs[0], docs[1])
