"""Spot training: what checkpointing and exact resume cost, against training without them.

One synthetic binary problem (``--rows`` x ``--features``, ``--rounds`` boosting rounds, depth 6,
``subsample=0.8``, ``colsample_bytree=0.8``) is trained three ways, alternating, ``--repeats``
times each, and the medians are compared:

* **xgb.train**: stock XGBoost with its own sampling, which cannot resume exactly: the baseline
  for the cost of the resumable per-round procedure;
* **no checkpoints**: :func:`quant_engine.training.trainer.train` without a checkpoint dir;
* **checkpoints every 10**: the same with a local checkpoint every 10 rounds (target: at most 5%
  more wall time than without). The trainer serialises the booster in the loop and writes it on
  a background thread; the in-run figure is the time the loop was blocked.

Then the entry point runs as a subprocess under the spot simulator, killed (SIGKILL) halfway, and
the restart is timed: spawn to ready (imports, data, checkpoint restored) and spawn to the first
new round, beside the same figures of the clean first start. The resumed model's bytes are
compared with the uninterrupted one's. Nothing here is asserted; it prints figures and ratios.

Run: ``.venv/bin/python bench/training.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def _data(rows: int, features: int, seed: int = 0):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype("float32")
    signal = x[:, 0] - 0.5 * x[:, 1] + 0.25 * x[:, 2] * x[:, 3]
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(features)])
    frame["label"] = (signal + rng.normal(scale=1.5, size=rows) > 0).astype(int)
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--nthread",
        type=int,
        default=1,
        help="XGBoost threads (default 1: OpenMP spinning on shared cores makes timings erratic)",
    )
    args = parser.parse_args()

    import xgboost as xgb

    from quant_engine.training.spot import Interruption, simulate
    from quant_engine.training.trainer import train

    hp = {
        "num_round": args.rounds,
        "max_depth": 6,
        "eta": 0.05,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "seed": 1,
        "checkpoint_every": 10,
        "nthread": args.nthread,
    }
    frame = _data(args.rows, args.features)
    work = Path(tempfile.mkdtemp(prefix="qe-bench-training-"))
    print(
        f"data: {args.rows} rows x {args.features} features, {args.rounds} rounds, depth 6, "
        f"subsample 0.8, colsample_bytree 0.8, nthread {args.nthread}; xgboost {xgb.__version__}; work dir {work}"
    )

    dmatrix = xgb.DMatrix(frame.drop(columns="label"), label=frame["label"])
    stock_params = {
        "objective": "binary:logistic",
        "tree_method": "hist",
        "max_depth": 6,
        "eta": 0.05,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "seed": 1,
        "nthread": args.nthread,
    }
    names = ("xgb.train", "no checkpoints", "checkpoints every 10")
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    in_run_share: list[float] = []

    def timed(name: str, run):  # noqa: ANN001, ANN202 - a thunk and its result
        wall, used = time.perf_counter(), time.process_time()
        result = run()
        times[name].append(time.perf_counter() - wall)
        cpu[name].append(time.process_time() - used)
        return result

    for r in range(args.repeats):
        timed("xgb.train", lambda: xgb.train(stock_params, dmatrix, args.rounds))
        plain = timed("no checkpoints", lambda: train(frame, work / f"plain-{r}", hyperparameters=hp))
        ckpt = timed(
            "checkpoints every 10",
            lambda: train(frame, work / f"ckpt-{r}", hyperparameters=hp, checkpoint_dir=work / f"checkpoints-{r}"),
        )
        in_run_share.append(ckpt.metrics["checkpoint_seconds"] / ckpt.metrics["train_seconds"])
        assert plain.model_path.read_bytes() == ckpt.model_path.read_bytes()

    med = {name: statistics.median(v) for name, v in times.items()}
    med_cpu = {name: statistics.median(v) for name, v in cpu.items()}
    print("\nmedian of", args.repeats, "runs each")
    for name in names:
        print(
            f"  {name:22s} wall {med[name]:7.2f} s  cpu {med_cpu[name]:7.2f} s   "
            f"(wall runs: {', '.join(f'{t:.2f}' for t in times[name])})"
        )
    print(
        f"  resumable procedure vs xgb.train:            wall x{med['no checkpoints'] / med['xgb.train']:.2f}, "
        f"cpu x{med_cpu['no checkpoints'] / med_cpu['xgb.train']:.2f}"
    )
    overhead = med["checkpoints every 10"] / med["no checkpoints"] - 1
    overhead_cpu = med_cpu["checkpoints every 10"] / med_cpu["no checkpoints"] - 1
    print(
        f"  checkpoint overhead (every 10 rounds):       wall {overhead:+.1%}, cpu {overhead_cpu:+.1%}   target <= 5%"
    )
    written = ckpt.metrics["checkpoints_written"]
    print(
        f"  training blocked on checkpoints (in-run):    {statistics.median(in_run_share):.2%}   "
        f"({written} checkpoints per run, {1000 * ckpt.metrics['checkpoint_seconds'] / written:.1f} ms blocked and "
        f"{1000 * ckpt.metrics['checkpoint_write_seconds'] / written:.1f} ms of background write each; "
        f"a round takes {1000 * med['no checkpoints'] / args.rounds:.1f} ms)"
    )

    data_path = work / "train.parquet"
    frame.to_parquet(data_path)
    run_dir = work / "spot"
    trainer_args = [
        "--train",
        str(data_path),
        "--model-dir",
        str(run_dir / "model"),
        "--checkpoint-dir",
        str(run_dir / "checkpoints"),
        "--hyperparameters",
        json.dumps(hp),
    ]
    report = simulate(trainer_args, schedule=[Interruption(0.0, at_round=args.rounds // 2 + 5, kind="kill")])
    first, second = report.attempts
    print("\nspot run, SIGKILL halfway (subprocess, spot simulator):", json.dumps(report.as_dict()))
    print(
        f"  clean start:  ready {first.ready_seconds:.2f} s, first round {first.first_round_seconds:.2f} s after spawn"
    )
    print(
        f"  restart:      ready {second.ready_seconds:.2f} s, first new round {second.first_round_seconds:.2f} s "
        f"after spawn (resumed at round {second.resumed_from}, {first.lost_rounds} rounds lost)"
    )
    same = (run_dir / "model" / "model.json").read_bytes() == plain.model_path.read_bytes()
    print(f"  resumed model.json identical to the uninterrupted one: {same}")


if __name__ == "__main__":
    main()
