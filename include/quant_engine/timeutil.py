"""Time at the public edges (DAG params, CLI flags, state files), where instants arrive as loose text."""

from __future__ import annotations

import pandas as pd


def utc_day(value: object, name: str, *, error: type[ValueError] = ValueError) -> pd.Timestamp:
    """Midnight UTC of the day ``value`` names; a naive value is read as a UTC calendar date.

    ``error`` is the ``ValueError`` subclass to raise, so each caller keeps its own error type.

    Examples
    --------
    >>> utc_day("2024-03-04", "start")
    Timestamp('2024-03-04 00:00:00+0000', tz='UTC')
    >>> utc_day("2024-03-04T23:30:00-05:00", "end")
    Timestamp('2024-03-05 00:00:00+0000', tz='UTC')
    """
    stamp = read_stamp(value, name, error=error)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.normalize()


def read_stamp(value: object, name: str, *, error: type[ValueError] = ValueError) -> pd.Timestamp:
    """``value`` as a timestamp, naive or aware as written; unreadable or empty input raises ``error``."""
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise error(f"{name}={value!r} is not a date (YYYY-MM-DD)") from None
    if stamp is pd.NaT:
        raise error(f"{name} is empty; give a date (YYYY-MM-DD)")
    return stamp


def utc_timestamp(value: object, what: str) -> pd.Timestamp:
    """``value`` as a tz-aware UTC timestamp; naive or unparsable values are an error naming ``what``."""
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}={value!r} is not a timestamp") from exc
    if stamp is pd.NaT:
        raise ValueError(f"{what} is NaT; give a timestamp")
    if stamp.tzinfo is None:
        raise ValueError(f"{what}={value!r} is naive; give a time zone, e.g. UTC (a naive timestamp is ambiguous)")
    return stamp.tz_convert("UTC")
