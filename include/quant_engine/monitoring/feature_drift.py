"""Feature drift: a recent window against a stored baseline, with Model Monitor's violations.

Everything is computed from the baseline's KLL sketch (``F_b``, see
:mod:`quant_engine.monitoring.baseline`) and the window's sorted values (``F_c``); the training
data is never reloaded. Per numeric feature, with ``n`` baseline and ``m`` window values present:

* **distance** (Model Monitor's ``baseline_drift_check``): the largest CDF gap
  ``D = sup_x |F_b(x) - F_c(x)|`` (the two-sample Kolmogorov-Smirnov statistic).
  ``Simple`` compares ``D`` with ``comparison_threshold``. ``Robust`` compares
  ``max(0, D - c(alpha) * sqrt((n + m) / (n * m)))`` instead, ``c(alpha) = sqrt(-ln(alpha / 2) / 2)``
  (``alpha = 0.01``: ``c = 1.628``), the KS critical value: the part of ``D`` that sampling noise
  alone explains at level ``alpha`` is not counted, so small windows do not raise false alarms.
* **PSI**: ``sum_i (a_i - e_i) * ln(a_i / e_i)`` over the baseline's deciles (bins ``(q_{i-1}, q_i]``
  from the sketch, outer bins open), ``e``/``a`` the baseline/window shares, each floored at
  ``1e-4`` so an empty bin gives a large finite value instead of infinity.
* **Wasserstein / sigma**: ``W1 = integral |F_b - F_c| dx`` divided by the baseline's ``std_dev``
  (Evidently's "normed" Wasserstein). A constant baseline (``std_dev = 0``) gives 0 when the window
  matches it and infinity otherwise.

Checks and their violations (``constraint_violations.json``):
``missing_column_check`` (a baseline feature absent from the window), ``extra_column_check`` (a
window column the baseline lacks), ``data_type_check`` (a non-numeric column, or an ``Integral``
feature whose non-integral share exceeds ``datatype_check_threshold``), ``completeness_check``
(window completeness below the baseline's by more than ``completeness_tolerance``; infinite values
count as missing) and ``baseline_drift_check``. A feature with no values in the window gets a
completeness violation and no distances. PSI and Wasserstein raise a drift violation only when their
optional thresholds are given. An empty window raises :class:`EmptyWindowError`. Thresholds can be
calibrated per feature and window length on the training data (:mod:`quant_engine.monitoring.calibration`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from quant_engine.monitoring.baseline import COMPARISON_METHODS, IDENTIFIER_COLUMNS, Baseline, FeatureBaseline
from quant_engine.storage.atomic import write_json_atomic
from quant_engine.validation import real_number

__all__ = [
    "CHECK_TYPES",
    "DriftReport",
    "EmptyWindowError",
    "FeatureDrift",
    "Violation",
    "check_drift",
    "comparison_distance",
    "ks_allowance",
    "psi",
]

VIOLATIONS_FILE = "constraint_violations.json"
DRIFT_FILE = "feature_drift.json"
CHECK_TYPES: tuple[str, ...] = (
    "baseline_drift_check",
    "completeness_check",
    "missing_column_check",
    "extra_column_check",
    "data_type_check",
)
#: Floor on a PSI bin's share, so an empty bin adds a large but finite term.
PSI_EPSILON = 1e-4
PSI_BINS = 10
#: The bars of a window of ``L`` calendar days span ``L - 4`` days or more (a weekend and a holiday
#: at its ends), so a window counts as covering a calibrated length that much longer than its span.
_SPAN_SLACK_DAYS = 4


class EmptyWindowError(ValueError):
    """The window to check has no rows, so there is nothing to compare with the baseline."""


@dataclass(frozen=True)
class Violation:
    """One entry of ``constraint_violations.json``."""

    feature_name: str
    constraint_check_type: str
    description: str


@dataclass(frozen=True)
class FeatureDrift:
    """Drift figures of one feature; distances are None when the window has no values for it."""

    name: str
    num_present: int
    completeness: float
    distance: float | None
    robust_distance: float | None
    psi: float | None
    wasserstein_sigma: float | None
    drifted: bool
    threshold: float | None = None  # what the comparison distance was judged against


@dataclass(frozen=True)
class DriftReport:
    """The result of :func:`check_drift`."""

    item_count: int
    comparison_method: str
    comparison_threshold: float
    emit_metrics: bool
    features: dict[str, FeatureDrift]
    violations: list[Violation]
    #: The calibrated window length whose per-feature thresholds were used; None: one threshold for all.
    calibrated_window_days: int | None = None

    @property
    def drifted_features(self) -> list[str]:
        """Features with a ``baseline_drift_check`` violation, in baseline order."""
        return [name for name, f in self.features.items() if f.drifted]

    @property
    def comparison_distances(self) -> dict[str, float]:
        """The distance each feature was judged by (Robust or Simple), for metrics and alarms."""
        key = "robust_distance" if self.comparison_method == "Robust" else "distance"
        return {n: getattr(f, key) for n, f in self.features.items() if getattr(f, key) is not None}

    @property
    def thresholds(self) -> dict[str, float]:
        """The threshold each feature's comparison distance was judged against."""
        return {
            n: f.threshold if f.threshold is not None else self.comparison_threshold for n, f in self.features.items()
        }

    def violations_document(self) -> dict[str, Any]:
        """``constraint_violations.json`` in Model Monitor's shape."""
        return {"violations": [asdict(v) for v in self.violations]}

    def write(self, folder: Path | str) -> tuple[Path, Path]:
        """Write ``constraint_violations.json`` and ``feature_drift.json`` (per-feature figures) atomically."""
        folder = Path(folder)
        figures = {
            "item_count": self.item_count,
            "comparison_method": self.comparison_method,
            "comparison_threshold": self.comparison_threshold,
            "calibrated_window_days": self.calibrated_window_days,
            "features": [{k: _json_number(v) for k, v in asdict(f).items()} for f in self.features.values()],
        }
        write_json_atomic(folder / VIOLATIONS_FILE, self.violations_document())
        write_json_atomic(folder / DRIFT_FILE, figures)
        return folder / VIOLATIONS_FILE, folder / DRIFT_FILE


