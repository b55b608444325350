"""Online recalibration in the bridge (quant_engine.online) against the frozen batch champion.

On the synthetic market (20 tickers, daily, the engine's default labels: the sign of the next
bar's return in excess of the cross-section), for each seed: a champion is trained with the
engine's default hyperparameters on 2015-2019, then served session by session through 2020 by
:class:`~quant_engine.online.layer.OnlineLayer` with the bridge's defaults, each label learnt as
soon as its ``t1`` has passed, exactly as the bridge does. Two markets per seed:

* **concept shift**: on 2020-04-01 the market's edge flips (``Shift(kind="concept", edge_scale=-1)``);
* **stationary**: the same market without the shift.

The baseline is the batch champion alone (what the bridge served before). Printed per window of
sessions after 2020-04-01: log-loss and hit rate of both; the share of the log-loss the shift cost
the batch model that adaptation won back (goal: at least half within 20 sessions); and on the
stationary market what adaptation costs (goal: at most 0.5 % log-loss). Figures as they come out,
met or not.

The shift's cost is measured *paired*: the two markets of a seed draw the same random numbers (a
shift only multiplies the edge), so in each window the batch model's log-loss on the shifted
market minus its log-loss on the stationary one is the shift's cost, free of the window's noise.
The share won back is summed over seeds (cost and gain are a few 1e-4 nats each: a per-seed ratio
of two such numbers is noise). Run: ``python bench/online.py [--seeds 10]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import pandas as pd
import xgboost as xgb

from quant_engine.data.synthetic import Shift, SyntheticMarket
from quant_engine.features.registry import get_feature_set
from quant_engine.online.layer import OnlineLayer
from quant_engine.training.defaults import DEFAULT_HYPERPARAMETERS
from quant_engine.wfo.config import LabelConfig

SHIFT_AT = pd.Timestamp("2020-04-01", tz="UTC")
TRAIN = ("2015-01-01", "2019-12-31")
SERVE_END = "2020-09-30"
WINDOWS = ((-40, -1), (1, 20), (21, 40), (41, 80))


def rows_of(seed: int, shifted: bool) -> pd.DataFrame:
    """Features and the default labels of the seed's market, one row per (ticker, session)."""
    shifts = [Shift(SHIFT_AT, "concept", edge_scale=-1.0)] if shifted else []
    market = SyntheticMarket(n_tickers=20, seed=seed, start="2014-06-01", end=SERVE_END, shifts=shifts)
    bars = market.fetch(None, "2014-06-01", SERVE_END)
    features = get_feature_set("default")
    table = features.compute_batch(bars).rename(columns={"event_time": "ts"})
    labels = LabelConfig(kind="fixed", horizon=1, target="excess").labels(bars)
    rows = table.merge(labels[["ticker", "ts", "t1", "label"]], on=["ticker", "ts"]).dropna()
    return rows.sort_values(["ts", "ticker"], kind="stable").reset_index(drop=True)


def champion(rows: pd.DataFrame, names: Sequence[str]) -> xgb.Booster:
    train = rows[rows["ts"].between(pd.Timestamp(TRAIN[0], tz="UTC"), pd.Timestamp(TRAIN[1], tz="UTC"))]
    params = {k: v for k, v in DEFAULT_HYPERPARAMETERS.items() if k not in ("num_round", "checkpoint_every")}
    params.update(objective="binary:logistic", eval_metric="logloss", seed=0, nthread=1)
    dtrain = xgb.DMatrix(train[list(names)].to_numpy(np.float32), label=train["label"])
    return xgb.train(params, dtrain, DEFAULT_HYPERPARAMETERS["num_round"])


