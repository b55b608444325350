"""The synthetic market: deterministic, realistic, with a weak edge and shifts that do what they say."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quant_engine.calendars import get_calendar
from quant_engine.data.base import EmptyRangeError, MarketDataSource, UnknownTickerError
from quant_engine.data.schema import validate_bars
from quant_engine.data.sources import make_source
from quant_engine.data.synthetic import EDGE, REGIMES, TRANSITION, Shift, SyntheticMarket

DECADE = {"start": "2015-01-01", "end": "2024-12-31"}
SHIFT_DAY = "2020-01-02"


@pytest.fixture(scope="module")
def market() -> SyntheticMarket:
    return SyntheticMarket()


@pytest.fixture(scope="module")
def full(market: SyntheticMarket) -> pd.DataFrame:
    return market.fetch(None, "2010-01-01", "2030-12-31")


@pytest.fixture(scope="module")
def returns(full: pd.DataFrame) -> pd.DataFrame:
    """Daily log returns, one column per ticker."""
    return np.log(full.pivot(index="ts", columns="ticker", values="close")).diff().iloc[1:]


@pytest.fixture(scope="module")
def regime_of_day(market: SyntheticMarket) -> pd.Series:
    return market.regimes().set_index("ts")["regime"]


def edge_ic(bars: pd.DataFrame, regimes: pd.Series, regime: str, since: str | None = None) -> float:
    """Correlation of the 5-bar log return with the next bar's, over bars in ``regime``."""
    log_close = np.log(bars.pivot(index="ts", columns="ticker", values="close"))
    feature, target = log_close.diff(5), log_close.diff().shift(-1)
    keep = (regimes.reindex(log_close.index) == regime).to_numpy()
    if since is not None:
        keep &= log_close.index >= pd.Timestamp(since, tz="UTC")
    x, y = feature[keep].to_numpy().ravel(), target[keep].to_numpy().ravel()
    finite = np.isfinite(x) & np.isfinite(y)
    return float(np.corrcoef(x[finite], y[finite])[0, 1])


# -- shape and schema --------------------------------------------------------------------------


def test_default_market_has_twenty_tickers_of_nyse_session_closes(market: SyntheticMarket, full: pd.DataFrame) -> None:
    assert isinstance(market, MarketDataSource) and market.name == "synthetic"
    assert market.tickers == tuple(f"SYN{i:02d}" for i in range(20))
    assert full["ticker"].nunique() == 20
    nyse = get_calendar("XNYS")
    assert len(full) == 20 * len(nyse.sessions("2010-01-01", "2030-12-31"))
    assert set(full["ts"]) == set(nyse.bar_closes("2010-01-01", "2030-12-31"))  # DST, half days, no holiday
    local = full["ts"].dt.tz_convert("America/New_York")
    assert set(zip(local.dt.hour, local.dt.minute, strict=True)) == {(16, 0), (13, 0)}  # the close, or a half day's
    assert validate_bars(full)[1].ok


def test_a_half_day_carries_less_variance_than_a_full_one() -> None:
    market = SyntheticMarket(n_tickers=1, start="2019-11-25", end="2019-11-29")
    calendar = market._calendar
    assert calendar.fraction.tolist() == pytest.approx([1.0, 1.0, 1.0, 210 / 390])  # Thanksgiving is closed


def test_ohlc_follow_the_close_path(full: pd.DataFrame) -> None:
    assert (full["high"] >= full[["open", "close"]].max(axis=1)).all()
    assert (full["low"] <= full[["open", "close"]].min(axis=1)).all()
    assert (full["high"] > full["low"]).mean() > 0.99  # real ranges, not degenerate bars
    previous_close = full.groupby("ticker")["close"].shift()
    overnight = np.log(full["open"] / previous_close).abs()
    close_to_close = np.log(full["close"] / previous_close).abs()
    assert 0 < overnight.median() < close_to_close.median()


def test_prices_start_at_realistic_levels(market: SyntheticMarket, full: pd.DataFrame) -> None:
    first = full.groupby("ticker")["close"].first()
    assert ((market.params.start_price >= 20) & (market.params.start_price <= 500)).all()
    assert (first.to_numpy() / market.params.start_price).round(1).tolist() == pytest.approx([1.0] * 20, abs=0.1)
    assert first.min() < 60 and first.max() > 200  # a spread of levels, not one price


def test_wide_tickers_are_zero_padded() -> None:
    market = SyntheticMarket(n_tickers=101, start="2024-01-01", end="2024-01-31")
    assert market.tickers[0] == "SYN000" and market.tickers[-1] == "SYN100"


