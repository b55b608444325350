"""The compiled forest: bit for bit xgboost's probabilities, and refused when it cannot be."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

import quant_engine.bridge.forest as forest_module
from quant_engine.bridge.forest import CompiledForest, NotCompilableError

from .conftest import FEATURES

N_FEATURES = len(FEATURES)


def train(*, max_depth: int = 3, rounds: int = 10, nan_share: float = 0.1, seed: int = 0,
          **params: object) -> xgb.Booster:
    """A booster on 400 seeded rows, a share of their cells NaN so trees learn both default directions."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(400, N_FEATURES)).astype(np.float32)
    label = (rows[:, 0] + rows[:, 1] * rows[:, 2] + rng.normal(size=len(rows)) > 0).astype(int)
    rows[rng.random(rows.shape) < nan_share] = np.nan
    return xgb.train({"objective": "binary:logistic", "max_depth": max_depth, "seed": seed, **params},
                     xgb.DMatrix(rows, label=label), rounds)


def query_rows(count: int, seed: int = 1) -> np.ndarray:
    """Random float32 rows, 5% of cells NaN, and one row of each extreme (±1e30, ±inf) per feature."""
    rng = np.random.default_rng(seed)
    rows = (2 * rng.normal(size=(count, N_FEATURES))).astype(np.float32)
    rows[rng.random(rows.shape) < 0.05] = np.nan
    extremes = np.repeat(np.array([[1e30], [-1e30], [np.inf], [-np.inf]], dtype=np.float32), N_FEATURES, axis=1)
    return np.concatenate([rows, extremes])


@pytest.mark.parametrize("params", [
    {"max_depth": 1, "rounds": 1},
    {"max_depth": 3, "rounds": 50, "eta": 0.1, "base_score": 0.3},
    {"max_depth": 6, "rounds": 50, "eta": 0.5, "scale_pos_weight": 3.0},
    {"max_depth": 10, "rounds": 20, "base_score": 0.8, "nan_share": 0.3},
    {"max_depth": 4, "rounds": 300, "eta": 0.05},
    {"max_depth": 3, "rounds": 5, "num_parallel_tree": 3, "subsample": 0.7, "colsample_bynode": 0.7},
    {"max_depth": 4, "rounds": 20, "nan_share": 0.0, "tree_method": "exact"},
], ids=lambda params: ",".join(f"{k}={v}" for k, v in params.items()))
def test_forest_equals_xgboost_bit_for_bit(params: dict[str, object]) -> None:
    booster = train(**params)
    forest = CompiledForest.compile(booster)
    assert forest.n_trees == booster.num_boosted_rounds() * params.get("num_parallel_tree", 1)
    assert forest.depth == params["max_depth"]
    rows = query_rows(500)
    random_rows = rows[:500]
    for batch in (rows, rows[:1], rows[-2:], random_rows[~np.isnan(random_rows).any(axis=1)]):
        assert np.array_equal(forest.predict_margin(batch), booster.inplace_predict(batch, predict_type="margin"))
        assert np.array_equal(forest.predict(batch), booster.inplace_predict(batch))
    # The batch scorer's DMatrix refuses infinities; on finite rows (±1e30 included) it agrees too.
    assert np.array_equal(forest.predict(rows[:-2]), booster.predict(xgb.DMatrix(rows[:-2])))


def test_margins_beyond_the_sigmoid_cap_match() -> None:
    """xgboost caps ``-margin`` at 88.7 before ``expf``: a margin of -500 gives 3e-39, not 0."""
    model = json.loads(train(max_depth=2, rounds=3).save_raw("json"))
    for tree in model["learner"]["gradient_booster"]["model"]["trees"]:
        leaves = zip(tree["left_children"], tree["split_conditions"], strict=True)
        tree["split_conditions"] = [value * 400 if child == -1 else value for child, value in leaves]
    booster = xgb.Booster()
    booster.load_model(bytearray(json.dumps(model).encode()))
    rows = query_rows(200)
    expected = booster.inplace_predict(rows)
    assert booster.inplace_predict(rows, predict_type="margin").min() < -88.7 and 0 < expected.min() < 1e-38
    assert np.array_equal(CompiledForest.compile(booster).predict(rows), expected)


@pytest.mark.parametrize(("params", "reason"), [
    ({"booster": "dart", "rate_drop": 0.2}, "booster 'dart' is not supported"),
    ({"objective": "binary:logitraw"}, "objective 'binary:logitraw' is not supported"),
    ({"objective": "reg:squarederror"}, "objective 'reg:squarederror' is not supported"),
])
def test_unsupported_models_are_refused_with_the_reason(params: dict[str, object], reason: str) -> None:
    with pytest.raises(NotCompilableError, match=reason):
        CompiledForest.compile(train(rounds=3, **params))


