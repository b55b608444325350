"""CPCV split generation: quant-engine's CombinatorialPurgedCV against skfolio 1.12's, same sizes.

Both split 1,000,000 rows (one per timestamp) into N=10 groups with k=2 test groups (45 splits),
purging 10 rows on each side of a test block and embargoing 20 more after it. skfolio counts those
in rows (``purged_size=10, embargo_size=20``); quant-engine purges by label span, so each label here
ends 10 bars after its event (``t1 = t0 + 10 bars``) with ``embargo=20`` bars, which selects the
very same rows: the script checks that every split's train and test sets agree before timing.

Each side runs in its own subprocess (skfolio in ``.bench-venv-skfolio/``, created from
``bench/requirements-skfolio.txt`` when missing) and reports the median wall time of generating all
splits, the tracemalloc peak of one generation, and the process's peak RSS.

Run: ``.venv/bin/python bench/splitters.py`` (``make bench`` runs it too).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKFOLIO_VENV = ROOT / ".bench-venv-skfolio"
SKFOLIO_REQUIREMENTS = ROOT / "bench" / "requirements-skfolio.txt"
N_GROUPS, N_TEST_GROUPS, PURGE_BARS, EMBARGO_BARS = 10, 2, 10, 20


def _make_ours(n_rows: int):
    import numpy as np
    import pandas as pd

    from quant_engine.wfo.splitters import CombinatorialPurgedCV

    t0 = pd.date_range("2000-01-03", periods=n_rows, freq="min", tz="UTC")
    t1 = pd.Series(t0[np.minimum(np.arange(n_rows) + PURGE_BARS, n_rows - 1)], index=t0)
    cv = CombinatorialPurgedCV(N_GROUPS, N_TEST_GROUPS, embargo=EMBARGO_BARS, t1=t1)
    return cv, np.zeros((n_rows, 1), dtype=np.float32), lambda split: split


def _make_skfolio(n_rows: int):
    import numpy as np
    from skfolio.model_selection import CombinatorialPurgedCV

    cv = CombinatorialPurgedCV(
        n_folds=N_GROUPS, n_test_folds=N_TEST_GROUPS, purged_size=PURGE_BARS, embargo_size=EMBARGO_BARS
    )
    # skfolio yields one test array per test fold; flatten them to compare with a plain splitter.
    return cv, np.zeros((n_rows, 1), dtype=np.float32), lambda split: (split[0], np.concatenate(split[1]))


def _digest(train, test) -> str:
    return hashlib.sha1(train.astype("int64").tobytes() + b"|" + test.astype("int64").tobytes()).hexdigest()


def worker(side: str, n_rows: int, repeats: int) -> None:
    """Time one side and print its figures as one JSON line."""
    cv, X, flat = (_make_ours if side == "ours" else _make_skfolio)(n_rows)
    digests = [_digest(*flat(split)) for split in cv.split(X)]  # also the warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _split in cv.split(X):
            pass
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    for _split in cv.split(X):
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        json.dumps(
            {
                "side": side,
                "median_s": statistics.median(times),
                "times_s": times,
                "tracemalloc_peak_mb": peak / 2**20,
                "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "n_splits": len(digests),
                "digests": digests,
            }
        )
    )


def _skfolio_python() -> tuple[Path | None, str]:
    """The bench venv's interpreter, creating the venv when missing; or None and why not."""
    python = SKFOLIO_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {SKFOLIO_VENV.name}/ from {SKFOLIO_REQUIREMENTS.relative_to(ROOT)} ...", flush=True)
        steps = [
            ["python3.11", "-m", "venv", str(SKFOLIO_VENV)],
            [str(python), "-m", "pip", "install", "--quiet", "-r", str(SKFOLIO_REQUIREMENTS)],
        ]
        for step in steps:
            try:
                done = subprocess.run(step, capture_output=True, text=True, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return None, f"{' '.join(step[:3])} failed: {exc}"
            if done.returncode:
                return None, f"{' '.join(step[:3])} failed: {(done.stderr or done.stdout).strip()[-500:]}"
    check = subprocess.run(
        [str(python), "-c", "import skfolio; print(skfolio.__version__)"], capture_output=True, text=True
    )
    if check.returncode:
        return None, f"skfolio does not import in {SKFOLIO_VENV.name}/: {check.stderr.strip()[-300:]}"
    return python, check.stdout.strip()


def _run_worker(python: Path, side: str, n_rows: int, repeats: int) -> dict:
    done = subprocess.run(
        [
            str(python),
            str(Path(__file__).resolve()),
            "--worker",
            side,
            "--rows",
            str(n_rows),
            "--repeats",
            str(repeats),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if done.returncode:
        raise RuntimeError(f"{side} worker failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5, help="timed generations per side")
    parser.add_argument("--worker", choices=["ours", "skfolio"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.rows, args.repeats)
        return

    print(
        f"CPCV split generation: {args.rows:,} rows, N={N_GROUPS}, k={N_TEST_GROUPS}, "
        f"purge {PURGE_BARS} bars, embargo {EMBARGO_BARS} bars, median of {args.repeats} runs"
    )
    ours = _run_worker(Path(sys.executable), "ours", args.rows, args.repeats)
    _report("quant-engine", ours)
    python, version = _skfolio_python()
    if python is None:
        print(f"skfolio baseline skipped: {version}")
        return
    theirs = _run_worker(python, "skfolio", args.rows, args.repeats)
    _report(f"skfolio {version}", theirs)
    if theirs["digests"] != ours["digests"]:
        differ = [i for i, (a, b) in enumerate(zip(ours["digests"], theirs["digests"], strict=True)) if a != b]
        raise SystemExit(f"the two splitters disagree on split(s) {differ}: the comparison is not like for like")
    print(f"same train/test rows in all {ours['n_splits']} splits")
    print(f"speed ratio (skfolio / quant-engine): {theirs['median_s'] / ours['median_s']:.1f}x")
    print(
        f"tracemalloc peak ratio (skfolio / quant-engine): "
        f"{theirs['tracemalloc_peak_mb'] / ours['tracemalloc_peak_mb']:.1f}x"
    )


def _report(name: str, figures: dict) -> None:
    runs = ", ".join(f"{t:.3f}" for t in figures["times_s"])
    print(
        f"{name:>16}: median {figures['median_s']:.3f} s ({runs}); tracemalloc peak "
        f"{figures['tracemalloc_peak_mb']:.0f} MiB; max RSS {figures['max_rss_mb']:.0f} MiB"
    )


if __name__ == "__main__":
    main()
