"""Real market bars from Yahoo Finance through ``yfinance``, normalised to the bar schema.

``yfinance`` does the talking to Yahoo's v8 chart API (cookies, crumbs, the JSON); this adapter
decides what the answer means for the engine: which bars, stamped when, and — since Yahoo is a
free service behind the public internet — the difference between "this ticker does not exist",
"there are no bars in that range" and "Yahoo could not be reached".
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import yfinance as yf
from yfinance.exceptions import YFException, YFPricesMissingError, YFRateLimitError, YFTzMissingError

from quant_engine.calendars import DEFAULT_CALENDAR, BarSize, get_calendar
from quant_engine.data.base import EmptyRangeError, TimeLike, UnknownTickerError, resolve_range
from quant_engine.data.schema import NUMERIC_COLUMNS, OnError, empty_bars, validate_bars

log = logging.getLogger(__name__)

#: Yahoo intervals this adapter serves: one session, or intraday lengths (Yahoo keeps those for recent weeks).
INTERVALS: tuple[str, ...] = ("1d", "1m", "2m", "5m", "15m", "30m", "60m", "1h", "90m")

# yfinance reports failures through one process-wide switch; flipping it is serialised here.
_CONFIG_LOCK = threading.Lock()


class YFinanceUnavailableError(RuntimeError):
    """Yahoo Finance could not be reached or did not answer; ``ticker`` and ``cause`` say where and why."""

    def __init__(self, ticker: str, cause: BaseException) -> None:
        super().__init__(
            f"Yahoo Finance is unavailable for ticker {ticker!r}: {type(cause).__name__}: {cause} "
            "(no network, a proxy or firewall, or Yahoo rate limiting; the synthetic, csv and parquet "
            "sources work offline)"
        )
        self.ticker = ticker
        self.cause = cause


class _NotOnYahoo(Exception):
    """Yahoo says the ticker does not exist (or no longer trades)."""


@contextmanager
def _yfinance_raises() -> Iterator[None]:
    """Make yfinance raise its errors instead of logging them and returning an empty frame.

    Without this an unreachable Yahoo and a delisted ticker both look like an empty frame.
    ``yf.config.debug.hide_exceptions`` is the switch yfinance documents for that.
    """
    with _CONFIG_LOCK:
        previous = yf.config.debug.hide_exceptions
        yf.config.debug.hide_exceptions = False
        try:
            yield
        finally:
            yf.config.debug.hide_exceptions = previous


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


class YFinanceSource:
    """Daily or intraday bars from Yahoo Finance.

    Parameters
    ----------
    tickers : sequence of str, optional
        The universe ``fetch(None, ...)`` returns. Yahoo has no "all tickers", so without it
        ``fetch`` needs explicit tickers. Names are upper-cased, as Yahoo's symbols are.
    interval : str
        ``"1d"`` or an intraday interval from :data:`INTERVALS` (Yahoo serves intraday bars only
        for recent weeks).
    auto_adjust : bool
        ``True`` (default): open/high/low/close are adjusted for splits and dividends (scaled by
        Yahoo's ``adjclose / close``), so returns across corporate actions are real returns. The
        volume is left as Yahoo reports it. ``False``: raw traded prices.
    calendar : str
        Exchange calendar of the tickers (:func:`quant_engine.calendars.get_calendar`, default
        ``XNYS``). Yahoo stamps a bar at its start (a daily bar at the exchange's midnight); the
        adapter stamps it by the engine's rule, at its close from the calendar: a daily bar at its
        session's close (21:00 UTC in winter, 20:00 in summer, 17:00 or 18:00 on a half day), an
        intraday bar at its interval's end, the last one of a session at the close.
    timeout : float
        Seconds per HTTP request.
    on_error : {"raise", "drop"}
        What validation does with the rare inconsistent bar Yahoo serves.
    session : requests.Session or curl_cffi.requests.Session, optional
        The HTTP session yfinance uses (default: its own browser-impersonating ``curl_cffi``
        session). Note that yfinance keeps one session per process, so passing one here sets it
        for every later yfinance call in the process too.

    Raises
    ------
    YFinanceUnavailableError
        From ``fetch``: Yahoo could not be reached; names the ticker and the cause.

    Examples
    --------
    >>> source = YFinanceSource(["AAPL", "MSFT"])  # doctest: +SKIP
    >>> source.fetch(None, "2024-01-02", "2024-01-12")  # doctest: +SKIP
    """

    name = "yfinance"

    def __init__(
        self,
        tickers: Sequence[str] | None = None,
        *,
        interval: str = "1d",
        auto_adjust: bool = True,
        calendar: str = DEFAULT_CALENDAR,
        timeout: float = 10.0,
        on_error: OnError = "raise",
        session: Any = None,
    ) -> None:
        if interval not in INTERVALS:
            raise ValueError(f"interval={interval!r} is not served; use one of {', '.join(INTERVALS)}")
        self.calendar = get_calendar(calendar)
        if not timeout > 0:
            raise ValueError(f"timeout={timeout!r} must be a number of seconds > 0")
        if isinstance(tickers, str):
            raise TypeError(f"tickers={tickers!r} must be a sequence of names, not one string")
        self.tickers = tuple(self._clean(tickers)) if tickers is not None else None
        self.interval = interval
        self.auto_adjust = auto_adjust
        self.timeout = timeout
        self.on_error = on_error
        self._session = session

    def __repr__(self) -> str:
        return (
            f"YFinanceSource(tickers={self.tickers!r}, interval={self.interval!r}, "
            f"auto_adjust={self.auto_adjust}, calendar={self.calendar.name!r})"
        )

    @staticmethod
    def _clean(tickers: Sequence[str]) -> list[str]:
        names = [str(t).strip().upper() for t in tickers]
        if not names or not all(names):
            raise ValueError(f"tickers={list(tickers)!r} must be non-empty names")
        return list(dict.fromkeys(names))

    def fetch(self, tickers: Sequence[str] | None, start: TimeLike, end: TimeLike) -> pd.DataFrame:
        """Validated bars of ``tickers`` between ``start`` and ``end`` inclusive (UTC, by bar ``ts``).

        Raises
        ------
        UnknownTickerError
            Yahoo does not know a ticker (or it is delisted); names all such tickers.
        EmptyRangeError
            No ticker has a bar in the range.
        YFinanceUnavailableError
            Yahoo could not be reached.
        """
        if isinstance(tickers, str):
            raise TypeError(f"tickers={tickers!r} must be a sequence of names, not one string")
        if tickers is None and self.tickers is None:
            raise ValueError("yfinance has no list of all tickers; pass tickers, or YFinanceSource(tickers=[...])")
        names = self._clean(tickers) if tickers is not None else list(self.tickers or ())
        first, last = resolve_range(start, end)
        frames: list[pd.DataFrame] = []
        unknown: dict[str, str] = {}
        for ticker in names:
            try:
                history = self._download(ticker, first, last)
            except _NotOnYahoo as exc:
                unknown[ticker] = str(exc)
                continue
            bars = self._normalise(ticker, history)
            frames.append(bars.loc[(bars["ts"] >= first) & (bars["ts"] <= last)])
        if unknown:
            reasons = "; ".join(f"{t} ({why})" for t, why in unknown.items())
            raise UnknownTickerError(f"Yahoo Finance has no ticker(s) {reasons}", list(unknown))
        bars = pd.concat(frames, ignore_index=True) if frames else empty_bars()
        if bars.empty:
            raise EmptyRangeError(
                f"Yahoo Finance has no {self.interval} bars of {', '.join(names)} between {first} and {last}"
            )
        missing = sorted(set(names) - set(bars["ticker"]))
        if missing:
            log.warning(
                "Yahoo Finance has no %s bars of %s between %s and %s", self.interval, ", ".join(missing), first, last
            )
        clean, _ = validate_bars(bars, on_error=self.on_error)
        return clean

    def _download(self, ticker: str, first: pd.Timestamp, last: pd.Timestamp) -> pd.DataFrame:
        """Yahoo's history for ``ticker``, a day wider on each side than asked (bars are restamped)."""
        request_start = (first - pd.Timedelta(days=1)).strftime("%Y-%m-%d")
        request_end = (last + pd.Timedelta(days=2)).strftime("%Y-%m-%d")  # yfinance's end is exclusive
        try:
            with _yfinance_raises():
                return yf.Ticker(ticker, session=self._session).history(
                    start=request_start,
                    end=request_end,
                    interval=self.interval,
                    auto_adjust=self.auto_adjust,
                    actions=False,
                    timeout=self.timeout,
                )
        except YFTzMissingError as exc:
            # yfinance looks a ticker's time zone up first; Yahoo has none for unknown symbols.
            raise _NotOnYahoo("no time zone: unknown or delisted") from exc
        except YFPricesMissingError as exc:
            if exc.yahoo_reason:
                raise _NotOnYahoo(exc.yahoo_reason) from exc
            return pd.DataFrame()
        except YFRateLimitError as exc:
            raise YFinanceUnavailableError(ticker, exc) from exc
        except (OSError, YFException, json.JSONDecodeError) as exc:
            if _http_status(exc) == 404:  # the quoteSummary fallback of yfinance's time-zone lookup
                raise _NotOnYahoo("Yahoo answered HTTP 404 Not Found") from exc
            raise YFinanceUnavailableError(ticker, exc) from exc

    def _normalise(self, ticker: str, history: pd.DataFrame) -> pd.DataFrame:
        """yfinance's frame (exchange-time index, capitalised columns) as bars stamped at their close."""
        if history.empty:
            return empty_bars()
        frame = history.rename(columns=str.lower)
        index = pd.DatetimeIndex(history.index)
        size = BarSize.parse(self.interval)
        if size.is_daily:
            stamps = self._daily_closes(index)
        else:
            starts = index.tz_convert("UTC").as_unit("ns").asi8
            located = [self.calendar.locate(int(t) + 1, size) for t in starts]
            # A bar Yahoo serves outside every session keeps its start; conform_bars names it.
            stamps = pd.DatetimeIndex(
                np.array(
                    [t if at is None else at[0] for t, at in zip(starts, located, strict=True)], dtype="datetime64[ns]"
                ),
                tz="UTC",
            )
        out = pd.DataFrame({"ticker": ticker, "ts": stamps})
        for column in NUMERIC_COLUMNS:
            out[column] = frame[column].to_numpy(dtype="float64")
        return out

    def _daily_closes(self, index: pd.DatetimeIndex) -> pd.DatetimeIndex:
        """Each daily bar's session close: Yahoo's stamp is the session's date at the exchange."""
        sessions = self.calendar.daily_sessions_of(index)
        closes = np.where(
            sessions >= 0, self.calendar.close_ns[np.maximum(sessions, 0)], index.tz_convert("UTC").as_unit("ns").asi8
        )
        return pd.DatetimeIndex(closes.astype("datetime64[ns]"), tz="UTC")
