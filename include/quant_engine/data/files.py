"""Bars from CSV and Parquet files, and the one way bars are written to disk.

Two layouts are read: one *long* file with a ticker column (``ticker,date,open,...``), or a folder
with one file per ticker whose name is the ticker (``AAPL.csv``). Only a time column and ``close``
are required; column names are matched case-insensitively.

Time-zone rule
--------------
A bar's ``ts`` is the moment its close was known, in UTC (:mod:`quant_engine.calendars`' one rule).
Reading a file:

* a value carrying its offset (``2024-01-02T21:00:00Z``, ``...+00:00``, a tz-aware Parquet column)
  is that instant;
* a naive value with a time of day (``2024-01-02 16:00``) is ambiguous: it needs ``assume_tz``
  and is an error without it;
* a plain date (``2024-01-02``, a Parquet ``date32`` column) is a daily bar of that session of
  ``calendar`` (default ``XNYS``), stamped at the session's close: 21:00 UTC on a winter day, 20:00
  in summer, 18:00 on a winter half day. A date the exchange did not trade is stamped at its
  midnight, for :func:`quant_engine.data.plausibility.conform_bars` to refuse by name. With
  ``date_close`` (``HH:MM``) dates are stamped at that time in ``assume_tz`` (default UTC) instead.
  Dates are never stamped at midnight UTC: that would claim the close was known before the session.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from quant_engine.calendars import DEFAULT_CALENDAR, get_calendar
from quant_engine.data.base import EmptyRangeError, TimeLike, check_tickers, parse_time_of_day, resolve_range
from quant_engine.data.schema import (
    BAR_COLUMNS,
    NUMERIC_COLUMNS,
    ON_ERROR_CHOICES,
    BarValidationError,
    OnError,
    ValidationReport,
    coerce_bars,
    validate_bars,
)
from quant_engine.storage.atomic import write_parquet_atomic, write_text_atomic

#: Accepted names (lower-case) for the time column and the ticker column.
TIME_COLUMNS: tuple[str, ...] = ("ts", "timestamp", "datetime", "date")
TICKER_COLUMNS: tuple[str, ...] = ("ticker", "symbol")
FORMATS: dict[str, str] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}

_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _format_of(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"{path}: unknown bar file type {path.suffix!r}; use .csv or .parquet") from None


def _read_table(path: Path, fmt: str) -> pd.DataFrame:
    try:
        if fmt == "csv":
            # Everything as text: numbers are parsed by the schema, times by the rule above.
            return pd.read_csv(path, dtype=str, keep_default_na=True, skipinitialspace=True)
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ValueError(f"{path}: cannot read as {fmt}: {exc}") from exc


def _pick_column(frame: pd.DataFrame, names: Sequence[str], what: str, path: Path) -> str | None:
    found = [c for c in frame.columns if c in names]
    if len(found) > 1:
        raise BarValidationError(f"{path}: several {what} columns {found}; keep one of them")
    return found[0] if found else None


def _is_date_only(values: pd.Series) -> bool:
    """Whether every value is a calendar date without a time of day (text or ``datetime.date``)."""
    present = values.dropna()
    if present.empty or pd.api.types.is_datetime64_any_dtype(values):
        return False
    if present.map(lambda v: isinstance(v, dt.date) and not isinstance(v, dt.datetime)).all():
        return True
    if not present.map(lambda v: isinstance(v, str)).all():
        return False
    return bool(present.str.strip().str.fullmatch(_DATE_ONLY).all())


def _stamp_dates(
    values: pd.Series, *, date_close: str | None, tz: str, calendar: str, path: Path, column: str
) -> pd.Series:
    days = pd.to_datetime(values.astype(str).str.strip(), format="%Y-%m-%d", errors="coerce")
    unreadable = days.isna() & values.notna()
    if unreadable.any():
        rows = unreadable[unreadable].index[:5].tolist()
        raise BarValidationError(f"{path}: column {column!r} holds values that are not dates at rows {rows}")
    if date_close is None:
        exchange = get_calendar(calendar)
        labels = days.to_numpy(dtype="datetime64[D]")
        at = np.minimum(np.searchsorted(exchange.labels, labels), len(exchange.labels) - 1)
        is_session = exchange.labels[at] == labels
        midnight = days.dt.tz_localize(exchange.tz).dt.tz_convert("UTC").dt.as_unit("ns")
        closes = pd.Series(
            pd.DatetimeIndex(exchange.close_ns[at].astype("datetime64[ns]"), tz="UTC"), index=values.index
        )
        return closes.where(is_session, midnight)
    local = days + parse_time_of_day(date_close, "date_close")
    try:
        return local.dt.tz_localize(tz, ambiguous="raise", nonexistent="raise").dt.tz_convert("UTC")
    except Exception as exc:  # zoneinfo/pytz raise several unrelated types for bad zones and times
        raise BarValidationError(f"{path}: cannot stamp dates at {date_close} {tz}: {exc}") from exc


def _normalise_table(
    frame: pd.DataFrame,
    *,
    path: Path,
    per_ticker: bool,
    assume_tz: str | None,
    date_close: str | None,
    calendar: str,
) -> pd.DataFrame:
    """The file's rows in the bar schema: column names, a ticker for every row, ``ts`` in UTC."""
    frame = frame.rename(columns=lambda c: str(c).strip().lower())
    time_column = _pick_column(frame, TIME_COLUMNS, "time", path)
    if time_column is None:
        raise BarValidationError(
            f"{path}: no time column; name one of {', '.join(TIME_COLUMNS)} (have {list(frame.columns)})"
        )
    if "close" not in frame.columns:
        raise BarValidationError(f"{path}: no 'close' column (have {list(frame.columns)})")
    ticker_column = _pick_column(frame, TICKER_COLUMNS, "ticker", path)
    out = pd.DataFrame(index=frame.index)
    if ticker_column is None:
        out["ticker"] = path.stem
    else:
        out["ticker"] = frame[ticker_column]
        others = sorted(set(frame[ticker_column].dropna().astype(str).str.strip()) - {path.stem})
        if per_ticker and others:
            raise BarValidationError(f"{path}: the file of ticker {path.stem!r} holds rows of {others[:5]}")
    times = frame[time_column]
    if _is_date_only(times):
        out["ts"] = _stamp_dates(
            times, date_close=date_close, tz=assume_tz or "UTC", calendar=calendar, path=path, column=time_column
        )
    else:
        out["ts"] = times
    for column in NUMERIC_COLUMNS:
        if column in frame.columns:
            out[column] = frame[column]
    try:
        return coerce_bars(out, assume_tz=assume_tz)
    except BarValidationError as exc:
        raise BarValidationError(f"{path}: {exc}") from exc


