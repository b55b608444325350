"""The point-in-time dataset of a walk-forward run, and of training and monitoring alike.

Rows are the offline store's ``(ticker, event_time)`` rows in the range; labels come from the bars
stored beside the features (the very prices the features were computed from); features are
attached by the offline store's point-in-time join, so no value stamped after a row's ``ts`` can
reach it. :func:`build_dataset` writes ``dataset.parquet``, ``config.json`` and ``dataset.json``
into a run folder (see :mod:`quant_engine.wfo.run_folder`).

``dataset.parquet`` is sorted by time and cut into row groups of whole bars (a calendar month, at most
:data:`ROW_GROUP_ROWS` rows), so one split's fit reads the row groups its rows fall in and the columns
it uses (:func:`read_rows`), not the whole panel: its memory follows the split, not the universe.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from quant_engine.features.bar_history import BarHistory
from quant_engine.features.definitions import get_feature_set
from quant_engine.features.ingest import group_market_time
from quant_engine.features.offline_store import OfflineStore
from quant_engine.storage.atomic import write_bytes_atomic, write_json_atomic
from quant_engine.wfo.config import WfoConfig, WfoConfigError
from quant_engine.wfo.run_folder import KEY_COLUMNS

__all__ = ["ROW_GROUP_ROWS", "build_dataset", "dataset_rows", "read_rows", "row_group_starts", "write_dataset"]

log = logging.getLogger(__name__)

#: Most rows in one row group of ``dataset.parquet`` (a month of daily bars of ~3,000 tickers): the
#: granularity of a split's read, small enough that a month of intraday bars still splits up.
ROW_GROUP_ROWS = 65_536


def build_dataset(config: WfoConfig, run_dir: Path, store: OfflineStore, bar_store: OfflineStore) -> dict[str, Any]:
    """Labels from the stored bars, features from the offline store by point-in-time join.

    Entities are the offline store's ``(ticker, event_time)`` rows inside ``[start, end]``. Labels
    need later prices: they come from the bars ingestion stored beside the features
    (:class:`~quant_engine.features.bar_history.BarHistory`), the very prices the features were
    computed from, so no run needs the source again; each label carries its end ``t1``, and labels
    whose horizon runs past ``end`` are dropped rather than peeking beyond the sample.
    ``fwd_ret_1`` is the next bar's return, which the backtest earns. Features are attached with
    :meth:`~quant_engine.features.offline_store.OfflineStore.point_in_time_join`, so no value
    stamped after a row's ``ts`` can reach it.

    Parameters
    ----------
    config : WfoConfig
    run_dir : Path
        The run folder the dataset is written to.
    store, bar_store : OfflineStore
        The feature group and its bars group (``quant_engine.backends.make_offline_store``).

    Raises
    ------
    WfoConfigError
        Tickers the store does not hold in the range, a range without data, or groups smaller
        than ``config.min_group_rows``.
    """
    run_dir = Path(run_dir)
    first, last = config.start, config.end + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")
    market_time = group_market_time(store)
    if market_time is None:
        raise WfoConfigError(
            f"the offline store (feature group {store.feature_group!r} in {store.fs!r}) is "
            "empty; run the market_data_ingestion DAG or `quant-engine ingest` first"
        )
    names = get_feature_set(config.feature_set).names
    missing_features = [n for n in names if n not in store.schema.feature_names]
    if missing_features:
        raise WfoConfigError(
            f"feature set {config.feature_set!r} needs {missing_features}, which feature group "
            f"{store.feature_group!r} does not hold; ingest with that feature set first"
        )
    keys = store.read(list(config.tickers) if config.tickers else None, first, last)[["ticker", "event_time"]]
    held = sorted(keys["ticker"].unique())
    _check_tickers_held(config, held, store)
    tickers = list(config.tickers) if config.tickers else held
    _check_cross_section(config, tickers)

    bars = BarHistory(bar_store, market_time).read(tickers, first, last, history_bars=config.label.history_bars)
    labels = config.label.labels(bars)
    close = bars[["ticker", "ts", "close"]]
    next_close = close.groupby("ticker", sort=False)["close"].shift(-1)
    fwd = close.assign(fwd_ret_1=next_close / close["close"] - 1.0).dropna(subset=["fwd_ret_1"])
    labelled = labels.merge(fwd[["ticker", "ts", "fwd_ret_1"]], on=["ticker", "ts"], how="inner")
    entities = keys.rename(columns={"event_time": "ts"}).merge(labelled, on=["ticker", "ts"], how="inner")
    if entities.empty:
        raise WfoConfigError(
            f"no row between {config.start.date()} and {config.end.date()} has both stored features and a "
            f"label with its full {config.label.horizon}-bar horizon in the stored bars; widen the range, or "
            "ingest the sessions after it"
        )
    entities = entities.sort_values(["ts", "ticker"], kind="stable").reset_index(drop=True)
    dataset = store.point_in_time_join(entities, names, entity_time_col="ts")
    incomplete = dataset[names].isna().any(axis=1).to_numpy()
    if incomplete.any():
        log.warning("dropping %d rows whose features are incomplete in the store", int(incomplete.sum()))
        dataset = dataset.loc[~incomplete].reset_index(drop=True)

    groups = _row_groups(config, dataset)
    dataset["group"] = groups.astype(np.int16)
    sizes = np.bincount(groups[groups >= 0])
    _check_group_sizes(config, dataset, sizes)
    dataset["label"] = dataset["label"].astype(np.int8)
    dataset = dataset.loc[:, [*KEY_COLUMNS, *names]]
    write_dataset(dataset, run_dir / "dataset.parquet")
    write_json_atomic(run_dir / "config.json", config.to_params(), non_finite="null")
    summary = {
        "rows": len(dataset),
        "tickers": sorted(dataset["ticker"].unique()),
        "first_ts": str(dataset["ts"].iloc[0]),
        "last_ts": str(dataset["ts"].iloc[-1]),
        "features": names,
        "group_rows": sizes.tolist(),
        "untested_rows": int((groups < 0).sum()),
        "positive_label_share": float(dataset["label"].mean()),
        "annualisation": market_time.annualisation(pd.Timestamp(dataset["ts"].iloc[-1]).year),
    }
    write_json_atomic(run_dir / "dataset.json", summary, non_finite="null")
    log.info(
        "dataset: %d rows, %d tickers, %s .. %s",
        summary["rows"],
        len(summary["tickers"]),
        summary["first_ts"],
        summary["last_ts"],
    )
    return summary


def _row_groups(config: WfoConfig, dataset: pd.DataFrame) -> np.ndarray:
    """The splitter's group of every row: CPCV group, K-fold fold or walk-forward test window (-1: never tested)."""
    cv = config.splitter(dataset["t1"].to_numpy())
    frame_for_cv = pd.DataFrame(index=pd.DatetimeIndex(dataset["ts"]))
    try:
        groups = cv.row_groups(frame_for_cv)
    except ValueError as exc:
        if config.splitter_kind == "walk_forward":
            raise WfoConfigError(
                f"the dataset ({frame_for_cv.index.nunique()} bars from {dataset['ts'].iloc[0]} to "
                f"{dataset['ts'].iloc[-1]}) cannot be split by the walk-forward: {exc}"
            ) from None
        raise WfoConfigError(f"the dataset cannot be split into {config.n_groups} groups: {exc}") from None
    return np.asarray(groups)


