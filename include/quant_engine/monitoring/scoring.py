"""Batch scoring: the champion's predictions on stored feature rows, appended to the prediction log.

Concept drift is judged on what the model actually said, so every scored row is kept in a
:class:`~quant_engine.monitoring.predictions.PredictionLog` (``source="batch"``) until its label
settles. The log lives beside the model in the registry's storage (``<model_name>/predictions``
under ``$QE_HOME/models`` locally, under ``<prefix>/models`` on S3), so the backend is the one
:func:`quant_engine.backends.make_model_registry` picked.

A rerun for the same range appends nothing: rows the same version already has in the log with the
same probability (logged by an earlier run, or by the bridge, which says the same bit for bit) are
skipped, so the log's files (not only what :meth:`PredictionLog.read` returns) stay as they were.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from quant_engine.features.offline_store import OfflineStore
from quant_engine.monitoring.predictions import PREDICTION_KEY, champion, predict_proba, prediction_log
from quant_engine.timeutil import utc_day
from quant_engine.training.registry import ModelRegistry

__all__ = ["BATCH_SOURCE", "ScoreResult", "score_batch"]

BATCH_SOURCE = "batch"


@dataclass(frozen=True)
class ScoreResult:
    """What one scoring run did."""

    model_name: str
    model_version: str
    start: str
    end: str
    rows_scored: int
    rows_appended: int
    log_key: str | None

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def score_batch(
    registry: ModelRegistry, store: OfflineStore, start: object, end: object, *, tickers: list[str] | None = None
) -> ScoreResult:
    """Score the champion on the offline store's rows with ``event_time`` in the days ``[start, end]``.

    Parameters
    ----------
    registry : ModelRegistry
        The scored model's registry; its champion scores, its prediction log takes the rows.
    store : OfflineStore
        The feature group scored.
    start, end : date or str
        Inclusive UTC days.
    tickers : list of str, optional
        Only these tickers (default: all the store holds).

    Returns
    -------
    ScoreResult

    Raises
    ------
    NoChampionError
        The model has no champion yet.
    ValueError
        A bad range, or stored rows that lack the champion's features.
    """
    first, last = utc_day(start, "start"), utc_day(end, "end")
    if last < first:
        raise ValueError(f"end {last.date()} is before start {first.date()}: the range is empty")
    record = champion(registry)
    features = list(record.metadata.features)
    if store.schema is None:
        raise ValueError(f"the offline store (feature group {store.feature_group!r}) is empty; ingest data first")
    rows = store.read(tickers, first, last + pd.Timedelta(days=1) - pd.Timedelta(1, "ns"))
    missing = [f for f in features if f not in rows.columns]
    if missing:
        raise ValueError(
            f"feature group {store.feature_group!r} lacks feature(s) {missing} that "
            f"{registry.name} {record.version} needs"
        )
    rows = rows.dropna(subset=features)  # a row without full history was never a valid model input
    log = prediction_log(registry)
    result = ScoreResult(registry.name, record.version, str(first.date()), str(last.date()), len(rows), 0, None)
    if rows.empty:
        return result
    rows = rows.reset_index(drop=True)
    scored = pd.DataFrame(
        {
            "ticker": rows["ticker"].astype(str),
            "ts": rows["event_time"],
            "prob": predict_proba(registry.load_booster(record.version), rows, features),
            "model_version": record.version,
            "source": BATCH_SOURCE,
        }
    )
    logged = log.read()
    if not logged.empty:
        merged = scored.merge(
            logged.drop(columns="source"), on=list(PREDICTION_KEY), how="left", suffixes=("", "_logged")
        )
        scored = scored.loc[~merged["prob"].eq(merged["prob_logged"]).to_numpy()]
    key = log.append(scored)
    return ScoreResult(registry.name, record.version, str(first.date()), str(last.date()), len(rows), len(scored), key)
