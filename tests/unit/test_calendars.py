"""The one time rule: sessions and bar closes from exchange calendars, checked against exchange_calendars'
own trading index (an independent oracle) on random spans, and on the days that break naive rules."""

from __future__ import annotations

import warnings

import exchange_calendars as xcals
import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from quant_engine.calendars import BarSize, CalendarError, MarketTime, get_calendar

CALENDARS = ("XNYS", "24/5", "XHKG", "XLON")
BAR_SIZES = ("1d", "1h", "30m", "5m", "90m")


def oracle_intervals(name: str, first: str, last: str, bar_size: str) -> pd.IntervalIndex:
    """exchange_calendars' own bars of the sessions first..last, each curtailed at its close or break."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calendar = xcals.get_calendar(
            name, start=str(get_calendar(name).first_session.date()), end=str(get_calendar(name).last_session.date())
        )
        if bar_size == "1d":
            schedule = calendar.schedule.loc[first:last]
            return pd.IntervalIndex.from_arrays(schedule["open"], schedule["close"], closed="left")
        return calendar.trading_index(
            first, last, BarSize.parse(bar_size).name.replace("m", "min"), intervals=True, force=True
        )


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(CALENDARS),
    bar_size=st.sampled_from(BAR_SIZES),
    day=st.integers(min_value=0, max_value=60 * 365),
    span=st.integers(min_value=0, max_value=12),
)
def test_bar_grid_equals_exchange_calendars_trading_index(name, bar_size, day, span) -> None:
    calendar = get_calendar(name)
    first = max(calendar.first_session, pd.Timestamp("1975-01-01")) + pd.Timedelta(days=day)
    if first > calendar.last_session - pd.Timedelta(days=20):
        first = calendar.last_session - pd.Timedelta(days=20)
    last = first + pd.Timedelta(days=span)
    lo, hi = calendar.session_range(first, last)
    if hi == lo:
        return
    grid = calendar.bar_grid(bar_size, lo, hi)
    oracle = oracle_intervals(
        name, str(calendar.session_label(lo).date()), str(calendar.session_label(hi - 1).date()), bar_size
    )
    assert list(grid.closes) == list(oracle.right)
    assert list(pd.DatetimeIndex(grid.start_ns.astype("datetime64[ns]"), tz="UTC")) == list(oracle.left)


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(CALENDARS),
    bar_size=st.sampled_from(BAR_SIZES),
    t=st.datetimes(
        min_value=pd.Timestamp("1962-01-01").to_pydatetime(), max_value=pd.Timestamp("2045-12-31").to_pydatetime()
    ),
)
def test_locate_finds_the_bar_holding_an_instant_or_none_outside_sessions(name, bar_size, t) -> None:
    calendar = get_calendar(name)
    t_ns = int(pd.Timestamp(t, tz="UTC").value)
    found = calendar.locate(t_ns, bar_size)
    # brute force over the grid of the sessions around t
    around = int(np.searchsorted(calendar.close_ns, t_ns))
    lo, hi = max(0, around - 1), min(len(calendar), around + 1)
    grid = calendar.bar_grid(bar_size, lo, hi)
    holding = [
        (int(c), int(s), int(g))
        for c, s, g in zip(grid.close_ns, grid.start_ns, grid.session, strict=True)
        if s <= t_ns <= c
    ]
    if not holding:
        assert found is None
    else:
        assert found == holding[0]  # an instant at a close and the next bar's start belongs to the bar it closes


@pytest.mark.parametrize(
    ("day", "close"),
    [
        ("2019-03-08", "21:00"),
        ("2019-03-11", "20:00"),  # daylight saving begins on March 10
        ("2019-11-01", "20:00"),
        ("2019-11-04", "21:00"),  # and ends on November 3
        ("2019-07-03", "17:00"),
        ("2019-11-29", "18:00"),  # half days: 13:00 New York in summer and in winter
        ("2020-12-24", "18:00"),
        ("1965-03-02", "21:00"),
        ("2045-07-05", "20:00"),
    ],
)
def test_nyse_closes_follow_daylight_saving_and_half_days(day, close) -> None:
    assert get_calendar("XNYS").session_close(day) == pd.Timestamp(f"{day} {close}", tz="UTC")


@pytest.mark.parametrize("day", ["2019-07-04", "2019-11-28", "2019-04-19", "2021-01-18", "2019-07-06", "2018-12-05"])
def test_holidays_weekends_and_special_closures_are_no_sessions(day) -> None:
    nyse = get_calendar("XNYS")
    assert not nyse.is_session(day)
    with pytest.raises(CalendarError, match=f"{day} is not a session of XNYS"):
        nyse.session_close(day)


def test_daily_stamps_name_their_session_in_every_convention() -> None:
    nyse = get_calendar("XNYS")
    stamps = pd.to_datetime(
        [
            "2024-07-02T20:00Z",  # the rule: the close
            "2024-07-02T21:00Z",  # the old fixed 21:00 UTC
            "2024-07-02T00:00-04:00",  # yfinance's local midnight
            "2024-07-02T00:00Z",  # a date written as an instant by pandas
            "2024-07-04T20:00Z",
        ],
        format="ISO8601",
        utc=True,
    )  # Independence Day
    labels = [str(nyse.session_label(i).date()) if i >= 0 else None for i in nyse.daily_sessions_of(stamps)]
    assert labels == ["2024-07-02"] * 4 + [None]
    fx = get_calendar("24/5")  # sessions end at midnight UTC: a stamp there is the day before's close
    assert str(fx.session_label(fx.daily_sessions_of(pd.to_datetime(["2024-07-03T00:00Z"]))[0]).date()) == "2024-07-02"


def test_intraday_stamps_must_be_bar_closes_inside_a_session() -> None:
    nyse = get_calendar("XNYS")
    stamps = pd.to_datetime(
        ["2024-07-02T14:30Z", "2024-07-02T14:45Z", "2024-07-02T13:30Z", "2024-07-02T20:00Z", "2024-07-04T15:30Z"],
        utc=True,
    )
    codes = nyse.intraday_sessions_of(stamps, "1h")
    assert (codes[[0, 3]] >= 0).all() and codes[1] == -2 and codes[2] == -1 and codes[4] == -1


def test_annualisation_comes_from_the_calendar() -> None:
    daily = MarketTime("XNYS", "1d").annualisation(2020)
    hourly = MarketTime("XNYS", "1h").annualisation(2020)
    fx = MarketTime("24/5", "1h").annualisation(2020)
    assert 250 < daily["sessions_per_year"] < 254 and daily["bars_per_session"] == 1
    assert 6.95 < hourly["bars_per_session"] < 7  # seven bars a regular day, fewer on half days
    assert fx["bars_per_session"] == 24 and 260 <= fx["sessions_per_year"] <= 262
    assert hourly["periods_per_year"] == pytest.approx(
        hourly["sessions_per_year"] * hourly["bars_per_session"], abs=0.01
    )


def test_bar_sizes_and_market_times_are_read_in_every_spelling_and_refused_by_name() -> None:
    assert [BarSize.parse(v).name for v in ("1D", "D", "60min", "1h", "90m", "5min", "2h")] == [
        "1d",
        "1d",
        "1h",
        "1h",
        "90m",
        "5m",
        "2h",
    ]
    assert MarketTime.from_json(MarketTime("NYSE", "60m").to_json()) == MarketTime("XNYS", "1h")
    for bad, message in (("2d", "one session"), ("weekly", "not a bar length"), ("0m", "not a bar size")):
        with pytest.raises(CalendarError, match=message):
            BarSize.parse(bad)
    with pytest.raises(CalendarError, match="unknown calendar 'MOON'"):
        MarketTime("MOON")
    with pytest.raises(CalendarError, match="time rule"):
        MarketTime.from_json({"calendar": "XNYS", "bar_size": "1d"})


def oracle_advance(name: str, t_ns: int, amount_ns: int) -> int:
    """Walk exchange_calendars' own schedule stretch by stretch (sessions split at their breaks)."""
    if amount_ns == 0:
        return t_ns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calendar = xcals.get_calendar(
            name, start=str(get_calendar(name).first_session.date()), end=str(get_calendar(name).last_session.date())
        )
    day = pd.Timestamp(t_ns, tz="UTC").tz_localize(None).normalize()
    schedule = calendar.schedule.loc[day - pd.Timedelta(days=120) : day + pd.Timedelta(days=120)]
    stretches = []
    for row in schedule.itertuples():
        if "break_start" in schedule.columns and pd.notna(row.break_start) and pd.notna(row.break_end):
            stretches += [(row.open.value, row.break_start.value), (row.break_end.value, row.close.value)]
        else:
            stretches.append((row.open.value, row.close.value))
    left = abs(amount_ns)
    if amount_ns > 0:
        for start, end in stretches:
            if end < t_ns:
                continue
            begin = max(start, t_ns)
            if left <= end - begin:
                return begin + left
            left -= end - begin
    else:
        for start, end in reversed(stretches):
            if start > t_ns:
                continue
            finish = min(end, t_ns)
            if left < finish - start or (left == 0):
                return finish - left
            left -= finish - start
    raise AssertionError("the oracle's window is too short for this amount")


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(("XNYS", "24/5", "24/7", "XHKG", "XLON")),
    t=st.datetimes(
        min_value=pd.Timestamp("1980-01-01").to_pydatetime(), max_value=pd.Timestamp("2090-12-31").to_pydatetime()
    ),
    amount_minutes=st.integers(min_value=-5 * 24 * 60, max_value=5 * 24 * 60),
    seconds=st.integers(min_value=0, max_value=59),
)
def test_advance_trading_time_equals_a_walk_over_exchange_calendars_sessions(name, t, amount_minutes, seconds) -> None:
    calendar = get_calendar(name)
    t_ns = int(pd.Timestamp(t, tz="UTC").value)
    margin = pd.Timedelta(days=60)  # the oracle walks sessions within 120 days of t
    assume(calendar.first_session + margin < pd.Timestamp(t) < calendar.last_session - margin)
    amount_ns = (amount_minutes * 60 + (seconds if amount_minutes >= 0 else -seconds)) * 10**9
    moved = calendar.advance_trading_time(t_ns, amount_ns)
    assert moved == oracle_advance(name, t_ns, amount_ns)
    # trading time is a part of wall time: moving by it never covers less wall time than the amount
    assert (moved >= t_ns + amount_ns) if amount_ns >= 0 else (moved <= t_ns + amount_ns)


def test_advance_trading_time_skips_nights_weekends_and_holidays() -> None:
    nyse = get_calendar("XNYS")

    def at(text: str) -> int:
        return int(pd.Timestamp(text, tz="UTC").value)

    hour = 3600 * 10**9
    assert nyse.advance_trading_time(at("2024-07-03 16:00"), 2 * hour) == at("2024-07-05 14:30")  # half day, July 4
    assert nyse.advance_trading_time(at("2024-07-05 14:30"), -2 * hour) == at("2024-07-03 16:00")
    assert nyse.advance_trading_time(at("2024-07-06 12:00"), 0) == at("2024-07-06 12:00")
    # a whole session ahead from a close lands on the next close, not on a weekday count
    assert nyse.advance_trading_time(at("2024-03-28 20:00"), int(6.5 * hour)) == at("2024-04-01 20:00")  # Good Friday
    fx = get_calendar("24/7")
    assert fx.advance_trading_time(at("2024-01-06 10:00"), 48 * hour) == at("2024-01-08 10:00")
