"""The drift report: ``report.json`` for machines, a self-contained ``report.html`` for people.

The HTML embeds its plots as base64 PNGs (matplotlib's Agg backend, no display needed), so one
file can be mailed, attached to an alarm or opened from S3 without anything beside it. Baseline
distributions are drawn from the stored KLL sketch, the same CDF the drift check judged by.

``report.html`` is written first and ``report.json`` last, each atomically: a folder with a
``report.json`` holds a complete report.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quant_engine.monitoring.baseline import Baseline
from quant_engine.monitoring.concept_drift import ConceptDriftReport
from quant_engine.storage.atomic import write_bytes_atomic, write_json_atomic

__all__ = ["HTML_FILE", "JSON_FILE", "explain", "json_safe", "write_report"]

JSON_FILE = "report.json"
HTML_FILE = "report.html"
_BINS = 30


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars unwrapped, timestamps as ISO text and non-finite floats as text."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _png(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _distribution_plot(baseline: Baseline, name: str, values: np.ndarray, distance: float | None) -> str:
    """Shares per bin of the baseline (from its sketch) and of the window, on common bins."""
    import matplotlib.pyplot as plt

    feature = baseline.feature(name)
    values = values[np.isfinite(values)]
    low = min(feature.min, values.min()) if values.size else feature.min
    high = max(feature.max, values.max()) if values.size else feature.max
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, _BINS + 1)
    base_cdf = feature.cdf(edges)
    base_cdf[0] = 0.0  # the first bin is closed on the left: it holds the minimum
    base_share = np.diff(base_cdf)
    window_share = np.histogram(values, bins=edges)[0] / max(values.size, 1)
    figure, axis = plt.subplots(figsize=(5, 2.6))
    axis.stairs(base_share, edges, label="baseline (training)", linewidth=1.5)
    axis.stairs(window_share, edges, label="current window", linewidth=1.5)
    title = name if distance is None else f"{name}  (KS distance {distance:.3f})"
    axis.set_title(title, fontsize=10)
    axis.set_ylabel("share of rows")
    axis.legend(fontsize=8)
    return _png(figure)


def _quality_plot(quality: ConceptDriftReport) -> str:
    """Each quality metric of the window with its bounds, and the holdout baseline."""
    import matplotlib.pyplot as plt

    checks = list(quality.checks.values())
    figure, axes = plt.subplots(1, len(checks), figsize=(3.6 * len(checks), 2.8))
    for index, (axis, check) in enumerate(zip(np.atleast_1d(axes), checks, strict=True)):
        lower = check.value - check.lower if math.isfinite(check.lower) else 0.0
        upper = check.upper - check.value if math.isfinite(check.upper) else 0.0
        axis.errorbar(
            [0],
            [check.value],
            yerr=[[lower], [upper]],
            fmt="o",
            capsize=6,
            color="tab:red" if check.breached else "tab:blue",
            label="window",
        )
        axis.axhline(check.baseline, color="grey", linestyle="--", label="holdout baseline")
        axis.set_xticks([])
        axis.set_title(f"{check.name}{'  BREACHED' if check.breached else ''}", fontsize=10)
        if index == 0:
            axis.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    return _png(figure)


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _thresholds_note(evidence: Mapping[str, Any]) -> str:
    days = evidence.get("calibrated_window_days")
    need = evidence.get("min_drifted_features", 1)
    where = (
        f"each feature's own, calibrated on {days}-day windows of its training data"
        if days
        else "one given threshold for every feature"
    )
    return f"{where}; at least {need} feature(s) must drift together for the inputs to count as drifted."


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def explain(document: Mapping[str, Any]) -> list[str]:
    """Why the verdict is what it is, in sentences: the inputs, the quality, the market's regime.

    Each feature is judged against its own threshold (calibrated on training windows of the
    window's length, unless one threshold was given); the inputs count as drifted when at least
    ``min_drifted_features`` did. Quality falls when a metric's bound lies wholly beyond the
    holdout's value by more than its tolerance.
    """
    evidence = document["evidence"]
    judged = evidence.get("feature_distances", {})  # the distance each threshold is compared with
    features = [
        {**f, "distance": judged.get(f["name"], f["distance"])}
        for f in evidence.get("feature_drift", {}).values()
        if f.get("threshold") is not None
    ]
    need = evidence.get("min_drifted_features", 1)
    days = evidence.get("calibrated_window_days")
    against = f"thresholds calibrated on {days}-day training windows" if days else "one threshold for every feature"
    drifted = [f for f in features if f.get("drifted")]
    listed = ", ".join(f"{f['name']} {f['distance']:.3f} > {f['threshold']:.3f}" for f in drifted[:6])
    if len(drifted) >= need:
        lines = [
            f"The inputs drifted: {len(drifted)} of {len(features)} feature(s) beyond their {against} "
            f"({listed}); {need} needed."
        ]
    else:
        closest = sorted(
            (f for f in features if f.get("distance") is not None), key=lambda f: f["threshold"] - f["distance"]
        )[:3]
        near = ", ".join(f"{f['name']} {f['distance']:.3f} vs {f['threshold']:.3f}" for f in closest)
        lines = [
            f"The inputs did not drift: {len(drifted)} of {len(features)} feature(s) beyond their {against}, "
            f"{need} needed (closest: {near or 'none'})."
        ]
    quality = evidence.get("quality", {})
    checks = quality.get("checks", {})
    breached = [c for c in checks.values() if c.get("breached")]
    if breached:
        lines.append(
            "Quality fell: "
            + "; ".join(
                f"{c['name']} {c['value']:.4f} (bounds {c['lower']:.4f}..{c['upper']:.4f}) against the holdout's "
                f"{c['baseline']:.4f}, beyond the tolerance {c['tolerance']:.4f}"
                for c in breached
            )
            + "."
        )
    else:
        lines.append(
            f"Quality held: on {quality.get('n_settled', 0)} settled predictions no metric's "
            f"{quality.get('confidence', 0):.0%} bound left the holdout's value by more than its tolerance."
        )
    regime = evidence.get("vol_regime")
    if regime:
        lines.append(
            f"The market's volatility regime is {regime['regime']} ({regime['percentile']:.1%} of the "
            f"training history's realised volatility, since {str(regime['since'])[:10]}): thresholds "
            "calibrated on the training years already include its spells, so a stressed market alone is "
            "no drift."
        )
    return lines


def write_report(
    folder: Path | str,
    document: Mapping[str, Any],
    *,
    baseline: Baseline,
    window: pd.DataFrame,
    features: Sequence[str],
    quality: ConceptDriftReport,
) -> tuple[Path, Path]:
    """Write ``report.html`` and then ``report.json`` into ``folder``.

    Parameters
    ----------
    document : mapping
        The JSON report: ``verdict``, ``evidence`` (with ``feature_drift``) and
        ``constraint_violations`` at least.
    baseline : Baseline
        The version's baseline, for the distribution plots.
    window : DataFrame
        The window's feature rows.
    features : sequence of str
        Features to plot (drifted first); each must be in the baseline and the window.
    quality : ConceptDriftReport
        The quality checks to plot.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on workers; set before pyplot is first imported

    for key in ("verdict", "evidence", "constraint_violations"):
        if key not in document:
            raise ValueError(f"the report document lacks {key!r}")
    missing = [f for f in features if f not in window.columns or f not in baseline.names]
    if missing:
        raise ValueError(f"features {missing} to plot are not in both the window and the baseline")
    folder = Path(folder)
    document = json_safe(document)
    drift = document["evidence"].get("feature_drift", {})
    distances = document["evidence"].get("feature_distances", {})
    plots = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{_distribution_plot(baseline, name, window[name].to_numpy(dtype="float64"), distances.get(name))}">'
        "</figure>"
        for name in features
    )
    verdict = html.escape(str(document["verdict"]))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Drift report {html.escape(str(document.get("run_id", "")))}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:12px}}figure{{display:inline-block;margin:4px}}</style>
