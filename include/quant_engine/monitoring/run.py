"""Drift monitoring of the champion model: the baselines stored with each version, and the check.

The baselines are stored with the model, in the registry's own storage (``$QE_HOME/models`` locally,
``s3://<bucket>/<prefix>/models`` on the aws backend), beside the version they describe::

    <model_name>/baselines/<version>/statistics.json        Model Monitor statistics
    <model_name>/baselines/<version>/constraints.json       Model Monitor constraints, thresholds calibrated
    <model_name>/baselines/<version>/quality_baseline.json  holdout QualityBaseline

(A version's own folder is immutable once registered, so they sit in a sibling tree.) They are
written when the version is registered (``spot_training``'s register task) and read by every later
drift check of that version, which therefore never reloads the training data.

:meth:`DriftMonitor.check` is the check the ``drift_monitor`` DAG runs after the batch scorer
(:mod:`quant_engine.monitoring.scoring`): feature drift of a recent window against the baseline,
the logged predictions' quality on their settled labels against the holdout, the volatility
regime, one verdict, drift metrics to the alarms, and a JSON + HTML report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from quant_engine.features.bar_history import BarHistory
from quant_engine.features.offline_store import OfflineStore, check_name
from quant_engine.monitoring.alarms import Alarms, drift_alarm, drift_metrics
from quant_engine.monitoring.baseline import (
    CONSTRAINTS_FILE,
    STATISTICS_FILE,
    Baseline,
    BaselineError,
    build_baseline,
)
from quant_engine.monitoring.calibration import calibrate_baseline
from quant_engine.monitoring.concept_drift import QualityBaseline, evaluate_quality, join_labels
from quant_engine.monitoring.feature_drift import VIOLATIONS_FILE, FeatureDrift, check_drift
from quant_engine.monitoring.predictions import NoChampionError, champion, predict_proba, prediction_log
from quant_engine.monitoring.regimes import VolRegimeTracker, market_proxy_returns
from quant_engine.monitoring.report import HTML_FILE, JSON_FILE, explain, json_safe, write_report
from quant_engine.monitoring.verdict import drift_verdict
from quant_engine.online.layer import OnlineLayer, summarize_updates
from quant_engine.runs import claimed_folder
from quant_engine.storage.filesystem import FileSystem, overwrite_atomic
from quant_engine.tracking import Tracker, save_tracked_run
from quant_engine.training.dataset import load_summary, load_train_frame
from quant_engine.training.defaults import DEFAULT_MODEL_NAME
from quant_engine.training.registry import ModelRegistry, ModelVersion, parse_version
from quant_engine.validation import whole_number
from quant_engine.wfo.config import LabelConfig

if TYPE_CHECKING:
    import xgboost as xgb

log = logging.getLogger(__name__)

__all__ = [
    "NO_CHAMPION",
    "QUALITY_FILE",
    "READY",
    "WAITING",
    "DriftCheckResult",
    "DEFAULT_MIN_DRIFTED_FEATURES",
    "baseline_key",
    "label_config",
    "load_baseline",
    "record_baseline",
    "record_training_baselines",
    "track_check",
    "DriftMonitor",
    "drift_schedule",
]

QUALITY_FILE = "quality_baseline.json"
#: :meth:`DriftMonitor.readiness` statuses: a check can run; no champion to monitor yet; too few new
#: rows (or none settled) since the champion's training data.
READY, NO_CHAMPION, WAITING = "ready", "no_champion", "waiting"
#: Features that must drift together before the inputs count as drifted: one alone is the noise a
#: stationary market shows now and then (see :mod:`quant_engine.monitoring.calibration`).
DEFAULT_MIN_DRIFTED_FEATURES = 2


def baseline_key(model_name: str, version: object, file: str = "") -> str:
    """Storage key, in the registry's file system, of a version's baseline folder or one of its files."""
    check_name(model_name, "model_name")
    return "/".join(p for p in (model_name, "baselines", parse_version(version), file) if p)


def _put_json(fs: FileSystem, key: str, obj: object) -> None:
    """Replace ``key`` with ``obj`` as JSON all at once (a local rename or a single S3 put)."""
    overwrite_atomic(fs, key, json.dumps(obj, indent=2, allow_nan=False).encode())


def record_baseline(
    registry: ModelRegistry,
    version: object,
    booster: xgb.Booster,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    features: Sequence[str],
    *,
    label: str = "label",
) -> str:
    """Build and store a version's baselines: feature statistics of ``train``, quality on ``holdout``.

    When ``train`` has ``event_time`` (``quant_engine.training.dataset.load_train_frame``), the drift
    thresholds are calibrated on windows of it (:mod:`quant_engine.monitoring.calibration`).
    Deterministic in its inputs, so a rerun of the registering task rewrites the same bytes.
    Returns where the baselines were stored.
    """
    fs, model_name = registry.fs, registry.name
    features = list(features)
    if label not in holdout.columns:
        raise ValueError(f"the holdout lacks its label column {label!r}")
    baseline = build_baseline(train, features=features)
    if "event_time" in train.columns:
        baseline = calibrate_baseline(baseline, train)
    else:
        log.warning("the training rows carry no event_time: drift thresholds are not calibrated")
    quality = QualityBaseline.from_predictions(predict_proba(booster, holdout, features), holdout[label].to_numpy())
    _put_json(fs, baseline_key(model_name, version, STATISTICS_FILE), baseline.statistics)
    _put_json(fs, baseline_key(model_name, version, CONSTRAINTS_FILE), baseline.constraints)
    _put_json(fs, baseline_key(model_name, version, QUALITY_FILE), quality.to_dict())
    return f"{fs!r}/{baseline_key(model_name, version)}"


def load_baseline(registry: ModelRegistry, version: object) -> tuple[Baseline, QualityBaseline]:
    """The stored feature baseline and quality baseline of a version.

    Raises
    ------
    BaselineError
        No baseline was recorded for the version, or its files are unreadable.
    """
    fs, model_name = registry.fs, registry.name
    documents = []
    for file in (STATISTICS_FILE, CONSTRAINTS_FILE, QUALITY_FILE):
        key = baseline_key(model_name, version, file)
        stored = fs.read_versioned(key)
        if stored is None:
            raise BaselineError(
                f"{key} does not exist in {fs!r}; {model_name} {parse_version(version)} "
                "has no baseline (record_baseline writes it when the version is registered)"
            )
        try:
            documents.append(json.loads(stored[0]))
        except json.JSONDecodeError as exc:
            raise BaselineError(f"{key} in {fs!r} is not valid JSON: {exc}") from exc
    return Baseline(documents[0], documents[1]), QualityBaseline.from_dict(documents[2])


# --- the drift check -------------------------------------------------------------------------------


#: Bars of history the volatility regime needs before the window (see
#: :class:`~quant_engine.monitoring.regimes.VolRegimeTracker`'s defaults).
_VOL_HISTORY_BARS = 20 + 252
#: Features plotted in the HTML report besides the drifted ones: the largest distances.
TOP_FEATURES = 4


def label_config(record: ModelVersion) -> LabelConfig:
    """The fixed-horizon labels the version was trained with.

    The drift check settles predictions exactly as training labelled rows, so quality is measured
    on the question the model was asked. Triple-barrier models are checked on fixed labels of the
    same horizon: settling barriers needs the volatility history of each row, and the horizon's
    sign is what the model's probability is read as.
    """
    dataset = dict(record.metadata.training.get("dataset", {}))
    label = LabelConfig(
        kind="fixed", horizon=int(dataset.get("horizon", 1)), target=str(dataset.get("label_target", "excess"))
    )
    return label


def _new_rows(store: OfflineStore, record: ModelVersion) -> pd.DataFrame:
    """Stored feature rows stamped after the version's data end (what it has never seen)."""
    if store.schema is None:
        raise ValueError(f"the offline store (feature group {store.feature_group!r}) is empty; ingest data first")
    after = pd.Timestamp(record.metadata.data_end) + pd.Timedelta(1, "ns")
    return store.read(None, after).dropna(subset=list(record.metadata.features))


