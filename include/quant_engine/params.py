"""Loosely typed parameters (DAG params, ``--conf`` JSON, CLI flags) read the same way everywhere."""

from __future__ import annotations

from collections.abc import Sequence


def parse_tickers(value: object, *, error: type[ValueError] = ValueError) -> tuple[str, ...] | None:
    """Tickers as a comma-separated string or a list; ``None`` means every ticker.

    A value that names no ticker at all (``""``, ``",,,"``, ``[]``) is an error, never "all":
    a form left with stray commas must not quietly widen a run to the whole universe.

    Examples
    --------
    >>> parse_tickers("SYN00, SYN01,,SYN00"), parse_tickers(["A"]), parse_tickers(None)
    (('SYN00', 'SYN01'), ('A',), None)
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, Sequence) or not all(isinstance(t, str) for t in value):
        raise error(f"tickers={value!r} must be a comma-separated string or a list of names")
    names = tuple(dict.fromkeys(t.strip() for t in value if t.strip()))
    if not names:
        raise error(f"tickers={value!r} names no ticker; leave it empty (null) for every ticker")
    return names
