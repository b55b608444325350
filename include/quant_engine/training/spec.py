"""What a training run trains: the model in production's own spec, rolled forward, with any part overridden,
or the trial a walk-forward run selected.

A champion's metadata keeps the full spec it was trained from: the dataset (tickers, feature set,
labels, holdout; ``training["dataset"]``), the feature group (``training["feature_group"]``) and
the hyperparameters (``params``). Retraining, whether the drift monitor asked for it through the
``qe://drift/retraining-requested`` asset or a person triggered it, starts from that spec and rolls
it forward to the newest stored data: the same window length, ending on the last stored day. Any
key a run's conf names overrides the spec; what neither gives takes :data:`TRAINING_DEFAULTS` (the
tickers: the settings' universe, ``QE_DEFAULT_TICKERS``, when set).
Labels come from the stored bars, so no source is needed: the loop closes on any ingested data.

Research to production
----------------------
A conf naming ``wfo_run_id`` trains what that finished walk-forward run selected: the selected
trial's hyperparameters (``n_estimators`` rounds, depth, learning rate, sampling, the run's seed),
its labels and feature set, its tickers, on the full data from the run's first day to the last
stored one (a holdout at the end still judges it against the champion). The run's id, splitter,
PBO and deflated Sharpe go into the model's metadata (``wfo_run``). The conf may not change what
the run fixes (:data:`WFO_FIXED_KEYS`); a value equal to the form's default gives way to the run's,
so a run triggered from the filled-in form works. A retrain of a champion that came from a
walk-forward run keeps that run in its metadata, unless the conf changes what the run fixed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from quant_engine.training.dataset import TrainingSetError
from quant_engine.training.defaults import DEFAULT_HYPERPARAMETERS, TRAINING_DEFAULTS, WFO_FIXED_KEYS
from quant_engine.training.registry import ModelRegistry
from quant_engine.wfo.run_folder import WfoOutcome

#: Parts of a champion's spec a retrain keeps (dates are rolled forward instead).
_KEPT = (
    "tickers",
    "feature_set",
    "label_kind",
    "horizon",
    "label_target",
    "pt_mult",
    "sl_mult",
    "vol_window",
    "holdout_fraction",
    "embargo_bars",
)


def champion_spec(registry: ModelRegistry) -> dict[str, Any]:
    """The champion's training spec rolled forward to the newest data, or ``{}`` without a champion.

    The window keeps its length (``window_days`` from the champion's first to last day) and ends on
    the last stored day (``end`` null); the hyperparameters, the walk-forward report and the
    walk-forward run (``wfo_run_id``) are the champion's.
    """
    promotion = registry.champion()
    if promotion is None:
        return {}
    record = registry.get(promotion.version)
    dataset = dict(record.metadata.training.get("dataset", {}))
    spec: dict[str, Any] = {k: dataset[k] for k in _KEPT if k in dataset}
    if dataset.get("start") and dataset.get("end"):
        spec["window_days"] = int((pd.Timestamp(dataset["end"]) - pd.Timestamp(dataset["start"])).days)
    spec.update(start=None, end=None, model_name=registry.name, wfo_report=record.metadata.wfo_report)
    spec["wfo_run_id"] = record.metadata.wfo_run["run_id"] if record.metadata.wfo_run else None
    if record.metadata.params:
        spec["hyperparameters"] = dict(record.metadata.params)
    return spec


def wfo_training_spec(outcome: WfoOutcome) -> dict[str, Any]:
    """The training parameters of a walk-forward run's selected trial, on the data from the run's first day.

    The trial's XGBoost settings become the trainer's hyperparameters (``n_estimators`` its
    ``num_round``, the run's seed its seed); the backtest threshold stays in the run's record.

    Examples
    --------
    >>> from quant_engine.wfo.config import WfoConfig
    >>> config = WfoConfig.from_params({"start": "2019-01-01", "end": "2021-12-31", "seed": 3,
    ...     "trials": [{"max_depth": 2, "n_estimators": 30}, {"max_depth": 3, "learning_rate": 0.05}]})
    >>> spec = wfo_training_spec(WfoOutcome("r1", config, 1, 0.2, 0.7, 0.8, 15, 5))
    >>> spec["hyperparameters"]["num_round"], spec["hyperparameters"]["max_depth"], spec["start"]
    (60, 3, '2019-01-01')
    """
    config, trial = outcome.config, outcome.trial
    return {
        "tickers": list(config.tickers) if config.tickers else None,
        "feature_set": config.feature_set,
        "label_kind": config.label.kind,
        "horizon": config.label.horizon,
        "label_target": config.label.target,
        "pt_mult": config.label.pt_mult,
        "sl_mult": config.label.sl_mult,
        "vol_window": config.label.vol_window,
        "start": str(config.start.date()),
        "end": None,
        "hyperparameters": {
            "num_round": trial.n_estimators,
            "max_depth": trial.max_depth,
            "learning_rate": trial.learning_rate,
            "min_child_weight": trial.min_child_weight,
            "subsample": trial.subsample,
            "colsample_bytree": trial.colsample_bytree,
            "seed": config.seed,
            "checkpoint_every": DEFAULT_HYPERPARAMETERS["checkpoint_every"],
        },
    }


def resolve_training_params(
    conf: Mapping[str, Any],
    registry_of: Callable[[str], ModelRegistry],
    *,
    requested_by: Sequence[Mapping[str, Any]] = (),
    wfo_run_of: Callable[[str], WfoOutcome] | None = None,
    default_tickers: Sequence[str] | None = None,
) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
    """The parameters a run trains with, where they came from (for its log), and the walk-forward run behind them.

    Parameters
    ----------
    conf : mapping
        What the run's conf names (not the defaults filled in): these override everything.
    registry_of : callable
        ``registry_of(model_name) -> ModelRegistry``.
    requested_by : sequence of mapping
        The extras of the asset events that triggered the run; a drift monitor's names the model.
    wfo_run_of : callable, optional
        ``wfo_run_of(run_id) -> WfoOutcome``: a finished walk-forward run, read before any data
        moves; needed when the conf names ``wfo_run_id``.
    default_tickers : sequence of str, optional
        The settings' universe (``QE_DEFAULT_TICKERS``): the tickers when neither the conf, the
        walk-forward run nor the champion's spec names any.

    Returns
    -------
    params, basis, wfo_run
        ``wfo_run`` is the walk-forward run's record for the model's metadata
        (:meth:`WfoOutcome.record`), or None.

    Raises
    ------
    TrainingSetError
        An unknown key, or a conf that changes what its walk-forward run fixes.
    ValueError, FileNotFoundError
        ``wfo_run_of`` cannot find the run, or it has not finished.
    """
    unknown = sorted(set(conf) - set(TRAINING_DEFAULTS))
    if unknown:
        raise TrainingSetError(f"unknown parameter(s) {unknown}; known: {', '.join(TRAINING_DEFAULTS)}")
    requested = [e["model_name"] for e in requested_by if isinstance(e, Mapping) and e.get("model_name")]
    model_name = conf.get("model_name") or (requested[-1] if requested else TRAINING_DEFAULTS["model_name"])
    registry = registry_of(model_name)
    spec = champion_spec(registry)
    run_id = conf.get("wfo_run_id")
    if run_id is not None:
        if wfo_run_of is None:
            raise TrainingSetError(f"wfo_run_id={run_id!r} is given but no walk-forward runs can be read here")
        outcome = wfo_run_of(run_id)
        research = {**wfo_training_spec(outcome), "wfo_report": None}
        _check_conf_keeps_the_run(conf, research, run_id)
        given = {k: v for k, v in conf.items() if k not in research or v != TRAINING_DEFAULTS[k]}
        if conf.get("window_days", TRAINING_DEFAULTS["window_days"]) != TRAINING_DEFAULTS["window_days"]:
            research.pop("start")  # a window asked for (and no start): it ends on the last stored day
        params = {**TRAINING_DEFAULTS, **spec, **research, "model_name": model_name, **given}
        basis = (
            f"walk-forward run {run_id}'s selected trial {outcome.selected_trial} "
            f"({outcome.config.splitter_kind}, PBO {_fmt(outcome.pbo)}, deflated Sharpe "
            f"{_fmt(outcome.deflated_sharpe)}), on the data from {params['start'] or 'window_days before end'}"
        )
        return params, _overridden(basis, {k: v for k, v in given.items() if k != "wfo_run_id"}), outcome.record()
    params = {**TRAINING_DEFAULTS, **spec, "model_name": model_name, **conf}
    basis = (
        f"the champion's spec of {model_name}, rolled forward"
        if spec
        else f"the defaults ({model_name} has no champion yet)"
    )
    if params["tickers"] is None and default_tickers is not None:
        params["tickers"] = list(default_tickers)
    wfo_run = None
    if spec.get("wfo_run_id") and "wfo_run_id" not in conf:
        changed = sorted(k for k in WFO_FIXED_KEYS if k in conf and conf[k] != spec.get(k, TRAINING_DEFAULTS[k]))
        if changed:
            params["wfo_run_id"] = None
            basis += (
                f" (no longer walk-forward run {spec['wfo_run_id']}'s trial: the conf changes {', '.join(changed)})"
            )
        else:
            wfo_run = _champion_wfo_run(registry)
    return params, _overridden(basis, conf), wfo_run


def _champion_wfo_run(registry: ModelRegistry) -> dict[str, Any] | None:
    """The walk-forward run the champion came from, as its metadata records it."""
    promotion = registry.champion()
    record = None if promotion is None else registry.get(promotion.version).metadata.wfo_run
    return dict(record) if record else None


def _check_conf_keeps_the_run(conf: Mapping[str, Any], research: Mapping[str, Any], run_id: str) -> None:
    """A conf may not change what a walk-forward run fixes; its form's untouched defaults give way to the run."""
    changed = [k for k in WFO_FIXED_KEYS if k in conf and conf[k] != research[k] and conf[k] != TRAINING_DEFAULTS[k]]
    if changed:
        shown = ", ".join(f"{k}={conf[k]!r} (the run's: {research[k]!r})" for k in changed)
        raise TrainingSetError(
            f"wfo_run_id={run_id!r} fixes the selected trial's hyperparameters, labels and feature set, but the "
            f"conf changes {shown}; drop them from the conf, or train without wfo_run_id"
        )


def _overridden(basis: str, conf: Mapping[str, Any]) -> str:
    return basis + (f", overridden by the conf's {', '.join(sorted(conf))}" if conf else "")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
