"""The verdict tells feature drift from concept drift, on plain inputs and on the synthetic market.

The market scenarios train a small XGBoost on hourly bars of 10 synthetic tickers (2019-2020),
take its 2021 holdout as the quality baseline, inject a :class:`Shift` on 2022-01-03 and score
2022. Feature drift comes from the feature-drift module (Model Monitor's CDF distance against a
baseline of the training features) at ``comparison_threshold=0.4``: the synthetic market's regimes
last weeks, so even without a shift one year's realised-vol distribution sits up to ~0.3 (CDF
distance) from the training years', and Model Monitor's default 0.1 would call that drift.

The edge is weak (a hit rate of ~51-52%), so the shifts are sized to what a year of 10 tickers
can show: the concept shift flips the edge (``edge_scale=-1``), the covariate shift triples
volatility, and "both" halves volatility while flipping the edge twice as hard (at -1 the halved
volatility makes the model apply the wrong regime's edge, which undoes most of the flip). The
model reads the regime from realised volatility, so a volatility shift also changes which edge it
applies: on some seeds a tripled volatility costs real hit rate and the verdict says "both".
Measured on the NYSE-calendar market (holidays and half days, so a year has ~2 % fewer, partly
shorter sessions than the old weekday one), over seeds 0-11: concept flip -> concept_drift 6, none 6
(never feature drift; 10 of 24 over seeds 0-23); covariate x3 -> feature_drift 10, both 2; both ->
both 7, feature_drift 4, none 1; stationary -> none on 24 of 24. The scenario test runs one seed
(3, where every kind gets its verdict); the rates are tested below.
"""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from quant_engine.data.synthetic import Shift, SyntheticMarket
from quant_engine.features.registry import get_feature_set
from quant_engine.monitoring.baseline import build_baseline
from quant_engine.monitoring.concept_drift import QualityBaseline, evaluate_quality, join_labels
from quant_engine.monitoring.feature_drift import check_drift
from quant_engine.monitoring.predictions import PredictionLog
from quant_engine.monitoring.regimes import VolRegimeTracker, market_proxy_returns
from quant_engine.monitoring.verdict import VERDICTS, FeatureEvidence, drift_verdict
from quant_engine.wfo.labels import fixed_horizon_labels

FEATURES = ["log_return_5", "realized_vol_20"]
START, TRAIN_END, SHIFT_AT, END = "2019-01-01", "2021-01-01", "2022-01-03", "2022-12-31"
DRIFT_THRESHOLD = 0.4
NOW = pd.Timestamp("2022-12-31 23:00", tz="UTC")


def _excess_labels(bars: pd.DataFrame) -> pd.DataFrame:
    """1-bar labels on the return in excess of the tickers' mean, as the WFO pipeline's default."""
    labels = fixed_horizon_labels(bars, 1)
    labels["ret"] = labels["ret"] - labels.groupby("ts")["ret"].transform("mean")
    labels["label"] = (labels["ret"] > 0).astype(np.int8)
    return labels


