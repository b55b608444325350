"""The Yahoo Finance adapter on recorded chart-API responses, with no network.

The seam is the HTTP session: ``YFinanceSource(session=requests.Session())`` hands yfinance a plain
``requests`` session (one of the two kinds it accepts), and ``responses`` answers that session's
requests from tests/fixtures/yfinance. Everything above the socket — yfinance's cookie and crumb
dance, its JSON parsing, time zones, auto-adjustment, and the adapter's restamping — runs for real.
Patching ``YfData.get`` would skip the cookie/crumb code and the HTTP status handling, which is
where an unreachable Yahoo shows up.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
import pytest
import requests
import responses
import yfinance as yf
from yfinance.data import YfData

from quant_engine.backends import make_group_stores, make_offline_store
from quant_engine.data.base import EmptyRangeError, UnknownTickerError
from quant_engine.data.sources import make_source
from quant_engine.data.yfinance_source import YFinanceSource, YFinanceUnavailableError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "yfinance"
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning")  # inside yfinance

CHART_URL = re.compile(r"https://query2\.finance\.yahoo\.com/v8/finance/chart/(?P<symbol>[^?/]+)")
QUOTE_SUMMARY_URL = re.compile(r"https://query[12]\.finance\.yahoo\.com/v10/finance/quoteSummary/.*")


def recording(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


class FakeYahoo:
    """Answers yfinance the way Yahoo does, from recorded chart responses."""

    def __init__(self, charts: dict[str, dict]) -> None:
        self.charts = charts
        self.chart_requests: list[dict[str, list[str]]] = []

    def chart(self, request: requests.PreparedRequest) -> tuple[int, dict, str]:
        symbol = CHART_URL.match(request.url).group("symbol")
        params = parse_qs(urlsplit(request.url).query)
        self.chart_requests.append(params)
        if symbol not in self.charts:
            return 404, {"Content-Type": "application/json"}, json.dumps(recording("chart_not_found.json"))
        body = copy.deepcopy(self.charts[symbol])
        result = body["chart"]["result"][0]
        stamps = np.asarray(result["timestamp"])
        if "period1" in params:
            keep = (stamps >= int(params["period1"][0])) & (stamps < int(params["period2"][0]))
        else:  # a `range` request (yfinance's time-zone lookup): the latest bar
            keep = stamps == stamps.max()
        if keep.any():
            result["timestamp"] = stamps[keep].tolist()
            for block in ("quote", "adjclose"):
                for series in result["indicators"].get(block, []):
                    for key, values in series.items():
                        series[key] = np.asarray(values, dtype=object)[keep].tolist()
        else:  # Yahoo's answer for a window without trading
            del result["timestamp"]
            result["indicators"] = {"quote": [{}], "adjclose": [{}]}
        return 200, {"Content-Type": "application/json"}, json.dumps(body)


@pytest.fixture(scope="module", autouse=True)
def yfinance_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep yfinance's on-disk caches (time zones, cookies) out of the user's home."""
    yf.set_tz_cache_location(str(tmp_path_factory.mktemp("yfinance-cache")))


@pytest.fixture(autouse=True)
def fresh_yfinance_memory() -> None:
    """yfinance memoises past-range responses per process; each test must reach the fake Yahoo."""
    YfData.cache_get.cache_clear()


@pytest.fixture
def yahoo() -> FakeYahoo:
    """The fake Yahoo, answering every ``requests`` session; yfinance's process-wide session is set to
    one, so a source built without a session (as ingestion builds it from the name "yfinance") is
    answered too instead of reaching out through yfinance's default ``curl_cffi`` session."""
    YfData(session=requests.Session())
    fake = FakeYahoo(
        {
            "AAPL": recording("AAPL_1d.json"),
            "MSFT": recording("MSFT_1h.json"),
            "QQQ": recording("QQQ_1d_2018_2019.json"),
            "NVDA": recording("NVDA_1h_2024_07.json"),
        }
    )
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(responses.GET, "https://fc.yahoo.com/", status=404)
        mock.add(responses.GET, "https://query1.finance.yahoo.com/v1/test/getcrumb", body="hYR1Ue3Q7Vq")
        mock.add_callback(responses.GET, CHART_URL, callback=fake.chart)
        mock.add(responses.GET, QUOTE_SUMMARY_URL, status=404, json=recording("quote_summary_not_found.json"))
        yield fake


