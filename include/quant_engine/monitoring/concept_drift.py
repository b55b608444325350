"""Concept drift: is the model still right as often as it was, now that the answers are in?

Feature drift says the inputs moved; it cannot say whether the model still works. Concept drift
is judged on outcomes, so it needs the model's predictions and the labels that settle them, and
a label is only known once its ``t1`` has passed. The predictions come from the prediction log
(:class:`~quant_engine.monitoring.predictions.PredictionLog`); this module judges them:

* :func:`join_labels`: predictions merged with the labels settled by ``now`` (as SageMaker
  ModelQualityMonitor merges ground truth); predictions still waiting for their label are left
  out and counted, never scored against a guess.
* :func:`evaluate_quality`: hit rate, log-loss and Brier score of the settled predictions against
  the model's holdout values (:class:`QualityBaseline`) with confidence bounds, plus streaming
  detectors run over the per-prediction error stream.

Bounds (all at ``confidence``, two-sided, compared one-sidedly: only *worse* quality is drift):

* hit rate: Wilson score intervals for the window and the baseline, combined into Newcombe's
  hybrid score interval for the difference ``window - baseline`` (Newcombe 1998, method 10);
* log-loss and Brier: the mean of per-prediction losses with a normal (CLT) interval,
  ``diff +- z * sqrt(s_w^2 / n_w + s_b^2 / n_b)``, the baseline's standard deviation and count
  coming from the holdout.

A metric *breaches* when the whole interval of the difference lies beyond ``tolerance`` on the
worse side. Predictions are treated as independent; with 1-bar labels rows of different times do
not overlap, while rows of one time share that bar's market, which is why the test data use excess
(cross-sectionally demeaned) labels and why ``tolerance`` exists: non-sampling variation such as a
different mix of market regimes moves the metrics too, and that alone is not drift.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from quant_engine.monitoring.detectors import ADWIN, PageHinkley
from quant_engine.monitoring.predictions import PredictionLog
from quant_engine.timeutil import utc_timestamp
from quant_engine.validation import is_real, is_whole, require_columns, utc_column

__all__ = [
    "ConceptDriftReport",
    "LabelJoin",
    "MetricCheck",
    "QualityBaseline",
    "default_detectors",
    "evaluate_quality",
    "join_labels",
    "quality_metrics",
    "rolling_quality",
]

#: Probabilities are clipped this far from 0 and 1 before log-loss, as scikit-learn does, so one
#: confident miss costs a large but finite loss.
PROB_EPSILON = 1e-15
METRICS: tuple[str, ...] = ("hit_rate", "log_loss", "brier")
#: Metrics for which a larger value is better; the others are losses.
_HIGHER_IS_BETTER = {"hit_rate": True, "log_loss": False, "brier": False}
#: Default ``tolerance`` per metric: how much worse than the baseline a metric must be, beyond its
#: bound, before it counts. 1 point of hit rate; log-loss and Brier 0.5% of a coin flip's loss.
DEFAULT_TOLERANCES: dict[str, float] = {"hit_rate": 0.01, "log_loss": 0.005 * math.log(2), "brier": 0.005 * 0.25}


def _check_confidence(confidence: object) -> float:
    if not is_real(confidence) or not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must be a number in (0, 1)")
    return float(confidence)


def _check_probabilities(prob: np.ndarray, label: np.ndarray) -> None:
    if prob.shape != label.shape or prob.ndim != 1:
        raise ValueError(f"prob and label must be 1-d arrays of one length, got shapes {prob.shape} and {label.shape}")
    if not (np.isfinite(prob) & (prob >= 0) & (prob <= 1)).all():
        raise ValueError("prob must hold finite probabilities in [0, 1]")
    if not np.isin(label, (0, 1)).all():
        raise ValueError("label must hold only 0 and 1")


# --- joining settled labels ----------------------------------------------------------------------


@dataclass(frozen=True)
class LabelJoin:
    """Predictions with their settled labels, and how many are still waiting.

    Attributes
    ----------
    frame : DataFrame
        ``ticker, ts, prob, model_version, source, t1, label`` for predictions whose label settled
        at or before ``now``, sorted by ``(t1, ts, ticker)``: the order their errors became known.
    now : Timestamp
        The as-of cutoff.
    n_pending : int
        Predictions made by ``now`` whose label was not known at ``now`` (left out).
    """

    frame: pd.DataFrame
    now: pd.Timestamp
    n_pending: int


def join_labels(predictions: pd.DataFrame, labels: pd.DataFrame, *, now: object) -> LabelJoin:
    """Merge predictions with the labels known at ``now``.

    Parameters
    ----------
    predictions : DataFrame
        Rows in :data:`PREDICTION_COLUMNS` (``PredictionLog.read()``).
    labels : DataFrame
        ``ticker, ts, t1, label`` (``quant_engine.wfo.labels``): ``label`` in {0, 1}, ``t1`` the
        time the outcome is known.
    now : timestamp
        Tz-aware cutoff: a label counts only if ``t1 <= now``; predictions after ``now`` are ignored.

    Returns
    -------
    LabelJoin

    Examples
    --------
    >>> import pandas as pd
    >>> ts = pd.date_range("2024-01-01 21:00", periods=3, freq="D", tz="UTC")
    >>> preds = pd.DataFrame({"ticker": "A", "ts": ts, "prob": 0.6, "model_version": "v1", "source": "batch"})
    >>> labels = pd.DataFrame({"ticker": "A", "ts": ts, "t1": ts + pd.Timedelta(days=1), "label": [1, 0, 1]})
    >>> joined = join_labels(preds, labels, now="2024-01-03 21:00Z")
    >>> len(joined.frame), joined.n_pending
    (2, 1)
    """
    cutoff = utc_timestamp(now, "now")
    preds = PredictionLog.validate(predictions)
    labels = require_columns(labels, ("ticker", "ts", "t1", "label"), "labels")
    known = pd.DataFrame(
        {
            "ticker": labels["ticker"].astype(str),
            "ts": utc_column(labels, "ts", "labels"),
            "t1": utc_column(labels, "t1", "labels"),
            "label": labels["label"],
        }
    )
    if not known["label"].isin((0, 1)).all():
        raise ValueError("labels' label must hold only 0 and 1")
    if known.duplicated(["ticker", "ts"]).any():
        raise ValueError("labels hold more than one row per (ticker, ts)")
    known = known[known["t1"] <= cutoff]
    preds = preds[preds["ts"] <= cutoff]
    merged = preds.merge(known, on=["ticker", "ts"], how="left", validate="many_to_one")
    settled = merged["t1"].notna()
    frame = merged[settled].astype({"label": "int8"})
    frame = frame.sort_values(["t1", "ts", "ticker"], kind="stable").reset_index(drop=True)
    return LabelJoin(frame=frame, now=cutoff, n_pending=int((~settled).sum()))


# --- quality metrics ----------------------------------------------------------------------------


def _losses(prob: np.ndarray, label: np.ndarray) -> dict[str, np.ndarray]:
    """Per-prediction hit (1/0), log-loss and squared error."""
    clipped = np.clip(prob, PROB_EPSILON, 1 - PROB_EPSILON)
    return {
        "hit_rate": ((prob > 0.5) == (label == 1)).astype(np.float64),
        "log_loss": -(label * np.log(clipped) + (1 - label) * np.log1p(-clipped)),
        "brier": (prob - label) ** 2,
    }


def quality_metrics(prob: Sequence[float] | np.ndarray, label: Sequence[int] | np.ndarray) -> dict[str, float]:
    """Hit rate (``prob > 0.5`` called 1), mean log-loss and Brier score, with the count.

    Examples
    --------
    >>> quality_metrics([0.9, 0.2, 0.6], [1, 0, 0])["hit_rate"]
    0.6666666666666666
    """
    prob, label = np.asarray(prob, dtype=np.float64), np.asarray(label)
    _check_probabilities(prob, label)
    if prob.size == 0:
        raise ValueError("quality metrics need at least one prediction")
    return {"n": int(prob.size), **{name: float(v.mean()) for name, v in _losses(prob, label).items()}}


@dataclass(frozen=True)
class QualityBaseline:
    """The model's quality on its holdout: the values the live window is compared with.

    Parameters
    ----------
    n : int
        Holdout predictions.
    hit_rate, log_loss, brier : float
        Holdout means.
    log_loss_std, brier_std : float
        Sample standard deviations (ddof=1) of the per-prediction losses, for the bounds.
    """

    n: int
    hit_rate: float
    log_loss: float
    brier: float
    log_loss_std: float
    brier_std: float

    def __post_init__(self) -> None:
        if not is_whole(self.n) or self.n < 2:
            raise ValueError(f"QualityBaseline n={self.n!r} must be an integer >= 2")
        for name in ("hit_rate", "log_loss", "brier", "log_loss_std", "brier_std"):
            value = getattr(self, name)
            if not (is_real(value) and math.isfinite(value) and value >= 0):
                raise ValueError(f"QualityBaseline {name}={value!r} must be a finite number >= 0")
        if not self.hit_rate <= 1:
            raise ValueError(f"QualityBaseline hit_rate={self.hit_rate!r} must be in [0, 1]")

    @classmethod
    def from_predictions(cls, prob: Sequence[float] | np.ndarray, label: Sequence[int] | np.ndarray) -> QualityBaseline:
        """The baseline of holdout probabilities ``prob`` and their labels."""
        prob, label = np.asarray(prob, dtype=np.float64), np.asarray(label)
        _check_probabilities(prob, label)
        if prob.size < 2:
            raise ValueError(f"a quality baseline needs at least 2 holdout predictions, got {prob.size}")
        losses = _losses(prob, label)
        return cls(
            n=int(prob.size),
            hit_rate=float(losses["hit_rate"].mean()),
            log_loss=float(losses["log_loss"].mean()),
            brier=float(losses["brier"].mean()),
            log_loss_std=float(losses["log_loss"].std(ddof=1)),
            brier_std=float(losses["brier"].std(ddof=1)),
        )

    def to_dict(self) -> dict[str, float]:
        """JSON-safe form, to store next to the model."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QualityBaseline:
        """The baseline stored by :meth:`to_dict`."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def _wilson(successes: float, n: int, z: float) -> tuple[float, float]:
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@dataclass(frozen=True)
class MetricCheck:
    """One quality metric of the window against the baseline.

    ``lower``/``upper`` bound the window's value; ``diff_lower``/``diff_upper`` bound
    ``value - baseline``. ``breached`` when that interval lies wholly beyond ``tolerance`` on the
    worse side.
    """

    name: str
    value: float
    baseline: float
    lower: float
    upper: float
    diff_lower: float
    diff_upper: float
    tolerance: float
    breached: bool


def _check_metric(name: str, values: np.ndarray, baseline: QualityBaseline, z: float, tolerance: float) -> MetricCheck:
    n = values.size
    value = float(values.mean())
    base = float(getattr(baseline, name))
    if name == "hit_rate":
        lower, upper = _wilson(values.sum(), n, z)
        b_lower, b_upper = _wilson(base * baseline.n, baseline.n, z)
        diff = value - base
        diff_lower = diff - math.sqrt((value - lower) ** 2 + (b_upper - base) ** 2)
        diff_upper = diff + math.sqrt((upper - value) ** 2 + (base - b_lower) ** 2)
    else:
        se = float(values.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
        lower, upper = value - z * se, value + z * se
        se_diff = math.sqrt(se**2 + (getattr(baseline, f"{name}_std") ** 2) / baseline.n)
        diff_lower, diff_upper = value - base - z * se_diff, value - base + z * se_diff
    breached = diff_upper < -tolerance if _HIGHER_IS_BETTER[name] else diff_lower > tolerance
    return MetricCheck(name, value, base, lower, upper, diff_lower, diff_upper, tolerance, bool(breached))


def default_detectors() -> dict[str, ADWIN | PageHinkley]:
    """The detectors :func:`evaluate_quality` runs when given none, fed the 0/1 error stream.

    ADWIN at ``delta=0.002`` and Page-Hinkley at ``delta=0.05, threshold=50``. They are for
    abrupt breaks (an error rate jumping by 0.2 or more shows within a few hundred predictions);
    slow or small changes are the bounds' job. On the synthetic market's error streams (about
    18,000 hourly predictions of 10 tickers) neither alarmed on 12 stationary seeds, nor on a
    flipped edge, which moves the error rate by only ~2 points; Page-Hinkley at ``threshold=25``
    alarmed on half the stationary seeds.
    """
    return {"adwin": ADWIN(delta=0.002), "page_hinkley": PageHinkley(delta=0.05, threshold=50.0)}


@dataclass(frozen=True)
class ConceptDriftReport:
    """Quality of the settled predictions against the baseline, and what the detectors saw.

    Attributes
    ----------
    now : Timestamp
        The as-of cutoff of the label join.
    n_settled, n_pending : int
        Predictions scored, and predictions left out because their label was not yet known.
    confidence : float
        Level of every interval.
    checks : dict of str to MetricCheck
        One per metric in :data:`METRICS`.
    detector_alarms : dict of str to list of Timestamp
        For each detector, the ``t1`` of the predictions at which it alarmed (empty: none).
    """

    now: pd.Timestamp
    n_settled: int
    n_pending: int
    confidence: float
    checks: dict[str, MetricCheck]
    detector_alarms: dict[str, list[pd.Timestamp]] = field(default_factory=dict)

    @property
    def breached_metrics(self) -> list[str]:
        """Metrics significantly worse than the baseline by more than their tolerance."""
        return [name for name, check in self.checks.items() if check.breached]

    @property
    def drifted(self) -> bool:
        """Whether quality left its bounds: the concept-drift call. Detector alarms are evidence only."""
        return bool(self.breached_metrics)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, timestamps as ISO strings."""
        return {
            "now": self.now.isoformat(),
            "n_settled": self.n_settled,
            "n_pending": self.n_pending,
            "confidence": self.confidence,
            "checks": {name: asdict(check) for name, check in self.checks.items()},
            "breached_metrics": self.breached_metrics,
            "detector_alarms": {name: [t.isoformat() for t in times] for name, times in self.detector_alarms.items()},
        }


