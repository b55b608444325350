"""The bar schema every data source returns, and the validation at the edge that enforces it.

Bad market data is the quietest way to break a model, so validation never repairs anything
silently: it either raises :class:`BarValidationError` naming the tickers and rows at fault, or,
with ``on_error="drop"``, removes exactly those rows and reports what it removed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

BAR_COLUMNS: tuple[str, ...] = ("ticker", "ts", "open", "high", "low", "close", "volume")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
NUMERIC_COLUMNS: tuple[str, ...] = (*PRICE_COLUMNS, "volume")

OnError = Literal["raise", "drop", "keep"]
#: ``raise``: refuse a batch with any broken row; ``drop``: remove broken rows and report them;
#: ``keep``: keep rows that are only implausible (:mod:`quant_engine.data.plausibility`), refuse broken ones.
ON_ERROR_CHOICES: tuple[str, ...] = ("raise", "drop", "keep")

#: How many offending rows an error message quotes before summarising the rest.
_MAX_QUOTED_ROWS = 5


class BarValidationError(ValueError):
    """Bars that break the schema; the message names the rule, the tickers and the rows.

    ``report`` holds every broken rule when the rows were readable (``None`` when the frame
    itself is unusable: a missing column, naive timestamps).
    """

    def __init__(self, message: str, report: ValidationReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ValidationReport:
    """What :func:`validate_bars` found (and, with ``on_error="drop"``, removed)."""

    n_rows_in: int = 0
    n_rows_out: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        notes = "".join(f"; {note}" for note in self.notes)
        if self.ok:
            return f"{self.n_rows_in} rows, no problems{notes}"
        parts = [f"{rule}: {', '.join(rows)}" for rule, rows in self.problems.items()]
        return f"{self.n_rows_in} rows in, {self.n_rows_out} kept; " + "; ".join(parts) + notes

    def merge(self, other: ValidationReport) -> ValidationReport:
        """This report followed by ``other``, a later check of the rows this one kept."""
        problems = {rule: list(rows) for rule, rows in self.problems.items()}
        for rule, rows in other.problems.items():
            problems.setdefault(rule, []).extend(rows)
        return ValidationReport(self.n_rows_in, other.n_rows_out, problems, [*self.notes, *other.notes])


def describe_rows(bars: pd.DataFrame, mask: np.ndarray) -> list[str]:
    """Human-readable ``TICKER@timestamp (row i)`` for the first offending rows."""
    idx = np.flatnonzero(mask)
    quoted = [f"{bars['ticker'].iat[i]}@{bars['ts'].iat[i]} (row {i})" for i in idx[:_MAX_QUOTED_ROWS]]
    if len(idx) > _MAX_QUOTED_ROWS:
        tickers = sorted(set(bars["ticker"].iloc[idx].astype(str)))
        quoted.append(f"... {len(idx)} rows in all, tickers {', '.join(tickers)}")
    return quoted


#: A timestamp written with its UTC offset (``Z``, ``+00:00``, ``-0500``) at the end.
_OFFSET_PATTERN = r"(?:Z|[+-]\d{2}:?\d{2})$"


def _to_utc(ts: pd.Series, *, assume_tz: str | None) -> pd.Series:
    """Timestamps as tz-aware UTC; naive input needs an explicit ``assume_tz``.

    Values that are missing or cannot be read become ``NaT`` and are judged by
    :func:`validate_bars`, row by row; mixing offset-carrying and naive text is an error.
    """
    if not pd.api.types.is_datetime64_any_dtype(ts):
        has_offset = ts.astype(str).str.contains(_OFFSET_PATTERN, regex=True).to_numpy() & ts.notna().to_numpy()
        if has_offset.any():
            # Unreadable text is a row problem; readable text without an offset is a naive timestamp.
            naive = pd.to_datetime(ts[~has_offset], format="mixed", errors="coerce").notna()
            if naive.any():
                naive_rows = np.flatnonzero(~has_offset)[naive.to_numpy()][:_MAX_QUOTED_ROWS].tolist()
                aware_rows = np.flatnonzero(has_offset)[:_MAX_QUOTED_ROWS].tolist()
                raise BarValidationError(
                    f"column 'ts' mixes timestamps with a UTC offset (rows {aware_rows}) and without one "
                    f"(rows {naive_rows}); write every value the same way"
                )
        try:
            parsed = pd.to_datetime(ts, utc=bool(has_offset.any()), format="mixed", errors="coerce")
        except (ValueError, TypeError) as exc:
            raise BarValidationError(f"column 'ts' holds values that are not timestamps: {exc}") from exc
        if parsed.isna().all() and ts.notna().any():
            raise BarValidationError(f"column 'ts' holds no readable timestamp (first values {ts.head(3).tolist()})")
        ts = parsed
    if getattr(ts.dt, "tz", None) is None:
        if assume_tz is None:
            raise BarValidationError(
                "column 'ts' holds naive timestamps; say which time zone they are in "
                "(assume_tz='UTC', 'America/New_York', ...)"
            )
        try:
            ts = ts.dt.tz_localize(assume_tz, ambiguous="raise", nonexistent="raise")
        except Exception as exc:  # pytz/zoneinfo raise several unrelated types for bad zones and times
            raise BarValidationError(f"cannot read naive 'ts' values as {assume_tz!r}: {exc}") from exc
    return ts.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")


def coerce_bars(frame: pd.DataFrame, *, assume_tz: str | None = None) -> pd.DataFrame:
    """Bring a frame to the bar schema's columns and dtypes without judging its values.

    ``ticker``, ``ts`` and ``close`` are required. Missing ``open``/``high``/``low`` are filled from
    ``close`` (a close-only series is a valid bar series) and a missing ``volume`` becomes 0.
    A missing ticker becomes ``""`` and an unreadable timestamp ``NaT``; :func:`validate_bars`
    reports both by row.
    """
    missing = [c for c in ("ticker", "ts", "close") if c not in frame.columns]
    if missing:
        raise BarValidationError(f"bars are missing required column(s) {missing}; have {list(frame.columns)}")
    out = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    out["ticker"] = frame["ticker"].astype("string").str.strip().fillna("").astype(str).to_numpy()
    out["ts"] = _to_utc(frame["ts"].reset_index(drop=True), assume_tz=assume_tz).to_numpy()
    for col in NUMERIC_COLUMNS:
        if col in frame.columns:
            source = frame[col].to_numpy()
        elif col == "volume":
            source = np.zeros(len(frame))
        else:
            source = frame["close"].to_numpy()
        try:
            out[col] = pd.to_numeric(pd.Series(source), errors="raise").astype("float64")
        except (ValueError, TypeError) as exc:
            raise BarValidationError(f"column {col!r} holds values that are not numbers: {exc}") from exc
    out["ts"] = out["ts"].astype("datetime64[ns, UTC]")
    return out


def validate_bars(
    frame: pd.DataFrame,
    *,
    on_error: OnError = "raise",
    assume_tz: str | None = None,
) -> tuple[pd.DataFrame, ValidationReport]:
    """Check bars against the schema and return them sorted by ``(ticker, ts)``.

    Rules: every row has a ticker and a readable timestamp; no NaN in prices or volume;
    prices > 0; volume >= 0; ``high >= low`` and ``low <= open, close <= high``; no duplicate
    ``(ticker, ts)``; time never goes backwards within a ticker in the order given.

    Parameters
    ----------
    frame : DataFrame
        Bars with at least ``ticker``, ``ts`` and ``close``.
    on_error : {"raise", "drop", "keep"}
        ``raise`` (default) raises :class:`BarValidationError` listing every broken rule with the
        offending tickers and rows. ``drop`` removes the offending rows instead (for duplicates it
        keeps the last occurrence, for backwards time it sorts) and returns what it did in the report.
        ``keep`` is ``raise`` here: every rule of this function marks a row as broken, not merely
        implausible.
    assume_tz : str, optional
        Time zone of naive timestamps. Naive timestamps without it are an error.

    Examples
    --------
    >>> import pandas as pd
    >>> bars = pd.DataFrame({"ticker": ["A", "A"], "ts": pd.to_datetime(["2024-01-02", "2024-01-03"], utc=True),
    ...                      "close": [10.0, 10.5]})
    >>> clean, report = validate_bars(bars)
    >>> report.ok, list(clean.columns)
    (True, ['ticker', 'ts', 'open', 'high', 'low', 'close', 'volume'])
    """
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error={on_error!r}; use one of {', '.join(ON_ERROR_CHOICES)}")
    bars = coerce_bars(frame, assume_tz=assume_tz)
    report = ValidationReport(n_rows_in=len(bars))
    bad = np.zeros(len(bars), dtype=bool)

    def check(rule: str, mask: np.ndarray) -> None:
        nonlocal bad
        if mask.any():
            report.problems[rule] = describe_rows(bars, mask)
            bad |= mask

    has_ts = bars["ts"].notna().to_numpy()
    check("missing ticker", (bars["ticker"] == "").to_numpy())
    check("missing or unreadable timestamp", ~has_ts)
    values = bars[list(NUMERIC_COLUMNS)].to_numpy()
    check("NaN or infinite value", ~np.isfinite(values).all(axis=1))
    with np.errstate(invalid="ignore"):
        check("non-positive price", (bars[list(PRICE_COLUMNS)].to_numpy() <= 0).any(axis=1))
        check("negative volume", bars["volume"].to_numpy() < 0)
        check("high < low", bars["high"].to_numpy() < bars["low"].to_numpy())
        outside = (bars[["open", "close"]].max(axis=1).to_numpy() > bars["high"].to_numpy()) | (
            bars[["open", "close"]].min(axis=1).to_numpy() < bars["low"].to_numpy()
        )
        check("open/close outside [low, high]", outside)

    check("duplicate (ticker, ts)", bars.duplicated(["ticker", "ts"], keep="last").to_numpy() & has_ts)
    # Order is judged among rows with a timestamp: each against the previous one of its ticker.
    timed = bars.loc[has_ts, ["ticker", "ts"]]
    previous = timed.groupby("ticker", sort=False)["ts"].shift()
    backwards = np.zeros(len(bars), dtype=bool)
    backwards[np.flatnonzero(has_ts)] = (timed["ts"] < previous).to_numpy()
    if backwards.any():
        # Only a report for the "raise" policy: sorting below repairs order without losing rows.
        report.problems["time going backwards"] = describe_rows(bars, backwards)

    if report.problems and on_error != "drop":
        raise BarValidationError(
            "invalid bars: " + "; ".join(f"{rule}: {', '.join(rows)}" for rule, rows in report.problems.items()),
            report,
        )
    clean = bars.loc[~bad].sort_values(["ticker", "ts"], kind="stable").reset_index(drop=True)
    report.n_rows_out = len(clean)
    if report.problems:
        log.warning("dropping invalid bars: %s", report.summary())
    return clean, report


def empty_bars() -> pd.DataFrame:
    """A zero-row frame with the bar schema's columns and dtypes."""
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in BAR_COLUMNS})
    frame["ticker"] = frame["ticker"].astype(str)
    frame["ts"] = pd.Series(dtype="datetime64[ns, UTC]")
    return frame
