"""Ingestion as one unit: idempotent reruns, backfills that equal daily runs, all-or-nothing writes."""

from __future__ import annotations

import pandas as pd
import pytest

from quant_engine.backends import make_group_stores, make_offline_store, make_online_store
from quant_engine.calendars import get_calendar
from quant_engine.config import Settings
from quant_engine.data.synthetic import SyntheticMarket
from quant_engine.features import online_store as online_store_module
from quant_engine.features.ingest import (
    IngestionError,
    IngestionRequest,
    NoSessionToIngest,
    compute_features,
    fetch_bars,
    ingest,
    write_features,
)

TICKERS = ("SYN00", "SYN03")


def request(start: str, end: str | None = None, **kwargs) -> IngestionRequest:
    return IngestionRequest.build(
        "synthetic", start, end, tickers=kwargs.pop("tickers", TICKERS), **kwargs, group=make_offline_store()
    )


def stored_rows() -> pd.DataFrame:
    return make_offline_store().read(include_history=True)


def test_backfill_writes_every_session_with_full_windows() -> None:
    result = ingest(request("2024-03-04", "2024-03-15"), make_group_stores())
    assert result.rows_written_offline == 2 * 10  # two tickers, ten sessions
    rows = stored_rows()
    assert not rows.isna().any().any()
    assert sorted(rows["event_time"].unique()) == list(get_calendar("XNYS").bar_closes("2024-03-04", "2024-03-15"))


def test_a_backfill_leaves_a_compacted_snapshot_and_daily_runs_do_not() -> None:
    snapshots = Settings.from_env().offline_store_dir / "market_features" / "snapshots"
    ingest(request("2024-03-04", "2024-03-08"), make_group_stores())
    assert not list(snapshots.glob("*.parquet"))
    ingest(request("2024-03-11", "2024-04-30"), make_group_stores())
    assert len(list(snapshots.glob("*.parquet"))) == 1


def test_rerun_is_idempotent() -> None:
    ingest(request("2024-03-04", "2024-03-08"), make_group_stores())
    before = stored_rows()
    again = ingest(request("2024-03-04", "2024-03-08"), make_group_stores())
    assert again.rows_written_offline == 0 and again.rows_updated_online == 0
    pd.testing.assert_frame_equal(stored_rows(), before)


def test_daily_runs_equal_one_backfill(tmp_path) -> None:
    for day in pd.bdate_range("2024-03-04", "2024-03-08"):
        ingest(request(day.strftime("%Y-%m-%d")), make_group_stores())
    daily = stored_rows().drop(columns=["write_time", "api_invocation_time"])
    backfill_settings = Settings(home=tmp_path / "backfill")
    ingest(request("2024-03-04", "2024-03-08"), make_group_stores(backfill_settings))
    backfill = make_offline_store(backfill_settings).read(include_history=True)
    pd.testing.assert_frame_equal(daily, backfill.drop(columns=["write_time", "api_invocation_time"]))


def test_online_store_holds_the_last_day() -> None:
    ingest(request("2024-03-04", "2024-03-08"), make_group_stores())
    record = make_online_store().get("SYN03")
    assert record["event_time"] == pd.Timestamp("2024-03-08 21:00", tz="UTC")
    offline = make_offline_store().read(["SYN03"])
    last = offline.loc[offline["event_time"].idxmax()]
    assert record["rsi_14"] == last["rsi_14"]


def test_failed_online_write_leaves_both_stores_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    ingest(request("2024-03-04", "2024-03-05"), make_group_stores())
    offline_before = stored_rows()
    online_before = make_online_store().get_many(TICKERS)

    def broken_put(self, frame):
        raise OSError("disk full while writing the online store")

    with monkeypatch.context() as patched, pytest.raises(OSError, match="disk full"):
        patched.setattr(online_store_module.SQLiteOnlineStore, "put", broken_put)
        ingest(request("2024-03-06", "2024-03-08"), make_group_stores())
    pd.testing.assert_frame_equal(stored_rows(), offline_before)
    assert make_online_store().get_many(TICKERS) == online_before


