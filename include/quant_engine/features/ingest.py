"""Ingestion: bars from a source -> features -> offline and online store, all or nothing.

The same three steps back the ``market_data_ingestion`` DAG (one task each, handing Parquet files
over between them) and ``quant-engine ingest`` (all in one process).

Time follows the group's calendar (:mod:`quant_engine.calendars`). A feature group declares its
market time, the exchange calendar and bar size its bars are stamped by, when it is first written;
every later ingestion must match it, and a group written before calendars existed (every daily bar
at 21:00 UTC) is refused with the way out (:class:`StaleStoreError`). A request ingests *sessions*:
those labelled ``start..end``, or, in a scheduled run, those that closed in the run's data
interval; a range without a session (a holiday) is :class:`NoSessionToIngest`, a clean skip.

Beside the features, the bars they were computed from go to a second offline group,
``<feature group>_bars`` (one row per bar, ``event_time`` = the bar's ``ts``), in the same
all-or-nothing unit: the live bridge warms up and backfills from them
(:class:`quant_engine.features.bar_history.BarHistory`) and the replay feed can replay them.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quant_engine.calendars import DEFAULT_BAR_SIZE, DEFAULT_CALENDAR, CalendarError, MarketTime
from quant_engine.data.files import CsvSource, ParquetSource
from quant_engine.data.plausibility import STAMPED_AT_CHOICES, ScaleLimits, StampedAt, conform_bars
from quant_engine.data.schema import ON_ERROR_CHOICES, OnError
from quant_engine.data.sources import SOURCE_NAMES, make_source, source_on
from quant_engine.features.definitions import FeatureSet
from quant_engine.features.offline_store import FeatureGroupSchema, OfflineStore
from quant_engine.features.registry import feature_set_names, get_feature_set
from quant_engine.features.stores import BARS_GROUP_SUFFIX, GroupStores
from quant_engine.storage.atomic import write_parquet_atomic
from quant_engine.storage.filesystem import overwrite_atomic
from quant_engine.timeutil import utc_day
from quant_engine.validation import parse_tickers

log = logging.getLogger(__name__)

SOURCES_NEEDING_PATH = ("csv", "parquet")

#: A write that adds at least this many day files (a backfill) is followed by a compaction, so
#: later point-in-time joins read one sorted snapshot instead of thousands of small files.
COMPACT_AFTER_FILES = 20

#: Sessions fetched before the first ingested one beyond what the longest feature window needs:
#: the plausibility check's recent scale needs its own history too.
_EXTRA_HISTORY_SESSIONS = 5

#: The bar columns stored in the bars group, as float64 "features".
STORED_BAR_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")

#: Every parameter an ingestion takes (DAG params, ``--conf``, CLI flags), with its default.
INGEST_PARAMS: dict[str, Any] = {
    "source": "synthetic",
    "path": None,
    "tickers": None,
    "start": None,
    "end": None,
    "feature_set": "default",
    "calendar": None,
    "bar_size": None,
    "assume_tz": None,
    "date_close": None,
    "on_error": "raise",
    "stamped_at": "close",
    "max_return_multiple": ScaleLimits().max_return_multiple,
    "max_volume_multiple": ScaleLimits().max_volume_multiple,
}
#: Reading options only files take.
_FILE_OPTIONS = ("assume_tz", "date_close")
_NULL_TURNS_OFF = ("max_return_multiple", "max_volume_multiple")


class IngestionError(ValueError):
    """An ingestion request that cannot run; the message says which parameter is wrong."""


class StaleStoreError(IngestionError):
    """A feature group written before the calendar time rule: its stamps cannot be mixed with new ones."""


class NoSessionToIngest(Exception):  # noqa: N818 - not an error: the caller skips cleanly
    """The requested range or run holds no session of the calendar (a holiday, a weekend): nothing to do."""


@dataclass(frozen=True)
class IngestionRequest:
    """What to ingest, resolved against the target group: sessions of a calendar, a source, its options.

    Build it with :meth:`from_params` (or :meth:`build`); :meth:`to_dict` / :meth:`from_dict` hand
    it between DAG tasks unchanged.

    Parameters
    ----------
    source : {"synthetic", "yfinance", "csv", "parquet"}
    first_session, last_session : Timestamp
        Labels (dates at the exchange) of the first and last session whose feature rows are
        written. History before them is fetched to fill every feature window, never written.
    market_time : MarketTime
        The group's calendar and bar size.
    tickers : tuple of str, optional
        ``None`` means every ticker the source has.
    path : str, optional
        The file or folder for ``csv`` / ``parquet`` sources.
    feature_set : str
        Name of the feature set to compute.
    assume_tz, date_close, on_error, stamped_at, limits
        How bars are read and judged (:mod:`quant_engine.data.files`,
        :func:`quant_engine.data.plausibility.conform_bars`).
    """

    source: str
    first_session: pd.Timestamp
    last_session: pd.Timestamp
    market_time: MarketTime = field(default_factory=MarketTime)
    tickers: tuple[str, ...] | None = None
    path: str | None = None
    feature_set: str = "default"
    assume_tz: str | None = None
    date_close: str | None = None
    on_error: OnError = "raise"
    stamped_at: StampedAt = "close"
    limits: ScaleLimits = field(default_factory=ScaleLimits)

    @classmethod
    def from_params(
        cls,
        params: Mapping[str, Any],
        group: OfflineStore | None = None,
        *,
        window: tuple[object, object] | None = None,
        now: object = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> IngestionRequest:
        """Validate loosely typed parameters (DAG params, CLI flags) into a request.

        Missing or null keys take ``defaults`` (the run defaults of the settings,
        :attr:`quant_engine.config.Settings.run_defaults`: ``source``, ``path``, ``tickers``), then
        :data:`INGEST_PARAMS`; a default ``path`` belongs to the default source and is dropped when
        ``params`` name another. An unknown key is an error, never ignored. The
        sessions are ``start..end`` when given; else the whole file for a csv / parquet source;
        else those that closed in ``window`` (a scheduled run's data interval, ``(after, until]``);
        else the last session closed by ``now``. ``group`` is the target feature group's offline
        store: the calendar and bar size it declared are the defaults, and must match.

        Raises
        ------
        IngestionError
            A parameter that cannot be used, named with the rule it breaks.
        StaleStoreError
            The group was written before the calendar time rule.
        NoSessionToIngest
            The range holds no session.
        """
        if not isinstance(params, Mapping):
            raise IngestionError(f"ingestion parameters must be a mapping, got {type(params).__name__}")
        unknown = sorted(set(params) - set(INGEST_PARAMS))
        if unknown:
            raise IngestionError(f"unknown ingestion parameter(s) {unknown}; known: {', '.join(INGEST_PARAMS)}")
        base = {**INGEST_PARAMS, **(defaults or {})}
        unknown = sorted(set(base) - set(INGEST_PARAMS))
        if unknown:
            raise IngestionError(f"unknown default(s) {unknown}; known: {', '.join(INGEST_PARAMS)}")
        if params.get("source") not in (None, base["source"]):
            base["path"] = None  # the default path is the default source's file
        # null means "the default", except for a plausibility limit, where it turns the check off.
        p = {**base, **{k: v for k, v in params.items() if v is not None or k in _NULL_TURNS_OFF}}
        if p["source"] not in SOURCE_NAMES:
            raise IngestionError(f"source={p['source']!r} is not a data source; use one of {', '.join(SOURCE_NAMES)}")
        if p["source"] in SOURCES_NEEDING_PATH and not p["path"]:
            raise IngestionError(f"source={p['source']!r} needs a path to the file or folder of bars")
        if p["source"] not in SOURCES_NEEDING_PATH:
            given = [k for k in ("path", *_FILE_OPTIONS) if params.get(k) is not None]
            if given:
                raise IngestionError(
                    f"{', '.join(given)} only apply to the csv and parquet sources, not source={p['source']!r}"
                )
        for name, choices in (("on_error", ON_ERROR_CHOICES), ("stamped_at", STAMPED_AT_CHOICES)):
            if p[name] not in choices:
                raise IngestionError(f"{name}={p[name]!r} is not one of {', '.join(choices)}")
        if p["feature_set"] not in feature_set_names():
            raise IngestionError(
                f"feature_set={p['feature_set']!r} is not a feature set; use one of {', '.join(feature_set_names())}"
            )
        try:
            limits = ScaleLimits(p["max_return_multiple"], p["max_volume_multiple"])
        except ValueError as exc:
            raise IngestionError(str(exc)) from None
        stored = None if group is None else group_market_time(group)
        market_time = _market_time(p["calendar"], p["bar_size"], stored)
        tickers = parse_tickers(p["tickers"], error=IngestionError)
        first, last = _session_range(p, market_time, tickers, window, now)
        return cls(
            p["source"],
            first,
            last,
            market_time,
            tickers,
            p["path"],
            p["feature_set"],
            p["assume_tz"],
            p["date_close"],
            p["on_error"],
            p["stamped_at"],
            limits,
        )

    @classmethod
    def build(
        cls,
        source: str,
        start: object,
        end: object = None,
        tickers: Sequence[str] | str | None = None,
        path: str | None = None,
        feature_set: str = "default",
        *,
        group: OfflineStore | None = None,
        now: object = None,
        **options: Any,
    ) -> IngestionRequest:
        """``from_params`` with the common parameters spelled out (``end`` defaults to ``start``)."""
        params = {
            "source": source,
            "start": start,
            "end": end,
            "tickers": tickers,
            "path": path,
            "feature_set": feature_set,
            **options,
        }
        return cls.from_params(params, group, now=now)

    @property
    def sessions(self) -> pd.DatetimeIndex:
        """Labels of the sessions whose rows this request writes."""
        return self.market_time.exchange.sessions(self.first_session, self.last_session)

    def describe(self) -> str:
        first, last = self.first_session.date(), self.last_session.date()
        span = f"session {first}" if first == last else f"sessions {first} .. {last}"
        return f"{span} ({len(self.sessions)} of {self.market_time.calendar}, {self.market_time.bar_size} bars)"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form that :meth:`from_dict` reads back into an equal request."""
        return {
            **{k: v for k, v in asdict(self).items() if k not in ("market_time", "limits")},
            "first_session": str(self.first_session.date()),
            "last_session": str(self.last_session.date()),
            "tickers": list(self.tickers) if self.tickers else None,
            "calendar": self.market_time.calendar,
            "bar_size": self.market_time.bar_size,
            **asdict(self.limits),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IngestionRequest:
        values = dict(data)
        market_time = MarketTime(values.pop("calendar"), values.pop("bar_size"))
        limits = ScaleLimits(values.pop("max_return_multiple"), values.pop("max_volume_multiple"))
        tickers = values.pop("tickers")
        return cls(
            **{
                **values,
                "first_session": pd.Timestamp(values["first_session"]),
                "last_session": pd.Timestamp(values["last_session"]),
                "market_time": market_time,
                "limits": limits,
                "tickers": tuple(tickers) if tickers else None,
            }
        )


def _market_time(calendar: str | None, bar_size: str | None, stored: MarketTime | None) -> MarketTime:
    """The request's market time: what it names, else the group's, else XNYS daily; a clash is an error."""
    try:
        wanted = MarketTime(
            calendar or (stored.calendar if stored else DEFAULT_CALENDAR),
            bar_size or (stored.bar_size if stored else DEFAULT_BAR_SIZE),
        )
    except CalendarError as exc:
        raise IngestionError(str(exc)) from None
    if stored is not None and wanted != stored:
        raise IngestionError(
            f"the feature group holds {stored.describe()}; this run asks for {wanted.describe()}. "
            "A group has one calendar and bar size: ingest into another group (QE_FEATURE_GROUP) instead"
        )
    return wanted


def _session_range(
    p: Mapping[str, Any],
    market_time: MarketTime,
    tickers: tuple[str, ...] | None,
    window: tuple[object, object] | None,
    now: object,
) -> tuple[pd.Timestamp, pd.Timestamp]:
    calendar = market_time.exchange
    if p["start"] is None and p["end"] is None and p["source"] in SOURCES_NEEDING_PATH:
        first, last = file_session_range(p["source"], p["path"], tickers, market_time, p["assume_tz"], p["date_close"])
    elif p["start"] is not None or p["end"] is not None:
        first = utc_day(p["start"] if p["start"] is not None else p["end"], "start", error=IngestionError)
        last = utc_day(p["end"] if p["end"] is not None else p["start"], "end", error=IngestionError)
        if last < first:
            raise IngestionError(f"end {last.date()} is before start {first.date()}")
        first, last = first.tz_localize(None), last.tz_localize(None)
    else:
        if window is not None:
            lo, hi = calendar.sessions_closing_in(*window)
            span = f"no {calendar.name} session closed between {window[0]} and {window[1]}"
        else:
            moment = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
            last_closed = calendar.last_closed_session(moment)
            lo, hi = (0, 0) if last_closed is None else (last_closed, last_closed + 1)
            span = f"no {calendar.name} session closed by {moment}"
        if hi <= lo:
            raise NoSessionToIngest(f"{span}: nothing to ingest")
        return calendar.session_label(lo), calendar.session_label(hi - 1)
    if len(calendar.sessions(first, last)) == 0:
        raise NoSessionToIngest(
            f"no {calendar.name} session between {first.date()} and {last.date()} "
            "(a holiday or a weekend): nothing to ingest"
        )
    return first, last


def file_session_range(
    source: str,
    path: str,
    tickers: Sequence[str] | None,
    market_time: MarketTime,
    assume_tz: str | None = None,
    date_close: str | None = None,
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Labels of the first and last session the bars of a user's CSV or Parquet file (or folder) fall in."""
    files = make_source(
        source, path=path, assume_tz=assume_tz, date_close=date_close, on_error="drop", calendar=market_time.calendar
    )
    assert isinstance(files, (CsvSource, ParquetSource)), "make_source refuses a path for any other source"
    bars, _ = files.read(list(tickers) if tickers else None)
    sessions = market_time.session_indices(bars["ts"])
    sessions = sessions[sessions >= 0]
    if len(sessions) == 0:
        raise IngestionError(f"{path} holds no bar of a {market_time.calendar} session")
    calendar = market_time.exchange
    return calendar.session_label(int(sessions.min())), calendar.session_label(int(sessions.max()))


def group_market_time(store: OfflineStore) -> MarketTime | None:
    """The market time a feature group declared when it was created (None: the group is new).

    Raises
    ------
    StaleStoreError
        The group was written before the calendar time rule.
    """
    schema = store.schema
    if schema is None:
        return None
    try:
        return MarketTime.from_json(schema.parameters)
    except (CalendarError, KeyError):
        base = store.feature_group.removesuffix(BARS_GROUP_SUFFIX)
        raise StaleStoreError(
            f"feature group {store.feature_group!r} was written before exchange calendars: its daily bars "
            "are stamped 21:00 UTC all year (a summer close is 20:00 UTC) and holidays are in it, so its rows "
            "cannot be mixed with bars stamped by the calendar. Re-ingest it: `quant-engine features drop "
            f"{base}`, then ingest again (`quant-engine ingest --start ... --end ...` or the "
            "market_data_ingestion DAG)"
        ) from None


# --- the three steps -------------------------------------------------------------------------------


def fetch_bars(request: IngestionRequest, *, now: object = None) -> pd.DataFrame:
    """Bars from the source, stamped by the calendar and checked, with history for every feature window.

    Raises
    ------
    BarValidationError
        Bars outside the calendar's sessions, off its bar grid, after ``now``, or implausible, as
        ``request.on_error`` says (the message names each ``(ticker, ts)``).
    """
    feature_set = get_feature_set(request.feature_set)
    calendar, size = request.market_time.exchange, request.market_time.size
    lo, hi = calendar.session_range(request.first_session, request.last_session)
    bars_per_session = 1 if size.minutes is None else max(1, math.floor(calendar.regular_minutes / size.minutes))
    first = max(0, lo - math.ceil(feature_set.lookback / bars_per_session) - _EXTRA_HISTORY_SESSIONS)
    fetch_from = pd.Timestamp(int(calendar.open_ns[first]), tz="UTC")
    fetch_until = pd.Timestamp(int(calendar.close_ns[hi - 1]), tz="UTC")
    bars = _source(request).fetch(list(request.tickers) if request.tickers else None, fetch_from, fetch_until)
    bars, report = conform_bars(
        bars,
        request.market_time,
        now=now,
        on_error=request.on_error,
        stamped_at=request.stamped_at,
        limits=request.limits,
    )
    log.info(
        "fetched %d bars for %d tickers from %s: %s",
        len(bars),
        bars["ticker"].nunique(),
        request.source,
        report.summary(),
    )
    return bars


def _source(request: IngestionRequest) -> Any:
    options: dict[str, Any] = {}
    if request.source in SOURCES_NEEDING_PATH:
        options.update(
            path=request.path, assume_tz=request.assume_tz, date_close=request.date_close, on_error=request.on_error
        )
    return source_on(request.source, request.market_time, **options)


def compute_features(bars: pd.DataFrame, request: IngestionRequest) -> pd.DataFrame:
    """Feature rows of the requested sessions whose every window is full.

    Rows inside the range that still lack history (a ticker that started trading recently) are left
    out and counted in the log rather than written with gaps.

    Raises
    ------
    IngestionError
        The feature set needs columns the bars do not have (close-only data), or no complete row.
    """
    feature_set = get_feature_set(request.feature_set)
    check_columns(bars, feature_set)
    features = feature_set.compute_batch(bars)
    in_range = features.loc[_in_sessions(features["event_time"], request)]
    complete = in_range.dropna()
    if len(complete) < len(in_range):
        short = sorted(set(in_range["ticker"]) - set(complete["ticker"])) or sorted(set(in_range["ticker"]))
        log.warning(
            "left out %d rows without full feature history (tickers: %s)",
            len(in_range) - len(complete),
            ", ".join(short[:10]),
        )
    if complete.empty:
        raise IngestionError(
            f"no complete feature rows in {request.describe()} (source {request.source!r}); does the source "
            "cover that period with enough history before it?"
        )
    return complete.reset_index(drop=True)


def check_columns(bars: pd.DataFrame, feature_set: FeatureSet) -> None:
    """Refuse a feature set whose inputs some ticker's bars do not really have.

    A close-only source fills open/high/low from the close and volume with 0 (valid bars), so a
    ticker whose every bar is flat has no range, and one whose every volume is 0 has no volume.
    """
    flat = bars["high"].eq(bars["low"]) & bars["open"].eq(bars["close"]) & bars["high"].eq(bars["close"])
    by_ticker = pd.DataFrame({"ticker": bars["ticker"], "no_range": flat, "no_volume": bars["volume"].eq(0)})
    absent = by_ticker.groupby("ticker").all()
    needs_range = bool({"open", "high", "low"} & set(feature_set.input_columns))
    needs_volume = "volume" in feature_set.input_columns
    problems = []
    if needs_range and absent["no_range"].any():
        problems.append(("open, high and low", sorted(absent.index[absent["no_range"]])))
    if needs_volume and absent["no_volume"].any():
        problems.append(("volume", sorted(absent.index[absent["no_volume"]])))
    if problems:
        have = (
            {"close"}
            | ({"open", "high", "low"} if not absent["no_range"].any() else set())
            | ({"volume"} if not absent["no_volume"].any() else set())
        )
        fits = [name for name in feature_set_names() if set(get_feature_set(name).input_columns) <= have]
        missing = "; ".join(
            f"{what} (ticker(s) {', '.join(tickers[:5])}{' ...' if len(tickers) > 5 else ''})"
            for what, tickers in problems
        )
        raise IngestionError(
            f"feature set {feature_set.name!r} needs columns these bars do not have: {missing}; "
            f"use feature_set={' or '.join(repr(f) for f in fits)}"
        )


def _in_sessions(stamps: pd.Series, request: IngestionRequest) -> np.ndarray:
    calendar = request.market_time.exchange
    lo, hi = calendar.session_range(request.first_session, request.last_session)
    sessions = request.market_time.session_indices(stamps)
    return (sessions >= lo) & (sessions < hi)


def bars_in_range(bars: pd.DataFrame, request: IngestionRequest) -> pd.DataFrame:
    """The bars of the requested sessions, the ones stored beside the features.

    History fetched before the first session only fills feature windows; it is stored by the run
    that asks for its own sessions.
    """
    return bars.loc[_in_sessions(bars["ts"], request)].reset_index(drop=True)


def bars_to_rows(bars: pd.DataFrame) -> pd.DataFrame:
    """Validated bars as rows of the bars group: ``ticker``, ``event_time`` (= ``ts``), float64 OHLCV."""
    bars = bars.reset_index(drop=True)
    rows = pd.DataFrame({"ticker": bars["ticker"].astype(str), "event_time": bars["ts"].dt.tz_convert("UTC")})
    for column in STORED_BAR_COLUMNS:
        rows[column] = bars[column].astype("float64")
    return rows


@dataclass(frozen=True)
class IngestionResult:
    rows_received: int
    rows_written_offline: int
    rows_updated_online: int
    tickers: int
    start: str
    end: str
    bars_written_offline: int = 0


def declare_market_time(store: OfflineStore, columns: Sequence[str], market_time: MarketTime, version: int = 1) -> None:
    """Create ``store``'s group with ``columns`` declaring ``market_time``, or check that it holds the same.

    Raises
    ------
    StaleStoreError
        The group was written before the calendar time rule.
    IngestionError
        The group declares another calendar or bar size, or holds other features.
    """
    stored = group_market_time(store)
    if stored is None:
        store.create_group(
            FeatureGroupSchema.for_features(list(columns), version=version, parameters=market_time.to_json())
        )
        return
    if stored != market_time:
        raise IngestionError(
            f"feature group {store.feature_group!r} holds {stored.describe()}, not "
            f"{market_time.describe()}; ingest into another group (QE_FEATURE_GROUP) instead"
        )
    schema = store.schema
    assert schema is not None, "group_market_time found this group's schema"
    held = list(schema.feature_names)
    if held != list(columns):
        missing, extra = [c for c in columns if c not in held], [c for c in held if c not in columns]
        raise IngestionError(
            f"feature group {store.feature_group!r} holds other features than this run computes (it lacks "
            f"{missing or 'none'}, this run lacks {extra or 'none'}): one group, one feature set. Ingest into "
            f"another group (set QE_FEATURE_GROUP, e.g. {store.feature_group}_2), or drop this one "
            f"(quant-engine features drop {store.feature_group.removesuffix(BARS_GROUP_SUFFIX)})"
        )


def write_features(
    features: pd.DataFrame,
    stores: GroupStores,
    *,
    bars: pd.DataFrame | None = None,
    market_time: MarketTime | None = None,
) -> IngestionResult:
    """Write to the offline store, then the online store, as one unit that survives a crash.

    The writes of one ingestion (features, ``bars`` into the bars group, the online store, and a
    SageMaker Feature Store group where one is configured) go through a journal
    (:class:`IngestionJournal`): the frames are staged first, then the journal is committed, then
    each store is written. A write that *fails* reverts the offline commits already made and drops
    the journal, so the stores are exactly as they were; a process *killed* half-way leaves the
    journal, and the next ingestion of the group finishes it before anything else (every write is
    idempotent), so no store is left holding what another lacks. A compaction a crash skipped is
    made up by the next write that finds enough files outside the snapshot.

    Parameters
    ----------
    features : DataFrame
        Complete feature rows (see :func:`compute_features`).
    stores : GroupStores
        The feature group's stores (``quant_engine.backends.make_group_stores``).
    bars : DataFrame, optional
        Validated bars to store in ``<feature group>_bars`` (see :func:`bars_in_range`).
    market_time : MarketTime, optional
        The calendar and bar size the rows are stamped by (default: XNYS daily); declared by a new
        group, checked against an existing one.
    """
    journal = IngestionJournal(stores.offline)
    journal.finish_pending(stores)
    market_time = market_time or MarketTime()
    declare_market_time(stores.offline, [c for c in features.columns if c not in ("ticker", "event_time")], market_time)
    if bars is not None:
        declare_market_time(stores.bars, STORED_BAR_COLUMNS, market_time)
    journal.begin(features, bars)
    try:
        result = _write_stores(features, bars, stores)
    except BaseException:
        journal.end()  # the failed write reverted itself: nothing is left to finish
        raise
    journal.end()
    return result


def _write_stores(features: pd.DataFrame, bars: pd.DataFrame | None, stores: GroupStores) -> IngestionResult:
    """Each store in turn; a failure reverts the offline commits made before it."""
    offline, online, mirror = stores.offline, stores.online, stores.mirror
    bar_store = stores.bars if bars is not None else None
    commit = offline.write(features)
    bar_commit = None
    try:
        if bar_store is not None:
            bar_commit = bar_store.write(bars_to_rows(bars))
        with online.transaction():
            updated = online.put(features)
            if mirror is not None:
                mirror.write(features)
    except BaseException:
        for store, made in ((bar_store, bar_commit), (offline, commit)):
            if store is not None and made is not None and made.commit_id is not None:
                log.error("ingestion failed; reverting commit %s of %s", made.commit_id, store.feature_group)
                store.revert(made.commit_id)
        raise
    for store in (offline, bar_store):
        if store is not None and store.uncompacted_files() >= COMPACT_AFTER_FILES:
            store.compact()
    return IngestionResult(
        rows_received=len(features),
        rows_written_offline=commit.rows_written,
        rows_updated_online=int(updated),
        tickers=int(features["ticker"].nunique()),
        start=str(features["event_time"].min()),
        end=str(features["event_time"].max()),
        bars_written_offline=0 if bar_commit is None else bar_commit.rows_written,
    )


class IngestionJournal:
    """The write-ahead record of one ingestion in flight, kept in the feature group's own storage.

    ``pending-ingestion/`` beside the group's data holds the staged frames and ``journal.json``,
    committed last (one atomic replace): while it exists, an ingestion began writing the stores and
    did not end. :meth:`finish_pending` writes those frames again (every store write is
    idempotent), then removes the journal.
    """

    FOLDER = "pending-ingestion"

    def __init__(self, store: OfflineStore) -> None:
        self.fs = store.fs
        self.key = f"{store.feature_group}/{self.FOLDER}"

    def _staged(self, name: str) -> str:
        return f"{self.key}/{name}.parquet"

    def begin(self, features: pd.DataFrame, bars: pd.DataFrame | None) -> None:

        staged = {"features": features, **({"bars": bars} if bars is not None else {})}
        for name, frame in staged.items():
            buffer = io.BytesIO()
            frame.to_parquet(buffer, index=False)
            self.fs.write(self._staged(name), buffer.getvalue())
        journal = {"frames": sorted(staged), "began": pd.Timestamp.now(tz="UTC").isoformat()}
        overwrite_atomic(self.fs, f"{self.key}/journal.json", json.dumps(journal).encode())

    def pending(self) -> dict[str, pd.DataFrame] | None:
        """The staged frames of an ingestion that did not end, or None."""

        found = self.fs.read_versioned(f"{self.key}/journal.json")
        if found is None:
            return None
        names = json.loads(found[0])["frames"]
        return {name: pd.read_parquet(io.BytesIO(self.fs.read(self._staged(name)))) for name in names}

    def finish_pending(self, stores: GroupStores) -> IngestionResult | None:
        """Finish an ingestion a crash interrupted (its stores written again, idempotently), or do nothing."""
        frames = self.pending()
        if frames is None:
            return None
        log.warning(
            "finishing an ingestion of %s that did not end (%d feature rows): a crash interrupted it",
            stores.name,
            len(frames["features"]),
        )
        result = _write_stores(frames["features"], frames.get("bars"), stores)
        self.end()
        return result

    def end(self) -> None:
        """Remove the journal first (the ingestion is complete), then its staged frames."""
        for key in [f"{self.key}/journal.json", *(k for k in self.fs.list(self.key) if not k.endswith("journal.json"))]:
            self.fs.delete(key)


def drop_feature_group(stores: GroupStores, *, dry_run: bool = False) -> list[str]:
    """Delete a feature group, its bars group and its online records; what went (or would go), one line each."""
    gone = []
    for store in (stores.offline, stores.bars):
        keys = store.drop(dry_run=dry_run)
        gone.append(f"offline group {store.feature_group!r}: {len(keys)} file(s)")
    if dry_run:
        gone.append(f"online records of {stores.name!r}")
    else:
        gone.append(f"online records of {stores.name!r}: {stores.online.delete_group()}")
    return gone


def ingest(request: IngestionRequest, stores: GroupStores, *, now: object = None) -> IngestionResult:
    """Fetch, compute and write in one process (the CLI's path; the DAG runs the steps as tasks)."""
    bars = fetch_bars(request, now=now)
    return write_features(
        compute_features(bars, request), stores, bars=bars_in_range(bars, request), market_time=request.market_time
    )


def stage_frame(frame: pd.DataFrame, path: Path) -> str:
    """Write ``frame`` to Parquet atomically, for handing over between DAG tasks."""
    return str(write_parquet_atomic(frame, path))
