"""What a training run trains: the model in production's own spec, rolled forward, with any part overridden.

A champion's metadata keeps the full spec it was trained from: the dataset (tickers, feature set,
labels, holdout; ``training["dataset"]``), the feature group (``training["feature_group"]``) and
the hyperparameters (``params``). Retraining, whether the drift monitor asked for it through the
``qe://drift/retraining-requested`` asset or a person triggered it, starts from that spec and rolls
it forward to the newest stored data: the same window length, ending on the last stored day. Any
key a run's conf names overrides the spec; what neither gives takes :data:`TRAINING_DEFAULTS` (the
tickers: the settings' universe, ``QE_DEFAULT_TICKERS``, when set).
Labels come from the stored bars, so no source is needed: the loop closes on any ingested data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from quant_engine.training.dataset import TrainingSetError
from quant_engine.training.defaults import TRAINING_DEFAULTS
from quant_engine.training.registry import ModelRegistry

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
    the last stored day (``end`` null); the hyperparameters and the walk-forward report are the
    champion's.
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
    if record.metadata.params:
        spec["hyperparameters"] = dict(record.metadata.params)
    return spec


def resolve_training_params(
    conf: Mapping[str, Any],
    registry_of: Any,
    *,
    requested_by: Sequence[Mapping[str, Any]] = (),
    default_tickers: Sequence[str] | None = None,
) -> tuple[dict[str, Any], str]:
    """The parameters a run trains with, and where they came from (for its log).

    Parameters
    ----------
    conf : mapping
        What the run's conf names (not the defaults filled in): these override everything.
    registry_of : callable
        ``registry_of(model_name) -> ModelRegistry``.
    requested_by : sequence of mapping
        The extras of the asset events that triggered the run; a drift monitor's names the model.
    default_tickers : sequence of str, optional
        The settings' universe (``QE_DEFAULT_TICKERS``): the tickers when neither the conf nor the
        champion's spec names any.

    Raises
    ------
    TrainingSetError
        An unknown key.
    """
    unknown = sorted(set(conf) - set(TRAINING_DEFAULTS))
    if unknown:
        raise TrainingSetError(f"unknown parameter(s) {unknown}; known: {', '.join(TRAINING_DEFAULTS)}")
    requested = [e["model_name"] for e in requested_by if isinstance(e, Mapping) and e.get("model_name")]
    model_name = conf.get("model_name") or (requested[-1] if requested else TRAINING_DEFAULTS["model_name"])
    spec = champion_spec(registry_of(model_name))
    basis = (
        f"the champion's spec of {model_name}, rolled forward"
        if spec
        else f"the defaults ({model_name} has no champion yet)"
    )
    if conf:
        basis += f", overridden by the conf's {', '.join(sorted(conf))}"
    params = {**TRAINING_DEFAULTS, **spec, "model_name": model_name, **conf}
    if params["tickers"] is None and default_tickers is not None:
        params["tickers"] = list(default_tickers)
    return params, basis
