"""Bars checked against their market time and their own recent history, before anything stores them.

:func:`~quant_engine.data.schema.validate_bars` judges each row on its own (prices, OHLC order,
duplicates). This module judges what only the calendar and the data's history can tell:

* **time** (:mod:`quant_engine.calendars`' one rule): a daily bar names a session and is stamped at
  that session's close (a stamp written in another convention, such as yfinance's local midnight
  or the old fixed 21:00 UTC, is restamped, and counted in the report's notes); an intraday bar
  must be stamped exactly at one of the calendar's bar closes. A bar of a day the exchange did not
  trade, outside every session, off the bar grid, two bars in one daily session (hourly data in a
  daily group), or a bar stamped after *now*, is refused by ``(ticker, ts)``;
* **scale**: a return or a volume beyond a configurable multiple of its ticker's recent scale
  (the median over the previous bars) is implausible: a typo in a price or a missing split.

What happens to broken and implausible rows is ``on_error``'s choice: ``raise`` (the default)
refuses the batch naming every rule and row, ``drop`` removes them and reports what it removed,
``keep`` keeps rows that are only implausible (reported) but still refuses broken ones.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from quant_engine.calendars import MarketTime
from quant_engine.data.schema import ON_ERROR_CHOICES, BarValidationError, OnError, ValidationReport, describe_rows

log = logging.getLogger(__name__)

StampedAt = Literal["close", "open"]
#: How intraday stamps in a file are meant: at the bar's close (the engine's rule) or its open.
STAMPED_AT_CHOICES: tuple[str, ...] = ("close", "open")
#: A return this many times its ticker's recent median absolute return is implausible (a daily
#: equity moves about 0.7 % on a median day: 50x is a 35 % move, beyond nearly every real day).
DEFAULT_MAX_RETURN_MULTIPLE = 100.0
#: A volume this many times its ticker's recent median volume is implausible.
DEFAULT_MAX_VOLUME_MULTIPLE = 1000.0
#: Bars the recent scale is measured over, and the fewest it needs before it judges.
SCALE_WINDOW, SCALE_MIN_BARS = 60, 20


@dataclass(frozen=True)
class ScaleLimits:
    """How far a return or volume may stray from its recent scale; ``None`` turns a check off."""

    max_return_multiple: float | None = DEFAULT_MAX_RETURN_MULTIPLE
    max_volume_multiple: float | None = DEFAULT_MAX_VOLUME_MULTIPLE

    def __post_init__(self) -> None:
        for name in ("max_return_multiple", "max_volume_multiple"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 1
            ):
                raise ValueError(f"{name}={value!r} must be a number > 1, or None to turn the check off")


def conform_bars(
    bars: pd.DataFrame,
    market_time: MarketTime,
    *,
    now: pd.Timestamp | None = None,
    on_error: OnError = "raise",
    stamped_at: StampedAt = "close",
    limits: ScaleLimits = ScaleLimits(),
) -> tuple[pd.DataFrame, ValidationReport]:
    """Bars (as ``validate_bars`` returns them) stamped by the calendar's rule, plausibility checked.

    Parameters
    ----------
    bars : DataFrame
        Validated bars, sorted by ``(ticker, ts)``.
    market_time : MarketTime
        The calendar and bar size the bars must follow.
    now : Timestamp, optional
        Bars stamped later are refused (default: the current time).
    on_error : {"raise", "drop", "keep"}
        See the module docstring.
    stamped_at : {"close", "open"}
        ``open``: intraday stamps mark where a bar began (as Yahoo and many vendors write them);
        each is moved to the close of its bar. Daily bars are named by their session either way.
    limits : ScaleLimits

    Returns
    -------
    (DataFrame, ValidationReport)
        The bars, restamped where the rule says so, sorted by ``(ticker, ts)``.

    Examples
    --------
    >>> bars = pd.DataFrame({"ticker": "A", "ts": pd.to_datetime(["2019-07-02 21:00", "2019-07-03 21:00"], utc=True),
    ...                      "open": 1.0, "high": 1.0, "low": 1.0, "close": [1.0, 1.01], "volume": 1.0})
    >>> clean, report = conform_bars(bars, MarketTime("XNYS", "1d"))
    >>> [str(t) for t in clean["ts"]], report.notes
    (['2019-07-02 20:00:00+00:00', '2019-07-03 17:00:00+00:00'], ['2 daily bar(s) restamped to their session close'])
    """
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error={on_error!r}; use one of {', '.join(ON_ERROR_CHOICES)}")
    if stamped_at not in STAMPED_AT_CHOICES:
        raise ValueError(f"stamped_at={stamped_at!r}; use one of {', '.join(STAMPED_AT_CHOICES)}")
    now = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now).tz_convert("UTC")
    bars = bars.reset_index(drop=True).copy()
    report = ValidationReport(n_rows_in=len(bars))
    broken = np.zeros(len(bars), dtype=bool)

    def problem(rule: str, mask: np.ndarray, frame: pd.DataFrame = bars) -> None:
        nonlocal broken
        if mask.any():
            report.problems[rule] = describe_rows(frame, mask)
            broken |= mask

    calendar, size = market_time.exchange, market_time.size
    where = f"{market_time.describe()}"
    if size.is_daily:
        session = calendar.daily_sessions_of(bars["ts"])
        problem(f"not a session of {calendar.name} (a holiday or a weekend)", session < 0)
        stamps = _ns(bars["ts"])
        closes = np.where(session >= 0, calendar.close_ns[np.maximum(session, 0)], stamps)
        restamped = int(((closes != stamps) & (session >= 0)).sum())
        if restamped:
            report.notes.append(f"{restamped} daily bar(s) restamped to their session close")
        bars["ts"] = pd.DatetimeIndex(closes.astype("datetime64[ns]"), tz="UTC")
        same = (bars["ticker"].to_numpy()[1:] == bars["ticker"].to_numpy()[:-1]) & (session[1:] == session[:-1])
        several = np.zeros(len(bars), dtype=bool)
        several[1:] |= same & (session[1:] >= 0)
        problem(f"several bars in one {calendar.name} session (intraday data? these are {where})", several)
    else:
        if stamped_at == "open":
            bars["ts"] = _closes_of_opens(bars["ts"], market_time)
        session = calendar.intraday_sessions_of(bars["ts"], size)
        problem(f"outside every {calendar.name} session", session == -1)
        problem(
            f"not a {size.name} bar close of {calendar.name} (stamped at the bar's open? pass stamped_at='open')",
            session == -2,
        )
    problem(f"after now ({now.floor('s')})", (bars["ts"] > now).to_numpy())
    implausible = _scale_problems(bars, limits, report)
    return _apply(bars, report, broken, implausible, on_error)


def _closes_of_opens(ts: pd.Series, market_time: MarketTime) -> pd.Series:
    """Each intraday bar's close, from a stamp at its open (an instant just after it lies in the bar)."""
    calendar, size = market_time.exchange, market_time.size
    t_ns = _ns(ts)
    closes = np.array([_close_after(calendar, int(t), size) for t in t_ns], dtype=np.int64)
    return pd.Series(pd.DatetimeIndex(closes.astype("datetime64[ns]"), tz="UTC"), index=ts.index)


