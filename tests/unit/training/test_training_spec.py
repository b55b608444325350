"""A training run trains what is in production: the champion's spec rolled forward, any part overridden,
or a walk-forward run's selected trial."""

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
from quant_engine.wfo.config import WfoConfig
from quant_engine.wfo.run_folder import WfoOutcome

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
    params, basis, wfo_run = resolve_training_params({"tickers": "SYN00", "interruptions": 0}, make_model_registry_of)
    assert params == {**TRAINING_DEFAULTS, "tickers": "SYN00", "interruptions": 0}
    assert basis == "the defaults (xgb_direction has no champion yet), overridden by the conf's interruptions, tickers"
    assert wfo_run is None


def test_the_settings_universe_fills_tickers_neither_the_conf_nor_the_champion_names(qe_home: Path) -> None:
    universe = ("SYN01", "SYN02")
    params, _, _ = resolve_training_params({}, make_model_registry_of, default_tickers=universe)
    assert params["tickers"] == ["SYN01", "SYN02"]
    params, _, _ = resolve_training_params({"tickers": None}, make_model_registry_of, default_tickers=universe)
    assert params["tickers"] == ["SYN01", "SYN02"]  # a form left empty
    params, _, _ = resolve_training_params({"tickers": "SYN03"}, make_model_registry_of, default_tickers=universe)
    assert params["tickers"] == "SYN03"
    promote_a_champion(qe_home)
    params, _, _ = resolve_training_params({}, make_model_registry_of, default_tickers=universe)
    assert params["tickers"] == ["AAA", "BBB"]  # what production trained on


def test_a_retrain_rolls_the_champions_spec_forward_and_the_conf_overrides_any_part(qe_home: Path) -> None:
    promote_a_champion(qe_home)
    params, basis, wfo_run = resolve_training_params({}, make_model_registry_of)
    assert wfo_run is None and params["wfo_run_id"] is None  # this champion came from no walk-forward run
    kept = {k: v for k, v in SPEC.items() if k not in ("start", "end")}
    assert {k: params[k] for k in kept} == kept
    assert (params["start"], params["end"], params["window_days"]) == (None, None, 725)  # the same length, to now
    assert params["hyperparameters"] == HYPERPARAMETERS and params["wfo_report"] == "reports/wfo/run-7"
    assert basis == "the champion's spec of xgb_direction, rolled forward"
    overridden, _, _ = resolve_training_params(
        {"horizon": 1, "hyperparameters": DEFAULT_HYPERPARAMETERS}, make_model_registry_of
    )
    assert overridden["horizon"] == 1 and overridden["hyperparameters"] == DEFAULT_HYPERPARAMETERS
    assert overridden["feature_set"] == "ohlc"


def test_the_drift_monitors_request_names_the_model_to_retrain(qe_home: Path) -> None:
    promote_a_champion(qe_home, name="other_model")
    params, basis, _ = resolve_training_params(
        {}, make_model_registry_of, requested_by=[{"verdict": "both", "model_name": "other_model"}]
    )
    assert params["model_name"] == "other_model" and params["tickers"] == ["AAA", "BBB"]
    assert basis.startswith("the champion's spec of other_model")


def test_an_unknown_key_is_refused(qe_home: Path) -> None:
    with pytest.raises(TrainingSetError, match=r"unknown parameter\(s\) \['tikers'\]"):
        resolve_training_params({"tikers": "SYN00"}, make_model_registry_of)


def make_model_registry_of(name: str):
    return make_model_registry(name=name)


# --- research to production: a walk-forward run's selected trial ----------------------------------

