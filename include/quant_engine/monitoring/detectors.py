"""Streaming change detectors over a model's error stream, one observation at a time.

A batch test asks "is this window different from the baseline?" once a day; a streaming detector
asks it after every prediction whose label is settled, in O(1) amortised time and small memory, so
the drift monitor and the live bridge can both feed it. The API follows river's: ``update(x)``
returns the detector, ``drift_detected`` is True on the update that found a change (and only that
one), ``reset()`` forgets everything.

* :class:`ADWIN` (Bifet & Gavaldà, 2007) keeps an adaptive window of recent values in an
  exponential histogram (``O(max_buckets * log n)`` memory) and drops its oldest part whenever two
  sub-windows' means differ by more than a Hoeffding/Bernstein bound at confidence ``delta``. It
  sees changes in either direction.
* :class:`PageHinkley` (Page, 1954) accumulates ``x - mean - delta`` and alarms when the sum rises
  ``threshold`` above its running minimum: it detects *increases* of the mean, which is what a
  worsening error stream does.

Both reject NaN and infinite values: a NaN error means a broken prediction upstream, and silently
skipping it would hide exactly the failure a monitor exists to see.
"""

from __future__ import annotations

import math
import numbers
from collections import deque

from quant_engine.validation import is_real, real_number, whole_number

__all__ = ["ADWIN", "PageHinkley"]


def _check_value(x: object, detector: str) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{detector}.update(x={x!r}): x must be a real number")
    value = float(x)
    if not math.isfinite(value):
        raise ValueError(f"{detector}.update(x={value!r}): x must be finite; NaN or inf means a broken input upstream")
    return value


def _unit_interval(value: object, name: str, *, one_allowed: bool = False) -> float:
    """``value`` as a float in (0, 1), or (0, 1] when ``one_allowed``; a bool or text is refused."""
    number = float(value) if is_real(value) else math.nan
    if not (0 < number < 1 or (one_allowed and number == 1)):
        raise ValueError(f"{name}={value!r} must be a number in (0, 1{']' if one_allowed else ')'}")
    return number


class ADWIN:
    """ADaptive WINdowing: a window that shrinks as soon as its older part has a different mean.

    Parameters
    ----------
    delta : float
        Confidence in (0, 1): the bound on the probability of a false cut per check, spread over
        the window's cut points (``delta / ln(width)`` each). Smaller means fewer false alarms
        and later detections.
    clock : int
        Check for a cut every ``clock`` updates (>= 1); checks cost O(log width), so this makes
        updates O(1) amortised.
    max_buckets : int
        Buckets kept per histogram level before the two oldest merge (>= 2). Memory is
        ``O(max_buckets * log width)``; more buckets place cut points more finely.
    min_window_length : int
        Smallest sub-window on either side of a cut (>= 1).
    grace_period : int
        Updates before the first check (>= 1).

    Notes
    -----
    A cut between an older part ``W0`` (``n0`` values, mean ``m0``) and a newer ``W1`` happens when
    ``|m0 - m1| > sqrt(2 v ln(2/d) / m) + 2 ln(2/d) / (3 m)`` with ``m = 1 / (1/n0 + 1/n1)``,
    ``v`` the window's variance and ``d = delta / ln(width)`` (the variance form of ADWIN2's bound,
    as in MOA and river). The cut drops ``W0``'s oldest bucket and checks again until no cut holds.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> detector = ADWIN(delta=0.002)
    >>> stream = np.concatenate([rng.normal(0.0, 1.0, 1000), rng.normal(1.5, 1.0, 1000)])
    >>> alarms = [i for i, x in enumerate(stream) if detector.update(x).drift_detected]
    >>> 1000 <= alarms[0] < 1200
    True
    """

    def __init__(
        self,
        delta: float = 0.002,
        *,
        clock: int = 32,
        max_buckets: int = 5,
        min_window_length: int = 5,
        grace_period: int = 10,
    ) -> None:
        self.delta = _unit_interval(delta, "delta")
        self.clock = whole_number(clock, "clock", minimum=1)
        self.max_buckets = whole_number(max_buckets, "max_buckets", minimum=2)
        self.min_window_length = whole_number(min_window_length, "min_window_length", minimum=1)
        self.grace_period = whole_number(grace_period, "grace_period", minimum=1)
        self.reset()

    def reset(self) -> None:
        """Forget every value seen; counters of detections go back to zero too."""
        # levels[i] holds (total, m2) of buckets of 2**i values, oldest first.
        self._levels: list[deque[tuple[float, float]]] = []
        self._width = 0
        self._total = 0.0
        self._m2 = 0.0  # sum of squared deviations from the window mean
        self._ticks = 0
        self.n_detections = 0
        self.drift_detected = False

    @property
    def width(self) -> int:
        """Values in the current window."""
        return self._width

    @property
    def estimation(self) -> float:
        """Mean of the current window (NaN while empty)."""
        return self._total / self._width if self._width else math.nan

    @property
    def variance(self) -> float:
        """Population variance of the current window (NaN while empty)."""
        return self._m2 / self._width if self._width else math.nan

    @property
    def n_buckets(self) -> int:
        """Buckets held: the memory the detector uses, O(max_buckets * log width)."""
        return sum(len(level) for level in self._levels)

    def update(self, x: float) -> ADWIN:
        """Add ``x`` to the window and check for a change every ``clock`` updates.

        Raises
        ------
        ValueError
            ``x`` is NaN or infinite.
        """
        value = _check_value(x, "ADWIN")
        self.drift_detected = False
        if self._width:
            mean = self._total / self._width
            self._m2 += self._width * (value - mean) ** 2 / (self._width + 1)
        self._width += 1
        self._total += value
        if not self._levels:
            self._levels.append(deque())
        self._levels[0].append((value, 0.0))
        self._compress()
        self._ticks += 1
        if self._ticks % self.clock == 0 and self._width > self.grace_period:
            while self._cut():
                self.drift_detected = True
            if self.drift_detected:
                self.n_detections += 1
        return self

    def _compress(self) -> None:
        """Merge the two oldest buckets of any level that holds more than ``max_buckets``."""
        level = 0
        while level < len(self._levels) and len(self._levels[level]) > self.max_buckets:
            size = 2**level
            total_a, m2_a = self._levels[level].popleft()
            total_b, m2_b = self._levels[level].popleft()
            merged_m2 = m2_a + m2_b + size * size * (total_a / size - total_b / size) ** 2 / (2 * size)
            if level + 1 == len(self._levels):
                self._levels.append(deque())
            self._levels[level + 1].append((total_a + total_b, merged_m2))
            level += 1

    def _cut(self) -> bool:
        """Drop the oldest bucket if some split of the window shows two different means."""
        if self._width < 2 * self.min_window_length:
            return False
        variance = self._m2 / self._width
        log_term = math.log(2.0 * math.log(self._width) / self.delta)
        n0, total0 = 0, 0.0
        for level in range(len(self._levels) - 1, -1, -1):
            size = 2**level
            for bucket_total, _ in self._levels[level]:
                n0 += size
                total0 += bucket_total
                n1 = self._width - n0
                if n1 < self.min_window_length:
                    return False
                if n0 < self.min_window_length:
                    continue
                m = 1.0 / (1.0 / n0 + 1.0 / n1)
                bound = math.sqrt(2.0 * variance * log_term / m) + 2.0 * log_term / (3.0 * m)
                if abs(total0 / n0 - (self._total - total0) / n1) > bound:
                    self._drop_oldest()
                    return True
        return False

    def _drop_oldest(self) -> None:
        level = len(self._levels) - 1
        size = 2**level
        bucket_total, bucket_m2 = self._levels[level].popleft()
        if not self._levels[level]:
            self._levels.pop()
        rest_n = self._width - size
        rest_total = self._total - bucket_total
        if rest_n:
            gap = bucket_total / size - rest_total / rest_n
            self._m2 = max(self._m2 - bucket_m2 - size * rest_n * gap * gap / self._width, 0.0)
        else:
            self._m2 = 0.0
        self._width, self._total = rest_n, rest_total


