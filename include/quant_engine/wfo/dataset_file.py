"""``dataset.parquet``'s layout: written in row groups of whole bars, read back split by split.

Kept apart from the dataset's construction (:mod:`quant_engine.wfo.dataset`, which needs the
feature store and DuckDB) so a fit task, and the SageMaker job image that runs one, imports only
NumPy, pandas and PyArrow to read its rows.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from quant_engine.storage.atomic import write_bytes_atomic

__all__ = ["ROW_GROUP_ROWS", "dataset_rows", "read_rows", "row_group_starts", "write_dataset"]

#: Most rows in one row group of ``dataset.parquet`` (a month of daily bars of ~3,000 tickers): the
#: granularity of a split's read, small enough that a month of intraday bars still splits up.
ROW_GROUP_ROWS = 65_536


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
