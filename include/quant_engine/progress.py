"""Progress of long counted loops: a redrawn bar on a terminal, plain timestamped lines in logs.

A WFO run fits hundreds of models and a training run thousands of rounds; without progress a
person cannot tell a slow run from a stuck one. On a terminal the bar redraws in place; anywhere
else (an Airflow task log, a file, CI) a redrawn bar is noise, so the same loop writes one plain
line at most every few seconds and at the end, which is what a task log should hold.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

__all__ = ["Progress"]

BAR_WIDTH = 30


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Count steps of a loop of known length and show how far it is.

    Parameters
    ----------
    total : int
        Steps the loop will take (>= 0).
    label : str
        What is counted, e.g. ``"WFO splits"``.
    stream : text stream, optional
        Where to write; standard error by default (task logs capture it).
    every_s : float
        Plain-line mode: at most one line per ``every_s`` seconds, besides the first and the last.
    tty : bool, optional
        Force the bar (True) or plain lines (False); by default, whether ``stream`` is a terminal.
    clock : callable
        Seconds, monotonic; injectable for tests.

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> with Progress(2, "splits", stream=out, tty=False) as progress:
    ...     progress.advance()
    ...     progress.advance()
    >>> print(out.getvalue().splitlines()[-1].split(" elapsed")[0])
    splits: 2/2 (100%)
    """

    def __init__(
        self,
        total: int,
        label: str,
        *,
        stream: TextIO | None = None,
        every_s: float = 5.0,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ValueError(f"total={total!r} must be a whole number of steps >= 0")
        if not every_s >= 0:
            raise ValueError(f"every_s={every_s!r} must be >= 0 seconds")
        self.total = total
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.clock = clock
        self.done = 0
        self._started = clock()
        self._last_line: float | None = None

    def __enter__(self) -> Progress:
        self._show(force=True)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def advance(self, steps: int = 1) -> None:
        """Count ``steps`` more finished steps (never past ``total``)."""
        if steps < 0:
            raise ValueError(f"steps={steps!r}: progress only goes forward")
        self.done = min(self.total, self.done + steps)
        self._show(force=self.done == self.total)

    def close(self) -> None:
        """End the bar's line on a terminal; nothing more to write in plain mode."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def line(self) -> str:
        """The current state in words: count, share, elapsed time and, once measurable, time left."""
        elapsed = self.clock() - self._started
        share = self.done / self.total if self.total else 1.0
        text = f"{self.label}: {self.done}/{self.total} ({share:.0%}) elapsed {_duration(elapsed)}"
        if 0 < self.done < self.total:
            text += f", about {_duration(elapsed / self.done * (self.total - self.done))} left"
        return text

    def _show(self, *, force: bool) -> None:
        now = self.clock()
        if self.tty:
            filled = int(BAR_WIDTH * (self.done / self.total if self.total else 1.0))
            self.stream.write(f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.line()}\033[K")
        elif force or self._last_line is None or now - self._last_line >= self.every_s:
            self.stream.write(self.line() + "\n")
            self._last_line = now
        else:
            return
        self.stream.flush()
