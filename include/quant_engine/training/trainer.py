"""Checkpointed XGBoost training that resumes bit-identically: the SageMaker script-mode entry point.

Run as ``python -m quant_engine.training.trainer``; the same script runs as a SageMaker (managed
spot) training job and as a local subprocess. Inputs, each overridable by a flag:

=====================  ============================================  ==========================
what                   environment (SageMaker's contract)            flag
=====================  ============================================  ==========================
training data          ``SM_CHANNEL_TRAIN`` (Parquet file or dir)    ``--train``
validation data        ``SM_CHANNEL_VALIDATION`` (optional)          ``--validation``
model output           ``SM_MODEL_DIR``                              ``--model-dir``
hyperparameters        ``SM_HPS`` (JSON), else the file              ``--hyperparameters`` (JSON)
                       ``QE_HYPERPARAMETERS_FILE`` or
                       ``/opt/ml/input/config/hyperparameters.json``
checkpoints            ``QE_CHECKPOINT_DIR``, else                   ``--checkpoint-dir``
                       ``/opt/ml/checkpoints`` (dir or ``s3://``)
=====================  ============================================  ==========================

Each Parquet row holds numeric feature columns and a 0/1 ``label``. The model dir receives
``model.json`` (XGBoost JSON) and ``metrics.json``. Exit codes: 0 done, :data:`EXIT_INTERRUPTED`
after a SIGTERM (checkpoint written; run again to resume), :data:`EXIT_BAD_INPUT` for unusable
inputs.

**Why resume is exact.** XGBoost keeps its row and column sampling state inside the process (a
global generator plus one per tree updater), and a checkpointed booster does not carry it, so
``xgb_model=`` continuation differs from an uninterrupted run as soon as ``subsample`` or
``colsample_bytree`` is below 1. Here XGBoost samples nothing at random. Round ``i`` draws its
own sample from ``numpy.random.default_rng([seed, i])``: rows as 0/1 instance weights (what
XGBoost's ``subsample`` does to gradients), columns as feature weights that leave XGBoost's
column sampler exactly the chosen columns to pick. Training runs one round at a time, always the
same way, so round ``i`` depends only on the data, the params, the seed, ``i`` and the model of
rounds ``< i``, which the checkpoint restores byte for byte; the quantile cuts are fixed by a
``QuantileDMatrix`` built once from the data. Uninterrupted and resumed runs therefore write the
same ``model.json`` bytes (same XGBoost build; the thread count may differ).

Re-seeding XGBoost instead does not work in 3.2 (measured): neither ``seed_per_iteration`` nor a
per-round ``set_param({"seed": ...})`` reaches the column sampler, which the tree updater seeds
once from the global generator when it is created; after a restart that creation draws from the
generator too, shifting the row sample as well. For the same reason ``colsample_bylevel``,
``colsample_bynode`` (< 1), ``booster="dart"`` and tree methods other than ``hist`` are refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from quant_engine.progress import Progress
from quant_engine.storage.atomic import write_bytes_atomic
from quant_engine.training.checkpoints import CheckpointManager, S3Store, open_checkpoint_store, sha256_hex
from quant_engine.validation import real_number, whole_number

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_INTERRUPTED",
    "LABEL",
    "TrainingInputError",
    "TrainingInterrupted",
    "TrainResult",
    "TrainingParams",
    "load_channel",
    "main",
    "train",
]

log = logging.getLogger(__name__)

LABEL = "label"
#: Exit code after a SIGTERM: the round finished, a checkpoint holds it, run again to resume.
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL
#: Exit code for inputs the trainer cannot use (missing channel, one class, bad hyperparameter).
EXIT_BAD_INPUT = 2
#: Marks the machine-readable lines ``--progress`` prints for the spot simulator.
PROGRESS_PREFIX = "QE-PROGRESS "
HPS_FILE = "/opt/ml/input/config/hyperparameters.json"
CHECKPOINT_DIR = "/opt/ml/checkpoints"
#: Sampling scheme version, part of the params fingerprint: a change invalidates old checkpoints.
_SAMPLING_SCHEME = 1
#: Feature weight of a chosen column; unchosen ones get 0, which XGBoost floors at 1e-6, so its
#: weighted sampler ranks every chosen column first whatever its random draws.
_CHOSEN_WEIGHT = 1e30
#: XGBoost parameters whose randomness or semantics cannot be replayed round by round.
_FIXED = {
    "booster": "gbtree",
    "tree_method": "hist",
    "colsample_bylevel": 1,
    "colsample_bynode": 1,
    "num_parallel_tree": 1,
    "sampling_method": "uniform",
}
_OBJECTIVES = ("binary:logistic",)
#: Parameters that do not change the trees: a restart on a bigger instance may change them.
#: (CPU ``hist`` grows the same bytes with 1, 2 or 4 threads; measured with xgboost 3.2.)
_NOT_MODEL_SHAPING = frozenset({"nthread", "n_jobs", "verbosity"})
_DEFAULTS: dict[str, Any] = {"objective": "binary:logistic", "tree_method": "hist", "seed": 0}


class TrainingInputError(ValueError):
    """The data, paths or hyperparameters cannot be trained on; the message says which and why."""


class TrainingInterrupted(Exception):  # noqa: N818 - a signal, not a failure
    """Training stopped on request (SIGTERM) after checkpointing ``round`` rounds."""

    def __init__(self, round: int, checkpoint: str | None) -> None:
        super().__init__(f"interrupted after round {round}; checkpoint {checkpoint}")
        self.round = round
        self.checkpoint = checkpoint


# --------------------------------------------------------------------------------------------
# Hyperparameters
# --------------------------------------------------------------------------------------------


def _coerce(value: object) -> object:
    """SageMaker passes every hyperparameter as a string; ``"0.1"`` -> 0.1, ``"hist"`` stays."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _whole(params: dict[str, Any], name: str, default: int, minimum: int) -> int:
    value = params.pop(name, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return whole_number(value, f"hyperparameter {name}", minimum=minimum, error=TrainingInputError)


def _fraction(params: dict[str, Any], name: str) -> float:
    value = params.pop(name, 1.0)
    return real_number(value, f"hyperparameter {name}", minimum=0, maximum=1, above=True, error=TrainingInputError)


def _finite_or_text(value: object) -> bool:
    """False for a number that is not finite, also when written as text ("nan", "inf": XGBoost reads them)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return True
    return not isinstance(value, float) or math.isfinite(value)


_UNUSED_PARAMETERS = re.compile(r"Parameters: \{(?P<names>[^}]*)\} are not used")


def _check_xgboost_params(params: Mapping[str, Any]) -> None:
    """Refuse what XGBoost would refuse, or silently ignore, before any data moves.

    Numbers must be finite (XGBoost trains on a NaN learning rate and returns NaN metrics). A one
    round dry run on two rows then lets XGBoost itself judge every value (``max_depth=-3``,
    ``max_bin=0``, an unknown ``eval_metric``), and the names it reports as unused are unknown here.
    """
    bad = [f"{k}={v!r}" for k, v in params.items() if not _finite_or_text(v)]
    if bad:
        raise TrainingInputError(f"hyperparameter(s) {', '.join(bad)} must be finite numbers")
    rows = xgb.DMatrix(np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32), label=[0.0, 1.0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            xgb.train(dict(params), rows, 1, evals=[(rows, "dry_run")], verbose_eval=False)
        except xgb.core.XGBoostError as exc:
            reason = next((line for line in str(exc).splitlines() if line.strip()), str(exc))
            raise TrainingInputError(f"XGBoost refuses the hyperparameters: {reason.split(': ', 1)[-1]}") from None
    unused = [m.group("names") for w in caught if (m := _UNUSED_PARAMETERS.search(str(w.message)))]
    if unused:
        names = sorted({n.strip().strip('"') for group in unused for n in group.split(",") if n.strip()})
        raise TrainingInputError(f"unknown hyperparameter(s) {names}: XGBoost does not use them (a typo?)")


@dataclass(frozen=True)
class TrainingParams:
    """Hyperparameters split into what this trainer does itself and what XGBoost gets.

    Parameters
    ----------
    num_round : int
        Boosting rounds (``num_round``, default 100).
    checkpoint_every : int
        Checkpoint after every this many rounds (``checkpoint_every``, default 10; 0: only on
        SIGTERM).
    keep_checkpoints : int
        Newest checkpoints kept (``keep_checkpoints``, default 3).
    seed : int
        Seed of the per-round row and column samples (``seed``, default 0).
    subsample, colsample_bytree : float
        Fractions of rows and columns each round samples (default 1: all).
    xgb_params : dict
        Everything else, passed to XGBoost as given (``objective`` must be ``binary:logistic``).
    """

    num_round: int = 100
    checkpoint_every: int = 10
    keep_checkpoints: int = 3
    seed: int = 0
    subsample: float = 1.0
    colsample_bytree: float = 1.0
    xgb_params: dict[str, Any] = field(default_factory=lambda: dict(_DEFAULTS))

    @classmethod
    def from_hyperparameters(cls, hyperparameters: Mapping[str, object] | None) -> TrainingParams:
        """Parse and validate hyperparameters (strings as SageMaker passes them, or typed values)."""
        if hyperparameters is not None and not isinstance(hyperparameters, Mapping):
            raise TrainingInputError(f"hyperparameters={hyperparameters!r} must be a mapping of name to value")
        # SageMaker's hyperparameters file also holds its own sagemaker_* entries (script mode).
        given = {str(k): _coerce(v) for k, v in (hyperparameters or {}).items() if not str(k).startswith("sagemaker_")}
        for alias, name in (("num_boost_round", "num_round"), ("random_state", "seed")):
            if alias in given:
                if name in given:
                    raise TrainingInputError(f"hyperparameters give both {alias!r} and {name!r}; give one")
                given[name] = given.pop(alias)
        params = {**_DEFAULTS, **given}
        num_round = _whole(params, "num_round", 100, 1)
        checkpoint_every = _whole(params, "checkpoint_every", 10, 0)
        keep = _whole(params, "keep_checkpoints", 3, 1)
        seed = _whole(params, "seed", 0, 0)
        subsample = _fraction(params, "subsample")
        colsample = _fraction(params, "colsample_bytree")
        for name, allowed in _FIXED.items():
            value = params.get(name, allowed)
            if value != allowed:
                raise TrainingInputError(
                    f"hyperparameter {name}={value!r} is not supported: only {allowed!r} keeps resumed "
                    "training identical to an uninterrupted run"
                )
        if params.get("objective") not in _OBJECTIVES:
            raise TrainingInputError(
                f"hyperparameter objective={params.get('objective')!r} is not supported; use one of {_OBJECTIVES}"
            )
        params["seed"] = seed
        _check_xgboost_params(params)
        return cls(num_round, checkpoint_every, keep, seed, subsample, colsample, params)

    @property
    def fingerprint(self) -> str:
        """Hash of everything that shapes the model except ``num_round``.

        A longer run may resume from a shorter one's checkpoint: round ``i`` never depends on how
        many rounds follow it. The XGBoost version is included because another build may grow
        other trees from the same inputs.
        """
        shape = {
            "xgb_params": {k: v for k, v in self.xgb_params.items() if k not in _NOT_MODEL_SHAPING},
            "seed": self.seed,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "sampling_scheme": _SAMPLING_SCHEME,
            "xgboost": xgb.__version__,
        }
        return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Matrix:
    features: list[str]
    x: np.ndarray  # float32, C order
    y: np.ndarray  # float32 0/1

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(json.dumps({"features": self.features, "shape": self.x.shape}).encode())
        digest.update(self.x.tobytes())
        digest.update(self.y.tobytes())
        return digest.hexdigest()


def load_channel(path: str | Path, channel: str = "train") -> pd.DataFrame:
    """Read a channel: one Parquet file, or every ``*.parquet`` under a directory (sorted by path).

    Raises
    ------
    TrainingInputError
        The path does not exist or holds no Parquet file.
    """
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not files:
            raise TrainingInputError(f"channel {channel!r} at {path} holds no *.parquet file")
    else:
        raise TrainingInputError(f"channel {channel!r}: {path} does not exist")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def _matrix(frame: pd.DataFrame, channel: str, features: Sequence[str] | None = None) -> _Matrix:
    """Features and labels as float32 arrays, validated."""
    if not isinstance(frame, pd.DataFrame):
        raise TrainingInputError(f"{channel} data must be a DataFrame or a Parquet path, not {type(frame).__name__}")
    if LABEL not in frame.columns:
        raise TrainingInputError(f"{channel} data has no {LABEL!r} column; columns: {list(frame.columns)[:10]}")
    if len(frame) == 0:
        raise TrainingInputError(f"{channel} data is empty; there is nothing to train on")
    names = [str(c) for c in frame.columns if c != LABEL] if features is None else list(features)
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise TrainingInputError(f"{channel} data lacks the training features {missing}")
    if not names:
        raise TrainingInputError(f"{channel} data has only a {LABEL!r} column and no features")
    bad = [n for n in names if not (pd.api.types.is_numeric_dtype(frame[n]) or pd.api.types.is_bool_dtype(frame[n]))]
    if bad:
        raise TrainingInputError(f"{channel} feature columns {bad} are not numeric")
    label = pd.to_numeric(frame[LABEL], errors="coerce").to_numpy(dtype=np.float64)
    invalid = ~np.isin(label, (0.0, 1.0))
    if invalid.any():
        rows = np.flatnonzero(invalid)[:5].tolist()
        raise TrainingInputError(f"{channel} {LABEL!r} must be 0 or 1 (binary:logistic); rows {rows} are not")
    x = np.ascontiguousarray(frame[names].to_numpy(dtype=np.float32))
    return _Matrix(names, x, label.astype(np.float32))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    """What one call of :func:`train` did.

    Parameters
    ----------
    model_path, metrics_path : Path
        ``model.json`` and ``metrics.json`` in the model dir.
    num_round : int
        Rounds in the model.
    resumed_from : int
        Rounds restored from a checkpoint (0: started clean).
    checkpoints_written : int
        Checkpoints this call wrote.
    metrics : dict
        The content of ``metrics.json``.
    """

    model_path: Path
    metrics_path: Path
    num_round: int
    resumed_from: int
    checkpoints_written: int
    metrics: dict[str, Any]


def _round_sample(
    seed: int, round: int, n_rows: int, n_cols: int, params: TrainingParams
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Row weights and feature weights of one round: a pure function of ``(seed, round)``."""
    rng = np.random.default_rng([seed, round])
    rows = (rng.random(n_rows) < params.subsample).astype(np.float32) if params.subsample < 1 else None
    cols = None
    k = _columns_per_tree(params.colsample_bytree, n_cols)
    if k < n_cols:
        cols = np.zeros(n_cols, dtype=np.float32)
        cols[rng.choice(n_cols, size=k, replace=False)] = _CHOSEN_WEIGHT
    return rows, cols


def _columns_per_tree(colsample: float, n_cols: int) -> int:
    return max(1, math.floor(colsample * n_cols))


def _booster_params(params: TrainingParams, n_cols: int) -> dict[str, Any]:
    """XGBoost's parameters: its own sampling off, or (columns) set to pick exactly our ``k``."""
    xgb = dict(params.xgb_params)
    k = _columns_per_tree(params.colsample_bytree, n_cols)
    if k < n_cols:
        # (k + 0.5) / n: XGBoost computes floor(fraction * n) in float32; the half keeps it at k.
        xgb["colsample_bytree"] = (k + 0.5) / n_cols
    return xgb


def _binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    eps = 1e-15
    q = np.clip(p.astype(np.float64), eps, 1 - eps)
    logloss = float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
    positives = int(y.sum())
    negatives = len(y) - positives
    auc = None  # undefined with one class
    if positives and negatives:
        ranks = pd.Series(p).rank().to_numpy()
        auc = float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))
    return {"rows": len(y), "logloss": logloss, "auc": auc, "accuracy": float(np.mean((p >= 0.5) == (y == 1)))}


