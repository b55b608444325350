"""The bounded buffer between tick ingest and processing, with an explicit overload policy.

Ingest must never wait on processing (the feed would back up into the socket and go stale), and
memory must not grow without bound under a burst. Two policies, chosen up front:

* ``coalesce``: a tick of a ticker that already has a tick waiting *for the same session* replaces
  it in place. Exact for daily bars, because a tick carries its session's running values (open,
  high, low, volume, last price), so the newest tick says everything the older one did. A
  ``POST_MARKET`` tick (it closes the session's bar) is never replaced; it may replace a waiting
  regular tick of its session. The buffer then holds about one tick per ticker and session.
  Intraday bars need every tick's price (their highs and lows), so coalescing is refused for them.
* ``drop_oldest``: every tick is kept in order; when full, the oldest waiting tick is dropped.

Under either policy a tick that finds the buffer full (and cannot be coalesced) pushes out the
oldest waiting one, so the buffer never holds more than ``capacity`` ticks. Everything is counted.
"""

from __future__ import annotations

import asyncio
from collections import deque

from quant_engine.bridge.bars import BarClock
from quant_engine.bridge.ticks import MarketHours, Tick

__all__ = ["OVERLOAD_POLICIES", "TickBuffer"]

OVERLOAD_POLICIES: tuple[str, ...] = ("coalesce", "drop_oldest")


class _Slot:
    """A place in the queue; coalescing swaps its tick without moving it."""

    __slots__ = ("tick", "session")

    def __init__(self, tick: Tick, session: int) -> None:
        self.tick = tick
        self.session = session


class TickBuffer:
    """A bounded FIFO of ticks for one consumer.

    Parameters
    ----------
    capacity : int
        Most ticks held at once, >= 1.
    policy : {"coalesce", "drop_oldest"}
        What to do with a tick while others wait; see the module docstring.
    clock : BarClock, optional
        The bars being built (default: NYSE daily): which session a tick belongs to.

    Examples
    --------
    >>> from quant_engine.bridge.ticks import Tick
    >>> buffer = TickBuffer(8, "coalesce")
    >>> for price in (10.0, 10.5, 11.0):
    ...     buffer.put(Tick("A", price, 1_704_207_600_000, 1, 10.0, 11.0, 10.0))  # 2024-01-02 15:00 UTC
    >>> [t.price for t in buffer.drain()], buffer.counters()
    ([11.0], {'accepted': 3, 'coalesced': 2, 'dropped': 0, 'depth': 0, 'high_water': 1})
    """

    def __init__(self, capacity: int, policy: str = "coalesce", *, clock: BarClock | None = None) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity={capacity!r} must be an integer >= 1")
        if policy not in OVERLOAD_POLICIES:
            raise ValueError(f"policy={policy!r} is not an overload policy; use one of {', '.join(OVERLOAD_POLICIES)}")
        self.clock = clock or BarClock()
        if policy == "coalesce" and not self.clock.size.is_daily:
            raise ValueError(
                f"policy='coalesce' is exact for daily bars only, not {self.clock.market_time.describe()}: "
                "an intraday bar needs every tick's price; use drop_oldest"
            )
        self.capacity = capacity
        self.policy = policy
        self._queue: deque[_Slot] = deque()
        self._latest: dict[str, _Slot] = {}  # coalesce: the ticker's newest waiting slot
        self._ready = asyncio.Event()
        self.accepted = self.coalesced = self.dropped = self.high_water = 0

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, tick: Tick) -> None:
        """Add a tick without ever waiting; coalesce or drop as the policy says."""
        self.accepted += 1
        session = -1
        if self.policy == "coalesce":
            bar = self.clock.locate(tick.time_ms)
            session = -1 if bar is None else bar.session
            waiting = self._latest.get(tick.ticker)
            if (
                waiting is not None
                and waiting.tick.market_hours != MarketHours.POST_MARKET
                and session >= 0
                and waiting.session == session
            ):
                waiting.tick = tick
                self.coalesced += 1
                return
        if len(self._queue) >= self.capacity:
            self._forget(self._queue.popleft())
            self.dropped += 1
        slot = _Slot(tick, session)
        self._queue.append(slot)
        if self.policy == "coalesce":
            self._latest[tick.ticker] = slot
        self.high_water = max(self.high_water, len(self._queue))
        self._ready.set()

    def get_nowait(self) -> Tick | None:
        """The oldest waiting tick, or None when empty."""
        if not self._queue:
            return None
        slot = self._queue.popleft()
        self._forget(slot)
        if not self._queue:
            self._ready.clear()
        return slot.tick

    def drain(self, limit: int | None = None) -> list[Tick]:
        """Up to ``limit`` waiting ticks (all by default), oldest first."""
        out: list[Tick] = []
        while self._queue and (limit is None or len(out) < limit):
            out.append(self.get_nowait())  # type: ignore[arg-type]
        return out

    async def wait(self) -> None:
        """Return once at least one tick is waiting."""
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()

    def counters(self) -> dict[str, int]:
        """``accepted``, ``coalesced``, ``dropped``, current ``depth`` and ``high_water``."""
        return {
            "accepted": self.accepted,
            "coalesced": self.coalesced,
            "dropped": self.dropped,
            "depth": len(self._queue),
            "high_water": self.high_water,
        }

    def _forget(self, slot: _Slot) -> None:
        if self._latest.get(slot.tick.ticker) is slot:
            del self._latest[slot.tick.ticker]
