"""Baselines: Model Monitor's statistics/constraints shapes, the KLL sketch, atomic files, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from quant_engine.monitoring.baseline import (
    CONSTRAINTS_FILE,
    KLL_K,
    STATISTICS_FILE,
    Baseline,
    BaselineError,
    build_baseline,
)


def _frame(n: int = 5000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "ticker": ["SYN00"] * n,
            "ret": rng.normal(0.0, 0.02, n),
            "volume": rng.integers(0, 1000, n).astype("float64"),
            "count": rng.integers(1, 5, n),
        }
    )
    frame.loc[:9, "ret"] = np.nan
    return frame


def test_statistics_shape_matches_model_monitor() -> None:
    stats = build_baseline(_frame()).statistics
    assert set(stats) == {"version", "dataset", "features"}
    assert stats["version"] == 0 and stats["dataset"] == {"item_count": 5000}
    assert [f["name"] for f in stats["features"]] == ["ret", "volume", "count"]
    for feature in stats["features"]:
        assert set(feature) == {"name", "inferred_type", "numerical_statistics"}
        num = feature["numerical_statistics"]
        assert set(num) == {"common", "mean", "sum", "std_dev", "min", "max", "distribution"}
        assert set(num["common"]) == {"num_present", "num_missing"}
        assert all(isinstance(num["common"][k], int) for k in num["common"])
        assert all(isinstance(num[k], float) for k in ("mean", "sum", "std_dev", "min", "max"))
        kll = num["distribution"]["kll"]
        assert set(kll) == {"buckets", "sketch"}
        for bucket in kll["buckets"]:
            assert set(bucket) == {"lower_bound", "upper_bound", "count"}
        assert set(kll["sketch"]) == {"parameters", "data"}
        assert kll["sketch"]["parameters"] == {"c": 0.64, "k": KLL_K}
        assert all(isinstance(level, list) for level in kll["sketch"]["data"])


def test_constraints_shape_matches_model_monitor() -> None:
    cons = build_baseline(_frame(), comparison_method="Simple", comparison_threshold=0.05).constraints
    assert set(cons) == {"version", "features", "monitoring_config"}
    for feature in cons["features"]:
        assert set(feature) == {"name", "inferred_type", "completeness", "num_constraints"}
        assert isinstance(feature["completeness"], float)
        assert isinstance(feature["num_constraints"]["is_non_negative"], bool)
    config = cons["monitoring_config"]
    assert config["evaluate_constraints"] == "Enabled" and config["emit_metrics"] == "Enabled"
    assert config["datatype_check_threshold"] == 0.1 and config["domain_content_threshold"] == 0.1
    dist = config["distribution_constraints"]
    assert dist["perform_comparison"] == "Enabled"
    assert dist["comparison_threshold"] == 0.05 and dist["comparison_method"] == "Simple"


def test_values_types_and_completeness() -> None:
    frame = _frame()
    baseline = build_baseline(frame)
    ret = baseline.statistics["features"][0]["numerical_statistics"]
    present = frame["ret"].dropna()
    assert ret["common"] == {"num_present": 4990, "num_missing": 10}
    assert ret["mean"] == pytest.approx(present.mean()) and ret["sum"] == pytest.approx(present.sum())
    assert ret["std_dev"] == pytest.approx(present.std(ddof=0))
    assert (ret["min"], ret["max"]) == (present.min(), present.max())
    by_name = {f["name"]: f for f in baseline.constraints["features"]}
    assert by_name["ret"]["completeness"] == pytest.approx(0.998)
    assert [by_name[n]["inferred_type"] for n in ("ret", "volume", "count")] == ["Fractional", "Integral", "Integral"]
    assert by_name["ret"]["num_constraints"]["is_non_negative"] is False
    assert by_name["volume"]["num_constraints"]["is_non_negative"] is True


def test_buckets_cover_all_values() -> None:
    baseline = build_baseline(pd.DataFrame({"x": np.linspace(0, 1, 101), "c": np.full(101, 3.0)}))
    x_buckets = baseline.statistics["features"][0]["numerical_statistics"]["distribution"]["kll"]["buckets"]
    assert len(x_buckets) == 10 and sum(b["count"] for b in x_buckets) == 101
    assert x_buckets[0]["lower_bound"] == 0.0 and x_buckets[-1]["upper_bound"] == 1.0
    c_buckets = baseline.statistics["features"][1]["numerical_statistics"]["distribution"]["kll"]["buckets"]
    assert c_buckets == [{"lower_bound": 3.0, "upper_bound": 3.0, "count": 101.0}]


def test_sketch_is_exact_for_small_columns() -> None:
    values = np.random.default_rng(1).normal(size=KLL_K)
    feature = build_baseline(pd.DataFrame({"x": values})).feature("x")
    np.testing.assert_array_equal(feature.sketch_values, np.sort(values))
    assert set(feature.sketch_weights) == {1.0}


@pytest.mark.parametrize("n", [2 * KLL_K + 1, 100_003])
def test_sketch_weights_sum_to_n_and_cdf_error_is_bounded(n: int) -> None:
    values = np.random.default_rng(2).standard_t(4, size=n)
    feature = build_baseline(pd.DataFrame({"x": values})).feature("x")
    assert feature.sketch_weights.sum() == n
    grid = np.sort(values)
    exact = np.searchsorted(grid, grid, side="right") / n
    assert np.max(np.abs(feature.cdf(grid) - exact)) <= 2.0 / KLL_K


def test_write_read_roundtrip_is_atomic_and_deterministic(tmp_path) -> None:
    frame = _frame()
    stats_path, cons_path = build_baseline(frame).write(tmp_path / "model")
    assert (stats_path.name, cons_path.name) == (STATISTICS_FILE, CONSTRAINTS_FILE)
    first = stats_path.read_bytes()
    build_baseline(frame).write(tmp_path / "model")
    assert stats_path.read_bytes() == first
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [CONSTRAINTS_FILE, STATISTICS_FILE]
    loaded = Baseline.read(tmp_path / "model")
    assert loaded.statistics == json.loads(first) and loaded.names == ["ret", "volume", "count"]


def test_read_refuses_missing_mismatched_and_malformed_files(tmp_path) -> None:
    with pytest.raises(BaselineError, match="does not exist"):
        Baseline.read(tmp_path)
    build_baseline(_frame()).write(tmp_path / "a")
    build_baseline(_frame()[["ret"]]).write(tmp_path / "b")
    (tmp_path / "a" / CONSTRAINTS_FILE).write_bytes((tmp_path / "b" / CONSTRAINTS_FILE).read_bytes())
    with pytest.raises(BaselineError, match="different baselines"):
        Baseline.read(tmp_path / "a")
    (tmp_path / "b" / STATISTICS_FILE).write_text("{not json")
    with pytest.raises(BaselineError, match="not valid JSON"):
        Baseline.read(tmp_path / "b")
    with pytest.raises(BaselineError, match="Model Monitor's shape"):
        Baseline({"features": [{"name": "x"}]}, {"features": [{"name": "x"}], "monitoring_config": {}})


@pytest.mark.parametrize(
    ("frame", "kwargs", "message"),
    [
        (pd.DataFrame({"x": []}, dtype="float64"), {}, "no rows"),
        (pd.DataFrame({"x": [np.nan, np.nan]}), {}, "all NaN"),
        (pd.DataFrame({"x": [1.0, np.inf]}), {}, "infinite"),
        (pd.DataFrame({"x": ["a", "b"]}), {}, "numeric features only"),
        (pd.DataFrame({"ticker": ["A"], "event_time": [0]}), {}, "no feature columns"),
        (pd.DataFrame({"x": [1.0]}), {"features": ["y"]}, "not columns"),
        (pd.DataFrame({"x": [1.0]}), {"comparison_threshold": 0.0}, "comparison_threshold=0.0"),
        (pd.DataFrame({"x": [1.0]}), {"comparison_method": "Fancy"}, "comparison_method='Fancy'"),
        (pd.DataFrame({"x": [1.0]}), {"sketch_k": 2}, "sketch_k=2"),
        (pd.DataFrame([[1.0, 2.0]], columns=["x", "x"]), {}, "more than once"),
    ],
)
def test_bad_training_input_is_a_clear_error(frame: pd.DataFrame, kwargs: dict, message: str) -> None:
    with pytest.raises(BaselineError, match=message):
        build_baseline(frame, **kwargs)


def test_not_a_frame_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="DataFrame"):
        build_baseline({"x": [1.0]})  # type: ignore[arg-type]
