"""The drift verdict: did the inputs move, did the model stop working, both, or neither?

The two questions need different evidence and lead to different actions. Feature drift (the
inputs' distribution moved) with quality intact says the model still works on the new inputs:
watch, maybe refresh the baseline. Concept drift (quality fell while the inputs look as before)
says the relationship the model learned has changed: retrain, and look at the market. Both at
once is the ambiguous case: the model may be failing because it extrapolates, or because the
world changed. The verdict names which, with the evidence behind it, so an alarm and a human can
act on the same facts.

Inputs are plain on purpose: the feature side is a mapping ``feature -> evidence``, where the
evidence is either a bool (drifted or not) or anything with a ``drifted`` flag and an optional
``distance`` (a mapping with those keys, or an object with those attributes, such as
:class:`quant_engine.monitoring.feature_drift.FeatureDrift`, so ``DriftReport.features`` can be
passed as is). The concept side is a
:class:`~quant_engine.monitoring.concept_drift.ConceptDriftReport`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from quant_engine.monitoring.concept_drift import ConceptDriftReport
from quant_engine.monitoring.regimes import VolRegimeState
from quant_engine.validation import is_whole

__all__ = ["VERDICTS", "FeatureEvidence", "Verdict", "drift_verdict"]

VerdictKind = Literal["none", "feature_drift", "concept_drift", "both"]
VERDICTS: tuple[str, ...] = ("none", "feature_drift", "concept_drift", "both")
#: What counts as a drifted flag: Python and numpy booleans, and the integers 0 and 1.
_FLAGS = (bool, np.bool_, numbers.Integral)


@dataclass(frozen=True)
class FeatureEvidence:
    """One feature's drift call and, when known, the distance it was judged by."""

    drifted: bool
    distance: float | None = None


def _feature_evidence(name: str, value: object) -> FeatureEvidence:
    """Read one feature's evidence from a bool, a mapping or an object with ``drifted``."""
    if isinstance(value, _FLAGS) and value in (0, 1):
        return FeatureEvidence(bool(value))
    if isinstance(value, Mapping):
        drifted, distance = value.get("drifted"), value.get("distance")
    elif hasattr(value, "drifted"):
        drifted, distance = value.drifted, getattr(value, "distance", None)
    else:
        raise TypeError(
            f"feature_drift[{name!r}]={value!r}: expected a bool, a mapping with 'drifted' "
            "(and optionally 'distance'), or an object with a 'drifted' attribute"
        )
    if not isinstance(drifted, _FLAGS) or drifted not in (0, 1):
        raise ValueError(f"feature_drift[{name!r}] drifted={drifted!r} must be True or False")
    if distance is not None:
        if isinstance(distance, bool) or not isinstance(distance, numbers.Real) or not math.isfinite(distance):
            raise ValueError(f"feature_drift[{name!r}] distance={distance!r} must be a finite number or None")
        distance = float(distance)
    return FeatureEvidence(bool(drifted), distance)


