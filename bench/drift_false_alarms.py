"""How often the drift check cries wolf on an unchanged market, and how often it finds a real shift.

Not a timing: the figure here is a rate. For each seed of the synthetic market (10 tickers, regimes
switching calm / trending / crisis), a baseline is built from 5 years of default features
(2014-2018) and 60-day windows starting every 20 days over the 3 years after (2019-2021) are
checked against it. Rules compared:

* **Model Monitor's default** (the named baseline): one ``comparison_threshold`` of 0.1 for every
  feature, Robust method.
* a fixed 0.25 (what the tests used before calibration);
* **calibrated** (the drift monitor's default): per feature, the largest distance a 60-day window
  of the training years showed (``quant_engine.monitoring.calibration``).

Each rule is read with one and with two drifted features needed (the monitor's default
``min_drifted_features`` is 2). Stationary runs give the false-alarm rate; runs whose volatility
is scaled by 1.5, 2 or 3 from 2019 on give the detection rate. Printed: rates per rule and the
ratio of false-alarm rates (Model Monitor's default / calibrated).

Run: ``python bench/drift_false_alarms.py [--seeds 10]`` (about 30 s per seed here).
"""

from __future__ import annotations

import argparse

import pandas as pd

from quant_engine.data.synthetic import Shift, SyntheticMarket
from quant_engine.features.registry import get_feature_set
from quant_engine.monitoring.baseline import build_baseline
from quant_engine.monitoring.calibration import calibrate_baseline
from quant_engine.monitoring.feature_drift import check_drift

FEATURES = get_feature_set("default").names
WINDOW = pd.Timedelta(days=60)
STEP = pd.Timedelta(days=20)
SCALES = (1.0, 1.5, 2.0, 3.0)
RULES = {"model_monitor_0.1": 0.1, "fixed_0.25": 0.25, "calibrated": None}


def drifted_counts(seed: int, scale: float) -> list[dict[str, int]]:
    """Per live window, the number of drifted features under each rule."""
    shifts = [Shift("2019-01-01", "covariate", vol_scale=scale)] if scale != 1.0 else []
    market = SyntheticMarket(n_tickers=10, seed=seed, start="2012-06-01", end="2021-12-31", shifts=shifts)
    rows = get_feature_set("default").compute_batch(market.fetch(None, "2012-06-01", "2021-12-31")).dropna()
    train = rows[rows["event_time"].between(pd.Timestamp("2014-01-01", tz="UTC"), pd.Timestamp("2018-12-31", tz="UTC"))]
    baseline = calibrate_baseline(build_baseline(train[FEATURES]), train)
    out = []
    start = pd.Timestamp("2019-01-01", tz="UTC")
    while start + WINDOW <= pd.Timestamp("2021-12-31", tz="UTC"):
        window = rows[(rows["event_time"] >= start) & (rows["event_time"] < start + WINDOW)]
        out.append(
            {
                rule: len(check_drift(window, baseline, comparison_threshold=t).drifted_features)
                for rule, t in RULES.items()
            }
        )
        start += STEP
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    records = []
    for seed in range(args.seeds):
        for scale in SCALES:
            records += [{"seed": seed, "scale": scale, **counts} for counts in drifted_counts(seed, scale)]
        print(f"seed {seed} done", flush=True)
    frame = pd.DataFrame(records)
    windows = frame.groupby("scale").size()
    print(f"\n{args.seeds} seeds, 60-day windows every 20 days over 2019-2021; windows per scale: {windows.iloc[0]}")
    print(f"{'rule':<20}{'needs':>6}" + "".join(f"{'vol x' + format(s, 'g'):>10}" for s in SCALES))
    rates = {}
    for rule in RULES:
        for needed in (1, 2):
            rate = (frame[rule] >= needed).groupby(frame["scale"]).mean()
            rates[rule, needed] = rate
            print(f"{rule:<20}{needed:>6}" + "".join(f"{rate[s]:>10.1%}" for s in SCALES))
    print("\n(vol x1 is the stationary market: its column is the false-alarm rate)")
    for needed in (1, 2):
        base, ours = rates["model_monitor_0.1", needed][1.0], rates["calibrated", needed][1.0]
        ratio = "inf" if ours == 0 else f"{base / ours:.1f}x"
        print(
            f"false alarms, {needed} feature(s) needed: Model Monitor default {base:.1%} vs calibrated "
            f"{ours:.1%} -> {ratio} fewer"
        )


if __name__ == "__main__":
    main()
