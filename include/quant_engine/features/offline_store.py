"""The offline feature store: append-only, bitemporal Parquet in SageMaker Feature Store's layout.

Data files live at ``<root>/<feature_group>/data/year=YYYY/month=MM/day=DD/<commit>.parquet``
(partitioned by the UTC day of ``event_time``) with SageMaker's columns ``write_time``,
``api_invocation_time`` and ``is_deleted`` beside the features. Beside the data sits one JSON
object, ``<root>/<feature_group>/feature_group.json``, that holds the group's schema *and* its list
of committed files. It is the only thing a reader trusts:

* a write first stages every Parquet file it needs, then replaces ``feature_group.json`` in one
  atomic step (temp file + fsync + rename locally, one conditional ``PutObject`` on S3). A failure
  at any point before that step leaves only unreferenced files, which readers never see and the
  next write removes (:meth:`OfflineStore.vacuum`);
* :meth:`OfflineStore.revert` drops a commit from the list in the same single step;
* :meth:`OfflineStore.compact` adds a snapshot, one sorted Parquet file of every row, that reads
  use instead of thousands of small day files (a derived copy; the day files stay).

Writes are idempotent and bitemporal: a record ``(ticker, event_time)`` gets a new version only
when its values differ from the latest stored one, and old versions stay, so a read or join
``as_of`` a past ``write_time`` sees exactly what was known then.

One writer per feature group at a time. Locally a lock file serialises writers. On S3 this is an
assumption (the ingestion DAG runs one active run at a time); the commit is a conditional put
(``If-Match`` on the previous ETag), so a second writer that breaks the assumption gets a
:class:`ConcurrentCommitError` instead of silently overwriting the other's commit.
"""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from quant_engine.features import pit
from quant_engine.features.pit import FeatureFrameError, UnknownFeatureError, ticker_column, utc_ns_column
from quant_engine.storage.filesystem import FileSystem
from quant_engine.timeutil import utc_timestamp

__all__ = [
    "CommitInfo",
    "FeatureFrameError",
    "FeatureGroupSchema",
    "OfflineStore",
    "OfflineStoreError",
    "SchemaMismatchError",
    "UnknownCommitError",
    "UnknownFeatureError",
]

log = logging.getLogger(__name__)

RECORD_IDENTIFIER = "ticker"
EVENT_TIME = "event_time"
WRITE_TIME = "write_time"
API_INVOCATION_TIME = "api_invocation_time"
IS_DELETED = "is_deleted"
#: Column names SageMaker Feature Store reserves for itself; no feature may use them.
RESERVED_NAMES: frozenset[str] = frozenset({WRITE_TIME, API_INVOCATION_TIME, IS_DELETED})
SUPPORTED_DTYPES: tuple[str, ...] = ("float64",)

MANIFEST_NAME = "feature_group.json"
DATA_DIR = "data"
SNAPSHOT_DIR = "snapshots"
#: A read uses the snapshot only when it replaces at least this many day files.
SNAPSHOT_MIN_FILES = 16
#: Rows per row group in a snapshot, so readers can skip row groups by ticker.
_SNAPSHOT_ROW_GROUP = 131_072
FORMAT_VERSION = 1

#: SageMaker's rule for feature group and feature names.
_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9]([-_]*[a-zA-Z0-9]){0,63}$")
_NS_PER_DAY = 86_400 * 10**9
_UTC_NS = pa.timestamp("ns", tz="UTC")
#: How many offending rows an error message quotes.
_MAX_QUOTED = 5
#: Parallel GETs when a reader pulls committed files from S3.
_S3_READ_WORKERS = 16


class OfflineStoreError(Exception):
    """Base class for offline-store errors."""


class SchemaMismatchError(FeatureFrameError):
    """A batch's features differ from the stored group's schema (missing, extra or mistyped)."""


class UnknownCommitError(OfflineStoreError, LookupError):
    """:meth:`OfflineStore.revert` was given a commit id the group does not hold."""


# --------------------------------------------------------------------------------------------
# Schema, commits and the manifest
# --------------------------------------------------------------------------------------------


def check_name(name: object, what: str) -> str:
    """``name`` if it follows SageMaker's naming rule for feature groups and features."""
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ValueError(
            f"{what} {name!r} must start with a letter or digit and contain only letters, digits, "
            "'-' and '_' (at most 64 characters; SageMaker's rule)"
        )
    return name


def _iso(stamp: pd.Timestamp) -> str:
    return stamp.isoformat()


