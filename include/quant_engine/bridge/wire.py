"""yfinance's streaming wire format: JSON frames around a base64-encoded protobuf ``PricingData``.

Yahoo's streamer (``wss://streamer.finance.yahoo.com/?version=2``) and the replay server speak the
same format, so the feed client cannot tell them apart:

* the client sends ``{"subscribe": ["AAPL", ...]}`` and ``{"unsubscribe": [...]}``;
* the server sends ``{"type": "pricing", "message": "<base64 of a serialized PricingData>"}``,
  with ``PricingData`` the message generated from yfinance's own ``pricing.proto``.

``PricingData.price`` and its siblings are ``float32`` on the wire. Yahoo sends ``price_hint``, the
number of decimals a price is quoted in; :func:`decode_frame` rounds every price to it, so a cent
price (``price_hint=2``) below about 80,000 comes back as exactly the ``float64`` it was before
encoding. Decoding is on the feed's hot path and stays lean: one ``json.loads``, one base64
decode, one protobuf parse and a few comparisons.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable

from google.protobuf.message import DecodeError
from yfinance.pricing_pb2 import PricingData

from quant_engine.bridge.ticks import MarketHours, Tick

__all__ = [
    "FRAME_ERROR_REASONS",
    "MAX_PRICE_HINT",
    "FrameError",
    "decode_frame",
    "encode_tick",
    "parse_control",
    "subscribe_message",
    "unsubscribe_message",
]

#: Every ``FrameError.reason``, a short stable code the feed client counts drops by.
FRAME_ERROR_REASONS: tuple[str, ...] = (
    "bad_json",
    "bad_base64",
    "bad_protobuf",
    "missing_field",
    "bad_price",
    "bad_volume",
    "bad_time",
)
#: The most decimals a price may be quoted in; beyond this float32 carries no more digits anyway.
MAX_PRICE_HINT = 12
#: Plausible quote times in milliseconds: 1971-01-01 .. 2100-01-01 UTC. The floor also catches a
#: feed that sends seconds instead of milliseconds (any date before the year 2970 in seconds).
MIN_TIME_MS = 31_536_000_000
MAX_TIME_MS = 4_102_444_800_000

_SCALES: tuple[float, ...] = tuple(10.0**n for n in range(MAX_PRICE_HINT + 1))
_HOURS: tuple[MarketHours, ...] = tuple(MarketHours)
_INF = float("inf")
_FRAME_PREFIX = '{"type":"pricing","message":"'
_PREFIX_LENGTH = len(_FRAME_PREFIX)


class FrameError(ValueError):
    """A frame that does not decode to a valid tick.

    Parameters
    ----------
    reason : str
        One of :data:`FRAME_ERROR_REASONS`, stable for counting.
    detail : str
        What exactly was wrong, for logs.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode_tick(tick: Tick, *, price_hint: int = 2) -> str:
    """The JSON frame a yfinance-compatible server sends for ``tick``.

    Parameters
    ----------
    tick : Tick
        The quote to send.
    price_hint : int
        Decimals the prices are quoted in; the receiver rounds to them (see :func:`decode_frame`).

    Returns
    -------
    str
        ``{"type":"pricing","message":"<base64>"}``.

    Examples
    --------
    >>> tick = Tick("SYN00", 101.37, 1_709_586_000_000, 1200, 100.5, 101.9, 100.1)
    >>> decode_frame(encode_tick(tick)) == tick
    True
    """
    if isinstance(price_hint, bool) or not isinstance(price_hint, int) or not 0 <= price_hint <= MAX_PRICE_HINT:
        raise ValueError(f"price_hint={price_hint!r} must be a whole number of decimals from 0 to {MAX_PRICE_HINT}")
    message = PricingData(
        id=tick.ticker,
        price=tick.price,
        time=tick.time_ms,
        exchange=tick.exchange,
        market_hours=int(tick.market_hours),
        day_volume=tick.day_volume,
        day_high=tick.day_high,
        day_low=tick.day_low,
        open_price=tick.open_price,
        price_hint=price_hint,
    )
    return _FRAME_PREFIX + base64.b64encode(message.SerializeToString()).decode("ascii") + '"}'


def decode_frame(frame: str | bytes) -> Tick:
    """The tick carried by one server frame, or :class:`FrameError` saying why there is none.

    Prices are rounded to the frame's ``price_hint`` decimals (a hint of 0 means Yahoo gave none:
    the ``float32`` value is kept as it is).

    Raises
    ------
    FrameError
        ``bad_json`` (not JSON), ``missing_field`` (no ``message``, no ticker or no time),
        ``bad_base64``, ``bad_protobuf`` (unparsable, or an unknown ``market_hours``),
        ``bad_price`` (NaN, infinite or <= 0, ``day_low > day_high``, or an impossible
        ``price_hint``), ``bad_volume`` (negative) or ``bad_time`` (outside 1971..2100 in ms).
    """
    if type(frame) is str and frame.startswith(_FRAME_PREFIX) and frame.endswith('"}'):
        # The servers' own layout, read without a JSON parser; a quote or backslash inside the
        # slice cannot be base64, so the strict decode below refuses any frame this misreads.
        encoded = frame[_PREFIX_LENGTH:-2]
    else:
        encoded = _message_of(frame)
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FrameError("bad_base64", f"message is not base64: {exc}") from None
    try:
        data = PricingData.FromString(raw)
    except DecodeError as exc:
        raise FrameError("bad_protobuf", f"message is not a PricingData: {exc}") from None
    return _tick_from(data)