def test_csv_source_from_a_users_file(tmp_path) -> None:
    bars = SyntheticMarket(n_tickers=2, seed=3).fetch(None, "2023-01-01", "2024-03-08")
    path = tmp_path / "my_bars.csv"
    bars.rename(columns={"ts": "date"})[["ticker", "date", "close", "volume"]].to_csv(path, index=False)
    result = ingest(
        IngestionRequest.build("csv", "2024-03-04", "2024-03-08", path=str(path), group=make_offline_store()),
        make_group_stores(),
    )
    assert result.tickers == 2 and result.rows_written_offline == 10


def test_a_run_naming_only_a_users_file_ingests_the_whole_file(tmp_path) -> None:
    bars = SyntheticMarket(n_tickers=2, seed=3).fetch(None, "2023-01-02", "2024-03-08")
    path = tmp_path / "my_bars.parquet"
    bars.to_parquet(path)
    req = IngestionRequest.from_params({"source": "parquet", "path": str(path)}, make_offline_store())
    assert (req.first_session, req.last_session) == (pd.Timestamp("2023-01-03"), pd.Timestamp("2024-03-08"))
    result = ingest(req, make_group_stores())
    # the first year only fills the feature windows; every later session of both tickers is written
    assert result.end == "2024-03-08 21:00:00+00:00" and result.rows_written_offline > 2 * 40


def test_a_bare_run_ingests_the_last_closed_session() -> None:
    req = IngestionRequest.from_params({}, make_offline_store(), now="2026-11-29T08:00:00Z")
    assert req.first_session == req.last_session == pd.Timestamp("2026-11-27")  # the half day after Thanksgiving
    before_the_close = IngestionRequest.from_params({}, make_offline_store(), now="2026-11-30T20:59:00Z")
    assert before_the_close.last_session == pd.Timestamp("2026-11-27")


@pytest.mark.parametrize(
    ("after", "until", "sessions"),
    [
        ("2019-07-02T20:30Z", "2019-07-03T20:30Z", ["2019-07-03"]),  # the half day closed at 17:00 UTC
        ("2019-07-05T20:30Z", "2019-07-08T20:30Z", ["2019-07-08"]),  # a Monday run: Friday's session was Friday's run
        ("2019-12-06T21:30Z", "2019-12-09T21:30Z", ["2019-12-09"]),  # the same in winter time
    ],
)
def test_a_scheduled_run_ingests_the_sessions_that_closed_in_its_data_interval(after, until, sessions) -> None:
    req = IngestionRequest.from_params({}, make_offline_store(), window=(pd.Timestamp(after), pd.Timestamp(until)))
    assert [str(d.date()) for d in req.sessions] == sessions


def test_a_scheduled_run_on_a_holiday_is_a_clean_skip() -> None:
    with pytest.raises(NoSessionToIngest, match="no XNYS session closed between"):
        IngestionRequest.from_params(
            {}, make_offline_store(), window=(pd.Timestamp("2019-07-03T20:30Z"), pd.Timestamp("2019-07-04T20:30Z"))
        )
    with pytest.raises(NoSessionToIngest, match="no XNYS session between 2019-07-04 and 2019-07-04"):
        request("2019-07-04")


