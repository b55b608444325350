"""The live model and what it said: the registry's champion, its probabilities, and the prediction log.

Concept drift is judged on outcomes, so every prediction the batch scorer and the bridge make is
kept in a :class:`PredictionLog` until its label settles: rows ``ticker, ts, prob, model_version,
source``, appended as one Parquet file per batch through a
:class:`~quant_engine.storage.filesystem.FileSystem` (local folder or S3), each written atomically so
a reader never sees half a batch. The log lives beside the model in the registry's storage
(:func:`prediction_log`). The statistics that judge it are in
:mod:`quant_engine.monitoring.concept_drift`.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb

from quant_engine.storage.filesystem import FileSystem, LocalFileSystem
from quant_engine.training.registry import ModelRegistry, ModelVersion
from quant_engine.validation import require_columns, utc_column

__all__ = [
    "PREDICTION_COLUMNS",
    "PREDICTION_KEY",
    "NoChampionError",
    "PredictionLog",
    "champion",
    "predict_proba",
    "prediction_log",
]

PREDICTION_COLUMNS: tuple[str, ...] = ("ticker", "ts", "prob", "model_version", "source")
#: One prediction per model version, ticker and bar, whoever logged it (``source``: batch or bridge).
PREDICTION_KEY: tuple[str, ...] = ("ticker", "ts", "model_version")


class NoChampionError(ValueError):
    """The registry has no champion to score with or to monitor."""


def champion(registry: ModelRegistry) -> ModelVersion:
    """The registry's champion version, or :class:`NoChampionError`."""
    promotion = registry.champion()
    if promotion is None:
        raise NoChampionError(f"model {registry.name!r} has no champion; train and promote one first")
    return registry.get(promotion.version)


def predict_proba(booster: xgb.Booster, frame: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
    """Probabilities of class 1 for ``frame``'s rows, the features in the order the booster expects."""
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise ValueError(f"the rows lack feature column(s) {missing} the model needs")
    matrix = xgb.DMatrix(
        frame[list(features)].to_numpy(dtype=np.float32),
        feature_names=None if booster.feature_names is None else list(features),
    )
    return booster.predict(matrix).astype(np.float64)


class PredictionLog:
    """An append-only log of predictions: one Parquet file per appended batch.

    Parameters
    ----------
    fs : FileSystem
        Where the files live: :class:`~quant_engine.features.offline_store.LocalFileSystem` or
        ``S3FileSystem``; :meth:`local` builds the former from a folder.
    prefix : str
        Key prefix (folder) of the log inside ``fs``.

    Notes
    -----
    Files are named ``part-<UTC nanoseconds>-<random>.parquet`` and written with
    ``replace_atomic`` (temp file and rename locally, a single PUT on S3), so readers see whole
    batches only and file names sort in write order. A rerun of the batch scorer logs the same
    rows again, and the bridge and the batch scorer may both log the live model's view of one bar;
    :meth:`read` keeps one row per ``(ticker, ts, model_version)`` (the latest written; ``source``
    says which writer it came from), so nothing is counted twice.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> log = PredictionLog.local(tempfile.mkdtemp())
    >>> rows = pd.DataFrame({"ticker": ["A", "B"], "ts": pd.Timestamp("2024-01-02 21:00", tz="UTC"),
    ...                      "prob": [0.6, 0.4], "model_version": "v1", "source": "batch"})
    >>> _ = log.append(rows); _ = log.append(rows)
    >>> len(log.read())
    2
    """

    def __init__(self, fs: FileSystem, prefix: str = "predictions") -> None:
        if not isinstance(prefix, str) or not prefix.strip("/"):
            raise ValueError(f"prefix={prefix!r} must be a non-empty key prefix")
        self.fs = fs
        self.prefix = prefix.strip("/")

    @classmethod
    def local(cls, folder: Path | str) -> PredictionLog:
        """A log in ``folder`` on the local disk (files directly inside it)."""
        folder = Path(folder)
        return cls(LocalFileSystem(folder.parent), folder.name)

    def __repr__(self) -> str:
        return f"PredictionLog({self.fs!r}, prefix={self.prefix!r})"

    @staticmethod
    def validate(frame: pd.DataFrame) -> pd.DataFrame:
        """The rows in the log's schema, or a ``ValueError`` naming the rule they break."""
        frame = require_columns(frame, PREDICTION_COLUMNS, "predictions")
        out = pd.DataFrame(
            {
                "ticker": frame["ticker"].astype(str),
                "ts": utc_column(frame, "ts", "predictions"),
                "prob": pd.to_numeric(frame["prob"], errors="raise").astype("float64"),
                "model_version": frame["model_version"].astype(str),
                "source": frame["source"].astype(str),
            }
        )
        if out["ts"].isna().any():
            raise ValueError("predictions column 'ts' holds NaT; every prediction needs its time")
        bad = ~(np.isfinite(out["prob"]) & out["prob"].between(0.0, 1.0))
        if bad.any():
            first = out[bad].iloc[0]
            raise ValueError(
                f"predictions' prob must be a probability in [0, 1]; {int(bad.sum())} rows are not, "
                f"first {first['ticker']}@{first['ts']}: {first['prob']!r}"
            )
        return out.reset_index(drop=True)

    def append(self, frame: pd.DataFrame) -> str | None:
        """Write ``frame`` as one new file; returns its key, or None when ``frame`` has no rows."""
        rows = self.validate(frame)
        if rows.empty:
            return None
        buffer = io.BytesIO()
        rows.to_parquet(buffer, index=False)
        key = f"{self.prefix}/part-{pd.Timestamp.now(tz='UTC').value:020d}-{uuid.uuid4().hex[:12]}.parquet"
        self.fs.replace_atomic(key, buffer.getvalue(), expected_version=None)
        return key

    def files(self) -> list[str]:
        """Keys of the log's files, oldest first."""
        return sorted(k for k in self.fs.list(self.prefix) if k.rsplit("/", 1)[-1].startswith("part-"))

    def read(self) -> pd.DataFrame:
        """Every logged prediction, the latest per ``(ticker, ts, model_version)``, sorted by ``(ts, ticker)``."""
        parts = [pd.read_parquet(io.BytesIO(self.fs.read(key))) for key in self.files()]
        if not parts:
            return self.validate(_empty_predictions())
        frame = self.validate(pd.concat(parts, ignore_index=True))
        frame = frame.drop_duplicates(list(PREDICTION_KEY), keep="last")
        return frame.sort_values(["ts", "ticker"], kind="stable").reset_index(drop=True)


def _empty_predictions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ticker": pd.Series(dtype=str),
            "ts": pd.Series(dtype="datetime64[ns, UTC]"),
            "prob": pd.Series(dtype="float64"),
            "model_version": pd.Series(dtype=str),
            "source": pd.Series(dtype=str),
        }
    )


def prediction_log(registry: ModelRegistry) -> PredictionLog:
    """The prediction log of the registry's model, in the registry's own storage."""
    return PredictionLog(registry.fs, f"{registry.name}/predictions")
