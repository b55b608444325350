"""A split's fit reads only its rows: the same rows, the same model and the same bytes as the whole-panel read.

The run folders here are built without an offline store (a random panel with the dataset's columns,
grouped by the configured splitter, written by :func:`write_dataset` in small row groups), so every
splitter is checked on many row-group boundaries in a fraction of a second each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from quant_engine.features.registry import get_feature_set
from quant_engine.storage.atomic import write_json_atomic
from quant_engine.wfo.config import WfoConfig
from quant_engine.wfo.dataset_file import dataset_rows, read_rows, row_group_starts, write_dataset
from quant_engine.wfo.plan import plan
from quant_engine.wfo.run_folder import KEY_COLUMNS, TEST, TRAIN, load_dataset, prediction_path, split_path
from quant_engine.wfo.runner import run_split

BASE = {
    "start": "2020-01-01",
    "end": "2021-06-30",
    "min_group_rows": 20,
    "embargo": "4D",
    "trials": [{"max_depth": 2, "n_estimators": 8}, {"max_depth": 3, "n_estimators": 8}],
}
SPLITTERS = {
    "cpcv": {"splitter": "cpcv", "n_groups": 5, "n_test_groups": 2},
    "purged_kfold": {"splitter": "purged_kfold", "n_groups": 4},
    "anchored": {"splitter": "walk_forward", "train_window": "120D", "test_window": "60D"},
    "rolling": {"splitter": "walk_forward", "train_window": 80, "test_window": 40, "anchored": False, "embargo": 3},
}


def _panel(config: WfoConfig, seed: int, tickers: int = 5) -> pd.DataFrame:
    """A time-sorted random panel with the dataset's columns; some (ticker, bar) rows are missing, so
    bars hold different row counts and row groups never line up with a multiple of the tickers."""
    rng = np.random.default_rng(seed)
    days = pd.bdate_range(config.start, config.end, tz="UTC")
    grid = pd.MultiIndex.from_product([days, [f"T{i}" for i in range(tickers)]], names=["ts", "ticker"])
    frame = grid.to_frame(index=False).loc[rng.random(len(grid)) > 0.15].reset_index(drop=True)
    horizon = pd.to_timedelta(rng.integers(1, 6, len(frame)), unit="D")  # labels span up to 5 days
    frame["t1"] = frame["ts"] + horizon
    frame["ret"] = rng.normal(0, 0.01, len(frame))
    frame["label"] = (frame["ret"] > 0).astype(np.int8)
    frame["fwd_ret_1"] = rng.normal(0, 0.01, len(frame))
    groups = config.splitter(frame["t1"].to_numpy()).row_groups(pd.DataFrame(index=pd.DatetimeIndex(frame["ts"])))
    frame["group"] = np.asarray(groups).astype(np.int16)
    names = get_feature_set(config.feature_set).names
    features = pd.DataFrame(rng.normal(size=(len(frame), len(names))), columns=names)
    features[names[0]] += 0.5 * frame["label"]  # something for the trees to learn
    return pd.concat([frame, features], axis=1).loc[:, [*KEY_COLUMNS, *names]]


def _planned_run(folder: Path, splitter: str, seed: int, max_rows: int = 37) -> tuple[WfoConfig, pd.DataFrame]:
    config = WfoConfig.from_params({**BASE, **SPLITTERS[splitter]})
    panel = _panel(config, seed)
    write_dataset(panel, folder / "dataset.parquet", max_rows=max_rows)
    write_json_atomic(folder / "config.json", config.to_params(), non_finite="null")
    plan(folder)
    return config, panel


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("splitter", list(SPLITTERS))
def test_a_split_read_gives_the_whole_panel_reads_rows_and_predictions(
    tmp_path: Path, splitter: str, seed: int
) -> None:
    config, panel = _planned_run(tmp_path, splitter, seed)
    pd.testing.assert_frame_equal(load_dataset(tmp_path), panel)  # the row groups change nothing read back
    splits = list(config.splitter(panel["t1"].to_numpy()).split(pd.DataFrame(index=pd.DatetimeIndex(panel["ts"]))))
    names = get_feature_set(config.feature_set).names
    for split_id in sorted({0, len(splits) // 2, len(splits) - 1}):
        with np.load(split_path(tmp_path, split_id)) as stored:
            roles = stored["roles"]
        train, test = np.flatnonzero(roles == TRAIN), np.flatnonzero(roles == TEST)
        # the rows the fit reads are the splitter's on the full panel, row for row
        np.testing.assert_array_equal(train, splits[split_id][0])
        np.testing.assert_array_equal(test, splits[split_id][1])
        for rows in (train, test):
            pd.testing.assert_frame_equal(read_rows(tmp_path / "dataset.parquet", rows, names), panel.iloc[rows][names])
        trial_id = split_id % len(config.trials)
        split_read = run_split(tmp_path, trial_id, split_id, output_dir=tmp_path / "split")
        full_read = run_split(tmp_path, trial_id, split_id, output_dir=tmp_path / "full", whole_panel=True)
        assert {k: v for k, v in split_read.items() if k != "path"} == {
            k: v for k, v in full_read.items() if k != "path"
        }
        split_bytes = prediction_path(tmp_path / "split", trial_id, split_id).read_bytes()
        assert split_bytes == prediction_path(tmp_path / "full", trial_id, split_id).read_bytes()


def test_row_groups_hold_whole_bars_of_one_month_and_at_most_max_rows() -> None:
    ts = pd.Series(
        pd.to_datetime(["2020-01-30"] * 3 + ["2020-01-31"] * 4 + ["2020-02-03"] * 9 + ["2020-02-04"] * 2, utc=True)
    )
    # January: 7 rows cut between its two bars; February's first bar (9 rows > 5) stays whole
    assert row_group_starts(ts, max_rows=5).tolist() == [0, 3, 7, 16]
    assert row_group_starts(ts, max_rows=100).tolist() == [0, 7]
    with pytest.raises(ValueError, match="not sorted by ts"):
        row_group_starts(ts[::-1])


def test_read_rows_names_bad_positions(tmp_path: Path) -> None:
    config, panel = _planned_run(tmp_path, "purged_kfold", seed=3)
    path = tmp_path / "dataset.parquet"
    assert dataset_rows(path) == len(panel)
    for bad in ([3, 2], [0, 0], [-1], [len(panel)]):
        with pytest.raises(ValueError, match=f"rows must be increasing positions in 0..{len(panel) - 1}"):
            read_rows(path, np.array(bad), ["ts"])
    assert read_rows(path, np.array([], dtype=np.int64), ["ts", "label"]).empty


def _scribble_over(path: Path, keep_groups: set[int], keep_columns: set[str]) -> None:
    """Garbage over every column chunk of ``path`` but those of ``keep_columns`` in ``keep_groups``."""
    meta = pq.ParquetFile(path).metadata
    data = bytearray(path.read_bytes())
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            chunk = meta.row_group(g).column(c)
            if g in keep_groups and chunk.path_in_schema in keep_columns:
                continue
            start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
            data[start : start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    path.write_bytes(bytes(data))


def test_a_window_reads_its_row_groups_and_columns_only(tmp_path: Path) -> None:
    """Garbage over every other row group and column changes nothing a window reads: it never reads them."""
    _, panel = _planned_run(tmp_path, "rolling", seed=5, max_rows=64)
    path = tmp_path / "dataset.parquet"
    window, columns = np.arange(len(panel) // 2, len(panel) // 2 + len(panel) // 8), ["ts", "label", "rsi_14"]
    meta = pq.ParquetFile(path).metadata
    ends = np.cumsum([meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    holding = {
        g for g in range(len(ends)) if ends[g] > window[0] and ends[g] - meta.row_group(g).num_rows <= window[-1]
    }
    assert len(holding) < meta.num_row_groups / 4  # the window is an eighth of the panel
    _scribble_over(path, holding, set(columns))
    pd.testing.assert_frame_equal(read_rows(path, window, columns), panel.iloc[window][columns])
    with pytest.raises(OSError, match="Deserializing page header failed"):  # the scribbles are there
        read_rows(path, window, [*columns, "ticker"])
    with pytest.raises(OSError, match="Deserializing page header failed"):
        load_dataset(tmp_path, columns)


def test_a_plan_of_another_dataset_is_refused(tmp_path: Path) -> None:
    _, panel = _planned_run(tmp_path, "cpcv", seed=2)
    write_dataset(panel.iloc[:-1], tmp_path / "dataset.parquet")
    with pytest.raises(ValueError, match=rf"has {len(panel)} rows but the dataset {len(panel) - 1}; rebuild the plan"):
        run_split(tmp_path, 0, 0)
