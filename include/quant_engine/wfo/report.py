"""The walk-forward report: ``report.json`` for machines and a self-contained ``report.html`` for people.

Both land in ``$QE_HOME/reports/wfo/<run_id>/``. The HTML embeds its plots as base64 PNG (drawn
with matplotlib's Agg canvas through :class:`~matplotlib.figure.Figure`, never pyplot, so nothing
global changes), so it can be mailed or archived as one file: every path's equity curve, the PBO
logit histogram, the distribution of path Sharpe ratios and the split diagram (train, test,
purged, embargoed and unused time of every split). The splitter that produced the paths (CPCV,
purged K-fold or walk-forward, with its windows, embargo and purge), the portfolio construction
and the label settings head the page next to the statistics, since the same predictions read very
differently in a market-neutral and a directional book, and one walk-forward path is not many
CPCV paths.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from quant_engine.runs import claimed_folder, safe_name
from quant_engine.storage.atomic import write_json_atomic, write_text_atomic
from quant_engine.tracking import Tracker, flatten, save_tracked_run
from quant_engine.wfo.defaults import SPLITTER_NAMES
from quant_engine.wfo.run_folder import (
    EMBARGOED,
    PURGED,
    ROLE_NAMES,
    TEST,
    TRAIN,
    UNUSED,
    load_dataset,
    load_plan,
    split_path,
)

#: Colours of the split diagram, indexed by role code (train, test, purged, embargo, unused).
ROLE_COLOURS: tuple[str, ...] = ("#4c72b0", "#dd8452", "#c44e52", "#8c8c8c", "#f0f0f0")
#: Priority when a timestamp's rows have different roles: what the diagram shows for it.
_ROLE_PRIORITY = {TEST: 4, PURGED: 3, EMBARGOED: 2, TRAIN: 1, UNUSED: 0}
HEADLINE_KEYS: tuple[str, ...] = ("pbo", "deflated_sharpe", "psr", "selected_trial", "n_splits", "n_paths")


def setup(config: Mapping[str, Any]) -> str:
    """The portfolio and label settings of a run's ``config.json`` in one line.

    Examples
    --------
    >>> setup({"portfolio": "market_neutral", "label_kind": "fixed", "horizon": 1, "label_target": "excess",
    ...        "cost_bps": 5.0})
    'market_neutral portfolio, 5 bps costs; labels: fixed, horizon 1 bar(s), excess target'
    """
    return (
        f"{config['portfolio']} portfolio, {config['cost_bps']:g} bps costs; labels: {config['label_kind']}, "
        f"horizon {config['horizon']} bar(s), {config['label_target']} target"
    )


def _window(value: object) -> str:
    return f"{value} bars" if isinstance(value, int) else str(value)


def scheme(config: Mapping[str, Any], n_splits: int, n_paths: int) -> str:
    """Which splitter produced the paths, with its windows, embargo and purge, in one line.

    Examples
    --------
    >>> scheme({"splitter": "walk_forward", "train_window": "730D", "test_window": "365D", "anchored": True,
    ...         "embargo": "5D", "purge": True}, 8, 1)  # doctest: +NORMALIZE_WHITESPACE
    'walk-forward, anchored (training expands from the first bar): first training window 730D, test windows
    of 365D; 8 splits, 1 path (the test windows in time order); embargo 5D before each test window;
    purged by label spans'
    >>> scheme({"n_groups": 6, "n_test_groups": 2, "embargo": 3}, 15, 5)  # a run from before the choice
    'CPCV: 6 groups choose 2; 15 splits, 5 paths; embargo 3 bars after each test block; purged by label spans'
    """
    kind = config.get("splitter", "cpcv")
    embargo = _window(config["embargo"])
    if kind == "walk_forward":
        shape = (
            "anchored (training expands from the first bar): first training window"
            if config["anchored"]
            else "rolling: training window"
        )
        parts = [
            f"walk-forward, {shape} {_window(config['train_window'])}, test windows of "
            f"{_window(config['test_window'])}",
            f"{n_splits} splits, 1 path (the test windows in time order)",
            f"embargo {embargo} before each test window",
        ]
    elif kind == "purged_kfold":
        parts = [
            f"purged K-fold: {config['n_groups']} folds",
            f"{n_splits} splits, 1 path (the folds in time order)",
            f"embargo {embargo} after each test fold",
        ]
    else:
        parts = [
            f"CPCV: {config['n_groups']} groups choose {config['n_test_groups']}",
            f"{n_splits} splits, {n_paths} paths",
            f"embargo {embargo} after each test block",
        ]
    purge = config.get("purge", True)
    parts.append(
        "purged by label spans"
        if purge
        else "NOT purged (training keeps labels that overlap the test: optimistic, for measuring the leak)"
    )
    return "; ".join(parts)


def report_dir(run_id: str, reports_dir: Path) -> Path:
    """``<reports_dir>/wfo/<run_id>`` (``$QE_HOME/reports``: ``Settings.reports_dir``), where the run's report goes."""
    return Path(reports_dir) / "wfo" / safe_name(run_id)


