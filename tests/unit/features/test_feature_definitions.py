"""Feature definitions: batch/stream parity, values against independent pandas computations, bad input."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant_engine.data.schema import BarValidationError
from quant_engine.features.definitions import DEFAULT_FEATURES, FeatureDefinition, FeatureSet
from quant_engine.features.registry import feature_set_names, get_feature_set

ANNUALISE = math.sqrt(252)


def random_bars(tickers: list[str], n_bars: int, seed: int) -> pd.DataFrame:
    """Seeded fat-tailed (Student-t, 3 dof) random walk with consistent OHLCV, daily bars in UTC."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2015-01-02", periods=n_bars, freq="B", tz="UTC").as_unit("ns")
    frames = []
    for ticker in tickers:
        close = 50.0 * np.exp(np.cumsum(0.01 * rng.standard_t(3, n_bars)))
        open_ = close * np.exp(0.003 * rng.standard_normal(n_bars))
        high = np.maximum(open_, close) * np.exp(np.abs(0.004 * rng.standard_normal(n_bars)))
        low = np.minimum(open_, close) * np.exp(-np.abs(0.004 * rng.standard_normal(n_bars)))
        volume = np.round(rng.lognormal(13.0, 0.5, n_bars))
        frames.append(
            pd.DataFrame(
                {
                    "ticker": ticker,
                    "ts": ts,
                    "open": open_,
                    "high": high,
                    "low": low,
                    "close": close,
                    "volume": volume,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def stream(feature_set: FeatureSet, bars: pd.DataFrame) -> pd.DataFrame:
    """Feed bars in time order across tickers (as a live feed would) and collect the rows."""
    state = feature_set.streaming_state()
    rows = []
    for bar in bars.sort_values(["ts", "ticker"], kind="stable").to_dict("records"):
        rows.append({"ticker": bar["ticker"], "event_time": bar["ts"], **state.update(bar)})
    return pd.DataFrame(rows).sort_values(["ticker", "event_time"], kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    return random_bars(["AAA", "BBB", "CCC", "DDD"], 900, seed=7)


# --- parity --------------------------------------------------------------------------------------


@pytest.mark.parametrize("set_name", ["default", "extended"])
def test_stream_reproduces_batch_bit_for_bit(history: pd.DataFrame, set_name: str) -> None:
    feature_set = get_feature_set(set_name)
    batch = feature_set.compute_batch(history)
    streamed = stream(feature_set, history)

    assert batch["ticker"].tolist() == streamed["ticker"].tolist()
    assert (batch["event_time"].to_numpy() == streamed["event_time"].to_numpy()).all()
    for name in feature_set.names:
        b, s = batch[name].to_numpy(), streamed[name].to_numpy()
        assert np.array_equal(b, s, equal_nan=True), f"{name}: max diff {np.nanmax(np.abs(b - s))}"
    # Past the lookback every value is defined, so the comparison above compared numbers, not NaNs.
    warm = batch.groupby("ticker").cumcount() >= feature_set.lookback - 1
    assert batch.loc[warm, feature_set.names].notna().all().all()


@settings(max_examples=15, deadline=None)
@given(n_bars=st.integers(min_value=1, max_value=320), seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_parity_holds_for_any_history_length(n_bars: int, seed: int) -> None:
    feature_set = get_feature_set("extended")
    bars = random_bars(["X", "Y"], n_bars, seed)
    batch = feature_set.compute_batch(bars)[feature_set.names].to_numpy()
    streamed = stream(feature_set, bars)[feature_set.names].to_numpy()
    assert np.array_equal(batch, streamed, equal_nan=True)


# --- values against independent computations -----------------------------------------------------


def pandas_reference(bars: pd.DataFrame) -> pd.DataFrame:
    """Every extended feature for ONE ticker, written independently with pandas rolling windows."""
    close, volume = bars["close"], bars["volume"]
    returns = np.log(close).diff()
    changes = close.diff()
    gains = changes.clip(lower=0).rolling(14).mean()
    losses = (-changes).clip(lower=0).rolling(14).mean()
    hl = np.log(bars["high"] / bars["low"])
    co = np.log(bars["close"] / bars["open"])
    return pd.DataFrame(
        {
            "log_return_1": np.log(close / close.shift(1)),
            "log_return_5": np.log(close / close.shift(5)),
            "log_return_20": np.log(close / close.shift(20)),
            "realized_vol_20": returns.rolling(20).std() * ANNUALISE,
            "realized_vol_60": returns.rolling(60).std() * ANNUALISE,
            "momentum_60_5": np.log(close.shift(5) / close.shift(60)),
            "rsi_14": 100 * gains / (gains + losses),
            "close_zscore_20": (close - close.rolling(20).mean()) / close.rolling(20).std(),
            "vol_regime_20_252": returns.rolling(20).std() / returns.rolling(252).std(),
            "volume_zscore_20": (volume - volume.rolling(20).mean()) / volume.rolling(20).std(),
            "parkinson_vol_20": np.sqrt((hl**2).rolling(20).mean() / (4 * math.log(2))) * ANNUALISE,
            "garman_klass_vol_20": np.sqrt((0.5 * hl**2 - (2 * math.log(2) - 1) * co**2).rolling(20).mean())
            * ANNUALISE,
            "intrabar_range": hl,
        }
    )


def test_values_match_independent_pandas_computations(history: pd.DataFrame) -> None:
    feature_set = get_feature_set("extended")
    batch = feature_set.compute_batch(history)
    for ticker, bars in history.groupby("ticker"):
        expected = pandas_reference(bars.reset_index(drop=True))
        got = batch[batch["ticker"] == ticker].reset_index(drop=True)
        assert list(expected.columns) == feature_set.names
        for name in feature_set.names:
            np.testing.assert_allclose(
                got[name].to_numpy(), expected[name].to_numpy(), rtol=1e-9, atol=1e-12, err_msg=name
            )


def test_rsi_by_hand() -> None:
    closes = [10.0, 11.0, 10.5, 10.5, 12.0]  # changes +1, -0.5, 0, +1.5
    rsi_4 = FeatureSet("t", 1, [FeatureDefinition("rsi_4", ("close",), 5, DEFAULT_FEATURES[6].compute, "")])
    bars = pd.DataFrame({"ticker": "A", "ts": pd.date_range("2024-01-01", periods=5, tz="UTC"), "close": closes})
    assert rsi_4.compute_batch(bars)["rsi_4"].iloc[-1] == pytest.approx(100 * 2.5 / 3.0)


def test_flat_windows_get_their_documented_values() -> None:
    feature_set = get_feature_set("default")
    bars = pd.DataFrame(
        {
            "ticker": "FLAT",
            "ts": pd.date_range("2020-01-01", periods=300, tz="UTC"),
            "close": 100.0,
            "volume": 0.0,  # a source without volume reports 0
        }
    )
    last = feature_set.compute_batch(bars).iloc[-1]
    assert last["rsi_14"] == 50.0
    assert last["close_zscore_20"] == 0.0
    assert last["volume_zscore_20"] == 0.0
    assert last["vol_regime_20_252"] == 1.0
    assert last["realized_vol_20"] == 0.0


# --- batch behaviour ------------------------------------------------------------------------------


def test_batch_rows_warm_up_per_feature_window(history: pd.DataFrame) -> None:
    feature_set = get_feature_set("default")
    batch = feature_set.compute_batch(history)
    position = batch.groupby("ticker").cumcount()
    for feature in feature_set.features:
        assert batch.loc[position < feature.window - 1, feature.name].isna().all(), feature.name
        assert batch.loc[position >= feature.window - 1, feature.name].notna().all(), feature.name


def test_batch_ignores_input_order_and_other_tickers(history: pd.DataFrame) -> None:
    feature_set = get_feature_set("default")
    expected = feature_set.compute_batch(history)
    shuffled = history.sample(frac=1.0, random_state=3)
    pd.testing.assert_frame_equal(feature_set.compute_batch(shuffled), expected)
    alone = feature_set.compute_batch(history[history["ticker"] == "BBB"])
    pd.testing.assert_frame_equal(alone, expected[expected["ticker"] == "BBB"].reset_index(drop=True))


def test_batch_frame_matches_schema_and_uses_ns_utc(history: pd.DataFrame) -> None:
    feature_set = get_feature_set("extended")
    bars = history.assign(ts=history["ts"].dt.tz_convert("America/New_York").dt.as_unit("us"))
    frame = feature_set.compute_batch(bars)
    assert {c: str(t) for c, t in frame.dtypes.items()} == feature_set.schema()
    assert (frame["event_time"].to_numpy() == feature_set.compute_batch(history)["event_time"].to_numpy()).all()


def test_empty_bars_give_an_empty_frame_with_the_schema() -> None:
    feature_set = get_feature_set("default")
    frame = feature_set.compute_batch(random_bars(["A"], 0, seed=1))
    assert len(frame) == 0
    assert list(frame.columns) == list(feature_set.schema())


# --- bad input ------------------------------------------------------------------------------------


def test_missing_columns_are_named(history: pd.DataFrame) -> None:
    with pytest.raises(BarValidationError, match=r"missing column\(s\) \['volume'\] needed by feature set 'default'"):
        get_feature_set("default").compute_batch(history.drop(columns="volume"))
    # A subset that does not read volume does not need it.
    selected = get_feature_set("default").select(["log_return_1"])
    assert len(selected.compute_batch(history.drop(columns="volume"))) == len(history)


def test_naive_timestamps_are_rejected(history: pd.DataFrame) -> None:
    with pytest.raises(BarValidationError, match="tz-aware.*assume_tz"):
        get_feature_set("default").compute_batch(history.assign(ts=history["ts"].dt.tz_localize(None)))


@pytest.mark.parametrize(
    ("column", "value", "rule"),
    [
        ("close", np.nan, "close NaN or infinite"),
        ("volume", np.inf, "volume NaN or infinite"),
        ("close", 0.0, "close not positive"),
        ("volume", -1.0, "volume negative"),
        ("high", 1e-3, "high < low"),
    ],
)
def test_bad_values_name_rule_ticker_and_row(history: pd.DataFrame, column: str, value: float, rule: str) -> None:
    bars = history.copy()
    bars.loc[905, column] = value  # BBB's 6th bar
    ticker, ts = bars.loc[905, "ticker"], bars.loc[905, "ts"]
    with pytest.raises(BarValidationError, match=rule) as caught:
        get_feature_set("extended").compute_batch(bars)
    assert f"{ticker}@{ts} (index 905)" in str(caught.value)


def test_duplicate_bars_are_rejected(history: pd.DataFrame) -> None:
    bars = pd.concat([history, history.iloc[[10]]], ignore_index=True)
    with pytest.raises(BarValidationError, match=r"duplicate \(ticker, ts\): AAA@"):
        get_feature_set("default").compute_batch(bars)


def test_non_frames_and_non_numeric_columns_are_rejected(history: pd.DataFrame) -> None:
    with pytest.raises(TypeError, match="DataFrame, got list"):
        get_feature_set("default").compute_batch([1, 2])  # type: ignore[arg-type]
    with pytest.raises(BarValidationError, match="'close' holds values that are not numbers"):
        get_feature_set("default").compute_batch(history.assign(close="x"))


# --- streaming ------------------------------------------------------------------------------------


def bar(ticker: str, day: int, close: float = 100.0, **extra: object) -> dict[str, object]:
    return {
        "ticker": ticker,
        "ts": pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(days=day),
        "open": close,
        "high": close,
        "low": close,
        "close": close,
        "volume": 1000.0,
        **extra,
    }


def test_streaming_warm_up() -> None:
    feature_set = get_feature_set("default")
    state = feature_set.streaming_state()
    first = state.update(bar("A", 0))
    assert list(first) == feature_set.names
    assert all(math.isnan(v) for v in first.values())
    second = state.update(bar("A", 1, close=101.0))
    assert second["log_return_1"] == pytest.approx(math.log(1.01))
    assert math.isnan(second["log_return_5"])
    for day in range(2, feature_set.lookback - 1):
        state.update(bar("A", day, close=100.0 + day % 7))
    assert state.bars_seen("A") == feature_set.lookback - 1 and not state.is_warm("A")
    last = state.update(bar("A", feature_set.lookback, close=104.0))
    assert state.is_warm("A") and not any(math.isnan(v) for v in last.values())
    assert state.tickers == ["A"] and state.bars_seen("B") == 0


def test_streaming_rejects_time_going_backwards_and_keeps_state() -> None:
    feature_set = get_feature_set("default").select(["log_return_1"])
    state = feature_set.streaming_state()
    state.update(bar("A", 5, close=100.0))
    state.update(bar("B", 1, close=50.0))  # other tickers keep their own clocks
    with pytest.raises(BarValidationError, match=r"'A' at 2024-01-05.*not after its previous bar at 2024-01-06"):
        state.update(bar("A", 4, close=999.0))
    with pytest.raises(BarValidationError, match="not after"):
        state.update(bar("A", 5, close=999.0))
    assert state.bars_seen("A") == 1
    assert state.update(bar("A", 6, close=110.0))["log_return_1"] == pytest.approx(math.log(1.1))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"ts": pd.Timestamp("2024-01-02")}, "is naive"),
        ({"ts": 1704153600}, "is not a timestamp"),
        ({"close": float("nan")}, "close NaN or infinite"),
        ({"close": "abc"}, "not a number"),
        ({"volume": -5.0}, "volume negative"),
        ({"ticker": ""}, "non-empty string"),
    ],
)
def test_streaming_rejects_bad_bars_without_changing_state(bad: dict[str, object], message: str) -> None:
    state = get_feature_set("default").streaming_state()
    state.update(bar("A", 0))
    with pytest.raises(BarValidationError, match=message):
        state.update({**bar("A", 1), **bad})
    assert state.bars_seen("A") == 1


def test_streaming_names_missing_keys() -> None:
    state = get_feature_set("extended").streaming_state()
    incomplete = {k: v for k, v in bar("A", 0).items() if k not in ("high", "low")}
    with pytest.raises(BarValidationError, match=r"missing \['high', 'low'\]"):
        state.update(incomplete)


def test_streaming_accepts_aware_datetimes_and_iso_strings() -> None:
    state = get_feature_set("default").select(["log_return_1"]).streaming_state()
    state.update(bar("A", 0, ts=pd.Timestamp("2024-01-01T09:30", tz="America/New_York").to_pydatetime()))
    out = state.update(bar("A", 0, close=101.0, ts="2024-01-01T15:00:00Z"))
    assert out["log_return_1"] == pytest.approx(math.log(1.01))


# --- definitions and sets -------------------------------------------------------------------------


def test_get_feature_set() -> None:
    default, extended = get_feature_set("default"), get_feature_set("extended")
    assert default.names == [
        "log_return_1",
        "log_return_5",
        "log_return_20",
        "realized_vol_20",
        "realized_vol_60",
        "momentum_60_5",
        "rsi_14",
        "close_zscore_20",
        "vol_regime_20_252",
        "volume_zscore_20",
    ]
    assert extended.names[: len(default.names)] == default.names
    assert default.lookback == 253 and default.input_columns == ("close", "volume")
    assert extended.input_columns == ("open", "high", "low", "close", "volume")
    assert tuple(feature_set_names()) == ("default", "extended", "close_only", "ohlc")
    close_only, ohlc = get_feature_set("close_only"), get_feature_set("ohlc")
    assert close_only.input_columns == ("close",) and close_only.names == default.names[:-1]
    assert ohlc.input_columns == ("open", "high", "low", "close") and "volume_zscore_20" not in ohlc.names
    with pytest.raises(ValueError, match="no feature set 'fancy'; known: default, extended, close_only, ohlc"):
        get_feature_set("fancy")


def test_select() -> None:
    default = get_feature_set("default")
    picked = default.select(["rsi_14", "log_return_1"])
    assert picked.names == ["rsi_14", "log_return_1"] and picked.lookback == 15
    assert (picked.name, picked.version) == (default.name, default.version)
    assert default.select("rsi_14").names == ["rsi_14"]
    with pytest.raises(ValueError, match=r"no feature\(s\) \['nope', 'zip'\]; known: log_return_1, log_return_5"):
        default.select(["rsi_14", "nope", "zip"])
    with pytest.raises(ValueError, match=r"\['rsi_14'\] more than once"):
        default.select(["rsi_14", "rsi_14"])


def test_definition_arguments_are_validated() -> None:
    def last(close: np.ndarray) -> np.ndarray:
        return close[:, -1]

    with pytest.raises(ValueError, match="'bad name' must be a Python identifier"):
        FeatureDefinition("bad name", ("close",), 1, last, "")
    with pytest.raises(ValueError, match=r"unknown: \['vwap'\]"):
        FeatureDefinition("x", ("close", "vwap"), 1, last, "")
    with pytest.raises(ValueError, match="window=0 must be an integer >= 1"):
        FeatureDefinition("x", ("close",), 0, last, "")
    with pytest.raises(TypeError, match="not callable"):
        FeatureDefinition("x", ("close",), 1, "last", "")  # type: ignore[arg-type]
    scalar = FeatureDefinition("x", ("close",), 2, lambda close: close.sum(), "")
    with pytest.raises(ValueError, match=r"feature 'x' returned shape \(\) for 3 windows"):
        scalar.apply(np.ones((3, 2)))


def test_set_arguments_are_validated() -> None:
    feature = DEFAULT_FEATURES[0]
    with pytest.raises(ValueError, match=r"defines \['log_return_1'\] more than once"):
        FeatureSet("s", 1, [feature, feature])
    with pytest.raises(ValueError, match="has no features"):
        FeatureSet("s", 1, [])
    with pytest.raises(ValueError, match="version=0 must be an integer >= 1"):
        FeatureSet("s", 0, [feature])
    with pytest.raises(ValueError, match=r"\['ticker'\] are reserved"):
        FeatureSet("s", 1, [FeatureDefinition("ticker", ("close",), 1, lambda c: c[:, -1], "")])
    with pytest.raises(TypeError, match="not FeatureDefinition"):
        FeatureSet("s", 1, ["log_return_1"])  # type: ignore[list-item]


# --- batched streaming: update_many and warm_up ---------------------------------------------------


def stream_many(feature_set: FeatureSet, bars: pd.DataFrame) -> pd.DataFrame:
    """Feed each timestamp's bars of all tickers in one update_many call, as the bridge does."""
    state = feature_set.streaming_state()
    rows = []
    for _, group in bars.sort_values(["ts", "ticker"], kind="stable").groupby("ts", sort=True):
        records = group.to_dict("records")
        rows += [
            {"ticker": r["ticker"], "event_time": r["ts"], **values}
            for r, values in zip(records, state.update_many(records), strict=True)
        ]
    return pd.DataFrame(rows).sort_values(["ticker", "event_time"], kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("set_name", ["default", "extended"])
def test_update_many_reproduces_batch_bit_for_bit(history: pd.DataFrame, set_name: str) -> None:
    feature_set = get_feature_set(set_name)
    # Tickers start on different days, so one call mixes warm and cold tickers.
    staggered = history.loc[~((history["ticker"] == "CCC") & (history["ts"] < history["ts"].iloc[300]))]
    batch = feature_set.compute_batch(staggered)
    streamed = stream_many(feature_set, staggered)
    for name in feature_set.names:
        assert np.array_equal(batch[name].to_numpy(), streamed[name].to_numpy(), equal_nan=True), name


def test_update_many_refuses_the_whole_call_on_one_bad_bar() -> None:
    state = get_feature_set("default").streaming_state()
    state.update_many([bar("A", 0), bar("B", 0)])
    with pytest.raises(BarValidationError, match="close NaN"):
        state.update_many([bar("A", 1), bar("B", 1, close=float("nan"))])
    with pytest.raises(BarValidationError, match=r"several bars for \['A'\]"):
        state.update_many([bar("A", 1), bar("A", 2)])
    assert (state.bars_seen("A"), state.bars_seen("B")) == (1, 1)
    assert state.update_many([]) == []


_EDGE_VALUES = st.sampled_from([100.0, 99.0, 101.0, 5e-324, 0.0, -0.0, -1.0, math.nan, math.inf, -math.inf])


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # 100 / 5e-324: a valid, absurd price
@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries({c: _EDGE_VALUES for c in ("open", "high", "low", "close", "volume")}),
        min_size=1,
        max_size=4,
    )
)
def test_update_many_refuses_exactly_the_bars_update_refuses(values: list[dict[str, float]]) -> None:
    """update_many's quick test lets through exactly what the per-bar rules accept, and names the same rules."""
    bars = [bar(f"T{i}", 0, **v) for i, v in enumerate(values)]
    refusals = []
    for one in bars:
        try:
            get_feature_set("extended").streaming_state().update(one)
        except BarValidationError as exc:
            refusals.append(str(exc))
    state = get_feature_set("extended").streaming_state()
    if not refusals:
        assert len(state.update_many(bars)) == len(bars)
        return
    with pytest.raises(BarValidationError) as raised:
        state.update_many(bars)
    message = str(raised.value)
    rules = {rule for refusal in refusals for rule in refusal.split(": ", 1)[1].split("; ")}
    assert all(rule in message for rule in rules), (rules, message)
    assert state.tickers == []


