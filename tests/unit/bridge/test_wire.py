"""yfinance's wire format: exact round trips of real bars' prices, and one reason per kind of bad frame."""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest
from yfinance.live import BaseWebSocket
from yfinance.pricing_pb2 import PricingData

from quant_engine.bridge.ticks import MarketHours, Tick
from quant_engine.bridge.wire import (
    FRAME_ERROR_REASONS,
    FrameError,
    decode_frame,
    encode_tick,
    parse_control,
    subscribe_message,
    unsubscribe_message,
)
from quant_engine.data.synthetic import SyntheticMarket

TICK = Tick("SYN03", 101.37, 1_709_586_000_000, 1_200, 100.5, 101.9, 100.1, MarketHours.POST_MARKET, "SYN")


def frame_of(**fields) -> str:
    message = base64.b64encode(PricingData(**fields).SerializeToString()).decode()
    return json.dumps({"type": "pricing", "message": message})


def valid_fields(**overrides) -> dict:
    fields = dict(
        id="SYN03",
        price=101.37,
        time=1_709_586_000_000,
        day_volume=5,
        day_high=102.0,
        day_low=100.0,
        open_price=101.0,
        market_hours=1,
        price_hint=2,
    )
    return {**fields, **overrides}


def test_every_price_of_real_synthetic_bars_round_trips_exactly() -> None:
    bars = SyntheticMarket(n_tickers=20, seed=7).fetch(None, "2015-01-01", "2016-12-31")
    prices = bars[["open", "high", "low", "close"]].to_numpy()
    assert prices.max() > 500  # the market spans cents from a few dollars to a few thousand
    for row in bars.itertuples(index=False):
        tick = Tick(row.ticker, row.close, int(row.ts.value // 1_000_000), int(row.volume), row.open, row.high, row.low)
        back = decode_frame(encode_tick(tick))
        assert back == tick, (tick, back)


def test_cent_prices_up_to_16k_round_trip_bit_for_bit() -> None:
    cents = np.random.default_rng(1).integers(1, 1_600_000, 5_000)
    for price in np.round(cents / 100, 2):
        tick = Tick("X", float(price), 1_709_586_000_000, 0, float(price), float(price), float(price))
        assert decode_frame(encode_tick(tick)).price == float(price)


def test_the_frame_is_what_yfinance_itself_decodes() -> None:
    decoded = BaseWebSocket()._decode_message(json.loads(encode_tick(TICK))["message"])
    assert decoded["id"] == "SYN03" and int(decoded["time"]) == TICK.time_ms
    assert decoded["market_hours"] == 2 and int(decoded["day_volume"]) == 1_200
    assert math.isclose(decoded["price"], 101.37, rel_tol=1e-6)


def test_other_json_layouts_and_bytes_decode_the_same() -> None:
    message = json.loads(encode_tick(TICK))["message"]
    assert decode_frame(json.dumps({"message": message, "type": "pricing"}, indent=1)) == TICK
    assert decode_frame(encode_tick(TICK).encode()) == TICK


def test_price_hint_zero_keeps_the_float32_value() -> None:
    tick = decode_frame(frame_of(**valid_fields(price_hint=0, price=0.1)))
    assert tick.price == float(np.float32(0.1)) != 0.1


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("not json", "bad_json"),
        (b"\xff\xfe\x00garbage", "bad_json"),
        ('{"type": "pricing"', "bad_json"),
        ("[1, 2]", "missing_field"),
        ('{"type": "pricing"}', "missing_field"),
        ('{"type": "pricing", "message": 12}', "missing_field"),
        ('{"type":"pricing","message":"@@not base64@@"}', "bad_base64"),
        ('{"type": "pricing", "message": "abc"}', "bad_base64"),
        (json.dumps({"message": base64.b64encode(b"\x0a\xff\xff\xff").decode()}), "bad_protobuf"),
        (frame_of(**valid_fields(market_hours=9)), "bad_protobuf"),
        (frame_of(**valid_fields(id="")), "missing_field"),
        (frame_of(**valid_fields(time=0)), "missing_field"),
        (frame_of(**valid_fields(price=float("nan"))), "bad_price"),
        (frame_of(**valid_fields(price=float("inf"))), "bad_price"),
        (frame_of(**valid_fields(price=-3.0)), "bad_price"),
        (frame_of(**valid_fields(price=0.0)), "bad_price"),
        (frame_of(**valid_fields(day_low=float("nan"))), "bad_price"),
        (frame_of(**valid_fields(open_price=-1.0)), "bad_price"),
        (frame_of(**valid_fields(day_low=103.0)), "bad_price"),
        (frame_of(**valid_fields(price_hint=40)), "bad_price"),
        (frame_of(**valid_fields(day_volume=-1)), "bad_volume"),
        (frame_of(**valid_fields(time=1_709_586_000)), "bad_time"),  # seconds, not milliseconds
        (frame_of(**valid_fields(time=-5)), "bad_time"),
        (frame_of(**valid_fields(time=2**62)), "bad_time"),
    ],
)
def test_each_malformed_kind_has_its_reason(frame, reason) -> None:
    with pytest.raises(FrameError) as caught:
        decode_frame(frame)
    assert caught.value.reason == reason
    assert reason in FRAME_ERROR_REASONS and caught.value.detail


def test_encode_refuses_an_impossible_price_hint() -> None:
    with pytest.raises(ValueError, match="price_hint=-1"):
        encode_tick(TICK, price_hint=-1)


def test_control_frames_round_trip_and_bad_ones_have_reasons() -> None:
    assert parse_control(subscribe_message(["A", "B"])) == {"subscribe": ("A", "B"), "unsubscribe": ()}
    assert parse_control(unsubscribe_message(["A"])) == {"subscribe": (), "unsubscribe": ("A",)}
    assert parse_control('{"subscribe": "A"}')["subscribe"] == ("A",)
    for frame, reason in [
        ("{", "bad_json"),
        ('{"hello": 1}', "missing_field"),
        ('{"subscribe": [1]}', "missing_field"),
    ]:
        with pytest.raises(FrameError) as caught:
            parse_control(frame)
        assert caught.value.reason == reason
    with pytest.raises(TypeError, match="not one string"):
        subscribe_message("AAPL")
