"""The plan of a walk-forward run: every split fixed and checked, and the ``(trial, split)`` fits it asks for.

The splits are the configured splitter's (CPCV, purged K-fold or walk-forward). The splitter checks
every split before anything trains: one left without training rows by the purge and embargo fails
here, as does one whose training labels hold one class only. Each split's row roles go to
``splits/split=<s>.npz``, the path map and the task list to ``plan.json``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quant_engine.storage.atomic import write_json_atomic, write_npz_atomic
from quant_engine.wfo.config import WfoConfigError
from quant_engine.wfo.run_folder import (
    EMBARGOED,
    PURGED,
    ROLE_NAMES,
    TEST,
    TRAIN,
    UNUSED,
    load_config,
    load_dataset,
    split_path,
)
from quant_engine.wfo.splitters import WalkForward

__all__ = ["batch_label", "mapped_batches", "plan", "split_roles", "walk_forward_roles"]

log = logging.getLogger(__name__)


def split_roles(
    ts_ns: np.ndarray, t1_ns: np.ndarray, groups: np.ndarray, train: np.ndarray, test_groups: Sequence[int]
) -> np.ndarray:
    """Role of every row in one split: train, test, purged or embargoed (int8 codes).

    A row outside train and test is *purged* when its label span ``[ts, t1]`` overlaps a test
    block (a run of adjacent test groups, from its first ``ts`` to its latest ``t1``); the other
    left-out rows are the embargo that follows a block.
    """
    roles = np.full(len(ts_ns), EMBARGOED, dtype=np.int8)
    roles[train] = TRAIN
    in_test = np.isin(groups, np.asarray(test_groups))
    roles[in_test] = TEST
    left_out = roles == EMBARGOED
    blocks: list[list[int]] = []
    for g in sorted(int(g) for g in test_groups):
        if blocks and blocks[-1][-1] == g - 1:
            blocks[-1].append(g)
        else:
            blocks.append([g])
    for block in blocks:
        rows = np.isin(groups, block)
        start, end = ts_ns[rows].min(), t1_ns[rows].max()
        roles[left_out & (ts_ns <= end) & (t1_ns >= start)] = PURGED
    return roles


def walk_forward_roles(ts_ns: np.ndarray, t1_ns: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Role of every row in one walk-forward split: train, test, purged, embargoed or unused (int8 codes).

    Of the rows before the test window that the split does not train on, those whose label span
    reaches the test window are *purged*; the others inside the training window (from its first
    training row) are the *embargo*, the gap before the test window. Every other row (after the
    test window, or before a rolling window starts) is *unused*.
    """
    roles = np.full(len(ts_ns), UNUSED, dtype=np.int8)
    roles[train] = TRAIN
    roles[test] = TEST
    start = ts_ns[test].min()
    left_out_before = (roles == UNUSED) & (ts_ns < start)
    purged = left_out_before & (t1_ns >= start)
    roles[purged] = PURGED
    roles[left_out_before & ~purged & (ts_ns >= ts_ns[train].min())] = EMBARGOED
    return roles