class _FileSource:
    """Shared reading, filtering and validation of the CSV and Parquet sources."""

    name = "file"
    _format = ""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        assume_tz: str | None = None,
        date_close: str | None = None,
        on_error: OnError = "raise",
        calendar: str = DEFAULT_CALENDAR,
    ) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.name} source: {self.path} does not exist")
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error={on_error!r}; use one of {', '.join(ON_ERROR_CHOICES)}")
        if date_close is not None:
            parse_time_of_day(date_close, "date_close")
        self.calendar = get_calendar(calendar).name
        if self.path.is_file() and _format_of(self.path) != self._format:
            raise ValueError(f"{self.name} source: {self.path} is not a {self._format} file")
        self.assume_tz = assume_tz
        self.date_close = date_close
        self.on_error = on_error

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, assume_tz={self.assume_tz!r}, "
            f"date_close={self.date_close!r}, calendar={self.calendar!r})"
        )

    def _ticker_files(self) -> dict[str, Path]:
        """Ticker -> file of the per-ticker layout, from the file names."""
        files = {
            p.stem: p
            for p in sorted(self.path.iterdir())
            if p.is_file() and not p.name.startswith(".") and FORMATS.get(p.suffix.lower()) == self._format
        }
        if not files:
            raise EmptyRangeError(f"{self.name} source: {self.path} holds no {self._format} file")
        return files

    def tickers(self) -> list[str]:
        """Every ticker the file or folder holds."""
        if self.path.is_dir():
            return list(self._ticker_files())
        return sorted(self.read()[0]["ticker"].unique())

    def _read_file(self, path: Path, *, per_ticker: bool) -> tuple[pd.DataFrame, ValidationReport]:
        """One file validated on its own, so the rows an error names are that file's data rows."""
        table = _normalise_table(
            _read_table(path, self._format),
            path=path,
            per_ticker=per_ticker,
            assume_tz=self.assume_tz,
            date_close=self.date_close,
            calendar=self.calendar,
        )
        try:
            return validate_bars(table, on_error=self.on_error)
        except BarValidationError as exc:
            raise BarValidationError(f"{path}: {exc}", exc.report) from exc

    def read(self, tickers: Sequence[str] | None = None) -> tuple[pd.DataFrame, ValidationReport]:
        """All bars of ``tickers`` (``None``: all), validated with this source's ``on_error``.

        A long file is validated whole (an invalid row of any ticker fails the file under
        ``on_error="raise"``); in a folder only the files of the requested tickers are read.
        Rows in messages count a file's data rows from 0, header excluded.
        """
        per_ticker = self.path.is_dir()
        if per_ticker:
            files = self._ticker_files()
            paths = [files[t] for t in check_tickers(tickers, files, f"{self.name} folder {self.path}")]
        else:
            paths = [self.path]
        results = [self._read_file(path, per_ticker=per_ticker) for path in paths]
        bars = pd.concat([frame for frame, _ in results], ignore_index=True)
        report = ValidationReport(
            n_rows_in=sum(r.n_rows_in for _, r in results), n_rows_out=sum(r.n_rows_out for _, r in results)
        )
        for path, (_, file_report) in zip(paths, results, strict=True):
            for rule, rows in file_report.problems.items():
                report.problems.setdefault(rule, []).extend(f"{path.name} {row}" if per_ticker else row for row in rows)
        if not per_ticker and tickers is not None:
            names = check_tickers(tickers, sorted(bars["ticker"].unique()), f"{self.name} file {self.path}")
            bars = bars.loc[bars["ticker"].isin(names)]
        return bars.sort_values(["ticker", "ts"], kind="stable").reset_index(drop=True), report

    def fetch(self, tickers: Sequence[str] | None, start: TimeLike, end: TimeLike) -> pd.DataFrame:
        """Validated bars of ``tickers`` (``None``: all in the file or folder), ``start``..``end`` inclusive."""
        first, last = resolve_range(start, end)
        bars, _ = self.read(tickers)
        in_range = bars.loc[(bars["ts"] >= first) & (bars["ts"] <= last)].reset_index(drop=True)
        if in_range.empty:
            covered = f"{bars['ts'].min()} .. {bars['ts'].max()}" if len(bars) else "nothing"
            raise EmptyRangeError(f"{self.path}: no bars between {first} and {last}; the data covers {covered}")
        return in_range


