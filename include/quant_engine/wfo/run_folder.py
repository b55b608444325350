"""The run folder of a walk-forward run: where each step finds what the steps before it wrote.

Each step is a function of a run folder (``quant_engine.runs.run_dir("wfo", run_id)``), reading
what earlier steps wrote there and writing its own files atomically, so the ``wfo_pipeline`` DAG
runs the steps as separate tasks, ``quant-engine wfo run`` runs them in one process and a
SageMaker Processing job runs the fits on a copy.

Run folder
----------
``config.json``
    The validated :class:`WfoConfig` (``to_params`` form).
``dataset.parquet``
    One row per ``(ticker, ts)``, sorted by ``(ts, ticker)``: ``ticker, ts, t1, ret, label,
    fwd_ret_1, group`` and the feature columns; ``ret`` is the label's return, relative to the
    cross-sectional mean with ``label_target="excess"``; ``group`` is the row's CPCV group, K-fold
    fold or walk-forward test window (-1: a row no walk-forward window tests). See :func:`build_dataset`.
``plan.json``, ``splits/split=<s>.npz``
    The splits of the configured splitter (CPCV, purged K-fold or walk-forward; a role per dataset
    row: train, test, purged, embargoed, unused), the path map and the list of ``(trial, split)``
    tasks. See :func:`plan`.
``predictions/trial=<t>/split=<s>.parquet``
    Test predictions of one model. See :func:`run_split`.
``dataset.json``
    The dataset's summary (rows, tickers, first and last ``ts``, rows per group) and its
    ``annualisation``: the group's calendar and bar size, sessions a year x bars a session, the
    factor every annualised figure of the run uses.
``paths.parquet``, ``paths.json``, ``statistics.json``
    Per-path daily portfolio series of every trial, each path's metrics, and the statistics over
    them. See :func:`assemble` and :func:`statistics`. A run is *finished* once ``statistics.json``
    exists: :func:`load_outcome` reads what it concluded, for training to take to production.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from quant_engine.runs import CLAIM_FILE
from quant_engine.wfo.config import Trial, WfoConfig

__all__ = [
    "EMBARGOED",
    "KEY_COLUMNS",
    "PURGED",
    "ROLE_NAMES",
    "TEST",
    "TRAIN",
    "UNUSED",
    "WfoOutcome",
    "load_config",
    "load_dataset",
    "load_outcome",
    "load_plan",
    "periods_per_year_of",
    "prediction_path",
    "split_path",
]

#: Row roles stored per split: train, test, purged (label overlaps a test block), embargoed, and
#: unused (a walk-forward's rows outside its training window: after the test window, or before a
#: rolling window starts).
TRAIN, TEST, PURGED, EMBARGOED, UNUSED = 0, 1, 2, 3, 4
ROLE_NAMES: tuple[str, ...] = ("train", "test", "purged", "embargo", "unused")
KEY_COLUMNS: tuple[str, ...] = ("ticker", "ts", "t1", "ret", "label", "fwd_ret_1", "group")


def load_config(run_dir: Path) -> WfoConfig:
    """The config a run was built with."""
    return WfoConfig.from_params(json.loads((Path(run_dir) / "config.json").read_text()))


def load_plan(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "plan.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run the plan step first")
    return json.loads(path.read_text())


def split_path(run_dir: Path, split_id: int) -> Path:
    return Path(run_dir) / "splits" / f"split={split_id}.npz"


def prediction_path(root: Path, trial_id: int, split_id: int) -> Path:
    return Path(root) / "predictions" / f"trial={trial_id}" / f"split={split_id}.parquet"


def load_dataset(run_dir: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    path = Path(run_dir) / "dataset.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; build the dataset first")
    return pd.read_parquet(path, columns=list(columns) if columns else None)


def periods_per_year_of(run_dir: Path) -> float:
    """Bars a year of the run's data (its calendar's sessions a year x bars a session), from ``dataset.json``."""
    summary = json.loads((Path(run_dir) / "dataset.json").read_text())
    return float(summary["annualisation"]["periods_per_year"])


@dataclass(frozen=True)
class WfoOutcome:
    """What a finished walk-forward run concluded: its config, the trial it selected and the statistics judging it.

    ``pbo``, ``deflated_sharpe`` and ``psr`` are None where the run could not compute them.
    """

    run_id: str
    config: WfoConfig
    selected_trial: int
    pbo: float | None
    deflated_sharpe: float | None
    psr: float | None
    n_splits: int
    n_paths: int

    @property
    def trial(self) -> Trial:
        """The selected trial: the hyperparameters and the backtest threshold production should use."""
        return self.config.trials[self.selected_trial]

    def record(self) -> dict[str, Any]:
        """The run in a model's metadata: its id, splitter, statistics, selected trial and sample."""
        return {
            "run_id": self.run_id,
            "splitter": self.config.splitter_kind,
            "pbo": self.pbo,
            "deflated_sharpe": self.deflated_sharpe,
            "psr": self.psr,
            "selected_trial": self.selected_trial,
            "selected_params": asdict(self.trial),
            "n_trials": len(self.config.trials),
            "n_splits": self.n_splits,
            "n_paths": self.n_paths,
            "start": str(self.config.start.date()),
            "end": str(self.config.end.date()),
        }


def load_outcome(run_dir: Path) -> WfoOutcome:
    """What the finished run in ``run_dir`` concluded.

    Raises
    ------
    FileNotFoundError
        The run has not finished: its statistics step (or an earlier one) has not written its file.
    """
    run_dir = Path(run_dir)
    claim = run_dir / CLAIM_FILE
    run_id = claim.read_text(encoding="utf-8") if claim.is_file() else run_dir.name
    for name, step in (("config.json", "dataset"), ("plan.json", "plan"), ("statistics.json", "statistics")):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(
                f"walk-forward run {run_id!r} has not finished: its {step} step has not written {name} in "
                f"{run_dir}; wait for the run to finish, or run it again"
            )
    statistics = json.loads((run_dir / "statistics.json").read_text())
    plan = load_plan(run_dir)
    return WfoOutcome(
        run_id=run_id,
        config=load_config(run_dir),
        selected_trial=int(statistics["selected_trial"]),
        pbo=statistics.get("pbo"),
        deflated_sharpe=statistics.get("deflated_sharpe"),
        psr=statistics.get("psr"),
        n_splits=int(plan["n_splits"]),
        n_paths=int(plan["n_paths"]),
    )
