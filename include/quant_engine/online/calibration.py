"""Online recalibration of a batch model's probability: dynamic logistic regression on its margin.

Between the heavy retrains that drift triggers, the champion's *ranking* of rows usually stays useful
while its *calibration* goes stale: a concept shift weakens or flips the edge, and the probability
it gives keeps the old confidence. Recalibrating online fixes that at the cost of two numbers:

    p_adapted = sigmoid(a * logit(p_batch) + b)

Platt's scaling (Platt 1999), with ``(a, b)`` tracked as the state of a *dynamic* logistic
regression (McCormick, Raftery, Madigan and Burd 2012, "Dynamic logistic regression and dynamic
model averaging for binary classification", Biometrics 68): a Gaussian belief over ``theta = (a, b)``,
updated from each settled label by one Newton step of the Laplace approximation (exact for this
Gaussian-prior, one-observation problem up to the linearisation), after *forgetting*: before each
update the information about ``theta`` is discounted by a factor ``lambda`` and the prior's
information fills the rest (stabilised forgetting, Kulhavy and Zarrop 1993), so

* an old label counts ``lambda ** age`` of a new one (``1 / (1 - lambda)`` labels of memory), which
  lets the map follow a shift;
* without labels the belief returns to the prior: identity calibration (``a = 1, b = 0``), the
  batch model untouched; and the covariance never grows without bound, whatever the inputs.

Each update is O(1): 2 x 2 matrices in plain floats (bit-for-bit reproducible, so a restored state
gives the same outputs as one that never stopped). Why this and not river's online models: river's
``LogisticRegression`` is SGD with a learning rate to tune and no forgetting toward a prior, so it
neither starts at the batch model nor returns to it; the dynamic model has one interpretable knob.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from quant_engine.validation import real_number

__all__ = ["DynamicCalibration", "clip_probability", "logit", "sigmoid"]

#: Probabilities are kept this far from 0 and 1 before ``logit`` (a model's 0.0 or 1.0 stays finite).
EPS = 1e-6


def clip_probability(p: float) -> float:
    return min(max(float(p), EPS), 1.0 - EPS)


def logit(p: float) -> float:
    p = clip_probability(p)
    return math.log(p / (1.0 - p))


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass
class DynamicCalibration:
    """``p -> sigmoid(a * logit(p) + b)`` with ``(a, b)`` learnt online, forgetting toward the identity.

    Parameters
    ----------
    forgetting : float
        ``lambda`` in [0.5, 1]: the weight of the past at each update (0.995: about 200 labels of memory).
    prior_sd_slope, prior_sd_intercept : float
        Standard deviations of the prior belief around ``a = 1`` and ``b = 0``: how far a few labels
        may move the map (the prior is also where the belief returns without labels).

    Examples
    --------
    >>> calibration = DynamicCalibration()
    >>> calibration.predict(0.6)  # the identity before any label
    0.6
    >>> for _ in range(200):  # the model says 0.6 but is right only 40 % of the time
    ...     for label in (1, 0, 0, 1, 0):
    ...         calibration.update(0.6, label)
    >>> round(calibration.predict(0.6), 2) < 0.5
    True
    """

    forgetting: float = 0.995
    prior_sd_slope: float = 2.0
    prior_sd_intercept: float = 0.2

    def __post_init__(self) -> None:
        self.forgetting = real_number(self.forgetting, "forgetting", minimum=0.5, maximum=1.0)
        self.prior_sd_slope = real_number(self.prior_sd_slope, "prior_sd_slope", minimum=0, above=True)
        self.prior_sd_intercept = real_number(self.prior_sd_intercept, "prior_sd_intercept", minimum=0, above=True)
        #: Prior information (inverse covariance, diagonal) and mean.
        self._p0 = (1.0 / self.prior_sd_slope**2, 1.0 / self.prior_sd_intercept**2)
        self.reset()

    def reset(self) -> None:
        """Back to the prior: the identity map, the prior's covariance."""
        self.a, self.b = 1.0, 0.0
        # covariance [[c11, c12], [c12, c22]]
        self.c11, self.c12, self.c22 = 1.0 / self._p0[0], 0.0, 1.0 / self._p0[1]
        self.updates = 0

    def predict(self, p: float) -> float:
        """The recalibrated probability of the batch model's ``p``."""
        if self.a == 1.0 and self.b == 0.0:
            return float(p)
        return sigmoid(self.a * logit(p) + self.b)

    def update(self, p: float, label: int) -> None:
        """Learn from one settled label of a prediction the batch model gave as ``p``."""
        if label not in (0, 1):
            raise ValueError(f"label={label!r} must be 0 or 1")
        # forgetting: information lambda * I + (1 - lambda) * I0, mean the matching blend toward (1, 0)
        lam = self.forgetting
        i11, i12, i22 = _inverse(self.c11, self.c12, self.c22)
        j11, j12, j22 = lam * i11 + (1 - lam) * self._p0[0], lam * i12, lam * i22 + (1 - lam) * self._p0[1]
        h1 = lam * (i11 * self.a + i12 * self.b) + (1 - lam) * self._p0[0] * 1.0
        h2 = lam * (i12 * self.a + i22 * self.b)
        r11, r12, r22 = _inverse(j11, j12, j22)
        a, b = r11 * h1 + r12 * h2, r12 * h1 + r22 * h2
        # one observation: Laplace / Newton step (Sherman-Morrison on the 2 x 2 covariance)
        x1, x2 = logit(p), 1.0
        mu = sigmoid(a * x1 + b * x2)
        w = mu * (1.0 - mu)
        rx1, rx2 = r11 * x1 + r12 * x2, r12 * x1 + r22 * x2
        denominator = 1.0 + w * (x1 * rx1 + x2 * rx2)
        c11, c12, c22 = (
            r11 - w * rx1 * rx1 / denominator,
            r12 - w * rx1 * rx2 / denominator,
            r22 - w * rx2 * rx2 / denominator,
        )
        residual = label - mu
        self.a = a + (c11 * x1 + c12 * x2) * residual
        self.b = b + (c12 * x1 + c22 * x2) * residual
        self.c11, self.c12, self.c22 = c11, c12, c22
        self.updates += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "forgetting": self.forgetting,
            "prior_sd_slope": self.prior_sd_slope,
            "prior_sd_intercept": self.prior_sd_intercept,
            "a": self.a,
            "b": self.b,
            "covariance": [self.c11, self.c12, self.c22],
            "updates": self.updates,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DynamicCalibration:
        calibration = cls(data["forgetting"], data["prior_sd_slope"], data["prior_sd_intercept"])
        calibration.a, calibration.b = float(data["a"]), float(data["b"])
        calibration.c11, calibration.c12, calibration.c22 = (float(v) for v in data["covariance"])
        calibration.updates = int(data["updates"])
        return calibration


def _inverse(m11: float, m12: float, m22: float) -> tuple[float, float, float]:
    """The inverse of the symmetric positive-definite 2 x 2 matrix ``[[m11, m12], [m12, m22]]``."""
    det = m11 * m22 - m12 * m12
    return m22 / det, -m12 / det, m11 / det
