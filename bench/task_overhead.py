"""What a task instance costs beyond its fits, on the real stack with two Celery workers.

Starts ``make up`` in scale mode in its own folder and ports (``.stack-bench-overhead/``), ingests
``--tickers`` synthetic tickers over ``--start``..``--end``, and runs ``wfo_pipeline`` through the
REST API once per ``--chunks`` value (fits per mapped ``run_split`` task), the same conf otherwise.
For every ``run_split`` task instance it reads the fits' compute seconds (the task's return value)
and the task instance's start and end, and reports:

* **overhead per task instance**: its run time minus its fits' compute (starting the task process,
  parsing the DAG, the Execution API's calls, XCom), averaged over the run's task instances;
* **overhead share**: overhead / (overhead + compute) over the run;
* the run's ``run_split`` phase wall time (first start to last end) and the whole run's.

The default chunk is the smallest that keeps the overhead share under 10 %:
``chunk >= overhead / (0.1 / 0.9 * compute per fit)``. ``make down`` runs afterwards, always.

Run: ``.venv/bin/python bench/task_overhead.py`` (a few minutes; ``--chunks 1,4,15``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FOLDER = ROOT / ".stack-bench-overhead"
PORTS = {
    "QE_STACK_PG_PORT": "55652",
    "QE_STACK_API_PORT": "28395",
    "QE_STACK_FEED_PORT": "28885",
    "QE_STACK_BRIDGE_PORT": "28886",
    "QE_STACK_REDIS_PORT": "56399",
}
PASSWORD = "bench-overhead"


class Api:
    def __init__(self, url: str) -> None:
        self.url = url
        self.token = self.call("POST", "/auth/token", {"username": "admin", "password": PASSWORD})["access_token"]

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if getattr(self, "token", None):
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, method=method, data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def run_wfo(api: Api, conf: dict, timeout_s: float) -> dict:
    api.call("PATCH", "/api/v2/dags/wfo_pipeline", {"is_paused": False})
    run_id = api.call("POST", "/api/v2/dags/wfo_pipeline/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"]
    base = f"/api/v2/dags/wfo_pipeline/dagRuns/{urllib.parse.quote(run_id, safe='')}"
    deadline = time.monotonic() + timeout_s
    while (run := api.call("GET", base))["state"] not in ("success", "failed"):
        if time.monotonic() > deadline:
            raise SystemExit(f"run {run_id} did not finish within {timeout_s} s")
        time.sleep(2)
    if run["state"] != "success":
        raise SystemExit(f"run {run_id} failed; see {FOLDER / 'logs'}")
    instances = [
        ti
        for ti in api.call("GET", f"{base}/taskInstances?limit=1000")["task_instances"]
        if ti["task_id"] == "run_split"
    ]
    tasks = []
    for ti in instances:
        query = f"map_index={ti['map_index']}&stringify=false"
        xcom = api.call("GET", f"{base}/taskInstances/run_split/xcomEntries/return_value?{query}")
        value = xcom["value"] if isinstance(xcom["value"], dict) else json.loads(xcom["value"])
        wall = (_time(ti["end_date"]) - _time(ti["start_date"])).total_seconds()
        tasks.append({"wall_s": wall, "compute_s": value["compute_s"], "fits": len(value["fits"])})
    starts = [_time(ti["start_date"]) for ti in instances]
    ends = [_time(ti["end_date"]) for ti in instances]
    return {
        "run_id": run_id,
        "tasks": tasks,
        "phase_s": (max(ends) - min(starts)).total_seconds(),
        "run_s": (_time(run["end_date"]) - _time(run["start_date"])).total_seconds(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--chunks", default="1,5", help="fits per mapped task, one run each (default 1,5)")
    parser.add_argument("--tickers", type=int, default=10, help="synthetic tickers SYN00.. (default 10)")
    parser.add_argument("--start", default="2017-01-03")
    parser.add_argument("--end", default="2022-12-30")
    parser.add_argument("--trials", type=int, default=2, help="trials of the default grid's shape (default 2)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1200, help="per run, seconds")
    args = parser.parse_args(argv)
    chunks = [int(c) for c in args.chunks.split(",")]
    tickers = ",".join(f"SYN{i:02d}" for i in range(args.tickers))
    trials = [
        {"max_depth": 2 + t % 2, "learning_rate": 0.03 if t < 2 else 0.1, "n_estimators": 100, "min_child_weight": 100}
        for t in range(args.trials)
    ]
    conf = {"tickers": tickers, "start": args.start, "end": args.end, "trials": trials}
    env = {
        **os.environ,
        **PORTS,
        "QE_STACK_DIR": str(FOLDER),
        "QE_HOME": str(FOLDER / "qe_home"),
        "QE_BACKEND": "local",
        "QE_STACK_PASSWORD": PASSWORD,
        "QE_STACK_WORKERS": str(args.workers),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "include"), os.environ.get("PYTHONPATH", "")]),
    }
    stack = [str(BIN / "python"), str(ROOT / "ops" / "stack.py")]
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)", flush=True)
    subprocess.run([*stack, "down"], env=env, check=False, capture_output=True)
    subprocess.run([*stack, "up"], env=env, check=True)
    results = {}
    try:
        ingest = [str(BIN / "quant-engine"), "ingest", "--source", "synthetic", "--tickers", tickers]
        subprocess.run([*ingest, "--start", args.start, "--end", args.end], env=env, check=True, capture_output=True)
        api = Api(f"http://127.0.0.1:{PORTS['QE_STACK_API_PORT']}")
        for chunk in chunks:
            results[chunk] = run_wfo(api, {**conf, "chunk": chunk}, args.timeout)
            print(
                f"  chunk {chunk}: {len(results[chunk]['tasks'])} tasks, run {results[chunk]['run_s']:.0f} s",
                flush=True,
            )
    finally:
        subprocess.run([*stack, "down"], env=env, check=False, capture_output=True)
    load = os.getloadavg()[0]

    print(f"\n{args.tickers} tickers {args.start}..{args.end}, {args.trials} trials; {args.workers} Celery workers x 2")
    print("| chunk | tasks | compute per fit s | overhead per task s | overhead share | run_split phase s | run s |")
    print("|---|---|---|---|---|---|---|")
    per_fit, overheads = [], []
    for chunk, result in results.items():
        tasks = result["tasks"]
        compute = sum(t["compute_s"] for t in tasks)
        overhead = [t["wall_s"] - t["compute_s"] for t in tasks]
        fits = sum(t["fits"] for t in tasks)
        per_fit.append(compute / fits)
        overheads.append(statistics.mean(overhead))
        share = sum(overhead) / (sum(overhead) + compute)
        print(
            f"| {chunk} | {len(tasks)} | {compute / fits:.2f} | {statistics.mean(overhead):.2f} | {share:.0%} |"
            f" {result['phase_s']:.0f} | {result['run_s']:.0f} |"
        )
    overhead, fit = statistics.mean(overheads), statistics.mean(per_fit)
    needed = max(1, math.ceil(overhead / (fit * 0.1 / 0.9)))
    print(
        f"\noverhead per task instance {overhead:.2f} s against {fit:.2f} s per fit: "
        f"under 10 % from {needed} fits per task"
    )
    print(f"load average at end: {load:.2f} ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