def _check_group_sizes(config: WfoConfig, dataset: pd.DataFrame, sizes: np.ndarray) -> None:
    """Every group (fold, test window) holds at least ``min_group_rows`` rows.

    A walk-forward's last test window holds what is left of the data and may be shorter: it is one
    more stretch of the single path, not a path of its own, so it is exempt.
    """
    if config.splitter_kind == "walk_forward":
        checked = sizes[:-1]
        if len(checked) and checked.min() < config.min_group_rows:
            window = int(checked.argmin())
            first = dataset.loc[dataset["group"] == window, "ts"].iloc[0]
            raise WfoConfigError(
                f"too few samples per test window: walk-forward test window {window} (from {first}) holds "
                f"{int(checked.min())} rows, fewer than min_group_rows={config.min_group_rows}; use a longer "
                "test_window, add tickers or lower min_group_rows"
            )
        return
    if sizes.min() < config.min_group_rows:
        what = "groups" if config.splitter_kind == "cpcv" else "folds"
        raise WfoConfigError(
            f"too few samples per group: {len(dataset)} rows over {config.n_groups} {what} leave group "
            f"{int(sizes.argmin())} with {int(sizes.min())} rows, fewer than min_group_rows="
            f"{config.min_group_rows}; widen the date range, add tickers or use fewer groups"
        )


def _check_tickers_held(config: WfoConfig, held: Sequence[str], store: Any) -> None:
    span = f"between {config.start.date()} and {config.end.date()}"
    if config.tickers:
        missing = [t for t in config.tickers if t not in set(held)]
        if missing:
            anywhere = set(store.read(missing)["ticker"].unique())
            unknown = [t for t in missing if t not in anywhere]
            if unknown:
                raise WfoConfigError(
                    f"unknown ticker(s) {', '.join(unknown)}: not in the offline store (feature group "
                    f"{store.feature_group!r})"
                )
            raise WfoConfigError(f"ticker(s) {', '.join(missing)} have no stored features {span}")
    elif not held:
        raise WfoConfigError(f"the offline store (feature group {store.feature_group!r}) holds no rows {span}")