# -- determinism --------------------------------------------------------------------------------


def test_two_instances_with_the_same_parameters_are_equal(full: pd.DataFrame) -> None:
    again = SyntheticMarket().fetch(None, "2010-01-01", "2030-12-31")
    pd.testing.assert_frame_equal(again, full)


def test_one_day_equals_the_slice_of_the_full_history(market: SyntheticMarket, full: pd.DataFrame) -> None:
    day = market.fetch(["SYN03", "SYN11"], "2022-06-15", "2022-06-15")
    expected = full[full["ticker"].isin(["SYN03", "SYN11"]) & (full["ts"].dt.strftime("%Y-%m-%d") == "2022-06-15")]
    pd.testing.assert_frame_equal(day, expected.reset_index(drop=True))


def test_a_fresh_instance_serves_the_same_day_first(full: pd.DataFrame) -> None:
    """Daily incremental ingestion builds a new market each run: its one day must match history."""
    day = SyntheticMarket().fetch(["SYN07"], "2026-03-02", "2026-03-02")
    expected = full[(full["ticker"] == "SYN07") & (full["ts"] == pd.Timestamp("2026-03-02 21:00", tz="UTC"))]
    pd.testing.assert_frame_equal(day, expected.reset_index(drop=True))


def test_a_later_end_only_appends_bars(full: pd.DataFrame) -> None:
    shorter = SyntheticMarket(end="2015-06-30").fetch(None, "2010-01-01", "2015-06-30")
    expected = full[full["ts"] <= pd.Timestamp("2015-06-30 21:00", tz="UTC")].reset_index(drop=True)
    pd.testing.assert_frame_equal(shorter, expected)


def test_a_ticker_does_not_depend_on_how_many_are_simulated() -> None:
    few = SyntheticMarket(n_tickers=2, **DECADE).fetch(["SYN01"], "2015-01-01", "2024-12-31")
    many = SyntheticMarket(n_tickers=6, **DECADE).fetch(["SYN01"], "2015-01-01", "2024-12-31")
    pd.testing.assert_frame_equal(few, many)


def test_different_seeds_give_different_markets() -> None:
    one = SyntheticMarket(n_tickers=2, seed=1, **DECADE).fetch(None, "2015-01-01", "2015-12-31")
    two = SyntheticMarket(n_tickers=2, seed=2, **DECADE).fetch(None, "2015-01-01", "2015-12-31")
    assert not np.allclose(one["close"], two["close"])


# -- stylised facts -----------------------------------------------------------------------------


def test_returns_have_fat_tails(returns: pd.DataFrame) -> None:
    assert (returns.kurt() > 1).all()


def test_volatility_clusters_but_returns_barely_autocorrelate(returns: pd.DataFrame) -> None:
    for lag in range(1, 6):
        assert returns.abs().apply(lambda s: s.autocorr(lag)).mean() > 0.1
        # The designed edge (momentum in trending days) is the only source of autocorrelation.
        assert abs(returns.apply(lambda s: s.autocorr(lag)).mean()) < 0.07


def test_within_one_regime_tails_stay_fat_and_volatility_still_clusters(
    returns: pd.DataFrame, regime_of_day: pd.Series
) -> None:
    """Regime switching alone fattens tails and clusters volatility; GARCH and Student-t must too."""
    calm = (regime_of_day.reindex(returns.index) == "calm").to_numpy()
    both_calm = calm[1:] & calm[:-1]
    size = returns.abs().to_numpy()
    lag_one = [np.corrcoef(size[1:, i][both_calm], size[:-1, i][both_calm])[0, 1] for i in range(size.shape[1])]
    assert np.mean(lag_one) > 0.05
    assert (returns[calm].kurt() > 1).all()


def test_tickers_correlate_and_more_so_in_a_crisis(returns: pd.DataFrame, regime_of_day: pd.Series) -> None:
    def mean_pairwise(frame: pd.DataFrame) -> float:
        corr = frame.corr().to_numpy()
        return float(corr[np.triu_indices_from(corr, k=1)].mean())

    regime = regime_of_day.reindex(returns.index)
    calm, crisis = mean_pairwise(returns[regime == "calm"]), mean_pairwise(returns[regime == "crisis"])
    assert mean_pairwise(returns) > 0.1
    assert crisis > calm + 0.2