def serve(rows: pd.DataFrame, booster: xgb.Booster, names: Sequence[str]) -> pd.DataFrame:
    """Every served row's batch and used probability, the layer learning each label once its t1 has passed."""
    served = rows[rows["ts"] > pd.Timestamp(TRAIN[1], tz="UTC")].copy()
    served["prob_batch"] = booster.predict(xgb.DMatrix(served[list(names)].to_numpy(np.float32)))
    layer = OnlineLayer()
    labels = served[["ticker", "ts", "t1", "label"]]
    used = np.empty(len(served))
    for ts, index in served.groupby("ts", sort=True).indices.items():
        layer.settle(labels, ts)
        for i in index:
            row = served.iloc[i]
            used[i] = layer.adapt(row["ticker"], ts, float(row["prob_batch"]), "v1").prob
    served["prob_used"] = used
    sessions = pd.DatetimeIndex(sorted(served["ts"].unique())).asi8
    after = int(np.searchsorted(sessions, SHIFT_AT.value))
    served["session"] = np.searchsorted(sessions, pd.DatetimeIndex(served["ts"]).asi8) - after + 1
    return served


def logloss(prob: np.ndarray, label: np.ndarray) -> float:
    p = np.clip(prob, 1e-6, 1 - 1e-6)
    return float(-np.mean(label * np.log(p) + (1 - label) * np.log(1 - p)))


def window_stats(served: pd.DataFrame) -> dict[tuple[int, int], dict[str, float]]:
    out = {}
    for lo, hi in WINDOWS:
        part = served[served["session"].between(lo, hi)]
        y = part["label"].to_numpy()
        out[(lo, hi)] = {
            "batch": logloss(part["prob_batch"].to_numpy(), y),
            "adapted": logloss(part["prob_used"].to_numpy(), y),
            "hit_batch": float(np.mean((part["prob_batch"] > 0.5) == y)),
            "hit_adapted": float(np.mean((part["prob_used"] > 0.5) == y)),
        }
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args(argv)
    names = get_feature_set("default").names
    results: dict[str, list[dict]] = {"shift": [], "stationary": []}
    for seed in range(1, args.seeds + 1):
        for scenario in results:
            rows = rows_of(seed, scenario == "shift")
            booster = champion(rows, names)
            results[scenario].append(window_stats(serve(rows, booster, names)))
        print(f"seed {seed} done", flush=True)
    print(f"\n{args.seeds} seeds, 20 tickers, daily; batch = the frozen champion, adapted = what the bridge serves")
    for scenario, per_seed in results.items():
        print(f"\n{scenario}: mean over seeds (sessions relative to {SHIFT_AT.date()})")
        print(f"{'window':>10} {'ll batch':>9} {'ll adapt':>9} {'change %':>9} {'hit batch':>10} {'hit adapt':>10}")
        for window in WINDOWS:
            stats = {k: float(np.mean([s[window][k] for s in per_seed])) for k in per_seed[0][window]}
            change = 100 * (stats["adapted"] - stats["batch"]) / stats["batch"]
            print(
                f"{f'{window[0]}..{window[1]}':>10} {stats['batch']:>9.5f} {stats['adapted']:>9.5f} {change:>+9.3f} "
                f"{stats['hit_batch']:>10.4f} {stats['hit_adapted']:>10.4f}"
            )
    for window in WINDOWS[1:]:
        lost = sum(sh[window]["batch"] - st[window]["batch"] for sh, st in zip(*results.values(), strict=True))
        won = sum(sh[window]["batch"] - sh[window]["adapted"] for sh in results["shift"])
        print(
            f"sessions {window[0]}..{window[1]}: the shift cost the batch model {lost / args.seeds:+.5f} nats a "
            f"prediction (paired); adaptation won back {won / args.seeds:+.5f}: a share of {won / lost:.2f}"
            + (" (goal >= 0.5 in 1..20)" if window == WINDOWS[1] else "")
        )
    cost = [
        (np.mean([s[w]["adapted"] for w in WINDOWS[1:]]) - np.mean([s[w]["batch"] for w in WINDOWS[1:]]))
        / np.mean([s[w]["batch"] for w in WINDOWS[1:]])
        for s in results["stationary"]
    ]
    print(
        f"stationary market, log-loss change from adaptation: mean {100 * np.mean(cost):+.3f} %, "
        f"worst seed {100 * np.max(cost):+.3f} % (goal: <= +0.5 %)"
    )


if __name__ == "__main__":
    main()
