"""``market_data_ingestion`` end to end under ``airflow dags test`` on small data."""

from __future__ import annotations

import pandas as pd
import pytest

from quant_engine.backends import make_bar_history, make_offline_store, make_online_store
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
    assert make_bar_history().read()["ts"].min() == pd.Timestamp("2024-03-04 21:00", tz="UTC")

    rerun = run_dag("market_data_ingestion", conf)
    assert "0 new offline, 0 online updates" in rerun.stdout + rerun.stderr
    pd.testing.assert_frame_equal(make_offline_store().read(include_history=True), stored)


def test_a_scheduled_run_reads_the_universe_and_source_set_once(run_dag, tmp_path, monkeypatch) -> None:
    bars = SyntheticMarket(n_tickers=3, seed=11).fetch(None, "2023-01-01", "2024-03-08")
    monkeypatch.setenv("QE_DEFAULT_SOURCE", "csv")
    monkeypatch.setenv("QE_DEFAULT_SOURCE_PATH", str(write_bars(bars, tmp_path / "universe.csv")))
    monkeypatch.setenv("QE_DEFAULT_TICKERS", "SYN02,SYN00")
    result = run_dag("market_data_ingestion", None, logical_date="2024-03-08T21:30:00+00:00")  # no conf
    assert " from csv" in result.stdout + result.stderr
    assert set(make_offline_store().read()["ticker"]) == {"SYN00", "SYN02"}


def test_a_setting_that_cannot_be_used_fails_the_run_naming_it(run_dag, monkeypatch) -> None:
    monkeypatch.setenv("QE_DEFAULT_SOURCE", "bloomberg")
    result = run_dag("market_data_ingestion", None, expect_success=False)
    output = result.stdout + result.stderr
    assert "state=failed" in output and "QE_DEFAULT_SOURCE='bloomberg' is not a data source" in output


def test_bad_params_fail_fast_without_touching_the_stores(run_dag) -> None:
    result = run_dag("market_data_ingestion", {"tickers": "SYN00,NOPE", "start": "2024-03-04"}, expect_success=False)
    output = result.stdout + result.stderr
    assert "state=failed" in output
    assert "no ticker(s) NOPE" in output
    assert make_offline_store().commits() == []


def test_a_run_on_a_holiday_skips_cleanly_and_the_next_ingests_its_session(run_dag) -> None:
    # The run triggered at 16:30 New York on July 4, 2019: its data interval holds no session close.
    holiday = run_dag("market_data_ingestion", {"tickers": "SYN00,SYN01"}, logical_date="2019-07-04T20:30:00+00:00")
    output = holiday.stdout + holiday.stderr
    assert "state=success" in output and "no session: no XNYS session closed between" in output
    assert make_offline_store().schema is None  # nothing written, not even a group
    friday = run_dag("market_data_ingestion", {"tickers": "SYN00,SYN01"}, logical_date="2019-07-05T20:30:00+00:00")
    assert "ingested 2 feature rows for 2 tickers" in friday.stdout + friday.stderr
    assert set(make_offline_store().read()["event_time"]) == {pd.Timestamp("2019-07-05 20:00", tz="UTC")}


def test_an_unknown_conf_key_fails_fast_instead_of_being_ignored(run_dag) -> None:
    result = run_dag("market_data_ingestion", {"tikers": "SYN00", "start": "2024-03-04"}, expect_success=False)
    output = result.stdout + result.stderr
    assert "state=failed" in output and "unknown ingestion parameter(s) ['tikers']" in output
    assert make_offline_store().commits() == []


def test_an_hourly_fx_file_with_naive_times_ingests_with_its_calendar_and_zone(run_dag, tmp_path) -> None:
    bars = SyntheticMarket(n_tickers=2, seed=4, freq="1h", calendar="24/5", start="2021-01-01", end="2021-03-31").fetch(
        None, "2021-01-01", "2021-03-31"
    )
    naive = bars.assign(ts=bars["ts"].dt.tz_localize(None)).rename(columns={"ts": "datetime"})
    path = tmp_path / "fx_hourly.csv"
    naive.to_csv(path, index=False)
    conf = {
        "source": "csv",
        "path": str(path),
        "start": "2021-03-01",
        "end": "2021-03-05",
        "calendar": "24/5",
        "bar_size": "1h",
    }
    refused = run_dag("market_data_ingestion", conf, expect_success=False)
    assert "naive timestamps; say which time zone" in refused.stdout + refused.stderr
    result = run_dag("market_data_ingestion", {**conf, "assume_tz": "UTC"})
    assert "ingested 240 feature rows for 2 tickers" in result.stdout + result.stderr  # 5 sessions x 24 bars x 2
    stored = make_offline_store().read()
    assert stored["event_time"].min() == pd.Timestamp("2021-03-01 01:00", tz="UTC")
    assert stored["event_time"].max() == pd.Timestamp("2021-03-06 00:00", tz="UTC")  # Friday's session ends at midnight


def test_a_feature_set_the_group_does_not_hold_fails_at_once_naming_the_setting(run_dag) -> None:
    run_dag("market_data_ingestion", {"tickers": "SYN00", "start": "2024-03-04"})
    result = run_dag(
        "market_data_ingestion",
        {"tickers": "SYN00", "start": "2024-03-05", "feature_set": "extended"},
        expect_success=False,
    )
    output = result.stdout + result.stderr
    assert "holds other features than this run computes" in output and "QE_FEATURE_GROUP" in output
    assert "up_for_retry" not in output and "state=failed" in output
    assert len(make_offline_store().commits()) == 1
