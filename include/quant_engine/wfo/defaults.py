"""The walk-forward's parameters and their defaults, as plain data.

The ``wfo_pipeline`` DAG's form reads them when the DAG file is parsed, which must not import
numpy or pandas; :mod:`quant_engine.wfo.config` validates a run's parameters against them.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DEFAULT_PARAMS",
    "DEFAULT_TRIAL_GRID",
    "LABEL_KINDS",
    "LABEL_TARGETS",
    "SPLITTERS",
    "SPLITTER_NAMES",
    "TRIAL_KEYS",
    "TRIAL_MODEL_KEYS",
]

#: How a row is labelled: the sign of the horizon return, or the first triple barrier hit.
LABEL_KINDS: tuple[str, ...] = ("fixed", "triple_barrier")
#: What a label's return is measured against: nothing, or the mean of the run's tickers at ``ts``.
LABEL_TARGETS: tuple[str, ...] = ("absolute", "excess")
#: How the sample is split: combinatorial purged CV (many paths), purged K-fold or walk-forward (one path each).
SPLITTERS: tuple[str, ...] = ("cpcv", "purged_kfold", "walk_forward")
#: How reports and logs name each splitter.
SPLITTER_NAMES: dict[str, str] = {"cpcv": "CPCV", "purged_kfold": "purged K-fold", "walk_forward": "walk-forward"}
#: XGBoost settings a trial may set; anything else in a trial is a typo, not a silent default.
TRIAL_MODEL_KEYS: tuple[str, ...] = (
    "max_depth",
    "learning_rate",
    "n_estimators",
    "subsample",
    "colsample_bytree",
    "min_child_weight",
)
TRIAL_KEYS: tuple[str, ...] = (*TRIAL_MODEL_KEYS, "threshold")
#: Default trial grid: 2 depths x 2 learning rates, 4 trials from little to moderate capacity, sized
#: so the default run stays small. The edge is weak, so shallow, slow, heavily regularised trees
#: (``min_child_weight`` 100) find it and deeper, faster ones fit noise; the grid spans both so the
#: PBO and deflated Sharpe have a real choice to judge. Chosen on two other draws of the synthetic
#: market (seeds 1 and 2), never on the default one, whose results it would otherwise flatter.
DEFAULT_TRIAL_GRID: dict[str, list[Any]] = {
    "max_depth": [2, 3],
    "learning_rate": [0.03, 0.1],
    "n_estimators": [100],
    "min_child_weight": [100],
    "threshold": [0.0],
}
#: Every parameter :meth:`quant_engine.wfo.config.WfoConfig.from_params` accepts, with its default:
#: the embedded synthetic market as ``make run`` ingests it (2015-2024), 6 groups choose 2 (15 splits,
#: 5 paths), 4 trials, a market-neutral book and labels that ask whether a ticker beats the others
#: over the next bar, the horizon of the market's edge (on seeds 1 and 2 this beat 5-bar and absolute
#: labels). ``n_groups`` is also purged K-fold's number of folds; ``train_window``, ``test_window`` and
#: ``anchored`` shape the walk-forward (2 years before the first yearly test window, expanding);
#: ``embargo`` and ``purge`` apply to every splitter.
DEFAULT_PARAMS: dict[str, Any] = {
    "start": "2015-01-01",
    "end": "2024-12-31",
    "tickers": None,
    "feature_set": "default",
    "label_kind": "fixed",
    "horizon": 1,
    "label_target": "excess",
    "pt_mult": 2.0,
    "sl_mult": 2.0,
    "vol_window": 20,
    "splitter": "cpcv",
    "n_groups": 6,
    "n_test_groups": 2,
    "train_window": "730D",
    "test_window": "365D",
    "anchored": True,
    "embargo": "5D",
    "purge": True,
    "trials": DEFAULT_TRIAL_GRID,
    "portfolio": "market_neutral",
    "cost_bps": 5.0,
    "seed": 42,
    "min_group_rows": 100,
}