@dataclass(frozen=True)
class Verdict:
    """What drifted, and the evidence.

    Attributes
    ----------
    kind : {"none", "feature_drift", "concept_drift", "both"}
    drifted_features : dict of str to float or None
        Features called drifted, with their distances, largest distance first.
    feature_distances : dict of str to float or None
        Every feature's distance, drifted or not.
    breached_metrics : dict of str to dict
        Quality metrics that left their bounds: value, baseline and the bounds of the difference.
    detector_alarms : dict of str to list of str
        Streaming detector alarms (ISO times); evidence, not part of the call.
    vol_regime : dict or None
        The market's volatility regime when the verdict was made.
    n_settled, n_pending : int
        Predictions the quality side scored, and those still waiting for labels.
    notes : list of str
        Caveats a reader should see: no feature evidence, drifts below ``min_drifted_features``,
        detector alarms without a breached metric.
    """

    kind: VerdictKind
    drifted_features: dict[str, float | None]
    feature_distances: dict[str, float | None]
    breached_metrics: dict[str, dict[str, float]]
    detector_alarms: dict[str, list[str]]
    vol_regime: dict[str, Any] | None
    n_settled: int
    n_pending: int
    notes: list[str] = field(default_factory=list)

    @property
    def feature_drift(self) -> bool:
        """Whether the inputs were called drifted ("feature_drift" or "both")."""
        return self.kind in ("feature_drift", "both")

    @property
    def concept_drift(self) -> bool:
        """Whether quality left its bounds ("concept_drift" or "both")."""
        return self.kind in ("concept_drift", "both")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for reports and alarm payloads."""
        return {
            "verdict": self.kind,
            "drifted_features": self.drifted_features,
            "feature_distances": self.feature_distances,
            "breached_metrics": self.breached_metrics,
            "detector_alarms": self.detector_alarms,
            "vol_regime": self.vol_regime,
            "n_settled": self.n_settled,
            "n_pending": self.n_pending,
            "notes": self.notes,
        }


def drift_verdict(
    feature_drift: Mapping[str, object],
    concept: ConceptDriftReport,
    *,
    vol_regime: VolRegimeState | None = None,
    min_drifted_features: int = 1,
) -> Verdict:
    """Combine the feature-drift and concept-drift evidence into one verdict.

    Parameters
    ----------
    feature_drift : mapping of str to evidence
        Per monitored feature: a bool, a mapping with ``drifted`` (and optionally ``distance``),
        or an object with those attributes (``DriftReport.features``).
    concept : ConceptDriftReport
        From :func:`quant_engine.monitoring.concept_drift.evaluate_quality`; concept drift is
        called when any quality metric breached its bound (``concept.drifted``).
    vol_regime : VolRegimeState, optional
        The volatility regime at the time, recorded as evidence.
    min_drifted_features : int, default 1
        How many features must drift before the inputs count as drifted (>= 1).

    Returns
    -------
    Verdict

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from quant_engine.monitoring.concept_drift import QualityBaseline, evaluate_quality, join_labels
    >>> rng = np.random.default_rng(0)
    >>> ts = pd.date_range("2024-01-01", periods=4000, freq="h", tz="UTC")
    >>> label = rng.integers(0, 2, 4000)
    >>> prob = np.where(rng.uniform(size=4000) < 0.6, label, 1 - label) * 0.2 + 0.4  # right 60% of the time
    >>> baseline = QualityBaseline.from_predictions(prob, label)
    >>> preds = pd.DataFrame({"ticker": "A", "ts": ts, "prob": 1 - prob, "model_version": "v1", "source": "batch"})
    >>> labels = pd.DataFrame({"ticker": "A", "ts": ts, "t1": ts + pd.Timedelta(hours=1), "label": label})
    >>> report = evaluate_quality(join_labels(preds, labels, now=ts[-1] + pd.Timedelta(hours=1)), baseline)
    >>> drift_verdict({"x": {"drifted": False, "distance": 0.02}}, report).kind
    'concept_drift'
    """
    if not isinstance(feature_drift, Mapping):
        raise TypeError(f"feature_drift must be a mapping of feature -> evidence, got {type(feature_drift).__name__}")
    if not isinstance(concept, ConceptDriftReport):
        raise TypeError(f"concept must be a ConceptDriftReport, got {type(concept).__name__}")
    if vol_regime is not None and not isinstance(vol_regime, VolRegimeState):
        raise TypeError(f"vol_regime must be a VolRegimeState or None, got {type(vol_regime).__name__}")
    if not is_whole(min_drifted_features) or min_drifted_features < 1:
        raise ValueError(f"min_drifted_features={min_drifted_features!r} must be an integer >= 1")

    evidence = {str(name): _feature_evidence(str(name), value) for name, value in feature_drift.items()}
    drifted = sorted(
        ((n, e.distance) for n, e in evidence.items() if e.drifted),
        key=lambda item: -item[1] if item[1] is not None else math.inf,
    )
    inputs_moved = len(drifted) >= min_drifted_features
    quality_fell = concept.drifted
    kinds: dict[tuple[bool, bool], VerdictKind] = {
        (False, False): "none",
        (True, False): "feature_drift",
        (False, True): "concept_drift",
        (True, True): "both",
    }
    kind = kinds[(inputs_moved, quality_fell)]

    notes = []
    if not evidence:
        notes.append("no feature evidence was given: feature drift cannot be called")
    if 0 < len(drifted) < min_drifted_features:
        notes.append(f"{len(drifted)} feature(s) drifted, below min_drifted_features={min_drifted_features}")
    alarms = {name: [t.isoformat() for t in times] for name, times in concept.detector_alarms.items()}
    if any(alarms.values()) and not quality_fell:
        notes.append("streaming detectors alarmed but no quality metric left its bound: an early warning only")
    return Verdict(
        kind=kind,
        drifted_features=dict(drifted),
        feature_distances={n: e.distance for n, e in evidence.items()},
        breached_metrics={
            name: {
                "value": check.value,
                "baseline": check.baseline,
                "diff_lower": check.diff_lower,
                "diff_upper": check.diff_upper,
                "tolerance": check.tolerance,
            }
            for name, check in concept.checks.items()
            if check.breached
        },
        detector_alarms=alarms,
        vol_regime=None if vol_regime is None else vol_regime.to_dict(),
        n_settled=concept.n_settled,
        n_pending=concept.n_pending,
        notes=notes,
    )
