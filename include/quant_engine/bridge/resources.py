"""The process under pressure: its file-descriptor limit, and errors that reach the event loop.

Every connection costs a file descriptor, and so do the files the bridge opens (stored bars, the
prediction log, a new champion), its feed connection and its threads. A connection cap above the
process's ``RLIMIT_NOFILE`` lets a crowd of idle sockets starve those opens (``EMFILE``), so at
start :func:`fit_file_limit` raises the soft limit toward the hard one, or lowers the cap to what
fits and says so.

Errors no task awaits (asyncio's accept loop running out of descriptors, a callback failing) go to
the loop's exception handler, which by default writes a traceback for each: under a connection
flood, tens of megabytes a minute. :class:`LoopErrors` counts them by kind and logs the first of
each kind, then at most one line per ``every_s`` saying how many came since.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

__all__ = ["FD_RESERVE", "LoopErrors", "fit_file_limit"]

log = logging.getLogger(__name__)

#: File descriptors kept for everything but subscriber connections: the listening socket, the feed,
#: the event loop, threads, stored bars and prediction-log files, the endpoint's connection pool.
FD_RESERVE = 64


def fit_file_limit(max_connections: int) -> int:
    """The connection cap this process can hold: ``max_connections``, after raising ``RLIMIT_NOFILE`` if needed.

    The soft limit is raised toward the hard one until ``max_connections + FD_RESERVE`` fit; when
    the hard limit is too low, the cap is lowered to what fits (at least 1) and a warning says why.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections + FD_RESERVE
    unlimited = resource.RLIM_INFINITY
    if soft != unlimited and soft < needed:
        target = needed if hard == unlimited else min(needed, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (ValueError, OSError) as exc:
                log.warning("could not raise the file-descriptor limit from %d to %d: %s", soft, target, exc)
            else:
                log.info("file-descriptor limit raised from %d to %d for %d connections", soft, target, max_connections)
                soft = target
    if soft == unlimited or soft >= needed:
        return max_connections
    fitted = max(1, soft - FD_RESERVE)
    log.warning(
        "QE_BRIDGE_MAX_CONNECTIONS=%d does not fit the file-descriptor limit (%d, hard %s) with %d kept for "
        "files, the feed and threads: at most %d connections are served; raise the limit (ulimit -n) to "
        "serve more",
        max_connections,
        soft,
        "unlimited" if hard == unlimited else hard,
        FD_RESERVE,
        fitted,
    )
    return fitted


def _kind(context: dict[str, Any]) -> str:
    """A short, bounded name for what went wrong: the errno's name (``EMFILE``) or the exception's type."""
    exc = context.get("exception")
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, f"errno_{exc.errno}")
    if exc is not None:
        return type(exc).__name__
    return "error"


class LoopErrors:
    """An asyncio exception handler that counts errors by kind and logs each kind at most once per ``every_s``.

    Install with ``loop.set_exception_handler(errors)``.

    Parameters
    ----------
    every_s : float
        Least time between two log lines of one kind.
    clock : callable
        Monotonic seconds (tests pass their own).
    """

    def __init__(self, every_s: float = 10.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = float(every_s)
        self._clock = clock
        self.counts: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}
        self._since_logged: Counter[str] = Counter()
        self.last_at: float | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        kind = _kind(context)
        now = self._clock()
        self.counts[kind] += 1
        self.last_at = now
        first = kind not in self._logged_at
        if not first and now - self._logged_at[kind] < self.every_s:
            self._since_logged[kind] += 1
            return
        more = self._since_logged.pop(kind, 0)
        exc = context.get("exception")
        log.error(
            "event loop error %s: %s%s",
            kind,
            context.get("message", "unhandled"),
            f" ({more} more since the last line)" if more else "",
            exc_info=exc if first and exc is not None else None,
            extra={"error_kind": kind},
        )
        self._logged_at[kind] = now

    def recent(self, within_s: float) -> dict[str, int]:
        """Errors by kind, when the last one came within ``within_s`` seconds; empty otherwise."""
        if self.last_at is None or self._clock() - self.last_at > within_s:
            return {}
        return dict(self.counts)
