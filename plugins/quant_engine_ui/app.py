"""The "Quant Engine" pages of the Airflow UI: server-rendered HTML over what the library has stored.

Every page needs the Airflow UI's login: the request's JWT (the UI's ``_token`` cookie, or an
``Authorization: Bearer`` header) is checked by Airflow's own ``get_user`` dependency, with the
auth manager the api-server configured. Nothing here computes a statistic: reports, registry
entries and drift verdicts are read through ``quant_engine`` and only laid out.
"""

from __future__ import annotations

import html
import json
import os
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from airflow.api_fastapi.core_api.security import get_user
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

#: Where Airflow mounts this app on the api-server (see ``qe_ui.py``).
URL_PREFIX = "/quant-engine"
#: The bridge's HTTP side (``QE_BRIDGE_URL``); ``GET /health`` and ``GET /signals/latest`` are read from
#: it, the latter with the subscriber token ``QE_BRIDGE_UI_TOKEN``.
DEFAULT_BRIDGE_URL = "http://127.0.0.1:8766"
#: How long a page waits for the bridge before saying it is not reachable.
BRIDGE_TIMEOUT_S = 1.5
#: WFO runs listed on the overview, newest first.
MAX_WFO_RUNS = 25

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{margin-top:0}h2{margin-top:1.5em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:0.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f2f2f2}.bad{color:#b00020;font-weight:bold}.ok{color:#1b7f3b}
.muted{color:#777}
"""


def _settings():
    from quant_engine.config import get_settings

    return get_settings()


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return '<span class="muted">-</span>'
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, (dict, list)):
        return html.escape(json.dumps(value))
    return html.escape(str(value))


def _table(columns: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="muted">{html.escape(empty)}</p>'
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _report_folders(kind: str) -> dict[str, Path]:
    """Report folders of ``kind`` ('wfo' or 'drift') by folder name, newest first."""
    root = _settings().reports_dir / kind
    found = sorted(root.glob("*/report.json"), key=lambda p: p.stat().st_mtime, reverse=True) if root.is_dir() else []
    return {p.parent.name: p.parent for p in found}


def _report_file(kind: str, name: str, filename: str) -> Path:
    """A report's file, looked up among the stored folders (never a path built from the request)."""
    folder = _report_folders(kind).get(name)
    if folder is None or not (folder / filename).is_file():
        raise HTTPException(status_code=404, detail=f"no {kind} report {name!r}")
    return folder / filename


def mlflow_link(tracked: Mapping[str, Any] | None) -> str:
    """A run's MLflow page as a link (``QE_TRACKING_UI_URL``, or an HTTP tracking server), its run id
    without a UI to link to, ``-`` for a run that was not tracked."""
    if not tracked:
        return _cell(None)
    from quant_engine.tracking import TrackedRun

    try:
        run = TrackedRun.from_json(tracked)
    except (KeyError, TypeError):
        return _cell(None)
    base = _settings().tracking_link_base
    if base is None:
        return f'<span title="{html.escape(run.tracking_uri)}">{html.escape(run.run_id[:12])}</span>'
    return f'<a href="{html.escape(run.ui_url(base))}">{html.escape(run.run_id[:12])}</a>'


def _tracked_in(folder: Path) -> dict[str, Any] | None:
    from quant_engine.tracking import load_tracked_run

    run = load_tracked_run(folder)
    return None if run is None else run.to_json()


def _tracked_version(registry: Any, version: str) -> dict[str, Any] | None:
    try:
        return registry.tracked_run(version)
    except (OSError, ValueError):  # an unreadable record only loses its link
        return None


def wfo_section() -> str:
    from quant_engine.wfo.report import load_report

    rows, skipped = [], []
    for name, folder in list(_report_folders("wfo").items())[:MAX_WFO_RUNS]:
        try:
            report = load_report(folder)
            selected = report["trials"][report["selected_trial"]]
        except Exception as exc:  # noqa: BLE001 - one bad file must not take the page down
            skipped.append(_unreadable(f"walk-forward report {name}", exc))
            continue
        link = f"wfo/{urllib.parse.quote(name, safe='')}"
        rows.append(
            [
                f'<a href="{link}">{html.escape(report["run_id"])}</a>',
                _cell(report.get("generated_at")),
                _cell(report["pbo"]),
                _cell(report["deflated_sharpe"]),
                _cell(report["psr"]),
                _cell(selected.get("mean_path_sharpe"), 2),
                _cell(f"{report['n_splits']} / {report['n_paths']} / {report['n_trials']}"),
                f'<span title="{html.escape(report.get("scheme", ""))}">'
                f"{html.escape(report.get('splitter', 'cpcv'))}</span>",
                html.escape(report.get("setup", "")),
                mlflow_link(_tracked_in(folder)),
            ]
        )
    table = _table(
        [
            "run",
            "generated",
            "PBO",
            "deflated Sharpe",
            "PSR",
            "mean path Sharpe",
            "splits / paths / trials",
            "splitter",
            "setup",
            "MLflow",
        ],
        rows,
        "No walk-forward report yet: trigger the wfo_pipeline DAG.",
    )
    return (
        "<h2>Walk-forward reports</h2><p>Each run's page has every backtest path's equity curve, the PBO "
        "logits and the split diagram.</p>" + table + "".join(skipped)
    )


def _unreadable(what: str, exc: Exception) -> str:
    """The line a section shows instead of an item it cannot read (the rest of the page still renders)."""
    return (
        f'<p class="bad">Skipped {html.escape(what)}: cannot read it ({html.escape(type(exc).__name__)}: '
        f"{html.escape(str(exc)[:200])}).</p>"
    )


def _model_names() -> list[str]:
    from quant_engine.training.defaults import DEFAULT_MODEL_NAME

    settings = _settings()
    names = {DEFAULT_MODEL_NAME}
    if settings.backend == "local" and settings.models_dir.is_dir():
        names.update(p.name for p in settings.models_dir.iterdir() if (p / "versions").is_dir())
    return sorted(names)


def wfo_run_text(wfo_run: Mapping[str, Any] | None, reports: Mapping[str, Path]) -> str:
    """The walk-forward run a model came from, linked to its report when that is stored; ``-`` for none."""
    if not wfo_run:
        return _cell(None)
    from quant_engine.runs import safe_name

    run_id = str(wfo_run.get("run_id"))
    name = safe_name(run_id)
    label = html.escape(run_id)
    link = f'<a href="wfo/{urllib.parse.quote(name, safe="")}">{label}</a>' if name in reports else label
    return (
        f"{link} ({html.escape(str(wfo_run.get('splitter')))}, trial {_cell(wfo_run.get('selected_trial'))}: "
        f"PBO {_cell(wfo_run.get('pbo'))}, deflated Sharpe {_cell(wfo_run.get('deflated_sharpe'))})"
    )


def registry_section() -> str:
    from quant_engine.backends import make_model_registry

    reports = _report_folders("wfo")
    parts = ["<h2>Model registry</h2>"]
    for name in _model_names():
        registry = make_model_registry(name=name)
        try:
            champion, versions = registry.champion(), registry.list()
        except Exception as exc:  # noqa: BLE001 - a stray or corrupt folder must not take the page down
            parts.append(f"<h3>{html.escape(name)}</h3>" + _unreadable(f"registry {name}", exc))
            continue
        rows = []
        for version in reversed(versions):
            is_champion = champion is not None and champion.version == version.version
            metrics = version.metadata.metrics or {}
            rows.append(
                [
                    f"<b>{html.escape(version.version)}</b>"
                    + (' <span class="ok">champion</span>' if is_champion else ""),
                    _cell(version.created_at),
                    _cell({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}),
                    wfo_run_text(version.metadata.wfo_run, reports),
                    _cell(version.metadata.wfo_report),
                    mlflow_link(_tracked_version(registry, version.version)),
                ]
            )
        why = (
            (
                f"champion {html.escape(champion.version)} since {html.escape(champion.promoted_at)}: "
                f"{html.escape(champion.reason)}"
            )
            if champion
            else "no champion yet"
        )
        serving = next((v for v in versions if champion is not None and v.version == champion.version), None)
        if serving is not None:
            origin = serving.metadata.wfo_run
            why += (
                f"<br>The champion comes from walk-forward run {wfo_run_text(origin, reports)}."
                if origin
                else "<br>The champion names no walk-forward run."
            )
        parts.append(f"<h3>{html.escape(name)}</h3><p>{why}</p>")
        parts.append(
            _table(
                ["version", "created", "holdout metrics", "WFO run", "WFO report", "MLflow"],
                rows,
                "No version registered: run the spot_training DAG.",
            )
        )
    return "".join(parts)


def drift_section() -> str:
    folders = _report_folders("drift")
    if not folders:
        return "<h2>Drift</h2><p class='muted'>No drift report yet: the drift_monitor DAG writes one.</p>"
    name, folder = next(iter(folders.items()))
    try:
        document = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError) as exc:
        return "<h2>Drift</h2>" + _unreadable(f"drift report {name}", exc)
    verdict = document.get("verdict", "?")
    css = "ok" if verdict == "none" else "bad"
    window = document.get("window", {})
    alarms = (document.get("evidence") or {}).get("alarms") or {}
    alarm_rows = [
        [html.escape(feature), f'<span class="{"bad" if state == "ALARM" else "ok"}">{html.escape(state)}</span>']
        for feature, state in sorted(alarms.items())
    ]
    link = f"drift/{urllib.parse.quote(name, safe='')}"
    return (
        f'<h2>Drift</h2><p>Latest check <a href="{link}">{html.escape(document.get("run_id", name))}</a> of '
        f"{_cell(document.get('model_name'))} {_cell(document.get('model_version'))}, window "
        f"{_cell(window.get('start'))} .. {_cell(window.get('end'))} ({_cell(window.get('rows'))} rows): "
        f'verdict <span class="{css}">{html.escape(str(verdict))}</span>, retraining requested: '
        f"{_cell(document.get('retraining_requested'))}; MLflow run {mlflow_link(_tracked_in(folder))}.</p>"
        + _table(["feature alarm", "state"], alarm_rows, "No alarms defined.")
    )


def online_section() -> str:
    """Batch vs adapted quality over time: the bridge's online layer's logged updates, week by week."""
    from quant_engine.online.layer import OnlineLayer

    parts = []
    for name in _model_names():
        folder = _settings().home / "online" / name / "updates"
        if not folder.is_dir():
            continue
        try:
            updates = OnlineLayer(updates_dir=folder).read_updates()
        except Exception as exc:  # noqa: BLE001 - one unreadable log must not take the page down
            parts.append(f"<h3>{html.escape(name)}</h3>" + _unreadable(f"online updates of {name}", exc))
            continue
        if updates.empty:
            continue
        settled = pd.to_datetime(updates["t1"], utc=True).dt.tz_convert(None)  # weeks of UTC dates
        weeks = updates.assign(week=settled.dt.to_period("W").dt.start_time)
        rows = [
            [
                html.escape(str(week.date())),
                html.escape(", ".join(sorted(set(group["model_version"])))),
                _cell(len(group)),
                _cell(group["logloss_batch"].mean(), 5),
                _cell(group["logloss_adapted"].mean(), 5),
                _cell((group["used"] == "adapted").mean(), 2),
                _cell(group["slope"].iloc[-1]),
            ]
            for week, group in list(weeks.groupby("week", sort=True))[-12:]
        ]
        parts.append(
            f"<h3>{html.escape(name)}</h3>"
            + _table(
                [
                    "week (label settled)",
                    "version",
                    "labels",
                    "log-loss batch",
                    "log-loss adapted",
                    "adapted used",
                    "slope",
                ],
                rows,
                "no settled labels yet",
            )
        )
    if not parts:
        return ""
    return (
        "<h2>Online adaptation</h2><p>The bridge's recalibration of the champion, judged on each label once "
        "it settled: the champion's own log-loss against the adapted one, and how often signals used the "
        "adapted probability (the last 12 weeks).</p>" + "".join(parts)
    )


def fetch_bridge(
    base_url: str, token: str | None, timeout_s: float = BRIDGE_TIMEOUT_S
) -> tuple[dict | None, Any, str | None]:
    """``(health, latest signals, error)`` from the bridge's HTTP side.

    ``error`` says why the bridge is not reachable; the signals are None when the bridge refuses
    ``token`` (``/signals/latest`` needs a subscriber token, ``/health`` does not).
    """
    try:
        with httpx.Client(base_url=base_url, timeout=timeout_s) as client:
            health = client.get("/health")
            health.raise_for_status()
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            signals = client.get("/signals/latest", headers=headers)
            return health.json(), signals.json() if signals.status_code == 200 else None, None
    except (httpx.HTTPError, ValueError) as exc:
        return None, None, f"{type(exc).__name__}: {exc}"


def _signal_rows(signals: Any) -> tuple[list[str], list[list[str]]]:
    """Latest signals as a table, whether the bridge sends a list of records or a mapping by ticker."""
    if isinstance(signals, Mapping):
        signals = signals.get(
            "signals",
            [{"ticker": k, **v} if isinstance(v, Mapping) else {"ticker": k, "value": v} for k, v in signals.items()],
        )
    records = [s for s in signals or [] if isinstance(s, Mapping)]
    columns = list(dict.fromkeys(k for s in records for k in s))
    return columns, [[_cell(s.get(c)) for c in columns] for s in records]


def bridge_section() -> str:
    base_url = os.environ.get("QE_BRIDGE_URL", DEFAULT_BRIDGE_URL)
    health, signals, error = fetch_bridge(base_url, os.environ.get("QE_BRIDGE_UI_TOKEN"))
    if error is not None:
        return (
            f"<h2>Bridge</h2><p class='bad'>bridge not reachable at {html.escape(base_url)}</p>"
            f"<p class='muted'>{html.escape(error)}</p>"
        )
    facts = [[html.escape(str(k)), _cell(v)] for k, v in health.items()]
    columns, rows = _signal_rows(signals)
    return (
        f"<h2>Bridge</h2><p>{html.escape(base_url)}</p>"
        + _table(["health", "value"], facts, "empty health")
        + "<h3>Latest signals</h3>"
        + (
            _table(columns, rows, "No signal yet.")
            if signals is not None
            else "<p class='muted'>The bridge refused the signals: set QE_BRIDGE_UI_TOKEN to one of its "
            "QE_BRIDGE_TOKENS.</p>"
        )
    )


def create_app() -> FastAPI:
    """The FastAPI app Airflow mounts at :data:`URL_PREFIX`; every route needs an Airflow login."""
    app = FastAPI(
        title="Quant Engine", dependencies=[Depends(get_user)], docs_url=None, redoc_url=None, openapi_url=None
    )

    @app.get("/", response_class=HTMLResponse)
    def overview() -> HTMLResponse:
        body = (
            "<h1>Quant Engine</h1>"
            + wfo_section()
            + registry_section()
            + drift_section()
            + online_section()
            + bridge_section()
        )
        return _page("Quant Engine", body)

    @app.get("/wfo/{name}", response_class=HTMLResponse)
    def wfo_report_page(name: str) -> FileResponse:
        return FileResponse(_report_file("wfo", name, "report.html"), media_type="text/html")

    @app.get("/wfo/{name}/report.json")
    def wfo_report_json(name: str) -> FileResponse:
        return FileResponse(_report_file("wfo", name, "report.json"), media_type="application/json")

    @app.get("/drift/{name}", response_class=HTMLResponse)
    def drift_report_page(name: str) -> FileResponse:
        return FileResponse(_report_file("drift", name, "report.html"), media_type="text/html")

    return app
