"""ADWIN and Page-Hinkley: detection delay on a mean change, false alarms on stationary streams."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quant_engine.monitoring.detectors import ADWIN, PageHinkley

SEEDS = range(40)


def _alarms(detector, stream) -> list[int]:
    return [i for i, x in enumerate(stream) if detector.update(float(x)).drift_detected]


def _bernoulli_change(seed: int, before: float, after: float, n: int = 2000, at: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.binomial(1, before, at), rng.binomial(1, after, n - at)]).astype(float)


@pytest.mark.parametrize(
    ("make", "max_delay"),
    [(lambda: ADWIN(delta=0.002), 600), (lambda: PageHinkley(delta=0.05, threshold=25.0), 400)],
    ids=["adwin", "page_hinkley"],
)
def test_error_rate_rise_is_detected_within_bounded_delay(make, max_delay) -> None:
    # A 0/1 error stream whose error rate jumps from 0.45 to 0.65 at t=1000 (a hit rate
    # falling from 55% to 35%): every seed alarms after the change and within max_delay
    # (measured worst of 40 seeds: ADWIN 535, Page-Hinkley 375; medians 215 and 166).
    delays = []
    for seed in SEEDS:
        alarms = _alarms(make(), _bernoulli_change(seed, 0.45, 0.65))
        after = [i for i in alarms if i >= 1000]
        assert after, f"seed {seed}: no alarm after the change"
        delays.append(after[0] - 1000)
    assert max(delays) <= max_delay, delays


@pytest.mark.parametrize(
    ("make", "max_rate"),
    [(lambda: ADWIN(delta=0.002), 0.02), (lambda: PageHinkley(delta=0.05, threshold=25.0), 0.02)],
    ids=["adwin", "page_hinkley"],
)
def test_false_alarm_rate_on_stationary_streams_is_bounded(make, max_rate) -> None:
    # 200 seeds x 2000 Bernoulli(0.5) values: at most 2% of streams see any alarm at all
    # (measured: ADWIN 0/200, Page-Hinkley 1/200).
    streams_with_alarm = 0
    for seed in range(200):
        stream = np.random.default_rng(10_000 + seed).binomial(1, 0.5, 2000).astype(float)
        streams_with_alarm += bool(_alarms(make(), stream))
    assert streams_with_alarm / 200 <= max_rate


def test_adwin_detects_a_decrease_as_well() -> None:
    rng = np.random.default_rng(3)
    stream = np.concatenate([rng.normal(1.0, 0.5, 800), rng.normal(0.0, 0.5, 400)])
    detector = ADWIN()
    alarms = _alarms(detector, stream)
    assert alarms and 800 <= alarms[0] < 900
    # After the cut the window holds (mostly) the new regime only.
    assert abs(detector.estimation) < 0.2
    assert detector.width < 450


def test_page_hinkley_ignores_a_decrease() -> None:
    rng = np.random.default_rng(4)
    stream = np.concatenate([rng.normal(1.0, 0.2, 800), rng.normal(0.0, 0.2, 800)])
    assert _alarms(PageHinkley(delta=0.05, threshold=25.0), stream) == []


def test_adwin_memory_grows_logarithmically() -> None:
    detector = ADWIN(max_buckets=5)
    rng = np.random.default_rng(5)
    for x in rng.normal(size=20_000):
        detector.update(x)
    assert detector.width == 20_000
    # 5 buckets per level, ceil(log2(20000)) levels at most.
    assert detector.n_buckets <= 5 * (math.ceil(math.log2(20_000)) + 1)
    assert detector.n_buckets < 100


def test_adwin_window_statistics_match_numpy() -> None:
    rng = np.random.default_rng(6)
    values = rng.normal(2.0, 3.0, 777)
    detector = ADWIN(clock=10**9)  # never checks, so the window keeps everything
    for x in values:
        detector.update(x)
    assert detector.width == 777
    assert detector.estimation == pytest.approx(values.mean())
    assert detector.variance == pytest.approx(values.var())


@pytest.mark.parametrize("make", [ADWIN, PageHinkley], ids=["adwin", "page_hinkley"])
def test_constant_stream_never_alarms(make) -> None:
    detector = make()
    assert _alarms(detector, [0.3] * 5000) == []


def test_constant_stream_then_jump_is_detected() -> None:
    adwin, ph = ADWIN(), PageHinkley(threshold=5.0)
    stream = [0.3] * 2000 + [0.8] * 200
    assert 2000 <= _alarms(adwin, stream)[0] < 2100
    assert 2000 <= _alarms(ph, stream)[0] < 2100


@pytest.mark.parametrize("make", [ADWIN, PageHinkley], ids=["adwin", "page_hinkley"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_is_a_clear_error(make, bad) -> None:
    detector = make()
    detector.update(0.1)
    with pytest.raises(ValueError, match="must be finite"):
        detector.update(bad)


@pytest.mark.parametrize("make", [ADWIN, PageHinkley], ids=["adwin", "page_hinkley"])
def test_non_numbers_are_rejected(make) -> None:
    with pytest.raises(TypeError, match="real number"):
        make().update("0.5")


def test_drift_flag_lasts_one_update_and_reset_forgets() -> None:
    detector = PageHinkley(threshold=5.0, min_instances=5)
    for x in [0.0] * 50 + [1.0] * 20:
        detector.update(x)
        if detector.drift_detected:
            break
    assert detector.drift_detected and detector.n_detections == 1
    assert detector.n == 0  # statistics restarted after the alarm
    detector.update(0.0)
    assert not detector.drift_detected
    detector.reset()
    assert detector.n_detections == 0 and detector.statistic == 0.0

    adwin = ADWIN()
    for x in [0.0] * 500:
        adwin.update(x)
    adwin.reset()
    assert adwin.width == 0 and math.isnan(adwin.estimation) and adwin.n_buckets == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delta": 0.0}, r"delta=0.0 must be a number in \(0, 1\)"),
        ({"delta": 1.5}, r"delta=1.5"),
        ({"clock": 0}, r"clock=0 must be a whole number >= 1"),
        ({"max_buckets": 1}, r"max_buckets=1 must be a whole number >= 2"),
        ({"min_window_length": 0}, r"min_window_length=0"),
    ],
)
def test_adwin_arguments_are_validated(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        ADWIN(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delta": -0.1}, r"delta=-0.1 must be a finite number >= 0"),
        ({"threshold": 0.0}, r"threshold=0.0 must be a finite number > 0"),
        ({"alpha": 0.0}, r"alpha=0.0 must be a number in \(0, 1\]"),
        ({"alpha": 1.01}, r"alpha=1.01"),
        ({"min_instances": 0}, r"min_instances=0 must be a whole number >= 1"),
    ],
)
def test_page_hinkley_arguments_are_validated(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        PageHinkley(**kwargs)