def test_categorical_splits_and_several_targets_are_refused() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=300), "kind": pd.Categorical(rng.integers(0, 4, size=300))})
    label = ((frame["kind"].cat.codes == 1) | (frame["x"] > 1)).astype(int)
    categorical = xgb.train({"objective": "binary:logistic", "max_depth": 3},
                            xgb.DMatrix(frame, label=label, enable_categorical=True), 3)
    with pytest.raises(NotCompilableError, match="categorical splits"):
        CompiledForest.compile(categorical)
    two_labels = np.stack([label, 1 - label], axis=1)
    multi_target = xgb.train({"objective": "binary:logistic", "max_depth": 3},
                             xgb.DMatrix(frame[["x"]].to_numpy(), label=two_labels), 3)
    with pytest.raises(NotCompilableError, match="2 targets"):
        CompiledForest.compile(multi_target)


def off_by_one_ulp(function: forest_module.Float32Function) -> forest_module.Float32Function:
    """``function`` with its float32 result one unit in the last place too high."""
    return lambda value: float(np.nextafter(np.float32(function(value)), np.float32(np.inf)))


@pytest.mark.parametrize("broken", ["expf", "logf"])
def test_self_check_refuses_a_forest_whose_arithmetic_is_off_by_one_ulp(broken: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    libm_function = forest_module._libm_function
    monkeypatch.setattr(forest_module, "_libm_function",
                        lambda name: off_by_one_ulp(libm_function(name)) if name == broken else libm_function(name))
    kind = "probability" if broken == "expf" else "margin"
    with pytest.raises(NotCompilableError, match=f"compiled {kind} differs from xgboost's on [0-9]+ of 1024 probe"):
        CompiledForest.compile(train())


@pytest.mark.parametrize("direction", [np.inf, -np.inf])
def test_self_check_catches_a_threshold_one_ulp_off(direction: float) -> None:
    booster = train()
    forest = CompiledForest.compile(booster)
    root = forest._roots[1, 0]  # the first tree's root: every row passes it
    forest._threshold[root] = np.nextafter(forest._threshold[root], np.float32(direction))
    with pytest.raises(NotCompilableError, match="compiled margin differs"):
        forest.verify(booster)


def test_self_check_catches_a_wrong_default_direction() -> None:
    booster = train(nan_share=0.3)
    forest = CompiledForest.compile(booster)
    root = forest._roots[1, 0]
    forest._default_right[root] = ~forest._default_right[root]
    with pytest.raises(NotCompilableError, match="compiled margin differs"):
        forest.verify(booster)


def test_probe_rows_hold_every_threshold_its_neighbours_and_nans() -> None:
    forest = CompiledForest.compile(train(max_depth=4, rounds=20))
    clean, with_nan = forest.probe_rows()
    assert not np.isnan(clean).any() and 0.05 < np.isnan(with_nan).mean() < 0.15
    splits = ~np.isnan(forest._threshold)
    for feature in range(N_FEATURES):
        thresholds = forest._threshold[splits & (forest._feature == feature)]
        for values in (thresholds, np.nextafter(thresholds, np.float32(np.inf)),
                       np.nextafter(thresholds, np.float32(-np.inf))):
            assert np.isin(values, clean[:, feature]).all() and np.isin(values, with_nan[:, feature]).all()


@pytest.mark.parametrize(("text", "expected"), [
    ("0.0022116026", np.float32(0.0022116026)),
    ("1.000000059604644775390625", np.float32(1.0)),  # exactly halfway: to even
    ("1.00000005960464477539062500001", np.nextafter(np.float32(1), np.float32(2))),  # via float64: 1.0
    ("1.00000005960464477539062499999", np.float32(1.0)),
    ("-1.00000005960464477539062500001", -np.nextafter(np.float32(1), np.float32(2))),
])
def test_decimals_are_rounded_to_float32_once(text: str, expected: np.float32) -> None:
    assert forest_module._float32_from_decimal([text])[0] == expected


def test_forest_checks_its_input() -> None:
    booster = train(rounds=2)
    forest = CompiledForest.compile(booster)
    with pytest.raises(ValueError, match=r"shape \(n, 10\)"):
        forest.predict(np.zeros((2, 3)))
    assert forest.predict(np.zeros((0, N_FEATURES))).shape == (0,)
    rows = np.random.default_rng(0).normal(size=(3, N_FEATURES))  # float64 in: rounded to float32 as xgboost does
    assert np.array_equal(forest.predict(rows), booster.inplace_predict(rows.astype(np.float32)))