</head><body>
<h1>Drift report: {verdict}</h1>
<p>Model {html.escape(str(document.get("model_name", "")))} {html.escape(str(document.get("model_version", "")))},
window {html.escape(str(document.get("window", {})))}; retraining requested:
{html.escape(str(document.get("retraining_requested", "")))}</p>
<h2>Why</h2><ul>{"".join(f"<li>{html.escape(line)}</li>" for line in document.get("explanation", []))}</ul>
<h2>Features: the judged distance against each one's threshold</h2>
{
        _table(
            [{**f, "judged_distance": distances.get(f["name"])} for f in drift.values()],
            (
                "name",
                "judged_distance",
                "threshold",
                "drifted",
                "distance",
                "robust_distance",
                "psi",
                "wasserstein_sigma",
                "num_present",
            ),
        )
    }
<p>Thresholds: {html.escape(_thresholds_note(document["evidence"]))}</p>
<h2>Volatility regime</h2>
{
        _table(
            [document["evidence"]["vol_regime"]] if document["evidence"].get("vol_regime") else [],
            ("regime", "percentile", "realized_vol", "since", "as_of"),
        )
    }
<h2>Model quality against the holdout, with bounds</h2>
{
        _table(
            list(document["evidence"].get("quality", {}).get("checks", {}).values()),
            ("name", "value", "lower", "upper", "baseline", "tolerance", "breached"),
        )
    }
<figure><img alt="quality" src="data:image/png;base64,{_quality_plot(quality)}"></figure>
<h2>The bridge's online adaptation on the window's settled labels</h2>
{
        _table(
            [document["evidence"]["online"]] if document["evidence"].get("online") else [],
            ("labels", "logloss_batch", "logloss_adapted", "adapted_used", "slope", "intercept"),
        )
    }
<h2>Feature distributions, baseline vs current</h2>{plots}
<h2>Constraint violations</h2>
{_table(document["constraint_violations"], ("feature_name", "constraint_check_type", "description"))}
<h2>Notes</h2><ul>{"".join(f"<li>{html.escape(str(n))}</li>" for n in document["evidence"].get("notes", []))}</ul>
</body></html>
"""
    html_path, json_path = folder / HTML_FILE, folder / JSON_FILE
    write_bytes_atomic(html_path, page.encode("utf-8"))
    write_json_atomic(json_path, document)
    return json_path, html_path
