"""Feature drift against a stored baseline: distances vs scipy and hand sums, checks, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from quant_engine.monitoring.baseline import KLL_K, Baseline, build_baseline
from quant_engine.monitoring.feature_drift import (
    CHECK_TYPES,
    EmptyWindowError,
    check_drift,
    ks_allowance,
    psi,
)

SHIFTED = ["f0", "f1", "f2"]  # + 0.2 sigma
SCALED = ["f3", "f4"]  # x 1.5


def _panel(rng: np.random.Generator, n: int, drift: bool) -> pd.DataFrame:
    frame = pd.DataFrame(rng.normal(size=(n, 12)), columns=[f"f{i}" for i in range(12)])
    if drift:
        frame[SHIFTED] += 0.2
        frame[SCALED] *= 1.5
    return frame


@pytest.mark.parametrize("seed", range(10))
def test_drift_found_on_shifted_columns_only(seed: int, tmp_path) -> None:
    """Robust, threshold 0.05, n = m = 20,000.

    Drifted columns have population KS distances 0.080 (shift) and 0.097 (scale), allowance
    0.016. An unshifted column is flagged only if D > 0.05 + 0.016; by the two-sample DKW bound
    P(D > t) <= 2 exp(-2 t^2 n m / (n + m)) that is < 1e-37 per column (the sketch adds <= 2/k).
    """
    rng = np.random.default_rng(seed)
    build_baseline(_panel(rng, 20_000, False), comparison_threshold=0.05).write(tmp_path)
    report = check_drift(_panel(rng, 20_000, True), Baseline.read(tmp_path))
    assert report.drifted_features == SHIFTED + SCALED
    assert {v.feature_name for v in report.violations} == set(SHIFTED + SCALED)
    assert {v.constraint_check_type for v in report.violations} == {"baseline_drift_check"}


def test_robust_discounts_sampling_noise_that_simple_counts() -> None:
    rng = np.random.default_rng(7)
    baseline = build_baseline(pd.DataFrame({"x": rng.normal(size=50_000)}), comparison_threshold=0.05)
    simple_flags = robust_flags = 0
    for _ in range(20):  # 100 rows from the same distribution: D is mostly above 0.05 by noise alone
        window = pd.DataFrame({"x": rng.normal(size=100)})
        simple = check_drift(window, baseline, comparison_method="Simple").features["x"]
        robust = check_drift(window, baseline, comparison_method="Robust").features["x"]
        assert robust.robust_distance == pytest.approx(max(0.0, simple.distance - ks_allowance(50_000, 100)))
        simple_flags += simple.drifted
        robust_flags += robust.drifted
    assert simple_flags >= 15 and robust_flags == 0


def test_ks_allowance_formula() -> None:
    assert ks_allowance(100, 100, 0.05) == pytest.approx(1.3581 * math.sqrt(0.02), rel=1e-4)
    assert ks_allowance(10**5, 10**5) == pytest.approx(1.6276 * math.sqrt(2e-5), rel=1e-4)
    with pytest.raises(ValueError, match="alpha=1.5"):
        ks_allowance(10, 10, 1.5)
    with pytest.raises(ValueError, match="n=0"):
        ks_allowance(0, 10)


def test_distance_and_wasserstein_equal_scipy_when_sketch_is_exact() -> None:
    rng = np.random.default_rng(3)
    train, current = rng.standard_t(5, size=KLL_K), rng.normal(0.3, 1.2, size=3000)
    drift = check_drift(pd.DataFrame({"x": current}), build_baseline(pd.DataFrame({"x": train}))).features["x"]
    assert drift.distance == pytest.approx(stats.ks_2samp(train, current).statistic, abs=1e-12)
    expected_w = stats.wasserstein_distance(train, current) / train.std(ddof=0)
    assert drift.wasserstein_sigma == pytest.approx(expected_w, rel=1e-9)


def test_large_baseline_matches_scipy_within_sketch_error() -> None:
    rng = np.random.default_rng(4)
    train, current = rng.normal(size=100_000), rng.normal(0.1, size=50_000)
    baseline = build_baseline(pd.DataFrame({"x": train}))
    drift = check_drift(pd.DataFrame({"x": current}), baseline).features["x"]
    assert abs(drift.distance - stats.ks_2samp(train, current).statistic) <= 2.0 / KLL_K
    feature = baseline.feature("x")
    weighted = stats.wasserstein_distance(feature.sketch_values, current, u_weights=feature.sketch_weights)
    assert drift.wasserstein_sigma == pytest.approx(weighted / feature.std_dev, rel=1e-9)


def test_psi_by_hand() -> None:
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * math.log(3.0))
    assert psi([0.5, 0.5, 0.0], [0.5, 0.5, 0.0]) == 0.0
    rng = np.random.default_rng(5)
    train, current = rng.normal(size=2000), rng.normal(0.5, size=1500)
    drift = check_drift(pd.DataFrame({"x": current}), build_baseline(pd.DataFrame({"x": train}))).features["x"]
    edges = np.quantile(train, np.arange(1, 10) / 10, method="inverted_cdf")
    e = np.diff(np.concatenate([[0], np.searchsorted(np.sort(train), edges, side="right"), [2000]])) / 2000
    a = np.diff(np.concatenate([[0], np.searchsorted(np.sort(current), edges, side="right"), [1500]])) / 1500
    by_hand = sum((ai - ei) * math.log(ai / ei) for ai, ei in zip(a, e, strict=True))
    assert drift.psi == pytest.approx(by_hand, rel=1e-12)


def test_psi_and_wasserstein_thresholds_add_drift_violations() -> None:
    rng = np.random.default_rng(6)
    baseline = build_baseline(pd.DataFrame({"x": rng.normal(size=5000)}), comparison_threshold=0.5)
    window = pd.DataFrame({"x": rng.normal(0.3, size=5000)})
    assert check_drift(window, baseline).violations == []
    report = check_drift(window, baseline, psi_threshold=0.05, wasserstein_threshold=0.1)
    (violation,) = report.violations
    assert violation.constraint_check_type == "baseline_drift_check"
    assert "PSI" in violation.description and "Wasserstein" in violation.description


def test_schema_differences_are_violations() -> None:
    base = build_baseline(pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [1.0, 2.5, 3.0]}))
    window = pd.DataFrame({"ticker": ["X"] * 3, "event_time": [0, 1, 2], "a": [1.0, 2.0, 3.0], "c": [0.0] * 3})
    report = check_drift(window, base)
    kinds = {(v.feature_name, v.constraint_check_type) for v in report.violations}
    assert kinds == {("b", "missing_column_check"), ("c", "extra_column_check")}
    assert list(report.features) == ["a"]


def test_type_checks() -> None:
    base = build_baseline(pd.DataFrame({"n": [1.0, 2.0, 3.0, 4.0], "s": [0.5, 1.5, 2.5, 3.5]}))
    report = check_drift(pd.DataFrame({"n": [1.5, 2.5, 3.0, 4.0], "s": ["a", "b", "c", "d"]}), base)
    assert {(v.feature_name, v.constraint_check_type) for v in report.violations} >= {
        ("n", "data_type_check"),
        ("s", "data_type_check"),
    }
    ok = check_drift(pd.DataFrame({"n": [1.0, 2.0, 3.0, 4.0], "s": [0.5, 1.5, 2.5, 3.5]}), base)
    assert ok.violations == []


def test_completeness_all_nan_and_infinite_window_values() -> None:
    base = build_baseline(pd.DataFrame({"x": np.arange(100.0), "y": np.arange(100.0) / 3}))
    window = pd.DataFrame({"x": [np.nan] * 10, "y": [np.inf, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]})
    report = check_drift(window, base)
    checks = {(v.feature_name, v.constraint_check_type) for v in report.violations}
    assert ("x", "completeness_check") in checks and ("y", "completeness_check") in checks
    assert report.features["x"].distance is None and report.features["x"].drifted is False
    assert report.features["y"].completeness == pytest.approx(0.9)
    y_base = build_baseline(pd.DataFrame({"y": np.arange(100.0) / 3}))
    lenient = check_drift(window[["y"]], y_base, completeness_tolerance=0.2)
    assert all(v.constraint_check_type != "completeness_check" for v in lenient.violations)


def test_constant_columns_do_not_crash() -> None:
    base = build_baseline(pd.DataFrame({"c": np.full(500, 2.0), "x": np.linspace(0, 1, 500)}))
    same = check_drift(pd.DataFrame({"c": np.full(50, 2.0), "x": np.full(50, 0.5)}), base)
    assert same.features["c"].distance == 0.0 and same.features["c"].wasserstein_sigma == 0.0
    assert same.features["x"].drifted  # a constant window is far from a uniform baseline
    moved = check_drift(pd.DataFrame({"c": np.full(50, 3.0), "x": np.linspace(0, 1, 50)}), base)
    assert moved.features["c"].distance == 1.0 and math.isinf(moved.features["c"].wasserstein_sigma)
    assert moved.drifted_features == ["c"]


def test_empty_window_is_a_clear_error() -> None:
    base = build_baseline(pd.DataFrame({"x": [1.0, 2.0]}))
    with pytest.raises(EmptyWindowError, match="no rows"):
        check_drift(pd.DataFrame({"x": []}, dtype="float64"), base)
    with pytest.raises(ValueError, match=r"window columns \['x'\] appear more than once"):
        check_drift(pd.DataFrame([[1.0, 2.0]], columns=["x", "x"]), base)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"comparison_threshold": 1.5}, "comparison_threshold=1.5"),
        ({"comparison_method": "Exact"}, "comparison_method='Exact'"),
        ({"alpha": 0.0}, "alpha=0.0"),
        ({"psi_threshold": -1}, "psi_threshold=-1"),
        ({"wasserstein_threshold": "x"}, "wasserstein_threshold='x'"),
        ({"completeness_tolerance": 2.0}, "completeness_tolerance=2.0"),
    ],
)
def test_bad_arguments_name_value_and_rule(kwargs: dict, message: str) -> None:
    base = build_baseline(pd.DataFrame({"x": [1.0, 2.0]}))
    with pytest.raises(ValueError, match=message):
        check_drift(pd.DataFrame({"x": [1.0]}), base, **kwargs)
    with pytest.raises(TypeError, match="Baseline"):
        check_drift(pd.DataFrame({"x": [1.0]}), {"x": 1})  # type: ignore[arg-type]


def test_disabled_comparison_and_evaluation() -> None:
    base = build_baseline(pd.DataFrame({"x": np.arange(100.0)}))
    window = pd.DataFrame({"x": np.arange(100.0) + 1000, "extra": 1.0})
    base.constraints["monitoring_config"]["distribution_constraints"]["perform_comparison"] = "Disabled"
    assert [v.constraint_check_type for v in check_drift(window, base).violations] == ["extra_column_check"]
    base.constraints["monitoring_config"]["evaluate_constraints"] = "Disabled"
    assert check_drift(window, base).violations == []


def test_written_violations_are_in_model_monitor_shape(tmp_path) -> None:
    base = build_baseline(pd.DataFrame({"x": np.arange(100.0), "c": np.full(100, 1.0), "gone": 1.0}))
    window = pd.DataFrame({"x": np.arange(100.0) + 50, "c": np.full(100, 2.0), "new": 1.0})
    report = check_drift(window, base)
    violations_path, figures_path = report.write(tmp_path)
    doc = json.loads(violations_path.read_text())
    assert set(doc) == {"violations"}
    for violation in doc["violations"]:
        assert set(violation) == {"feature_name", "constraint_check_type", "description"}
        assert violation["constraint_check_type"] in CHECK_TYPES and isinstance(violation["description"], str)
    assert {v["constraint_check_type"] for v in doc["violations"]} == {
        "baseline_drift_check",
        "missing_column_check",
        "extra_column_check",
    }
    figures = json.loads(figures_path.read_text())
    by_name = {f["name"]: f for f in figures["features"]}
    assert by_name["c"]["wasserstein_sigma"] == "inf" and by_name["x"]["drifted"] is True
