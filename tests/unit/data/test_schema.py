"""The bar schema at the edge: every rule, its message, and the drop policy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quant_engine.data.schema import BAR_COLUMNS, BarValidationError, coerce_bars, empty_bars, validate_bars


def bars(**overrides: list) -> pd.DataFrame:
    """Three valid daily bars of A and two of B, with columns replaced by ``overrides``."""
    frame = pd.DataFrame(
        {
            "ticker": ["A", "A", "A", "B", "B"],
            "ts": pd.to_datetime(
                ["2024-01-02 21:00", "2024-01-03 21:00", "2024-01-04 21:00", "2024-01-02 21:00", "2024-01-03 21:00"],
                utc=True,
            ),
            "open": [10.0, 10.5, 10.2, 50.0, 51.0],
            "high": [10.8, 10.9, 10.6, 51.5, 52.0],
            "low": [9.9, 10.1, 10.0, 49.5, 50.5],
            "close": [10.5, 10.2, 10.4, 51.0, 51.8],
            "volume": [1000.0, 1200.0, 900.0, 300.0, 350.0],
        }
    )
    for column, values in overrides.items():
        frame[column] = values
    return frame


def test_clean_bars_pass_sorted_with_schema_dtypes() -> None:
    interleaved = bars().iloc[[3, 0, 4, 1, 2]]  # tickers interleaved, each in time order
    clean, report = validate_bars(interleaved)
    assert report.ok and report.summary() == "5 rows, no problems"
    assert list(clean.columns) == list(BAR_COLUMNS)
    assert str(clean["ts"].dtype) == "datetime64[ns, UTC]"
    assert list(zip(clean["ticker"], clean["ts"], strict=True)) == list(
        zip(bars()["ticker"], bars()["ts"], strict=True)
    )
    assert (clean.dtypes[["open", "high", "low", "close", "volume"]] == "float64").all()


@pytest.mark.parametrize(
    ("overrides", "rule", "where"),
    [
        ({"close": [10.5, np.nan, 10.4, 51.0, 51.8]}, "NaN or infinite value", "A@2024-01-03 21:00:00+00:00 (row 1)"),
        (
            {"volume": [1000.0, 1200.0, 900.0, np.inf, 350.0]},
            "NaN or infinite value",
            "B@2024-01-02 21:00:00+00:00 (row 3)",
        ),
        ({"low": [9.9, 10.1, 0.0, 49.5, 50.5]}, "non-positive price", "A@2024-01-04 21:00:00+00:00 (row 2)"),
        ({"open": [10.0, 10.5, 10.2, 50.0, -51.0]}, "non-positive price", "B@2024-01-03 21:00:00+00:00 (row 4)"),
        ({"volume": [1000.0, -1.0, 900.0, 300.0, 350.0]}, "negative volume", "A@2024-01-03 21:00:00+00:00 (row 1)"),
        ({"high": [10.8, 10.9, 10.6, 49.0, 52.0]}, "high < low", "B@2024-01-02 21:00:00+00:00 (row 3)"),
        (
            {"close": [10.5, 11.5, 10.4, 51.0, 51.8]},
            "open/close outside [low, high]",
            "A@2024-01-03 21:00:00+00:00 (row 1)",
        ),
        ({"ticker": ["A", None, "A", "B", "B"]}, "missing ticker", "@2024-01-03 21:00:00+00:00 (row 1)"),
    ],
)
def test_each_row_rule_names_rule_ticker_and_row(overrides: dict, rule: str, where: str) -> None:
    with pytest.raises(BarValidationError, match=r"^invalid bars: ") as caught:
        validate_bars(bars(**overrides))
    assert f"{rule}: {where}" in str(caught.value)
    assert caught.value.report is not None and rule in caught.value.report.problems


def test_duplicate_ticker_and_time_is_named() -> None:
    frame = pd.concat([bars(), bars().iloc[[1]]], ignore_index=True)
    with pytest.raises(BarValidationError, match=r"duplicate \(ticker, ts\): A@2024-01-03 21:00:00\+00:00 \(row 1\)"):
        validate_bars(frame)


def test_time_going_backwards_is_named_even_between_other_tickers() -> None:
    frame = bars().iloc[[0, 3, 2, 4, 1]].reset_index(drop=True)  # A: 01-02, 01-04, 01-03
    with pytest.raises(BarValidationError, match=r"time going backwards: A@2024-01-03 21:00:00\+00:00 \(row 4\)"):
        validate_bars(frame)


def test_naive_timestamps_need_a_time_zone() -> None:
    naive = bars(ts=bars()["ts"].dt.tz_localize(None))
    with pytest.raises(BarValidationError, match="naive timestamps; say which time zone"):
        validate_bars(naive)
    clean, _ = validate_bars(naive, assume_tz="America/New_York")
    assert clean["ts"].iloc[0] == pd.Timestamp("2024-01-03 02:00", tz="UTC")


def test_text_timestamps_with_offsets_become_utc() -> None:
    text = bars(
        ts=[
            "2024-01-02T16:00:00-05:00",
            "2024-01-03T21:00:00Z",
            "2024-01-04 21:00+00:00",
            "2024-01-02T21:00Z",
            "2024-01-03T22:00+01:00",
        ]
    )
    clean, _ = validate_bars(text)
    assert clean["ts"].tolist() == bars().sort_values(["ticker", "ts"])["ts"].tolist()


def test_mixing_offset_and_naive_text_is_refused_with_rows() -> None:
    mixed = bars(
        ts=["2024-01-02T21:00Z", "2024-01-03 21:00", "2024-01-04T21:00Z", "2024-01-02T21:00Z", "2024-01-03T21:00Z"]
    )
    with pytest.raises(
        BarValidationError,
        match=r"mixes timestamps with a UTC offset \(rows \[0, 2, 3, 4\]\) and without one \(rows \[1\]\)",
    ):
        validate_bars(mixed)


def test_unreadable_and_missing_timestamps_are_row_problems() -> None:
    frame = bars(ts=["2024-01-02T21:00Z", "yesterday", "2024-01-04T21:00Z", None, "2024-01-03T21:00Z"])
    with pytest.raises(BarValidationError, match=r"missing or unreadable timestamp: A@NaT \(row 1\), B@NaT \(row 3\)"):
        validate_bars(frame)
    clean, report = validate_bars(frame, on_error="drop")
    assert len(clean) == 3 and report.n_rows_out == 3


def test_a_time_column_without_any_timestamp_is_named() -> None:
    with pytest.raises(
        BarValidationError, match=r"holds no readable timestamp \(first values \['soon', 'later', 'never'\]\)"
    ):
        validate_bars(bars(ts=["soon", "later", "never", "again", "then"]))


@pytest.mark.parametrize("column", ["ticker", "ts", "close"])
def test_missing_required_column_is_named(column: str) -> None:
    with pytest.raises(BarValidationError, match=rf"missing required column\(s\) \['{column}'\]"):
        validate_bars(bars().drop(columns=[column]))


def test_text_in_a_price_column_is_named() -> None:
    with pytest.raises(BarValidationError, match="column 'close' holds values that are not numbers"):
        validate_bars(bars(close=["10.5", "ten", "10.4", "51", "51.8"]))


def test_close_only_series_is_valid_with_zero_volume() -> None:
    clean, report = validate_bars(bars()[["ticker", "ts", "close"]])
    assert report.ok
    assert (clean["open"] == clean["close"]).all() and (clean["high"] == clean["close"]).all()
    assert (clean["volume"] == 0).all()


def test_drop_removes_exactly_the_bad_rows_and_reports_them() -> None:
    frame = pd.concat(
        [bars(close=[10.5, np.nan, 10.4, 51.0, 51.8], high=[10.8, 10.9, 10.6, 49.0, 52.0]), bars().iloc[[2]]],
        ignore_index=True,
    )  # NaN in row 1, high < low in row 3, row 2 duplicated by row 5
    clean, report = validate_bars(frame, on_error="drop")
    assert report.n_rows_in == 6 and report.n_rows_out == 3
    assert set(report.problems) == {
        "NaN or infinite value",
        "high < low",
        "open/close outside [low, high]",
        "duplicate (ticker, ts)",
    }
    assert list(zip(clean["ticker"], clean["ts"].dt.day, strict=True)) == [("A", 2), ("A", 4), ("B", 3)]
    assert "6 rows in, 3 kept" in report.summary()


def test_drop_sorts_backwards_time_without_losing_rows() -> None:
    clean, report = validate_bars(bars().iloc[[2, 1, 0, 4, 3]], on_error="drop")
    assert len(clean) == 5 and "time going backwards" in report.problems
    assert clean["ts"].is_monotonic_increasing is False  # two tickers
    assert clean.groupby("ticker")["ts"].apply(lambda s: s.is_monotonic_increasing).all()


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="on_error='ignore'; use one of raise, drop"):
        validate_bars(bars(), on_error="ignore")  # type: ignore[arg-type]


def test_coerce_keeps_values_it_cannot_judge() -> None:
    coerced = coerce_bars(bars(close=[10.5, -1.0, 10.4, 51.0, 51.8]))
    assert coerced["close"].iloc[1] == -1.0 and len(coerced) == 5


def test_empty_bars_has_the_schema() -> None:
    frame = empty_bars()
    assert list(frame.columns) == list(BAR_COLUMNS) and len(frame) == 0
    assert str(frame["ts"].dtype) == "datetime64[ns, UTC]"
