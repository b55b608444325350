"""The online layer over the batch champion: adapt each prediction, learn from each settled label.

The bridge asks :meth:`OnlineLayer.adapt` for every prediction the champion makes; the layer
answers with the batch probability, its recalibration (:class:`~quant_engine.online.calibration.
DynamicCalibration`) and which of the two the signal should use, and keeps both until the label
settles. :meth:`OnlineLayer.settle` takes labels (``ticker, ts, t1, label``: the ones the drift
monitor computes from stored bars, so there is one truth for labels) and, for each pending
prediction whose ``t1`` the market has passed, in the order ``(t1, ts, ticker)``:

1. scores both probabilities it gave on the label (prequential: what was said before the answer
   was known), into exponentially weighted log-losses;
2. updates the calibration from the batch probability and the label (O(1)).

Guard rails: the adapted probability never moves more than ``max_shift`` from the batch one, and
once ``min_labels`` labels have been scored the layer is *on* only while its rolling log-loss is no
worse than the batch model's; off, signals use the batch probability while the layer keeps learning
in the shadow and turns itself on again when it earns it.

A new champion resets the layer (its calibration was of another model). The state, pending
predictions included, is a JSON document written atomically (:meth:`save`); restored with
:meth:`load`, the layer gives exactly the outputs it would have given without the restart. Without
a saved state for the champion, :meth:`warm_up` replays the champion's logged predictions and their
settled labels through the same steps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quant_engine.online.calibration import DynamicCalibration, clip_probability
from quant_engine.storage.atomic import write_json_atomic, write_parquet_atomic
from quant_engine.timeutil import utc_timestamp
from quant_engine.validation import real_number, require_columns, whole_number

__all__ = ["UPDATE_COLUMNS", "Adapted", "OnlineLayer", "summarize_updates"]

STATE_FORMAT = 1
#: One row per settled label in the updates log.
UPDATE_COLUMNS = (
    "ticker",
    "ts",
    "t1",
    "label",
    "prob_batch",
    "prob_adapted",
    "used",
    "logloss_batch",
    "logloss_adapted",
    "slope",
    "intercept",
    "model_version",
)


@dataclass(frozen=True)
class Adapted:
    """The batch probability, its adaptation, and which one a signal uses (``"adapted"`` or ``"batch"``)."""

    prob_batch: float
    prob_adapted: float
    used: str

    @property
    def prob(self) -> float:
        return self.prob_adapted if self.used == "adapted" else self.prob_batch


class OnlineLayer:
    """Online recalibration of one model's champion, with its guard rails and its state.

    Parameters
    ----------
    forgetting : float
        The calibration's forgetting factor per label (:class:`DynamicCalibration`).
    max_shift : float
        The most the adapted probability may differ from the batch one (0 turns adaptation off).
    min_labels : int
        Labels scored before the rolling log-losses may switch the layer off.
    quality_forgetting : float
        Forgetting factor of the rolling log-losses that judge the layer (0.99: about 100 labels).
    updates_dir : Path, optional
        Where :meth:`write_updates` logs each settlement's updates as a Parquet file.
    """

    def __init__(
        self,
        *,
        forgetting: float = 0.995,
        max_shift: float = 0.1,
        min_labels: int = 100,
        quality_forgetting: float = 0.99,
        updates_dir: Path | None = None,
    ) -> None:
        self.calibration = DynamicCalibration(forgetting)
        self.max_shift = real_number(max_shift, "max_shift", minimum=0, maximum=0.5)
        self.min_labels = whole_number(min_labels, "min_labels", minimum=0)
        self.quality_forgetting = real_number(quality_forgetting, "quality_forgetting", minimum=0.5, maximum=1.0)
        self.updates_dir = updates_dir
        self.version: str | None = None
        self.reset(None)

    # --- lifecycle ----------------------------------------------------------------------------

    def reset(self, version: str | None) -> None:
        """Forget everything: a new champion (``version``) starts from the identity map."""
        self.version = version
        self.calibration.reset()
        #: ``(ticker, ts ns) -> (batch probability, adapted probability, whether the signal used the adapted)``
        self.pending: dict[tuple[str, int], tuple[float, float, bool]] = {}
        self.labels = 0
        self._loss_batch = self._loss_adapted = self._loss_weight = 0.0
        self.settlements = 0
        self.switched_off = 0

    @property
    def active(self) -> bool:
        """Whether signals use the adapted probability now."""
        if self.max_shift == 0:
            return False
        if self.labels < self.min_labels or self._loss_weight == 0:
            return True
        return self._loss_adapted <= self._loss_batch

    @property
    def rolling_logloss(self) -> dict[str, float | None]:
        """The exponentially weighted log-losses of the batch and the adapted probabilities."""
        if self._loss_weight == 0:
            return {"batch": None, "adapted": None}
        return {"batch": self._loss_batch / self._loss_weight, "adapted": self._loss_adapted / self._loss_weight}

    def status(self) -> dict[str, Any]:
        """For ``/health``: on or off and why, the map, the evidence."""
        losses = self.rolling_logloss
        if self.max_shift == 0:
            reason = "off: max_shift is 0"
        elif self.active:
            reason = "on" if self.labels >= self.min_labels else f"on: {self.labels} of {self.min_labels} labels judged"
        else:
            reason = "off: its rolling log-loss is worse than the batch model's"
        return {
            "active": self.active,
            "reason": reason,
            "model_version": self.version,
            "labels": self.labels,
            "pending": len(self.pending),
            "slope": self.calibration.a,
            "intercept": self.calibration.b,
            "rolling_logloss": losses,
        }

    # --- predictions in ----------------------------------------------------------------------

    def adapt(self, ticker: str, ts: pd.Timestamp, prob: float, version: str) -> Adapted:
        """The champion ``version`` said ``prob`` for ``(ticker, ts)``: its adaptation, kept until the label settles."""
        if version != self.version:
            self.reset(version)
        shifted = self.calibration.predict(prob)
        adapted = min(max(shifted, prob - self.max_shift), prob + self.max_shift)
        active = self.active
        self.pending[(ticker, int(ts.value))] = (float(prob), float(adapted), active)
        return Adapted(float(prob), float(adapted), "adapted" if active else "batch")

    # --- labels in ---------------------------------------------------------------------------

    def wanted(self) -> tuple[list[str], pd.Timestamp] | None:
        """Tickers with pending predictions and the earliest pending ``ts``: the bars that settle them."""
        if not self.pending:
            return None
        tickers = sorted({ticker for ticker, _ in self.pending})
        return tickers, pd.Timestamp(min(ns for _, ns in self.pending), tz="UTC")

    def settle(self, labels: pd.DataFrame, now: object) -> pd.DataFrame:
        """Learn from the labels of pending predictions settled by ``now`` (``t1 <= now``); the updates made."""
        cutoff = utc_timestamp(now, "now")
        labels = require_columns(labels, ("ticker", "ts", "t1", "label"), "labels")
        if labels.empty or not self.pending:
            return pd.DataFrame(columns=list(UPDATE_COLUMNS))
        frame = pd.DataFrame(
            {
                "ticker": labels["ticker"].astype(str),
                "ts_ns": pd.DatetimeIndex(pd.to_datetime(labels["ts"], utc=True)).as_unit("ns").asi8,
                "t1": pd.to_datetime(labels["t1"], utc=True),
                "label": labels["label"].astype(int),
            }
        )
        earliest = min(ns for _, ns in self.pending)
        frame = frame.loc[(frame["t1"] <= cutoff).to_numpy() & (frame["ts_ns"] >= earliest).to_numpy()]
        keys = zip(frame["ticker"].tolist(), frame["ts_ns"].tolist(), strict=True)
        pending = np.fromiter((key in self.pending for key in keys), dtype=bool, count=len(frame))
        frame = frame.loc[pending].sort_values(["t1", "ts_ns", "ticker"], kind="stable")
        return self._learn(frame.itertuples(index=False))

    def _learn(self, rows: Iterable[Any]) -> pd.DataFrame:
        updates = []
        q = self.quality_forgetting
        for row in rows:
            key = (row.ticker, int(row.ts_ns))
            prob, adapted, was_active = self.pending.pop(key)
            used = "adapted" if was_active else "batch"
            loss_batch, loss_adapted = _logloss(prob, row.label), _logloss(adapted, row.label)
            self._loss_batch = q * self._loss_batch + loss_batch
            self._loss_adapted = q * self._loss_adapted + loss_adapted
            self._loss_weight = q * self._loss_weight + 1.0
            self.labels += 1
            self.calibration.update(prob, int(row.label))
            if was_active and not self.active:
                self.switched_off += 1
            updates.append(
                (
                    row.ticker,
                    pd.Timestamp(int(row.ts_ns), tz="UTC"),
                    row.t1,
                    int(row.label),
                    prob,
                    adapted,
                    used,
                    loss_batch,
                    loss_adapted,
                    self.calibration.a,
                    self.calibration.b,
                    self.version,
                )
            )
        frame = pd.DataFrame(updates, columns=list(UPDATE_COLUMNS))
        if updates:
            self.settlements += 1
            frame.attrs["settlement"] = self.settlements
        return frame

    def write_updates(self, updates: pd.DataFrame) -> Path | None:
        """Log one settlement's updates (a frame :meth:`settle` returned) as a Parquet file; thread-safe.

        The file is named by the model version and the settlement's number, so writing it again
        after a restart replaces it instead of adding a copy.
        """
        if self.updates_dir is None or updates.empty:
            return None
        version = updates["model_version"].iloc[0]
        return write_parquet_atomic(updates, self.updates_dir / f"{version}-{updates.attrs['settlement']:08d}.parquet")

    def read_updates(self) -> pd.DataFrame:
        """Every logged update, oldest first (empty without a log)."""
        files = sorted(self.updates_dir.glob("*.parquet")) if self.updates_dir is not None else []
        if not files:
            return pd.DataFrame(columns=list(UPDATE_COLUMNS))
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True).sort_values(["t1", "ts", "ticker"])

    def warm_up(self, predictions: pd.DataFrame, labels: pd.DataFrame, version: str) -> int:
        """Replay ``version``'s logged predictions (``ticker, ts, prob``) in time order, each stamp's labels
        settled first (``t1`` at or before it), as the live layer would have; the labels learnt from."""
        self.reset(version)
        rows = require_columns(predictions, ("ticker", "ts", "prob"), "predictions")
        rows = rows.assign(ts=pd.to_datetime(rows["ts"], utc=True)).sort_values(["ts", "ticker"], kind="stable")
        learnt = 0
        for ts, group in rows.groupby("ts", sort=True):
            learnt += len(self.settle(labels, ts))
            for ticker, prob in zip(group["ticker"].astype(str), group["prob"].astype(float), strict=True):
                if math.isfinite(prob):
                    self.adapt(ticker, ts, prob, version)
        return learnt

    # --- state ---------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "model_version": self.version,
            "max_shift": self.max_shift,
            "min_labels": self.min_labels,
            "quality_forgetting": self.quality_forgetting,
            "calibration": self.calibration.to_json(),
            "pending": [[t, ns, p, a, on] for (t, ns), (p, a, on) in sorted(self.pending.items())],
            "labels": self.labels,
            "losses": [self._loss_batch, self._loss_adapted, self._loss_weight],
            "settlements": self.settlements,
            "switched_off": self.switched_off,
        }

    def save(self, path: Path, state: dict[str, Any] | None = None) -> Path:
        """Write the state (or a snapshot ``state`` taken earlier by :meth:`to_json`) atomically."""
        return write_json_atomic(path, self.to_json() if state is None else state)

    def load(self, path: Path) -> bool:
        """Restore a saved state; False (nothing changed) when there is none. Settings must match it."""
        if not path.exists():
            return False
        data = json.loads(path.read_text())
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"{path}: online state format {data.get('format')!r}, expected {STATE_FORMAT}")
        ours = (self.max_shift, self.min_labels, self.quality_forgetting, self.calibration.forgetting)
        theirs = (data["max_shift"], data["min_labels"], data["quality_forgetting"], data["calibration"]["forgetting"])
        if ours != tuple(theirs):
            return False  # saved under other settings: start afresh rather than mix two configurations
        self.version = data["model_version"]
        self.calibration = DynamicCalibration.from_json(data["calibration"])
        self.pending = {(t, int(ns)): (float(p), float(a), bool(on)) for t, ns, p, a, on in data["pending"]}
        self.labels = int(data["labels"])
        self._loss_batch, self._loss_adapted, self._loss_weight = (float(v) for v in data["losses"])
        self.settlements = int(data["settlements"])
        self.switched_off = int(data["switched_off"])
        return True


def _logloss(prob: float, label: int) -> float:
    p = clip_probability(prob)
    return -math.log(p if label else 1.0 - p)


def summarize_updates(updates: pd.DataFrame, version: str, start: object, end: object) -> dict[str, Any] | None:
    """Batch against adapted quality on ``version``'s labels settled in ``[start, end]``: the drift report's
    view of the bridge's online layer (None when it learnt nothing there)."""
    settled = pd.to_datetime(updates["t1"], utc=True)
    window = updates[
        (updates["model_version"] == version)
        & (settled >= utc_timestamp(start, "start")).to_numpy()
        & (settled <= utc_timestamp(end, "end")).to_numpy()
    ]
    if window.empty:
        return None
    return {
        "labels": len(window),
        "logloss_batch": float(window["logloss_batch"].mean()),
        "logloss_adapted": float(window["logloss_adapted"].mean()),
        "adapted_used": float((window["used"] == "adapted").mean()),
        "slope": float(window["slope"].iloc[-1]),
        "intercept": float(window["intercept"].iloc[-1]),
    }
