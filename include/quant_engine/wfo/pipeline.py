"""Walk-forward optimisation with purged cross-validation: dataset -> plan -> fits -> paths -> statistics -> report.

The steps live in their own modules and meet in a run folder (:mod:`quant_engine.wfo.run_folder`):
:func:`~quant_engine.wfo.dataset.build_dataset`, :func:`~quant_engine.wfo.plan.plan` (the splits
of CPCV, purged K-fold or walk-forward), the fits (:mod:`quant_engine.wfo.runner`), then
:func:`assemble` (every backtest path of every trial: CPCV's many, the single path of the others'
test segments) and :func:`statistics` (path Sharpes, the selected trial, PBO, PSR, deflated Sharpe)
here. The ``wfo_pipeline`` DAG runs them as separate tasks; :func:`run_pipeline` runs them all in
one process, as ``quant-engine wfo run`` does.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quant_engine.features.offline_store import OfflineStore
from quant_engine.storage.atomic import write_json_atomic, write_parquet_atomic
from quant_engine.tracking import Tracker
from quant_engine.wfo.backtest import assemble_paths, backtest
from quant_engine.wfo.config import WfoConfig
from quant_engine.wfo.dataset import build_dataset
from quant_engine.wfo.defaults import SPLITTER_NAMES
from quant_engine.wfo.plan import plan
from quant_engine.wfo.report import write_report
from quant_engine.wfo.run_folder import load_config, load_plan, periods_per_year_of, prediction_path
from quant_engine.wfo.runner import FitRunner
from quant_engine.wfo.stats import (
    deflated_sharpe_ratio,
    probabilistic_sharpe_ratio,
    probability_of_backtest_overfitting,
    sharpe_moments,
    sharpe_ratio,
)

__all__ = ["PBO_BLOCKS", "assemble", "run_pipeline", "statistics"]

log = logging.getLogger(__name__)


def assemble(run_dir: Path) -> dict[str, Any]:
    """Backtest every path of every trial; write ``paths.parquet`` and return the path summaries.

    ``paths.parquet`` holds one row per ``(trial, path, ts)`` with the portfolio's net ``return``,
    ``gross``, ``cost``, ``turnover`` and ``exposure``.
    """
    run_dir = Path(run_dir)
    config, plan_ = load_config(run_dir), load_plan(run_dir)
    periods_per_year = periods_per_year_of(run_dir)
    path_map = np.asarray(plan_["paths"])
    group_sizes = np.array([g["rows"] for g in plan_["groups"]])
    series, summaries = [], []
    for trial_id, trial in enumerate(config.trials):
        predictions = {}
        for s in range(plan_["n_splits"]):
            path = prediction_path(run_dir, trial_id, s)
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing; task (trial {trial_id}, split {s}) has not run")
            predictions[s] = pd.read_parquet(path, columns=["ticker", "ts", "prob", "fwd_ret_1", "group"])
        for p, frame in enumerate(assemble_paths(predictions, path_map, group_sizes)):
            result = backtest(frame, threshold=trial.threshold, cost_bps=config.cost_bps, portfolio=config.portfolio)
            series.append(
                pd.DataFrame(
                    {
                        "trial": trial_id,
                        "path": p,
                        "ts": result.returns.index,
                        "return": result.returns.to_numpy(),
                        "gross": result.gross.to_numpy(),
                        "cost": result.costs.to_numpy(),
                        "turnover": result.turnover.to_numpy(),
                        "exposure": result.exposure.to_numpy(),
                    }
                )
            )
            summaries.append({"trial": trial_id, "path": p, **result.summary(periods_per_year)})
    write_parquet_atomic(pd.concat(series, ignore_index=True), run_dir / "paths.parquet")
    write_json_atomic(run_dir / "paths.json", summaries, non_finite="null")
    return {"paths": len(summaries), "trials": len(config.trials)}


def run_pipeline(
    config: WfoConfig,
    run_dir: Path,
    store: OfflineStore,
    bar_store: OfflineStore,
    fits: FitRunner,
    reports_dir: Path,
    *,
    tracker: Tracker | None = None,
) -> Path:
    """Every step in order into ``run_dir``, the fits by ``fits``; returns the report folder under ``reports_dir``.

    With a ``tracker`` the run is logged to MLflow once its report is written.
    """
    build_dataset(config, run_dir, store, bar_store)
    tasks = plan(run_dir)
    fits.prepare(run_dir)
    fits.run(run_dir, [(t["trial_id"], t["split_id"]) for t in tasks])
    assemble(run_dir)
    statistics(run_dir)
    return write_report(run_dir, reports_dir, tracker=tracker)


#: CSCV blocks for the PBO (Bailey et al. use 16): C(16, 8) = 12,870 in/out-of-sample combinations.
PBO_BLOCKS = 16


def statistics(run_dir: Path) -> dict[str, Any]:
    """Per-trial path Sharpes, the selected trial, PBO, PSR and deflated Sharpe; write ``statistics.json``.

    * A trial's score is the mean over paths of the paths' annualised Sharpe ratios (annualised
      with the calendar's bars a year, ``dataset.json``'s ``annualisation``); the best score is the
      *selected* trial.
    * Each trial's daily return series is the **mean over its paths** (every path is an
      out-of-sample history of the same days, so their mean is the trial's expected daily return
      across the CPCV resamplings). Those series, one column per trial, are the ``T x n_trials``
      matrix of the PBO by CSCV with :data:`PBO_BLOCKS` blocks.
    * A single-path splitter (purged K-fold, walk-forward) has one path per trial: its test
      segments in time order, each predicted by a model that never saw it. That path is the
      trial's series, so the PBO is CSCV over the test segments' per-trial returns (the bars
      before a walk-forward's first test window are never tested and take no part).
    * PSR (against a Sharpe of 0) and the deflated Sharpe use the selected trial's series, its
      skewness and kurtosis; the deflation counts ``n_trials`` trials with the variance of the
      trials' per-period Sharpe ratios of the same series.
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    periods_per_year = periods_per_year_of(run_dir)
    path_rows = json.loads((run_dir / "paths.json").read_text())
    paths = pd.read_parquet(run_dir / "paths.parquet", columns=["trial", "path", "ts", "return"])
    wide = paths.pivot(index="ts", columns=["trial", "path"], values="return").sort_index()
    if wide.isna().any().any():
        raise ValueError("paths.parquet holds paths of different lengths; rerun the assemble step")
    trial_returns = wide.T.groupby(level="trial").mean().T.to_numpy()  # (T, n_trials)
    per_period = np.asarray(sharpe_ratio(trial_returns, periods_per_year=1), dtype=float)

    trials = []
    for t, trial in enumerate(config.trials):
        sharpes = np.array([r["sharpe"] for r in path_rows if r["trial"] == t], dtype=float)
        finite = sharpes[np.isfinite(sharpes)]
        trials.append(
            {
                "trial": t,
                "params": asdict(trial),
                "path_sharpes": sharpes.tolist(),
                "mean_path_sharpe": float(finite.mean()) if len(finite) else math.nan,
                "std_path_sharpe": float(finite.std(ddof=1)) if len(finite) > 1 else math.nan,
                "sharpe_of_mean": float(per_period[t] * math.sqrt(periods_per_year)),
            }
        )
    scores = np.array([t["mean_path_sharpe"] for t in trials])
    if not np.isfinite(scores).any():
        raise ValueError("no trial has a Sharpe ratio (every path is flat); lower the trials' thresholds")
    selected = int(np.nanargmax(scores))

    moments = sharpe_moments(trial_returns[:, selected])
    finite_sr = per_period[np.isfinite(per_period)]
    var_trial_sharpes = float(finite_sr.var(ddof=1)) if len(finite_sr) > 1 else 0.0
    n_blocks = min(PBO_BLOCKS, len(trial_returns) // 2 * 2)
    # A trial that stays flat in a block has no Sharpe ratio there; it ranks as 0 (no return, no risk).
    pbo = probability_of_backtest_overfitting(
        trial_returns,
        n_blocks=n_blocks,
        metric=lambda r: np.nan_to_num(np.asarray(sharpe_ratio(r, periods_per_year=1), dtype=float), nan=0.0),
    )
    result = {
        "splitter": config.splitter_kind,
        "selected_trial": selected,
        "selection": (
            "highest Sharpe ratio of the one out-of-sample path (the test segments in time order)"
            if config.single_path
            else "highest mean over paths of the path Sharpe ratio"
        ),
        "pbo": pbo.pbo,
        "pbo_method": (
            f"CSCV over the {SPLITTER_NAMES[config.splitter_kind]} test segments' per-trial returns "
            f"({len(trial_returns)} bars)"
            if config.single_path
            else f"CSCV over the mean of each trial's CPCV paths ({len(trial_returns)} bars)"
        ),
        "pbo_blocks": n_blocks,
        "pbo_combinations": pbo.n_combinations,
        "pbo_probability_of_loss": pbo.probability_of_loss,
        "pbo_degradation_slope": pbo.degradation_slope,
        "pbo_logits": pbo.logits.tolist(),
        "psr": float(
            probabilistic_sharpe_ratio(moments.observed_sr, 0.0, moments.n_obs, moments.skew, moments.kurtosis)
        ),
        "deflated_sharpe": deflated_sharpe_ratio(
            moments.observed_sr,
            moments.n_obs,
            skew=moments.skew,
            kurtosis=moments.kurtosis,
            n_trials=len(trials),
            var_trial_sharpes=var_trial_sharpes,
        ),
        "selected_sharpe_per_period": moments.observed_sr,
        "selected_skew": moments.skew,
        "selected_kurtosis": moments.kurtosis,
        "n_observations": moments.n_obs,
        "n_trials": len(trials),
        "var_trial_sharpes_per_period": var_trial_sharpes,
        "trials": trials,
    }
    write_json_atomic(run_dir / "statistics.json", result, non_finite="null")
    log.info(
        "statistics: selected trial %d, PBO %.3f, PSR %.3f, DSR %.3f",
        selected,
        result["pbo"],
        result["psr"],
        result["deflated_sharpe"],
    )
    return json.loads((run_dir / "statistics.json").read_text())