class PageHinkley:
    """Page-Hinkley test for an increase in the mean of a stream.

    Parameters
    ----------
    delta : float
        Tolerated increase (>= 0): changes smaller than this are not worth an alarm, and on a
        stationary stream the cumulative sum drifts down by ``delta`` per value.
    threshold : float
        ``lambda`` (> 0): alarm when the cumulative sum exceeds its minimum by this much.
    alpha : float
        Forgetting factor in (0, 1] applied to the cumulative sum each update (1 = no forgetting).
    min_instances : int
        Updates before an alarm may be raised (>= 1).

    Notes
    -----
    With ``n`` values seen, mean ``x_bar_n`` updated incrementally::

        m_n = alpha * m_{n-1} + (x_n - x_bar_n - delta)
        M_n = min(M_{n-1}, m_n)
        alarm when n >= min_instances and m_n - M_n > threshold

    After an alarm the statistics restart from the next value, so the next alarm measures a change
    from the new level.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> detector = PageHinkley(delta=0.05, threshold=20.0)
    >>> stream = np.concatenate([rng.normal(0.0, 0.5, 1000), rng.normal(0.5, 0.5, 500)])
    >>> alarms = [i for i, x in enumerate(stream) if detector.update(x).drift_detected]
    >>> 1000 <= alarms[0] < 1100
    True
    """

    def __init__(
        self,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1.0 - 1e-4,
        *,
        min_instances: int = 30,
    ) -> None:
        self.delta = real_number(delta, "delta", minimum=0)
        self.threshold = real_number(threshold, "threshold", minimum=0, above=True)
        self.alpha = _unit_interval(alpha, "alpha", one_allowed=True)
        self.min_instances = whole_number(min_instances, "min_instances", minimum=1)
        self.reset()

    def reset(self) -> None:
        """Forget every value seen; counters of detections go back to zero too."""
        self._restart()
        self.n_detections = 0
        self.drift_detected = False

    def _restart(self) -> None:
        self._n = 0
        self._mean = 0.0
        self._sum = 0.0
        self._min_sum = 0.0

    @property
    def statistic(self) -> float:
        """``m_n - M_n``, the quantity compared with ``threshold``."""
        return self._sum - self._min_sum

    @property
    def n(self) -> int:
        """Values since the last alarm or reset."""
        return self._n

    def update(self, x: float) -> PageHinkley:
        """Add ``x``; ``drift_detected`` says whether the mean has risen by more than the test allows.

        Raises
        ------
        ValueError
            ``x`` is NaN or infinite.
        """
        value = _check_value(x, "PageHinkley")
        self.drift_detected = False
        self._n += 1
        self._mean += (value - self._mean) / self._n
        self._sum = self.alpha * self._sum + (value - self._mean - self.delta)
        self._min_sum = min(self._min_sum, self._sum)
        if self._n >= self.min_instances and self._sum - self._min_sum > self.threshold:
            self.drift_detected = True
            self.n_detections += 1
            self._restart()
        return self
