"""Feature drift check: quant-engine's baseline + check against scipy's KS and Evidently's DataDriftPreset.

Data: 20 standard-normal features, 100,000 baseline rows and 100,000 current rows; in the current
window ``f0..f4`` are shifted by +0.2 sigma and ``f5..f7`` scaled by 1.3, the other 12 untouched.

* **quant-engine**: ``build_baseline`` on the baseline rows, the two JSON files written and read
  back, then ``check_drift`` on the current rows (Robust method). Model Monitor's default
  ``comparison_threshold`` (0.1) sits above these drifts' population KS distances (0.080 for the
  shift, 0.063 for the scale), so the bench sets 0.04 and also prints what the default flags.
* **scipy**: ``scipy.stats.ks_2samp`` on the raw columns (no baseline kept), flagged by the same rule
  (``D`` minus the KS allowance above 0.04).
* **Evidently 0.7**: ``Report([DataDriftPreset()]).run(current, reference)`` in its own virtualenv
  ``.bench-venv-evidently/`` (``pip install -r bench/requirements-evidently.txt``; Evidently needs
  pandas < 3), driven through a subprocess; it judges these sizes by normed Wasserstein >= 0.1.
  Only the ``run`` and reading its result are timed, not the import or loading the data.

Target: >= 10x faster than Evidently with the same 8 columns flagged.
Run: ``python bench/drift.py [--rows 100000] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from quant_engine.monitoring.baseline import Baseline, build_baseline
from quant_engine.monitoring.feature_drift import check_drift, ks_allowance

N_FEATURES = 20
SHIFTED = [f"f{i}" for i in range(5)]
SCALED = [f"f{i}" for i in range(5, 8)]
THRESHOLD = 0.04
TARGET_SPEEDUP = 10.0
EVIDENTLY_PYTHON = Path(__file__).resolve().parent.parent / ".bench-venv-evidently" / "bin" / "python"

_EVIDENTLY_SCRIPT = """
import json, sys, time
import numpy as np, pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset
names = [f"f{i}" for i in range(N_FEATURES)]
ref = pd.DataFrame(np.load(sys.argv[1]), columns=names)
cur = pd.DataFrame(np.load(sys.argv[2]), columns=names)
start = time.perf_counter()
result = Report([DataDriftPreset()]).run(cur, ref).dict()
seconds = time.perf_counter() - start
flagged = [m["config"]["column"] for m in result["metrics"]
           if m["config"].get("type") == "evidently:metric_v2:ValueDrift" and m["value"] >= m["config"]["threshold"]]
method = next(m["config"]["method"] for m in result["metrics"] if "method" in m["config"])
print(json.dumps({"seconds": seconds, "flagged": flagged, "method": method}))
""".replace("N_FEATURES", str(N_FEATURES))


def _data(rows: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    names = [f"f{i}" for i in range(N_FEATURES)]
    reference = pd.DataFrame(rng.standard_normal((rows, N_FEATURES)), columns=names)
    current = pd.DataFrame(rng.standard_normal((rows, N_FEATURES)), columns=names)
    current[SHIFTED] += 0.2
    current[SCALED] *= 1.3
    return reference, current


def _best(fn, repeats: int):  # noqa: ANN001, ANN202 - a tiny timing helper
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def _quant_engine(reference: pd.DataFrame, current: pd.DataFrame, folder: Path) -> list[str]:
    build_baseline(reference, comparison_threshold=THRESHOLD).write(folder)
    return check_drift(current, Baseline.read(folder)).drifted_features


def _scipy(reference: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    allowance = ks_allowance(len(reference), len(current))
    return [
        name
        for name in reference.columns
        if stats.ks_2samp(reference[name].to_numpy(), current[name].to_numpy()).statistic - allowance > THRESHOLD
    ]


def _evidently(reference: pd.DataFrame, current: pd.DataFrame, folder: Path) -> dict | str:
    if not EVIDENTLY_PYTHON.exists():
        return (
            f"{EVIDENTLY_PYTHON} not found: python3.11 -m venv .bench-venv-evidently && "
            ".bench-venv-evidently/bin/pip install -r bench/requirements-evidently.txt"
        )
    ref_path, cur_path = folder / "reference.npy", folder / "current.npy"
    np.save(ref_path, reference.to_numpy())
    np.save(cur_path, current.to_numpy())
    done = subprocess.run(
        [str(EVIDENTLY_PYTHON), "-c", _EVIDENTLY_SCRIPT, str(ref_path), str(cur_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return f"Evidently failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    reference, current = _data(args.rows, args.seed)
    expected = SHIFTED + SCALED
    print(f"{N_FEATURES} features, {args.rows:,} baseline rows vs {args.rows:,} current rows; drifted: {expected}")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        qe_s, qe_flags = _best(lambda: _quant_engine(reference, current, folder / "model"), args.repeats)
        build_s, _ = _best(lambda: build_baseline(reference, comparison_threshold=THRESHOLD), args.repeats)
        stored = Baseline.read(folder / "model")
        check_s, report = _best(lambda: check_drift(current, stored), args.repeats)
        default_flags = check_drift(current, stored, comparison_threshold=0.1).drifted_features
        sp_s, sp_flags = _best(lambda: _scipy(reference, current), args.repeats)
        ev = _evidently(reference, current, folder)

    print(
        f"quant-engine  build+write+read+check  {qe_s * 1e3:8.1f} ms  "
        f"(build {build_s * 1e3:.1f} ms, check {check_s * 1e3:.1f} ms)"
    )
    print(f"              flags (Robust, threshold {THRESHOLD}): {qe_flags}  same as truth: {qe_flags == expected}")
    print(f"              flags at Model Monitor's default threshold 0.1: {default_flags}")
    w_flags = [n for n, f in report.features.items() if f.wasserstein_sigma >= 0.1]
    print(f"              Wasserstein/sigma >= 0.1 (Evidently's rule) flags: {w_flags}")
    print(f"scipy ks_2samp on raw data            {sp_s * 1e3:8.1f} ms  ratio {sp_s / qe_s:.2f}x  flags: {sp_flags}")
    if isinstance(ev, str):
        print(f"Evidently: skipped, {ev}")
        return
    ratio = ev["seconds"] / qe_s
    print(f"Evidently {ev['method']:<27} {ev['seconds'] * 1e3:8.1f} ms  ratio {ratio:.1f}x  flags: {ev['flagged']}")
    verdict = "met" if ratio >= TARGET_SPEEDUP and sorted(ev["flagged"]) == sorted(qe_flags) else "NOT met"
    print(f"target >= {TARGET_SPEEDUP:.0f}x faster than Evidently with the same columns flagged: {verdict}")


if __name__ == "__main__":
    main()