@cache
def _scenario(seed: int, shift: str | None, log_dir: str | None = None):
    """Train before 2021, baseline on 2021, score 2022; return (feature report, concept report, vol state)."""
    market = SyntheticMarket(
        n_tickers=10,
        seed=seed,
        start=START,
        end=END,
        freq="1h",
        shifts=[Shift.parse(f"{SHIFT_AT}:{shift}")] if shift else [],
    )
    bars = market.fetch(None, START, END)
    features = get_feature_set("default").select(FEATURES).compute_batch(bars)
    labels = _excess_labels(bars)
    data = features.merge(labels.rename(columns={"ts": "event_time"}), on=["ticker", "event_time"]).dropna()
    t = data["event_time"]
    train, holdout = data[t < TRAIN_END], data[(t >= TRAIN_END) & (t < SHIFT_AT)]
    # Live predictions are made on every bar, the last one included, whose label is not known yet.
    live = features[features["event_time"] >= SHIFT_AT].dropna()

    model = xgb.XGBClassifier(
        n_estimators=60, max_depth=2, learning_rate=0.05, min_child_weight=200, n_jobs=1, random_state=0
    )
    model.fit(train[FEATURES], train["label"])
    quality_baseline = QualityBaseline.from_predictions(model.predict_proba(holdout[FEATURES])[:, 1], holdout["label"])
    predictions = pd.DataFrame(
        {
            "ticker": live["ticker"],
            "ts": live["event_time"],
            "prob": model.predict_proba(live[FEATURES])[:, 1],
            "model_version": "v1",
            "source": "batch",
        }
    )
    if log_dir is not None:  # the full path: through the prediction log on disk
        log = PredictionLog.local(log_dir)
        log.append(predictions)
        predictions = log.read()
    concept = evaluate_quality(join_labels(predictions, labels, now=NOW), quality_baseline)

    feature_report = check_drift(live[FEATURES], build_baseline(train[FEATURES]), comparison_threshold=DRIFT_THRESHOLD)
    return feature_report, concept, market_proxy_returns(bars[bars["ts"] <= NOW])


@pytest.mark.parametrize(
    ("shift", "expected"),
    [
        (None, "none"),
        ("covariate:vol_scale=3", "feature_drift"),
        ("concept:edge_scale=-1", "concept_drift"),
        ("both:vol_scale=0.5,edge_scale=-2", "both"),
    ],
    ids=["stationary", "covariate", "concept", "both"],
)
def test_each_kind_of_shift_gets_its_verdict(shift, expected, tmp_path) -> None:
    feature_report, concept, proxy = _scenario(3, shift, str(tmp_path / "predictions"))
    vol_state = VolRegimeTracker(tmp_path / "vol_regime.json").update(proxy)
    verdict = drift_verdict(feature_report.features, concept, vol_regime=vol_state)
    assert verdict.kind == expected, verdict.to_dict()

    if verdict.feature_drift:
        assert "realized_vol_20" in verdict.drifted_features
        assert all(d > DRIFT_THRESHOLD for d in verdict.drifted_features.values())
    else:
        assert verdict.drifted_features == {}
    if verdict.concept_drift:
        hit = verdict.breached_metrics["hit_rate"]
        assert hit["value"] < hit["baseline"] - hit["tolerance"]
        assert hit["diff_upper"] < -hit["tolerance"]
    else:
        assert verdict.breached_metrics == {}
    # Every label of 2022 but the last bar's (2022-12-30 21:00) has settled by NOW; its 10 are pending.
    assert verdict.n_settled > 15_000 and verdict.n_pending == 10
    assert verdict.vol_regime["regime"] in ("calm", "normal", "stressed")
    assert json.loads(json.dumps(verdict.to_dict()))["verdict"] == expected


def test_stationary_market_false_alarm_rate() -> None:
    # 12 seeds of the unshifted market. Bound tested: at most 1 of 12 verdicts other than "none"
    # (measured: 0 of 24 seeds; the quality side uses one-sided 99% bounds plus tolerances).
    kinds = []
    for seed in range(12):
        feature_report, concept, _ = _scenario(seed, None)
        kinds.append(drift_verdict(feature_report.features, concept).kind)
    assert sum(kind != "none" for kind in kinds) <= 1, kinds


def test_concept_shift_detection_rate_without_feature_drift() -> None:
    # The concept shift leaves the inputs alone, so on the seeds of the stationary test the
    # feature side stays quiet on every seed, and the hit rate leaves its bound on about half.
    # Bound tested: at least 5 of 12 (measured: 6 of 12, 10 of 24 over seeds 0-23; the misses are
    # years whose regime mix leaves the flipped edge too little room to show within a year of 10 tickers).
    kinds = []
    for seed in range(12):
        feature_report, concept, _ = _scenario(seed, "concept:edge_scale=-1")
        kinds.append(drift_verdict(feature_report.features, concept).kind)
    assert set(kinds) <= {"concept_drift", "none"}, kinds
    assert kinds.count("concept_drift") >= 5, kinds


