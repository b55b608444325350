"""Where the walk-forward's ``(trial, split)`` fits run: one fit, and the runners that run many.

:func:`run_split` is one fit, the same function everywhere: a mapped DAG task, ``quant-engine wfo
run``, and the SageMaker Processing job's entry point (:mod:`quant_engine.wfo.processing_entry`).
A :class:`FitRunner` runs a list of them: :class:`LocalFits` in this process, or
:class:`quant_engine.aws.processing.SageMakerFits` as Processing jobs; the composition root
(:func:`quant_engine.backends.make_wfo_fits`) picks one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import xgboost as xgb

from quant_engine.features.registry import get_feature_set
from quant_engine.progress import Progress
from quant_engine.storage.atomic import write_parquet_atomic
from quant_engine.validation import whole_number
from quant_engine.wfo.dataset_file import dataset_rows, read_rows
from quant_engine.wfo.run_folder import TEST, TRAIN, load_config, load_dataset, prediction_path, split_path

__all__ = ["PREDICTION_KEYS", "FitRunner", "LocalFits", "run_split"]


class FitRunner(Protocol):
    """Runs planned ``(trial, split)`` fits of a run folder, leaving each one's predictions in it."""

    def prepare(self, run_dir: Path) -> None:
        """Make a planned run folder ready for :meth:`run` (stage it where the fits will read it)."""
        ...

    def run(self, run_dir: Path, tasks: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        """Run ``tasks``; one result per task, with the ``path`` of its predictions in the run folder."""
        ...

    def batches(self, tasks: Sequence[tuple[int, int]], chunk: int = 1) -> list[list[tuple[int, int]]]:
        """``tasks`` packed into the lists :meth:`run` should get at once (a DAG maps one task over them);
        ``chunk`` is how many fits a list holds where the runner leaves that to the caller."""
        ...


#: The columns a split's predictions carry beside ``prob``, in the file's order after ``prob``.
PREDICTION_KEYS: tuple[str, ...] = ("ticker", "ts", "fwd_ret_1", "t1", "label", "group")


def run_split(
    run_dir: Path, trial_id: int, split_id: int, *, output_dir: Path | None = None, whole_panel: bool = False
) -> dict[str, Any]:
    """Train trial ``trial_id`` on split ``split_id``'s purged training rows and predict its test rows.

    Writes ``predictions/trial=<t>/split=<s>.parquet`` under ``output_dir`` (default: the run
    folder) with ``ticker, ts, prob, fwd_ret_1, t1, label, group``. The model is seeded and
    single-threaded, so a rerun writes the same bytes of predictions.

    Only the split's training and test rows are read, each with the columns it needs
    (:func:`~quant_engine.wfo.dataset_file.read_rows`), so the fit's memory follows the split, not the
    universe. ``whole_panel=True`` reads the whole dataset and slices it in memory instead, as
    before the split read: the oracle the tests and ``bench/scale.py`` hold the split read to.
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    if not 0 <= trial_id < len(config.trials):
        raise ValueError(f"trial_id={trial_id} is not a trial of this run (0..{len(config.trials) - 1})")
    split_file = split_path(run_dir, split_id)
    if not split_file.exists():
        raise FileNotFoundError(f"{split_file} does not exist; split_id={split_id} is not in the plan")
    dataset_file = run_dir / "dataset.parquet"
    if not dataset_file.exists():
        raise FileNotFoundError(f"{dataset_file} does not exist; build the dataset first")
    trial = config.trials[trial_id]
    names = get_feature_set(config.feature_set).names
    with np.load(split_file) as stored:
        roles = stored["roles"]
    n_rows = dataset_rows(dataset_file)
    if len(roles) != n_rows:
        raise ValueError(f"{split_file} has {len(roles)} rows but the dataset {n_rows}; rebuild the plan")
    train, test = np.flatnonzero(roles == TRAIN), np.flatnonzero(roles == TEST)
    del roles
    if whole_panel:
        data = load_dataset(run_dir)
        features = data[names].to_numpy(dtype=np.float32)
        labels = data["label"].to_numpy()
        train_x, train_y, test_x = features[train], labels[train], features[test]
        keys = data.iloc[test][list(PREDICTION_KEYS)]
        del data, features, labels
    else:
        rows = read_rows(dataset_file, train, [*names, "label"])
        train_x, train_y = rows[names].to_numpy(dtype=np.float32), rows["label"].to_numpy()
        rows = read_rows(dataset_file, test, [*names, *PREDICTION_KEYS])
        test_x, keys = rows[names].to_numpy(dtype=np.float32), rows[list(PREDICTION_KEYS)]
        del rows
    model = xgb.XGBClassifier(
        **trial.model_params,
        objective="binary:logistic",
        tree_method="hist",
        random_state=config.seed,
        n_jobs=1,
        eval_metric="logloss",
    )
    model.fit(train_x, train_y)
    prob = model.predict_proba(test_x)[:, 1].astype(np.float64)
    out = keys.assign(prob=prob)
    path = write_parquet_atomic(
        out.loc[:, ["ticker", "ts", "prob", "fwd_ret_1", "t1", "label", "group"]],
        prediction_path(output_dir or run_dir, trial_id, split_id),
    )
    accuracy = float(((prob > 0.5) == (keys["label"].to_numpy() == 1)).mean())
    return {
        "trial_id": trial_id,
        "split_id": split_id,
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "accuracy": accuracy,
        "path": str(path),
    }


class LocalFits:
    """Fits in this process, one after the other, with a progress line for long lists."""

    def prepare(self, run_dir: Path) -> None:
        """Nothing to stage: the fits read the run folder where it is."""

    def batches(self, tasks: Sequence[tuple[int, int]], chunk: int = 1) -> list[list[tuple[int, int]]]:
        """``chunk`` fits per batch, in plan order: locally a mapped task runs that many fits in turn (a task
        instance costs seconds of scheduling and imports; see bench/task_overhead.py)."""
        chunk = whole_number(chunk, "chunk", minimum=1)
        pairs = [(int(t), int(s)) for t, s in tasks]
        return [pairs[i : i + chunk] for i in range(0, len(pairs), chunk)]

    def run(self, run_dir: Path, tasks: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        results = []
        with Progress(len(tasks), "WFO (trial, split) fits") as progress:
            for trial_id, split_id in tasks:
                results.append(run_split(run_dir, trial_id, split_id))
                progress.advance()
        return results
