"""The compiled forest: bit for bit xgboost's probabilities, refused when it cannot be, and served by the champion."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

import quant_engine.bridge.forest as forest_module
from quant_engine.backends import make_model_registry
from quant_engine.bridge.forest import CompiledForest, NotCompilableError
from quant_engine.bridge.inference import LocalChampionModel
from quant_engine.monitoring.predictions import predict_proba
from quant_engine.training.registry import ModelMetadata

from .conftest import FEATURES

N_FEATURES = len(FEATURES)


def train(
    *, max_depth: int = 3, rounds: int = 10, nan_share: float = 0.1, seed: int = 0, **params: object
) -> xgb.Booster:
    """A booster on 400 seeded rows, a share of their cells NaN so trees learn both default directions."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(400, N_FEATURES)).astype(np.float32)
    label = (rows[:, 0] + rows[:, 1] * rows[:, 2] + rng.normal(size=len(rows)) > 0).astype(int)
    rows[rng.random(rows.shape) < nan_share] = np.nan
    return xgb.train(
        {"objective": "binary:logistic", "max_depth": max_depth, "seed": seed, **params},
        xgb.DMatrix(rows, label=label),
        rounds,
    )


def query_rows(count: int, seed: int = 1) -> np.ndarray:
    """Random float32 rows, 5% of cells NaN, and one row of each extreme (±1e30, ±inf) per feature."""
    rng = np.random.default_rng(seed)
    rows = (2 * rng.normal(size=(count, N_FEATURES))).astype(np.float32)
    rows[rng.random(rows.shape) < 0.05] = np.nan
    extremes = np.repeat(np.array([[1e30], [-1e30], [np.inf], [-np.inf]], dtype=np.float32), N_FEATURES, axis=1)
    return np.concatenate([rows, extremes])


def register(booster: xgb.Booster, home: Path, name: str) -> str:
    """Register and promote ``booster`` (no monitoring baseline: the bridge then skips the volatility check)."""
    path = home / f"{name}.json"
    booster.save_model(str(path))
    registry = make_model_registry()
    version = registry.register(
        path,
        ModelMetadata(
            features=FEATURES, data_start="2021-01-01T00:00Z", data_end="2021-03-31T21:00Z", data_fingerprint=name
        ),
    )
    registry.promote(version, name)
    return version


def batch_scorer(version: str, rows: np.ndarray) -> np.ndarray:
    return predict_proba(make_model_registry().load_booster(version), pd.DataFrame(rows, columns=FEATURES), FEATURES)


@pytest.mark.parametrize(
    "params",
    [
        {"max_depth": 1, "rounds": 1},
        {"max_depth": 3, "rounds": 50, "eta": 0.1, "base_score": 0.3},
        {"max_depth": 6, "rounds": 50, "eta": 0.5, "scale_pos_weight": 3.0},
        {"max_depth": 10, "rounds": 20, "base_score": 0.8, "nan_share": 0.3},
        {"max_depth": 4, "rounds": 300, "eta": 0.05},
        {"max_depth": 3, "rounds": 5, "num_parallel_tree": 3, "subsample": 0.7, "colsample_bynode": 0.7},
        {"max_depth": 4, "rounds": 20, "nan_share": 0.0, "tree_method": "exact"},
    ],
    ids=lambda params: ",".join(f"{k}={v}" for k, v in params.items()),
)
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


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"booster": "dart", "rate_drop": 0.2}, "booster 'dart' is not supported"),
        ({"objective": "binary:logitraw"}, "objective 'binary:logitraw' is not supported"),
        ({"objective": "reg:squarederror"}, "objective 'reg:squarederror' is not supported"),
    ],
)
def test_unsupported_models_are_refused_with_the_reason(params: dict[str, object], reason: str) -> None:
    with pytest.raises(NotCompilableError, match=reason):
        CompiledForest.compile(train(rounds=3, **params))