# --- the verdict on plain inputs ------------------------------------------------------------------


def _concept_report(window_accuracy: float, seed: int = 0):
    rng = np.random.default_rng(seed)

    def model(n: int, accuracy: float):
        label = rng.integers(0, 2, n)
        right = rng.uniform(size=n) < accuracy
        return np.where(right == (label == 1), 0.55, 0.45), label

    baseline = QualityBaseline.from_predictions(*model(5000, 0.56))
    prob, label = model(5000, window_accuracy)
    ts = pd.date_range("2024-01-01", periods=5000, freq="h", tz="UTC")
    preds = pd.DataFrame({"ticker": "A", "ts": ts, "prob": prob, "model_version": "v1", "source": "batch"})
    labels = pd.DataFrame({"ticker": "A", "ts": ts, "t1": ts + pd.Timedelta(hours=1), "label": label})
    return evaluate_quality(join_labels(preds, labels, now=ts[-1] + pd.Timedelta(hours=1)), baseline)


@pytest.mark.parametrize(
    ("features", "accuracy", "expected"),
    [
        ({"a": False, "b": False}, 0.56, "none"),
        ({"a": True, "b": False}, 0.56, "feature_drift"),
        ({"a": False, "b": False}, 0.47, "concept_drift"),
        ({"a": True, "b": False}, 0.47, "both"),
    ],
)
def test_verdict_table(features, accuracy, expected) -> None:
    verdict = drift_verdict(features, _concept_report(accuracy))
    assert verdict.kind == expected
    assert verdict.kind in VERDICTS
    assert verdict.feature_drift == (expected in ("feature_drift", "both"))
    assert verdict.concept_drift == (expected in ("concept_drift", "both"))


def test_feature_evidence_in_every_accepted_form() -> None:
    report = _concept_report(0.56)
    evidence = {
        "flag": True,
        "mapping": {"drifted": True, "distance": 0.2},
        "object": FeatureEvidence(drifted=True, distance=0.5),
        "quiet": {"drifted": False, "distance": 0.01},
        "numpy": {"drifted": np.bool_(False), "distance": np.float64(0.03)},
    }
    verdict = drift_verdict(evidence, report)
    assert verdict.kind == "feature_drift"
    # Largest distance first; a drift without a distance last.
    assert list(verdict.drifted_features.items()) == [("object", 0.5), ("mapping", 0.2), ("flag", None)]
    assert verdict.feature_distances == {"flag": None, "mapping": 0.2, "object": 0.5, "quiet": 0.01, "numpy": 0.03}


def test_min_drifted_features_and_notes() -> None:
    report = _concept_report(0.56)
    verdict = drift_verdict({"a": True, "b": False}, report, min_drifted_features=2)
    assert verdict.kind == "none"
    assert any("below min_drifted_features=2" in note for note in verdict.notes)
    assert drift_verdict({"a": True, "b": True}, report, min_drifted_features=2).kind == "feature_drift"
    assert any("no feature evidence" in note for note in drift_verdict({}, report).notes)


@pytest.mark.parametrize(
    ("features", "kwargs", "error", "message"),
    [
        ({"a": "yes"}, {}, TypeError, r"feature_drift\['a'\]='yes': expected a bool"),
        ({"a": {"drifted": None}}, {}, ValueError, r"drifted=None must be True or False"),
        ({"a": {"drifted": True, "distance": float("nan")}}, {}, ValueError, r"distance=nan must be a finite number"),
        ({"a": True}, {"min_drifted_features": 0}, ValueError, r"min_drifted_features=0 must be an integer >= 1"),
        (["a"], {}, TypeError, r"feature_drift must be a mapping"),
    ],
)
def test_verdict_rejects_bad_input(features, kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        drift_verdict(features, _concept_report(0.56), **kwargs)
    with pytest.raises(TypeError, match="concept must be a ConceptDriftReport"):
        drift_verdict({"a": True}, {"hit_rate": 0.5})
