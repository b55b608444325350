"""How the engine's cost grows with the universe: 10, 100 (and 500) tickers x 20 years of daily bars.

Each stage runs in its own subprocess on a fresh ``QE_HOME`` (local backend) and reports its wall
time (the stage's call only, not the imports) and its peak RSS (``ru_maxrss``: imports included,
and above the imports):

* **ingest**: ``quant-engine ingest``'s path (:func:`quant_engine.features.ingest.ingest`) of the
  synthetic market's bars, written to a Parquet file beforehand, into the offline and online stores;
* **dataset**: the point-in-time dataset of a walk-forward run (labels and features of every row);
* **plan**: the CPCV plan (6 groups choose 2: 15 splits), every split's row roles written;
* **fit**: one ``(trial, split)`` fit, what one mapped ``run_split`` task of ``wfo_pipeline`` does.

Then one split task's memory against the universe: a rolling walk-forward (2 years of training, 1
year of test, so a split holds about 3 of the 20 years' rows) is built and planned at every size,
and its middle split's fit runs twice, each in its own process: reading only the split's rows
(``run_split``, as the DAG's tasks do) and, the baseline, reading the whole panel and slicing it
(``run_split(..., whole_panel=True)``, the read before the split read). The table gives both peaks
(RSS above the imports), their ratio, and what 100k more rows cost from one size to the next: the
split read's per split row and the whole-panel read's per panel row, each flat across sizes when the
memory follows those rows.

Each stage's growth is the exponent ``b`` of ``cost ~ tickers^b`` fitted on log-log over the sizes
(rows grow with the tickers: the years are fixed). Then the walk-forward's fits of a fixed grid
(``--pool-trials`` trials x 15 splits at ``--pool-tickers`` tickers) run on 1, 2 and 4 worker
processes (a process pool over :func:`quant_engine.wfo.runner.run_split`, as Celery workers would
take them), with the speed-up against one process measured in the same run.

The machine is shared and its load moves timings: the load average is printed with the results,
and speed-ups are ratios within one run.

Run: ``.venv/bin/python bench/scale.py`` (10 and 100 tickers, a few minutes);
``--sizes 10,100,500`` for the 500-ticker universe; ``--workers 1,2,4``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "2005-01-03", "2024-12-31"  # 20 years of sessions
STAGES = ("ingest", "dataset", "plan", "fit")
#: The memory table's splitter: a fixed-length window, so a split is a fixed share of the panel's years.
ROLLING = {"splitter": "walk_forward", "train_window": "730D", "test_window": "365D", "anchored": False}
TRIAL = {"max_depth": 3, "learning_rate": 0.1, "n_estimators": 50, "min_child_weight": 100, "threshold": 0.0}


def _conf(n_trials: int, run: str = "cpcv") -> dict:
    trials = [{**TRIAL, "max_depth": 2 + t % 3, "learning_rate": 0.05 * (1 + t // 3)} for t in range(n_trials)]
    splitter = ROLLING if run == "rolling" else {"n_groups": 6, "n_test_groups": 2}
    return {"start": START, "end": END, **splitter, "trials": trials}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --- stages, each in its own process ------------------------------------------------------------


def _stage(name: str, home: Path, tickers: int, n_trials: int, workers: int, run: str, whole_panel: bool) -> dict:
    os.environ.update({"QE_HOME": str(home), "QE_BACKEND": "local"})
    run_dir = home / "runs" / "wfo" / run
    bars_file = home / "bars.parquet"
    if name == "generate":
        from quant_engine.data.synthetic import SyntheticMarket

        def call() -> dict:
            bars = SyntheticMarket(n_tickers=tickers, seed=7, start=START, end=END).fetch(None, START, END)
            bars.to_parquet(bars_file)
            return {"rows": len(bars)}

    elif name == "ingest":
        from quant_engine.backends import make_group_stores
        from quant_engine.features.ingest import IngestionRequest, ingest

        def call() -> dict:
            stores = make_group_stores()
            params = {"source": "parquet", "path": str(bars_file), "start": START, "end": END}
            result = ingest(IngestionRequest.from_params(params, stores.offline), stores)
            return {"rows": result.rows_written_offline}

    elif name == "dataset":
        from quant_engine.backends import make_bar_store, make_offline_store
        from quant_engine.wfo.config import WfoConfig
        from quant_engine.wfo.dataset import build_dataset

        def call() -> dict:
            config = WfoConfig.from_params(_conf(n_trials, run))
            return {"rows": build_dataset(config, run_dir, make_offline_store(), make_bar_store())["rows"]}

    elif name == "plan":
        from quant_engine.wfo.plan import plan

        def call() -> dict:
            return {"tasks": len(plan(run_dir))}

    elif name == "fit":
        from quant_engine.wfo.dataset_file import dataset_rows
        from quant_engine.wfo.run_folder import load_plan
        from quant_engine.wfo.runner import run_split

        def call() -> dict:
            split_id = load_plan(run_dir)["n_splits"] // 2 if run == "rolling" else 0
            result = run_split(run_dir, 0, split_id, whole_panel=whole_panel)
            return {
                "rows": result["n_train"] + result["n_test"],
                "panel_rows": dataset_rows(run_dir / "dataset.parquet"),
            }

    elif name == "pool":
        from concurrent.futures import ProcessPoolExecutor

        from quant_engine.wfo.run_folder import load_plan
        from quant_engine.wfo.runner import run_split

        def call() -> dict:
            tasks = [(t["trial_id"], t["split_id"]) for t in load_plan(run_dir)["tasks"]]
            with ProcessPoolExecutor(max_workers=workers) as pool:
                done = list(pool.map(run_split, [run_dir] * len(tasks), *zip(*tasks, strict=True)))
            return {"tasks": len(done)}

    else:
        raise SystemExit(f"unknown stage {name!r}")
    imported = _rss_mb()
    begun = time.perf_counter()
    extra = call()
    wall = time.perf_counter() - begun
    peak = _rss_mb()
    return {"stage": name, "wall_s": wall, "peak_rss_mb": peak, "above_imports_mb": peak - imported, **extra}


def _run_stage(
    name: str,
    home: Path,
    tickers: int,
    n_trials: int = 2,
    workers: int = 1,
    run: str = "cpcv",
    whole_panel: bool = False,
) -> dict:
    command = [sys.executable, __file__, "--stage", name, "--home", str(home), "--tickers", str(tickers)]
    command += ["--n-trials", str(n_trials), "--stage-workers", str(workers), "--run", run]
    command += ["--whole-panel"] if whole_panel else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "include"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"stage {name} at {tickers} tickers failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- the bench ---------------------------------------------------------------------------------


def _exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) on log(x): cost ~ x^slope."""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-9)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def growth(sizes: list[int], scratch: Path, keep: int) -> tuple[dict[str, list[dict]], list[dict]]:
    """Every stage at every size, and one rolling walk-forward split's fit read both ways at every size;
    the store of ``keep`` tickers stays for the fixed grid."""
    rows: dict[str, list[dict]] = {stage: [] for stage in STAGES}
    memory: list[dict] = []
    for tickers in sizes:
        home = scratch / f"home-{tickers}"
        home.mkdir()
        generated = _run_stage("generate", home, tickers)
        print(f"  {tickers} tickers: {generated['rows']:,} bars generated in {generated['wall_s']:.1f} s", flush=True)
        for stage in STAGES:
            result = _run_stage(stage, home, tickers)
            result["tickers"] = tickers
            result["bars"] = generated["rows"]
            rows[stage].append(result)
            print(
                f"    {stage:<8} {result['wall_s']:8.2f} s  peak RSS {result['peak_rss_mb']:7.0f} MB",
                f"(+{result['above_imports_mb']:.0f} MB over imports)",
                flush=True,
            )
        for stage in ("dataset", "plan"):
            _run_stage(stage, home, tickers, run="rolling")
        split_read = _run_stage("fit", home, tickers, run="rolling")
        whole_read = _run_stage("fit", home, tickers, run="rolling", whole_panel=True)
        memory.append({"tickers": tickers, "split_read": split_read, "whole_panel_read": whole_read})
        print(
            f"    rolling split of {split_read['rows']:,} rows (panel {split_read['panel_rows']:,}): peak above "
            f"imports {split_read['above_imports_mb']:.0f} MB reading the split, "
            f"{whole_read['above_imports_mb']:.0f} MB reading the panel",
            flush=True,
        )
        if tickers != keep:
            shutil.rmtree(home, ignore_errors=True)
    return rows, memory