def plan(run_dir: Path) -> list[dict[str, int]]:
    """Fix the splits and the ``(trial, split)`` tasks; write ``plan.json`` and one ``.npz`` per split.

    The splitter checks every split before anything trains: one left without training rows by the
    purge and embargo raises here, as does a split whose training labels hold one class only.
    Predictions left by an earlier plan of the same run folder are removed.

    CPCV's path map comes from the splitter (``C(N, k) * k / N`` paths); purged K-fold and
    walk-forward test every row at most once, so their test segments, in split order, are one path.

    Returns
    -------
    list of dict
        ``{"trial_id": t, "split_id": s}`` for every task, the mapped tasks' arguments.
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    data = load_dataset(run_dir, ["ts", "t1", "label", "group"])
    ts = pd.DatetimeIndex(data["ts"])
    cv = config.splitter(data["t1"].to_numpy())
    try:
        splits = list(cv.split(pd.DataFrame(index=ts)))
    except ValueError as exc:
        raise WfoConfigError(f"the purge and embargo leave a split without training data: {exc}") from None
    walk_forward = isinstance(cv, WalkForward)
    n_splits = len(splits)
    if isinstance(cv, WalkForward):  # test window s is group s, and the windows in order are the one path
        test_groups, paths = np.arange(n_splits).reshape(-1, 1), np.arange(n_splits).reshape(1, -1)
    else:
        test_groups, paths = cv.test_groups, cv.paths
    ts_ns = ts.asi8
    t1_ns = pd.DatetimeIndex(data["t1"]).asi8 if config.purge else ts_ns  # no purge: labels end where they start
    groups, labels = data["group"].to_numpy(), data["label"].to_numpy()
    split_rows = []
    for s, ((train, test), split_groups) in enumerate(zip(splits, test_groups, strict=True)):
        if not np.array_equal(test, np.flatnonzero(np.isin(groups, split_groups))):
            raise ValueError(
                f"split {s} tests other rows than the dataset's groups {split_groups.tolist()} hold; "
                "the dataset was built with another splitter: build the dataset again"
            )
        classes = np.unique(labels[train])
        if len(classes) < 2:
            raise WfoConfigError(
                f"split {s} trains on labels of one class only ({classes.tolist()}); "
                "use a longer range or a different label"
            )
        if walk_forward:
            roles = walk_forward_roles(ts_ns, t1_ns, train, test)
        else:
            roles = split_roles(ts_ns, t1_ns, groups, train, split_groups.tolist())
        write_npz_atomic(split_path(run_dir, s), roles=roles, test_groups=np.asarray(split_groups))
        counts = np.bincount(roles, minlength=len(ROLE_NAMES))
        split_rows.append(
            {
                "split_id": s,
                "test_groups": [int(g) for g in split_groups],
                "test_first_ts": str(ts[test[0]]),
                "test_last_ts": str(ts[test[-1]]),
                **{f"n_{name}": int(c) for name, c in zip(ROLE_NAMES, counts, strict=True)},
            }
        )
    tasks = [{"trial_id": t, "split_id": s} for t in range(len(config.trials)) for s in range(n_splits)]
    tested = data.loc[data["group"] >= 0]
    bounds = tested.groupby("group")["ts"].agg(["min", "max"])
    payload = {
        "splitter": config.splitter_kind,
        "n_groups": len(bounds),
        "n_test_groups": test_groups.shape[1],
        "n_splits": n_splits,
        "n_paths": len(paths),
        "paths": paths.tolist(),
        "splits": split_rows,
        "groups": [
            {"group": int(g), "first_ts": str(r["min"]), "last_ts": str(r["max"]), "rows": int((groups == g).sum())}
            for g, r in bounds.iterrows()
        ],
        "untested_rows": int(len(data) - len(tested)),
        "trials": [asdict(t) for t in config.trials],
        "tasks": tasks,
    }
    write_json_atomic(run_dir / "plan.json", payload, non_finite="null")
    # Predictions of an earlier plan of this run folder belong to other splits; a rerun starts clean.
    shutil.rmtree(run_dir / "predictions", ignore_errors=True)
    log.info(
        "plan: %s, %d splits x %d trials = %d tasks, %d paths",
        config.splitter_kind,
        n_splits,
        len(config.trials),
        len(tasks),
        len(paths),
    )
    return tasks


def batch_label(batch: Sequence[tuple[int, int]]) -> str:
    """A batch of fits named for a task grid: ``trial 1 split 2``, ``trial 1 split 0,1,2``, or its first and
    last fits."""
    trials = sorted({t for t, _ in batch})
    if len(trials) == 1:
        return f"trial {trials[0]} split {','.join(str(s) for _, s in batch)}"
    (t0, s0), (t1, s1) = batch[0], batch[-1]
    return f"trial {t0} split {s0} .. trial {t1} split {s1} ({len(batch)} fits)"


def mapped_batches(run_dir: str, batches: Sequence[Sequence[tuple[int, int]]]) -> list[dict[str, Any]]:
    """One mapped task's keyword arguments per batch of fits: the run, its fits, a label and its position."""
    return [
        {
            "run_dir": run_dir,
            "fits": [[int(t), int(s)] for t, s in batch],
            "label": batch_label(batch),
            "position": i + 1,
            "of": len(batches),
        }
        for i, batch in enumerate(batches)
    ]