def test_categorical_splits_and_several_targets_are_refused() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=300), "kind": pd.Categorical(rng.integers(0, 4, size=300))})
    label = ((frame["kind"].cat.codes == 1) | (frame["x"] > 1)).astype(int)
    categorical = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(frame, label=label, enable_categorical=True), 3
    )
    with pytest.raises(NotCompilableError, match="categorical splits"):
        CompiledForest.compile(categorical)
    two_labels = np.stack([label, 1 - label], axis=1)
    multi_target = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(frame[["x"]].to_numpy(), label=two_labels), 3
    )
    with pytest.raises(NotCompilableError, match="2 targets"):
        CompiledForest.compile(multi_target)


def off_by_one_ulp(function: forest_module.Float32Function) -> forest_module.Float32Function:
    """``function`` with its float32 result one unit in the last place too high."""
    return lambda value: float(np.nextafter(np.float32(function(value)), np.float32(np.inf)))


@pytest.mark.parametrize("broken", ["expf", "logf"])
def test_self_check_refuses_a_forest_whose_arithmetic_is_off_by_one_ulp(
    broken: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    libm_function = forest_module._libm_function
    monkeypatch.setattr(
        forest_module,
        "_libm_function",
        lambda name: off_by_one_ulp(libm_function(name)) if name == broken else libm_function(name),
    )
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
        for values in (
            thresholds,
            np.nextafter(thresholds, np.float32(np.inf)),
            np.nextafter(thresholds, np.float32(-np.inf)),
        ):
            assert np.isin(values, clean[:, feature]).all() and np.isin(values, with_nan[:, feature]).all()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0022116026", np.float32(0.0022116026)),
        ("1.000000059604644775390625", np.float32(1.0)),  # exactly halfway: to even
        ("1.00000005960464477539062500001", np.nextafter(np.float32(1), np.float32(2))),  # via float64: 1.0
        ("1.00000005960464477539062499999", np.float32(1.0)),
        ("-1.00000005960464477539062500001", -np.nextafter(np.float32(1), np.float32(2))),
    ],
)
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


@pytest.mark.parametrize(
    "params",
    [
        {"max_depth": 4, "rounds": 50, "base_score": 0.4},
        {"max_depth": 6, "rounds": 300, "eta": 0.05, "scale_pos_weight": 2.0},
    ],
    ids=["depth4x50", "depth6x300"],
)
def test_champion_predicts_through_its_forest_as_the_batch_scorer(
    params: dict[str, object], qe_home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    booster = train(**params)
    version = register(booster, qe_home, "gbtree")
    with caplog.at_level(logging.INFO, logger="quant_engine.bridge.inference"):
        model = LocalChampionModel(make_model_registry())
    max_rows = CompiledForest.compile(booster).max_rows  # 128 and 17 rows
    assert f"batches up to {max_rows} rows by its compiled forest ({params['rounds']} trees" in caplog.text
    calls = []
    inplace_predict = xgb.Booster.inplace_predict
    monkeypatch.setattr(
        xgb.Booster,
        "inplace_predict",
        lambda self, rows, **kwargs: calls.append(len(rows)) or inplace_predict(self, rows, **kwargs),
    )
    rows = query_rows(500).astype(np.float64)
    batches = (rows[:1], rows[:20], rows[:500])
    for batch in batches:
        assert np.array_equal(model.predict(batch), batch_scorer(version, batch))
    # Infinities, which the batch scorer's DMatrix refuses, are served as inplace_predict serves them.
    assert np.array_equal(model.predict(rows[-4:]), inplace_predict(booster, rows[-4:].astype(np.float32)))
    assert calls == [len(batch) for batch in batches if len(batch) > max_rows]


def test_champion_falls_back_to_xgboost_for_a_forest_that_does_not_compile(
    qe_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    register(train(max_depth=3, rounds=10), qe_home, "gbtree")
    now = [0.0]
    model = LocalChampionModel(make_model_registry(), check_every_s=10, clock=lambda: now[0])
    dart = register(train(max_depth=3, rounds=10, booster="dart", rate_drop=0.3, seed=1), qe_home, "dart")
    now[0] = 11.0
    with caplog.at_level(logging.INFO, logger="quant_engine.bridge.inference"):
        assert model.refresh() and model.version == dart
    assert "with xgboost only: its forest does not compile: booster 'dart' is not supported" in caplog.text
    rows = query_rows(30)[:30].astype(np.float64)
    for batch in (rows[:1], rows):
        assert np.array_equal(model.predict(batch), batch_scorer(dart, batch))
