"""The state handler: ticks -> bars -> the offline store's features -> regime -> prediction -> signal.

Per ticker it keeps a :class:`~quant_engine.features.definitions.StreamingFeatureState` (the same
feature definitions the offline store was computed with), warmed up from the stored bars
(:class:`~quant_engine.features.bar_history.BarHistory`) on the ticker's first tick, so the first live bar
already has every feature. Bars come from :class:`~quant_engine.bridge.bars.BarAggregator`
(exactly once, gaps backfilled). All bars that close on one batch of ticks go through
:meth:`StreamingFeatureState.update_many` and one model call.

Each signal is checked against live realised volatility (``realized_vol_20``, a feature of the
bar): outside the range the model was trained on (its stored monitoring baseline), the signal is
suppressed (``vol_policy="suppress"``) or scaled down by how far outside it is (``"scale"``). The
regime is the monitoring module's volatility regime (calm / normal / stressed,
:meth:`quant_engine.monitoring.regimes.VolRegimeTracker.classify`) of the live volatility's
percentile in the training distribution.

A bar the bridge missed and the stored history could not fill (:attr:`BarAggregator.unfilled`)
makes the ticker's features differ from the store's: its signals are ``degraded`` (weight 0, not
logged) while a missed bar lies within the longest feature window, until the store has the bar and
the ticker's state is rebuilt from it.

Every other prediction is appended, in batches, to the concept-drift prediction log with
``source="bridge"``, so the drift monitor judges the live model on what it actually said.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from quant_engine.bridge.bars import Bar, BarAggregator, BarClock
from quant_engine.bridge.inference import VOLATILITY_FEATURE, SignalModel
from quant_engine.bridge.ticks import Tick
from quant_engine.data.schema import BarValidationError
from quant_engine.features.definitions import FeatureSet
from quant_engine.monitoring.predictions import PredictionLog
from quant_engine.monitoring.regimes import VolRegimeTracker

__all__ = ["BRIDGE_SOURCE", "SIGNAL_STATUSES", "VOL_POLICIES", "Signal", "StateHandler"]

log = logging.getLogger(__name__)

BRIDGE_SOURCE = "bridge"
VOL_POLICIES: tuple[str, ...] = ("suppress", "scale")
SIGNAL_STATUSES: tuple[str, ...] = ("ok", "scaled", "suppressed", "degraded", "warming_up", "no_model")


@dataclass(frozen=True)
class Signal:
    """A model's view of one ticker at one closed bar.

    ``prob`` is the model's probability of an up move; ``weight`` the signed position it supports,
    ``2 * prob - 1`` times the volatility check's ``scale`` (0 when suppressed, degraded, warming up
    or without a model). ``status`` is ``ok``, ``scaled``, ``suppressed``, ``degraded`` (a bar of the
    ticker's feature window is missing: its features differ from the store's), ``warming_up``
    (features not yet defined) or ``no_model`` (no champion promoted yet: ``prob`` is NaN,
    ``model_version`` None).
    """

    ticker: str
    ts: pd.Timestamp
    prob: float
    weight: float
    status: str
    regime: str
    realized_vol: float
    model_version: str | None
    bar_origin: str
    features: dict[str, float] = field(repr=False)
    received_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN as None), as the publisher sends it."""
        def clean(value: float) -> float | None:
            return None if value is None or not math.isfinite(value) else value

        return {"ticker": self.ticker, "ts": self.ts.isoformat(), "prob": clean(self.prob),
                "weight": clean(self.weight), "status": self.status, "regime": self.regime,
                "realized_vol": clean(self.realized_vol), "model_version": self.model_version,
                "bar_origin": self.bar_origin, "received_at": self.received_at,
                "features": {k: v if math.isfinite(v) else None for k, v in self.features.items()}}


