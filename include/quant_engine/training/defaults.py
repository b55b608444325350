"""A training run's parameters and their defaults, as plain data.

The ``spot_training`` DAG's form reads them when the DAG file is parsed, which must not import
numpy or pandas; :mod:`quant_engine.training.dataset` and :mod:`quant_engine.training.spec`
validate and resolve a run's parameters against them.
"""

from __future__ import annotations

from typing import Any

from quant_engine.wfo.defaults import DEFAULT_PARAMS as WFO_DEFAULTS

__all__ = [
    "DATASET_DEFAULTS",
    "DATA_KEYS",
    "DEFAULT_HYPERPARAMETERS",
    "DEFAULT_MODEL_NAME",
    "TRAINING_DEFAULTS",
    "WFO_FIXED_KEYS",
]

#: The registry name of the model the engine trains, monitors and serves unless told otherwise.
DEFAULT_MODEL_NAME = "xgb_direction"
#: Walk-forward parameters that shape the data and the labels; the training set takes them as they are.
DATA_KEYS: tuple[str, ...] = (
    "start",
    "end",
    "tickers",
    "feature_set",
    "label_kind",
    "horizon",
    "label_target",
    "pt_mult",
    "sl_mult",
    "vol_window",
)
#: Every parameter :meth:`TrainingSetConfig.from_params` accepts, with its default. A null ``end``
#: is the last day the offline store holds and a null ``start`` is ``window_days`` before ``end``,
#: so a run the drift monitor triggers (which passes no parameters) trains on the latest data.
DATASET_DEFAULTS: dict[str, Any] = {
    **{k: WFO_DEFAULTS[k] for k in DATA_KEYS},
    "start": None,
    "end": None,
    "window_days": 3 * 365,
    "holdout_fraction": 0.2,
    "embargo_bars": 5,
}
#: Shallow, slow, heavily regularised trees: the synthetic market's edge is weak (see the wfo defaults).
DEFAULT_HYPERPARAMETERS: dict[str, Any] = {
    "num_round": 100,
    "max_depth": 2,
    "learning_rate": 0.05,
    "min_child_weight": 100,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "checkpoint_every": 10,
    "seed": 42,
}
#: Every parameter a training run takes, with its default (the ``spot_training`` DAG's params).
#: ``wfo_run_id`` names a finished walk-forward run whose selected trial the run trains (see
#: :mod:`quant_engine.training.spec`); ``min_deflated_sharpe`` makes promotion require that run's
#: deflated Sharpe ratio above it (None: not required).
TRAINING_DEFAULTS: dict[str, Any] = {
    **DATASET_DEFAULTS,
    "runner": "local_spot",
    "interruptions": 2,
    "interruption_rate_per_hour": 0.0,
    "hyperparameters": DEFAULT_HYPERPARAMETERS,
    "model_name": DEFAULT_MODEL_NAME,
    "wfo_report": None,
    "wfo_run_id": None,
    "min_deflated_sharpe": None,
}
#: What a walk-forward run fixes when a training run takes its selected trial (``wfo_run_id``): the
#: hyperparameters, the labels and the feature set. A run's conf may not change them.
WFO_FIXED_KEYS: tuple[str, ...] = (
    "feature_set",
    "label_kind",
    "horizon",
    "label_target",
    "pt_mult",
    "sl_mult",
    "vol_window",
    "hyperparameters",
)