WFO_CONFIG = WfoConfig.from_params(
    {
        "start": "2019-01-01",
        "end": "2021-12-31",
        "tickers": "AAA,BBB",
        "feature_set": "ohlc",
        "label_kind": "triple_barrier",
        "label_target": "absolute",
        "horizon": 5,
        "pt_mult": 1.5,
        "sl_mult": None,
        "vol_window": 30,
        "splitter": "walk_forward",
        "train_window": "365D",
        "test_window": "180D",
        "seed": 11,
        "trials": [
            {"max_depth": 2, "n_estimators": 30, "threshold": 0.01},
            {
                "max_depth": 4,
                "learning_rate": 0.05,
                "n_estimators": 80,
                "subsample": 0.7,
                "colsample_bytree": 0.9,
                "min_child_weight": 20,
            },
        ],
    }
)
OUTCOME = WfoOutcome("wf-7", WFO_CONFIG, 1, 0.25, 0.71, 0.93, 4, 1)
FROM_THE_RUN = {
    "tickers": ["AAA", "BBB"],
    "feature_set": "ohlc",
    "label_kind": "triple_barrier",
    "horizon": 5,
    "label_target": "absolute",
    "pt_mult": 1.5,
    "sl_mult": None,
    "vol_window": 30,
    "start": "2019-01-01",
    "end": None,
    "hyperparameters": {
        "num_round": 80,
        "max_depth": 4,
        "learning_rate": 0.05,
        "min_child_weight": 20,
        "subsample": 0.7,
        "colsample_bytree": 0.9,
        "seed": 11,
        "checkpoint_every": 10,
    },
}


def wfo_runs(run_id: str) -> WfoOutcome:
    if run_id != OUTCOME.run_id:
        raise TrainingSetError(f"wfo_run_id={run_id!r}: no wfo run of that id")
    return OUTCOME


def test_a_wfo_run_id_trains_the_selected_trial_on_the_full_data(qe_home: Path) -> None:
    params, basis, wfo_run = resolve_training_params(
        {"wfo_run_id": "wf-7"}, make_model_registry_of, wfo_run_of=wfo_runs
    )
    assert {k: params[k] for k in FROM_THE_RUN} == FROM_THE_RUN
    assert params["wfo_run_id"] == "wf-7" and params["window_days"] == TRAINING_DEFAULTS["window_days"]
    assert wfo_run == OUTCOME.record() and wfo_run["selected_params"]["threshold"] == 0.0
    assert (wfo_run["run_id"], wfo_run["splitter"], wfo_run["pbo"], wfo_run["deflated_sharpe"]) == (
        "wf-7",
        "walk_forward",
        0.25,
        0.71,
    )
    assert basis == (
        "walk-forward run wf-7's selected trial 1 (walk_forward, PBO 0.250, deflated Sharpe 0.710), "
        "on the data from 2019-01-01"
    )
    # the trigger form sends every param, its untouched defaults included: they give way to the run
    form = {**TRAINING_DEFAULTS, "wfo_run_id": "wf-7", "interruptions": 0}
    from_form, _, _ = resolve_training_params(form, make_model_registry_of, wfo_run_of=wfo_runs)
    assert {k: from_form[k] for k in FROM_THE_RUN} == FROM_THE_RUN and from_form["interruptions"] == 0