class StateHandler:
    """Everything between a decoded tick and a published signal, for any number of tickers.

    Parameters
    ----------
    feature_set : FeatureSet
        The offline store's feature set (``get_feature_set("default")`` unless ingestion used another).
    model : SignalModel
        :class:`~quant_engine.bridge.inference.LocalChampionModel` or ``SageMakerEndpointModel``.
    history : BarHistory, optional
        Stored bars (``last_bars`` for warm-up, ``between`` for backfill and replacing partial bars).
    prediction_log : PredictionLog, optional
        Where predictions go (``quant_engine.monitoring.predictions.prediction_log(registry)``).
    vol_policy : {"suppress", "scale"}
    log_batch : int
        Predictions held before they are appended as one file; :meth:`flush` writes the rest.
    regimes : VolRegimeTracker, optional
        Whose ``classify`` names the regime (its state file is not used).
    close_grace_ms : int
        Passed to the :class:`BarAggregator`.
    clock : BarClock, optional
        The feature group's calendar and bar size (default: NYSE daily).
    """

    def __init__(self, feature_set: FeatureSet, model: SignalModel, *, history: Any | None = None,
                 prediction_log: PredictionLog | None = None, vol_policy: str = "suppress", log_batch: int = 256,
                 regimes: VolRegimeTracker | None = None, close_grace_ms: int = 3_600_000,
                 clock: BarClock | None = None) -> None:
        if vol_policy not in VOL_POLICIES:
            raise ValueError(f"vol_policy={vol_policy!r} is not one of {', '.join(VOL_POLICIES)}")
        if isinstance(log_batch, bool) or not isinstance(log_batch, int) or log_batch < 1:
            raise ValueError(f"log_batch={log_batch!r} must be an integer >= 1")
        missing = [f for f in model.features if f not in feature_set.names]
        if missing:
            raise ValueError(f"the model needs feature(s) {missing} that feature set {feature_set.name!r} "
                             f"does not compute ({', '.join(feature_set.names)})")
        self.feature_set = feature_set
        self.model = model
        self.history = history
        self.prediction_log = prediction_log
        self.vol_policy = vol_policy
        self.log_batch = log_batch
        self.regimes = regimes or VolRegimeTracker("unused-regime-state.json")
        self.features = feature_set.streaming_state()
        self.bars = BarAggregator(history, clock=clock, close_grace_ms=close_grace_ms)
        self._pending_log: list[tuple[str, pd.Timestamp, float, str]] = []
        self.latest: dict[str, Signal] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            ("warmups", "bar_errors", "predictions", "predictions_logged", "model_reloads", "rebuilds",
             *(f"signals_{status}" for status in SIGNAL_STATUSES)), 0)

    # --- ticks in ----------------------------------------------------------------------------

    def on_ticks(self, ticks: Iterable[Tick], received_at: Mapping[str, float] | None = None) -> list[Signal]:
        """Process a batch of ticks; return the signals of every bar they closed, in closing order.

        ``received_at`` maps a ticker to the wall time its latest tick was received; it is copied
        onto the ticker's signals, so latency can be measured from the bar-closing tick's receipt.
        """
        if self.model.refresh():
            self.counters["model_reloads"] += 1
        closed: list[Bar] = []
        for tick in ticks:
            if not self.bars.is_known(tick.ticker):
                self._warm_up(tick)
            closed += self.bars.on_tick(tick)
        return self.on_bars(closed, received_at)

    def advance(self, watermark_ms: int, received_at: Mapping[str, float] | None = None) -> list[Signal]:
        """Move the feed clock without a tick (e.g. on a stale feed); signals of the bars that closed."""
        return self.on_bars(self.bars.advance(watermark_ms), received_at)

    def _warm_up(self, tick: Tick) -> None:
        """Load the ticker's stored bars before the tick's session into its feature state."""
        if self.history is None or not hasattr(self.history, "last_bars"):
            return
        stored = self.history.last_bars(tick.ticker, self.bars.bar_start(tick.time_ms), self.feature_set.lookback)
        if stored.empty:
            return
        try:
            self.features.warm_up(stored)
        except BarValidationError as exc:
            self.counters["bar_errors"] += 1
            log.warning("warm-up of %s refused: %s", tick.ticker, exc)
            return
        self.bars.seed(tick.ticker, stored["ts"].iloc[-1])
        self.counters["warmups"] += 1

    # --- bars -> signals -----------------------------------------------------------------------

    def on_bars(self, bars: Sequence[Bar], received_at: Mapping[str, float] | None = None) -> list[Signal]:
        """Features, regime, one model call and the volatility check for closed bars (any order per batch)."""
        if not bars:
            return []
        degraded = {ticker for ticker in {b.ticker for b in bars} if ticker in self.bars.unfilled
                    and not self._mend(ticker)}
        accepted: list[tuple[Bar, dict[str, float]]] = []
        for group in _rounds(bars):
            accepted += self._update(group)
        names = self.model.features
        version = self.model.version
        probs = np.full(len(accepted), np.nan)
        if version is not None and accepted:
            matrix = np.array([[values[n] for n in names] for _, values in accepted], dtype=np.float64)
            ready = np.isfinite(matrix).all(axis=1)
            if ready.all():
                probs = self.model.predict(matrix)
            elif ready.any():
                probs[ready] = self.model.predict(matrix[ready])
            self.counters["predictions"] += int(ready.sum())
        received_at = received_at or {}
        signals = [self._signal(bar, values, float(p), version, received_at.get(bar.ticker),
                                degraded=bar.ticker in degraded)
                   for (bar, values), p in zip(accepted, probs, strict=True)]
        for signal in signals:
            self.latest[signal.ticker] = signal
            if math.isfinite(signal.prob) and signal.status != "degraded":
                self._pending_log.append((signal.ticker, signal.ts, signal.prob, version))
        if len(self._pending_log) >= self.log_batch:
            self.flush()
        return signals

    def _mend(self, ticker: str) -> bool:
        """Whether ``ticker``'s missed bars no longer matter: all older than the longest feature window,
        or stored now (its state is then rebuilt from the store, so its features equal the store's again)."""
        missed = self.bars.unfilled[ticker]
        last = self.features.last_time(ticker)
        if last is None:
            return False
        last_ms = int(last.value // 1_000_000)
        window = self.feature_set.lookback
        recent = {ms for ms in missed if len(self.bars.clock.closes_between(ms, last_ms)) + 1 < window}
        if recent and self.history is not None and hasattr(self.history, "last_bars"):
            stored = self.history.last_bars(ticker, last, window)
            stored_ms = set((pd.DatetimeIndex(stored["ts"]).as_unit("ns").asi8 // 1_000_000).tolist())
            if len(stored) and int(pd.Timestamp(stored["ts"].iloc[-1]).value // 1_000_000) == last_ms \
                    and recent <= stored_ms:
                self.features.reset(ticker)
                self.features.warm_up(stored)
                self.counters["rebuilds"] += 1
                recent = set()
        if recent:
            self.bars.unfilled[ticker] = recent
            return False
        self.bars.forget_unfilled(ticker)
        return True

    def _update(self, group: list[Bar]) -> list[tuple[Bar, dict[str, float]]]:
        """update_many over bars of distinct tickers; a refused batch is retried bar by bar."""
        try:
            return list(zip(group, self.features.update_many([b.as_record() for b in group]), strict=True))
        except BarValidationError:
            pass
        out = []
        for bar in group:
            try:
                out.append((bar, self.features.update(bar.as_record())))
            except BarValidationError as exc:
                self.counters["bar_errors"] += 1
                log.warning("bar refused: %s", exc)
        return out

    def _signal(self, bar: Bar, values: dict[str, float], prob: float, version: str | None,
                received_at: float | None, *, degraded: bool = False) -> Signal:
        vol = values.get(VOLATILITY_FEATURE, math.nan)
        percentile = self.model.volatility_percentile(vol) if math.isfinite(vol) else None
        regime = "unknown" if percentile is None else self.regimes.classify(percentile)
        if version is None:
            status, scale = "no_model", 0.0
        elif not math.isfinite(prob):
            status, scale = "warming_up", 0.0
        elif degraded:
            status, scale = "degraded", 0.0
        else:
            status, scale = self._volatility_check(vol)
        self.counters[f"signals_{status}"] += 1
        weight = (2.0 * prob - 1.0) * scale if math.isfinite(prob) else 0.0
        return Signal(bar.ticker, bar.ts, prob, weight, status, regime, vol, version, bar.origin, values, received_at)

    def _volatility_check(self, vol: float) -> tuple[str, float]:
        """``(status, scale)`` of a signal at live volatility ``vol`` against the training range."""
        bounds = self.model.volatility_range
        if bounds is None:
            return "ok", 1.0
        low, high = bounds
        if not math.isfinite(vol):
            return "suppressed", 0.0
        if low <= vol <= high:
            return "ok", 1.0
        if self.vol_policy == "suppress":
            return "suppressed", 0.0
        return "scaled", (high / vol) if vol > high else (vol / low if low > 0 else 0.0)

    # --- prediction log ------------------------------------------------------------------------

    def flush(self) -> str | None:
        """Append the predictions not yet logged as one file; returns its key (None when nothing was waiting)."""
        if not self._pending_log or self.prediction_log is None:
            self._pending_log.clear()
            return None
        rows = pd.DataFrame(self._pending_log, columns=["ticker", "ts", "prob", "model_version"])
        rows["ts"] = pd.to_datetime(rows["ts"], utc=True)
        key = self.prediction_log.append(rows.assign(source=BRIDGE_SOURCE))
        self.counters["predictions_logged"] += len(rows)
        self._pending_log.clear()
        return key


def _rounds(bars: Sequence[Bar]) -> list[list[Bar]]:
    """Split bars into consecutive groups with one bar per ticker, keeping each ticker's order."""
    rounds: list[list[Bar]] = []
    seen: set[str] = set()
    for bar in bars:
        if not rounds or bar.ticker in seen:
            rounds.append([])
            seen = set()
        rounds[-1].append(bar)
        seen.add(bar.ticker)
    return rounds
