"""The online feature store: the latest feature vector per ticker of one feature group, for serving.

Two backends behind one protocol: :class:`SQLiteOnlineStore` (embedded default) and
:class:`~quant_engine.aws.dynamodb.DynamoDBOnlineStore` (AWS). Both keep one record per
``(feature_group, ticker)`` and share three rules:

* **Newer wins.** A write replaces a record if its ``event_time`` is newer than the stored one, or
  equal with different values (a correction of that bar). Re-putting a frame changes nothing and a
  late backfill of older bars never hides a live value.
* **A record is a whole vector.** A write replaces all of a ticker's features, never merges.
* **All or nothing.** ``put`` is atomic, and :meth:`OnlineStore.transaction` widens that to a block:
  every ``put`` inside takes effect together or, if the block raises, not at all. Ingestion uses it
  to tie the online write to the offline commit. SQLite does this with one database transaction;
  DynamoDB has none spanning arbitrary items, so it undoes its writes on failure (compensation):
  readers may briefly see the writes of a block that is then rolled back.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import sqlite3
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from os import PathLike
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pandas as pd

log = logging.getLogger(__name__)

FeatureRecord = dict[str, Any]
"""``{"event_time": pd.Timestamp (UTC), <feature>: float, ...}``."""

_KEY_COLUMNS = ("ticker", "event_time")


class OnlineStoreError(RuntimeError):
    """The backend cannot serve the request (missing table, throttling beyond retries, ...)."""


@runtime_checkable
class OnlineStore(Protocol):
    """Latest feature vector per ticker for one feature group."""

    feature_group: str

    def put(self, frame: pd.DataFrame) -> int:
        """Upsert each ticker's latest row of ``frame`` where it is newer or corrects the stored one;
        return how many records changed."""
        ...

    def get(
        self,
        ticker: str,
        features: Sequence[str] | None = None,
        *,
        ttl: timedelta | None = None,
        now: datetime | None = None,
    ) -> FeatureRecord | None:
        """The ticker's record, or None when absent or older than ``ttl``."""
        ...

    def get_many(
        self,
        tickers: Iterable[str],
        features: Sequence[str] | None = None,
        *,
        ttl: timedelta | None = None,
        now: datetime | None = None,
    ) -> dict[str, FeatureRecord]:
        """Records of the tickers that have a fresh one, keyed by ticker."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """Context manager: every ``put`` inside takes effect together or not at all."""
        ...

    def delete_group(self) -> int:
        """Delete every record of this feature group; return how many went."""
        ...


# --- validation shared by both backends --------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    ticker: str
    event_time_ns: int
    values: tuple[float, ...]


def _values_digest(names: Sequence[str], values: Sequence[float]) -> str:
    """A short fingerprint of a feature vector, so a same-time correction can be told from a rerun."""
    return hashlib.blake2b(
        json.dumps([list(names), [repr(float(v)) for v in values]]).encode(), digest_size=16
    ).hexdigest()


def _latest_rows(frame: pd.DataFrame) -> tuple[tuple[str, ...], list[_Row]]:
    """Feature names and the latest row per ticker of a feature frame, after checking it."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"put() takes a feature frame (pandas DataFrame), got {type(frame).__name__}")
    missing = [c for c in _KEY_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"feature frame is missing column(s) {missing}; have {list(frame.columns)}")
    names = tuple(c for c in frame.columns if c not in _KEY_COLUMNS)
    if not names:
        raise ValueError("feature frame has no feature columns besides 'ticker' and 'event_time'")
    not_text = [c for c in names if not isinstance(c, str) or not c]
    if not_text:
        raise ValueError(f"feature column names must be non-empty strings, got {not_text!r}")
    event_time = frame["event_time"]
    if not isinstance(event_time.dtype, pd.DatetimeTZDtype):
        raise ValueError(f"column 'event_time' has dtype {event_time.dtype}; it must be tz-aware datetime64 (UTC)")
    if event_time.isna().any():
        raise ValueError(f"column 'event_time' has {int(event_time.isna().sum())} missing (NaT) value(s)")
    tickers = frame["ticker"]
    bad_tickers = [t for t in pd.unique(tickers) if not isinstance(t, str) or not t]
    if bad_tickers:
        raise ValueError(f"column 'ticker' must hold non-empty strings; got {bad_tickers[:5]!r}")
    not_numeric = [c for c in names if not pd.api.types.is_numeric_dtype(frame[c]) or frame[c].dtype == bool]
    if not_numeric:
        raise ValueError(
            f"feature column(s) {not_numeric} are not numeric (dtypes {[str(frame[c].dtype) for c in not_numeric]})"
        )
    keyed = pd.DataFrame(
        {
            "ticker": tickers.to_numpy(dtype=object),
            "ns": event_time.dt.tz_convert("UTC").to_numpy(dtype="datetime64[ns]").view("int64"),
        }
    )
    duplicated = keyed.duplicated(keep=False)
    if duplicated.any():
        quoted = [f"{t}@{pd.Timestamp(ns, tz='UTC')}" for t, ns in keyed[duplicated].head(5).itertuples(index=False)]
        raise ValueError(f"feature frame has more than one row for (ticker, event_time): {', '.join(quoted)}")
    latest = keyed.sort_values(["ticker", "ns"], kind="stable").drop_duplicates("ticker", keep="last").index
    values = frame[list(names)].to_numpy(dtype="float64")[latest]
    rows = [
        _Row(ticker, int(ns), tuple(vector.tolist()))
        for ticker, ns, vector in zip(
            keyed["ticker"].to_numpy()[latest], keyed["ns"].to_numpy()[latest], values, strict=True
        )
    ]
    return names, rows