@dataclass(frozen=True)
class DriftCheckResult:
    """The outcome of :meth:`DriftMonitor.check`: what the verdict was and where the report lies."""

    run_id: str
    model_name: str
    model_version: str
    verdict: str
    retrain: bool
    report_dir: str
    #: What the verdict rests on, for a notification that cannot open the report: the drifted
    #: features (largest distance first) and the quality metrics that left their bounds.
    drifted_features: tuple[str, ...] = ()
    breached_metrics: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """JSON-safe (an XCom value): the tuples become lists."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def drift_schedule(model_name: str) -> str:
    """The monitoring schedule of a model's drift checks: its alarms and state are kept under this name."""
    return f"{model_name}-drift"


@dataclass(frozen=True)
class DriftMonitor:
    """What a model's drift checks read and write, handed in by the composition root.

    Parameters
    ----------
    registry : ModelRegistry
        The monitored model's registry: its champion, baselines and prediction log.
    store : OfflineStore
        The feature group the model reads.
    bars : BarHistory
        The group's stored bars, which settle the logged predictions' labels.
    alarms : Alarms
        Drift metrics and alarm state of :func:`drift_schedule` of the model.
    reports_dir : Path
        Where each check's report folder goes (``$QE_HOME/reports/drift``).
    state_dir : Path
        The schedule's own state (the volatility regime), ``$QE_HOME/monitoring/<schedule>``.
    online_updates : Path, optional
        The bridge's online layer's update log of this model (``$QE_HOME/online/<model>/updates``):
        its batch-against-adapted quality in the window goes into the report.
    tracker : Tracker, optional
        Where each check is logged in MLflow (per-feature distances, the verdict, the report);
        None: not tracked.
    """

    registry: ModelRegistry
    store: OfflineStore
    bars: BarHistory
    alarms: Alarms
    reports_dir: Path
    state_dir: Path
    online_updates: Path | None = None
    tracker: Tracker | None = None

    def _online(self, version: str, start: pd.Timestamp, end: pd.Timestamp) -> dict[str, object] | None:
        """The bridge's online layer on this version's labels settled in the window (None without any)."""
        if self.online_updates is None or not self.online_updates.is_dir():
            return None
        updates = OnlineLayer(updates_dir=self.online_updates).read_updates()
        return summarize_updates(updates, version, start, end) if not updates.empty else None

    def readiness(self, *, min_new_rows: int = 100) -> dict[str, object]:
        """Whether a drift check has something to judge, and if not, why: a readiness value, never an error.

        A check needs a champion, ``min_new_rows`` stored rows after the end of its training data,
        and some of them with settled labels: a row's label is settled once ``horizon`` later bars
        are stored, so the rows counted as matured are those with at least ``horizon`` later
        timestamps among the new rows. Until a first model is promoted there is nothing to monitor
        (``no_champion``); right after a retrain the new champion has seen every stored row
        (``waiting``). Both are states of a healthy system, for the caller to skip or wait on.

        Returns
        -------
        dict
            ``status`` (:data:`READY`, :data:`NO_CHAMPION` or :data:`WAITING`), ``reason`` (one
            sentence saying why), ``ready``, ``model_version`` (None without a champion),
            ``data_end``, ``latest``, ``new_rows``, ``matured_rows``.

        Raises
        ------
        NoChampionError
            The model is unknown: no version of it was ever registered and it is not the engine's
            own model (:data:`~quant_engine.training.defaults.DEFAULT_MODEL_NAME`), so the name is
            more likely a typo than a model still to be trained.
        """
        whole_number(min_new_rows, "min_new_rows", minimum=1)
        registry = self.registry
        promotion = registry.champion()
        if promotion is None:
            registered = len(registry.versions())
            if not registered and registry.name != DEFAULT_MODEL_NAME:
                raise NoChampionError(
                    f"model {registry.name!r} has no registered version; check the name (the engine "
                    f"trains {DEFAULT_MODEL_NAME!r}) or train and promote it first"
                )
            return {
                "status": NO_CHAMPION,
                "reason": f"model {registry.name!r} has no champion yet ({registered} version(s) registered, "
                "none promoted): nothing to monitor until spot_training promotes one",
                "ready": False,
                "model_version": None,
                "data_end": None,
                "latest": None,
                "new_rows": 0,
                "matured_rows": 0,
            }
        record = registry.get(promotion.version)
        rows = _new_rows(self.store, record)
        label = label_config(record)
        stamps = np.sort(rows["event_time"].unique())
        matured = int((rows["event_time"] <= stamps[-1 - label.horizon]).sum()) if len(stamps) > label.horizon else 0
        ready = len(rows) >= min_new_rows and matured > 0
        counted = (
            f"{len(rows)} new rows since {record.metadata.data_end} (the end of {record.name} "
            f"{record.version}'s training data), {matured} with settled labels"
        )
        return {
            "status": READY if ready else WAITING,
            "reason": counted if ready else f"{counted}; a check needs {min_new_rows} and some settled",
            "ready": ready,
            "model_version": record.version,
            "data_end": record.metadata.data_end,
            "latest": None if rows.empty else pd.Timestamp(stamps[-1]).isoformat(),
            "new_rows": len(rows),
            "matured_rows": matured,
        }

    def window(self, *, window_days: int = 60) -> tuple[pd.Timestamp, pd.Timestamp]:
        """``(start, end)``: the last ``window_days`` of stored rows, never reaching back into training data."""
        whole_number(window_days, "window_days", minimum=1, maximum=3650)
        record = champion(self.registry)
        rows = _new_rows(self.store, record)
        if rows.empty:
            raise ValueError(
                f"the offline store holds no rows after {record.metadata.data_end}, the end of "
                f"{record.name} {record.version}'s training data; ingest newer data first"
            )
        end = rows["event_time"].max()
        start = max(end - pd.Timedelta(days=window_days), rows["event_time"].min())
        return start, end

    def check(
        self,
        run_id: str,
        *,
        window_days: int = 60,
        comparison_threshold: float | None = None,
        psi_threshold: float | None = None,
        wasserstein_threshold: float | None = None,
        min_drifted_features: int = DEFAULT_MIN_DRIFTED_FEATURES,
        confidence: float = 0.99,
    ) -> DriftCheckResult:
        """Judge the champion on the last ``window_days`` of stored data and write the report.

        Feature drift: the window's feature rows against the version's stored baseline. Concept drift:
        the window's logged predictions joined with the labels settled by the latest stored row,
        against the stored holdout quality. Both, with the market's volatility regime, make the
        verdict; drift metrics go to the alarms of schedule ``<model_name>-drift``. The report goes to
        ``<reports_dir>/<run_id>/`` (``report.html`` first, ``report.json`` last, each atomic).

        Parameters
        ----------
        run_id : str
            Names the report folder; a rerun with the same id replaces the report.
        window_days : int
            Days of recent data judged (clipped at the end of the training data).
        comparison_threshold, psi_threshold, wasserstein_threshold : float, optional
            Feature-drift thresholds (see :func:`~quant_engine.monitoring.feature_drift.check_drift`);
            without ``comparison_threshold``, each feature's threshold calibrated for the window's length.
        min_drifted_features : int
            Features that must drift before the inputs count as drifted.
        confidence : float
            Level of the quality bounds.

        Returns
        -------
        DriftCheckResult
            ``retrain`` is True when the verdict is anything but ``"none"``.
        """
        registry = self.registry
        record = champion(registry)
        features = list(record.metadata.features)
        baseline, quality = load_baseline(registry, record.version)
        start, end = self.window(window_days=window_days)
        window = self.store.read(None, start, end).dropna(subset=features)
        drift = check_drift(
            window.loc[:, ["ticker", "event_time", *features]],
            baseline,
            comparison_threshold=comparison_threshold,
            psi_threshold=psi_threshold,
            wasserstein_threshold=wasserstein_threshold,
        )

        label = label_config(record)
        predictions = prediction_log(registry).read()
        predictions = predictions[
            (predictions["model_version"] == record.version) & predictions["ts"].between(start, end)
        ]
        if predictions.empty:
            raise ValueError(
                f"no logged prediction of {registry.name} {record.version} between {start} and {end}; "
                "run the batch scorer on the window first"
            )
        tickers = sorted(predictions["ticker"].unique())
        bars = self.bars.read(tickers, start, end, history_bars=_VOL_HISTORY_BARS)
        joined = join_labels(predictions, label.labels(bars), now=end)
        concept = evaluate_quality(joined, quality, confidence=confidence)

        notes: list[str] = []
        tracker = VolRegimeTracker(self.state_dir / "vol_regime.json")
        returns = market_proxy_returns(bars)
        if len(returns) >= tracker.window + tracker.history - 1:
            regime = tracker.update(returns)
        else:
            regime = None
            notes.append(
                f"volatility regime unknown: the stored bars give {len(returns)} returns, "
                f"{tracker.window + tracker.history - 1} needed"
            )
        verdict = drift_verdict(drift.features, concept, vol_regime=regime, min_drifted_features=min_drifted_features)

        alarms = self.alarms
        thresholds = drift.thresholds
        definitions = {name: drift_alarm(name, thresholds[name]) for name in drift.comparison_distances}
        for definition in definitions.values():
            alarms.put_alarm(definition)  # replacing an alarm keeps its state and history
        metrics = drift_metrics(drift)
        if metrics:
            alarms.put_metrics(metrics)
        alarm_states = {name: alarms.state(definition.name).state for name, definition in definitions.items()}

        folder = claimed_folder(self.reports_dir, run_id)
        drift.write(folder)
        retrain = verdict.kind != "none"
        document = {
            "run_id": run_id,
            "model_name": registry.name,
            "model_version": record.version,
            "window": {"start": start.isoformat(), "end": end.isoformat(), "rows": len(window)},
            "verdict": verdict.kind,
            "retraining_requested": retrain,
            "evidence": {
                **verdict.to_dict(),
                "feature_drift": {name: asdict(f) for name, f in drift.features.items()},
                "calibrated_window_days": drift.calibrated_window_days,
                "min_drifted_features": min_drifted_features,
                "quality": concept.to_dict(),
                "alarms": alarm_states,
                "online": self._online(record.version, start, end),
                "notes": [*verdict.notes, *notes],
            },
            "constraint_violations": drift.violations_document()["violations"],
        }
        document["explanation"] = explain(json_safe(document))
        plotted = list(
            dict.fromkeys(
                [
                    *drift.drifted_features,
                    *sorted(drift.comparison_distances, key=lambda n: -drift.comparison_distances[n])[:TOP_FEATURES],
                ]
            )
        )
        write_report(folder, document, baseline=baseline, window=window, features=plotted, quality=concept)
        if self.tracker is not None:
            track_check(self.tracker, document, drift.features.values(), folder)
        log.info("drift check %s of %s %s: %s", run_id, registry.name, record.version, verdict.kind)
        return DriftCheckResult(
            run_id,
            registry.name,
            record.version,
            verdict.kind,
            retrain,
            str(folder),
            drifted_features=tuple(verdict.drifted_features),
            breached_metrics=tuple(verdict.breached_metrics),
        )


