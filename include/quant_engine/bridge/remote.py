"""A remote model called off the event loop: bounded threads, a timeout, retries, a circuit breaker, a fallback.

``boto3``'s ``invoke_endpoint`` blocks, and an endpoint can hang or fail for minutes. Called on
the service's event loop it would stall ingest, publishing and health with it; an error raised
into the processing task would end it. :class:`EndpointPredictor` runs each call in a small
thread pool with a timeout, retries a failed call with jittered exponential backoff, and stops
calling once :class:`CircuitBreaker` has seen enough consecutive failures, trying one call again
after a pause (open -> half-open -> closed). While the endpoint cannot answer, a batch is
predicted by the local champion when one is configured (signals' ``detail`` is ``local_fallback``)
or its signals are published ``degraded`` with ``detail="endpoint_unavailable"``; processing goes
on either way, and ingest keeps filling the buffer while a batch waits for the endpoint.

The botocore client itself must give up as fast (read and connect timeouts, no retries of its
own: :func:`endpoint_client_config`), so a timed-out call frees its thread soon.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from quant_engine.aws.session import endpoint_client_config
from quant_engine.bridge.inference import LocalChampionModel, SageMakerEndpointModel
from quant_engine.bridge.state import LOCAL_FALLBACK, Prediction, PreparedBatch

__all__ = ["BREAKER_STATES", "CircuitBreaker", "EndpointPredictor", "endpoint_client_config"]

log = logging.getLogger(__name__)

#: The breaker's states, in the order of their gauge values (0, 1, 2).
BREAKER_STATES: tuple[str, ...] = ("closed", "half_open", "open")
#: Outcomes of an endpoint call, the labels of its counter.
CALL_OUTCOMES: tuple[str, ...] = ("ok", "error", "timeout", "short_circuited")


class CircuitBreaker:
    """Stops calls to a failing dependency, and lets one through now and then to see whether it recovered.

    ``closed``: calls go through; ``failures`` consecutive failures open it. ``open``: calls are
    refused for ``reset_s``; then ``half_open``: one trial call goes through, its success closes
    the breaker and its failure opens it again for another ``reset_s``.

    Examples
    --------
    >>> now = [0.0]
    >>> breaker = CircuitBreaker(failures=2, reset_s=10, clock=lambda: now[0])
    >>> breaker.failure(); breaker.failure(); breaker.state, breaker.allow()
    ('open', False)
    >>> now[0] = 10.0
    >>> breaker.allow(), breaker.state, breaker.allow()  # one trial at a time
    (True, 'half_open', False)
    >>> breaker.success(); breaker.state
    'closed'
    """

    def __init__(
        self, failures: int = 5, reset_s: float = 30.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if isinstance(failures, bool) or not isinstance(failures, int) or failures < 1:
            raise ValueError(f"failures={failures!r} must be an integer >= 1")
        if not (isinstance(reset_s, (int, float)) and math.isfinite(reset_s) and reset_s > 0):
            raise ValueError(f"reset_s={reset_s!r} must be a number of seconds > 0")
        self.failures = failures
        self.reset_s = float(reset_s)
        self._clock = clock
        self.state = "closed"
        self.consecutive = 0
        self.opened = 0
        self._opened_at = 0.0
        self._trial = False

    def allow(self) -> bool:
        """Whether a call may go out now (in ``half_open``, only the one trial)."""
        if self.state == "open" and self._clock() - self._opened_at >= self.reset_s:
            self.state, self._trial = "half_open", False
        if self.state == "closed":
            return True
        if self.state == "half_open" and not self._trial:
            self._trial = True
            return True
        return False

    def success(self) -> None:
        if self.state != "closed":
            log.info("endpoint answered again: circuit closed")
        self.state, self.consecutive, self._trial = "closed", 0, False

    def failure(self) -> None:
        self.consecutive += 1
        if self.state == "half_open" or (self.state == "closed" and self.consecutive >= self.failures):
            if self.state == "closed":
                log.warning("endpoint failed %d times in a row: circuit open for %g s", self.consecutive, self.reset_s)
            self.state, self._opened_at, self._trial = "open", self._clock(), False
            self.opened += 1


class EndpointPredictor:
    """Predicts a batch with a SageMaker endpoint without ever blocking the event loop (see the module docstring).

    Parameters
    ----------
    endpoint : SageMakerEndpointModel
        Its client should be built with :func:`endpoint_client_config`.
    breaker : CircuitBreaker
    fallback : LocalChampionModel, optional
        Answers while the endpoint cannot; without it such batches are ``endpoint_unavailable``.
    workers : int
        Threads calling the endpoint at once (calls beyond wait for one, within their timeout).
    timeout_s : float
        Longest wait for one call.
    retries : int
        Further attempts after a failed call (only while the breaker is closed).
    backoff_s : float
        Ceiling of the first retry's jittered delay; it doubles per retry.
    seed : int, optional
        Seed of the jitter.
    """

    def __init__(
        self,
        endpoint: SageMakerEndpointModel,
        breaker: CircuitBreaker,
        *,
        fallback: LocalChampionModel | None = None,
        workers: int = 4,
        timeout_s: float = 2.0,
        retries: int = 2,
        backoff_s: float = 0.05,
        seed: int | None = None,
    ) -> None:
        for name, value in (("workers", workers), ("retries", retries)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "workers" else 0):
                raise ValueError(f"{name}={value!r} must be an integer >= {1 if name == 'workers' else 0}")
        for name, seconds in (("timeout_s", timeout_s), ("backoff_s", backoff_s)):
            if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
                raise ValueError(f"{name}={seconds!r} must be a number of seconds > 0")
        self.endpoint = endpoint
        self.breaker = breaker
        self.fallback = fallback
        self.timeout_s = float(timeout_s)
        self.retries = retries
        self.backoff_s = float(backoff_s)
        self._rng = random.Random(seed)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bridge-endpoint")
        self.calls: dict[str, int] = dict.fromkeys(CALL_OUTCOMES, 0)
        self.fallbacks = 0
        self.last_error: str | None = None

    @property
    def problem(self) -> str | None:
        """Why the endpoint is not answering now (for ``/health``), or None."""
        if self.breaker.state == "closed" and self.breaker.consecutive == 0:
            return None
        return f"circuit {self.breaker.state}: {self.last_error}"

    async def predict(self, batch: PreparedBatch) -> Prediction:
        """The endpoint's probabilities for the batch's ready rows; the fallback's, or none, when it cannot answer."""
        probs = np.full(len(batch), np.nan)
        if not batch.ready.any():
            return Prediction(probs, self.endpoint.version)
        answer = await self._call(batch.inputs())
        if answer is not None:
            probs[batch.ready] = answer
            return Prediction(probs, self.endpoint.version)
        fallback = self.fallback
        if fallback is not None and fallback.version is not None and tuple(fallback.features) == batch.names:
            self.fallbacks += 1
            probs[batch.ready] = fallback.predict(batch.inputs())
            return Prediction(probs, fallback.version, LOCAL_FALLBACK)
        return Prediction(probs, self.endpoint.version, "endpoint_unavailable")

    async def _call(self, rows: np.ndarray) -> np.ndarray | None:
        loop = asyncio.get_running_loop()
        for attempt in range(self.retries + 1):
            if not self.breaker.allow():
                self.calls["short_circuited"] += 1
                return None
            try:
                async with asyncio.timeout(self.timeout_s):
                    answer = await loop.run_in_executor(self._pool, self.endpoint.predict, rows)
            except TimeoutError:
                self._failed("timeout", f"no answer within {self.timeout_s:g} s")
            except Exception as exc:  # noqa: BLE001 - botocore's errors, a refused connection, a bad answer
                self._failed("error", f"{type(exc).__name__}: {exc}")
            else:
                self.calls["ok"] += 1
                self.breaker.success()
                self.last_error = None
                return answer
            if self.breaker.state != "closed":  # a failed trial, or the failure that opened it: no retry
                return None
            if attempt < self.retries:
                await asyncio.sleep(self._rng.uniform(0.0, self.backoff_s * 2**attempt))
        return None

    def _failed(self, outcome: str, why: str) -> None:
        self.calls[outcome] += 1
        self.last_error = why
        self.breaker.failure()

    def close(self) -> None:
        """Stop the threads; a call still blocked in botocore ends by its own read timeout."""
        self._pool.shutdown(wait=False, cancel_futures=True)