def test_regimes_persist_and_all_occur(market: SyntheticMarket, regime_of_day: pd.Series) -> None:
    codes = regime_of_day.cat.codes.to_numpy()
    assert set(regime_of_day.unique()) == set(REGIMES)
    assert list(market.regimes().columns) == ["ts", "regime"]
    stays = [np.mean(codes[1:][codes[:-1] == k] == k) for k in range(3)]
    assert min(stays) > 0.9
    np.testing.assert_allclose(stays, np.diag(TRANSITION), atol=0.03)
    runs = np.diff(np.flatnonzero(np.diff(codes) != 0))
    assert runs.mean() > 10


def test_crises_are_volatile_and_loud(full: pd.DataFrame, returns: pd.DataFrame, regime_of_day: pd.Series) -> None:
    regime = regime_of_day.reindex(returns.index)
    assert returns[regime == "crisis"].std().mean() > 1.5 * returns[regime == "calm"].std().mean()
    volume = full.pivot(index="ts", columns="ticker", values="volume").iloc[1:]
    assert (volume[regime == "crisis"].mean() > volume[regime == "calm"].mean()).all()


def test_volume_rises_with_the_size_of_the_move(full: pd.DataFrame, returns: pd.DataFrame) -> None:
    volume = full.pivot(index="ts", columns="ticker", values="volume").iloc[1:]
    correlations = [np.corrcoef(returns[t].abs(), np.log(volume[t]))[0, 1] for t in returns]
    assert min(correlations) > 0.2


def test_the_edge_is_momentum_when_trending_and_reversal_when_calm(
    market: SyntheticMarket, full: pd.DataFrame, regime_of_day: pd.Series
) -> None:
    assert market.params.edge.tolist() == EDGE.tolist()
    trending, calm = edge_ic(full, regime_of_day, "trending"), edge_ic(full, regime_of_day, "calm")
    assert 0.06 < trending < 0.16  # real but weak: about k * sqrt(5)
    assert -0.11 < calm < -0.03


# -- shifts -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unshifted() -> SyntheticMarket:
    return SyntheticMarket(**DECADE)


def split_at_shift(market: SyntheticMarket) -> tuple[pd.DataFrame, pd.DataFrame]:
    bars = market.fetch(None, "2015-01-01", "2024-12-31")
    after = bars["ts"] >= pd.Timestamp(SHIFT_DAY, tz="UTC")
    return bars[~after].reset_index(drop=True), bars[after].reset_index(drop=True)


def daily_vol(bars: pd.DataFrame) -> float:
    return float(np.log(bars.pivot(index="ts", columns="ticker", values="close")).diff().std().mean())


def test_covariate_shift_scales_volatility_from_its_day_only(unshifted: SyntheticMarket) -> None:
    shifted = SyntheticMarket(**DECADE, shifts=[Shift(SHIFT_DAY, "covariate", vol_scale=2.0)])
    base_before, base_after = split_at_shift(unshifted)
    before, after = split_at_shift(shifted)
    pd.testing.assert_frame_equal(before, base_before)
    assert 1.8 < daily_vol(after) / daily_vol(base_after) < 2.2
    regimes = unshifted.regimes().set_index("ts")["regime"]
    assert edge_ic(after, regimes, "trending") == pytest.approx(edge_ic(base_after, regimes, "trending"), abs=0.03)


def test_concept_shift_flips_the_edge_and_keeps_the_inputs(unshifted: SyntheticMarket) -> None:
    shifted = SyntheticMarket(**DECADE, shifts=[Shift(SHIFT_DAY, "concept")])
    base_before, base_after = split_at_shift(unshifted)
    before, after = split_at_shift(shifted)
    pd.testing.assert_frame_equal(before, base_before)
    regimes = unshifted.regimes().set_index("ts")["regime"]
    assert edge_ic(base_after, regimes, "trending") > 0.03
    assert edge_ic(after, regimes, "trending") < -0.03
    assert edge_ic(after, regimes, "calm") > 0
    assert 0.9 < daily_vol(after) / daily_vol(base_after) < 1.1


def test_both_shifts_together(unshifted: SyntheticMarket) -> None:
    shifted = SyntheticMarket(**DECADE, shifts=[Shift(SHIFT_DAY, "both", vol_scale=1.5, edge_scale=0.0)])
    _, base_after = split_at_shift(unshifted)
    _, after = split_at_shift(shifted)
    regimes = unshifted.regimes().set_index("ts")["regime"]
    assert 1.35 < daily_vol(after) / daily_vol(base_after) < 1.65
    assert abs(edge_ic(after, regimes, "trending")) < edge_ic(base_after, regimes, "trending") / 2