def evaluate_quality(
    joined: LabelJoin,
    baseline: QualityBaseline,
    *,
    confidence: float = 0.99,
    tolerances: Mapping[str, float] | None = None,
    detectors: Mapping[str, ADWIN | PageHinkley] | None = None,
) -> ConceptDriftReport:
    """Score the settled predictions and compare them with the holdout baseline.

    Parameters
    ----------
    joined : LabelJoin
        From :func:`join_labels`; its rows are scored in the order their labels settled.
    baseline : QualityBaseline
        The model's holdout quality.
    confidence : float, default 0.99
        Level of the two-sided intervals (see the module docstring for their formulas).
    tolerances : mapping, optional
        Per-metric margins overriding :data:`DEFAULT_TOLERANCES` (each >= 0).
    detectors : mapping of str to detector, optional
        Streaming detectors fed each settled prediction's 0/1 error (1 = wrong side of 0.5), in
        settling order. Default :func:`default_detectors`. They are updated in place.

    Returns
    -------
    ConceptDriftReport

    Raises
    ------
    ValueError
        No settled prediction, a bad confidence or tolerance.
    """
    if not isinstance(joined, LabelJoin):
        raise TypeError(f"joined must be a LabelJoin from join_labels, got {type(joined).__name__}")
    if not isinstance(baseline, QualityBaseline):
        raise TypeError(f"baseline must be a QualityBaseline, got {type(baseline).__name__}")
    confidence = _check_confidence(confidence)
    margins = dict(DEFAULT_TOLERANCES)
    for name, value in (tolerances or {}).items():
        if name not in METRICS:
            raise ValueError(f"tolerances has unknown metric {name!r}; use {', '.join(METRICS)}")
        if not is_real(value) or not math.isfinite(value) or value < 0:
            raise ValueError(f"tolerances[{name!r}]={value!r} must be a finite number >= 0")
        margins[name] = float(value)
    frame = joined.frame
    if frame.empty:
        raise ValueError(
            f"no prediction has a label settled by {joined.now} ({joined.n_pending} pending); nothing to evaluate"
        )
    prob, label = frame["prob"].to_numpy(np.float64), frame["label"].to_numpy()
    losses = _losses(prob, label)
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    checks = {name: _check_metric(name, losses[name], baseline, z, margins[name]) for name in METRICS}

    detectors = default_detectors() if detectors is None else detectors
    errors = 1.0 - losses["hit_rate"]
    settled_at = frame["t1"].tolist()
    alarms: dict[str, list[pd.Timestamp]] = {}
    for name, detector in detectors.items():
        alarms[name] = [settled_at[i] for i, e in enumerate(errors) if detector.update(e).drift_detected]
    return ConceptDriftReport(
        now=joined.now,
        n_settled=len(frame),
        n_pending=joined.n_pending,
        confidence=confidence,
        checks=checks,
        detector_alarms=alarms,
    )


