"""Batch scorer: the champion's probabilities on stored rows go to the prediction log, once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from quant_engine.backends import make_group_stores, make_model_registry, make_offline_store
from quant_engine.features.ingest import IngestionRequest, ingest
from quant_engine.monitoring.predictions import NoChampionError, prediction_log
from quant_engine.monitoring.scoring import BATCH_SOURCE, score_batch
from quant_engine.training.registry import ModelMetadata

TICKERS = ["SYN00", "SYN01", "SYN02"]


@pytest.fixture
def champion(qe_home: Path) -> str:
    """A small market (3 tickers, 2021 H1) and a champion trained on its first quarter."""
    ingest(
        IngestionRequest.build("synthetic", "2021-01-01", "2021-06-30", tickers=TICKERS, group=make_offline_store()),
        make_group_stores(),
    )
    rows = make_offline_store().read(None, "2021-01-01T00:00Z", "2021-03-31T23:59Z")
    features = [c for c in rows.columns if c not in ("ticker", "event_time")]
    label = (rows["log_return_5"] > rows["log_return_5"].median()).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2},
        xgb.DMatrix(rows[features].to_numpy(np.float32), label=label, feature_names=features),
        5,
    )
    booster.save_model(str(qe_home / "model.json"))
    registry = make_model_registry()
    version = registry.register(
        qe_home / "model.json",
        ModelMetadata(
            features=features, data_start="2021-01-01T00:00Z", data_end="2021-03-31T21:00Z", data_fingerprint="f"
        ),
    )
    registry.promote(version, "first model")
    return version


def test_scores_the_range_and_reruns_append_nothing(champion: str) -> None:
    registry = make_model_registry()
    result = score_batch(make_model_registry(), make_offline_store(), "2021-04-01", "2021-04-30")
    rows = make_offline_store().read(None, "2021-04-01T00:00Z", "2021-04-30T23:59Z")
    assert (result.model_version, result.rows_scored, result.rows_appended) == (champion, len(rows), len(rows))
    logged = prediction_log(registry).read()
    assert len(logged) == len(rows) and set(logged["source"]) == {BATCH_SOURCE}
    assert set(logged["model_version"]) == {champion}
    assert logged["ts"].min() >= pd.Timestamp("2021-04-01", tz="UTC")
    assert logged["ts"].max() <= pd.Timestamp("2021-04-30 23:59", tz="UTC")
    features = list(registry.get(champion).metadata.features)
    expected = registry.load_booster(champion).predict(
        xgb.DMatrix(rows[features].to_numpy(np.float32), feature_names=features)
    )
    merged = (
        rows[["ticker", "event_time"]]
        .rename(columns={"event_time": "ts"})
        .assign(expected=expected)
        .merge(logged, on=["ticker", "ts"])
    )
    np.testing.assert_allclose(merged["prob"], merged["expected"], rtol=1e-6)

    files = prediction_log(registry).files()
    again = score_batch(make_model_registry(), make_offline_store(), "2021-04-01", "2021-04-30")
    assert (again.rows_scored, again.rows_appended, again.log_key) == (len(rows), 0, None)
    assert prediction_log(registry).files() == files
    wider = score_batch(
        make_model_registry(), make_offline_store(), "2021-04-01", "2021-05-14"
    )  # only the new days are appended
    assert wider.rows_appended == wider.rows_scored - len(rows) > 0
    assert len(prediction_log(registry).read()) == wider.rows_scored


def test_range_without_rows_scores_nothing(champion: str) -> None:
    result = score_batch(make_model_registry(), make_offline_store(), "2021-07-05", "2021-07-09")
    assert (result.rows_scored, result.rows_appended) == (0, 0)
    assert prediction_log(make_model_registry()).files() == []


def test_bad_requests_fail_with_clear_messages(qe_home: Path) -> None:
    with pytest.raises(NoChampionError, match="has no champion"):
        score_batch(make_model_registry(), make_offline_store(), "2021-04-01", "2021-04-30")
    with pytest.raises(ValueError, match="end 2021-03-01 is before start 2021-04-01"):
        score_batch(make_model_registry(), make_offline_store(), "2021-04-01", "2021-03-01")
    with pytest.raises(ValueError, match="is not a date"):
        score_batch(make_model_registry(), make_offline_store(), "someday", "2021-03-01")
