"""Daily ingestion: bars from a source -> features -> offline and online store, all or nothing.

The same three steps back the ``market_data_ingestion`` DAG (one task each, handing Parquet files
over between them) and ``quant-engine ingest`` (all in one process).

Beside the features, the bars they were computed from go to a second offline group,
``<feature group>_bars`` (one row per bar, ``event_time`` = the bar's ``ts``), in the same
all-or-nothing unit: the live bridge warms up and backfills from them
(:class:`quant_engine.bridge.history.BarHistory`) and the replay feed can replay them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from quant_engine.config import (
    Settings,
    get_settings,
    make_offline_store,
    make_online_store,
    make_sagemaker_feature_group,
)
from quant_engine.data.sources import make_source
from quant_engine.features.definitions import FeatureSet, get_feature_set
from quant_engine.timeutil import utc_day

log = logging.getLogger(__name__)

SOURCES_NEEDING_PATH = ("csv", "parquet")

#: A write that adds at least this many day files (a backfill) is followed by a compaction, so
#: later point-in-time joins read one sorted snapshot instead of thousands of small files.
COMPACT_AFTER_FILES = 20

#: Calendar days per trading bar, generous: weekends plus a margin for holidays.
_CALENDAR_DAYS_PER_BAR = 1.5

#: The bars group of feature group ``g`` is named ``g + BARS_GROUP_SUFFIX``.
BARS_GROUP_SUFFIX = "_bars"
#: The bar columns stored in the bars group, as float64 "features".
STORED_BAR_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")


class IngestionError(ValueError):
    """An ingestion request that cannot run; the message says which parameter is wrong."""


@dataclass(frozen=True)
class IngestionRequest:
    """What to ingest: a source, its tickers and an inclusive range of days.

    Parameters
    ----------
    source : {"synthetic", "yfinance", "csv", "parquet"}
    start, end : Timestamp
        Inclusive UTC days whose feature rows are written. History before ``start`` is fetched as
        needed to fill every feature window, but never written.
    tickers : tuple of str, optional
        ``None`` means every ticker the source has.
    path : str, optional
        The file or folder for ``csv`` / ``parquet`` sources.
    feature_set : str
        Name of the feature set to compute (``default`` or ``extended``).
    """

    source: str
    start: pd.Timestamp
    end: pd.Timestamp
    tickers: tuple[str, ...] | None = None
    path: str | None = None
    feature_set: str = "default"

    @classmethod
    def build(
        cls,
        source: str,
        start: str | pd.Timestamp,
        end: str | pd.Timestamp | None = None,
        tickers: Sequence[str] | str | None = None,
        path: str | None = None,
        feature_set: str = "default",
    ) -> IngestionRequest:
        """Validate loosely typed parameters (DAG params, CLI flags) into a request."""
        if source in SOURCES_NEEDING_PATH and not path:
            raise IngestionError(f"source={source!r} needs a path to the file or folder of bars")
        start_day = utc_day(start, "start", error=IngestionError)
        end_day = utc_day(end if end is not None else start, "end", error=IngestionError)
        if end_day < start_day:
            raise IngestionError(f"end {end_day.date()} is before start {start_day.date()}")
        if isinstance(tickers, str):
            tickers = [t.strip() for t in tickers.split(",")]
        ticker_tuple = tuple(t for t in tickers if t) if tickers else None
        get_feature_set(feature_set)  # unknown names fail here, before any data moves
        return cls(source, start_day, end_day, ticker_tuple, path, feature_set)

    @classmethod
    def for_run(
        cls,
        logical_date: str | pd.Timestamp,
        source: str,
        start: str | None = None,
        end: str | None = None,
        tickers: Sequence[str] | str | None = None,
        path: str | None = None,
        feature_set: str = "default",
    ) -> IngestionRequest:
        """A request from a DAG run's params, filling the range a user would expect when it is empty.

        A scheduled or bare manual run ingests the last session on or before its logical date; a run
        that names a user's file and no dates ingests the whole file.
        """
        if start is None and end is None and source in SOURCES_NEEDING_PATH and path:
            start, end = file_day_range(source, path, tickers)
        day = last_session_day(logical_date)
        return cls.build(source, start or day, end or start or day, tickers, path, feature_set)


def last_session_day(moment: pd.Timestamp | str, exchange_tz: str = "America/New_York") -> str:
    """The most recent weekday on or before ``moment`` in the exchange's time zone, as ``YYYY-MM-DD``.

    A run triggered by hand on a weekend ingests Friday's session instead of finding no bars.
    """
    stamp = pd.Timestamp(moment)
    day = (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp).tz_convert(exchange_tz).normalize()
    while day.weekday() >= 5:
        day -= pd.Timedelta(days=1)
    return day.strftime("%Y-%m-%d")


def file_day_range(source: str, path: str, tickers: Sequence[str] | str | None = None) -> tuple[str, str]:
    """First and last UTC day of the bars in a user's CSV or Parquet file (or folder)."""
    if isinstance(tickers, str):
        tickers = [t.strip() for t in tickers.split(",") if t.strip()]
    bars, _ = make_source(source, path=path).read(list(tickers) if tickers else None)
    if bars.empty:
        raise IngestionError(f"{path} holds no bars")
    return bars["ts"].min().strftime("%Y-%m-%d"), bars["ts"].max().strftime("%Y-%m-%d")


