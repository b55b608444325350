"""A training run trains what is in production: the champion's spec rolled forward, any part overridden."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from quant_engine.backends import make_model_registry
from quant_engine.training.dataset import TrainingSetError
from quant_engine.training.defaults import DEFAULT_HYPERPARAMETERS, TRAINING_DEFAULTS
from quant_engine.training.registry import ModelMetadata
from quant_engine.training.spec import resolve_training_params

SPEC = {
    "start": "2021-01-04",
    "end": "2022-12-30",
    "tickers": ["AAA", "BBB"],
    "feature_set": "ohlc",
    "label_kind": "triple_barrier",
    "horizon": 5,
    "label_target": "absolute",
    "pt_mult": 1.5,
    "sl_mult": None,
    "vol_window": 30,
    "holdout_fraction": 0.25,
    "embargo_bars": 3,
}
HYPERPARAMETERS = {"num_round": 40, "max_depth": 3, "learning_rate": 0.07, "seed": 5}


def promote_a_champion(home: Path, name: str = "xgb_direction") -> str:
    rows = pd.DataFrame(np.random.default_rng(0).normal(size=(50, 2)), columns=["a", "b"])
    booster = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(rows, label=(rows["a"] > 0).astype(int)), 2)
    booster.save_model(str(home / "m.json"))
    registry = make_model_registry(name=name)
    version = registry.register(
        home / "m.json",
        ModelMetadata(
            features=["a", "b"],
            data_start="2021-01-04T21:00Z",
            data_end="2022-12-30T21:00Z",
            data_fingerprint="x",
            params=HYPERPARAMETERS,
            wfo_report="reports/wfo/run-7",
            training={"dataset": SPEC},
        ),
    )
    registry.promote(version, "first")
    return version


def test_without_a_champion_a_run_takes_the_defaults_and_its_conf(qe_home: Path) -> None:
    params, basis = resolve_training_params({"tickers": "SYN00", "interruptions": 0}, make_model_registry_of)
    assert params == {**TRAINING_DEFAULTS, "tickers": "SYN00", "interruptions": 0}
    assert basis == "the defaults (xgb_direction has no champion yet), overridden by the conf's interruptions, tickers"


def test_the_settings_universe_fills_tickers_neither_the_conf_nor_the_champion_names(qe_home: Path) -> None:
    universe = ("SYN01", "SYN02")
    params, _ = resolve_training_params({}, make_model_registry_of, default_tickers=universe)
    assert params["tickers"] == ["SYN01", "SYN02"]
    params, _ = resolve_training_params({"tickers": None}, make_model_registry_of, default_tickers=universe)
    assert params["tickers"] == ["SYN01", "SYN02"]  # a form left empty
    params, _ = resolve_training_params({"tickers": "SYN03"}, make_model_registry_of, default_tickers=universe)
    assert params["tickers"] == "SYN03"
    promote_a_champion(qe_home)
    params, _ = resolve_training_params({}, make_model_registry_of, default_tickers=universe)
    assert params["tickers"] == ["AAA", "BBB"]  # what production trained on


def test_a_retrain_rolls_the_champions_spec_forward_and_the_conf_overrides_any_part(qe_home: Path) -> None:
    promote_a_champion(qe_home)
    params, basis = resolve_training_params({}, make_model_registry_of)
    kept = {k: v for k, v in SPEC.items() if k not in ("start", "end")}
    assert {k: params[k] for k in kept} == kept
    assert (params["start"], params["end"], params["window_days"]) == (None, None, 725)  # the same length, to now
    assert params["hyperparameters"] == HYPERPARAMETERS and params["wfo_report"] == "reports/wfo/run-7"
    assert basis == "the champion's spec of xgb_direction, rolled forward"
    overridden, _ = resolve_training_params(
        {"horizon": 1, "hyperparameters": DEFAULT_HYPERPARAMETERS}, make_model_registry_of
    )
    assert overridden["horizon"] == 1 and overridden["hyperparameters"] == DEFAULT_HYPERPARAMETERS
    assert overridden["feature_set"] == "ohlc"


def test_the_drift_monitors_request_names_the_model_to_retrain(qe_home: Path) -> None:
    promote_a_champion(qe_home, name="other_model")
    params, basis = resolve_training_params(
        {}, make_model_registry_of, requested_by=[{"verdict": "both", "model_name": "other_model"}]
    )
    assert params["model_name"] == "other_model" and params["tickers"] == ["AAA", "BBB"]
    assert basis.startswith("the champion's spec of other_model")


def test_an_unknown_key_is_refused(qe_home: Path) -> None:
    with pytest.raises(TrainingSetError, match=r"unknown parameter\(s\) \['tikers'\]"):
        resolve_training_params({"tikers": "SYN00"}, make_model_registry_of)


def make_model_registry_of(name: str):
    return make_model_registry(name=name)
