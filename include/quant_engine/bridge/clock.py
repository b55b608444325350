"""The reference clock: what time it is for the feed, judged without trusting the feed's own stamps.

One frame stamped 2099 passes every check a frame can make on its own, and would then stay a
ticker's newest time for good (its real ticks look like time going backwards) and move the market
clock to 2099. And a session whose closing tick never comes must still close some time. Both need
a clock the ticks are measured against:

* **wall**: the machine's clock, the reference of a live feed (Yahoo's streamer);
* **replay**: the replay feed's clock (``quant-engine feed serve``), read from its ``GET /health``
  (``replay_time``, ``position_ms``, ``speed``): a replay of 2021 running today is on time.

Two readings come out, each on the safe side of what the bridge cannot know exactly (how long ago
the replay answered, whether it skips nights):

* :meth:`ReferenceClock.latest_ms`: the newest tick time the feed may send now, the reference plus
  ``max_skew_s``. For a replay, its polled time moved by ``(poll age + skew) x speed`` of *trading*
  time (:meth:`~quant_engine.calendars.MarketCalendar.advance_trading_time`): never behind the
  replay, whether it skips nights or lives through them. A tick after it is dropped as
  ``future_time`` before it touches any per-ticker state.
* :meth:`ReferenceClock.passed_ms`: an instant the reference had certainly passed ``grace_s`` wall
  seconds ago; the service closes open bars whose close is at or before it. For a replay, its
  polled time moved by the poll age in calendar time (never faster than the replay can have
  moved) and back by ``grace_s x speed`` of trading time. The grace is in wall seconds, so a
  replay at any speed gives a closing tick as long as a live feed does to cross the network.

``mode="auto"`` takes the replay's clock when the feed's ``/health`` answers with a replay time
no later than the wall clock allows, and the wall clock once the feed's ticks come within the skew
of it (a live feed). Until either is known, ticks are checked against the wall clock (a historical
replay is behind it anyway) and nothing is closed by the clock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from quant_engine.calendars import MarketCalendar

__all__ = ["CLOCK_MODES", "DEFAULT_MAX_SKEW_S", "ReferenceClock", "ReplayReading", "health_url"]

log = logging.getLogger(__name__)

CLOCK_MODES: tuple[str, ...] = ("auto", "wall", "replay")
#: How far ahead of the reference a tick may be, seconds, unless configured otherwise.
DEFAULT_MAX_SKEW_S = 60.0
#: The replay bound is computed this far ahead and reused until then: once per batch of ticks, not per tick.
_BOUND_REUSE_S = 0.05
#: Largest ``GET /health`` answer read: a hostile feed cannot make the bridge read more.
_MAX_HEALTH_BYTES = 65_536
_NS_PER_MS = 1_000_000


def health_url(feed_url: str) -> str:
    """The HTTP ``/health`` address next to a ``ws://`` / ``wss://`` feed.

    Examples
    --------
    >>> health_url("ws://127.0.0.1:8765"), health_url("wss://streamer.example/?version=2")
    ('http://127.0.0.1:8765/health', 'https://streamer.example/health')
    """
    parts = urlsplit(feed_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"feed_url={feed_url!r} must be a ws:// or wss:// URL")
    return urlunsplit((scheme, parts.netloc, "/health", "", ""))


@dataclass(frozen=True)
class ReplayReading:
    """One answer of a replay feed's ``/health``, and when it was asked and answered (wall seconds)."""

    replay_ms: int  # the exchange time the replay had reached
    position_ms: float  # its replay position: negative while it has not started
    speed: float  # market seconds per wall second
    finished: bool  # the replay played its last tick: its clock stands still
    asked_at: float
    answered_at: float

    @classmethod
    def from_health(cls, payload: Any, asked_at: float, answered_at: float) -> ReplayReading | None:
        """The reading in a ``/health`` answer; None when it is not a replay feed's."""
        if not isinstance(payload, dict) or not isinstance(payload.get("replay_time"), str):
            return None
        try:
            replay = datetime.fromisoformat(payload["replay_time"])
            speed = float(payload["speed"])
            position = float(payload.get("position_ms", 0.0))
        except (KeyError, TypeError, ValueError):
            return None
        if replay.tzinfo is None or not (math.isfinite(speed) and speed > 0 and math.isfinite(position)):
            return None
        return cls(
            int(replay.timestamp() * 1000), position, speed, payload.get("status") == "finished", asked_at, answered_at
        )


class NotAReplay(Exception):
    """The feed answered ``/health``, but not as a replay feed does."""