def _message_of(frame: str | bytes) -> str:
    """The ``message`` string of a frame in any JSON layout (other key order, spaces, bytes)."""
    try:
        envelope = json.loads(frame)
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise FrameError("bad_json", f"frame is not JSON: {exc}") from None
    if type(envelope) is not dict:
        raise FrameError("missing_field", f"frame is a JSON {type(envelope).__name__}, not an object with 'message'")
    encoded = envelope.get("message")
    if type(encoded) is not str or not encoded:
        raise FrameError("missing_field", "frame has no 'message' string")
    return encoded


def _tick_from(data: PricingData) -> Tick:
    ticker = data.id
    if not ticker:
        raise FrameError("missing_field", "PricingData has no id (ticker)")
    time_ms = data.time
    if not time_ms:
        raise FrameError("missing_field", f"{ticker}: PricingData has no time")
    if not MIN_TIME_MS <= time_ms <= MAX_TIME_MS:
        raise FrameError("bad_time", f"{ticker}: time={time_ms} ms is outside 1971..2100")
    hours = data.market_hours
    if not 0 <= hours < len(_HOURS):
        raise FrameError("bad_protobuf", f"{ticker}: market_hours={hours} is not a known part of the day")
    volume = data.day_volume
    if volume < 0:
        raise FrameError("bad_volume", f"{ticker}: day_volume={volume} is negative")
    hint = data.price_hint
    if not 0 <= hint <= MAX_PRICE_HINT:
        raise FrameError("bad_price", f"{ticker}: price_hint={hint} is not 0..{MAX_PRICE_HINT} decimals")
    price, open_price, high, low = data.price, data.open_price, data.day_high, data.day_low
    # Written as ``0 < x < inf`` so NaN (which fails every comparison) is refused too.
    if not (0.0 < price < _INF and 0.0 < open_price < _INF and 0.0 < high < _INF and 0.0 < low < _INF):
        raise FrameError(
            "bad_price",
            f"{ticker}: prices must be finite and > 0, got price={price} open={open_price} high={high} low={low}",
        )
    if low > high:
        raise FrameError("bad_price", f"{ticker}: day_low={low} is above day_high={high}")
    if hint:
        scale = _SCALES[hint]
        price = round(price * scale) / scale
        open_price = round(open_price * scale) / scale
        high = round(high * scale) / scale
        low = round(low * scale) / scale
    return Tick(ticker, price, time_ms, volume, open_price, high, low, _HOURS[hours], data.exchange)


def subscribe_message(tickers: Iterable[str]) -> str:
    """The client's ``{"subscribe": [...]}`` frame."""
    return json.dumps({"subscribe": _ticker_list(tickers)})


def unsubscribe_message(tickers: Iterable[str]) -> str:
    """The client's ``{"unsubscribe": [...]}`` frame."""
    return json.dumps({"unsubscribe": _ticker_list(tickers)})


def _ticker_list(tickers: Iterable[str]) -> list[str]:
    if isinstance(tickers, str):
        raise TypeError(f"tickers={tickers!r} must be a sequence of tickers, not one string")
    names = list(tickers)
    bad = [t for t in names if not isinstance(t, str) or not t]
    if bad:
        raise ValueError(f"tickers must be non-empty strings, got {bad}")
    return names


def parse_control(frame: str | bytes) -> dict[str, tuple[str, ...]]:
    """A client's subscribe / unsubscribe frame as ``{"subscribe": (...), "unsubscribe": (...)}``.

    Raises
    ------
    FrameError
        ``bad_json`` when the frame is not JSON, ``missing_field`` when it holds neither key or a
        key's value is not a list of non-empty strings.
    """
    try:
        payload = json.loads(frame)
    except (ValueError, TypeError) as exc:
        raise FrameError("bad_json", f"control frame is not JSON: {exc}") from None
    if type(payload) is not dict or not ({"subscribe", "unsubscribe"} & payload.keys()):
        raise FrameError("missing_field", "control frame holds neither 'subscribe' nor 'unsubscribe'")
    parsed: dict[str, tuple[str, ...]] = {}
    for key in ("subscribe", "unsubscribe"):
        names = payload.get(key, [])
        if isinstance(names, str):  # yfinance sends lists, a lone name is read as a list of one
            names = [names]
        if type(names) is not list or not all(type(n) is str and n for n in names):
            raise FrameError("missing_field", f"control frame's {key!r} is not a list of tickers: {names!r}")
        parsed[key] = tuple(names)
    return parsed
