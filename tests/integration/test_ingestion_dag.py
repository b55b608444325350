"""``market_data_ingestion`` end to end under ``airflow dags test`` on small data."""

from __future__ import annotations

import pandas as pd
import pytest

from quant_engine.bridge.history import BarHistory
from quant_engine.config import make_offline_store, make_online_store
from quant_engine.data.files import write_bars
from quant_engine.data.synthetic import SyntheticMarket

pytestmark = pytest.mark.airflow


def test_ingests_a_users_csv_idempotently(run_dag, tmp_path) -> None:
    bars = SyntheticMarket(n_tickers=3, seed=11).fetch(None, "2023-01-01", "2024-03-08")
    csv_path = write_bars(bars, tmp_path / "user_bars.csv")
    conf = {"source": "csv", "path": str(csv_path), "start": "2024-03-04", "end": "2024-03-08"}

    first = run_dag("market_data_ingestion", conf)
    assert "ingested 15 feature rows for 3 tickers" in first.stdout + first.stderr
    stored = make_offline_store().read(include_history=True)
    assert len(stored) == 15
    assert make_online_store().get("SYN02")["event_time"] == pd.Timestamp("2024-03-08 21:00", tz="UTC")
    assert ", 15 new bars" in first.stdout + first.stderr
    assert BarHistory.from_settings().read()["ts"].min() == pd.Timestamp("2024-03-04 21:00", tz="UTC")

    rerun = run_dag("market_data_ingestion", conf)
    assert "0 new offline, 0 online updates" in rerun.stdout + rerun.stderr
    pd.testing.assert_frame_equal(make_offline_store().read(include_history=True), stored)


def test_bad_params_fail_fast_without_touching_the_stores(run_dag) -> None:
    result = run_dag("market_data_ingestion", {"tickers": "SYN00,NOPE", "start": "2024-03-04"},
                     expect_success=False)
    output = result.stdout + result.stderr
    assert "state=failed" in output
    assert "no ticker(s) NOPE" in output
    assert make_offline_store().commits() == []
