"""Inference behind one interface: the registry's champion in process, or a SageMaker endpoint.

Both take a ``(n_rows, n_features)`` float matrix, the columns in the order of ``features``, and
return one probability per row; the state handler predicts every bar that closes at one moment
in a single call. :class:`LocalChampionModel` is bit-compatible with the batch scorer
(:func:`quant_engine.monitoring.predictions.predict_proba`: float32 inputs, the same booster), so the
bridge's predictions equal the offline ones; small batches go through the champion's
:class:`~quant_engine.bridge.forest.CompiledForest`, which reproduces xgboost bit for bit at a
fraction of its fixed cost per call, when the forest compiles.

``volatility_range`` is the realised volatility the model saw in training (the min and max of the
``realized_vol_20`` feature in the version's stored monitoring baseline); the state handler
suppresses or scales signals outside it. An endpoint carries no such baseline, so it is given.
"""

from __future__ import annotations

import bisect
import io
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from quant_engine.bridge.forest import CompiledForest, NotCompilableError
from quant_engine.monitoring.baseline import BaselineError
from quant_engine.training.deployment import served_version
from quant_engine.training.registry import ModelRegistry

__all__ = ["LocalChampionModel", "NoModelError", "SageMakerEndpointModel", "SignalModel", "VOLATILITY_FEATURE"]

log = logging.getLogger(__name__)

#: The feature whose training range bounds the live volatility a signal is trusted at.
VOLATILITY_FEATURE = "realized_vol_20"


class NoModelError(RuntimeError):
    """A prediction was asked of a model that serves nothing yet (the registry has no champion)."""


