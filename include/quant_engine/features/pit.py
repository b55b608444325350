"""The bitemporal point-in-time join, as one DuckDB ``ASOF LEFT JOIN``.

For each entity row ``(ticker, ts)`` the join returns the feature row of the same ticker with the
greatest ``event_time <= ts``. The store hands it the committed rows already cut at ``as_of``
(``write_time <= as_of``); when a record has several versions among them, the latest write wins
(:func:`asof_join` folds that choice into the ASOF key), so a correction written after ``as_of``
never leaks in.
Rows are matched by a row number, so the result has exactly the entity frame's rows, in its order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

RECORD_IDENTIFIER = "ticker"
EVENT_TIME = "event_time"
_UTC_NS = pa.timestamp("ns", tz="UTC")
_MAX_QUOTED = 5


class FeatureFrameError(ValueError):
    """A frame handed to the store breaks the feature-frame contract; the message says how."""


class UnknownFeatureError(ValueError):
    """A requested feature is not in the feature group."""


def quote(name: str) -> str:
    """``name`` as a DuckDB identifier."""
    return '"' + name.replace('"', '""') + '"'


def utc_ns_column(series: pd.Series, what: str) -> np.ndarray:
    """A tz-aware datetime column as int64 nanoseconds since the epoch (UTC); naive or NaT is an error."""
    if not isinstance(series.dtype, pd.DatetimeTZDtype):
        if pd.api.types.is_datetime64_dtype(series.dtype):
            raise FeatureFrameError(f"column {what!r} holds naive timestamps; localize them (e.g. to UTC) first")
        raise FeatureFrameError(f"column {what!r} has dtype {series.dtype}; it must be datetime64[ns, UTC]")
    if series.isna().any():
        raise FeatureFrameError(f"column {what!r} holds {int(series.isna().sum())} NaT value(s)")
    return series.dt.tz_convert("UTC").astype("datetime64[ns, UTC]").array.asi8


def ticker_column(series: pd.Series, what: str = RECORD_IDENTIFIER) -> np.ndarray:
    """The record identifiers as an object array of non-empty strings."""
    values = series.to_numpy(dtype=object)
    if pd.api.types.infer_dtype(values, skipna=False) in ("string", "empty") and not (values == "").any():
        return values
    bad = np.fromiter((not isinstance(v, str) or not v for v in values), dtype=bool, count=len(values))
    examples = [repr(v) for v in values[bad][:_MAX_QUOTED]]
    raise FeatureFrameError(
        f"column {what!r} must hold non-empty strings; {int(bad.sum())} value(s) do not: {', '.join(examples)}"
    )


def ttl_nanoseconds(ttl: timedelta | pd.Timedelta | None) -> int | None:
    """``ttl`` in nanoseconds; it must be a positive timedelta."""
    if ttl is None:
        return None
    if not isinstance(ttl, (timedelta, pd.Timedelta, np.timedelta64)):
        raise TypeError(f"ttl={ttl!r} must be a timedelta")
    ttl_ns = pd.Timedelta(ttl).value
    if ttl_ns <= 0:
        raise ValueError(f"ttl={ttl!r} must be positive")
    return ttl_ns


def resolve_features(features: Sequence[str] | None, available: Sequence[str], group: str) -> list[str]:
    """The requested feature names, checked against the group's (default: all of them)."""
    if features is None:
        return list(available)
    if isinstance(features, str):
        raise TypeError(f"features={features!r} must be a sequence of feature names, not one string")
    names = list(features)
    if not names:
        raise ValueError("features is empty; pass None for all of the group's features")
    unknown = [n for n in names if n not in available]
    if unknown:
        raise UnknownFeatureError(f"feature group {group!r} has no feature(s) {unknown}; known: {', '.join(available)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"feature(s) {repeated} requested more than once")
    return names


@dataclass(frozen=True)
class EntityKeys:
    """The join keys of an entity frame, row by row."""

    tickers: np.ndarray
    ts_ns: np.ndarray


def validate_entities(entities: pd.DataFrame, entity_time_col: str, features: Sequence[str]) -> EntityKeys:
    """Check the entity frame's key columns and return them; missing or naive columns are errors."""
    if not isinstance(entities, pd.DataFrame):
        raise TypeError(f"entities must be a pandas DataFrame, not {type(entities).__name__}")
    if not isinstance(entity_time_col, str) or not entity_time_col:
        raise ValueError(f"entity_time_col={entity_time_col!r} must be a column name")
    missing = [c for c in (RECORD_IDENTIFIER, entity_time_col) if c not in entities.columns]
    if missing:
        raise FeatureFrameError(
            f"the entity frame lacks column(s) {missing} (entity_time_col={entity_time_col!r}); "
            f"have {list(entities.columns)}"
        )
    clashing = [n for n in features if n in entities.columns]
    if clashing:
        raise FeatureFrameError(f"the entity frame already has column(s) {clashing} named like the features joined")
    return EntityKeys(
        ticker_column(entities[RECORD_IDENTIFIER]),
        utc_ns_column(entities[entity_time_col], entity_time_col),
    )


def latest_versions_sql(source: str, features: Sequence[str], *, dedupe: bool, where: str = "") -> str:
    """SQL for one row per ``(ticker, event_time)`` in ``source``: the version with the latest write_time.

    ``dedupe=False`` is for sources known to hold one version per record; it skips the aggregate.
    """
    condition = f"WHERE {where}" if where else ""
    if not dedupe:
        columns = ", ".join(quote(c) for c in (RECORD_IDENTIFIER, EVENT_TIME, *features, "write_time"))
        return f"SELECT {columns} FROM {source} {condition}"
    latest = ", ".join(f"arg_max({quote(n)}, write_time) AS {quote(n)}" for n in features)
    return (
        f"SELECT ticker, event_time, {latest}, max(write_time) AS write_time "
        f"FROM {source} {condition} GROUP BY ticker, event_time"
    )


#: Two's-complement offsets that turn (event_ns, write_ns) into one ordered 128-bit key. The event
#: part is multiplied, not shifted: DuckDB refuses to shift a negative number (a time before 1970).
_SHIFT = "18446744073709551616::HUGEINT"  # 2**64
_WRITE_OFFSET = "9223372036854775808::HUGEINT"  # 2**63: write_ns + 2**63 lies in [0, 2**64)
_LAST_WRITE = "18446744073709551615::HUGEINT"  # 2**64 - 1: after every write of the same instant


def asof_join(
    con: duckdb.DuckDBPyConnection,
    source: str,
    keys: EntityKeys,
    features: Sequence[str],
    *,
    versioned: bool,
    ttl_ns: int | None,
) -> np.ndarray:
    """Feature values for each entity row, shape ``(rows, features)``, NaN where none qualifies.

    ``source`` names a relation on ``con`` with the store's columns, already cut at ``as_of``.
    When records may have several versions (``versioned``), the ASOF key is the 128-bit number
    ``event_ns * 2**64 + (write_ns + 2**63)``: its maximum below ``ts_ns * 2**64 + 2**64 - 1``
    is the latest event at or before ``ts`` and, among that event's versions, the latest write,
    so one ASOF JOIN does the deduplication that would otherwise need a GROUP BY over every row.
    """
    n = len(keys.ts_ns)
    con.register(
        "entity_keys",
        pa.table(
            {
                "_row": pa.array(np.arange(n, dtype="int64")),
                RECORD_IDENTIFIER: pa.array(keys.tickers, pa.string()),
                "ts": pa.array(keys.ts_ns, _UTC_NS),
            }
        ),
    )
    columns = ", ".join(quote(n) for n in features)
    selected = ", ".join(f"f.{quote(n)}" for n in features)
    if versioned:
        entity_side = f"SELECT _row, ticker, epoch_ns(ts)::HUGEINT * {_SHIFT} + {_LAST_WRITE} AS _key FROM entity_keys"
        feature_side = (
            f"SELECT ticker, event_time, {columns}, "
            f"epoch_ns(event_time)::HUGEINT * {_SHIFT} + (epoch_ns(write_time)::HUGEINT + {_WRITE_OFFSET}) AS _key "
            f"FROM {source}"
        )
    else:
        entity_side = "SELECT _row, ticker, ts AS _key FROM entity_keys"
        feature_side = f"SELECT ticker, event_time, {columns}, event_time AS _key FROM {source}"
    result = con.sql(
        f"SELECT e._row, epoch_ns(f.event_time) AS _event_ns, {selected} "
        f"FROM ({entity_side}) e ASOF LEFT JOIN ({feature_side}) f ON e.ticker = f.ticker AND e._key >= f._key"
    ).to_arrow_table()
    rows = result["_row"].to_numpy()
    values = np.full((n, len(features)), np.nan)
    for j, name in enumerate(features):
        values[rows, j] = result[name].to_numpy(zero_copy_only=False)
    if ttl_ns is not None:
        event = result["_event_ns"]
        matched = event.is_valid().to_numpy(zero_copy_only=False)
        stale = np.zeros(n, dtype=bool)
        stale[rows] = matched & (event.fill_null(0).to_numpy() < keys.ts_ns[rows] - ttl_ns)
        values[stale] = np.nan
    return values


def attach(entities: pd.DataFrame, features: Sequence[str], values: np.ndarray) -> pd.DataFrame:
    """``entities`` with one column per feature appended, rows and index untouched."""
    result = entities.copy(deep=False)  # new columns land in the copy only; the caller's frame is unchanged
    for j, name in enumerate(features):
        result[name] = values[:, j]
    return result


def arrow_to_frame(table: pa.Table) -> pd.DataFrame:
    """A DuckDB result as a frame with the store's dtypes (``str`` tickers, UTC nanosecond times)."""
    frame = table.to_pandas()
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(frame[column]):
            series = frame[column]
            if not isinstance(series.dtype, pd.DatetimeTZDtype):
                series = series.dt.tz_localize("UTC")
            frame[column] = series.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    return frame