@dataclass(frozen=True)
class FeatureGroupSchema:
    """What a feature group stores: its features, their dtypes, and SageMaker's two key columns.

    Parameters
    ----------
    features : dict of str to str
        Feature name to dtype, in column order. Only ``float64`` is supported (the feature-frame
        contract).
    version : int
        Schema version, e.g. the feature set's version.
    created_time : Timestamp, optional
        When the group was created; set by the store.
    parameters : dict of str to str, optional
        What a writer declares about the group as a whole, kept in its manifest (ingestion
        records the market time its stamps follow: calendar, bar size, time rule).

    Examples
    --------
    >>> schema = FeatureGroupSchema.for_features(["log_return_1", "rsi_14"])
    >>> schema.feature_names, schema.record_identifier, schema.event_time_name
    (('log_return_1', 'rsi_14'), 'ticker', 'event_time')
    """

    features: dict[str, str]
    version: int = 1
    created_time: pd.Timestamp | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    record_identifier: str = field(default=RECORD_IDENTIFIER, init=False)
    event_time_name: str = field(default=EVENT_TIME, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.features, dict) or not self.features:
            raise ValueError(f"features={self.features!r} must be a non-empty dict of name -> dtype")
        for name, dtype in self.features.items():
            check_name(name, "feature name")
            if name in RESERVED_NAMES or name in (RECORD_IDENTIFIER, EVENT_TIME):
                raise ValueError(
                    f"feature name {name!r} is reserved; "
                    f"{sorted(RESERVED_NAMES | {RECORD_IDENTIFIER, EVENT_TIME})} cannot be features"
                )
            if dtype not in SUPPORTED_DTYPES:
                raise ValueError(f"feature {name!r} has dtype {dtype!r}; supported: {', '.join(SUPPORTED_DTYPES)}")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ValueError(f"version={self.version!r} must be an integer >= 1")
        if self.created_time is not None:
            object.__setattr__(self, "created_time", utc_timestamp(self.created_time, "created_time"))
        if not isinstance(self.parameters, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.parameters.items()
        ):
            raise ValueError(f"parameters={self.parameters!r} must be a dict of str to str")

    @classmethod
    def for_features(
        cls, names: Sequence[str], *, version: int = 1, parameters: dict[str, str] | None = None
    ) -> FeatureGroupSchema:
        """A schema of ``float64`` features named ``names``, in that order."""
        if isinstance(names, str):
            raise TypeError(f"names={names!r} must be a sequence of feature names, not one string")
        names = list(names)
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"feature names {repeated} appear more than once")
        return cls({name: "float64" for name in names}, version=version, parameters=dict(parameters or {}))

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(self.features)

    def same_features(self, other: FeatureGroupSchema) -> bool:
        return list(self.features.items()) == list(other.features.items())

    def to_json(self) -> dict[str, Any]:
        return {
            "record_identifier_feature_name": self.record_identifier,
            "event_time_feature_name": self.event_time_name,
            "features": [{"name": n, "dtype": d} for n, d in self.features.items()],
            "schema_version": self.version,
            "created_time": None if self.created_time is None else _iso(self.created_time),
            "parameters": dict(self.parameters),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureGroupSchema:
        return cls(
            {f["name"]: f["dtype"] for f in data["features"]},
            version=data["schema_version"],
            created_time=data["created_time"],
            parameters=dict(data.get("parameters") or {}),
        )


@dataclass(frozen=True)
class CommitInfo:
    """What one :meth:`OfflineStore.write` did.

    ``commit_id`` is None when the batch held nothing new (an idempotent rerun): nothing was
    written and there is nothing to revert.
    """

    commit_id: str | None
    write_time: pd.Timestamp
    api_invocation_time: pd.Timestamp
    rows_written: int
    rows_new: int
    rows_corrected: int
    rows_unchanged: int
    files: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "commit_id": self.commit_id,
            "write_time": _iso(self.write_time),
            "api_invocation_time": _iso(self.api_invocation_time),
            "rows_written": self.rows_written,
            "rows_new": self.rows_new,
            "rows_corrected": self.rows_corrected,
            "rows_unchanged": self.rows_unchanged,
            "files": list(self.files),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CommitInfo:
        return cls(
            commit_id=data["commit_id"],
            write_time=pd.Timestamp(data["write_time"]),
            api_invocation_time=pd.Timestamp(data["api_invocation_time"]),
            rows_written=data["rows_written"],
            rows_new=data["rows_new"],
            rows_corrected=data["rows_corrected"],
            rows_unchanged=data["rows_unchanged"],
            files=tuple(data["files"]),
        )


@dataclass(frozen=True)
class _Snapshot:
    """One Parquet file holding every row of ``commit_ids``, written by :meth:`OfflineStore.compact`."""

    key: str  # relative to the group directory
    commit_ids: tuple[str, ...]
    rows: int


@dataclass(frozen=True)
class _ReadPlan:
    """Which files a read scans, and what it must do to their rows."""

    keys: list[str]  # relative to the group directory
    cut_at: pd.Timestamp | None  # drop rows written after this (snapshot rows of later commits)
    versioned: bool  # some record may have several versions among the rows


@dataclass(frozen=True)
class _Manifest:
    """The decoded ``feature_group.json`` and the version token it was read at."""

    feature_group: str
    schema: FeatureGroupSchema | None
    commits: tuple[CommitInfo, ...]
    file_days: dict[str, tuple[int, int]]  # key -> (day, rows)
    token: str | None
    snapshot: _Snapshot | None = None

    def to_bytes(self) -> bytes:
        if self.schema is None:
            raise OfflineStoreError("a feature group without a schema cannot be committed")
        payload = {
            "format_version": FORMAT_VERSION,
            "feature_group": self.feature_group,
            **self.schema.to_json(),
            "commits": [{**c.to_json(), "file_days": [list(self.file_days[k]) for k in c.files]} for c in self.commits],
            "snapshot": None
            if self.snapshot is None
            else {
                "key": self.snapshot.key,
                "commits": list(self.snapshot.commit_ids),
                "rows": self.snapshot.rows,
            },
        }
        return json.dumps(payload, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes, token: str, feature_group: str) -> _Manifest:
        payload = json.loads(data)
        if payload.get("format_version") != FORMAT_VERSION:
            raise OfflineStoreError(
                f"feature group {feature_group!r}: manifest format {payload.get('format_version')!r} "
                f"is not {FORMAT_VERSION}, the one this code reads"
            )
        commits = []
        file_days: dict[str, tuple[int, int]] = {}
        for entry in payload["commits"]:
            commit = CommitInfo.from_json(entry)
            commits.append(commit)
            file_days.update({k: (d, r) for k, (d, r) in zip(commit.files, entry["file_days"], strict=True)})
        snapshot = payload.get("snapshot")
        return cls(
            feature_group,
            FeatureGroupSchema.from_json(payload),
            tuple(commits),
            file_days,
            token,
            None if snapshot is None else _Snapshot(snapshot["key"], tuple(snapshot["commits"]), snapshot["rows"]),
        )

    def plan(self, *, as_of: pd.Timestamp | None = None, days: Callable[[int], bool] = lambda day: True) -> _ReadPlan:
        """The files holding every row written at or before ``as_of`` whose event day passes ``days``.

        Each day file belongs to one commit, so ``as_of`` and ``days`` prune whole files. The
        snapshot replaces the day files of the commits it covers when that saves at least
        :data:`SNAPSHOT_MIN_FILES` files; its rows of commits written after ``as_of`` are then
        cut row by row.
        """
        qualifying = [c for c in self.commits if as_of is None or c.write_time <= as_of]
        covered = set(self.snapshot.commit_ids) if self.snapshot is not None else set()
        replaced = sum(1 for c in qualifying if c.commit_id in covered for k in c.files if days(self.file_days[k][0]))
        use_snapshot = replaced >= SNAPSHOT_MIN_FILES
        keys = [
            k
            for c in qualifying
            if not (use_snapshot and c.commit_id in covered)
            for k in c.files
            if days(self.file_days[k][0])
        ]
        cut_at = None
        if use_snapshot:
            assert self.snapshot is not None, "use_snapshot counts files of commits the snapshot covers"
            keys.insert(0, self.snapshot.key)
            if any(c.commit_id in covered and as_of is not None and c.write_time > as_of for c in self.commits):
                cut_at = as_of
        # Every version after a record's first is counted as a correction by the commit that wrote
        # it, so without corrections each (ticker, event_time) appears once.
        return _ReadPlan(keys, cut_at, versioned=any(c.rows_corrected for c in qualifying))


# --------------------------------------------------------------------------------------------
# Batch validation
# --------------------------------------------------------------------------------------------


def _quote(frame: pd.DataFrame, mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask)
    quoted = [f"{frame[RECORD_IDENTIFIER].iat[i]}@{frame[EVENT_TIME].iat[i]} (row {i})" for i in rows[:_MAX_QUOTED]]
    if len(rows) > _MAX_QUOTED:
        quoted.append(f"... {len(rows)} rows in all")
    return ", ".join(quoted)


def _stored_commit_ids(commits: Sequence[CommitInfo]) -> tuple[str, ...]:
    """The ids of a manifest's commits: only a write that changed nothing has no id, and it is never stored."""
    ids = tuple(c.commit_id for c in commits if c.commit_id is not None)
    if len(ids) != len(commits):
        raise OfflineStoreError("the feature group's manifest lists a commit without a commit_id")
    return ids


def _schema_from_frame(frame: pd.DataFrame) -> FeatureGroupSchema:
    names = [c for c in frame.columns if c not in (RECORD_IDENTIFIER, EVENT_TIME)]
    for name in names:
        if name in RESERVED_NAMES:
            raise SchemaMismatchError(f"column {name!r} is reserved by the store; drop it from the batch")
        if not isinstance(name, str):
            raise SchemaMismatchError(f"column name {name!r} is not a string")
    if not names:
        raise SchemaMismatchError(f"the batch has no feature columns besides {RECORD_IDENTIFIER!r} and {EVENT_TIME!r}")
    try:
        return FeatureGroupSchema({name: str(frame[name].dtype) for name in names})
    except ValueError as exc:
        raise SchemaMismatchError(f"the batch cannot define a feature group: {exc}") from exc


@dataclass(frozen=True)
class _Batch:
    """A validated batch, sorted by (ticker, event_time)."""

    tickers: np.ndarray
    event_ns: np.ndarray
    values: np.ndarray  # (rows, features) float64

    def __len__(self) -> int:
        return len(self.event_ns)


def _validate_batch(frame: pd.DataFrame, schema: FeatureGroupSchema, feature_group: str) -> _Batch:
    missing_keys = [c for c in (RECORD_IDENTIFIER, EVENT_TIME) if c not in frame.columns]
    if missing_keys:
        raise FeatureFrameError(f"the batch lacks column(s) {missing_keys}; have {list(frame.columns)}")
    if frame.columns.duplicated().any():
        raise FeatureFrameError(f"the batch repeats column(s) {sorted(set(frame.columns[frame.columns.duplicated()]))}")
    names = schema.feature_names
    given = [c for c in frame.columns if c not in (RECORD_IDENTIFIER, EVENT_TIME)]
    missing = [n for n in names if n not in given]
    extra = [c for c in given if c not in schema.features]
    mistyped = [
        f"{n!r} is {frame[n].dtype}, not {schema.features[n]}"
        for n in names
        if n in given and str(frame[n].dtype) != schema.features[n]
    ]
    if missing or extra or mistyped:
        problems = []
        if missing:
            problems.append(f"missing feature(s) {missing}")
        if extra:
            problems.append(f"unknown feature(s) {extra}")
        if mistyped:
            problems.append("mistyped: " + "; ".join(mistyped))
        raise SchemaMismatchError(
            f"batch does not match feature group {feature_group!r} ({', '.join(names)}): " + "; ".join(problems)
        )
    frame = frame.reset_index(drop=True)
    tickers = ticker_column(frame[RECORD_IDENTIFIER])
    event_ns = utc_ns_column(frame[EVENT_TIME], EVENT_TIME)
    values = frame[list(names)].to_numpy(dtype="float64")
    not_finite = ~np.isfinite(values)
    if not_finite.any():
        columns = [n for n, bad in zip(names, not_finite.any(axis=0), strict=True) if bad]
        raise FeatureFrameError(
            f"NaN or infinite values in feature(s) {columns} at {_quote(frame, not_finite.any(axis=1))}; "
            "the store keeps only complete rows"
        )
    duplicated = frame.duplicated([RECORD_IDENTIFIER, EVENT_TIME], keep=False).to_numpy()
    if duplicated.any():
        raise FeatureFrameError(f"duplicate (ticker, event_time) in the batch: {_quote(frame, duplicated)}")
    order = np.lexsort((event_ns, tickers.astype(str)))
    return _Batch(tickers[order], event_ns[order], values[order])


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


class OfflineStore:
    """An append-only, bitemporal feature group on a :class:`FileSystem`.

    Parameters
    ----------
    fs : LocalFileSystem or S3FileSystem
        Where the group lives.
    feature_group : str
        The group's name (SageMaker's naming rule: letters, digits, ``-``, ``_``).

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> from quant_engine.storage.filesystem import LocalFileSystem
    >>> store = OfflineStore(LocalFileSystem(tempfile.mkdtemp()), "prices")
    >>> times = pd.to_datetime(["2024-01-02", "2024-01-03"], utc=True)
    >>> frame = pd.DataFrame({"ticker": ["A", "A"], "event_time": times,
    ...                       "ret": [0.01, -0.02]})
    >>> first = store.write(frame, write_time=pd.Timestamp("2024-01-04", tz="UTC"))
    >>> first.rows_written, store.write(frame).rows_written  # a rerun writes nothing
    (2, 0)
    >>> entities = pd.DataFrame({"ticker": ["A"], "ts": pd.to_datetime(["2024-01-02 12:00"], utc=True)})
    >>> float(store.point_in_time_join(entities)["ret"].iloc[0])
    0.01
    """

    def __init__(self, fs: FileSystem, feature_group: str) -> None:
        self.fs = fs
        self.feature_group = check_name(feature_group, "feature group name")

    def __repr__(self) -> str:
        return f"OfflineStore({self.fs!r}, {self.feature_group!r})"

    # -- keys ---------------------------------------------------------------------------------
    def _key(self, *parts: str) -> str:
        return "/".join((self.feature_group, *parts))

    @property
    def _manifest_key(self) -> str:
        return self._key(MANIFEST_NAME)

    def _load(self) -> _Manifest:
        found = self.fs.read_versioned(self._manifest_key)
        if found is None:
            return _Manifest(self.feature_group, None, (), {}, None)
        data, token = found
        return _Manifest.from_bytes(data, token, self.feature_group)

    def _commit(self, manifest: _Manifest) -> None:
        self.fs.replace_atomic(self._manifest_key, manifest.to_bytes(), expected_version=manifest.token)

    # -- metadata -----------------------------------------------------------------------------
    @property
    def schema(self) -> FeatureGroupSchema | None:
        """The group's schema, or None when the group has not been created yet."""
        return self._load().schema

    def stored_event_days(self) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        """The UTC days of the oldest and the newest stored event, from the manifest alone (no data
        file is read); None when nothing is stored. Lets a reader that wants only recent rows bound
        its ``read``, and know when a bound reaches back past everything."""
        days = [day for day, _rows in self._load().file_days.values()]
        if not days:
            return None
        return pd.Timestamp(min(days) * _NS_PER_DAY, tz="UTC"), pd.Timestamp(max(days) * _NS_PER_DAY, tz="UTC")

    def commits(self) -> list[CommitInfo]:
        """Every live commit, oldest first."""
        return list(self._load().commits)

    def create_group(self, schema: FeatureGroupSchema) -> FeatureGroupSchema:
        """Create the group with ``schema``; a no-op if it exists with the same features.

        Raises
        ------
        SchemaMismatchError
            The group exists with different features.
        """
        if not isinstance(schema, FeatureGroupSchema):
            raise TypeError(f"schema must be a FeatureGroupSchema, not {type(schema).__name__}")
        with self.fs.lock(self._key(".lock")):
            manifest = self._load()
            if manifest.schema is not None:
                self._check_same_schema(manifest.schema, schema)
                return manifest.schema
            created = replace(schema, created_time=pd.Timestamp.now(tz="UTC"))
            self._commit(replace(manifest, schema=created))
            return created

    def drop(self, *, dry_run: bool = False) -> list[str]:
        """Delete the whole group; returns the keys it deleted (or would, with ``dry_run``).

        The manifest goes first, in one step, so readers see an empty group at once; the data
        files follow (a crash between leaves unreferenced files that a later write vacuums).
        """
        with self.fs.lock(self._key(".lock")):
            keys = [k for k in self.fs.list(self.feature_group) if not k.endswith("/.lock")]
            if dry_run:
                return keys
            manifest = [k for k in keys if k == self._manifest_key]
            for key in [*manifest, *(k for k in keys if k != self._manifest_key)]:
                self.fs.delete(key)
        return keys

    def _check_same_schema(self, stored: FeatureGroupSchema, wanted: FeatureGroupSchema) -> None:
        if not stored.same_features(wanted):
            raise SchemaMismatchError(
                f"feature group {self.feature_group!r} exists with features {dict(stored.features)}, "
                f"not {dict(wanted.features)}"
            )

    # -- writing ------------------------------------------------------------------------------
    def write(self, frame: pd.DataFrame, *, write_time: object = None) -> CommitInfo:
        """Append the records of ``frame`` that are new or changed, as one atomic commit.

        Parameters
        ----------
        frame : DataFrame
            A feature frame: ``ticker``, ``event_time`` (tz-aware) and the group's ``float64``
            features, no NaN, one row per ``(ticker, event_time)``. The first write to a group
            creates it with the frame's features.
        write_time : Timestamp, optional
            When this knowledge enters the store (default: now). A correction's ``write_time``
            must be later than the version it corrects.

        Returns
        -------
        CommitInfo
            ``commit_id`` is None and ``rows_written`` 0 when every record was already stored
            with the same values.

        Raises
        ------
        SchemaMismatchError, FeatureFrameError
            The batch breaks the schema or the contract; nothing is written.
        """
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"a feature batch must be a pandas DataFrame, not {type(frame).__name__}")
        given_write_time = None if write_time is None else utc_timestamp(write_time, "write_time")
        with self.fs.lock(self._key(".lock")):
            # Stamped under the lock: a writer that waited for it must not commit a time before the
            # commit it waited for, or an as_of read at that time would change after the fact.
            api_invocation_time = pd.Timestamp.now(tz="UTC")
            written_at = api_invocation_time if given_write_time is None else given_write_time
            manifest = self._load()
            schema = manifest.schema
            if schema is None:
                schema = replace(_schema_from_frame(frame), created_time=api_invocation_time)
            batch = _validate_batch(frame, schema, self.feature_group)
            fresh, rows_new, rows_corrected = self._changed_rows(manifest, schema, batch, written_at)
            rows_unchanged = len(batch) - len(fresh)
            if len(fresh) == 0:
                if manifest.schema is None:
                    self._commit(replace(manifest, schema=schema))
                return CommitInfo(None, written_at, api_invocation_time, 0, rows_new, rows_corrected, rows_unchanged)
            self._vacuum(manifest)
            commit_id = f"{written_at.strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:12]}"
            file_days = self._stage(fresh, schema, commit_id, written_at, api_invocation_time)
            commit = CommitInfo(
                commit_id,
                written_at,
                api_invocation_time,
                len(fresh),
                rows_new,
                rows_corrected,
                rows_unchanged,
                files=tuple(file_days),
            )
            self._commit(
                replace(
                    manifest,
                    schema=schema,
                    commits=(*manifest.commits, commit),
                    file_days={**manifest.file_days, **file_days},
                )
            )
        log.info(
            "feature group %s: commit %s wrote %d rows (%d new, %d corrected) in %d files",
            self.feature_group,
            commit_id,
            len(fresh),
            rows_new,
            rows_corrected,
            len(file_days),
        )
        return commit

    def _changed_rows(
        self, manifest: _Manifest, schema: FeatureGroupSchema, batch: _Batch, write_time: pd.Timestamp
    ) -> tuple[_Batch, int, int]:
        """The batch rows to append, and how many of them are new records vs corrections."""
        if len(batch) == 0 or not manifest.commits:
            return batch, len(batch), 0
        names = list(schema.feature_names)
        days = set(np.unique(batch.event_ns // _NS_PER_DAY).tolist())
        with duckdb.connect() as con:
            self._register_rows(con, manifest.plan(days=days.__contains__), schema)
            con.register(
                "batch_keys",
                pa.table(
                    {
                        RECORD_IDENTIFIER: pa.array(batch.tickers.astype(str)),
                        EVENT_TIME: pa.array(batch.event_ns, _UTC_NS),
                    }
                ),
            )
            stored = con.sql(
                pit.latest_versions_sql(
                    "(SELECT s.* FROM feature_rows s SEMI JOIN batch_keys b "
                    "ON s.ticker = b.ticker AND s.event_time = b.event_time)",
                    names,
                    dedupe=True,
                )
            ).to_arrow_table()
        keys = pd.MultiIndex.from_arrays([batch.tickers.astype(str), batch.event_ns])
        stored_keys = pd.MultiIndex.from_arrays(
            [
                stored["ticker"].to_numpy(zero_copy_only=False).astype(str),
                stored["event_time"].cast(pa.int64()).to_numpy(),
            ]
        )
        position = stored_keys.get_indexer(keys)
        exists = position >= 0
        stored_values = (
            np.column_stack([stored[n].to_numpy() for n in names]) if len(stored) else np.empty((0, len(names)))
        )
        changed = np.zeros(len(batch), dtype=bool)
        changed[exists] = (stored_values[position[exists]] != batch.values[exists]).any(axis=1)
        if changed.any():
            stored_write_ns = stored["write_time"].cast(pa.int64()).to_numpy()[position[changed]]
            too_early = stored_write_ns >= write_time.value
            if too_early.any():
                i = np.flatnonzero(changed)[too_early][0]
                raise FeatureFrameError(
                    f"write_time {write_time} is not after the stored version of "
                    f"{batch.tickers[i]}@{pd.Timestamp(batch.event_ns[i], tz='UTC')} "
                    f"(written {pd.Timestamp(stored_write_ns[too_early][0], tz='UTC')}); "
                    "a correction needs a later write_time"
                )
        keep = ~exists | changed
        fresh = _Batch(batch.tickers[keep], batch.event_ns[keep], batch.values[keep])
        return fresh, int((~exists).sum()), int(changed.sum())

    def _stage(
        self,
        batch: _Batch,
        schema: FeatureGroupSchema,
        commit_id: str,
        write_time: pd.Timestamp,
        api_invocation_time: pd.Timestamp,
    ) -> dict[str, tuple[int, int]]:
        """Write one Parquet file per UTC day of ``event_time``; invisible until committed."""
        days = batch.event_ns // _NS_PER_DAY
        order = np.argsort(days, kind="stable")
        n = len(batch)
        table = pa.table(
            {
                RECORD_IDENTIFIER: pa.array(batch.tickers[order].astype(str), pa.string()),
                EVENT_TIME: pa.array(batch.event_ns[order], _UTC_NS),
                **{name: pa.array(batch.values[order, j], pa.float64()) for j, name in enumerate(schema.feature_names)},
                WRITE_TIME: pa.array(np.full(n, write_time.value, dtype="int64"), _UTC_NS),
                API_INVOCATION_TIME: pa.array(np.full(n, api_invocation_time.value, dtype="int64"), _UTC_NS),
                IS_DELETED: pa.array(np.zeros(n, dtype=bool)),
            }
        )
        sorted_days = days[order]
        starts = np.flatnonzero(np.r_[True, sorted_days[1:] != sorted_days[:-1]])
        ends = np.r_[starts[1:], n]
        file_days: dict[str, tuple[int, int]] = {}
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            day = int(sorted_days[start])
            date = pd.Timestamp(day * _NS_PER_DAY)
            key = f"{DATA_DIR}/year={date.year:04d}/month={date.month:02d}/day={date.day:02d}/{commit_id}.parquet"
            buffer = io.BytesIO()
            pq.write_table(table.slice(start, end - start), buffer)
            self.fs.write(self._key(key), buffer.getvalue())
            file_days[key] = (day, end - start)
        return file_days

    def revert(self, commit_id: str) -> CommitInfo:
        """Remove one commit's rows in a single atomic step (e.g. when the online write failed).

        Returns
        -------
        CommitInfo
            The commit that was removed.

        Raises
        ------
        UnknownCommitError
            The group holds no live commit ``commit_id``.
        """
        if not isinstance(commit_id, str) or not commit_id:
            raise ValueError(f"commit_id={commit_id!r} must be a non-empty string")
        with self.fs.lock(self._key(".lock")):
            manifest = self._load()
            found = [c for c in manifest.commits if c.commit_id == commit_id]
            if not found:
                recent = [c.commit_id for c in manifest.commits[-3:]]
                raise UnknownCommitError(
                    f"feature group {self.feature_group!r} has no commit {commit_id!r}; latest: {recent}"
                )
            (reverted,) = found
            kept = tuple(c for c in manifest.commits if c.commit_id != commit_id)
            file_days = {k: v for k, v in manifest.file_days.items() if k not in set(reverted.files)}
            snapshot = manifest.snapshot
            if snapshot is not None and commit_id in snapshot.commit_ids:
                snapshot = None  # it holds the reverted rows; reads fall back to the day files
            self._commit(replace(manifest, commits=kept, file_days=file_days, snapshot=snapshot))
            dropped = [*reverted.files, *([manifest.snapshot.key] if manifest.snapshot and snapshot is None else [])]
            for key in dropped:  # unreferenced now; a crash here leaves orphans for vacuum()
                self.fs.delete(self._key(key))
        log.warning(
            "feature group %s: reverted commit %s (%d rows)", self.feature_group, commit_id, reverted.rows_written
        )
        return reverted

    def uncompacted_files(self) -> int:
        """Day files a full read opens beside the snapshot: those of the commits it does not cover."""
        manifest = self._load()
        covered = set(manifest.snapshot.commit_ids) if manifest.snapshot is not None else set()
        return sum(len(c.files) for c in manifest.commits if c.commit_id not in covered)

    def compact(self) -> str | None:
        """Write every live row into one snapshot file that reads use instead of the day files.

        SageMaker's layout leaves one small file per day and commit; a read over years of them
        spends most of its time opening files (thousands of GETs on S3). The snapshot is a
        derived copy, sorted by ``(ticker, event_time)`` as the ASOF join partitions and orders
        its input, and keeping every version with its ``write_time``,
        so bitemporal reads stay exact; the day files remain the layout's source of truth. It is
        committed like a write (one atomic manifest replace), replaces the previous snapshot, and
        is dropped by a :meth:`revert` of any commit it covers.

        Returns
        -------
        str or None
            The snapshot's key relative to the filesystem root, or None for a group without rows.
        """
        with self.fs.lock(self._key(".lock")):
            manifest = self._load()
            schema = self._require_schema(manifest)
            if not manifest.commits:
                return None
            live_ids = _stored_commit_ids(manifest.commits)
            if manifest.snapshot is not None and manifest.snapshot.commit_ids == live_ids:
                return self._key(manifest.snapshot.key)
            self._vacuum(manifest)
            everything = manifest.plan()
            with duckdb.connect() as con:
                self._register_rows(con, everything, schema)
                table = con.sql("SELECT * FROM feature_rows ORDER BY ticker, event_time, write_time").to_arrow_table()
            buffer = io.BytesIO()
            pq.write_table(table.cast(_empty_rows(schema).schema), buffer, row_group_size=_SNAPSHOT_ROW_GROUP)
            snapshot = _Snapshot(f"{SNAPSHOT_DIR}/{uuid.uuid4().hex}.parquet", live_ids, table.num_rows)
            self.fs.write(self._key(snapshot.key), buffer.getvalue())
            self._commit(replace(manifest, snapshot=snapshot))
            if manifest.snapshot is not None:
                self.fs.delete(self._key(manifest.snapshot.key))
        log.info(
            "feature group %s: compacted %d commits (%d rows) into %s",
            self.feature_group,
            len(live_ids),
            snapshot.rows,
            snapshot.key,
        )
        return self._key(snapshot.key)

    def vacuum(self) -> list[str]:
        """Delete data and snapshot files nothing references (left by failed writes, reverts, compactions).

        :meth:`write` does this under the writer lock before staging; call it directly only when
        no write is running (one writer per group).

        Returns
        -------
        list of str
            The keys removed, relative to the filesystem root.
        """
        return self._vacuum(self._load())

    def _vacuum(self, manifest: _Manifest) -> list[str]:
        live = {self._key(k) for k in manifest.file_days}
        if manifest.snapshot is not None:
            live.add(self._key(manifest.snapshot.key))
        stored = self.fs.list(self._key(DATA_DIR)) + self.fs.list(self._key(SNAPSHOT_DIR))
        orphans = [k for k in stored if k not in live]
        for key in orphans:
            self.fs.delete(key)
        if orphans:
            log.info("feature group %s: removed %d orphaned files", self.feature_group, len(orphans))
        return orphans

    # -- reading ------------------------------------------------------------------------------
    def _register_rows(self, con: duckdb.DuckDBPyConnection, plan: _ReadPlan, schema: FeatureGroupSchema) -> None:
        """Make the rows ``plan`` selects queryable as the view ``feature_rows``."""
        keys = [self._key(k) for k in plan.keys]
        paths = [self.fs.local_path(k) for k in keys]
        cut = "" if plan.cut_at is None else f" WHERE epoch_ns(write_time) <= {plan.cut_at.value}"
        if keys and all(p is not None for p in paths):
            files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths)
            # The year=/month=/day= folders are SageMaker's layout, not columns to add to the rows.
            source = f"read_parquet([{files}], hive_partitioning = false)"
            con.execute(f"CREATE VIEW feature_rows AS SELECT * FROM {source}{cut}")
            return
        if keys:
            with ThreadPoolExecutor(max_workers=min(_S3_READ_WORKERS, len(keys))) as pool:
                tables = list(pool.map(lambda k: pq.read_table(pa.BufferReader(self.fs.read(k))), keys))
            table = pa.concat_tables(tables)
        else:
            table = _empty_rows(schema)
        con.register("stored_rows", table)
        con.execute(f"CREATE VIEW feature_rows AS SELECT * FROM stored_rows{cut}")

    def _require_schema(self, manifest: _Manifest) -> FeatureGroupSchema:
        if manifest.schema is None:
            raise OfflineStoreError(
                f"feature group {self.feature_group!r} does not exist yet; ingest into it first "
                "(quant-engine ingest, or the market_data_ingestion DAG)"
            )
        return manifest.schema

    def read(
        self,
        tickers: Sequence[str] | None = None,
        start: object = None,
        end: object = None,
        *,
        as_of: object = None,
        include_history: bool = False,
    ) -> pd.DataFrame:
        """Stored records, the latest version of each as known at ``as_of``.

        Parameters
        ----------
        tickers : sequence of str, optional
            Only these tickers (default: all).
        start, end : Timestamp, optional
            Inclusive bounds on ``event_time`` (tz-aware).
        as_of : Timestamp, optional
            Only versions with ``write_time <= as_of`` (default: everything committed).
        include_history : bool
            Return every version (with ``write_time``, ``api_invocation_time``, ``is_deleted``)
            instead of the latest one per record.

        Returns
        -------
        DataFrame
            A feature frame sorted by ``(ticker, event_time)`` (and ``write_time`` with history).
        """
        if isinstance(tickers, str):
            raise TypeError(f"tickers={tickers!r} must be a sequence of tickers, not one string")
        wanted = None if tickers is None else ticker_column(pd.Series(list(tickers), dtype=object), "tickers")
        start_ts = None if start is None else utc_timestamp(start, "start")
        end_ts = None if end is None else utc_timestamp(end, "end")
        if start_ts is not None and end_ts is not None and end_ts < start_ts:
            raise ValueError(f"end={end_ts} is before start={start_ts}")
        as_of_ts = None if as_of is None else utc_timestamp(as_of, "as_of")
        manifest = self._load()
        schema = self._require_schema(manifest)
        names = list(schema.feature_names)
        first_day = -(2**63) if start_ts is None else start_ts.value // _NS_PER_DAY
        last_day = 2**63 if end_ts is None else end_ts.value // _NS_PER_DAY
        plan = manifest.plan(as_of=as_of_ts, days=lambda day: first_day <= day <= last_day)
        conditions = []
        if start_ts is not None:
            conditions.append(f"epoch_ns(event_time) >= {start_ts.value}")
        if end_ts is not None:
            conditions.append(f"epoch_ns(event_time) <= {end_ts.value}")
        if wanted is not None:
            conditions.append("ticker IN (SELECT ticker FROM wanted)")
        where = " AND ".join(conditions)
        with duckdb.connect() as con:
            self._register_rows(con, plan, schema)
            if wanted is not None:
                con.register("wanted", pa.table({"ticker": pa.array(wanted.astype(str))}))
            if include_history:
                history = [WRITE_TIME, API_INVOCATION_TIME, IS_DELETED]
                columns = ", ".join(pit.quote(c) for c in [RECORD_IDENTIFIER, EVENT_TIME, *names, *history])
                sql = (
                    f"SELECT {columns} FROM feature_rows {'WHERE ' + where if where else ''} "
                    "ORDER BY ticker, event_time, write_time"
                )
            else:
                latest = pit.latest_versions_sql("feature_rows", names, dedupe=plan.versioned, where=where)
                sql = f"SELECT * EXCLUDE (write_time) FROM ({latest}) ORDER BY ticker, event_time"
            table = con.sql(sql).to_arrow_table()
        return pit.arrow_to_frame(table)

    def point_in_time_join(
        self,
        entities: pd.DataFrame,
        features: Sequence[str] | None = None,
        *,
        as_of: object = None,
        ttl: timedelta | pd.Timedelta | None = None,
        entity_time_col: str = "ts",
    ) -> pd.DataFrame:
        """For each entity row, the latest feature values with ``event_time <= ts``.

        Parameters
        ----------
        entities : DataFrame
            ``ticker`` and ``entity_time_col`` (tz-aware); other columns (labels, ...) are
            carried through.
        features : sequence of str, optional
            Features to attach (default: all of the group's).
        as_of : Timestamp, optional
            Bitemporal cut: only versions with ``write_time <= as_of`` count, so corrections
            written later never leak into a backtest. Among qualifying versions of one
            ``event_time`` the latest write wins.
        ttl : timedelta, optional
            Values whose ``event_time`` is before ``ts - ttl`` become NaN.
        entity_time_col : str
            Name of the entity frame's time column.

        Returns
        -------
        DataFrame
            ``entities`` (same rows, order and index) with one ``float64`` column per feature;
            NaN where no feature row qualifies.
        """
        if as_of is not None:
            as_of = utc_timestamp(as_of, "as_of")
        ttl_ns = pit.ttl_nanoseconds(ttl)
        manifest = self._load()
        schema = self._require_schema(manifest)
        names = pit.resolve_features(features, schema.feature_names, self.feature_group)
        keys = pit.validate_entities(entities, entity_time_col, names)
        if len(keys.ts_ns):
            first_day = -(2**63) if ttl_ns is None else (int(keys.ts_ns.min()) - ttl_ns) // _NS_PER_DAY
            last_day = int(keys.ts_ns.max()) // _NS_PER_DAY
            plan = manifest.plan(as_of=as_of, days=lambda day: first_day <= day <= last_day)
        else:
            plan = _ReadPlan([], None, versioned=False)
        with duckdb.connect() as con:
            self._register_rows(con, plan, schema)
            values = pit.asof_join(con, "feature_rows", keys, names, versioned=plan.versioned, ttl_ns=ttl_ns)
        return pit.attach(entities, names, values)


def _empty_rows(schema: FeatureGroupSchema) -> pa.Table:
    return pa.table(
        {
            RECORD_IDENTIFIER: pa.array([], pa.string()),
            EVENT_TIME: pa.array([], _UTC_NS),
            **{name: pa.array([], pa.float64()) for name in schema.feature_names},
            WRITE_TIME: pa.array([], _UTC_NS),
            API_INVOCATION_TIME: pa.array([], _UTC_NS),
            IS_DELETED: pa.array([], pa.bool_()),
        }
    )