class SignalModel(Protocol):
    """What the state handler needs from a model."""

    @property
    def version(self) -> str | None:
        """The version (or endpoint) that made the last prediction, logged with it; None: nothing served yet."""
        ...

    @property
    def features(self) -> tuple[str, ...]:
        """Input columns, in order."""
        ...

    @property
    def volatility_range(self) -> tuple[float, float] | None:
        """Training range of :data:`VOLATILITY_FEATURE`, or None when unknown."""
        ...

    def volatility_percentile(self, value: float) -> float | None:
        """Where ``value`` of :data:`VOLATILITY_FEATURE` falls in training, in [0, 1]; None when unknown."""
        ...

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Probability of class 1 for each row of ``rows`` (``(n, len(features))``)."""
        ...

    def refresh(self) -> bool:
        """Pick up a newly promoted model; True when the served model changed."""
        ...


def _check_rows(rows: np.ndarray, features: Sequence[str]) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != len(features):
        raise ValueError(f"rows must have shape (n, {len(features)}) for features {list(features)}, got {rows.shape}")
    return rows


class _Served:
    """One loaded champion: swapped as a whole, so a batch never mixes two versions."""

    __slots__ = ("version", "features", "booster", "forest", "volatility", "sketch_values", "cumulative_weights")

    def __init__(
        self, version: str, features: tuple[str, ...], booster: Any, forest: CompiledForest | None, volatility: Any
    ) -> None:
        self.version, self.features, self.booster, self.volatility = version, features, booster, volatility
        self.forest = forest
        self.sketch_values = [] if volatility is None else volatility.sketch_values.tolist()
        self.cumulative_weights = [] if volatility is None else volatility.cumulative_weights.tolist()


class LocalChampionModel:
    """The registry's served version, reloaded when it changes: the live deployment once
    ``model_deployment`` has deployed one, else the champion (reloaded when another is promoted).

    A bridge may start before any model is promoted (a fresh stack): it then serves nothing
    (``version`` is None, no features needed), and :meth:`refresh` picks the first champion up.

    Parameters
    ----------
    registry : ModelRegistry
        From :func:`quant_engine.backends.make_model_registry`.
    baseline_loader : callable, optional
        ``(model_name, version) -> Baseline``; default :func:`quant_engine.monitoring.run.load_baseline`.
    check_every_s : float
        :meth:`refresh` reads the champion pointer at most this often.
    clock : callable
        Monotonic seconds (tests pass their own).

    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        baseline_loader: Callable[[str, str], Any] | None = None,
        check_every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not check_every_s >= 0:
            raise ValueError(f"check_every_s={check_every_s!r} must be >= 0")
        self.registry = registry
        self.check_every_s = float(check_every_s)
        self._clock = clock
        self._baseline_loader = baseline_loader
        self.reloads = 0
        version = served_version(registry)
        self._served: _Served | None = None if version is None else self._load(version)
        if version is None:
            log.warning(
                "model %r has no champion yet: features are computed, signals wait for one (looked for every %g s)",
                registry.name,
                self.check_every_s,
            )
        self._checked_at = clock()

    def _load(self, version: str) -> _Served:
        record = self.registry.get(version)
        booster = self.registry.load_booster(version)
        loader = self._baseline_loader
        if loader is None:
            from quant_engine.monitoring.run import load_baseline

            def loader(name: str, v: str) -> Any:
                return load_baseline(self.registry, v)[0]

        volatility = None
        try:
            volatility = loader(self.registry.name, version).feature(VOLATILITY_FEATURE)
        except (BaselineError, FileNotFoundError, KeyError):
            log.warning(
                "%s %s has no baseline for %s; signals are not volatility-checked",
                self.registry.name,
                version,
                VOLATILITY_FEATURE,
            )
        booster.set_param({"nthread": 1})
        forest: CompiledForest | None = None
        try:
            compiled = CompiledForest.compile(booster)
        except NotCompilableError as exc:
            log.warning(
                "serving %s %s with xgboost only: its forest does not compile: %s", self.registry.name, version, exc
            )
        else:
            forest = compiled
            log.info(
                "serving %s %s: batches up to %d rows by its compiled forest (%d trees, depth %d), "
                "larger ones by xgboost",
                self.registry.name,
                version,
                compiled.max_rows,
                compiled.n_trees,
                compiled.depth,
            )
        return _Served(version, tuple(record.metadata.features), booster, forest, volatility)

    @property
    def version(self) -> str | None:
        return None if self._served is None else self._served.version

    @property
    def features(self) -> tuple[str, ...]:
        return () if self._served is None else self._served.features

    @property
    def volatility_range(self) -> tuple[float, float] | None:
        volatility = None if self._served is None else self._served.volatility
        return None if volatility is None else (volatility.min, volatility.max)

    def volatility_percentile(self, value: float) -> float | None:
        """The training CDF of :data:`VOLATILITY_FEATURE` at ``value``, read from the baseline's sketch."""
        served = self._served
        if served is None or served.volatility is None:
            return None
        # FeatureBaseline.cdf for one value, without building arrays: it is asked once per signal.
        index = bisect.bisect_right(served.sketch_values, value)
        return served.cumulative_weights[index] / served.volatility.num_present

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """As :func:`quant_engine.monitoring.predictions.predict_proba`: float32 inputs, class-1 probabilities.

        ``inplace_predict`` on one thread gives the same numbers as the batch scorer's DMatrix
        path without building a DMatrix, and no thread pool to wake for a few rows: a tenth of
        the time for a batch of 100. The compiled forest gives them again, bit for bit, for the
        batches it is cheaper on (up to ``CompiledForest.max_rows``).
        """
        served = self._served
        if served is None:
            raise NoModelError(f"model {self.registry.name!r} has no champion yet; nothing to predict with")
        rows = _check_rows(rows, served.features).astype(np.float32)
        forest = served.forest
        if forest is not None and len(rows) <= forest.max_rows:
            return forest.predict(rows).astype(np.float64)
        return served.booster.inplace_predict(rows).astype(np.float64)

    def check(self) -> _Served | None:
        """The registry's served version (:func:`~quant_engine.training.deployment.served_version`),
        loaded, compiled and checked, when it is not the one served; else None.

        Changes nothing, so a service runs it in a background thread (a load takes tens to hundreds
        of milliseconds) and hands the result to :meth:`install` between batches. Raises what the
        registry raises (an :class:`OSError` when a file cannot be opened).
        """
        version = served_version(self.registry)
        if version is None or version == self.version:
            return None
        return self._load(version)

    def install(self, served: _Served) -> None:
        """Serve what :meth:`check` loaded; the swap is one assignment, so a batch never mixes versions."""
        previous = self.version
        self._served = served
        self.reloads += 1
        log.info("champion of %s changed: %s -> %s", self.registry.name, previous or "none", served.version)

    def refresh(self) -> bool:
        """Check and install in one call, at most every ``check_every_s``: True when the served model changed.

        A failed check (an :class:`OSError`) raises, and is tried again after ``check_every_s``.
        """
        now = self._clock()
        if now - self._checked_at < self.check_every_s:
            return False
        self._checked_at = now
        served = self.check()
        if served is None:
            return False
        self.install(served)
        return True