def _json_number(value: Any) -> Any:
    """Infinity as the string ``"inf"``: strict JSON has no infinity."""
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def ks_allowance(n: int, m: int, alpha: float = 0.01) -> float:
    """KS critical value ``c(alpha) * sqrt((n + m) / (n * m))``, ``c(alpha) = sqrt(-ln(alpha / 2) / 2)``.

    The CDF gap two samples of sizes ``n`` and ``m`` from one distribution exceed with probability
    about ``alpha`` (asymptotically).
    """
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha={alpha!r} must be in (0, 1)")
    if n < 1 or m < 1:
        raise ValueError(f"sample sizes n={n}, m={m} must both be >= 1")
    return math.sqrt(-math.log(alpha / 2.0) / 2.0) * math.sqrt((n + m) / (n * m))


def psi(expected: np.ndarray, actual: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of two share vectors over the same bins (each floored at ``epsilon``)."""
    e = np.maximum(np.asarray(expected, dtype="float64"), epsilon)
    a = np.maximum(np.asarray(actual, dtype="float64"), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def _cdf_gap(base: FeatureBaseline, current_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The merged grid of both samples and ``|F_b - F_c|`` on it."""
    grid = np.concatenate([base.sketch_values, current_sorted])
    grid.sort(kind="stable")
    f_c = np.searchsorted(current_sorted, grid, side="right") / current_sorted.size
    return grid, np.abs(base.cdf(grid) - f_c)


def comparison_distance(base: FeatureBaseline, current_sorted: np.ndarray, method: str, alpha: float = 0.01) -> float:
    """The distance ``baseline_drift_check`` compares with its threshold: KS, less the allowance if Robust."""
    distance = float(_cdf_gap(base, current_sorted)[1].max())
    if method == "Robust":
        return max(0.0, distance - ks_allowance(base.num_present, current_sorted.size, alpha))
    return distance


def _distances(base: FeatureBaseline, current_sorted: np.ndarray) -> tuple[float, float, float]:
    """(KS distance, PSI, W1 / sigma) between the sketch's CDF and the window's sorted values."""
    m = current_sorted.size
    grid, gap = _cdf_gap(base, current_sorted)
    distance = float(gap.max())
    w1 = float(np.sum(gap[:-1] * np.diff(grid)))
    if base.std_dev > 0:
        w_sigma = w1 / base.std_dev
    else:
        w_sigma = 0.0 if w1 == 0.0 else math.inf
    edges = np.unique(base.quantile(np.arange(1, PSI_BINS) / PSI_BINS))
    cdf_b = np.concatenate([[0.0], base.cdf(edges), [1.0]])
    cdf_c = np.concatenate([[0.0], np.searchsorted(current_sorted, edges, side="right") / m, [1.0]])
    return distance, psi(np.diff(cdf_b), np.diff(cdf_c)), w_sigma


def check_drift(
    window: pd.DataFrame,
    baseline: Baseline,
    *,
    comparison_threshold: float | None = None,
    comparison_method: Literal["Simple", "Robust"] | None = None,
    alpha: float = 0.01,
    psi_threshold: float | None = None,
    wasserstein_threshold: float | None = None,
    completeness_tolerance: float = 0.0,
) -> DriftReport:
    """Compare a recent window of features with a stored baseline.

    Parameters
    ----------
    window : DataFrame
        Recent feature rows; ``ticker`` and ``event_time`` are skipped.
    baseline : Baseline
        From :func:`~quant_engine.monitoring.baseline.build_baseline` or ``Baseline.read``.
    comparison_threshold : float, optional
        One threshold for every feature. Default: when the baseline was calibrated
        (:mod:`quant_engine.monitoring.calibration`) and ``window`` has ``event_time``, each feature's
        threshold for the longest calibrated window length the window's span covers; otherwise the
        baseline's ``comparison_threshold`` (Model Monitor's default 0.1).
    comparison_method : {"Simple", "Robust"}, optional
        Overrides the baseline's ``comparison_method``.
    alpha : float, default 0.01
        Level of the KS allowance the Robust method subtracts.
    psi_threshold, wasserstein_threshold : float, optional
        When given, PSI or W1/sigma above them is also a ``baseline_drift_check`` violation
        (common choices: PSI 0.2, W1/sigma 0.1). Default: reported only.
    completeness_tolerance : float, default 0.0
        How far window completeness may fall below the baseline's (Model Monitor: not at all).

    Returns
    -------
    DriftReport

    Raises
    ------
    EmptyWindowError
        When ``window`` has no rows.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from quant_engine.monitoring.baseline import build_baseline
    >>> rng = np.random.default_rng(0)
    >>> base = build_baseline(pd.DataFrame({"x": rng.normal(size=5000)}))
    >>> check_drift(pd.DataFrame({"x": rng.normal(1.0, size=5000)}), base).drifted_features
    ['x']
    """
    if not isinstance(window, pd.DataFrame):
        raise TypeError(f"window must be a pandas DataFrame, got {type(window).__name__}")
    if not isinstance(baseline, Baseline):
        raise TypeError(f"baseline must be a Baseline, got {type(baseline).__name__}")
    if len(window) == 0:
        raise EmptyWindowError("the window has no rows; there is nothing to compare with the baseline")
    duplicated = sorted({str(c) for c in window.columns[window.columns.duplicated()]})
    if duplicated:
        raise ValueError(f"window columns {duplicated} appear more than once; feature names must be unique")
    config = baseline.monitoring_config
    dist_cfg = config["distribution_constraints"]
    threshold = float(dist_cfg["comparison_threshold"]) if comparison_threshold is None else comparison_threshold
    method = dist_cfg["comparison_method"] if comparison_method is None else comparison_method
    if not (isinstance(threshold, (int, float)) and 0.0 < threshold <= 1.0):
        raise ValueError(f"comparison_threshold={threshold!r} must be in (0, 1], a CDF distance")
    if method not in COMPARISON_METHODS:
        raise ValueError(f"comparison_method={method!r} must be one of {', '.join(COMPARISON_METHODS)}")
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha={alpha!r} must be in (0, 1)")
    for name, value in (("psi_threshold", psi_threshold), ("wasserstein_threshold", wasserstein_threshold)):
        if value is not None:
            real_number(value, name, minimum=0, above=True)
    if not (0.0 <= completeness_tolerance <= 1.0):
        raise ValueError(f"completeness_tolerance={completeness_tolerance!r} must be in [0, 1]")

    calibrated_days = None
    if comparison_threshold is None and method == dist_cfg["comparison_method"] and "event_time" in window.columns:
        calibrated_days = _calibrated_window(baseline, window["event_time"])

    evaluate = config.get("evaluate_constraints", "Enabled") == "Enabled"
    compare = dist_cfg.get("perform_comparison", "Enabled") == "Enabled"
    type_threshold = float(config.get("datatype_check_threshold", 0.1))
    rows = len(window)
    violations: list[Violation] = []
    features: dict[str, FeatureDrift] = {}
    window_columns = [str(c) for c in window.columns if c not in IDENTIFIER_COLUMNS]

    for base in baseline.features:
        if base.name not in window.columns:
            violations.append(
                Violation(
                    base.name,
                    "missing_column_check",
                    f"Column {base.name} is in the baseline but missing from the data",
                )
            )
            continue
        column = window[base.name]
        if not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)):
            violations.append(
                Violation(
                    base.name,
                    "data_type_check",
                    f"Data type match requirement is not met. Expected data type: {base.inferred_type}, "
                    f"observed dtype: {column.dtype}",
                )
            )
            continue
        values = column.to_numpy(dtype="float64", na_value=np.nan)
        present = values[np.isfinite(values)]
        completeness = present.size / rows
        if completeness < base.completeness - completeness_tolerance:
            violations.append(
                Violation(
                    base.name,
                    "completeness_check",
                    f"Data completeness requirement is not met. Expected: {base.completeness:.2%}, "
                    f"observed: {completeness:.2%}",
                )
            )
        if base.inferred_type == "Integral" and present.size:
            off_type = float(np.mean(present != np.round(present)))
            if off_type > type_threshold:
                violations.append(
                    Violation(
                        base.name,
                        "data_type_check",
                        f"Data type match requirement is not met. Expected data type: Integral, "
                        f"expected match: {1 - type_threshold:.0%}; "
                        f"observed: only {1 - off_type:.1%} of data is Integral",
                    )
                )
        limit = base.window_thresholds.get(calibrated_days, threshold) if calibrated_days else threshold
        if present.size == 0:
            features[base.name] = FeatureDrift(base.name, 0, 0.0, None, None, None, None, False, limit)
            continue
        present.sort()
        distance, psi_value, w_sigma = _distances(base, present)
        robust = max(0.0, distance - ks_allowance(base.num_present, present.size, alpha))
        judged = robust if method == "Robust" else distance
        reasons = []
        if judged > limit:
            reasons.append(f"Baseline drift distance: {judged:.4g} exceeds threshold: {limit:g}")
        if psi_threshold is not None and psi_value > psi_threshold:
            reasons.append(f"PSI: {psi_value:.4g} exceeds threshold: {psi_threshold:g}")
        if wasserstein_threshold is not None and w_sigma > wasserstein_threshold:
            reasons.append(f"Wasserstein/sigma: {w_sigma:.4g} exceeds threshold: {wasserstein_threshold:g}")
        drifted = evaluate and compare and bool(reasons)
        if drifted:
            violations.append(Violation(base.name, "baseline_drift_check", "; ".join(reasons)))
        features[base.name] = FeatureDrift(
            base.name, int(present.size), completeness, distance, robust, psi_value, w_sigma, drifted, limit
        )

    known = set(baseline.names)
    for name in window_columns:
        if name not in known:
            violations.append(
                Violation(name, "extra_column_check", f"Column {name} is in the data but not in the baseline")
            )
    return DriftReport(
        item_count=rows,
        comparison_method=method,
        comparison_threshold=float(threshold),
        emit_metrics=config.get("emit_metrics", "Enabled") == "Enabled",
        features=features,
        violations=violations if evaluate else [],
        calibrated_window_days=calibrated_days,
    )


def _calibrated_window(baseline: Baseline, event_time: pd.Series) -> int | None:
    """The longest calibrated window length the window's time span covers (the shortest if none is).

    None when the baseline carries no calibration or the window has no times.
    """
    lengths = sorted({days for f in baseline.features for days in f.window_thresholds})
    times = pd.to_datetime(event_time, utc=True).dropna()
    if not lengths or times.empty:
        return None
    span_days = (times.max() - times.min()) / pd.Timedelta(days=1)
    covered = [days for days in lengths if days <= span_days + _SPAN_SLACK_DAYS]
    return covered[-1] if covered else lengths[0]
