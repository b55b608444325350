"""Drift check of the champion: baselines stored with the version (locally and on S3), a shifted market
found, a stationary one not, with the calibrated default thresholds and with a fixed one."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from moto import mock_aws

from quant_engine.backends import (
    make_bar_store,
    make_drift_monitor,
    make_group_stores,
    make_model_registry,
    make_offline_store,
)
from quant_engine.config import Settings
from quant_engine.data.synthetic import Shift, SyntheticMarket
from quant_engine.features.ingest import IngestionRequest, ingest
from quant_engine.monitoring.alarms import LocalAlarms
from quant_engine.monitoring.baseline import CONSTRAINTS_FILE, STATISTICS_FILE, BaselineError
from quant_engine.monitoring.predictions import NoChampionError
from quant_engine.monitoring.run import (
    NO_CHAMPION,
    QUALITY_FILE,
    READY,
    WAITING,
    baseline_key,
    load_baseline,
    record_baseline,
)
from quant_engine.monitoring.scoring import score_batch
from quant_engine.training.dataset import TrainingSetConfig, build_training_set, load_train_frame
from quant_engine.training.registry import ModelMetadata

#: Regimes last 25-60 days, so a 90-day window of daily bars differs from a 1.5-year baseline by more
#: than sampling noise; 0.25 separates that from a doubled volatility (robust distances 0.15 vs 0.7).
THRESHOLD = 0.25
WINDOW_DAYS = 90


def build_champion(home: Path, *, shifted: bool, seed: int = 3) -> str:
    """5 synthetic tickers trained on 2020-06..2021-12, new data to 2022-04 (volatility x2.5 from 2022 if shifted)."""
    shifts = [Shift("2022-01-03", "covariate", vol_scale=2.5)] if shifted else []
    market = SyntheticMarket(n_tickers=5, seed=seed, start="2019-01-01", end="2022-06-30", shifts=shifts)
    path = home / "bars.parquet"
    market.fetch(None, "2019-01-01", "2022-06-30").to_parquet(path)
    ingest(
        IngestionRequest.build("parquet", "2020-06-01", "2022-04-29", path=str(path), group=make_offline_store()),
        make_group_stores(),
    )
    config = TrainingSetConfig.from_params({"start": "2020-06-01", "end": "2021-12-31"}, make_offline_store())
    folder = home / "training"
    summary = build_training_set(config, folder, make_offline_store(), make_bar_store())
    features = summary["features"]
    train, holdout = pd.read_parquet(folder / "train" / "train.parquet"), pd.read_parquet(folder / "holdout.parquet")
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2, "eta": 0.1, "min_child_weight": 50},
        xgb.DMatrix(train[features].to_numpy(np.float32), label=train["label"], feature_names=features),
        20,
    )
    booster.save_model(str(folder / "model.json"))
    registry = make_model_registry()
    version = registry.register(
        folder / "model.json",
        ModelMetadata(
            features=features,
            data_start=summary["train_start"],
            data_end=summary["holdout_end"],
            data_fingerprint=summary["fingerprint"],
            training={"dataset": summary["params"]},
        ),
    )
    registry.promote(version, "first model")
    record_baseline(registry, version, registry.load_booster(version), load_train_frame(folder), holdout, features)
    return version


def score_window() -> None:
    start, end = make_drift_monitor().window(window_days=WINDOW_DAYS)
    score_batch(make_model_registry(), make_offline_store(), start, end)


def test_baseline_is_stored_with_the_version_calibrated_and_rewritten_identically(qe_home: Path) -> None:
    version = build_champion(qe_home, shifted=False)
    registry = make_model_registry()
    record = registry.get(version)
    folder = qe_home / "models" / registry.name / "baselines" / version
    assert baseline_key(registry.name, version) == f"{registry.name}/baselines/{version}"
    assert {p.name for p in folder.iterdir()} == {STATISTICS_FILE, CONSTRAINTS_FILE, QUALITY_FILE}
    baseline, quality = load_baseline(registry, version)
    assert baseline.names == list(record.metadata.features)
    train = load_train_frame(qe_home / "training")
    holdout = pd.read_parquet(qe_home / "training" / "holdout.parquet")
    assert baseline.statistics["dataset"]["item_count"] == len(train) and quality.n == len(holdout)
    assert 0.3 < quality.hit_rate < 0.7
    # Thresholds calibrated on the training windows: never below Model Monitor's 0.1, larger for
    # shorter windows of the same feature (more noise), present for every feature.
    calibration = baseline.monitoring_config["distribution_constraints"]["window_calibration"]
    assert set(calibration["windows"]) == {"20", "60", "120", "250"}
    for feature in baseline.features:
        t = feature.window_thresholds
        assert set(t) == {20, 60, 120, 250} and min(t.values()) >= 0.1
        assert t[20] >= t[250]
    assert baseline.feature("realized_vol_60").window_thresholds[60] > 0.1  # regimes show between windows
    before = [(folder / name).read_bytes() for name in (STATISTICS_FILE, CONSTRAINTS_FILE, QUALITY_FILE)]
    record_baseline(registry, version, registry.load_booster(version), train, holdout, record.metadata.features)
    assert [(folder / name).read_bytes() for name in (STATISTICS_FILE, CONSTRAINTS_FILE, QUALITY_FILE)] == before


def test_baseline_is_stored_with_the_model_on_s3(qe_home: Path) -> None:
    version = build_champion(qe_home, shifted=False)
    local = make_model_registry()
    train = load_train_frame(qe_home / "training")
    holdout = pd.read_parquet(qe_home / "training" / "holdout.parquet")
    features = local.get(version).metadata.features
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="qe-models")
        aws = Settings(home=qe_home, backend="aws", s3_bucket="qe-models")
        with pytest.raises(BaselineError, match="has no baseline"):
            load_baseline(make_model_registry(aws, local.name), version)
        where = record_baseline(
            make_model_registry(aws, local.name), version, local.load_booster(version), train, holdout, features
        )
        keys = sorted(
            o["Key"]
            for o in boto3.client("s3", region_name="us-east-1").list_objects_v2(Bucket="qe-models")["Contents"]
        )
        prefix = f"quant-engine/models/{local.name}/baselines/{version}/"
        assert keys == [prefix + name for name in sorted((CONSTRAINTS_FILE, QUALITY_FILE, STATISTICS_FILE))]
        assert "qe-models" in where
        from_s3, quality = load_baseline(make_model_registry(aws, local.name), version)
    from_disk, _ = load_baseline(local, version)
    assert from_s3.constraints == from_disk.constraints and quality.n == len(holdout)


def test_shifted_market_is_found_and_asks_for_retraining(qe_home: Path) -> None:
    version = build_champion(qe_home, shifted=True)
    score_window()
    result = make_drift_monitor().check("shifted", window_days=WINDOW_DAYS, comparison_threshold=THRESHOLD)
    assert result.retrain and result.verdict in ("feature_drift", "both") and result.model_version == version
    report = json.loads((Path(result.report_dir) / "report.json").read_text())
    assert report["verdict"] == result.verdict and report["retraining_requested"] is True
    drifted = set(report["evidence"]["drifted_features"])
    assert {"realized_vol_20", "realized_vol_60"} <= drifted
    violations = {
        v["feature_name"]
        for v in report["constraint_violations"]
        if v["constraint_check_type"] == "baseline_drift_check"
    }
    assert violations == drifted
    assert report["evidence"]["n_settled"] > 0 and report["evidence"]["vol_regime"]["regime"] in (
        "calm",
        "normal",
        "stressed",
    )
    page = (Path(result.report_dir) / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') >= len(drifted) + 1  # one per drifted feature + quality
    alarms = LocalAlarms(qe_home / "monitoring" / "xgb_direction-drift")
    assert alarms.state("feature_baseline_drift_realized_vol_20-alarm").state == "ALARM"
    assert alarms.state("feature_baseline_drift_volume_zscore_20-alarm").state == "OK"


@pytest.mark.parametrize("threshold", [None, THRESHOLD], ids=["calibrated", "fixed"])
def test_stationary_market_finds_nothing(qe_home: Path, threshold: float | None) -> None:
    build_champion(qe_home, shifted=False)
    score_window()
    result = make_drift_monitor().check("stationary", window_days=WINDOW_DAYS, comparison_threshold=threshold)
    assert (result.verdict, result.retrain) == ("none", False)
    report = json.loads((Path(result.report_dir) / "report.json").read_text())
    assert report["evidence"]["drifted_features"] == {} and report["evidence"]["breached_metrics"] == {}
    assert not [v for v in report["constraint_violations"] if v["constraint_check_type"] == "baseline_drift_check"]
    assert (Path(result.report_dir) / "report.html").exists()
    figures = json.loads((Path(result.report_dir) / "feature_drift.json").read_text())
    assert figures["calibrated_window_days"] == (None if threshold else 60)  # a 90-day window: the 60-day thresholds
    # A silence explains itself: the closest features against their thresholds, the quality held, the regime.
    why = report["explanation"]
    assert why[0].startswith("The inputs did not drift: 0 of 10 feature(s) beyond their ")
    assert ("thresholds calibrated on 60-day training windows" if threshold is None else "one threshold") in why[0]
    assert why[1].startswith("Quality held: on ") and why[2].startswith("The market's volatility regime is ")
    page = (Path(result.report_dir) / "report.html").read_text()
    for shown in (
        "<h2>Why</h2>",
        why[0].split(" (closest")[0],
        "<th>threshold</th>",
        "<h2>Volatility regime</h2>",
        "<th>lower</th><th>upper</th><th>baseline</th><th>tolerance</th>",
    ):
        assert shown in page
    if threshold is None:
        # With Model Monitor's fixed 0.1 the same window would have flagged features: the calibration matters.
        assert any(f["robust_distance"] > 0.1 for f in figures["features"])
        assert all(f["robust_distance"] <= f["threshold"] for f in figures["features"])


def test_shifted_market_is_found_with_calibrated_thresholds(qe_home: Path) -> None:
    build_champion(qe_home, shifted=True)
    score_window()
    result = make_drift_monitor().check("shifted-calibrated", window_days=WINDOW_DAYS)
    assert result.retrain and result.verdict in ("feature_drift", "both")
    report = json.loads((Path(result.report_dir) / "report.json").read_text())
    assert len(report["evidence"]["drifted_features"]) >= 2  # the default min_drifted_features
    assert report["explanation"][0].startswith(
        f"The inputs drifted: {len(report['evidence']['drifted_features'])} "
        "of 10 feature(s) beyond their thresholds calibrated on"
    )
    alarms = LocalAlarms(qe_home / "monitoring" / "xgb_direction-drift")
    drifted = next(iter(report["evidence"]["drifted_features"]))
    assert alarms.state(f"feature_baseline_drift_{drifted}-alarm").state == "ALARM"


def test_readiness_counts_new_and_matured_rows(qe_home: Path) -> None:
    build_champion(qe_home, shifted=False)
    state = make_drift_monitor().readiness(min_new_rows=10)
    assert state["ready"] and state["status"] == READY and 0 < state["matured_rows"] < state["new_rows"]
    assert pd.Timestamp(state["latest"]) > pd.Timestamp(state["data_end"])
    assert state["reason"].startswith(f"{state['new_rows']} new rows since {state['data_end']}")
    waiting = make_drift_monitor().readiness(min_new_rows=state["new_rows"] + 1)
    assert not waiting["ready"] and waiting["status"] == WAITING
    assert waiting["reason"].endswith(f"; a check needs {state['new_rows'] + 1} and some settled")
    with pytest.raises(ValueError, match="min_new_rows=0"):
        make_drift_monitor().readiness(min_new_rows=0)


def test_without_a_champion_there_is_nothing_to_monitor_and_an_unknown_model_is_an_error(qe_home: Path) -> None:
    state = make_drift_monitor().readiness()  # the engine's own model, not trained yet: nothing to do
    assert (state["status"], state["ready"], state["model_version"]) == (NO_CHAMPION, False, None)
    assert state["reason"] == (
        "model 'xgb_direction' has no champion yet (0 version(s) registered, none promoted): "
        "nothing to monitor until spot_training promotes one"
    )
    with pytest.raises(NoChampionError, match="model 'no_such_model' has no registered version; check the name"):
        make_drift_monitor(model_name="no_such_model").readiness()


def test_check_needs_a_champion_predictions_and_a_sane_window(qe_home: Path) -> None:
    with pytest.raises(NoChampionError, match="no champion"):
        make_drift_monitor().check("nothing")
    build_champion(qe_home, shifted=False)
    with pytest.raises(ValueError, match="no logged prediction"):
        make_drift_monitor().check("early", window_days=WINDOW_DAYS)
    with pytest.raises(ValueError, match="window_days=0"):
        make_drift_monitor().check("bad", window_days=0)


def test_the_report_shows_the_bridges_online_adaptation_on_the_windows_labels(qe_home: Path) -> None:
    from quant_engine.online.layer import OnlineLayer

    version = build_champion(qe_home, shifted=False)
    score_window()
    start, end = make_drift_monitor().window(window_days=WINDOW_DAYS)
    layer = OnlineLayer(updates_dir=qe_home / "online" / "xgb_direction" / "updates")
    sessions = pd.date_range(start, end, freq="B")[:30]
    labels = pd.DataFrame({"ticker": "SYN00", "ts": sessions[:-1], "t1": sessions[1:], "label": [1, 0] * 14 + [1]})
    early = pd.DataFrame(
        {"ticker": "SYN00", "ts": [start - pd.Timedelta(days=40)], "t1": [start - pd.Timedelta(days=39)], "label": [1]}
    )
    layer.adapt("SYN00", early["ts"][0], 0.55, version)
    layer.write_updates(layer.settle(early, early["t1"][0]))  # settled before the window: not counted
    for ts in sessions:
        layer.write_updates(layer.settle(labels, ts))
        layer.adapt("SYN00", ts, 0.6, version)
    result = make_drift_monitor().check("with-online", window_days=WINDOW_DAYS)
    online = json.loads((Path(result.report_dir) / "report.json").read_text())["evidence"]["online"]
    assert online["labels"] == 29 and online["logloss_batch"] == pytest.approx(
        -(15 * np.log(0.6) + 14 * np.log(0.4)) / 29
    )
    assert 0 <= online["adapted_used"] <= 1
    assert (
        "<h2>The bridge's online adaptation on the window's settled labels</h2>"
        in (Path(result.report_dir) / "report.html").read_text()
    )
