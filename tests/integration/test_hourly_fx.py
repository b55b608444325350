"""An hourly FX market on the 24/5 calendar, end to end: a naive-timestamp file without volume is
ingested by the DAG, walk-forward runs on it with hourly annualisation, and the bridge replaying the
stored bars gives the store's features bit for bit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bridge_harness import run_bridge

from quant_engine.backends import make_bar_history, make_offline_store
from quant_engine.calendars import get_calendar
from quant_engine.data.synthetic import SyntheticMarket
from quant_engine.features.registry import get_feature_set

pytestmark = pytest.mark.airflow

FX = get_calendar("24/5")


def test_hourly_fx_goes_through_ingestion_walk_forward_and_the_bridge(
    run_dag: Callable, qe_home: Path, tmp_path: Path
) -> None:
    bars = SyntheticMarket(n_tickers=3, seed=4, freq="1h", calendar="24/5", start="2021-01-04", end="2021-04-30").fetch(
        None, "2021-01-04", "2021-05-01"
    )
    quotes = bars.drop(columns="volume").assign(datetime=bars["ts"].dt.tz_localize(None)).drop(columns="ts")
    path = tmp_path / "fx_hourly.csv"  # naive UTC times, no volume: how FX quotes are often delivered
    quotes.to_csv(path, index=False)

    run_dag(
        "market_data_ingestion",
        {
            "source": "csv",
            "path": str(path),
            "calendar": "24/5",
            "bar_size": "1h",
            "assume_tz": "UTC",
            "feature_set": "ohlc",
        },
    )
    stored = make_offline_store().read()
    assert set(stored["event_time"]) <= set(FX.bar_closes("2021-01-04", "2021-04-30", "1h"))

    conf = {
        "start": "2021-02-01",
        "end": "2021-04-23",
        "feature_set": "ohlc",
        "n_groups": 4,
        "n_test_groups": 2,
        "embargo": "1D",
        "min_group_rows": 50,
        "trials": [{"max_depth": 2, "n_estimators": 10}, {"max_depth": 3, "n_estimators": 10, "threshold": 0.02}],
    }
    run_dag("wfo_pipeline", conf)
    (folder,) = (qe_home / "reports" / "wfo").iterdir()
    report = json.loads((folder / "report.json").read_text())
    annualisation = report["data"]["annualisation"]
    assert (annualisation["calendar"], annualisation["bar_size"], annualisation["bars_per_session"]) == (
        "24/5",
        "1h",
        24.0,
    )
    assert 6200 < annualisation["periods_per_year"] < 6300  # 24 bars x ~261 sessions, not 252
    assert "1h bars on 24/5" in (folder / "report.html").read_text()

    replay = make_bar_history().read(None, pd.Timestamp("2021-04-26", tz="UTC"), pd.Timestamp("2021-05-01", tz="UTC"))
    received, service = asyncio.run(run_bridge(replay, feature_set="ohlc"))
    offline = stored.set_index(["ticker", "event_time"])
    keys = [(s["ticker"], pd.Timestamp(s["ts"])) for s in received]
    assert len(keys) == len(set(keys)) == len(replay)
    names = get_feature_set("ohlc").names
    got = np.array([[s["features"][n] for n in names] for s in received])
    assert np.array_equal(got, offline.loc[keys, names].to_numpy())
    assert {s["bar_origin"] for s in received} == {"feed"} and service.handler.bars.counters["bars_unfilled"] == 0
