"""DynamicCalibration: the update against an independent matrix implementation, its bounds, what it learns."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant_engine.online.calibration import DynamicCalibration, logit, sigmoid


def oracle_update(theta, cov, p, y, lam, prior_mean, prior_info):  # noqa: ANN001, ANN201
    """Stabilised forgetting then one Newton step of the Laplace approximation, with numpy's linear algebra."""
    info = lam * np.linalg.inv(cov) + (1 - lam) * prior_info
    mean = np.linalg.solve(info, lam * np.linalg.inv(cov) @ theta + (1 - lam) * prior_info @ prior_mean)
    x = np.array([logit(p), 1.0])
    mu = 1 / (1 + np.exp(-x @ mean))
    posterior = np.linalg.inv(info + mu * (1 - mu) * np.outer(x, x))
    return mean + posterior @ x * (y - mu), posterior


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.tuples(st.floats(0.01, 0.99), st.integers(0, 1)), min_size=1, max_size=40),
    lam=st.floats(0.5, 1.0),
    sd_a=st.floats(0.1, 5.0),
    sd_b=st.floats(0.05, 2.0),
)
def test_each_update_is_the_laplace_step_after_stabilised_forgetting(steps, lam, sd_a, sd_b) -> None:
    calibration = DynamicCalibration(lam, sd_a, sd_b)
    theta, cov = np.array([1.0, 0.0]), np.diag([sd_a**2, sd_b**2])
    prior_info = np.diag([1 / sd_a**2, 1 / sd_b**2])
    for p, y in steps:
        calibration.update(p, y)
        theta, cov = oracle_update(theta, cov, p, y, lam, np.array([1.0, 0.0]), prior_info)
    assert (calibration.a, calibration.b) == pytest.approx(tuple(theta), rel=1e-7, abs=1e-9)
    assert [calibration.c11, calibration.c12, calibration.c22] == pytest.approx(
        [cov[0, 0], cov[0, 1], cov[1, 1]], rel=1e-7, abs=1e-12
    )
    # the belief never grows past the prior (forgetting is toward it), and stays a covariance
    assert calibration.c11 <= sd_a**2 * (1 + 1e-9) and calibration.c22 <= sd_b**2 * (1 + 1e-9)
    assert calibration.c11 * calibration.c22 - calibration.c12**2 > 0
    assert 0 < calibration.predict(0.5) < 1


def test_identity_until_it_learns_and_a_flipped_edge_is_learnt() -> None:
    calibration = DynamicCalibration()
    assert calibration.predict(0.63) == 0.63
    rng = np.random.default_rng(3)
    for _ in range(3000):  # the model's probabilities now mean the opposite
        p = float(rng.uniform(0.35, 0.65))
        calibration.update(p, int(rng.random() < 1 - p))
    assert calibration.a < 0 and calibration.predict(0.62) < 0.5 < calibration.predict(0.38)


def test_calibrated_inputs_leave_the_map_near_the_identity() -> None:
    calibration = DynamicCalibration()
    rng = np.random.default_rng(4)
    for _ in range(3000):
        p = float(rng.uniform(0.3, 0.7))
        calibration.update(p, int(rng.random() < p))
    assert abs(calibration.predict(0.6) - 0.6) < 0.04 and abs(calibration.predict(0.4) - 0.4) < 0.04


def test_state_round_trips_exactly_and_bad_settings_are_named() -> None:
    calibration = DynamicCalibration(0.97)
    for p, y in [(0.6, 1), (0.55, 0), (0.3, 0)]:
        calibration.update(p, y)
    again = DynamicCalibration.from_json(calibration.to_json())
    assert again.to_json() == calibration.to_json()
    again.update(0.7, 1)
    calibration.update(0.7, 1)
    assert again.predict(0.61) == calibration.predict(0.61)
    with pytest.raises(ValueError, match="forgetting=1.5"):
        DynamicCalibration(1.5)
    with pytest.raises(ValueError, match="prior_sd_slope=0"):
        DynamicCalibration(0.99, 0)
    with pytest.raises(ValueError, match="label=2"):
        calibration.update(0.5, 2)
    assert sigmoid(logit(0.25)) == pytest.approx(0.25) and math.isfinite(logit(0.0))