def rolling_quality(joined: LabelJoin, window: int, *, confidence: float = 0.99) -> pd.DataFrame:
    """Hit rate, log-loss and Brier over the last ``window`` settled predictions, at each settle time.

    Returns
    -------
    DataFrame
        ``t1, n, hit_rate, hit_rate_lower, hit_rate_upper, log_loss, brier``: one row per distinct
        ``t1`` (the values after all of that time's predictions settled); ``n`` is the predictions
        in the window (< ``window`` at the start) and the hit-rate bounds are its Wilson interval.
    """
    if not is_whole(window) or window < 1:
        raise ValueError(f"window={window!r} must be an integer >= 1")
    z = float(stats.norm.ppf(0.5 + _check_confidence(confidence) / 2))
    frame = joined.frame
    losses = _losses(frame["prob"].to_numpy(np.float64), frame["label"].to_numpy())
    rolled = pd.DataFrame(losses).rolling(int(window), min_periods=1).mean()
    n = np.minimum(np.arange(1, len(frame) + 1), int(window))
    p = rolled["hit_rate"].to_numpy()
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    rolled.insert(1, "hit_rate_lower", centre - half)
    rolled.insert(2, "hit_rate_upper", centre + half)
    rolled.insert(0, "n", n)
    rolled.insert(0, "t1", frame["t1"].to_numpy())
    return rolled.groupby("t1", sort=True).last().reset_index()