def build_report(run_dir: Path) -> dict[str, Any]:
    """The report's content, from the files the pipeline's steps left in ``run_dir``."""
    run_dir = Path(run_dir)
    statistics = json.loads((run_dir / "statistics.json").read_text())
    plan = load_plan(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    data = json.loads((run_dir / "dataset.json").read_text())
    path_rows = json.loads((run_dir / "paths.json").read_text())
    selected = statistics["selected_trial"]
    trials = []
    for entry in statistics["trials"]:
        trials.append({**entry, "paths": [r for r in path_rows if r["trial"] == entry["trial"]]})
    return {
        "run_id": run_dir.name,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "pbo": statistics["pbo"],
        "deflated_sharpe": statistics["deflated_sharpe"],
        "psr": statistics["psr"],
        "selected_trial": selected,
        "selected_params": plan["trials"][selected],
        "n_splits": plan["n_splits"],
        "n_paths": plan["n_paths"],
        "n_trials": len(plan["trials"]),
        "splitter": config.get("splitter", "cpcv"),
        "scheme": scheme(config, plan["n_splits"], plan["n_paths"]),
        "pbo_method": statistics.get("pbo_method"),
        "setup": setup(config),
        "paths": [r for r in path_rows if r["trial"] == selected],
        "trials": trials,
        # the CSCV logits (thousands) are drawn in the HTML and kept in the run's statistics.json
        "statistics": {k: v for k, v in statistics.items() if k not in ("trials", "pbo_logits")},
        "data": data,
        "config": config,
        "groups": plan["groups"],
        "splits": plan["splits"],
    }


# --- plots ---------------------------------------------------------------------------------------


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def plot_equity(paths: pd.DataFrame, selected: int, splitter: str = "cpcv") -> str:
    """Equity of every path of the selected trial, the other trials' paths faint behind them."""
    fig = Figure(figsize=(10, 4.5))
    ax = fig.add_subplot()
    for (trial, path), frame in paths.groupby(["trial", "path"], sort=True):
        equity = (1.0 + frame["return"].to_numpy()).cumprod()
        if trial == selected:
            ax.plot(frame["ts"], equity, lw=1.2, label=f"path {path}")
        else:
            ax.plot(frame["ts"], equity, lw=0.6, color="#bbbbbb", zorder=0)
    ax.axhline(1.0, color="black", lw=0.5)
    ax.set_title(f"Equity of every {SPLITTER_NAMES[splitter]} path, trial {selected} (other trials in grey)")
    ax.set_ylabel("equity (start = 1)")
    ax.legend(fontsize=7, ncol=5, loc="upper left")
    return _png(fig)


def plot_pbo_logits(logits: Sequence[float], pbo: float | None) -> str:
    """Histogram of the CSCV logits; the mass left of zero is the PBO."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    values = np.asarray([v for v in logits if v is not None and np.isfinite(v)], dtype=float)
    ax.hist(values, bins=min(30, max(5, len(values) // 4)), color="#4c72b0", edgecolor="white")
    ax.axvline(0.0, color="#c44e52", lw=1.5)
    ax.set_title(f"CSCV logits of the in-sample best trial (PBO = {_fmt(pbo)})")
    ax.set_xlabel("logit of the out-of-sample relative rank")
    ax.set_ylabel("combinations")
    return _png(fig)


def plot_sharpe_distribution(trials: Sequence[Mapping[str, Any]], splitter: str = "cpcv") -> str:
    """Path Sharpe ratios of every trial, one row of dots per trial, the mean marked."""
    fig = Figure(figsize=(6, 0.6 * len(trials) + 1.8))
    ax = fig.add_subplot()
    for row, trial in enumerate(trials):
        sharpes = [p for p in trial["path_sharpes"] if p is not None]
        ax.scatter(sharpes, np.full(len(sharpes), row), s=18, alpha=0.7)
        if trial["mean_path_sharpe"] is not None:
            ax.plot([trial["mean_path_sharpe"]] * 2, [row - 0.3, row + 0.3], color="black", lw=2)
    ax.set_yticks(range(len(trials)), [f"trial {t['trial']}" for t in trials])
    ax.axvline(0.0, color="#888888", lw=0.8)
    ax.set_xlabel("annualised Sharpe ratio of each path (bar: mean)")
    ax.set_title(f"Sharpe distribution over {SPLITTER_NAMES[splitter]} paths")
    return _png(fig)


def timestamp_roles(run_dir: Path, n_splits: int) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """Per unique timestamp and split, the role the split diagram shows: shape ``(n_splits, n_times)``.

    Rows of one timestamp can differ (a ticker's label reaching a test block is purged while
    another's is not); the timestamp then shows the most restrictive role: test, purged,
    embargo, train, unused.
    """
    ts = pd.DatetimeIndex(load_dataset(run_dir, ["ts"])["ts"])
    codes, unique = pd.factorize(ts, sort=True)
    priority = np.array([_ROLE_PRIORITY[r] for r in range(len(ROLE_NAMES))])
    by_priority = np.array(sorted(_ROLE_PRIORITY, key=_ROLE_PRIORITY.__getitem__))
    grid = np.zeros((n_splits, len(unique)), dtype=np.int8)
    for s in range(n_splits):
        with np.load(split_path(run_dir, s)) as stored:
            roles = stored["roles"]
        best = np.zeros(len(unique), dtype=np.int8)
        np.maximum.at(best, codes, priority[roles].astype(np.int8))
        grid[s] = by_priority[best]
    return pd.DatetimeIndex(unique), grid


def plot_split_diagram(times: pd.DatetimeIndex, grid: np.ndarray, splitter: str = "cpcv") -> str:
    """One row per split over time: train, test, purged, embargoed and unused periods."""
    fig = Figure(figsize=(10, 0.28 * len(grid) + 1.6))
    ax = fig.add_subplot()
    x = np.append(times.tz_convert(None).to_numpy(), times[-1].tz_convert(None).to_datetime64())
    ax.pcolormesh(
        x,
        np.arange(len(grid) + 1),
        grid,
        cmap=ListedColormap(ROLE_COLOURS),
        vmin=-0.5,
        vmax=len(ROLE_COLOURS) - 0.5,
        shading="flat",
    )
    ax.set_yticks(np.arange(len(grid)) + 0.5, [f"split {s}" for s in range(len(grid))], fontsize=7)
    ax.invert_yaxis()
    handles = [ax.fill_between([], [], color=c, label=n) for c, n in zip(ROLE_COLOURS, ROLE_NAMES, strict=True)]
    ax.legend(handles=handles, ncol=len(handles), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    name = SPLITTER_NAMES[splitter]
    ax.set_title(f"{name[0].upper()}{name[1:]} splits: {' / '.join(ROLE_NAMES)}")
    return _png(fig)


# --- HTML ----------------------------------------------------------------------------------------


def _fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}.headline td:first-child{text-align:left}img{max-width:100%}
pre{background:#f7f7f7;padding:1em;overflow:auto}
"""


def render_html(report: Mapping[str, Any], images: Mapping[str, str]) -> str:
    """The self-contained HTML page of ``report``; ``images`` maps a title to a base64 PNG."""
    headline = [
        ("Splits and paths", report["scheme"]),
        ("Probability of backtest overfitting (PBO)", report["pbo"]),
        ("PBO computed by", report["pbo_method"]),
        ("Deflated Sharpe ratio (selected trial)", report["deflated_sharpe"]),
        ("Probabilistic Sharpe ratio (selected trial)", report["psr"]),
        ("Selected trial", report["selected_trial"]),
        ("Portfolio and labels", report["setup"]),
        ("Splits / paths / trials", f"{report['n_splits']} / {report['n_paths']} / {report['n_trials']}"),
        (
            "Data",
            f"{report['data']['first_ts']} .. {report['data']['last_ts']}, {report['data']['rows']} rows, "
            f"{len(report['data']['tickers'])} tickers",
        ),
        ("Bars and annualisation", annualisation_text(report["data"]["annualisation"])),
    ]
    trial_rows = [
        {
            "trial": t["trial"],
            **t["params"],
            "mean path Sharpe": t["mean_path_sharpe"],
            "std path Sharpe": t["std_path_sharpe"],
            "Sharpe of mean path": t["sharpe_of_mean"],
        }
        for t in report["trials"]
    ]
    trial_columns = list(trial_rows[0]) if trial_rows else []
    path_columns = [
        "path",
        "sharpe",
        "sortino",
        "max_drawdown",
        "hit_rate",
        "turnover",
        "annual_return",
        "total_return",
    ]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>WFO report {html.escape(report['run_id'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Walk-forward report <code>{html.escape(report['run_id'])}</code></h1>",
        f"<p>Generated {html.escape(report['generated_at'])}.</p>",
        "<table class='headline'>"
        + "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in headline)
        + "</table>",
        "<h2>Trials</h2>",
        _table(trial_rows, trial_columns),
        f"<h2>Paths of trial {report['selected_trial']}</h2>",
        _table(report["paths"], path_columns),
    ]
    for title, png in images.items():
        parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>")
    parts += [
        "<h2>Configuration</h2>",
        f"<pre>{html.escape(json.dumps(report['config'], indent=2))}</pre>",
        "<h2>Statistics</h2>",
        f"<pre>{html.escape(json.dumps(report['statistics'], indent=2))}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(
    run_dir: Path, reports_dir: Path, destination: Path | None = None, *, tracker: Tracker | None = None
) -> Path:
    """Write ``report.json`` and ``report.html`` for the run in ``run_dir``; return the folder.

    ``destination`` defaults to :func:`report_dir` of the run's id under ``reports_dir``. Each file is written to a
    temporary name and renamed, so a reader sees the old report or the new one, never half. With a
    ``tracker``, the run is then logged to MLflow (:func:`track_report`).
    """
    run_dir = Path(run_dir)
    report = build_report(run_dir)
    if destination is None:  # claimed by the run, so another run id mapping to the same name is refused
        destination = claimed_folder(report_dir(report["run_id"], reports_dir).parent, report["run_id"])
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    paths = pd.read_parquet(run_dir / "paths.parquet", columns=["trial", "path", "ts", "return"])
    logits = json.loads((run_dir / "statistics.json").read_text())["pbo_logits"]
    times, grid = timestamp_roles(run_dir, report["n_splits"])
    images = {
        "Equity curves": plot_equity(paths, report["selected_trial"], report["splitter"]),
        "PBO logit histogram": plot_pbo_logits(logits, report["pbo"]),
        "Sharpe distribution": plot_sharpe_distribution(report["trials"], report["splitter"]),
        "Split diagram": plot_split_diagram(times, grid, report["splitter"]),
    }
    report["files"] = {"json": str(destination / "report.json"), "html": str(destination / "report.html")}
    write_json_atomic(destination / "report.json", report, non_finite="null")
    write_text_atomic(destination / "report.html", render_html(report, images))
    if tracker is not None:
        track_report(tracker, report, destination)
    return destination


def track_report(tracker: Tracker, report: Mapping[str, Any], folder: Path) -> None:
    """Log a walk-forward run to ``tracker``: its configuration and selected trial as params; PBO,
    deflated Sharpe, PSR and each trial's mean path Sharpe as metrics; every path's Sharpe ratio as
    a series (``path_sharpe`` for the selected trial, one step per path); the report as artifacts.
    The MLflow run is recorded beside the report (``mlflow.json``)."""
    statistics = report["statistics"]
    metrics = {key: statistics.get(key) for key in ("pbo", "deflated_sharpe", "psr", "pbo_probability_of_loss")}
    metrics.update({key: report[key] for key in ("selected_trial", "n_splits", "n_paths", "n_trials")})
    series = {}
    for trial in report["trials"]:
        metrics[f"trial_{trial['trial']}.mean_path_sharpe"] = trial.get("mean_path_sharpe")
        series[f"trial_{trial['trial']}.path_sharpe"] = trial["path_sharpes"]
    selected = report["trials"][report["selected_trial"]]
    metrics["mean_path_sharpe"] = selected.get("mean_path_sharpe")
    series["path_sharpe"] = selected["path_sharpes"]
    tracker.log_run(
        "wfo",
        report["run_id"],
        name=report["run_id"],
        params={
            **flatten({k: v for k, v in report["config"].items() if k != "trials"}),
            **flatten(report["selected_params"], "selected"),
            "trials": report["config"].get("trials"),
        },
        metrics=metrics,
        series=series,
        tags={"splitter": report["splitter"], "scheme": report["scheme"], "setup": report["setup"]},
        artifacts=[folder / "report.html", folder / "report.json"],
        keep=lambda tracked: save_tracked_run(folder, tracked),
    )


def load_report(location: Path) -> dict[str, Any]:
    """A written report, from its folder or its ``report.json``."""
    location = Path(location)
    path = location / "report.json" if location.is_dir() else location
    if not path.exists():
        raise FileNotFoundError(f"no report at {path}")
    return json.loads(path.read_text())


def latest_report(reports_dir: Path) -> Path:
    """The folder of the most recently written WFO report under ``reports_dir``."""
    root = Path(reports_dir) / "wfo"
    found = sorted(root.glob("*/report.json"), key=lambda p: p.stat().st_mtime) if root.exists() else []
    if not found:
        raise FileNotFoundError(f"no WFO report under {root}; run `quant-engine wfo run` or the wfo_pipeline DAG")
    return found[-1].parent


def annualisation_text(annualisation: Mapping[str, Any]) -> str:
    """``1h bars on XNYS: 251.6 sessions a year x 6.98 bars a session = 1755.2 periods a year``."""
    a = annualisation
    return (
        f"{a['bar_size']} bars on {a['calendar']}: {a['sessions_per_year']:g} sessions a year x "
        f"{a['bars_per_session']:g} bars a session = {a['periods_per_year']:g} periods a year "
        f"(averaged over {a['years_averaged']} years)"
    )


def headline(report: Mapping[str, Any]) -> str:
    """The report's key numbers in a few lines, for logs and ``quant-engine wfo show``."""
    selected = report["trials"][report["selected_trial"]]
    lines = [
        f"WFO report {report['run_id']}: {report['n_splits']} splits, {report['n_paths']} paths, "
        f"{report['n_trials']} trials, data {report['data']['first_ts'][:10]} .. {report['data']['last_ts'][:10]}",
        f"  {report.get('scheme') or 'CPCV'}",
        f"  {report['setup']}",
        f"  {annualisation_text(report['data']['annualisation'])}",
        f"  selected trial {report['selected_trial']} {json.dumps(report['selected_params'])}",
        (
            f"  mean path Sharpe {_fmt(selected['mean_path_sharpe'], 2)} "
            f"(min {_fmt(min((p for p in selected['path_sharpes'] if p is not None), default=None), 2)}, "
            f"max {_fmt(max((p for p in selected['path_sharpes'] if p is not None), default=None), 2)})"
            if report["n_paths"] > 1
            else f"  Sharpe of the one path {_fmt(selected['mean_path_sharpe'], 2)}"
        ),
        f"  PBO {_fmt(report['pbo'])}  PSR {_fmt(report['psr'])}  deflated Sharpe {_fmt(report['deflated_sharpe'])}",
    ]
    if "files" in report:
        lines.append(f"  report: {report['files']['html']}")
    return "\n".join(lines)