def pool(tickers: int, n_trials: int, workers: list[int], scratch: Path) -> list[dict]:
    home = scratch / f"home-{tickers}"
    if not home.exists():  # a universe the growth table did not ingest
        home.mkdir()
        for stage in ("generate", "ingest"):
            _run_stage(stage, home, tickers, n_trials)
    for stage in ("dataset", "plan"):
        _run_stage(stage, home, tickers, n_trials)
    results = []
    for count in workers:
        result = _run_stage("pool", home, tickers, n_trials, count)
        results.append({"workers": count, **result})
        print(f"  {count} worker process(es): {result['tasks']} fits in {result['wall_s']:.1f} s", flush=True)
    return results


def _print_memory(memory: list[dict]) -> None:
    """One split task's peak against the universe: the split read, the whole-panel read, their ratio, and
    what each more 100k rows cost from the size before (the fixed costs of a fit, XGBoost's among them,
    cancel there): the split read's per split row, the whole-panel read's per panel row."""
    print(
        "\nOne split task (the rolling walk-forward's middle split, 2 years train + 1 year test) read two ways; "
        "peak RSS above imports:"
    )
    print(
        "| tickers | panel rows | split rows | split read MB | whole-panel read MB | whole / split | "
        "split read: MB per 100k more split rows | whole-panel read: MB per 100k more panel rows |"
    )
    print("|---|---|---|---|---|---|---|---|")
    previous = None
    for row in memory:
        split, whole = row["split_read"], row["whole_panel_read"]
        split_mb, whole_mb = max(split["above_imports_mb"], 1.0), max(whole["above_imports_mb"], 1.0)
        if previous is None:
            slopes = "– | –"
        else:
            before_split, before_whole = previous["split_read"], previous["whole_panel_read"]
            per_split = (split["above_imports_mb"] - before_split["above_imports_mb"]) / (
                split["rows"] - before_split["rows"]
            )
            per_panel = (whole["above_imports_mb"] - before_whole["above_imports_mb"]) / (
                whole["panel_rows"] - before_whole["panel_rows"]
            )
            slopes = f"{per_split * 1e5:.0f} | {per_panel * 1e5:.0f}"
        print(
            f"| {row['tickers']} | {split['panel_rows']:,} | {split['rows']:,} "
            f"({split['rows'] / split['panel_rows']:.0%}) | {split_mb:.0f} | {whole_mb:.0f} | "
            f"{whole_mb / split_mb:.2f}x | {slopes} |"
        )
        previous = row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="10,100", help="ticker counts, comma-separated (default 10,100)")
    parser.add_argument("--workers", default="1,2,4", help="worker processes for the fixed grid (default 1,2,4)")
    parser.add_argument("--pool-tickers", type=int, default=10, help="universe of the fixed grid (default 10)")
    parser.add_argument("--pool-trials", type=int, default=2, help="trials of the fixed grid, x 15 splits (default 2)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tickers", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--n-trials", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--stage-workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--run", default="cpcv", choices=("cpcv", "rolling"), help=argparse.SUPPRESS)
    parser.add_argument("--whole-panel", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        stage = _stage(
            args.stage, args.home, args.tickers, args.n_trials, args.stage_workers, args.run, args.whole_panel
        )
        print(json.dumps(stage))
        return 0

    sizes = sorted(int(s) for s in args.sizes.split(","))
    workers = [int(w) for w in args.workers.split(",")]
    if len(sizes) < 2:
        parser.error("--sizes needs two sizes or more to fit a growth exponent")
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory(prefix="qe-bench-scale-") as folder:
        scratch = Path(folder)
        print(f"growth: {', '.join(map(str, sizes))} tickers x 20 years of daily bars ({START}..{END})")
        table, memory = growth(sizes, scratch, keep=args.pool_tickers)
        print(f"fixed grid: {args.pool_trials} trials x 15 splits at {args.pool_tickers} tickers")
        pooled = pool(args.pool_tickers, args.pool_trials, workers, scratch)
    load = os.getloadavg()[0]

    print()
    head = "| stage | " + " | ".join(f"{n} tickers: s / peak MB" for n in sizes) + " | time exp. | memory exp. |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for stage, results in table.items():
        cells = " | ".join(f"{r['wall_s']:.2f} / {r['peak_rss_mb']:.0f}" for r in results)
        time_exp = _exponent([r["tickers"] for r in results], [r["wall_s"] for r in results])
        mem_exp = _exponent([r["tickers"] for r in results], [max(r["above_imports_mb"], 1.0) for r in results])
        print(f"| {stage} | {cells} | {time_exp:.2f} | {mem_exp:.2f} |")
    largest = {stage: results[-1] for stage, results in table.items()}
    slowest = max(largest, key=lambda s: largest[s]["wall_s"])
    hungriest = max(largest, key=lambda s: largest[s]["peak_rss_mb"])
    print(
        f"\nAt {sizes[-1]} tickers the slowest stage is {slowest} ({largest[slowest]['wall_s']:.1f} s); the most "
        f"memory is {hungriest}'s ({largest[hungriest]['peak_rss_mb']:.0f} MB peak RSS)."
    )
    print("(memory exponent: of the RSS above the stage's imports; one fit = one mapped run_split task)")
    _print_memory(memory)
    base = pooled[0]["wall_s"]
    print("\n| worker processes | wall s | speed-up |\n|---|---|---|")
    for row in pooled:
        print(f"| {row['workers']} | {row['wall_s']:.1f} | {base / row['wall_s']:.2f}x |")
    print(f"\nload average at end: {load:.2f} ({os.cpu_count()} CPUs)")
    if args.json:
        payload = {"growth": table, "split_memory": memory, "pool": pooled, "load": load}
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