def ask_health(url: str, timeout_s: float) -> Any:
    """The JSON a feed's ``/health`` answers (blocking: run it in a thread).

    Raises
    ------
    NotAReplay
        The feed answered, with an HTTP error or something that is not JSON.
    OSError
        The feed could not be reached (refused, timed out, out of file descriptors).
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - the configured feed
            body = response.read(_MAX_HEALTH_BYTES)
    except urllib.error.HTTPError as exc:
        raise NotAReplay(f"HTTP {exc.code}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise NotAReplay("not JSON") from None


class ReferenceClock:
    """The clock ticks are measured against: the wall clock, or a replay feed's (see the module docstring).

    Parameters
    ----------
    mode : {"auto", "wall", "replay"}
    calendar : MarketCalendar
        The feature group's calendar: trading time is counted on it.
    max_skew_s : float
        How far ahead of the reference a tick may be, wall seconds (for a replay: times its speed).
    health_url : str, optional
        The feed's ``/health``; without it only the wall clock can be known.
    poll_s : float
        How often :meth:`run` asks the feed for its clock.
    wall : callable
        Unix seconds (tests pass their own).
    """

    def __init__(
        self,
        mode: str,
        calendar: MarketCalendar,
        *,
        max_skew_s: float = DEFAULT_MAX_SKEW_S,
        health_url: str | None = None,
        poll_s: float = 1.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if mode not in CLOCK_MODES:
            raise ValueError(f"mode={mode!r} must be one of {', '.join(CLOCK_MODES)}")
        for name, value in (("max_skew_s", max_skew_s), ("poll_s", poll_s)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value!r} must be a number of seconds > 0")
        self.mode = mode
        self.calendar = calendar
        self.max_skew_s = float(max_skew_s)
        self.health_url = health_url
        self.poll_s = float(poll_s)
        self._wall = wall
        self.kind: str | None = "wall" if mode == "wall" else None
        self.reading: ReplayReading | None = None
        self.polls = 0
        self.poll_failures = 0
        self._bound_ms = -math.inf
        self._bound_until = -math.inf

    def describe(self) -> dict[str, Any]:
        """For ``/health``: which clock rules, and the replay's last reading."""
        out: dict[str, Any] = {"mode": self.mode, "clock": self.kind or "undecided", "max_skew_s": self.max_skew_s}
        if self.reading is not None:
            out.update(
                replay_time_ms=self.reading.replay_ms,
                replay_speed=self.reading.speed,
                polled_seconds_ago=round(self._wall() - self.reading.answered_at, 3),
            )
        return out

    # --- the two readings ----------------------------------------------------------------------

    def latest_ms(self) -> float:
        """The newest tick time (ms) the feed may send now; later ticks are ``future_time``."""
        if self.kind != "replay":
            return (self._wall() + self.max_skew_s) * 1000.0
        now = self._wall()
        if now > self._bound_until:
            self._bound_until = now + _BOUND_REUSE_S
            reading = self._replay_reading()
            ahead_s = self._bound_until - reading.asked_at + self.max_skew_s
            self._bound_ms = self._move(reading.replay_ms, ahead_s * reading.speed)
        return self._bound_ms

    def passed_ms(self, grace_s: float) -> int | None:
        """An instant (ms) the reference had certainly passed ``grace_s`` wall seconds ago; None while unknown."""
        now = self._wall()
        if self.kind == "wall":
            return int((now - grace_s) * 1000)
        if self.kind != "replay":
            return None
        reading = self._replay_reading()
        running_ms = (now - reading.answered_at) * reading.speed * 1000.0 + min(reading.position_ms, 0.0)
        reached_ms = reading.replay_ms + (0 if reading.finished else max(0, int(running_ms)))
        return self._move(reached_ms, -grace_s * reading.speed)

    def _replay_reading(self) -> ReplayReading:
        assert self.reading is not None, "take() sets kind to 'replay' together with the reading"
        return self.reading

    def _move(self, t_ms: int, trading_s: float) -> int:
        moved = self.calendar.advance_trading_time(int(t_ms) * _NS_PER_MS, int(trading_s * 1e9))
        return moved // _NS_PER_MS

    # --- learning which clock rules ------------------------------------------------------------

    def observe(self, tick_time_ms: int) -> None:
        """In ``auto``, a feed whose ticks are within the skew of the wall clock is live: the wall clock rules."""
        if (
            self.mode == "auto"
            and self.kind is None
            and tick_time_ms >= 0
            and abs(tick_time_ms / 1000.0 - self._wall()) <= self.max_skew_s
        ):
            self.kind = "wall"
            log.info("reference clock: the wall clock (the feed's ticks are live)")

    def take(self, reading: ReplayReading) -> None:
        """Use a replay feed's reading (``auto`` refuses one ahead of the wall clock: a replay is never ahead)."""
        if self.mode == "wall":
            return
        if self.mode == "auto" and reading.replay_ms / 1000.0 > reading.answered_at + self.max_skew_s:
            if self.kind is None:
                log.warning("the feed's /health claims a replay time ahead of the wall clock; not trusted")
            return
        if self.kind != "replay":
            log.info("reference clock: the replay feed's (speed %g)", reading.speed)
        self.kind, self.reading = "replay", reading
        self._bound_until = -math.inf

    async def run(self) -> None:
        """Poll the feed's ``/health`` every ``poll_s`` for as long as it can tell anything (run as a task)."""
        if self.mode == "wall" or self.health_url is None:
            return
        unreachable_logged = False
        while self.kind != "wall":
            asked = self._wall()
            try:
                payload = await asyncio.to_thread(ask_health, self.health_url, min(self.poll_s, 5.0))
            except NotAReplay:
                payload = None
            except OSError as exc:
                self.poll_failures += 1
                if not unreachable_logged:
                    log.info(
                        "reference clock: %s unreachable (%s); asking every %g s", self.health_url, exc, self.poll_s
                    )
                    unreachable_logged = True
                await asyncio.sleep(self.poll_s)
                continue
            self.polls += 1
            unreachable_logged = False
            reading = ReplayReading.from_health(payload, asked, self._wall())
            if reading is not None:
                self.take(reading)
            elif self.mode == "auto":
                log.info(
                    "reference clock: %s is not a replay feed's; the wall clock rules once the feed's ticks are live",
                    self.health_url,
                )
                return
            elif self.polls == 1:
                log.warning("QE_BRIDGE_CLOCK=replay, but %s does not answer as a replay feed", self.health_url)
            await asyncio.sleep(self.poll_s)
