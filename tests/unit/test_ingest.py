"""Ingestion as one unit: idempotent reruns, backfills that equal daily runs, all-or-nothing writes."""

from __future__ import annotations

import pandas as pd
import pytest

from quant_engine.config import Settings, make_offline_store, make_online_store
from quant_engine.data.synthetic import SyntheticMarket
from quant_engine.features import online_store as online_store_module
from quant_engine.features.ingest import (
    IngestionError,
    IngestionRequest,
    compute_features,
    fetch_bars,
    ingest,
    last_session_day,
    write_features,
)

TICKERS = ("SYN00", "SYN03")


def request(start: str, end: str | None = None, **kwargs) -> IngestionRequest:
    return IngestionRequest.build("synthetic", start, end, tickers=kwargs.pop("tickers", TICKERS), **kwargs)


def stored_rows() -> pd.DataFrame:
    return make_offline_store().read(include_history=True)


def test_backfill_writes_every_weekday_with_full_windows() -> None:
    result = ingest(request("2024-03-04", "2024-03-15"))
    assert result.rows_written_offline == 2 * 10  # two tickers, ten weekdays
    rows = stored_rows()
    assert not rows.isna().any().any()
    assert sorted(rows["event_time"].dt.strftime("%Y-%m-%d").unique()) == [
        d.strftime("%Y-%m-%d") for d in pd.bdate_range("2024-03-04", "2024-03-15")
    ]


def test_a_backfill_leaves_a_compacted_snapshot_and_daily_runs_do_not() -> None:
    snapshots = Settings.from_env().offline_store_dir / "market_features" / "snapshots"
    ingest(request("2024-03-04", "2024-03-08"))
    assert not list(snapshots.glob("*.parquet"))
    ingest(request("2024-03-11", "2024-04-30"))
    assert len(list(snapshots.glob("*.parquet"))) == 1


def test_rerun_is_idempotent() -> None:
    ingest(request("2024-03-04", "2024-03-08"))
    before = stored_rows()
    again = ingest(request("2024-03-04", "2024-03-08"))
    assert again.rows_written_offline == 0 and again.rows_updated_online == 0
    pd.testing.assert_frame_equal(stored_rows(), before)


def test_daily_runs_equal_one_backfill(tmp_path) -> None:
    for day in pd.bdate_range("2024-03-04", "2024-03-08"):
        ingest(request(day.strftime("%Y-%m-%d")))
    daily = stored_rows().drop(columns=["write_time", "api_invocation_time"])
    backfill_settings = Settings(home=tmp_path / "backfill")
    ingest(request("2024-03-04", "2024-03-08"), backfill_settings)
    backfill = make_offline_store(backfill_settings).read(include_history=True)
    pd.testing.assert_frame_equal(daily, backfill.drop(columns=["write_time", "api_invocation_time"]))


def test_online_store_holds_the_last_day() -> None:
    ingest(request("2024-03-04", "2024-03-08"))
    record = make_online_store().get("SYN03")
    assert record["event_time"] == pd.Timestamp("2024-03-08 21:00", tz="UTC")
    offline = make_offline_store().read(["SYN03"])
    last = offline.loc[offline["event_time"].idxmax()]
    assert record["rsi_14"] == last["rsi_14"]


def test_failed_online_write_leaves_both_stores_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    ingest(request("2024-03-04", "2024-03-05"))
    offline_before = stored_rows()
    online_before = make_online_store().get_many(TICKERS)

    def broken_put(self, frame):
        raise OSError("disk full while writing the online store")

    with monkeypatch.context() as patched, pytest.raises(OSError, match="disk full"):
        patched.setattr(online_store_module.SQLiteOnlineStore, "put", broken_put)
        ingest(request("2024-03-06", "2024-03-08"))
    pd.testing.assert_frame_equal(stored_rows(), offline_before)
    assert make_online_store().get_many(TICKERS) == online_before


def test_csv_source_from_a_users_file(tmp_path) -> None:
    bars = SyntheticMarket(n_tickers=2, seed=3).fetch(None, "2023-01-01", "2024-03-08")
    path = tmp_path / "my_bars.csv"
    bars.rename(columns={"ts": "date"})[["ticker", "date", "close", "volume"]].to_csv(path, index=False)
    result = ingest(IngestionRequest.build("csv", "2024-03-04", "2024-03-08", path=str(path)))
    assert result.tickers == 2 and result.rows_written_offline == 10


def test_a_run_naming_only_a_users_file_ingests_the_whole_file(tmp_path) -> None:
    bars = SyntheticMarket(n_tickers=2, seed=3).fetch(None, "2023-01-02", "2024-03-08")
    path = tmp_path / "my_bars.parquet"
    bars.to_parquet(path)
    req = IngestionRequest.for_run("2026-11-29T08:00:00Z", source="parquet", path=str(path))
    assert (req.start, req.end) == (pd.Timestamp("2023-01-02", tz="UTC"), pd.Timestamp("2024-03-08", tz="UTC"))
    result = ingest(req)
    # the first year only fills the feature windows; every later weekday of both tickers is written
    assert result.end == "2024-03-08 21:00:00+00:00" and result.rows_written_offline > 2 * 40


def test_a_bare_run_ingests_the_last_session() -> None:
    req = IngestionRequest.for_run("2026-11-29T08:00:00Z", source="synthetic")
    assert req.start == req.end == pd.Timestamp("2026-11-27", tz="UTC")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "csv", "start": "2024-03-04"}, "needs a path"),
        ({"source": "synthetic", "start": "2024-03-08", "end": "2024-03-04"}, "before start"),
        ({"source": "synthetic", "start": "not a date"}, "is not a date"),
        ({"source": "synthetic", "start": "2024-03-04", "feature_set": "nope"}, "nope"),
    ],
)
def test_bad_requests_name_the_problem(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        IngestionRequest.build(**kwargs)


def test_weekend_range_has_no_rows_and_says_so() -> None:
    req = request("2024-03-09", "2024-03-10")
    with pytest.raises(IngestionError, match="no complete feature rows between 2024-03-09 and 2024-03-10"):
        compute_features(fetch_bars(req), req)


def test_nan_features_are_refused_before_anything_is_written() -> None:
    req = request("2024-03-04", "2024-03-05")
    features = compute_features(fetch_bars(req), req)
    features.loc[1, "rsi_14"] = float("nan")
    with pytest.raises(ValueError, match="rsi_14"):
        write_features(features)
    assert make_offline_store().commits() == []
    assert make_online_store().get_many(TICKERS) == {}


@pytest.mark.parametrize(
    ("moment", "day"),
    [("2026-11-27T22:00:00+00:00", "2026-11-27"), ("2026-11-29T08:00:00+00:00", "2026-11-27"),
     ("2026-11-30T03:00:00+00:00", "2026-11-27"), ("2026-11-30T21:30:00+00:00", "2026-11-30")],
)
def test_last_session_day_rolls_weekends_back_in_new_york_time(moment, day) -> None:
    assert last_session_day(moment) == day
