"""CSV and Parquet bar files: both layouts, the time-zone rule, errors that name the file, atomic writes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from quant_engine.data.base import EmptyRangeError, MarketDataSource, UnknownTickerError
from quant_engine.data.files import CsvSource, ParquetSource, read_bars, write_bars
from quant_engine.data.schema import BarValidationError
from quant_engine.data.sources import make_source
from quant_engine.data.synthetic import SyntheticMarket

AAPL_CSV = (
    "Date,Open,High,Low,Close,Volume\n2024-01-02,187.15,188.44,183.89,185.64,82488700\n"
    "2024-01-03,184.22,185.88,183.43,184.25,58414500\n2024-01-04,182.15,183.09,180.88,181.91,71983600\n"
)


@pytest.fixture(scope="module")
def synthetic_bars() -> pd.DataFrame:
    market = SyntheticMarket(n_tickers=3, start="2024-01-01", end="2024-12-31")
    return market.fetch(None, "2024-01-01", "2024-12-31")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


# -- layouts ------------------------------------------------------------------------------------


def test_long_csv_with_any_column_case(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bars.csv",
        "SYMBOL,DATE,close,Volume\nMSFT,2024-01-03,370.6,1\nAAPL,2024-01-02,185.64,2\nAAPL,2024-01-03,184.25,3\n",
    )
    source = CsvSource(path)
    assert isinstance(source, MarketDataSource) and source.tickers() == ["AAPL", "MSFT"]
    bars = source.fetch(None, "2024-01-01", "2024-01-31")
    assert list(zip(bars["ticker"], bars["ts"], bars["close"], strict=True)) == [
        ("AAPL", utc("2024-01-02 21:00"), 185.64),
        ("AAPL", utc("2024-01-03 21:00"), 184.25),
        ("MSFT", utc("2024-01-03 21:00"), 370.6),
    ]
    assert (bars["open"] == bars["close"]).all()  # close-only input


def test_folder_with_one_csv_per_ticker(tmp_path: Path) -> None:
    write(tmp_path / "AAPL.csv", AAPL_CSV)
    write(tmp_path / "MSFT.csv", "date,close\n2024-01-02,370.87\n")
    write(tmp_path / "notes.txt", "not bars")
    bars = CsvSource(tmp_path).fetch(None, "2024-01-02", "2024-01-03")
    assert bars.groupby("ticker").size().to_dict() == {"AAPL": 2, "MSFT": 1}
    assert bars.loc[bars["ticker"] == "AAPL", "volume"].tolist() == [82488700, 58414500]


def test_folder_reads_only_the_files_asked_for(tmp_path: Path) -> None:
    write(tmp_path / "AAPL.csv", AAPL_CSV)
    write(tmp_path / "BROKEN.csv", "date,close\nyesterday,abc\n")
    assert len(CsvSource(tmp_path).fetch(["AAPL"], "2024-01-01", "2024-01-31")) == 3
    with pytest.raises(BarValidationError, match="BROKEN.csv"):
        CsvSource(tmp_path).fetch(None, "2024-01-01", "2024-01-31")


def test_a_single_file_without_ticker_column_is_named_after_its_file(tmp_path: Path) -> None:
    bars = CsvSource(write(tmp_path / "AAPL.csv", AAPL_CSV)).fetch(None, "2024-01-01", "2024-01-31")
    assert set(bars["ticker"]) == {"AAPL"}


def test_a_per_ticker_file_holding_other_tickers_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "AAPL.csv", "ticker,date,close\nAAPL,2024-01-02,1\nMSFT,2024-01-03,2\n")
    with pytest.raises(BarValidationError, match=r"AAPL.csv: the file of ticker 'AAPL' holds rows of \['MSFT'\]"):
        CsvSource(tmp_path).fetch(None, "2024-01-01", "2024-01-31")


def test_parquet_long_file_and_folder(tmp_path: Path, synthetic_bars: pd.DataFrame) -> None:
    synthetic_bars.to_parquet(tmp_path / "long.parquet", index=False)
    long = ParquetSource(tmp_path / "long.parquet").fetch(["SYN01"], "2024-03-01", "2024-03-31")
    expected = synthetic_bars[(synthetic_bars["ticker"] == "SYN01") & (synthetic_bars["ts"].dt.month == 3)]
    pd.testing.assert_frame_equal(long, expected.reset_index(drop=True))

    folder = tmp_path / "per-ticker"
    folder.mkdir()
    for ticker, group in synthetic_bars.groupby("ticker"):
        group.drop(columns="ticker").to_parquet(folder / f"{ticker}.parquet", index=False)
    pd.testing.assert_frame_equal(ParquetSource(folder).fetch(None, "2024-01-01", "2024-12-31"), synthetic_bars)


# -- the time-zone rule -------------------------------------------------------------------------


def test_plain_dates_are_stamped_at_their_sessions_close_or_at_a_given_time(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "ticker": "A",
            "date": [dt.date(2024, 1, 2), dt.date(2024, 7, 2), dt.date(2024, 7, 3)],
            "close": [1.0, 2.0, 2.5],
        }
    )
    frame.to_parquet(tmp_path / "dates.parquet", index=False)  # a date32 column
    default = ParquetSource(tmp_path / "dates.parquet").fetch(None, "2024-01-01", "2024-12-31")
    assert default["ts"].tolist() == [utc("2024-01-02 21:00"), utc("2024-07-02 20:00"), utc("2024-07-03 17:00")]
    london = ParquetSource(tmp_path / "dates.parquet", calendar="XLON").fetch(None, "2024-01-01", "2024-12-31")
    assert london["ts"].tolist() == [utc("2024-01-02 16:30"), utc("2024-07-02 15:30"), utc("2024-07-03 15:30")]
    frame = frame.drop(columns="date").assign(date=[dt.date(2024, 1, 2), dt.date(2024, 7, 3), dt.date(2024, 7, 4)])
    new_york = ParquetSource(tmp_path / "dates.parquet", assume_tz="America/New_York", date_close="16:00")
    assert new_york.fetch(None, "2024-01-01", "2024-12-31")["ts"].tolist() == [
        utc("2024-01-02 21:00"),  # EST
        utc("2024-07-02 20:00"),  # EDT
        utc("2024-07-03 20:00"),  # as told, though the session closed at 17:00: conform_bars restamps it
    ]
    frame.to_parquet(tmp_path / "holiday.parquet", index=False)
    holiday = ParquetSource(tmp_path / "holiday.parquet").fetch(None, "2024-01-01", "2024-12-31")
    assert holiday["ts"].iloc[-1] == utc("2024-07-04 04:00")  # midnight in New York: named, not a close


def test_timestamps_with_offsets_are_exact_instants(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bars.csv", "ticker,timestamp,close\nA,2024-01-02T16:00:00-05:00,1\nA,2024-01-03 21:00:00+00:00,2\n"
    )
    bars = CsvSource(path).fetch(None, "2024-01-01", "2024-01-31")
    assert bars["ts"].tolist() == [utc("2024-01-02 21:00"), utc("2024-01-03 21:00")]


def test_naive_timestamps_need_assume_tz(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", "ticker,datetime,close\nA,2024-01-02 15:00,1\nA,2024-01-02 16:00,2\n")
    with pytest.raises(BarValidationError, match=r"bars.csv: column 'ts' holds naive timestamps; say which time zone"):
        CsvSource(path).fetch(None, "2024-01-01", "2024-01-31")
    bars = CsvSource(path, assume_tz="America/New_York").fetch(None, "2024-01-01", "2024-01-31")
    assert bars["ts"].tolist() == [utc("2024-01-02 20:00"), utc("2024-01-02 21:00")]


def test_naive_parquet_timestamps_need_assume_tz_too(tmp_path: Path) -> None:
    frame = pd.DataFrame({"ticker": "A", "ts": pd.to_datetime(["2024-01-02 21:00"]), "close": [1.0]})
    frame.to_parquet(tmp_path / "naive.parquet", index=False)
    with pytest.raises(BarValidationError, match="naive timestamps"):
        ParquetSource(tmp_path / "naive.parquet").fetch(None, "2024-01-01", "2024-01-31")
    bars = ParquetSource(tmp_path / "naive.parquet", assume_tz="UTC").fetch(None, "2024-01-01", "2024-01-31")
    assert bars["ts"].tolist() == [utc("2024-01-02 21:00")]


def test_impossible_dates_are_named_by_row(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", "ticker,date,close\nA,2024-01-02,1\nA,2024-02-30,2\n")
    with pytest.raises(
        BarValidationError, match=r"bars.csv: column 'date' holds values that are not dates at rows \[1\]"
    ):
        CsvSource(path).fetch(None, "2024-01-01", "2024-12-31")


# -- columns and validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ticker,close\nA,1\n", "no time column; name one of ts, timestamp, datetime, date"),
        ("ticker,date,price\nA,2024-01-02,1\n", "no 'close' column"),
        ("ticker,date,ts,close\nA,2024-01-02,2024-01-02,1\n", r"several time columns \['date', 'ts'\]"),
    ],
)
def test_column_problems_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "bars.csv", text)
    with pytest.raises(BarValidationError, match=rf"bars.csv: {message}"):
        CsvSource(path).fetch(None, "2024-01-01", "2024-12-31")


def test_invalid_rows_name_file_rule_and_row(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", "ticker,date,close\nA,2024-01-02,1\nA,2024-01-03,-2\nA,2024-01-04,\n")
    with pytest.raises(
        BarValidationError,
        match=r"bars.csv: invalid bars: NaN or infinite value: A@2024-01-04 .*\(row 2\); "
        r"non-positive price: A@2024-01-03 .*\(row 1\)",
    ):
        CsvSource(path).fetch(None, "2024-01-01", "2024-12-31")
    kept = CsvSource(path, on_error="drop").fetch(None, "2024-01-01", "2024-12-31")
    assert kept["close"].tolist() == [1.0]


def test_folder_reports_name_the_file_of_each_dropped_row(tmp_path: Path) -> None:
    write(tmp_path / "AAPL.csv", AAPL_CSV)
    write(tmp_path / "MSFT.csv", "date,close\n2024-01-02,370.87\n2024-01-03,0\n")
    bars, report = CsvSource(tmp_path, on_error="drop").read()
    assert report.n_rows_in == 5 and report.n_rows_out == 4 and len(bars) == 4
    assert report.problems == {"non-positive price": ["MSFT.csv MSFT@2024-01-03 21:00:00+00:00 (row 1)"]}


def test_range_is_inclusive_and_empty_ranges_say_what_is_covered(tmp_path: Path) -> None:
    source = CsvSource(write(tmp_path / "AAPL.csv", AAPL_CSV))
    assert len(source.fetch(None, "2024-01-03", "2024-01-04")) == 2
    with pytest.raises(
        EmptyRangeError, match=r"no bars between 2024-02-01.*covers 2024-01-02 21:00:00\+00:00 \.\. 2024-01-04"
    ):
        source.fetch(None, "2024-02-01", "2024-02-28")


def test_unknown_tickers_are_named_for_both_layouts(tmp_path: Path) -> None:
    write(tmp_path / "folder" / "AAPL.csv", AAPL_CSV)
    with pytest.raises(UnknownTickerError, match=r"no ticker\(s\) TSLA; it has AAPL"):
        CsvSource(tmp_path / "folder").fetch(["AAPL", "TSLA"], "2024-01-01", "2024-01-31")
    long = write(tmp_path / "long.csv", "ticker,date,close\nAAPL,2024-01-02,1\n")
    with pytest.raises(UnknownTickerError, match="TSLA"):
        CsvSource(long).fetch(["TSLA"], "2024-01-01", "2024-01-31")


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"path": "missing.csv"}, FileNotFoundError, "missing.csv does not exist"),
        ({"path": "bars.parquet"}, ValueError, "is not a csv file"),
        ({"on_error": "skip"}, ValueError, "on_error='skip'; use one of raise, drop"),
        ({"date_close": "9pm"}, ValueError, "date_close='9pm' must be a time of day HH:MM"),
    ],
)
def test_bad_options_are_named(tmp_path: Path, options: dict, error: type, message: str) -> None:
    write(tmp_path / "bars.csv", AAPL_CSV)
    write(tmp_path / "bars.parquet", "")
    options = {"path": "bars.csv", **options}
    options["path"] = tmp_path / options["path"]
    with pytest.raises(error, match=message):
        CsvSource(**options)


def test_make_source_builds_file_sources(tmp_path: Path) -> None:
    path = write(tmp_path / "AAPL.csv", AAPL_CSV)
    assert isinstance(make_source("csv", path=path, assume_tz="UTC"), CsvSource)
    assert isinstance(make_source("parquet", path=tmp_path), ParquetSource)


# -- writing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_written_bars_read_back_equal(tmp_path: Path, synthetic_bars: pd.DataFrame, suffix: str) -> None:
    path = write_bars(synthetic_bars, tmp_path / "out" / f"bars{suffix}")
    bars, report = read_bars(path)
    assert report.ok
    pd.testing.assert_frame_equal(bars, synthetic_bars)
    assert sorted(p.name for p in path.parent.iterdir()) == [f"bars{suffix}"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, synthetic_bars: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_bars(synthetic_bars.iloc[:5], tmp_path / "bars.csv")
    before = path.read_bytes()

    def disk_full(fd: int) -> None:  # the temporary file holds part of the bytes when the disk fills up
        raise OSError("disk full")

    monkeypatch.setattr("quant_engine.storage.atomic.os.fsync", disk_full)
    with pytest.raises(OSError, match="disk full"):
        write_bars(synthetic_bars, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["bars.csv"]


def test_invalid_bars_are_not_written(tmp_path: Path, synthetic_bars: pd.DataFrame) -> None:
    broken = synthetic_bars.iloc[:3].assign(close=[1.0, -1.0, 1.0])
    with pytest.raises(BarValidationError, match="non-positive price"):
        write_bars(broken, tmp_path / "bars.parquet")
    assert list(tmp_path.iterdir()) == []


def test_unknown_suffix_is_refused(tmp_path: Path, synthetic_bars: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"unknown bar file type '.xlsx'; use .csv or .parquet"):
        write_bars(synthetic_bars, tmp_path / "bars.xlsx")


def test_a_folder_mixing_formats_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "AAPL.csv", AAPL_CSV)
    pd.DataFrame({"date": ["2024-01-02"], "close": [1.0]}).to_parquet(tmp_path / "MSFT.parquet")
    with pytest.raises(ValueError, match="only .csv or only .parquet files"):
        read_bars(tmp_path)