class _CheckpointWriter:
    """Writes checkpoints on a background thread while the next rounds train.

    Serialising the booster takes a millisecond or two; the writes, their fsyncs and S3 round
    trips take longer and would stall training. At most one write is in flight: the next
    checkpoint (or the end of training) first waits for it, so rounds are stored in order and a
    failed write surfaces as an error in the training loop. A kill while a write is in flight
    loses only that checkpoint; the atomic write leaves the previous ones whole.
    """

    def __init__(self, manager: CheckpointManager, emit: Callable[[dict[str, Any]], None], start: int) -> None:
        self.manager = manager
        self.emit = emit
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self.pending: Future[None] | None = None
        self.last_round = start  # the resumed checkpoint is stored already
        self.written = 0
        self.blocked_seconds = 0.0  # training time spent on checkpoints (serialise + wait)
        self.write_seconds = 0.0  # background time spent writing

    def _write(self, round: int, model: bytes, blocked: float) -> None:
        began = time.perf_counter()
        self.manager.save(round, model)
        seconds = time.perf_counter() - began
        self.written += 1
        self.write_seconds += seconds
        self.emit({"event": "checkpoint", "round": round, "seconds": blocked, "write_seconds": seconds})

    def wait(self) -> None:
        """Block until the write in flight (if any) is stored; re-raises its error."""
        if self.pending is not None:
            began = time.perf_counter()
            pending, self.pending = self.pending, None
            pending.result()
            self.blocked_seconds += time.perf_counter() - began

    def submit(self, round: int, booster: Any) -> None:
        """Queue the booster's state after ``round`` rounds, unless that round is already stored."""
        if round <= self.last_round:
            return
        began = time.perf_counter()
        self.wait()
        model = bytes(booster.save_raw("ubj"))
        blocked = time.perf_counter() - began
        self.blocked_seconds += blocked
        self.last_round = round
        self.pending = self.pool.submit(self._write, round, model, blocked)

    def close(self) -> None:
        """Let a write in flight finish (errors are :meth:`wait`'s to report) and stop the thread."""
        self.pool.shutdown(wait=True)