@pytest.mark.parametrize("n_warm", [3, 253, 400])
def test_warm_up_leaves_the_state_update_would(history: pd.DataFrame, n_warm: int) -> None:
    feature_set = get_feature_set("extended")
    one = history.loc[history["ticker"] == "AAA"].reset_index(drop=True)
    updated, warmed = feature_set.streaming_state(), feature_set.streaming_state()
    for record in one.iloc[:n_warm].to_dict("records"):
        updated.update(record)
    warmed.warm_up(one.iloc[:n_warm])
    assert warmed.bars_seen("AAA") == n_warm
    for record in one.iloc[n_warm : n_warm + 30].to_dict("records"):
        a, b = updated.update(record), warmed.update(record)
        assert np.array_equal(np.array(list(a.values())), np.array(list(b.values())), equal_nan=True)


def test_warm_up_refuses_bad_history_and_keeps_state(history: pd.DataFrame) -> None:
    state = get_feature_set("default").streaming_state()
    one = history.loc[history["ticker"] == "AAA"].reset_index(drop=True)
    state.warm_up(one.iloc[:10])
    with pytest.raises(BarValidationError, match="strictly increasing"):
        state.warm_up(one.iloc[5:12])
    with pytest.raises(BarValidationError, match="one ticker"):
        state.warm_up(history.iloc[[0, 900]])
    bad = one.iloc[10:12].assign(close=[1.0, -1.0])
    with pytest.raises(BarValidationError, match="close not positive"):
        state.warm_up(bad)
    assert state.bars_seen("AAA") == 10
