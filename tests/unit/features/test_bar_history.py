"""Bars stored by ingestion beside the features, read back for warm-up, backfill and replay."""

from __future__ import annotations

import pandas as pd
import pytest

from quant_engine.backends import make_bar_history, make_group_stores, make_offline_store, make_online_store
from quant_engine.calendars import get_calendar
from quant_engine.data.synthetic import SyntheticMarket
from quant_engine.features import online_store as online_store_module
from quant_engine.features.ingest import IngestionRequest, ingest
from quant_engine.features.stores import bars_group_name

TICKERS = ("SYN00", "SYN03")


def run(start: str, end: str):
    return ingest(
        IngestionRequest.build("synthetic", start, end, tickers=TICKERS, group=make_offline_store()),
        make_group_stores(),
    )


def test_ingestion_stores_exactly_the_bars_of_the_requested_days() -> None:
    result = run("2024-03-04", "2024-03-15")
    assert result.bars_written_offline == 2 * 10
    stored = make_bar_history().read()
    expected = SyntheticMarket().fetch(list(TICKERS), "2024-03-04", "2024-03-15")
    pd.testing.assert_frame_equal(stored, expected)  # no warm-up history, every value exact


def test_reruns_store_nothing_new_and_daily_runs_equal_a_backfill(tmp_path) -> None:
    for day in ("2024-03-04", "2024-03-05", "2024-03-06"):
        run(day, day)
    again = run("2024-03-04", "2024-03-06")
    assert again.bars_written_offline == 0
    assert len(make_offline_store(feature_group=bars_group_name("market_features")).commits()) == 3
    pd.testing.assert_frame_equal(
        make_bar_history().read(), SyntheticMarket().fetch(list(TICKERS), "2024-03-04", "2024-03-06")
    )


def test_a_failed_online_write_reverts_the_bars_too(monkeypatch: pytest.MonkeyPatch) -> None:
    run("2024-03-04", "2024-03-05")
    before = make_bar_history().read()

    def broken_put(self, frame):
        raise OSError("disk full while writing the online store")

    monkeypatch.setattr(online_store_module.SQLiteOnlineStore, "put", broken_put)
    with pytest.raises(OSError, match="disk full"):
        run("2024-03-06", "2024-03-08")
    pd.testing.assert_frame_equal(make_bar_history().read(), before)
    assert make_online_store().get("SYN00")["event_time"] == pd.Timestamp("2024-03-05 21:00", tz="UTC")


def test_last_bars_are_those_complete_at_the_time_asked() -> None:
    run("2024-01-02", "2024-03-29")
    history = make_bar_history()
    warm = history.last_bars("SYN03", "2024-03-27T20:00Z", 30)  # a close in New York's summer time
    assert len(warm) == 30 and warm["ts"].iloc[-1] == pd.Timestamp("2024-03-27 20:00", tz="UTC")
    assert warm["ts"].is_monotonic_increasing
    before_close = history.last_bars("SYN03", "2024-03-27T19:59Z", 1)
    assert before_close["ts"].iloc[0] == pd.Timestamp("2024-03-26 20:00", tz="UTC")
    everything = history.last_bars("SYN03", "2024-12-31T00:00Z", 10_000)  # fewer exist: all come back
    assert len(everything) == len(get_calendar("XNYS").sessions("2024-01-02", "2024-03-29"))  # no Good Friday


def test_between_returns_the_bars_an_outage_lost() -> None:
    run("2024-03-04", "2024-03-15")
    gap = make_bar_history().between("SYN00", "2024-03-06T00:00Z", "2024-03-08T21:00Z")  # winter closes
    assert gap["ts"].dt.strftime("%d").tolist() == ["06", "07", "08"]
    assert set(gap["ticker"]) == {"SYN00"}


def test_an_empty_store_reads_empty_and_bad_arguments_are_named() -> None:
    history = make_bar_history()
    assert not history.exists and history.read().empty and history.tickers() == []
    run("2024-03-04", "2024-03-05")
    assert history.tickers() == list(TICKERS)
    with pytest.raises(ValueError, match="count=0"):
        history.last_bars("SYN00", "2024-03-05T21:00Z", 0)
    with pytest.raises(ValueError, match="naive timestamp"):
        history.between("SYN00", "2024-03-04", "2024-03-05T21:00Z")
    with pytest.raises(ValueError, match="before start"):
        history.between("SYN00", "2024-03-05T21:00Z", "2024-03-04T21:00Z")
    with pytest.raises(ValueError, match="ticker"):
        history.last_bars("", "2024-03-05T21:00Z", 1)