def test_a_run_naming_no_source_or_tickers_reads_the_settings_universe(tmp_path) -> None:
    path = tmp_path / "bars.parquet"
    SyntheticMarket(n_tickers=3, seed=3).fetch(None, "2024-01-02", "2024-03-08").to_parquet(path)
    defaults = Settings.from_env(
        {"QE_DEFAULT_SOURCE": "parquet", "QE_DEFAULT_SOURCE_PATH": str(path), "QE_DEFAULT_TICKERS": "SYN02,SYN00"}
    ).run_defaults
    window = (pd.Timestamp("2024-03-05T21:30Z"), pd.Timestamp("2024-03-06T21:30Z"))
    scheduled = IngestionRequest.from_params({"source": None, "tickers": None}, make_offline_store(), defaults=defaults)
    assert (scheduled.source, scheduled.path, scheduled.tickers) == ("parquet", str(path), ("SYN02", "SYN00"))
    # a run naming another source leaves the default's file behind; tickers it names win
    other = IngestionRequest.from_params(
        {"source": "synthetic", "tickers": ["SYN01"]}, make_offline_store(), window=window, defaults=defaults
    )
    assert (other.source, other.path, other.tickers) == ("synthetic", None, ("SYN01",))
    with pytest.raises(IngestionError, match=r"unknown default\(s\) \['universe'\]"):
        IngestionRequest.from_params({}, make_offline_store(), defaults={"universe": "all"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "csv", "start": "2024-03-04"}, "needs a path"),
        ({"source": "synthetic", "start": "2024-03-08", "end": "2024-03-04"}, "before start"),
        ({"source": "synthetic", "start": "not a date"}, "is not a date"),
        ({"source": "synthetic", "start": "2024-03-04", "feature_set": "nope"}, "nope"),
        ({"source": "synthetic", "start": "2024-03-04", "tickers": ",,,"}, "names no ticker"),
        (
            {"source": "synthetic", "start": "2024-03-04", "tikers": "SYN00"},
            r"unknown ingestion parameter\(s\) \['tikers'\]",
        ),
        ({"source": "synthetic", "start": "2024-03-04", "assume_tz": "UTC"}, "only apply to the csv and parquet"),
        ({"source": "synthetic", "start": "2024-03-04", "calendar": "XMARS"}, "unknown calendar 'XMARS'"),
        ({"source": "synthetic", "start": "2024-03-04", "bar_size": "2d"}, "a daily bar is one session"),
        ({"source": "synthetic", "start": "2024-03-04", "on_error": "ignore"}, "on_error='ignore'"),
        ({"source": "synthetic", "start": "2024-03-04", "max_return_multiple": 0.5}, "must be a number > 1"),
    ],
)
def test_bad_requests_name_the_problem(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        IngestionRequest.from_params(kwargs, make_offline_store())


def test_a_range_without_history_has_no_complete_rows_and_says_so() -> None:
    req = request("2010-01-04", "2010-01-08")  # the synthetic market starts in 2010: no feature window is full
    with pytest.raises(IngestionError, match="no complete feature rows in sessions 2010-01-04 .. 2010-01-08"):
        compute_features(fetch_bars(req), req)


def test_nan_features_are_refused_before_anything_is_written() -> None:
    req = request("2024-03-04", "2024-03-05")
    features = compute_features(fetch_bars(req), req)
    features.loc[1, "rsi_14"] = float("nan")
    with pytest.raises(ValueError, match="rsi_14"):
        write_features(features, make_group_stores())
    assert make_offline_store().commits() == []
    assert make_online_store().get_many(TICKERS) == {}


def test_the_ingest_command_takes_every_reading_option(tmp_path, capsys) -> None:
    from quant_engine.cli import main

    bars = SyntheticMarket(n_tickers=1, seed=3, freq="1h", calendar="24/5", start="2021-01-04", end="2021-02-26").fetch(
        None, "2021-01-04", "2021-02-27"
    )
    path = tmp_path / "fx.csv"
    bars.assign(ts=(bars["ts"] - pd.Timedelta(hours=1)).dt.tz_localize(None)).drop(columns="volume").to_csv(
        path, index=False
    )
    assert main(["ingest", "--start", "2019-07-04"]) == 0  # a holiday: nothing to do, said in one line
    assert "no XNYS session between 2019-07-04 and 2019-07-04" in capsys.readouterr().out
    argv = [
        "ingest",
        "--source",
        "csv",
        "--path",
        str(path),
        "--start",
        "2021-02-22",
        "--end",
        "2021-02-26",
        "--calendar",
        "24/5",
        "--bar-size",
        "1h",
        "--assume-tz",
        "UTC",
        "--stamped-at",
        "open",
        "--feature-set",
        "ohlc",
        "--on-error",
        "raise",
        "--max-return-multiple",
        "200",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ingesting sessions 2021-02-22 .. 2021-02-26 (5 of 24/5, 1h bars) from csv" in out
    assert '"rows_written_offline": 120' in out