def _as_frame(data: pd.DataFrame | str | Path, channel: str) -> pd.DataFrame:
    return data if isinstance(data, pd.DataFrame) else load_channel(data, channel)


def train(
    train_data: pd.DataFrame | str | Path,
    model_dir: str | Path,
    *,
    validation_data: pd.DataFrame | str | Path | None = None,
    hyperparameters: Mapping[str, object] | None = None,
    checkpoint_dir: str | Path | None = None,
    s3_store: S3Store | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a binary XGBoost model, resuming from the newest usable checkpoint.

    Parameters
    ----------
    train_data : DataFrame or path
        Numeric feature columns and a 0/1 ``label``; a Parquet file or a directory of them.
    model_dir : path
        Receives ``model.json`` and ``metrics.json`` (each written atomically).
    validation_data : DataFrame or path, optional
        Same columns; scored into ``metrics.json``.
    hyperparameters : mapping, optional
        See :class:`TrainingParams`; strings are parsed as SageMaker passes them.
    checkpoint_dir : path or ``s3://`` URI, optional
        Where checkpoints live; None trains without any.
    s3_store : callable, optional
        Makes the store of an ``s3://`` checkpoint location from its bucket and prefix.
    should_stop : callable, optional
        Polled after every round; when it returns True the trainer checkpoints and raises
        :class:`TrainingInterrupted` (the entry point wires it to SIGTERM).
    on_event : callable, optional
        Called with ``{"event": "resume"|"round"|"checkpoint", "round": r, ...}`` for progress;
        ``checkpoint`` events (once the checkpoint is stored, with ``seconds`` the training loop
        spent on it and ``write_seconds`` the background write) come from the writer thread.

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingInputError
        Missing or empty data, a label with one class, unusable hyperparameters.
    TrainingInterrupted
        ``should_stop`` asked to stop; the checkpoint holds every finished round.

    Examples
    --------
    >>> import tempfile
    >>> rng = np.random.default_rng(0)
    >>> frame = pd.DataFrame({"x": rng.normal(size=200)})
    >>> frame["label"] = (frame["x"] > 0).astype(int)
    >>> result = train(frame, tempfile.mkdtemp(), hyperparameters={"num_round": 5, "subsample": 0.8})
    >>> result.num_round, result.metrics["train"]["accuracy"] > 0.9
    (5, True)
    """
    emit = on_event or (lambda event: None)
    stop = should_stop or (lambda: False)
    params = TrainingParams.from_hyperparameters(hyperparameters)
    data = _matrix(_as_frame(train_data, "train"), "train")
    if len(np.unique(data.y)) < 2:
        raise TrainingInputError(
            f"train {LABEL!r} has only the class {int(data.y[0])} in {len(data.y)} rows; "
            "a classifier needs both 0 and 1"
        )
    valid = None
    if validation_data is not None:
        valid = _matrix(_as_frame(validation_data, "validation"), "validation", data.features)
    model_dir = Path(model_dir)
    n_rows, n_cols = data.x.shape

    manager = None
    if checkpoint_dir is not None:
        fs, prefix = open_checkpoint_store(checkpoint_dir, s3_store=s3_store)
        manager = CheckpointManager(
            fs,
            data.fingerprint,
            params.fingerprint,
            prefix=prefix,
            keep=params.keep_checkpoints,
            xgboost_version=xgb.__version__,
        )

    started = time.perf_counter()
    dtrain = xgb.QuantileDMatrix(data.x, label=data.y, feature_names=data.features)
    xgb_params = _booster_params(params, n_cols)
    booster, start = None, 0
    checkpoint = manager.latest(max_round=params.num_round) if manager else None
    while manager is not None and checkpoint is not None and booster is None:
        try:
            booster = xgb.Booster(xgb_params, [dtrain], model_file=bytearray(checkpoint.model))
            start = checkpoint.round
        except xgb.core.XGBoostError as exc:
            log.warning("checkpoint %s is corrupt (XGBoost cannot load it: %s); skipping it", checkpoint.key, exc)
            checkpoint = manager.latest(max_round=checkpoint.round - 1) if checkpoint.round > 1 else None
    if booster is None:
        booster = xgb.Booster(xgb_params, [dtrain])
    else:
        assert checkpoint is not None, "a booster is only loaded from a checkpoint"
        log.info("resuming from checkpoint %s at round %d of %d", checkpoint.key, start, params.num_round)
    emit({"event": "resume", "round": start})

    writer = _CheckpointWriter(manager, emit, start) if manager is not None else None
    progress = Progress(params.num_round - start, f"training rounds {start + 1}..{params.num_round}", every_s=10.0)
    try:
        for i in range(start, params.num_round):
            if stop():
                if writer is not None:
                    writer.submit(i, booster)
                    writer.wait()
                raise TrainingInterrupted(i, None if writer is None else f"round {writer.last_round} in {manager!r}")
            rows, cols = _round_sample(params.seed, i, n_rows, n_cols, params)
            if rows is not None:
                dtrain.set_weight(rows)
            if cols is not None:
                dtrain.set_info(feature_weights=cols)
            booster.update(dtrain, i)
            emit({"event": "round", "round": i + 1})
            progress.advance()
            if writer is not None and params.checkpoint_every and (i + 1) % params.checkpoint_every == 0:
                writer.submit(i + 1, booster)
        if writer is not None:
            writer.wait()
    finally:
        progress.close()
        if writer is not None:
            writer.close()
    train_seconds = time.perf_counter() - started

    model = bytes(booster.save_raw("json"))
    metrics: dict[str, Any] = {
        "num_round": params.num_round,
        "resumed_from": start,
        "checkpoints_written": 0 if writer is None else writer.written,
        "checkpoint_seconds": 0.0 if writer is None else writer.blocked_seconds,
        "checkpoint_write_seconds": 0.0 if writer is None else writer.write_seconds,
        "train_seconds": train_seconds,
        "features": data.features,
        "data_fingerprint": data.fingerprint,
        "params_fingerprint": params.fingerprint,
        "model_sha256": sha256_hex(model),
        "xgboost_version": xgb.__version__,
        "train": _binary_metrics(data.y, booster.predict(xgb.DMatrix(data.x, feature_names=data.features))),
    }
    if valid is not None:
        metrics["validation"] = _binary_metrics(
            valid.y, booster.predict(xgb.DMatrix(valid.x, feature_names=valid.features))
        )
    model_path, metrics_path = model_dir / "model.json", model_dir / "metrics.json"
    write_bytes_atomic(model_path, model)
    write_bytes_atomic(metrics_path, json.dumps(metrics, indent=2, sort_keys=True).encode())
    return TrainResult(model_path, metrics_path, params.num_round, start, metrics["checkpoints_written"], metrics)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _hyperparameters(cli_value: str | None, env: Mapping[str, str]) -> dict[str, object]:
    """``--hyperparameters``, else ``SM_HPS``, else SageMaker's hyperparameters file, else none."""
    for source, text in (("--hyperparameters", cli_value), ("SM_HPS", env.get("SM_HPS"))):
        if text:
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise TrainingInputError(f"{source} is not valid JSON: {exc}") from exc
            if not isinstance(value, dict):
                raise TrainingInputError(f"{source}={text!r} must be a JSON object of name to value")
            return value
    path = Path(env.get("QE_HYPERPARAMETERS_FILE", HPS_FILE))
    if path.is_file():
        try:
            value = json.loads(path.read_text())
        except ValueError as exc:
            raise TrainingInputError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise TrainingInputError(f"{path} must hold a JSON object of name to value")
        return value
    return {}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m quant_engine.training.trainer",
        description="Checkpointed XGBoost training (SageMaker script mode); flags override SM_* variables.",
    )
    parser.add_argument("--train", help="training Parquet file or dir (default: $SM_CHANNEL_TRAIN)")
    parser.add_argument("--validation", help="validation Parquet file or dir (default: $SM_CHANNEL_VALIDATION)")
    parser.add_argument("--model-dir", help="output dir for model.json and metrics.json (default: $SM_MODEL_DIR)")
    parser.add_argument(
        "--checkpoint-dir",
        help=f"checkpoint dir or s3://bucket/prefix (default: $QE_CHECKPOINT_DIR, else {CHECKPOINT_DIR})",
    )
    parser.add_argument("--no-checkpoints", action="store_true", help="train without checkpoints")
    parser.add_argument("--hyperparameters", help="JSON object (default: $SM_HPS, else " + HPS_FILE + ")")
    parser.add_argument(
        "--progress",
        action="store_true",
        help=f"print one '{PROGRESS_PREFIX}{{json}}' line per round, checkpoint and resume",
    )
    return parser