class CsvSource(_FileSource):
    """Bars from a CSV file (long layout) or a folder of ``TICKER.csv`` files.

    Parameters
    ----------
    path : str or Path
        A ``.csv`` file with a ticker column (``ticker`` or ``symbol``; without one, every row
        belongs to the ticker the file is named after), or a folder whose CSV files are each named
        after their ticker (a ticker column there is optional and must agree).
    assume_tz : str, optional
        Time zone of naive timestamps (and of plain dates with ``date_close``); see the module's
        time-zone rule.
    date_close : str, optional
        ``HH:MM`` at which plain dates are stamped, in ``assume_tz`` (default UTC). Default: the
        session's close from ``calendar``.
    on_error : {"raise", "drop", "keep"}
        What :func:`~quant_engine.data.schema.validate_bars` does with invalid rows.
    calendar : str
        Exchange calendar whose sessions plain dates name (default ``XNYS``).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "AAPL.csv").write_text("Date,Close\\n2024-01-02,185.64\\n2024-01-03,184.25\\n")
    >>> CsvSource(folder).fetch(None, "2024-01-01", "2024-01-31")[["ticker", "ts", "close"]]
      ticker                        ts   close
    0   AAPL 2024-01-02 21:00:00+00:00  185.64
    1   AAPL 2024-01-03 21:00:00+00:00  184.25
    """

    name = "csv"
    _format = "csv"


class ParquetSource(_FileSource):
    """Bars from a Parquet file (long layout) or a folder of ``TICKER.parquet`` files.

    Same parameters and time-zone rule as :class:`CsvSource`; a tz-aware timestamp column is read
    as is, a ``date32`` column as plain dates.
    """

    name = "parquet"
    _format = "parquet"


def read_bars(
    path: str | os.PathLike[str],
    *,
    on_error: OnError = "raise",
    assume_tz: str | None = None,
    date_close: str | None = None,
    calendar: str = DEFAULT_CALENDAR,
) -> tuple[pd.DataFrame, ValidationReport]:
    """Every bar in a CSV/Parquet file or per-ticker folder, validated, with the report.

    The format follows the suffix (or, for a folder, its files). See the module docstring for the
    layouts and the time-zone rule.
    """
    path = Path(path)
    if path.is_dir():
        formats = {FORMATS[p.suffix.lower()] for p in path.iterdir() if p.suffix.lower() in FORMATS}
        if len(formats) != 1:
            raise ValueError(
                f"{path}: a bar folder must hold only .csv or only .parquet files, found {formats or 'none'}"
            )
        fmt = formats.pop()
    else:
        fmt = _format_of(path)
    source_class: Callable[..., _FileSource] = CsvSource if fmt == "csv" else ParquetSource
    return source_class(path, assume_tz=assume_tz, date_close=date_close, on_error=on_error, calendar=calendar).read()


def write_bars(bars: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Validate ``bars`` and write them to ``path`` atomically, as CSV or Parquet by its suffix.

    The file appears complete or not at all: the bars go to a temporary file in the same folder
    that is then renamed over ``path``. CSV timestamps carry their offset
    (``2024-01-02 21:00:00+00:00``), so the file reads back without ``assume_tz``.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from quant_engine.data.synthetic import SyntheticMarket
    >>> market = SyntheticMarket(n_tickers=2, start="2024-01-01", end="2024-01-31")
    >>> bars = market.fetch(None, "2024-01-02", "2024-01-05")
    >>> out = write_bars(bars, pathlib.Path(tempfile.mkdtemp()) / "bars.parquet")
    >>> len(read_bars(out)[0])
    8
    """
    path = Path(path)
    fmt = _format_of(path)
    clean, _ = validate_bars(bars)
    frame = clean[list(BAR_COLUMNS)]
    if fmt == "csv":
        return write_text_atomic(path, frame.to_csv(index=False))
    return write_parquet_atomic(frame, path)
