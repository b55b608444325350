"""Training set: point-in-time join with labels, and a holdout that no training label reaches into."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quant_engine.backends import make_bar_store, make_group_stores, make_offline_store
from quant_engine.features.ingest import IngestionRequest, ingest
from quant_engine.features.registry import get_feature_set
from quant_engine.training.dataset import TrainingSetConfig, TrainingSetError, build_training_set
from quant_engine.wfo.config import WfoConfigError

TICKERS = ["SYN00", "SYN01", "SYN02"]
PARAMS = {"start": "2020-01-01", "end": "2021-06-30", "tickers": ",".join(TICKERS), "horizon": 5}


@pytest.fixture
def market(qe_home: Path) -> Path:
    ingest(
        IngestionRequest.build(
            "synthetic", PARAMS["start"], PARAMS["end"], tickers=TICKERS, group=make_offline_store()
        ),
        make_group_stores(),
    )
    return qe_home


@pytest.mark.parametrize("embargo_bars", [0, 5])
def test_no_training_label_reaches_into_the_holdout(market: Path, tmp_path: Path, embargo_bars: int) -> None:
    summary = build_training_set(
        TrainingSetConfig.from_params({**PARAMS, "embargo_bars": embargo_bars}, make_offline_store()),
        tmp_path,
        make_offline_store(),
        make_bar_store(),
    )
    joined = pd.read_parquet(tmp_path / "joined" / "dataset.parquet")
    holdout = pd.read_parquet(tmp_path / "holdout.parquet")
    stamps = np.sort(joined["ts"].unique())
    first_holdout = len(stamps) - int(np.ceil(len(stamps) * 0.2))
    # the holdout is exactly the last 20% of timestamps, every row of them
    assert holdout["ts"].min() == stamps[first_holdout]
    assert len(holdout) == (joined["ts"] >= stamps[first_holdout]).sum()
    train = joined.loc[(joined["ts"] < stamps[first_holdout - embargo_bars]) & (joined["t1"] < stamps[first_holdout])]
    assert summary["rows"] == {
        "train": len(train),
        "holdout": len(holdout),
        "gap": len(joined) - len(train) - len(holdout),
    }
    assert pd.Timestamp(summary["train_last_t1"]) < pd.Timestamp(summary["holdout_start"])
    # 5-bar labels of the last bars before the holdout end inside it: purged even without an embargo
    assert summary["rows"]["gap"] >= len(TICKERS) * max(4, embargo_bars)
    names = list(get_feature_set("default").names)
    channel = pd.read_parquet(tmp_path / "train" / "train.parquet")
    assert list(channel.columns) == [*names, "label"] and len(channel) == len(train)
    np.testing.assert_array_equal(channel[names].to_numpy(), train[names].to_numpy())
    validation = pd.read_parquet(tmp_path / "validation" / "validation.parquet")
    assert list(validation.columns) == [*names, "label"] and len(validation) == len(holdout)
    assert json.loads((tmp_path / "training_set.json").read_text())["fingerprint"] == summary["fingerprint"]


def test_fingerprint_is_stable_and_tells_data_apart(market: Path, tmp_path: Path) -> None:
    first = build_training_set(
        TrainingSetConfig.from_params(PARAMS, make_offline_store()),
        tmp_path / "a",
        make_offline_store(),
        make_bar_store(),
    )
    again = build_training_set(
        TrainingSetConfig.from_params(PARAMS, make_offline_store()),
        tmp_path / "b",
        make_offline_store(),
        make_bar_store(),
    )
    other = build_training_set(
        TrainingSetConfig.from_params({**PARAMS, "holdout_fraction": 0.3}, make_offline_store()),
        tmp_path / "c",
        make_offline_store(),
        make_bar_store(),
    )
    assert first["fingerprint"] == again["fingerprint"] != other["fingerprint"]
    assert first["params"] == {**TrainingSetConfig.from_params(PARAMS, make_offline_store()).to_params()}
    assert first["params"]["tickers"] == TICKERS and first["params"]["holdout_fraction"] == 0.2


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"holdout_fraction": 0.7}, "holdout_fraction=0.7 must be a number in \\(0, 0.5\\]"),
        ({"embargo_bars": -1}, "embargo_bars=-1 must be a whole number between 0 and 252"),
        ({"holdout": 0.2}, "unknown parameter\\(s\\) \\['holdout'\\]"),
        ({"horizon": 0}, "horizon=0 must be a whole number >= 1 and <= 252"),
        ({"end": "2019-01-01"}, "is before start"),
    ],
)
def test_bad_parameters_name_the_rule(params: dict, message: str) -> None:
    with pytest.raises(WfoConfigError, match=message):  # TrainingSetError is one
        TrainingSetConfig.from_params({**PARAMS, **params}, make_offline_store())


def test_a_range_too_short_for_the_gap_fails_before_writing_channels(market: Path, tmp_path: Path) -> None:
    config = TrainingSetConfig.from_params({**PARAMS, "start": "2021-06-01", "embargo_bars": 20}, make_offline_store())
    with pytest.raises(TrainingSetError, match="leave nothing to train on"):
        build_training_set(config, tmp_path, make_offline_store(), make_bar_store())
    assert not (tmp_path / "train").exists()


def test_empty_dates_train_on_the_latest_stored_window(market: Path) -> None:
    config = TrainingSetConfig.from_params({"tickers": PARAMS["tickers"], "window_days": 90}, make_offline_store())
    assert (str(config.data.start.date()), str(config.data.end.date())) == ("2021-04-01", "2021-06-30")
    assert TrainingSetConfig.from_params(config.to_params(), make_offline_store()) == config
    with pytest.raises(TrainingSetError, match="window_days=7 must be a whole number of days between 30 and 36500"):
        TrainingSetConfig.from_params({"window_days": 7}, make_offline_store())


def test_empty_end_needs_stored_data(qe_home: Path) -> None:
    with pytest.raises(TrainingSetError, match="the offline store .* is empty; ingest data first, or give end"):
        TrainingSetConfig.from_params({"tickers": "SYN00"}, make_offline_store())