def _check_cross_section(config: WfoConfig, tickers: Sequence[str]) -> None:
    """A market-neutral book and an excess label compare tickers with each other: one is not enough."""
    needs = [f"portfolio={config.portfolio!r}"] if config.portfolio == "market_neutral" else []
    needs += [f"label_target={config.label.target!r}"] if config.label.target == "excess" else []
    if needs and len(tickers) < 2:
        raise WfoConfigError(
            f"{' and '.join(needs)} compare tickers with each other and need at least 2, got {list(tickers)}; "
            "add tickers, or use portfolio='directional' with label_target='absolute'"
        )


def row_group_starts(ts: pd.Series | np.ndarray, max_rows: int = ROW_GROUP_ROWS) -> np.ndarray:
    """First row of every row group of a time-sorted dataset: a new group at each calendar month
    (UTC) and before ``max_rows`` rows, always between two bars, so no bar's rows are split across
    groups (a bar holding more than ``max_rows`` rows stays whole in a group of its own)."""
    stamps = pd.DatetimeIndex(ts)
    ts_ns = stamps.asi8
    if len(ts_ns) and np.any(np.diff(ts_ns) < 0):
        raise ValueError("the dataset is not sorted by ts; row groups of whole bars need time order")
    bar_starts = np.flatnonzero(np.r_[True, ts_ns[1:] != ts_ns[:-1]]) if len(ts_ns) else np.array([], int)
    month = stamps.year[bar_starts] * 12 + stamps.month[bar_starts]
    month_starts = bar_starts[np.r_[True, month[1:] != month[:-1]]] if len(bar_starts) else bar_starts
    starts: list[int] = []
    for first, end in zip(month_starts, [*month_starts[1:], len(ts_ns)], strict=True):
        start = int(first)
        starts.append(start)
        while end - start > max_rows:
            last = np.searchsorted(bar_starts, start + max_rows, side="right") - 1  # last bar start that fits
            cut = bar_starts[last] if bar_starts[last] > start else bar_starts[last + 1]  # else one bar overflows
            if cut >= end:
                break
            start = int(cut)
            starts.append(start)
    return np.asarray(starts, dtype=np.int64)


def write_dataset(dataset: pd.DataFrame, path: Path, max_rows: int = ROW_GROUP_ROWS) -> Path:
    """``dataset`` (sorted by ``ts``, without its index) as Parquet in the row groups of
    :func:`row_group_starts`, atomically; ``pd.read_parquet`` reads back the same frame."""
    table = pa.Table.from_pandas(dataset, preserve_index=False)
    starts = row_group_starts(dataset["ts"], max_rows)
    buffer = io.BytesIO()
    with pq.ParquetWriter(buffer, table.schema) as writer:
        for start, end in zip(starts, [*starts[1:], len(dataset)], strict=True):
            writer.write_table(table.slice(start, end - start), row_group_size=end - start)
    return write_bytes_atomic(path, buffer.getvalue())


def dataset_rows(path: Path) -> int:
    """Rows of a Parquet dataset, from its footer (nothing else is read)."""
    return pq.ParquetFile(path).metadata.num_rows


def read_rows(path: Path, rows: np.ndarray, columns: Sequence[str]) -> pd.DataFrame:
    """Rows at the increasing positions ``rows`` of a Parquet dataset, only ``columns``; the frame's
    index is the positions.

    Only the row groups holding one of ``rows`` are read, one at a time, each narrowed to its rows
    before the next is read: the memory follows the rows asked for, not the file. The footer's row
    counts place every position, so the rows are exactly the full read's ``iloc[rows]``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    parquet = pq.ParquetFile(path)
    sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
    offsets = np.r_[0, np.cumsum(sizes, dtype=np.int64)]
    if len(rows) and (np.any(np.diff(rows) <= 0) or rows[0] < 0 or rows[-1] >= offsets[-1]):
        raise ValueError(f"rows must be increasing positions in 0..{offsets[-1] - 1} of {path}")
    pieces = []
    for group in np.unique(np.searchsorted(offsets, rows, side="right") - 1):
        first, end = np.searchsorted(rows, offsets[group : group + 2])
        table = parquet.read_row_group(int(group), columns=list(columns))
        pieces.append(table.take(pa.array(rows[first:end] - offsets[group])))
    if not pieces:
        pieces = [parquet.schema_arrow.empty_table().select(list(columns))]
    frame = pa.concat_tables(pieces).to_pandas()
    frame.index = pd.Index(rows)
    return frame