def history_start(request: IngestionRequest, feature_set: FeatureSet) -> pd.Timestamp:
    """First day to fetch so every feature window is full on ``request.start``."""
    return request.start - pd.Timedelta(days=math.ceil(feature_set.lookback * _CALENDAR_DAYS_PER_BAR) + 7)


def fetch_bars(request: IngestionRequest) -> pd.DataFrame:
    """Validated bars from the source, with enough history before ``start`` for every window."""
    feature_set = get_feature_set(request.feature_set)
    options = {"path": request.path} if request.source in SOURCES_NEEDING_PATH else {}
    source = make_source(request.source, **options)
    end_inclusive = request.end + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")
    bars = source.fetch(list(request.tickers) if request.tickers else None, history_start(request, feature_set),
                        end_inclusive)
    log.info("fetched %d bars for %d tickers from %s", len(bars), bars["ticker"].nunique(), request.source)
    return bars


def compute_features(bars: pd.DataFrame, request: IngestionRequest) -> pd.DataFrame:
    """Feature rows for the requested days whose every window is full.

    Rows inside the range that still lack history (a ticker that started trading recently) are left
    out and counted in the log rather than written with gaps.
    """
    features = get_feature_set(request.feature_set).compute_batch(bars)
    days = features["event_time"].dt.normalize()
    in_range = features.loc[(days >= request.start) & (days <= request.end)]
    complete = in_range.dropna()
    if len(complete) < len(in_range):
        short = sorted(set(in_range["ticker"]) - set(complete["ticker"])) or sorted(set(in_range["ticker"]))
        log.warning("left out %d rows without full feature history (tickers: %s)",
                    len(in_range) - len(complete), ", ".join(short[:10]))
    if complete.empty:
        raise IngestionError(
            f"no complete feature rows between {request.start.date()} and {request.end.date()} "
            f"(source {request.source!r}); is the range a trading period the source covers?"
        )
    return complete.reset_index(drop=True)


def bars_in_range(bars: pd.DataFrame, request: IngestionRequest) -> pd.DataFrame:
    """The bars of the requested days, the ones stored beside the features.

    History fetched before ``start`` only fills feature windows; it is stored by the run that
    asks for its own days.
    """
    days = bars["ts"].dt.normalize()
    return bars.loc[(days >= request.start) & (days <= request.end)].reset_index(drop=True)


def bars_group_name(feature_group: str) -> str:
    """The offline group that holds the bars feature group ``feature_group`` was computed from."""
    return f"{feature_group}{BARS_GROUP_SUFFIX}"


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


def write_features(features: pd.DataFrame, settings: Settings | None = None,
                   feature_group: str | None = None, *, bars: pd.DataFrame | None = None) -> IngestionResult:
    """Write to the offline store, then the online store, as one unit.

    The offline writes (features, then ``bars`` into the bars group) are one atomic commit each. If
    a later write fails, the commits already made are reverted, so a failed ingestion leaves every
    store exactly as it was. Where a SageMaker Feature Store group is configured it is written
    inside the online store's transaction: if it refuses the records, the online and offline
    writes are undone too (its own records are upserts keyed by ticker and event time, so the
    retry that follows rewrites them harmlessly).

    Parameters
    ----------
    features : DataFrame
        Complete feature rows (see :func:`compute_features`).
    settings : Settings, optional
        Default: from the environment.
    feature_group : str, optional
        Default: ``settings.feature_group``.
    bars : DataFrame, optional
        Validated bars to store in ``<feature group>_bars`` (see :func:`bars_in_range`).
    """
    settings = settings or get_settings()
    group = feature_group or settings.feature_group
    offline = make_offline_store(settings, group)
    bar_store = make_offline_store(settings, bars_group_name(group)) if bars is not None else None
    online = make_online_store(settings, group)
    sagemaker_group = make_sagemaker_feature_group(settings, group)
    commit = offline.write(features)
    bar_commit = None
    try:
        if bar_store is not None:
            bar_commit = bar_store.write(bars_to_rows(bars))
        with online.transaction():
            updated = online.put(features)
            if sagemaker_group is not None:
                sagemaker_group.write(features)
    except BaseException:
        for store, made in ((bar_store, bar_commit), (offline, commit)):
            if made is not None and made.commit_id is not None:
                log.error("ingestion failed; reverting commit %s of %s", made.commit_id, store.feature_group)
                store.revert(made.commit_id)
        raise
    if len(commit.files) >= COMPACT_AFTER_FILES:
        offline.compact()
    if bar_commit is not None and len(bar_commit.files) >= COMPACT_AFTER_FILES:
        bar_store.compact()
    return IngestionResult(
        rows_received=len(features),
        rows_written_offline=commit.rows_written,
        rows_updated_online=int(updated),
        tickers=int(features["ticker"].nunique()),
        start=str(features["event_time"].min()),
        end=str(features["event_time"].max()),
        bars_written_offline=0 if bar_commit is None else bar_commit.rows_written,
    )


def ingest(request: IngestionRequest, settings: Settings | None = None) -> IngestionResult:
    """Fetch, compute and write in one process (the CLI's path; the DAG runs the steps as tasks)."""
    bars = fetch_bars(request)
    return write_features(compute_features(bars, request), settings, bars=bars_in_range(bars, request))


def stage_frame(frame: pd.DataFrame, path: Path) -> str:
    """Write ``frame`` to Parquet atomically, for handing over between DAG tasks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return str(path)