def _check_ticker(ticker: object) -> str:
    if not isinstance(ticker, str) or not ticker:
        raise ValueError(f"ticker {ticker!r} must be a non-empty string")
    return ticker


def _check_tickers(tickers: Iterable[str]) -> list[str]:
    if isinstance(tickers, str):
        raise TypeError(f"get_many() takes a collection of tickers, got the string {tickers!r}; use get()")
    return list(dict.fromkeys(_check_ticker(t) for t in tickers))


def _check_features(features: Sequence[str] | None) -> tuple[str, ...] | None:
    if features is None:
        return None
    if isinstance(features, str):
        raise TypeError(f"features must be a list of names, got the string {features!r}")
    return tuple(features)


def _cutoff_ns(ttl: timedelta | None, now: datetime | None) -> int | None:
    """Oldest event time (UTC ns) a record may have to be served, or None without a TTL."""
    if now is not None and (not isinstance(now, datetime) or now.tzinfo is None):
        raise ValueError(f"now={now!r} must be a tz-aware datetime")
    if ttl is None:
        return None
    if not isinstance(ttl, timedelta) or ttl <= timedelta(0):
        raise ValueError(f"ttl={ttl!r} must be a positive timedelta")
    now_ns = time.time_ns() if now is None else pd.Timestamp(now).as_unit("ns").value
    return now_ns - pd.Timedelta(ttl).value


@functools.lru_cache(maxsize=4096)
def _utc_timestamp(event_time_ns: int) -> pd.Timestamp:
    """Cached: building a tz-aware Timestamp costs microseconds, and records share event times."""
    return pd.Timestamp(event_time_ns, tz="UTC")


def _record(
    ticker: str,
    event_time_ns: int,
    names: Sequence[str],
    values: Sequence[float],
    features: tuple[str, ...] | None,
    feature_group: str,
) -> FeatureRecord:
    """The record a reader gets: event time plus the requested features (all by default)."""
    record: FeatureRecord = {"event_time": _utc_timestamp(event_time_ns)}
    if features is None:
        record.update(zip(names, values, strict=True))
        return record
    stored = dict(zip(names, values, strict=True))
    missing = [f for f in features if f not in stored]
    if missing:
        raise ValueError(
            f"feature(s) {missing} are not stored for {ticker!r} in feature group {feature_group!r}; "
            f"stored: {', '.join(names)}"
        )
    record.update((f, stored[f]) for f in features)
    return record