def track_check(tracker: Tracker, document: dict, features: Iterable[FeatureDrift], folder: Path) -> None:
    """Log a drift check to ``tracker``: its window and thresholds, each feature's distances, the verdict
    and the report; the MLflow run is recorded beside the report (``mlflow.json``)."""
    evidence, features = document["evidence"], list(features)
    metrics: dict[str, object] = {
        "retraining_requested": document["retraining_requested"],
        "window_rows": document["window"]["rows"],
        "drifted_features": sum(f.drifted for f in features),
    }
    for feature in features:
        for measure in ("distance", "robust_distance", "psi", "wasserstein_sigma", "threshold", "drifted"):
            metrics[f"{feature.name}.{measure}"] = getattr(feature, measure)
    tracker.log_run(
        "drift",
        document["run_id"],
        name=document["run_id"],
        params={
            "model_name": document["model_name"],
            "model_version": document["model_version"],
            "window_start": document["window"]["start"],
            "window_end": document["window"]["end"],
            "min_drifted_features": evidence["min_drifted_features"],
            "calibrated_window_days": evidence["calibrated_window_days"],
        },
        metrics=metrics,
        tags={"verdict": document["verdict"], "model": f"{document['model_name']} {document['model_version']}"},
        artifacts=[folder / name for name in (HTML_FILE, JSON_FILE, VIOLATIONS_FILE) if (folder / name).is_file()],
        keep=lambda tracked: save_tracked_run(folder, tracked),
    )


def record_training_baselines(registry: ModelRegistry, version: object, training_dir: Path) -> str:
    """Record the baselines of a version just registered from a ``spot_training`` run folder.

    The feature baseline comes from the run's ``train`` channel (with its times, so thresholds are
    calibrated), the quality baseline from its holdout; the drift monitor judges the version
    against these, never against the training data again.
    """
    summary = load_summary(training_dir)
    return record_baseline(
        registry,
        version,
        registry.load_booster(version),
        load_train_frame(training_dir),
        pd.read_parquet(summary["holdout"]),
        summary["features"],
    )
