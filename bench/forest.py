"""Small-batch prediction: the compiled numpy forest against ``Booster.inplace_predict`` (the baseline).

Two ``binary:logistic`` boosters on 10 float features, trained on 5,000 seeded rows with 5% NaNs:
``small`` is the bridge benchmark's kind of model (max_depth 4, 50 rounds), ``large`` a bigger one
(max_depth 6, 300 rounds). For each, and for batches of 1, 4, 16, 100 and 500 rows, it prints the
microseconds per call of :meth:`~quant_engine.bridge.forest.CompiledForest.predict` and of
``inplace_predict`` on one thread (as the bridge configures it), each the minimum over repeats of
``timeit``, their ratio (baseline / compiled: above 1 the compiled forest is faster) and which of
the two the bridge's :class:`~quant_engine.bridge.inference.LocalChampionModel` uses for the batch
(``CompiledForest.max_rows``). The outputs are checked to be bit for bit equal before timing.
Rows have no NaNs (the bridge only predicts finite features); ``--nan`` times rows with 10% NaNs.

Run: ``.venv/bin/python bench/forest.py [--repeat 7]``.
"""

from __future__ import annotations

import argparse
import timeit

import numpy as np
import xgboost as xgb

from quant_engine.bridge.forest import CompiledForest

N_FEATURES = 10
BATCHES = (1, 4, 16, 100, 500)
MODELS = {"small (depth 4, 50 rounds)": (4, 50), "large (depth 6, 300 rounds)": (6, 300)}


def train(max_depth: int, rounds: int) -> xgb.Booster:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(5_000, N_FEATURES)).astype(np.float32)
    label = (rows[:, 0] + 0.5 * rows[:, 1] * rows[:, 2] + rng.normal(size=len(rows)) > 0).astype(int)
    rows[rng.random(rows.shape) < 0.05] = np.nan
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": max_depth, "eta": 0.1, "seed": 0},
        xgb.DMatrix(rows, label=label),
        rounds,
    )
    booster.set_param({"nthread": 1})
    return booster


def microseconds(call, repeat: int) -> float:
    """Minimum over ``repeat`` runs of the mean time of one call, with enough calls per run for ~0.2 s."""
    timer = timeit.Timer(call)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timeit repeats; the minimum is reported")
    parser.add_argument("--nan", action="store_true", help="time rows with 10%% NaNs")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    print(f"rows {'with' if args.nan else 'without'} NaNs")
    print(f"{'model':<28} {'rows':>5} {'compiled µs':>12} {'baseline µs':>12} {'ratio':>7}  bridge uses")
    for name, (max_depth, rounds) in MODELS.items():
        booster = train(max_depth, rounds)
        forest = CompiledForest.compile(booster)
        for n_rows in BATCHES:
            rows = rng.normal(size=(n_rows, N_FEATURES)).astype(np.float32)
            if args.nan:
                rows[rng.random(rows.shape) < 0.1] = np.nan
            if not np.array_equal(forest.predict(rows), booster.inplace_predict(rows)):
                raise SystemExit(f"{name}: the compiled forest differs from inplace_predict on {n_rows} rows")
            compiled = microseconds(lambda: forest.predict(rows), args.repeat)
            baseline = microseconds(lambda: booster.inplace_predict(rows), args.repeat)
            served = "compiled" if n_rows <= forest.max_rows else "baseline"
            print(f"{name:<28} {n_rows:>5} {compiled:>12.1f} {baseline:>12.1f} {baseline / compiled:>6.2f}x  {served}")


if __name__ == "__main__":
    main()