def test_shift_parses_the_cli_form() -> None:
    shift = Shift.parse("2022-01-03:covariate:vol_scale=1.5")
    assert shift.at == pd.Timestamp("2022-01-03", tz="UTC") and shift.kind == "covariate"
    assert shift.volatility_multiplier == 1.5 and shift.edge_multiplier == 1.0
    assert Shift.parse("2022-01-03:concept").edge_multiplier == -1.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2022-01-03", "must look like DATE:KIND"),
        ("2022-01-03:sideways", "kind='sideways'; use one of covariate, concept, both"),
        ("2022-01-03:covariate:vol_scale=0", "vol_scale=0.0 must be a finite number > 0"),
        ("2022-01-03:covariate:speed=2", "unknown option 'speed'"),
        ("2022-01-03:concept:edge_scale=x", "edge_scale='x' is not a number"),
        ("someday:concept", "at='someday' is not a date"),
    ],
)
def test_bad_shifts_are_named(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Shift.parse(text)


def test_a_shift_outside_the_calendar_is_refused() -> None:
    with pytest.raises(ValueError, match="Shift at 2031-01-02 is outside the simulated days 2015-01-01..2024-12-31"):
        SyntheticMarket(**DECADE, shifts=[Shift("2031-01-02", "concept")])


# -- intraday -----------------------------------------------------------------------------------


def test_hourly_bars_cover_the_session_and_end_at_the_close() -> None:
    bars = SyntheticMarket(n_tickers=2, start="2024-03-01", end="2024-03-31", freq="1h").fetch(
        ["SYN00"], "2024-03-04", "2024-03-04"
    )
    expected = [f"{h}:30" for h in range(15, 21)] + ["21:00"]
    assert bars["ts"].dt.strftime("%H:%M").tolist() == expected


def test_five_minute_bars_fill_weekday_sessions_only() -> None:
    market = SyntheticMarket(n_tickers=3, start="2024-03-01", end="2024-03-10", freq="5min")
    bars = market.fetch(None, "2024-03-01", "2024-03-10")
    per_day = bars.groupby([bars["ticker"], bars["ts"].dt.date]).size()
    assert (per_day == 78).all() and len(per_day) == 3 * 6  # 6 weekdays
    minutes = bars["ts"].dt.hour * 60 + bars["ts"].dt.minute
    assert minutes.min() == 14 * 60 + 35 and minutes.max() == 21 * 60
    daily_volume = bars.groupby([bars["ticker"], bars["ts"].dt.date])["volume"].sum().groupby("ticker").median()
    assert (daily_volume.to_numpy() / market.params.daily_volume).round(0).tolist() == [1.0, 1.0, 1.0]


# -- bad requests -------------------------------------------------------------------------------


def test_unknown_tickers_are_named(market: SyntheticMarket) -> None:
    with pytest.raises(UnknownTickerError, match=r"no ticker\(s\) SYN20, AAPL; it has SYN00, SYN01") as caught:
        market.fetch(["SYN01", "SYN20", "AAPL"], "2024-01-02", "2024-01-03")
    assert caught.value.tickers == ("SYN20", "AAPL")


@pytest.mark.parametrize(
    ("start", "end"), [("2031-01-01", "2031-12-31"), ("2024-01-06", "2024-01-07"), ("2019-07-04", "2019-07-04")]
)
def test_ranges_without_bars_are_empty(market: SyntheticMarket, start: str, end: str) -> None:
    with pytest.raises(EmptyRangeError, match="synthetic market has no bars between"):
        market.fetch(None, start, end)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_tickers": 0}, "n_tickers=0 must be a whole number >= 1"),
        ({"seed": -1}, "seed=-1 must be a whole number >= 0"),
        ({"freq": "3D"}, "freq='3D' is not a bar length"),
        ({"freq": "7h"}, "freq='7h' must be '1d' or shorter than a regular XNYS session"),
        ({"calendar": "MOON"}, "unknown calendar 'MOON'"),
        ({"freq": "often"}, "freq='often' is not a bar length"),
        ({"freq": "1min"}, "exceeds 5000000; narrow start/end"),
        ({"start": "2024-02-01", "end": "2024-01-01"}, "end '2024-01-01' is before start '2024-02-01'"),
    ],
)
def test_bad_parameters_are_named(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticMarket(**options)


def test_make_source_builds_the_synthetic_market() -> None:
    source = make_source("synthetic", n_tickers=3, seed=11, start="2024-01-01", end="2024-12-31")
    assert isinstance(source, SyntheticMarket) and source.tickers == ("SYN00", "SYN01", "SYN02")