def test_the_conf_may_choose_the_data_but_not_what_the_run_fixed(qe_home: Path) -> None:
    change = {"wfo_run_id": "wf-7", "tickers": "AAA", "end": "2022-06-30", "holdout_fraction": 0.3}
    params, basis, _ = resolve_training_params(change, make_model_registry_of, wfo_run_of=wfo_runs)
    assert (params["tickers"], params["start"], params["end"], params["holdout_fraction"]) == (
        "AAA",
        "2019-01-01",
        "2022-06-30",
        0.3,
    )
    assert basis.endswith("overridden by the conf's end, holdout_fraction, tickers")
    windowed, _, _ = resolve_training_params(
        {"wfo_run_id": "wf-7", "window_days": 400}, make_model_registry_of, wfo_run_of=wfo_runs
    )
    assert (windowed["start"], windowed["window_days"]) == (None, 400)  # a window asked for ends on the last day
    same, _, _ = resolve_training_params(
        {"wfo_run_id": "wf-7", "horizon": 5}, make_model_registry_of, wfo_run_of=wfo_runs
    )
    assert same["horizon"] == 5  # the run's own value is no change
    with pytest.raises(
        TrainingSetError,
        match=r"wfo_run_id='wf-7' fixes the selected trial's hyperparameters, labels and feature set, but the conf "
        r"changes feature_set='extended' \(the run's: 'ohlc'\), horizon=3 \(the run's: 5\); drop them",
    ):
        resolve_training_params(
            {"wfo_run_id": "wf-7", "horizon": 3, "feature_set": "extended"}, make_model_registry_of, wfo_run_of=wfo_runs
        )
    with pytest.raises(TrainingSetError, match=r"changes hyperparameters=\{'num_round': 5\}"):
        resolve_training_params(
            {"wfo_run_id": "wf-7", "hyperparameters": {"num_round": 5}}, make_model_registry_of, wfo_run_of=wfo_runs
        )
    with pytest.raises(TrainingSetError, match="wfo_run_id='wf-8': no wfo run of that id"):
        resolve_training_params({"wfo_run_id": "wf-8"}, make_model_registry_of, wfo_run_of=wfo_runs)
    with pytest.raises(TrainingSetError, match="no walk-forward runs can be read here"):
        resolve_training_params({"wfo_run_id": "wf-7"}, make_model_registry_of)


def test_a_wfo_run_replaces_the_champions_spec_and_its_report(qe_home: Path) -> None:
    promote_a_champion(qe_home)  # trained from another spec, with a walk-forward report of its own
    params, _, wfo_run = resolve_training_params({"wfo_run_id": "wf-7"}, make_model_registry_of, wfo_run_of=wfo_runs)
    assert {k: params[k] for k in FROM_THE_RUN} == FROM_THE_RUN and wfo_run["run_id"] == "wf-7"
    assert params["wfo_report"] is None and params["holdout_fraction"] == SPEC["holdout_fraction"]


def test_a_retrain_of_a_champion_from_a_wfo_run_keeps_the_run_unless_the_conf_changes_its_trial(qe_home: Path) -> None:
    rows = pd.DataFrame(np.random.default_rng(0).normal(size=(50, 2)), columns=["a", "b"])
    booster = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(rows, label=(rows["a"] > 0).astype(int)), 2)
    booster.save_model(str(qe_home / "m.json"))
    registry = make_model_registry()
    dataset = {**SPEC, **{k: v for k, v in FROM_THE_RUN.items() if k != "hyperparameters"}, "end": "2022-12-30"}
    version = registry.register(
        qe_home / "m.json",
        ModelMetadata(
            features=["a", "b"],
            data_start="2019-01-02T21:00Z",
            data_end="2022-12-30T21:00Z",
            data_fingerprint="x",
            params=FROM_THE_RUN["hyperparameters"],
            wfo_run=OUTCOME.record(),
            training={"dataset": dataset},
        ),
    )
    registry.promote(version, "first")
    params, basis, wfo_run = resolve_training_params({}, make_model_registry_of)  # the drift monitor's retrain
    assert wfo_run == OUTCOME.record() and params["wfo_run_id"] == "wf-7"
    assert params["hyperparameters"] == FROM_THE_RUN["hyperparameters"] and params["start"] is None
    assert basis == "the champion's spec of xgb_direction, rolled forward"
    kept, _, still = resolve_training_params({"interruptions": 0, "horizon": 5}, make_model_registry_of)
    assert still == OUTCOME.record() and kept["wfo_run_id"] == "wf-7"
    changed, basis, gone = resolve_training_params({"hyperparameters": DEFAULT_HYPERPARAMETERS}, make_model_registry_of)
    assert gone is None and changed["wfo_run_id"] is None
    assert "(no longer walk-forward run wf-7's trial: the conf changes hyperparameters)" in basis


def test_docstring_examples_run() -> None:
    import doctest

    from quant_engine.training import spec

    assert doctest.testmod(spec).failed == 0