def source(**options) -> YFinanceSource:
    return YFinanceSource(session=requests.Session(), **options)


def test_daily_bars_are_adjusted_and_stamped_at_the_new_york_close(yahoo: FakeYahoo) -> None:
    bars = source().fetch(["aapl"], "2024-01-02", "2024-01-12")

    raw = recording("AAPL_1d.json")["chart"]["result"][0]["indicators"]
    quote, adjclose = raw["quote"][0], np.asarray(raw["adjclose"][0]["adjclose"])
    ratio = adjclose / np.asarray(quote["close"])
    assert list(bars.columns) == ["ticker", "ts", "open", "high", "low", "close", "volume"]
    assert (bars["ticker"] == "AAPL").all() and len(bars) == 9
    assert str(bars["ts"].dtype) == "datetime64[ns, UTC]"
    assert bars["ts"].iloc[0] == pd.Timestamp("2024-01-02 21:00", tz="UTC")  # 16:00 New York, winter
    assert bars["ts"].iloc[-1] == pd.Timestamp("2024-01-12 21:00", tz="UTC")
    np.testing.assert_allclose(bars["close"], adjclose, rtol=1e-9)
    np.testing.assert_allclose(bars["open"], np.asarray(quote["open"]) * ratio, rtol=1e-9)
    np.testing.assert_allclose(bars["low"], np.asarray(quote["low"]) * ratio, rtol=1e-9)
    np.testing.assert_allclose(bars["volume"], quote["volume"])
    assert yahoo.chart_requests[-1]["interval"] == ["1d"]


def test_unadjusted_bars_keep_yahoo_prices(yahoo: FakeYahoo) -> None:
    bars = source(auto_adjust=False).fetch(["AAPL"], "2024-01-08", "2024-01-08")
    quote = recording("AAPL_1d.json")["chart"]["result"][0]["indicators"]["quote"][0]
    assert bars[["open", "high", "low", "close"]].iloc[0].tolist() == pytest.approx(
        [quote[k][4] for k in ("open", "high", "low", "close")]
    )


def test_range_is_inclusive_and_cut_by_utc_bar_time(yahoo: FakeYahoo) -> None:
    bars = source(tickers=["AAPL"]).fetch(None, "2024-01-04", "2024-01-08")
    assert bars["ts"].dt.strftime("%Y-%m-%d").tolist() == ["2024-01-04", "2024-01-05", "2024-01-08"]
    # An instant before the 21:00 UTC close leaves that day's bar out.
    early = source().fetch(["AAPL"], "2024-01-04", pd.Timestamp("2024-01-08 20:59", tz="UTC"))
    assert early["ts"].max() == pd.Timestamp("2024-01-05 21:00", tz="UTC")


def test_hourly_bars_are_stamped_at_their_end_and_the_last_at_the_close(yahoo: FakeYahoo) -> None:
    bars = source(interval="1h").fetch(["MSFT"], "2024-01-10", "2024-01-10")
    expected = pd.date_range("2024-01-10 15:30", periods=6, freq="1h", tz="UTC").append(
        pd.DatetimeIndex([pd.Timestamp("2024-01-10 21:00", tz="UTC")])
    )
    assert bars["ts"].tolist() == expected.tolist()
    quote = recording("MSFT_1h.json")["chart"]["result"][0]["indicators"]["quote"][0]
    assert bars["close"].tolist() == pytest.approx(quote["close"][:7])


def test_unknown_ticker_is_named(yahoo: FakeYahoo) -> None:
    # For the first two unknown symbols of a process yfinance falls back to quoteSummary (an HTTP
    # 404 here), later it reports "no time zone" at once; both must read as an unknown ticker.
    for _ in range(3):
        YfData.cache_get.cache_clear()
        with pytest.raises(UnknownTickerError, match="DELISTED") as caught:
            source().fetch(["AAPL", "DELISTED"], "2024-01-02", "2024-01-12")
        assert caught.value.tickers == ("DELISTED",)


def test_a_window_without_trading_is_an_empty_range(yahoo: FakeYahoo) -> None:
    with pytest.raises(EmptyRangeError, match="AAPL.*2024-01-13"):
        source().fetch(["AAPL"], "2024-01-13", "2024-01-14")  # a weekend


