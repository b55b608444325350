"""The source interface: how ranges are read, how tickers are checked, how a source is picked by name."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from quant_engine.data.base import UnknownTickerError, check_tickers, parse_time_of_day, resolve_range
from quant_engine.data.sources import SOURCE_NAMES, UnknownSourceError, make_source


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2024-01-02", "2024-01-03"),
        (dt.date(2024, 1, 2), dt.date(2024, 1, 3)),
        (pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-03")),
        (dt.datetime(2024, 1, 2), "2024-01-03"),
    ],
)
def test_plain_dates_are_whole_utc_days(start: object, end: object) -> None:
    first, last = resolve_range(start, end)
    assert first == utc("2024-01-02")
    assert last == utc("2024-01-04") - pd.Timedelta(1, "ns")


def test_aware_timestamps_are_exact_instants() -> None:
    first, last = resolve_range(pd.Timestamp("2024-01-02 09:30", tz="America/New_York"), "2024-01-03T21:00Z")
    assert first == utc("2024-01-02 14:30") and last == utc("2024-01-03 21:00")


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("2024-01-02 15:00", "2024-01-03", r"start='2024-01-02 15:00' is a naive timestamp with a time of day"),
        ("2024-01-02", "tomorrow", r"end='tomorrow' is not a date or timestamp"),
        ("2024-01-05", "2024-01-02", r"end '2024-01-02' is before start '2024-01-05'"),
        (None, "2024-01-02", r"start is missing"),
    ],
)
def test_bad_ranges_are_named(start: object, end: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_range(start, end)


def test_check_tickers_serves_all_or_exactly_the_known_ones() -> None:
    assert check_tickers(None, ["A", "B"], "src") == ["A", "B"]
    assert check_tickers(["B", "B", "A"], ["A", "B"], "src") == ["B", "A"]
    with pytest.raises(UnknownTickerError, match=r"src has no ticker\(s\) C, D; it has A, B") as caught:
        check_tickers(["A", "C", "D"], ["A", "B"], "src")
    assert caught.value.tickers == ("C", "D")
    with pytest.raises(TypeError, match="not one string"):
        check_tickers("AB", ["A", "B"], "src")
    with pytest.raises(ValueError, match="empty list"):
        check_tickers([], ["A"], "src")


def test_long_ticker_lists_are_abbreviated_in_messages() -> None:
    with pytest.raises(UnknownTickerError, match=r"it has T0, T1, T2, T3, T4, \.\.\. \(40 in all\)"):
        check_tickers(["X"], [f"T{i}" for i in range(40)], "src")


def test_time_of_day() -> None:
    assert parse_time_of_day("16:00", "close") == pd.Timedelta(hours=16)
    for bad in ("4pm", "24:00", "16:60", "1600", "6:00"):
        with pytest.raises(ValueError, match=rf"close='{bad}' must be a time of day HH:MM"):
            parse_time_of_day(bad, "close")


def test_unknown_source_names_the_choices() -> None:
    with pytest.raises(
        UnknownSourceError, match="unknown data source 'bloomberg'; use one of synthetic, yfinance, csv, parquet"
    ):
        make_source("bloomberg")
    assert SOURCE_NAMES == ("synthetic", "yfinance", "csv", "parquet")


def test_options_a_source_does_not_take_are_named() -> None:
    with pytest.raises(UnknownSourceError, match=r"data source 'synthetic' cannot take options \['path'\]"):
        make_source("synthetic", path="bars.csv")
    with pytest.raises(UnknownSourceError, match="'csv' cannot take options"):
        make_source("csv")  # path is required