# --- SQLite ------------------------------------------------------------------------------------

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS online_features (
    feature_group  TEXT    NOT NULL,
    ticker         TEXT    NOT NULL,
    event_time_ns  INTEGER NOT NULL,  -- UTC nanoseconds since the epoch
    feature_names  TEXT    NOT NULL,  -- JSON list, the order of feature_values
    feature_values BLOB    NOT NULL,  -- little-endian float64, one per name
    PRIMARY KEY (feature_group, ticker)
) WITHOUT ROWID
"""
_SQLITE_UPSERT = """
INSERT INTO online_features (feature_group, ticker, event_time_ns, feature_names, feature_values)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (feature_group, ticker) DO UPDATE SET
    event_time_ns = excluded.event_time_ns,
    feature_names = excluded.feature_names,
    feature_values = excluded.feature_values
WHERE excluded.event_time_ns > online_features.event_time_ns
   OR (excluded.event_time_ns = online_features.event_time_ns
       AND (excluded.feature_values != online_features.feature_values
            OR excluded.feature_names != online_features.feature_names))
"""
_SQLITE_SELECT_ONE = (
    "SELECT event_time_ns, feature_names, feature_values FROM online_features WHERE feature_group = ? AND ticker = ?"
)
_SQLITE_SELECT_MANY = (
    "SELECT ticker, event_time_ns, feature_names, feature_values FROM online_features "
    "WHERE feature_group = ? AND ticker IN ({placeholders})"
)
#: Tickers per ``IN (...)`` query, well under SQLite's bound-parameter limit.
_SQLITE_CHUNK = 500


class SQLiteOnlineStore:
    """Online store in one SQLite file (WAL mode), the embedded default.

    One table serves every feature group, keyed by ``(feature_group, ticker)`` without a rowid, so
    a read is one primary-key B-tree lookup. The features are a single BLOB of float64 with their
    names beside it as JSON, decoded through caches (one per distinct name list / vector length):
    a read costs one prepared statement on a persistent connection and one ``struct.unpack``.

    A store object holds a connection and belongs to the thread that made it; open one per thread
    or process. WAL lets readers in other processes run while one writer writes.

    Parameters
    ----------
    path : str or PathLike
        Database file; its folder is created if missing.
    feature_group : str
        The feature group this store reads and writes.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> store = SQLiteOnlineStore(tempfile.mkdtemp() + "/online.sqlite", "demo")
    >>> frame = pd.DataFrame({"ticker": ["A", "A"], "rsi_14": [40.0, 55.0],
    ...                       "event_time": pd.to_datetime(["2024-01-02", "2024-01-03"], utc=True)})
    >>> store.put(frame), store.put(frame)
    (1, 0)
    >>> store.get("A")
    {'event_time': Timestamp('2024-01-03 00:00:00+0000', tz='UTC'), 'rsi_14': 55.0}
    >>> store.close()
    """

    def __init__(self, path: str | PathLike[str], feature_group: str) -> None:
        if not isinstance(feature_group, str) or not feature_group:
            raise ValueError(f"feature_group {feature_group!r} must be a non-empty string")
        self.path = Path(path)
        self.feature_group = feature_group
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are begun explicitly, so their extent is exactly ours.
        self._conn = sqlite3.connect(self.path, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL under WAL survives process crashes; a power loss may drop the last commits, which
        # the next ingestion rewrites from the offline store.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._conn.execute(_SQLITE_SCHEMA)
        self._names: dict[str, tuple[str, ...]] = {}
        self._structs: dict[int, struct.Struct] = {}

    def __repr__(self) -> str:
        return f"SQLiteOnlineStore({str(self.path)!r}, {self.feature_group!r})"

    def __enter__(self) -> SQLiteOnlineStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        self._conn.close()

    def _struct(self, n_values: int) -> struct.Struct:
        packer = self._structs.get(n_values)
        if packer is None:
            packer = self._structs[n_values] = struct.Struct(f"<{n_values}d")
        return packer

    def _decode_names(self, encoded: str) -> tuple[str, ...]:
        names = self._names.get(encoded)
        if names is None:
            names = self._names[encoded] = tuple(json.loads(encoded))
        return names

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Make every ``put`` in the block one SQLite transaction; a block inside another joins it.

        The write lock is taken at the start (``BEGIN IMMEDIATE``), so keep the block short: other
        writers wait for it (readers do not, under WAL).
        """
        if self._conn.in_transaction:
            yield
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._conn.commit()
        except BaseException:
            self._conn.rollback()
            raise

    def delete_group(self) -> int:
        """Delete every row of this feature group; returns how many went."""
        with self.transaction():
            return self._conn.execute(
                "DELETE FROM online_features WHERE feature_group = ?", (self.feature_group,)
            ).rowcount

    def put(self, frame: pd.DataFrame) -> int:
        """Upsert each ticker's latest row where it is newer than (or corrects) the stored one, atomically.

        Parameters
        ----------
        frame : DataFrame
            ``ticker``, tz-aware ``event_time`` and numeric feature columns; several rows per ticker
            are allowed (only the latest is considered), duplicate ``(ticker, event_time)`` are not.

        Returns
        -------
        int
            Records inserted or replaced; 0 when nothing was newer or different (a re-put, a stale backfill).
        """
        names, rows = _latest_rows(frame)
        encoded_names = json.dumps(list(names))
        packer = self._struct(len(names))
        params = [
            (self.feature_group, row.ticker, row.event_time_ns, encoded_names, packer.pack(*row.values)) for row in rows
        ]
        with self.transaction():
            before = self._conn.total_changes
            self._conn.executemany(_SQLITE_UPSERT, params)
            return self._conn.total_changes - before

    def get(
        self,
        ticker: str,
        features: Sequence[str] | None = None,
        *,
        ttl: timedelta | None = None,
        now: datetime | None = None,
    ) -> FeatureRecord | None:
        """The latest record of ``ticker``, or None when absent or older than ``ttl``.

        Parameters
        ----------
        ticker : str
        features : sequence of str, optional
            Only these features (error naming any that are not stored); default all.
        ttl : timedelta, optional
            Serve only records whose ``event_time`` is at most ``ttl`` before ``now``.
        now : datetime, optional
            Tz-aware reference time for ``ttl``; default the current time.
        """
        cutoff = _cutoff_ns(ttl, now)
        wanted = _check_features(features)
        row = self._conn.execute(_SQLITE_SELECT_ONE, (self.feature_group, _check_ticker(ticker))).fetchone()
        if row is None or (cutoff is not None and row[0] < cutoff):
            return None
        event_time_ns, encoded_names, blob = row
        names = self._decode_names(encoded_names)
        return _record(ticker, event_time_ns, names, self._struct(len(names)).unpack(blob), wanted, self.feature_group)

    def get_many(
        self,
        tickers: Iterable[str],
        features: Sequence[str] | None = None,
        *,
        ttl: timedelta | None = None,
        now: datetime | None = None,
    ) -> dict[str, FeatureRecord]:
        """Records of ``tickers`` keyed by ticker; absent and expired tickers are left out.

        Arguments as in :meth:`get`.
        """
        cutoff = _cutoff_ns(ttl, now)
        wanted = _check_features(features)
        unique = _check_tickers(tickers)
        found: dict[str, FeatureRecord] = {}
        for start in range(0, len(unique), _SQLITE_CHUNK):
            chunk = unique[start : start + _SQLITE_CHUNK]
            sql = _SQLITE_SELECT_MANY.format(placeholders=", ".join("?" * len(chunk)))
            for ticker, event_time_ns, encoded_names, blob in self._conn.execute(sql, (self.feature_group, *chunk)):
                if cutoff is None or event_time_ns >= cutoff:
                    names = self._decode_names(encoded_names)
                    found[ticker] = _record(
                        ticker, event_time_ns, names, self._struct(len(names)).unpack(blob), wanted, self.feature_group
                    )
        return {t: found[t] for t in unique if t in found}
