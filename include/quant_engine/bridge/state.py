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
makes the ticker's features differ from the store's: its signals are ``degraded`` with detail
``missing_bars`` (weight 0, not logged) while a missed bar lies within the longest feature window,
until the store has the bar and the ticker's state is rebuilt from it. A model that cannot answer
(a SageMaker endpoint down) makes them ``degraded`` with detail ``endpoint_unavailable``.

Every other prediction is appended, in batches, to the concept-drift prediction log with
``source="bridge"``, so the drift monitor judges the live model on what it actually said.

A batch goes through three steps, so a service can await a remote model between them while ticks
keep arriving: :meth:`StateHandler.prepare` (bars -> features, in process), a prediction
(:meth:`StateHandler.predict` in process, or the service's own for an endpoint), and
:meth:`StateHandler.finish` (signals, volatility check, prediction log). :meth:`StateHandler.on_ticks`
runs them in one call for the in-process model. A file that cannot be opened (stored bars, the
prediction log, a new champion) never ends processing: the read or write is retried later and the
failure shows in :attr:`StateHandler.problems` until it succeeds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from quant_engine.bridge.bars import Bar, BarAggregator, BarClock, GuardedHistory, HistoryUnavailable
from quant_engine.bridge.inference import VOLATILITY_FEATURE, SignalModel
from quant_engine.bridge.ticks import Tick
from quant_engine.data.schema import BarValidationError
from quant_engine.features.definitions import FeatureSet
from quant_engine.monitoring.predictions import PredictionLog
from quant_engine.monitoring.regimes import VolRegimeTracker
from quant_engine.online.layer import Adapted, OnlineLayer

__all__ = [
    "BRIDGE_SOURCE",
    "DEGRADED_DETAILS",
    "SIGNAL_STATUSES",
    "VOL_POLICIES",
    "Prediction",
    "PreparedBatch",
    "Signal",
    "StateHandler",
]

log = logging.getLogger(__name__)

BRIDGE_SOURCE = "bridge"
VOL_POLICIES: tuple[str, ...] = ("suppress", "scale")
SIGNAL_STATUSES: tuple[str, ...] = ("ok", "scaled", "suppressed", "degraded", "warming_up", "no_model")
#: Why a signal is ``degraded`` (its ``detail``).
DEGRADED_DETAILS: tuple[str, ...] = ("missing_bars", "endpoint_unavailable")
#: ``detail`` of a signal the local champion made because the endpoint could not answer.
LOCAL_FALLBACK = "local_fallback"
#: Predictions held while the prediction log cannot be written; older ones are dropped and counted.
MAX_PENDING_LOG = 100_000


@dataclass(frozen=True)
class Signal:
    """A model's view of one ticker at one closed bar.

    ``prob`` is the model's probability of an up move; ``weight`` the signed position it supports,
    ``2 * prob - 1`` times the volatility check's ``scale`` (0 when suppressed, degraded, warming up
    or without a model). ``status`` is ``ok``, ``scaled``, ``suppressed``, ``degraded``,
    ``warming_up`` (features not yet defined) or ``no_model`` (no champion promoted yet: ``prob`` is
    NaN, ``model_version`` None). ``detail`` says why a signal is not the configured model's plain
    answer: ``missing_bars`` (degraded: a bar of the ticker's feature window is missing, its
    features differ from the store's), ``endpoint_unavailable`` (degraded: the endpoint did not
    answer, ``prob`` is NaN) or ``local_fallback`` (the local champion answered for the endpoint);
    None otherwise.

    With an online layer (:mod:`quant_engine.online`), ``prob_batch`` is the champion's own
    probability, ``prob_adapted`` its online recalibration and ``prob_source`` which of the two
    ``prob`` is (``"batch"`` while the layer is off); all three are None without one.
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
    detail: str | None = None
    prob_batch: float | None = None
    prob_adapted: float | None = None
    prob_source: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN as None), as the publisher sends it."""

        def clean(value: float) -> float | None:
            return None if value is None or not math.isfinite(value) else value

        return {
            "ticker": self.ticker,
            "ts": self.ts.isoformat(),
            "prob": clean(self.prob),
            "weight": clean(self.weight),
            "status": self.status,
            "detail": self.detail,
            "regime": self.regime,
            "realized_vol": clean(self.realized_vol),
            "model_version": self.model_version,
            "bar_origin": self.bar_origin,
            "received_at": self.received_at,
            "prob_batch": None if self.prob_batch is None else clean(self.prob_batch),
            "prob_adapted": None if self.prob_adapted is None else clean(self.prob_adapted),
            "prob_source": self.prob_source,
            "features": {k: v if math.isfinite(v) else None for k, v in self.features.items()},
        }


@dataclass(frozen=True)
class PreparedBatch:
    """Closed bars with their features, ready for one model call: the first of a batch's three steps.

    ``names`` are the model's input columns when the batch was prepared; ``ready`` marks the rows
    whose features are all defined (the others are still warming up).
    """

    rows: list[tuple[Bar, dict[str, float]]]
    degraded: frozenset[str]
    names: tuple[str, ...]
    ready: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def inputs(self, names: Sequence[str] | None = None) -> np.ndarray:
        """The model's input matrix of the ready rows, columns ``names`` (default: :attr:`names`)."""
        names = self.names if names is None else tuple(names)
        chosen = [values for (_, values), ready in zip(self.rows, self.ready, strict=True) if ready]
        return np.array([[values[n] for n in names] for values in chosen], dtype=np.float64).reshape(
            len(chosen), len(names)
        )


@dataclass(frozen=True)
class Prediction:
    """What a model said about a batch: one probability per row (NaN where it said nothing), who said it, and
    ``detail``: None, ``local_fallback`` or ``endpoint_unavailable`` (see :class:`Signal`)."""

    probs: np.ndarray
    version: str | None
    detail: str | None = None


class StateHandler:
    """Everything between a decoded tick and a published signal, for any number of tickers.

    Parameters
    ----------
    feature_set : FeatureSet
        The offline store's feature set (``get_feature_set("default")`` unless ingestion used another).
    model : SignalModel
        :class:`~quant_engine.bridge.inference.LocalChampionModel` or ``SageMakerEndpointModel``.
    history : BarHistory, optional
        Stored bars (``last_bars`` for warm-up, ``between`` for backfill and replacing partial bars),
        read through a :class:`~quant_engine.bridge.bars.GuardedHistory`.
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
    online : OnlineLayer, optional
        Adapts the champion's probabilities between retrains (:mod:`quant_engine.online`); its labels
        come from :meth:`settle_online`.
    """

    def __init__(
        self,
        feature_set: FeatureSet,
        model: SignalModel,
        *,
        history: Any | None = None,
        prediction_log: PredictionLog | None = None,
        vol_policy: str = "suppress",
        log_batch: int = 256,
        regimes: VolRegimeTracker | None = None,
        close_grace_ms: int = 3_600_000,
        clock: BarClock | None = None,
        online: OnlineLayer | None = None,
    ) -> None:
        if vol_policy not in VOL_POLICIES:
            raise ValueError(f"vol_policy={vol_policy!r} is not one of {', '.join(VOL_POLICIES)}")
        if isinstance(log_batch, bool) or not isinstance(log_batch, int) or log_batch < 1:
            raise ValueError(f"log_batch={log_batch!r} must be an integer >= 1")
        missing = [f for f in model.features if f not in feature_set.names]
        if missing:
            raise ValueError(
                f"the model needs feature(s) {missing} that feature set {feature_set.name!r} "
                f"does not compute ({', '.join(feature_set.names)})"
            )
        self.feature_set = feature_set
        self.model = model
        self.history = None if history is None else GuardedHistory(history)
        self.prediction_log = prediction_log
        self.vol_policy = vol_policy
        self.log_batch = log_batch
        self.regimes = regimes or VolRegimeTracker("unused-regime-state.json")
        self.features = feature_set.streaming_state()
        self.bars = BarAggregator(self.history, clock=clock, close_grace_ms=close_grace_ms)
        self._pending_log: list[tuple[str, pd.Timestamp, float, str]] = []
        self._warmed: set[str] = set()
        self.latest: dict[str, Signal] = {}
        self.online = online
        #: The latest bar close a signal was made for: the market time labels may be settled by.
        self.market_now: pd.Timestamp | None = None
        #: What does not work right now, by part (``history``, ``prediction_log``, ``model``), and why.
        self.problems: dict[str, str] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "warmups",
                "bar_errors",
                "predictions",
                "predictions_logged",
                "predictions_unlogged",
                "log_write_errors",
                "model_reloads",
                "model_load_errors",
                "rebuilds",
                "online_labels",
                *(f"signals_{status}" for status in SIGNAL_STATUSES),
            ),
            0,
        )

    @property
    def current_problems(self) -> dict[str, str]:
        """:attr:`problems` with the stored history's state."""
        problems = dict(self.problems)
        if self.history is not None and self.history.error is not None:
            problems["history"] = self.history.error
        return problems

    # --- ticks in ----------------------------------------------------------------------------

    def on_ticks(self, ticks: Iterable[Tick], received_at: Mapping[str, float] | None = None) -> list[Signal]:
        """Process a batch of ticks; return the signals of every bar they closed, in closing order.

        ``received_at`` maps a ticker to the wall time its latest tick was received; it is copied
        onto the ticker's signals, so latency can be measured from the bar-closing tick's receipt.
        The model looks for a new champion first (a service does that off its loop instead).
        """
        try:
            if self.model.refresh():
                self.counters["model_reloads"] += 1
            self.problems.pop("model", None)
        except OSError as exc:  # the champion stays; refresh tries again after its check period
            self.counters["model_load_errors"] += 1
            self.problems["model"] = f"new champion not loaded: {exc}"
        return self.on_bars(self.take(ticks), received_at)

    def take(self, ticks: Iterable[Tick]) -> list[Bar]:
        """Feed ticks to the bars (warming each ticker up first); the bars they closed, in closing order."""
        closed: list[Bar] = []
        for tick in ticks:
            if tick.ticker not in self._warmed:
                self._warm_up(tick)
            closed += self.bars.on_tick(tick)
        return closed

    def advance(self, watermark_ms: int, received_at: Mapping[str, float] | None = None) -> list[Signal]:
        """Move the feed clock without a tick (e.g. on a stale feed); signals of the bars that closed."""
        return self.on_bars(self.bars.advance(watermark_ms), received_at)

    def _warm_up(self, tick: Tick) -> None:
        """Load the ticker's stored bars before the tick's session into its feature state.

        A read that fails is tried again on the ticker's next tick, for as long as its feature state
        holds no bar (the stored bars end before the session the tick opened, so loading them later
        is as good).
        """
        if self.history is None or not self.history.can_warm_up or self.features.last_time(tick.ticker) is not None:
            self._warmed.add(tick.ticker)
            return
        try:
            stored = self.history.last_bars(tick.ticker, self.bars.bar_start(tick.time_ms), self.feature_set.lookback)
        except HistoryUnavailable:
            return
        self._warmed.add(tick.ticker)
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
        batch = self.prepare(bars)
        signals = self.finish(batch, self.predict(batch), received_at)
        if len(self._pending_log) >= self.log_batch:
            self.flush()
        return signals

    def prepare(self, bars: Sequence[Bar]) -> PreparedBatch:
        """The features of closed bars (first step of a batch): state updates, in closing order per ticker."""
        degraded = frozenset(
            ticker for ticker in {b.ticker for b in bars} if ticker in self.bars.unfilled and not self._mend(ticker)
        )
        rows: list[tuple[Bar, dict[str, float]]] = []
        for group in _rounds(bars):
            rows += self._update(group)
        names = self.model.features
        ready = (
            np.array([all(math.isfinite(values[n]) for n in names) for _, values in rows], dtype=bool)
            if names
            else np.zeros(len(rows), dtype=bool)
        )
        return PreparedBatch(rows, degraded, tuple(names), ready)

    def predict(self, batch: PreparedBatch) -> Prediction:
        """The handler's own model on a batch, in process (second step)."""
        probs = np.full(len(batch), np.nan)
        version = self.model.version
        if version is not None and batch.ready.any():
            probs[batch.ready] = self.model.predict(batch.inputs())
        return Prediction(probs, version)

    def finish(
        self, batch: PreparedBatch, prediction: Prediction, received_at: Mapping[str, float] | None = None
    ) -> list[Signal]:
        """Signals of a predicted batch (third step): regime, volatility check, the prediction log's rows."""
        received_at = received_at or {}
        self.counters["predictions"] += int(np.isfinite(prediction.probs).sum())
        signals = []
        for (bar, values), p, ready in zip(batch.rows, prediction.probs, batch.ready, strict=True):
            degraded = bar.ticker in batch.degraded
            adapted = None
            if (
                self.online is not None
                and prediction.version is not None
                and prediction.detail is None
                and ready
                and not degraded
                and math.isfinite(p)
            ):
                adapted = self.online.adapt(bar.ticker, bar.ts, float(p), prediction.version)
            signal = self._signal(
                bar,
                values,
                float(p),
                prediction,
                received_at.get(bar.ticker),
                ready=bool(ready),
                degraded=degraded,
                adapted=adapted,
            )
            signals.append(signal)
            self.latest[signal.ticker] = signal
            if self.market_now is None or bar.ts > self.market_now:
                self.market_now = bar.ts
            if math.isfinite(p) and signal.status != "degraded":
                assert signal.model_version is not None, "only a versioned model's prediction is finite"
                self._pending_log.append((signal.ticker, signal.ts, float(p), signal.model_version))
        return signals

    # --- online adaptation ---------------------------------------------------------------------

    def online_labels_wanted(self) -> tuple[list[str], pd.Timestamp, pd.Timestamp] | None:
        """``(tickers, first ts, market now)``: the stored bars that may settle pending predictions."""
        if self.online is None or self.market_now is None:
            return None
        wanted = self.online.wanted()
        return None if wanted is None else (wanted[0], wanted[1], self.market_now)

    def settle_online(self, labels: pd.DataFrame, now: pd.Timestamp) -> int:
        """Teach the online layer the labels settled by market time ``now``; how many it learnt from."""
        if self.online is None:
            return 0
        learnt = len(self.online.settle(labels, now))
        self.counters["online_labels"] += learnt
        return learnt

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
        if recent and self.history is not None and self.history.can_warm_up:
            try:
                stored = self.history.last_bars(ticker, last, window)
            except HistoryUnavailable:  # still degraded; tried again on the ticker's next bar
                self.bars.unfilled[ticker] = recent
                return False
            stored_ms = set((pd.DatetimeIndex(stored["ts"]).as_unit("ns").asi8 // 1_000_000).tolist())
            if (
                len(stored)
                and int(pd.Timestamp(stored["ts"].iloc[-1]).value // 1_000_000) == last_ms
                and recent <= stored_ms
            ):
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

    def _signal(
        self,
        bar: Bar,
        values: dict[str, float],
        prob: float,
        prediction: Prediction,
        received_at: float | None,
        *,
        ready: bool,
        degraded: bool,
        adapted: Adapted | None = None,
    ) -> Signal:
        vol = values.get(VOLATILITY_FEATURE, math.nan)
        percentile = self.model.volatility_percentile(vol) if math.isfinite(vol) else None
        regime = "unknown" if percentile is None else self.regimes.classify(percentile)
        version, detail = prediction.version, prediction.detail
        if version is None:
            status, scale, detail = "no_model", 0.0, None
        elif not ready:
            status, scale, detail = "warming_up", 0.0, None
        elif detail == "endpoint_unavailable":
            status, scale = "degraded", 0.0
        elif degraded:
            status, scale, detail = "degraded", 0.0, "missing_bars"
        else:
            status, scale = self._volatility_check(vol)
        self.counters[f"signals_{status}"] += 1
        if adapted is not None:
            prob = adapted.prob
        weight = (2.0 * prob - 1.0) * scale if math.isfinite(prob) else 0.0
        return Signal(
            bar.ticker,
            bar.ts,
            prob,
            weight,
            status,
            regime,
            vol,
            version,
            bar.origin,
            values,
            received_at,
            detail,
            *((adapted.prob_batch, adapted.prob_adapted, adapted.used) if adapted is not None else ()),
        )

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

    @property
    def pending_log(self) -> int:
        """Predictions waiting to be written to the prediction log."""
        return len(self._pending_log)

    def take_log_rows(self) -> list[tuple[str, pd.Timestamp, float, str]]:
        """Hand the waiting predictions over to be written (:meth:`write_log_rows`, in any thread)."""
        rows, self._pending_log = self._pending_log, []
        return rows

    def write_log_rows(self, rows: list[tuple[str, pd.Timestamp, float, str]]) -> str | None:
        """Append ``rows`` to the prediction log as one file; its key (None without a log). Thread-safe."""
        if not rows or self.prediction_log is None:
            return None
        frame = pd.DataFrame(rows, columns=["ticker", "ts", "prob", "model_version"])
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
        return self.prediction_log.append(frame.assign(source=BRIDGE_SOURCE))

    def log_written(self, rows: list[tuple[str, pd.Timestamp, float, str]], error: OSError | None) -> None:
        """Account for a write of ``rows``: counted when it succeeded, kept for the next one when it failed."""
        if error is None:
            if rows and self.prediction_log is not None:
                self.counters["predictions_logged"] += len(rows)
                if self.problems.pop("prediction_log", None) is not None:
                    log.info("prediction log writable again")
            return
        self.counters["log_write_errors"] += 1
        if "prediction_log" not in self.problems:
            log.warning("prediction log not written (%s); kept for the next flush", error)
        self.problems["prediction_log"] = f"not written: {error}"
        self._pending_log[:0] = rows
        excess = len(self._pending_log) - MAX_PENDING_LOG
        if excess > 0:
            del self._pending_log[:excess]
            self.counters["predictions_unlogged"] += excess

    def flush(self) -> str | None:
        """Append the predictions not yet logged as one file; returns its key (None when nothing was written).

        A write that fails keeps the predictions for the next flush and shows in :attr:`problems`.
        """
        rows = self.take_log_rows()
        try:
            key = self.write_log_rows(rows)
        except OSError as exc:
            self.log_written(rows, exc)
            return None
        self.log_written(rows, None)
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