def test_unreachable_yahoo_names_ticker_and_cause() -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        refused = requests.exceptions.ConnectionError("Failed to resolve 'query2.finance.yahoo.com'")
        mock.add(responses.GET, re.compile(r"https://.*"), body=refused)
        with pytest.raises(
            YFinanceUnavailableError, match=r"'AAPL'.*ConnectionError.*query2\.finance\.yahoo\.com"
        ) as caught:
            source().fetch(["AAPL"], "2024-01-02", "2024-01-12")
    assert caught.value.ticker == "AAPL"
    assert isinstance(caught.value, RuntimeError)


def test_yfinance_keeps_its_own_error_switch_as_it_was(yahoo: FakeYahoo) -> None:
    before = yf.config.debug.hide_exceptions
    with pytest.raises(UnknownTickerError):
        source().fetch(["DELISTED"], "2024-01-02", "2024-01-12")
    assert yf.config.debug.hide_exceptions == before


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"interval": "1wk"}, "interval='1wk'"),
        ({"calendar": "NOWHERE"}, "unknown calendar 'NOWHERE'"),
        ({"timeout": 0}, "timeout=0"),
        ({"tickers": "AAPL"}, "not one string"),
    ],
)
def test_bad_options_are_named(options: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        YFinanceSource(**options)


def test_fetch_without_any_ticker_says_what_to_pass() -> None:
    with pytest.raises(ValueError, match="no list of all tickers"):
        YFinanceSource().fetch(None, "2024-01-02", "2024-01-03")


def test_make_source_builds_the_adapter() -> None:
    built = make_source("yfinance", tickers=["msft"], interval="1h")
    assert isinstance(built, YFinanceSource) and built.tickers == ("MSFT",) and built.interval == "1h"


# --- the calendar's stamps, summer and winter ---------------------------------------------------------


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def test_daily_bars_close_at_20h_utc_in_summer_21h_in_winter_and_early_on_half_days(yahoo: FakeYahoo) -> None:
    summer = source().fetch(["QQQ"], "2019-07-01", "2019-07-09")
    assert summer["ts"].tolist() == [
        utc("2019-07-01 20:00"),
        utc("2019-07-02 20:00"),
        utc("2019-07-03 17:00"),
        utc("2019-07-05 20:00"),
        utc("2019-07-08 20:00"),
        utc("2019-07-09 20:00"),
    ]
    winter = source().fetch(["QQQ"], "2019-12-20", "2019-12-27")
    assert winter["ts"].tolist() == [
        utc("2019-12-20 21:00"),
        utc("2019-12-23 21:00"),
        utc("2019-12-24 18:00"),
        utc("2019-12-26 21:00"),
        utc("2019-12-27 21:00"),
    ]


def test_hourly_bars_of_a_summer_day_and_a_half_day_close_by_the_calendar(yahoo: FakeYahoo) -> None:
    bars = source(interval="1h").fetch(["NVDA"], "2024-07-02", "2024-07-03")
    assert [t.strftime("%m-%d %H:%M") for t in bars["ts"]] == [
        "07-02 14:30",
        "07-02 15:30",
        "07-02 16:30",
        "07-02 17:30",
        "07-02 18:30",
        "07-02 19:30",
        "07-02 20:00",
        "07-03 14:30",
        "07-03 15:30",
        "07-03 16:30",
        "07-03 17:00",
    ]


@pytest.mark.parametrize(
    ("start", "end"), [("2019-07-01", "2019-07-12"), ("2019-12-16", "2019-12-31")], ids=["summer", "winter"]
)
def test_ingesting_from_yahoo_stores_the_calendars_stamps(yahoo: FakeYahoo, start: str, end: str) -> None:
    from quant_engine.calendars import get_calendar
    from quant_engine.features.ingest import IngestionRequest, ingest

    result = ingest(
        IngestionRequest.build("yfinance", start, end, tickers="QQQ", group=make_offline_store()), make_group_stores()
    )
    stored = make_offline_store().read()
    expected = list(get_calendar("XNYS").bar_closes(start, end))
    assert stored["event_time"].tolist() == expected and result.rows_written_offline == len(expected)