def _ns(ts: pd.Series) -> np.ndarray:
    return pd.DatetimeIndex(ts).tz_convert("UTC").as_unit("ns").asi8


def _close_after(calendar: object, t_ns: int, size: object) -> int:
    located = calendar.locate(t_ns + 1, size)  # type: ignore[attr-defined]
    return t_ns if located is None else located[0]  # outside every session: left for the check to name


def _scale_problems(bars: pd.DataFrame, limits: ScaleLimits, report: ValidationReport) -> np.ndarray:
    """Rows whose return or volume is beyond its multiple of the ticker's recent median."""
    implausible = np.zeros(len(bars), dtype=bool)
    groups = bars.groupby("ticker", sort=False)
    checks = []
    if limits.max_return_multiple is not None:
        size = np.abs(np.log(bars["close"] / groups["close"].shift(1)))
        checks.append(("return", size, limits.max_return_multiple))
    if limits.max_volume_multiple is not None:
        checks.append(("volume", bars["volume"], limits.max_volume_multiple))
    for what, values, multiple in checks:
        recent = values.groupby(bars["ticker"], sort=False).transform(
            lambda v: v.shift(1).rolling(SCALE_WINDOW, min_periods=SCALE_MIN_BARS).median()
        )
        with np.errstate(invalid="ignore"):
            mask = ((values > multiple * recent) & (recent > 0)).to_numpy()
        if mask.any():
            report.problems[f"implausible {what} (over {multiple:g}x its recent median)"] = describe_rows(bars, mask)
            implausible |= mask
    return implausible


def _apply(
    bars: pd.DataFrame, report: ValidationReport, broken: np.ndarray, implausible: np.ndarray, on_error: OnError
) -> tuple[pd.DataFrame, ValidationReport]:
    refuse = broken if on_error == "keep" else broken | implausible
    if refuse.any() and on_error in ("raise", "keep"):
        raise BarValidationError(f"bars that break their market time or look implausible: {report.summary()}", report)
    clean = bars.loc[~refuse].sort_values(["ticker", "ts"], kind="stable").reset_index(drop=True)
    report.n_rows_out = len(clean)
    if report.problems:
        log.warning("bars %s: %s", "kept" if on_error == "keep" else "dropped", report.summary())
    return clean, report