def main(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None, s3_store: S3Store | None = None
) -> int:
    """Run the entry point; returns the exit code (0, :data:`EXIT_INTERRUPTED` or :data:`EXIT_BAD_INPUT`).

    ``s3_store`` reaches an ``s3://`` checkpoint dir (``python -m quant_engine.aws.trainer_entry``
    passes one made from the job's environment); without it such a dir is refused as bad input.
    """
    env = os.environ if env is None else env
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        # The spot notice: let the running round finish, then checkpoint and leave.
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())

    lock = threading.Lock()  # the checkpoint writer reports from its own thread

    def progress(event: dict[str, Any]) -> None:
        with lock:
            sys.stdout.write(PROGRESS_PREFIX + json.dumps(event) + "\n")
            sys.stdout.flush()

    try:
        train_path = args.train or env.get("SM_CHANNEL_TRAIN")
        if not train_path:
            raise TrainingInputError("no training channel: set SM_CHANNEL_TRAIN or pass --train")
        model_dir = args.model_dir or env.get("SM_MODEL_DIR")
        if not model_dir:
            raise TrainingInputError("no model dir: set SM_MODEL_DIR or pass --model-dir")
        checkpoint_dir = (
            None if args.no_checkpoints else (args.checkpoint_dir or env.get("QE_CHECKPOINT_DIR") or CHECKPOINT_DIR)
        )
        if str(checkpoint_dir).startswith("s3://") and s3_store is None:
            raise TrainingInputError(
                f"checkpoint dir {checkpoint_dir} is on S3; run python -m quant_engine.aws.trainer_entry to reach it"
            )
        result = train(
            train_path,
            model_dir,
            validation_data=args.validation or env.get("SM_CHANNEL_VALIDATION") or None,
            hyperparameters=_hyperparameters(args.hyperparameters, env),
            checkpoint_dir=checkpoint_dir,
            s3_store=s3_store,
            should_stop=stop.is_set,
            on_event=progress if args.progress else None,
        )
    except TrainingInputError as exc:
        log.error("%s", exc)
        return EXIT_BAD_INPUT
    except TrainingInterrupted as exc:
        log.warning("SIGTERM: stopped after round %d, checkpoint %s; run again to resume", exc.round, exc.checkpoint)
        return EXIT_INTERRUPTED
    log.info("trained %d rounds (resumed from %d): %s", result.num_round, result.resumed_from, result.model_path)
    return 0


if __name__ == "__main__":
    # XGBoost imports scikit-learn (and SciPy) only for its sklearn wrappers, which the trainer
    # never uses; keeping it out takes ~1.6 s off every spot restart.
    sys.modules.setdefault("sklearn", None)  # type: ignore[arg-type]
    sys.exit(main())