class SageMakerEndpointModel:
    """A deployed SageMaker endpoint, called with ``text/csv`` rows; one probability per output line.

    Parameters
    ----------
    client
        A ``sagemaker-runtime`` client (``quant_engine.backends.make_aws_clients(settings).client(...)``).
    endpoint_name : str
    features : sequence of str
        The endpoint's input columns, in order.
    volatility_range : (float, float), optional
        Training range of :data:`VOLATILITY_FEATURE` of the deployed model.
    """

    def __init__(
        self,
        client: Any,
        endpoint_name: str,
        features: Sequence[str],
        volatility_range: tuple[float, float] | None = None,
    ) -> None:
        if not isinstance(endpoint_name, str) or not endpoint_name:
            raise ValueError(f"endpoint_name={endpoint_name!r} must be a non-empty string")
        if isinstance(features, str) or not features:
            raise ValueError(f"features={features!r} must be a non-empty list of feature names")
        self.client = client
        self.endpoint_name = endpoint_name
        self._features = tuple(features)
        self._volatility_range = volatility_range

    @property
    def version(self) -> str:
        return f"endpoint:{self.endpoint_name}"

    @property
    def features(self) -> tuple[str, ...]:
        return self._features

    @property
    def volatility_range(self) -> tuple[float, float] | None:
        return self._volatility_range

    def volatility_percentile(self, value: float) -> float | None:
        """``value``'s position inside the given range, clipped to [0, 1] (no distribution is known)."""
        if self._volatility_range is None:
            return None
        low, high = self._volatility_range
        return float(np.clip((value - low) / (high - low), 0.0, 1.0)) if high > low else 0.5

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """One ``invoke_endpoint`` call for all rows.

        Raises
        ------
        ValueError
            The endpoint's answer is not one probability in [0, 1] per row.
        """
        rows = _check_rows(rows, self._features)
        payload = io.StringIO()
        np.savetxt(payload, rows, delimiter=",", fmt="%.17g")
        response = self.client.invoke_endpoint(
            EndpointName=self.endpoint_name, ContentType="text/csv", Accept="text/csv", Body=payload.getvalue().encode()
        )
        text = response["Body"].read().decode().strip()
        try:
            probs = np.array([float(v) for v in text.replace("\n", ",").split(",") if v.strip()])
        except ValueError:
            raise ValueError(f"endpoint {self.endpoint_name!r} answered {text[:80]!r}, not probabilities") from None
        if probs.shape != (len(rows),) or not ((probs >= 0) & (probs <= 1)).all():
            raise ValueError(
                f"endpoint {self.endpoint_name!r} returned {probs.size} values for {len(rows)} rows; "
                "expected one probability in [0, 1] per row"
            )
        return probs

    def refresh(self) -> bool:
        """An endpoint is updated in place by SageMaker; nothing to reload here."""
        return False
