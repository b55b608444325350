"""The training set: a point-in-time join with labels, and a holdout at the end behind a purge gap.

Rows, labels and features come from the walk-forward pipeline's own dataset step
(:func:`quant_engine.wfo.dataset.build_dataset`): offline-store rows in the range, labels from
the stored bars with their end ``t1``, features attached by point-in-time join. The last
``holdout_fraction`` of timestamps becomes the holdout. Between them lies the gap: a training row
must have its label known strictly before the holdout starts (``t1 < holdout start``, the purge)
and must start at least ``embargo_bars`` timestamps before it (the embargo, against serially
correlated features), so nothing the holdout measures leaked into training.

Output folder (a run folder of the ``spot_training`` DAG)::

    train/train.parquet             feature columns + label: the trainer's ``train`` channel
    validation/validation.parquet   the holdout, same columns: the ``validation`` channel
    holdout.parquet                 the holdout with ticker, ts, t1, for evaluation and the registry
    train_times.parquet             ticker and ts of each ``train`` row, in the channel's order: the
                                    drift baseline calibrates its thresholds on windows of time
    training_set.json               summary: features, ranges, row counts, data fingerprint, params
    joined/                         the walk-forward dataset step's files it was cut from
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quant_engine.features.offline_store import OfflineStore
from quant_engine.features.registry import get_feature_set
from quant_engine.storage.atomic import write_json_atomic, write_parquet_atomic
from quant_engine.timeutil import utc_day
from quant_engine.training.defaults import DATA_KEYS, DATASET_DEFAULTS
from quant_engine.validation import parse_tickers
from quant_engine.wfo.config import WfoConfig, WfoConfigError
from quant_engine.wfo.dataset import build_dataset

log = logging.getLogger(__name__)

CHANNEL_FILES: dict[str, str] = {"train": "train/train.parquet", "validation": "validation/validation.parquet"}
HOLDOUT_FILE = "holdout.parquet"
TRAIN_TIMES_FILE = "train_times.parquet"
SUMMARY_FILE = "training_set.json"


class TrainingSetError(WfoConfigError):
    """A training set that cannot be built; the message names the parameter and the rule."""


@dataclass(frozen=True)
class TrainingSetConfig:
    """The data of a training run and how its holdout is cut.

    Parameters
    ----------
    data : WfoConfig
        Range, tickers, source, features and labels, validated as a walk-forward run would be.
    holdout_fraction : float
        Share of the last timestamps held out, in (0, 0.5].
    embargo_bars : int
        Timestamps before the holdout that no training row may start in, beyond the purge by ``t1``.
    """

    data: WfoConfig
    holdout_fraction: float = 0.2
    embargo_bars: int = 5

    def __post_init__(self) -> None:
        value = self.holdout_fraction
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 0.5:
            raise TrainingSetError(f"holdout_fraction={value!r} must be a number in (0, 0.5]")
        value = self.embargo_bars
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 252:
            raise TrainingSetError(f"embargo_bars={value!r} must be a whole number between 0 and 252")

    @classmethod
    def from_params(cls, params: Mapping[str, Any], store: OfflineStore | None = None) -> TrainingSetConfig:
        """Validate loosely typed parameters; missing or null keys take :data:`DATASET_DEFAULTS`.

        A null ``end`` reads ``store`` (the feature group) for its last day (of ``tickers``, or of any ticker).
        """
        if not isinstance(params, Mapping):
            raise TrainingSetError(f"parameters must be a JSON object, got {type(params).__name__}")
        unknown = sorted(set(params) - set(DATASET_DEFAULTS))
        if unknown:
            raise TrainingSetError(f"unknown parameter(s) {unknown}; known: {', '.join(DATASET_DEFAULTS)}")
        p = {**DATASET_DEFAULTS, **{k: v for k, v in params.items() if v is not None or k in ("pt_mult", "sl_mult")}}
        window = p.pop("window_days")
        if isinstance(window, bool) or not isinstance(window, int) or not 30 <= window <= 36500:
            raise TrainingSetError(f"window_days={window!r} must be a whole number of days between 30 and 36500")
        if p["end"] is None:
            if store is None:
                raise TrainingSetError("end is null and no offline store was given to read the last stored day from")
            p["end"] = str(_last_stored_day(p["tickers"], store).date())
        if p["start"] is None:
            p["start"] = str((utc_day(p["end"], "end", error=TrainingSetError) - pd.Timedelta(days=window)).date())
        # The CPCV settings only size the walk-forward step's group column, which the cut ignores;
        # a directional book lets an absolute-label run use one ticker.
        data = WfoConfig.from_params(
            {
                **{k: p[k] for k in DATA_KEYS},
                "n_groups": 2,
                "n_test_groups": 1,
                "embargo": 0,
                "min_group_rows": 1,
                "portfolio": "directional",
            }
        )
        return cls(data, p["holdout_fraction"], p["embargo_bars"])

    def to_params(self) -> dict[str, Any]:
        """The resolved parameters (dates filled in), which :meth:`from_params` reads back unchanged."""
        data = self.data.to_params()
        return {
            **{k: data[k] for k in DATA_KEYS},
            "holdout_fraction": self.holdout_fraction,
            "embargo_bars": self.embargo_bars,
        }


def _last_stored_day(tickers: object, store: OfflineStore) -> pd.Timestamp:
    """The UTC day of the latest ``event_time`` the offline store holds for ``tickers`` (None: any)."""
    if store.schema is None:
        raise TrainingSetError(
            f"the offline store (feature group {store.feature_group!r}) is empty; ingest data first, or give end"
        )
    names = parse_tickers(tickers, error=TrainingSetError)
    rows = store.read(list(names) if names else None)
    if rows.empty:
        raise TrainingSetError(f"the offline store holds no rows for tickers {names}; give end or other tickers")
    return utc_day(rows["event_time"].max(), "end", error=TrainingSetError)


def data_fingerprint(*frames: Any) -> str:
    """SHA-256 over the rows' values (column names included), stable across processes and file layouts."""
    digest = hashlib.sha256()
    for frame in frames:
        digest.update(json.dumps(list(map(str, frame.columns))).encode())
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def build_training_set(
    config: TrainingSetConfig, out_dir: Path, store: OfflineStore, bar_store: OfflineStore
) -> dict[str, Any]:
    """Join, label and cut; write the channels, the holdout and the summary into ``out_dir``.

    Raises
    ------
    TrainingSetError
        The range leaves no training rows after the gap, or a side holds one label class only.
    """
    out_dir = Path(out_dir)
    build_dataset(config.data, out_dir / "joined", store, bar_store)
    dataset = pd.read_parquet(out_dir / "joined" / "dataset.parquet")
    features = list(get_feature_set(config.data.feature_set).names)
    stamps = np.sort(dataset["ts"].unique())
    n_holdout = math.ceil(len(stamps) * config.holdout_fraction)
    first_holdout = len(stamps) - n_holdout
    if first_holdout - config.embargo_bars < 1:
        raise TrainingSetError(
            f"{len(stamps)} timestamps leave nothing to train on after a {n_holdout}-timestamp holdout and "
            f"embargo_bars={config.embargo_bars}; widen the range or lower holdout_fraction"
        )
    holdout_start = stamps[first_holdout]
    embargo_start = stamps[first_holdout - config.embargo_bars]
    in_holdout = (dataset["ts"] >= holdout_start).to_numpy()
    in_train = ((dataset["ts"] < embargo_start) & (dataset["t1"] < holdout_start)).to_numpy()
    train, holdout = dataset.loc[in_train], dataset.loc[in_holdout]
    for side, frame in (("training", train), ("holdout", holdout)):
        if frame["label"].nunique() < 2:
            raise TrainingSetError(
                f"the {side} rows ({len(frame)}) hold one label class only; widen the range or change the holdout"
            )
    columns = [*features, "label"]
    for channel, frame in (("train", train), ("validation", holdout)):
        write_parquet_atomic(frame.loc[:, columns].reset_index(drop=True), out_dir / CHANNEL_FILES[channel])
    write_parquet_atomic(
        holdout.loc[:, ["ticker", "ts", "t1", *columns]].reset_index(drop=True), out_dir / HOLDOUT_FILE
    )
    write_parquet_atomic(train.loc[:, ["ticker", "ts"]].reset_index(drop=True), out_dir / TRAIN_TIMES_FILE)
    summary: dict[str, Any] = {
        "features": features,
        "rows": {
            "train": int(in_train.sum()),
            "gap": int((~in_train & ~in_holdout).sum()),
            "holdout": int(in_holdout.sum()),
        },
        "tickers": sorted(dataset["ticker"].unique()),
        "train_start": str(train["ts"].min()),
        "train_end": str(train["ts"].max()),
        "train_last_t1": str(train["t1"].max()),
        "holdout_start": str(holdout["ts"].min()),
        "holdout_end": str(holdout["ts"].max()),
        "fingerprint": data_fingerprint(
            train.loc[:, ["ticker", "ts", "t1", *columns]], holdout.loc[:, ["ticker", "ts", "t1", *columns]]
        ),
        "params": config.to_params(),
        "channels": {c: str(out_dir / f) for c, f in CHANNEL_FILES.items()},
        "holdout": str(out_dir / HOLDOUT_FILE),
    }
    write_json_atomic(out_dir / SUMMARY_FILE, summary, non_finite="null")
    log.info(
        "training set: %d train, %d in the gap, %d holdout rows (holdout from %s)",
        summary["rows"]["train"],
        summary["rows"]["gap"],
        summary["rows"]["holdout"],
        summary["holdout_start"],
    )
    return summary


def load_train_frame(out_dir: Path) -> pd.DataFrame:
    """The ``train`` channel's rows with their ``ticker`` and ``event_time``, as the drift baseline wants them.

    The channel itself holds features and label only (the trainer's contract); the times come from
    the file written beside it.
    """
    out_dir = Path(out_dir)
    train = pd.read_parquet(out_dir / CHANNEL_FILES["train"])
    times = pd.read_parquet(out_dir / TRAIN_TIMES_FILE)
    if len(times) != len(train):
        raise TrainingSetError(
            f"{out_dir / TRAIN_TIMES_FILE} has {len(times)} rows, the train channel {len(train)}; "
            "rebuild the training set"
        )
    return pd.concat([times.rename(columns={"ts": "event_time"}), train], axis=1)


def load_summary(out_dir: Path) -> dict[str, Any]:
    path = Path(out_dir) / SUMMARY_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; build the training set first")
    return json.loads(path.read_text())
