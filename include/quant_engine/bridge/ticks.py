"""One decoded quote from a yfinance-style feed: the unit every part of the bridge hands on.

The fields are those of yfinance's ``PricingData`` message that a bar needs. ``day_*`` and
``open_price`` are the session's running values as the exchange reports them, so a daily bar can be
rebuilt from the last tick of a session even when earlier ticks were lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class MarketHours(IntEnum):
    """``PricingData.market_hours``: which part of the trading day a quote belongs to."""

    PRE_MARKET = 0
    REGULAR_MARKET = 1
    POST_MARKET = 2
    EXTENDED_HOURS_MARKET = 3


@dataclass(frozen=True, slots=True)
class Tick:
    """A validated quote for one ticker."""

    ticker: str
    price: float
    time_ms: int  # exchange time of the quote, milliseconds since the Unix epoch (UTC)
    day_volume: int  # shares traded in the session so far
    open_price: float
    day_high: float
    day_low: float
    market_hours: MarketHours = MarketHours.REGULAR_MARKET
    exchange: str = ""
