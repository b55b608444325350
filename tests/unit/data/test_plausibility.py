"""Bars checked against their calendar and their own history before anything stores them, with the
shapes real data comes in: old-rule stamps, holidays, far-future rows, close-only files, naive hourly
FX files stamped at the bar's open, typos, and groups written before calendars existed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant_engine.backends import make_group_stores, make_offline_store, make_online_store
from quant_engine.calendars import MarketTime, get_calendar
from quant_engine.data.plausibility import ScaleLimits, conform_bars
from quant_engine.data.schema import BarValidationError, validate_bars
from quant_engine.data.synthetic import SyntheticMarket
from quant_engine.features.ingest import (
    IngestionError,
    IngestionRequest,
    StaleStoreError,
    drop_feature_group,
    ingest,
)

NYSE_DAILY = MarketTime("XNYS", "1d")
NOW = pd.Timestamp("2026-12-06", tz="UTC")


def bars_at(stamps: list[str], closes: list[float] | None = None, ticker: str = "A") -> pd.DataFrame:
    closes = closes or [100.0 + i for i in range(len(stamps))]
    frame = pd.DataFrame({"ticker": ticker, "ts": pd.to_datetime(stamps, utc=True, format="ISO8601"), "close": closes})
    return validate_bars(frame)[0]


def test_old_rule_stamps_are_restamped_to_the_session_close_and_counted() -> None:
    clean, report = conform_bars(
        bars_at(["2019-03-08T21:00Z", "2019-03-11T21:00Z", "2019-07-03T21:00Z"]), NYSE_DAILY, now=NOW
    )
    assert clean["ts"].tolist() == [
        pd.Timestamp("2019-03-08 21:00Z"),
        pd.Timestamp("2019-03-11 20:00Z"),
        pd.Timestamp("2019-07-03 17:00Z"),
    ]
    assert report.notes == ["2 daily bar(s) restamped to their session close"]


def test_a_holiday_a_far_future_row_and_two_bars_in_a_session_are_named() -> None:
    frame = bars_at(
        ["2019-07-03T17:00Z", "2019-07-04T20:00Z", "2019-07-05T15:00Z", "2019-07-05T20:00Z", "2099-01-02T21:00Z"]
    )
    with pytest.raises(BarValidationError) as refused:
        conform_bars(frame, NYSE_DAILY, now=NOW)
    problems = refused.value.report.problems
    assert problems["not a session of XNYS (a holiday or a weekend)"] == ["A@2019-07-04 20:00:00+00:00 (row 1)"]
    assert problems["several bars in one XNYS session (intraday data? these are 1d bars on the XNYS calendar)"] == [
        "A@2019-07-05 20:00:00+00:00 (row 3)"
    ]
    assert problems[f"after now ({NOW.floor('s')})"] == ["A@2099-01-02 21:00:00+00:00 (row 4)"]
    clean, report = conform_bars(frame, NYSE_DAILY, now=NOW, on_error="drop")
    assert clean["ts"].tolist() == [pd.Timestamp("2019-07-03 17:00Z"), pd.Timestamp("2019-07-05 20:00Z")]
    assert report.n_rows_out == 2


def test_intraday_bars_off_the_grid_or_outside_sessions_are_named_and_open_stamps_are_moved() -> None:
    hourly = MarketTime("XNYS", "1h")
    frame = bars_at(["2019-07-03T14:30Z", "2019-07-03T15:00Z", "2019-07-03T18:30Z"])
    with pytest.raises(BarValidationError) as refused:
        conform_bars(frame, hourly, now=NOW)
    assert set(refused.value.report.problems) == {
        "not a 1h bar close of XNYS (stamped at the bar's open? pass stamped_at='open')",
        "outside every XNYS session",
    }
    opens = bars_at(["2019-07-03T13:30Z", "2019-07-03T14:30Z", "2019-07-03T16:30Z"])  # the half day's last: 30 min
    clean, _ = conform_bars(opens, hourly, now=NOW, stamped_at="open")
    assert [str(t)[11:16] for t in clean["ts"]] == ["14:30", "15:30", "17:00"]


def test_implausible_returns_and_volumes_follow_on_error() -> None:
    bars = SyntheticMarket(n_tickers=2, seed=3).fetch(None, "2019-01-01", "2019-12-31")
    typo = bars.copy()
    row = typo.index[(typo["ticker"] == "SYN01") & (typo["ts"] == typo["ts"].iloc[150])][0]
    typo.loc[row, ["open", "high", "low", "close"]] *= 100  # a price typed in cents
    typo.loc[row + 5, "volume"] *= 5000  # and a volume with three zeros too many
    with pytest.raises(BarValidationError, match="implausible return") as refused:
        conform_bars(typo, NYSE_DAILY, now=NOW)
    problems = refused.value.report.problems
    assert len(problems["implausible return (over 100x its recent median)"]) == 2  # up, then back down
    assert len(problems["implausible volume (over 1000x its recent median)"]) == 1
    kept, report = conform_bars(typo, NYSE_DAILY, now=NOW, on_error="keep")
    assert len(kept) == len(typo) and not report.ok
    dropped, _ = conform_bars(typo, NYSE_DAILY, now=NOW, on_error="drop")
    assert len(dropped) == len(typo) - 3
    unchecked, report = conform_bars(typo, NYSE_DAILY, now=NOW, limits=ScaleLimits(None, None))
    assert report.ok and len(unchecked) == len(typo)


def test_keep_still_refuses_broken_rows() -> None:
    with pytest.raises(BarValidationError, match="not a session of XNYS"):
        conform_bars(bars_at(["2019-07-04T20:00Z"]), NYSE_DAILY, now=NOW, on_error="keep")


@settings(max_examples=40, deadline=None)
@given(
    first=st.integers(min_value=0, max_value=20_000),
    count=st.integers(min_value=1, max_value=60),
    bar_size=st.sampled_from(["1d", "1h", "5m"]),
    calendar=st.sampled_from(["XNYS", "24/5", "XLON"]),
)
def test_bars_stamped_by_the_rule_pass_unchanged(first, count, bar_size, calendar) -> None:
    market_time = MarketTime(calendar, bar_size)
    exchange = market_time.exchange
    start, stop = exchange.session_range("1950-01-01", "2026-01-01")
    lo = start + first % (stop - start - 3)  # three sessions of bars, all before NOW
    closes = exchange.bar_grid(bar_size, lo, lo + 3).closes[:count]
    frame = bars_at([t.isoformat() for t in closes], closes=list(np.linspace(100.0, 101.0, len(closes))))
    clean, report = conform_bars(frame, market_time, now=NOW)
    assert report.ok and report.notes == [] and clean["ts"].tolist() == list(closes)


@settings(max_examples=40, deadline=None)
@given(day=st.integers(min_value=0, max_value=25_000), minutes=st.integers(min_value=0, max_value=24 * 60 - 1))
def test_a_daily_stamp_anywhere_in_its_new_york_day_names_its_session(day, minutes) -> None:
    nyse = get_calendar("XNYS")
    session = nyse.session_range("1955-01-01", "2030-01-01")[0] + day % 15_000
    label = nyse.session_label(session)
    stamp = (label + pd.Timedelta(minutes=minutes)).tz_localize("America/New_York").tz_convert("UTC")
    if stamp == stamp.normalize():  # midnight UTC is read as a UTC date (see daily_sessions_of)
        return
    clean, _ = conform_bars(bars_at([stamp.isoformat()]), NYSE_DAILY, now=NOW)
    assert clean["ts"].iloc[0] == nyse.session_close(label)


# --- through ingestion ---------------------------------------------------------------------------------


def test_a_close_only_file_is_refused_for_features_it_lacks_and_served_by_the_set_that_fits(tmp_path: Path) -> None:
    bars = SyntheticMarket(n_tickers=2, seed=3).fetch(None, "2022-01-01", "2023-06-30")
    path = tmp_path / "closes.csv"
    bars.assign(date=bars["ts"].dt.tz_convert("America/New_York").dt.strftime("%Y-%m-%d"))[
        ["ticker", "date", "close"]
    ].to_csv(path, index=False)
    for feature_set, missing in (("default", "volume"), ("extended", "open, high and low")):
        with pytest.raises(
            IngestionError,
            match=f"feature set '{feature_set}' needs columns these bars do not have: "
            f"{missing} .*use feature_set='close_only'",
        ):
            ingest(
                IngestionRequest.build(
                    "csv",
                    "2023-06-01",
                    "2023-06-30",
                    path=str(path),
                    feature_set=feature_set,
                    group=make_offline_store(),
                ),
                make_group_stores(),
            )
    assert make_offline_store().schema is None
    result = ingest(
        IngestionRequest.build(
            "csv", "2023-06-01", "2023-06-30", path=str(path), feature_set="close_only", group=make_offline_store()
        ),
        make_group_stores(),
    )
    assert result.rows_written_offline == 2 * 21  # June 19 (Juneteenth) is closed
    assert "volume_zscore_20" not in make_offline_store().schema.feature_names


def test_a_far_future_row_in_a_users_file_is_refused_and_pins_nothing(tmp_path: Path) -> None:
    bars = SyntheticMarket(n_tickers=1, seed=3).fetch(None, "2022-01-01", "2023-06-30")
    future = pd.DataFrame(
        {
            "ticker": ["SYN00"],
            "ts": [pd.Timestamp("2099-06-30 20:00", tz="UTC")],
            "open": [1.0],
            "high": [1.0],
            "low": [1.0],
            "close": [1.0],
            "volume": [1.0],
        }
    )
    path = tmp_path / "bars.parquet"
    pd.concat([bars, future]).to_parquet(path)
    with pytest.raises(ValueError, match=r"after now .*SYN00@2099-06-30 20:00:00\+00:00"):
        ingest(
            IngestionRequest.from_params({"source": "parquet", "path": str(path)}, make_offline_store()),
            make_group_stores(),
        )
    assert make_offline_store().schema is None and make_online_store().get("SYN00") is None
    req = IngestionRequest.from_params(
        {"source": "parquet", "path": str(path), "on_error": "drop"}, make_offline_store()
    )
    assert req.last_session == pd.Timestamp("2099-06-30")  # the range still names it; the check drops it
    result = ingest(req, make_group_stores())
    assert result.end == "2023-06-30 20:00:00+00:00"
    assert make_online_store().get("SYN00")["event_time"] == pd.Timestamp("2023-06-30 20:00", tz="UTC")


def test_a_naive_hourly_fx_file_stamped_at_each_bars_open_ingests_on_the_24_5_calendar(tmp_path: Path) -> None:
    bars = SyntheticMarket(n_tickers=2, seed=4, freq="1h", calendar="24/5", start="2021-01-04", end="2021-02-26").fetch(
        None, "2021-01-04", "2021-02-27"
    )
    opens = bars.assign(datetime=(bars["ts"] - pd.Timedelta(hours=1)).dt.tz_localize(None)).drop(columns="ts")
    path = tmp_path / "eurusd_like.csv"
    opens.to_csv(path, index=False)
    params = {
        "source": "csv",
        "path": str(path),
        "start": "2021-02-22",
        "end": "2021-02-26",
        "calendar": "24/5",
        "bar_size": "1h",
        "assume_tz": "UTC",
    }
    with pytest.raises(ValueError, match=r"outside every 24/5 session: SYN00@2021-02-01 00:00:00\+00:00"):
        ingest(
            IngestionRequest.from_params(params, make_offline_store()), make_group_stores()
        )  # Monday's 00:00 open is no bar close
    result = ingest(
        IngestionRequest.from_params({**params, "stamped_at": "open"}, make_offline_store()), make_group_stores()
    )
    assert result.rows_written_offline == 2 * 5 * 24
    assert result.start == "2021-02-22 01:00:00+00:00" and result.end == "2021-02-27 00:00:00+00:00"


def test_hourly_data_into_a_daily_group_is_refused(tmp_path: Path) -> None:
    ingest(
        IngestionRequest.build("synthetic", "2023-06-01", "2023-06-02", tickers="SYN00", group=make_offline_store()),
        make_group_stores(),
    )
    with pytest.raises(IngestionError, match="holds 1d bars on the XNYS calendar; this run asks for 1h bars"):
        IngestionRequest.build("synthetic", "2023-06-05", tickers="SYN00", bar_size="1h", group=make_offline_store())
    hourly = SyntheticMarket(n_tickers=1, freq="1h", start="2023-01-01", end="2023-06-30").fetch(
        None, "2023-01-01", "2023-06-30"
    )
    hourly.to_csv(tmp_path / "hourly.csv", index=False)
    with pytest.raises(ValueError, match="several bars in one XNYS session"):
        ingest(
            IngestionRequest.build("csv", "2023-06-05", path=str(tmp_path / "hourly.csv"), group=make_offline_store()),
            make_group_stores(),
        )


def test_a_group_written_before_calendars_is_refused_with_the_way_out(qe_home: Path) -> None:
    ingest(
        IngestionRequest.build("synthetic", "2023-06-01", "2023-06-02", tickers="SYN00", group=make_offline_store()),
        make_group_stores(),
    )
    for group in ("market_features", "market_features_bars"):  # as the engine wrote them before the rule
        manifest = qe_home / "offline-store" / group / "feature_group.json"
        payload = json.loads(manifest.read_text())
        del payload["parameters"]
        manifest.write_text(json.dumps(payload))
    with pytest.raises(
        StaleStoreError, match="written before exchange calendars.*quant-engine features drop market_features"
    ):
        IngestionRequest.build("synthetic", "2023-06-05", tickers="SYN00", group=make_offline_store())
    assert [line.split(":")[0] for line in drop_feature_group(make_group_stores(None, "market_features"))] == [
        "offline group 'market_features'",
        "offline group 'market_features_bars'",
        "online records of 'market_features'",
    ]
    assert make_offline_store().schema is None and make_online_store().get("SYN00") is None
    ingest(
        IngestionRequest.build("synthetic", "2023-06-05", tickers="SYN00", group=make_offline_store()),
        make_group_stores(),
    )
    assert make_offline_store().read()["event_time"].tolist() == [pd.Timestamp("2023-06-05 20:00", tz="UTC")]


def test_bars_before_1970_ingest_and_read_back_at_their_closes(tmp_path: Path) -> None:
    bars = SyntheticMarket(n_tickers=2, seed=1, start="1962-01-01", end="1966-12-31").fetch(
        None, "1962-01-01", "1966-12-31"
    )
    path = tmp_path / "sixties.csv"
    bars.assign(date=bars["ts"].dt.tz_convert("America/New_York").dt.strftime("%Y-%m-%d")).drop(columns="ts").to_csv(
        path, index=False
    )
    result = ingest(
        IngestionRequest.build("csv", "1965-03-01", "1965-03-31", path=str(path), group=make_offline_store()),
        make_group_stores(),
    )
    stored = make_offline_store().read(None, "1965-03-01T00:00Z", "1965-03-31T23:59Z")
    assert (
        result.rows_written_offline == len(stored) == 2 * len(get_calendar("XNYS").sessions("1965-03-01", "1965-03-31"))
    )
    assert stored["event_time"].min() == pd.Timestamp("1965-03-01 21:00", tz="UTC")
