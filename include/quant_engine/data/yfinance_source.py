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

import pandas as pd
import yfinance as yf
from yfinance.exceptions import YFException, YFPricesMissingError, YFRateLimitError, YFTzMissingError

from quant_engine.data.schema import NUMERIC_COLUMNS, OnError, empty_bars, validate_bars
from quant_engine.data.sources import (
    EmptyRangeError,
    TimeLike,
    UnknownTickerError,
    parse_time_of_day,
    resolve_range,
)

log = logging.getLogger(__name__)

#: Yahoo intervals this adapter serves, and the length of one bar (``None``: one session).
INTERVALS: dict[str, pd.Timedelta | None] = {
    "1d": None,
    "1m": pd.Timedelta(minutes=1),
    "2m": pd.Timedelta(minutes=2),
    "5m": pd.Timedelta(minutes=5),
    "15m": pd.Timedelta(minutes=15),
    "30m": pd.Timedelta(minutes=30),
    "60m": pd.Timedelta(minutes=60),
    "1h": pd.Timedelta(minutes=60),
    "90m": pd.Timedelta(minutes=90),
}

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
    session_close : str
        ``HH:MM`` close of the regular session in the exchange's own time zone (16:00 for US
        equities). Daily bars are stamped at that time of their day, which follows daylight saving
        (21:00 UTC in winter, 20:00 UTC in summer); intraday bars are stamped at their end, the
        last one of a day at most at the close. Yahoo itself stamps bars at their start.
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
        session_close: str = "16:00",
        timeout: float = 10.0,
        on_error: OnError = "raise",
        session: Any = None,
    ) -> None:
        if interval not in INTERVALS:
            raise ValueError(f"interval={interval!r} is not served; use one of {', '.join(INTERVALS)}")
        close = parse_time_of_day(session_close, "session_close")
        if not timeout > 0:
            raise ValueError(f"timeout={timeout!r} must be a number of seconds > 0")
        if isinstance(tickers, str):
            raise TypeError(f"tickers={tickers!r} must be a sequence of names, not one string")
        self.tickers = tuple(self._clean(tickers)) if tickers is not None else None
        self.interval = interval
        self.auto_adjust = auto_adjust
        self.session_close = session_close
        self._close_offset = close
        self.timeout = timeout
        self.on_error = on_error
        self._session = session

    def __repr__(self) -> str:
        return f"YFinanceSource(tickers={self.tickers!r}, interval={self.interval!r}, auto_adjust={self.auto_adjust})"

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
            raise EmptyRangeError(f"Yahoo Finance has no {self.interval} bars of {', '.join(names)} between {first} and {last}")
        missing = sorted(set(names) - set(bars["ticker"]))
        if missing:
            log.warning("Yahoo Finance has no %s bars of %s between %s and %s", self.interval, ", ".join(missing), first, last)
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
        """yfinance's frame (exchange-time index, capitalised columns) as bars stamped at their end."""
        if history.empty:
            return empty_bars()
        frame = history.rename(columns=str.lower)
        index = pd.DatetimeIndex(history.index)
        local_days = index.tz_localize(None).normalize()
        close = (local_days + self._close_offset).tz_localize(index.tz, ambiguous="raise", nonexistent="raise")
        length = INTERVALS[self.interval]
        stamps = close if length is None else (index + length).where(index + length < close, close)
        out = pd.DataFrame({"ticker": ticker, "ts": stamps.tz_convert("UTC")})
        for column in NUMERIC_COLUMNS:
            out[column] = frame[column].to_numpy(dtype="float64")
        return out
