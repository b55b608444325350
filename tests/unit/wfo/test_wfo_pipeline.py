"""The walk-forward pipeline: config validation, the PIT dataset, the plan, one split, the whole run."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quant_engine.backends import make_bar_store, make_group_stores, make_offline_store, make_wfo_fits
from quant_engine.calendars import MarketTime
from quant_engine.config import Settings
from quant_engine.data.sources import make_source
from quant_engine.features.ingest import IngestionRequest, ingest
from quant_engine.runs import run_dir
from quant_engine.wfo.config import WfoConfig, WfoConfigError
from quant_engine.wfo.dataset import build_dataset
from quant_engine.wfo.defaults import DEFAULT_PARAMS, SPLITTER_NAMES
from quant_engine.wfo.pipeline import assemble, run_pipeline, statistics
from quant_engine.wfo.plan import plan, split_roles, walk_forward_roles
from quant_engine.wfo.run_folder import (
    EMBARGOED,
    PURGED,
    TEST,
    TRAIN,
    UNUSED,
    load_dataset,
    prediction_path,
    split_path,
)
from quant_engine.wfo.runner import run_split

TICKERS = ["SYN00", "SYN01", "SYN02"]
SPLITTER_KEYS = ("splitter", "train_window", "test_window", "anchored", "purge")
START, END = "2020-01-01", "2021-12-31"
SMALL = {
    "start": START,
    "end": END,
    "n_groups": 4,
    "n_test_groups": 2,
    "embargo": "3D",
    "trials": [{"max_depth": 2, "n_estimators": 8}, {"max_depth": 3, "n_estimators": 8, "threshold": 0.02}],
}


@pytest.fixture(scope="module")
def store_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A QE_HOME whose offline store holds the synthetic market's features for 3 tickers, 2020-2021."""
    home = tmp_path_factory.mktemp("wfo_store")
    ingest(
        IngestionRequest.build("synthetic", START, END, tickers=TICKERS, group=make_offline_store()),
        make_group_stores(Settings(home=home)),
    )
    return home


@pytest.fixture
def settings(store_home: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("QE_HOME", str(store_home))
    return Settings(home=store_home)


# --- config --------------------------------------------------------------------------------------


def test_defaults_are_the_documented_run() -> None:
    config = WfoConfig.from_params(DEFAULT_PARAMS)
    assert (config.n_groups, config.n_test_groups, config.cost_bps, config.embargo) == (6, 2, 5.0, "5D")
    assert len(config.trials) == 4
    assert {(t.max_depth, t.learning_rate) for t in config.trials} == {(2, 0.03), (2, 0.1), (3, 0.03), (3, 0.1)}
    assert {(t.n_estimators, t.min_child_weight, t.threshold) for t in config.trials} == {(100, 100, 0.0)}
    assert (config.portfolio, config.label.kind, config.label.horizon, config.label.target) == (
        "market_neutral",
        "fixed",
        1,
        "excess",
    )
    assert config.start == pd.Timestamp("2015-01-01", tz="UTC") and config.end == pd.Timestamp("2024-12-31", tz="UTC")
    assert config.splitter().n_splits == 15 and config.splitter().n_paths == 5


def test_to_params_round_trips() -> None:
    config = WfoConfig.from_params(
        {
            **SMALL,
            "tickers": "SYN00, SYN01",
            "label_kind": "triple_barrier",
            "label_target": "absolute",
            "pt_mult": None,
            "embargo": "7",
            "portfolio": "directional",
        }
    )
    assert config.tickers == ("SYN00", "SYN01") and config.portfolio == "directional"
    assert config.label.pt_mult is None and config.embargo == 7
    assert WfoConfig.from_params(json.loads(json.dumps(config.to_params()))) == config


def test_empty_tickers_take_the_settings_universe_and_named_ones_win() -> None:
    universe = ("SYN02", "SYN03")
    assert WfoConfig.from_params(SMALL, default_tickers=universe).tickers == universe
    assert WfoConfig.from_params({**SMALL, "tickers": None}, default_tickers=universe).tickers == universe
    assert WfoConfig.from_params({**SMALL, "tickers": ["SYN00"]}, default_tickers=universe).tickers == ("SYN00",)
    assert WfoConfig.from_params(SMALL).tickers is None  # no universe set: every ticker in the store


def test_null_parameters_take_defaults() -> None:
    config = WfoConfig.from_params(
        {**SMALL, "tickers": None, "cost_bps": None, "horizon": None, "portfolio": None, "label_target": None}
    )
    assert config.tickers is None and config.cost_bps == 5.0
    assert config.label.horizon == DEFAULT_PARAMS["horizon"] and config.label.target == DEFAULT_PARAMS["label_target"]
    assert config.portfolio == DEFAULT_PARAMS["portfolio"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_test_groups": 4}, "n_test_groups=4 must be smaller than n_groups=4"),
        ({"n_test_groups": 6, "n_groups": 5}, "n_test_groups=6 must be smaller than n_groups=5"),
        ({"n_groups": 1}, r"n_groups=1 must be a whole number >= 2 and <= 30"),
        ({"n_groups": 4.0}, r"n_groups=4.0 must be a whole number"),
        ({"start": "2022-01-01"}, "end 2021-12-31 is before start 2022-01-01: the date range is empty"),
        ({"start": "not a day"}, "start='not a day' is not a date"),
        ({"embargo": "five days"}, "embargo='five days' is not a duration"),
        ({"embargo": -3}, "embargo=-3 bars is negative"),
        ({"embargo": 1.5}, "must be a number of bars"),
        ({"label_kind": "sign"}, "label_kind='sign' is not a label kind"),
        ({"horizon": 0}, "horizon=0 must be a whole number >= 1 and <= 252"),
        ({"pt_mult": -1.0}, "pt_mult=-1.0 must be a positive number"),
        ({"cost_bps": -5}, "cost_bps=-5 must be a number of basis points"),
        (
            {"portfolio": "long_only"},
            "portfolio='long_only' is not a portfolio construction; use one of market_neutral, directional",
        ),
        ({"label_target": "relative"}, "label_target='relative' is not a label target; use one of absolute, excess"),
        (
            {"label_kind": "triple_barrier", "label_target": "excess"},
            "label_target='excess' needs label_kind='fixed', not 'triple_barrier'",
        ),
        ({"source": "csv"}, r"unknown parameter\(s\) \['source'\]"),  # labels come from the stored bars
        ({"feature_set": "fancy"}, "no feature set 'fancy'"),
        ({"tickers": [1, 2]}, "tickers=.* must be a comma-separated string or a list"),
        ({"tickers": ",,,"}, "tickers=.* names no ticker; leave it empty"),
        ({"trials": []}, "trials must be a non-empty list"),
        ({"trials": [{"max_depth": 2}]}, "1 trial; give at least 2: PBO and the deflated Sharpe"),
        ({"trials": {"max_depth": []}}, r"trial grid entries \['max_depth'\] are empty"),
        ({"trials": [{"depth": 3}]}, r"trial 0 has unknown setting\(s\) \['depth'\]"),
        ({"trials": [{"threshold": 0.6}]}, "trial 0: threshold=0.6 must be in"),
        ({"trials": [{"learning_rate": 0}]}, r"trial 0: learning_rate=0 must be a number in \(0, 1\]"),
        ({"trials": [{"max_depth": 2}, {"max_depth": 2}]}, r"trial\(s\) \[1\] repeat an earlier trial"),
        ({"n_trees": 5}, r"unknown parameter\(s\) \['n_trees'\]"),
        ({"splitter": "kfold"}, "splitter='kfold' is not a splitter; use one of cpcv, purged_kfold, walk_forward"),
        (
            {"splitter": "walk_forward", "train_window": "800D"},
            r"train_window='800D' is not shorter than the sample 2020-01-01 \.\. 2021-12-31 \(731 days\): "
            "nothing is left to test",
        ),
        ({"train_window": "two years"}, "train_window='two years' is not a duration"),
        ({"test_window": 0}, "test_window=0 bars must be positive"),
        ({"test_window": "-5D"}, "test_window='-5D' must be a positive duration"),
        ({"test_window": 2.5}, r"test_window=2\.5 must be a number of bars \(252\) or a duration"),
        ({"anchored": "yes"}, "anchored='yes' must be true or false"),
        ({"purge": 1}, "purge=1 must be true or false"),
        ({"splitter": "purged_kfold", "n_groups": 40}, "n_groups=40 must be a whole number >= 2 and <= 30"),
    ],
)
def test_bad_parameters_are_named(change: dict, message: str) -> None:
    with pytest.raises(WfoConfigError, match=message):
        WfoConfig.from_params({**SMALL, **change})


def test_trial_grid_expands_to_its_product() -> None:
    config = WfoConfig.from_params({**SMALL, "trials": {"max_depth": [2, 3, 4], "threshold": [0.0, 0.05]}})
    assert len(config.trials) == 6
    assert config.trials[1].max_depth == 2 and config.trials[1].threshold == 0.05


def test_the_splitter_parameter_builds_that_splitter() -> None:
    from quant_engine.wfo.splitters import CombinatorialPurgedCV, PurgedKFold, WalkForward

    t1 = np.array(["2020-01-03"], dtype="datetime64[ns]")
    cpcv = WfoConfig.from_params(SMALL).splitter(t1)
    assert isinstance(cpcv, CombinatorialPurgedCV) and (cpcv.n_groups, cpcv.n_test_groups) == (4, 2)
    assert cpcv.t1 is t1 and cpcv.embargo == "3D"
    # K-fold takes n_groups folds; n_test_groups is CPCV's and not checked against them
    kfold = WfoConfig.from_params({**SMALL, "splitter": "purged_kfold", "n_groups": 3, "n_test_groups": 5})
    assert isinstance(kfold.splitter(t1), PurgedKFold) and kfold.splitter(t1).n_splits == 3 and kfold.single_path
    walk = WfoConfig.from_params(
        {**SMALL, "splitter": "walk_forward", "train_window": "300", "test_window": "90D", "anchored": False}
    )
    cv = walk.splitter(t1)
    assert isinstance(cv, WalkForward) and walk.single_path and not WfoConfig.from_params(SMALL).single_path
    assert (cv.train_window, cv.test_window, cv.anchored, cv.embargo, cv.t1) == (300, "90D", False, "3D", t1)
    # without the purge the splitter sees labels that end where they start
    assert WfoConfig.from_params({**SMALL, "splitter": "walk_forward", "purge": False}).splitter(t1).t1 is None
    assert WfoConfig.from_params({**SMALL, "purge": False}).splitter(t1).t1 is None


def test_splitter_settings_round_trip() -> None:
    config = WfoConfig.from_params(
        {**SMALL, "splitter": "walk_forward", "train_window": 250, "test_window": "60D", "anchored": False}
    )
    assert config.to_params()["splitter"] == "walk_forward" and config.to_params()["train_window"] == 250
    assert WfoConfig.from_params(json.loads(json.dumps(config.to_params()))) == config
    # a run folder written before the choice existed reads back as the CPCV it was
    old = {k: v for k, v in WfoConfig.from_params(SMALL).to_params().items() if k not in SPLITTER_KEYS}
    assert WfoConfig.from_params(old).splitter_kind == "cpcv"


# --- dataset and plan: the checks that need data -------------------------------------------------


def test_dataset_joins_stored_features_to_labels_without_look_ahead(settings: Settings, tmp_path: Path) -> None:
    config = WfoConfig.from_params({**SMALL, "horizon": 5, "label_target": "absolute"})
    summary = build_dataset(config, tmp_path, make_offline_store(settings), make_bar_store(settings))
    data = load_dataset(tmp_path)
    assert summary["rows"] == len(data) and summary["tickers"] == TICKERS
    assert data["ts"].is_monotonic_increasing and (data["t1"] > data["ts"]).all()
    assert (np.diff(data["group"].to_numpy()) >= 0).all() and sorted(data["group"].unique()) == [0, 1, 2, 3]
    # each row's features are the stored row of exactly its own bar
    stored = make_offline_store(settings).read(TICKERS).rename(columns={"event_time": "ts"})
    merged = data.merge(stored, on=["ticker", "ts"], suffixes=("", "_stored"))
    assert len(merged) == len(data)
    np.testing.assert_array_equal(merged["rsi_14"], merged["rsi_14_stored"])
    # labels and the next-bar return come from the source's closes
    bars = make_source("synthetic").fetch(TICKERS, START, END)
    close = bars.set_index(["ticker", "ts"])["close"]
    row = data.iloc[100]
    following = bars.loc[(bars["ticker"] == row["ticker"]) & (bars["ts"] > row["ts"]), "close"].to_numpy()
    here = close[(row["ticker"], row["ts"])]
    assert row["fwd_ret_1"] == pytest.approx(following[0] / here - 1)
    assert row["ret"] == pytest.approx(following[4] / here - 1)
    assert row["label"] == int(following[4] > here)
    # no label reaches past the end of the sample
    assert data["t1"].max() <= pd.Timestamp(END, tz="UTC") + pd.Timedelta(days=1)


def test_excess_labels_compare_each_ticker_with_the_mean_of_all(settings: Settings, tmp_path: Path) -> None:
    build_dataset(
        WfoConfig.from_params({**SMALL, "horizon": 3, "label_target": "excess"}),
        tmp_path,
        make_offline_store(settings),
        make_bar_store(settings),
    )
    data = load_dataset(tmp_path)
    bars = make_source("synthetic").fetch(TICKERS, START, END)
    close = bars.pivot(index="ts", columns="ticker", values="close")
    raw = (close.shift(-3) / close - 1.0).stack().rename("raw").reset_index()
    merged = data.merge(raw, on=["ticker", "ts"])
    assert len(merged) == len(data)
    expected = merged["raw"] - merged.groupby("ts")["raw"].transform("mean")
    np.testing.assert_allclose(merged["ret"], expected, atol=1e-15)
    assert (merged["label"] == (expected > 0)).all()
    np.testing.assert_allclose(data.groupby("ts")["ret"].sum(), 0.0, atol=1e-15)  # relative to the mean
    assert 0.3 < data["label"].mean() < 0.7  # about half beat the mean, whatever the market did


def test_triple_barrier_dataset(settings: Settings, tmp_path: Path) -> None:
    config = WfoConfig.from_params(
        {
            **SMALL,
            "start": "2020-03-02",
            "label_kind": "triple_barrier",
            "label_target": "absolute",
            "horizon": 10,
            "sl_mult": None,
        }
    )
    build_dataset(config, tmp_path, make_offline_store(settings), make_bar_store(settings))
    data = load_dataset(tmp_path)
    nyse = MarketTime("XNYS", "1d")
    span = nyse.session_indices(data["t1"]) - nyse.session_indices(data["ts"])
    assert (
        span.min() >= 1 and span.max() <= 10
    )  # settled within 10 sessions, whatever weekends and holidays lie between
    # the 20-bar volatility window of the first rows reads stored bars from before start
    assert data["ts"].min() == pd.Timestamp("2020-03-02 21:00", tz="UTC")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tickers": "SYN00,SYN77"}, "unknown ticker.* SYN77: not in the offline store"),
        ({"start": "2030-01-01", "end": "2030-12-31"}, "holds no rows between 2030-01-01 and 2030-12-31"),
        (
            {"tickers": "SYN01", "start": "2030-01-01", "end": "2030-12-31"},
            "SYN01 have no stored features between 2030-01-01 and 2030-12-31",
        ),
        (
            {"start": "2021-12-28", "end": "2021-12-31", "horizon": 5},
            "no row between 2021-12-28 and 2021-12-31 has both stored features and a label with its full 5-bar horizon",
        ),
        ({"min_group_rows": 1000}, "too few samples per group: .* fewer than min_group_rows=1000"),
        ({"feature_set": "extended"}, "feature set 'extended' needs .*parkinson_vol_20"),
        (
            {"tickers": "SYN01"},
            r"portfolio='market_neutral' and label_target='excess' compare tickers with each other "
            r"and need at least 2, got \['SYN01'\]",
        ),
        ({"tickers": "SYN01", "portfolio": "directional"}, r"^label_target='excess' compare tickers"),
    ],
)
def test_data_checks_fail_before_anything_is_written(
    settings: Settings, tmp_path: Path, change: dict, message: str
) -> None:
    with pytest.raises(WfoConfigError, match=message):
        build_dataset(
            WfoConfig.from_params({**SMALL, **change}), tmp_path, make_offline_store(settings), make_bar_store(settings)
        )
    assert not (tmp_path / "dataset.parquet").exists()


def test_empty_store_says_to_ingest_first(tmp_path: Path) -> None:
    with pytest.raises(WfoConfigError, match="offline store .* is empty; run the market_data_ingestion DAG"):
        build_dataset(
            WfoConfig.from_params(SMALL),
            tmp_path / "run",
            make_offline_store(Settings(home=tmp_path)),
            make_bar_store(Settings(home=tmp_path)),
        )


def test_an_embargo_leaving_no_training_data_fails_in_the_plan(settings: Settings, tmp_path: Path) -> None:
    build_dataset(
        WfoConfig.from_params({**SMALL, "n_groups": 3, "embargo": "400D"}),
        tmp_path,
        make_offline_store(settings),
        make_bar_store(settings),
    )
    with pytest.raises(WfoConfigError, match="leave a split without training data: split 0 .* no training rows"):
        plan(tmp_path)
    assert not (tmp_path / "plan.json").exists()


def test_plan_writes_roles_and_tasks(settings: Settings, tmp_path: Path) -> None:
    build_dataset(WfoConfig.from_params(SMALL), tmp_path, make_offline_store(settings), make_bar_store(settings))
    tasks = plan(tmp_path)
    written = json.loads((tmp_path / "plan.json").read_text())
    assert tasks == [{"trial_id": t, "split_id": s} for t in range(2) for s in range(6)]
    assert written["n_splits"] == 6 and written["n_paths"] == 3 and len(written["paths"]) == 3
    data = load_dataset(tmp_path)
    for split in written["splits"]:
        with np.load(split_path(tmp_path, split["split_id"])) as stored:
            roles = stored["roles"]
        in_test = data["group"].isin(split["test_groups"]).to_numpy()
        assert ((roles == TEST) == in_test).all()
        assert split["n_train"] + split["n_test"] + split["n_purged"] + split["n_embargo"] == len(data)
        # no training label overlaps a test row's time
        test_times = data.loc[in_test, "ts"]
        train = data.loc[roles == TRAIN]
        for g in split["test_groups"]:
            first, last = data.loc[data["group"] == g, "ts"].min(), data.loc[data["group"] == g, "t1"].max()
            assert not ((train["ts"] <= last) & (train["t1"] >= first)).any()
        assert split["n_purged"] > 0 and test_times.size


def test_split_roles_tell_purge_from_embargo() -> None:
    day = 86_400 * 10**9
    ts = np.arange(10) * day
    t1 = ts + 2 * day
    groups = np.repeat([0, 1], 5)
    train = np.array([0, 1, 2])
    roles = split_roles(ts, t1, groups, train, [1])
    # rows 3 and 4 carry labels reaching group 1 (from day 5): purged
    assert roles.tolist() == [TRAIN] * 3 + [PURGED] * 2 + [TEST] * 5
    roles = split_roles(ts, t1, groups, np.array([8, 9]), [0])
    # the test block's span is [day 0, day 6] (its last label ends on day 6): rows 5 and 6 start inside it
    # and are purged; row 7 starts after it and is the embargo
    assert roles.tolist() == [TEST] * 5 + [PURGED] * 2 + [EMBARGOED] + [TRAIN] * 2


# --- running -------------------------------------------------------------------------------------


def test_run_split_is_deterministic_and_predicts_its_test_rows(settings: Settings, tmp_path: Path) -> None:
    build_dataset(WfoConfig.from_params(SMALL), tmp_path, make_offline_store(settings), make_bar_store(settings))
    plan(tmp_path)
    result = run_split(tmp_path, 1, 2)
    first = pd.read_parquet(result["path"])
    assert list(first.columns) == ["ticker", "ts", "prob", "fwd_ret_1", "t1", "label", "group"]
    assert set(first["group"]) == set(json.loads((tmp_path / "plan.json").read_text())["splits"][2]["test_groups"])
    assert first["prob"].between(0, 1).all() and result["n_test"] == len(first)
    again = pd.read_parquet(run_split(tmp_path, 1, 2)["path"])
    pd.testing.assert_frame_equal(first, again)
    with pytest.raises(ValueError, match="trial_id=2 is not a trial"):
        run_split(tmp_path, 2, 0)
    with pytest.raises(FileNotFoundError, match="split_id=9 is not in the plan"):
        run_split(tmp_path, 0, 9)


def test_assemble_needs_every_prediction(settings: Settings, tmp_path: Path) -> None:
    build_dataset(WfoConfig.from_params(SMALL), tmp_path, make_offline_store(settings), make_bar_store(settings))
    plan(tmp_path)
    run_split(tmp_path, 0, 0)
    with pytest.raises(FileNotFoundError, match=r"task \(trial 0, split 1\) has not run"):
        assemble(tmp_path)


@pytest.mark.parametrize("portfolio", ["market_neutral", "directional"])
def test_assemble_backtests_every_path_with_the_configured_portfolio(
    settings: Settings, tmp_path: Path, portfolio: str
) -> None:
    from quant_engine.wfo.backtest import assemble_paths, backtest

    config = WfoConfig.from_params({**SMALL, "portfolio": portfolio})
    build_dataset(config, tmp_path, make_offline_store(settings), make_bar_store(settings))
    tasks = plan(tmp_path)
    for task in tasks:
        run_split(tmp_path, task["trial_id"], task["split_id"])
    assemble(tmp_path)
    paths = pd.read_parquet(tmp_path / "paths.parquet")
    written = json.loads((tmp_path / "plan.json").read_text())
    predictions = {s: pd.read_parquet(prediction_path(tmp_path, 1, s)) for s in range(written["n_splits"])}
    frame = assemble_paths(predictions, np.asarray(written["paths"]))[2]
    expected = backtest(frame, threshold=config.trials[1].threshold, cost_bps=config.cost_bps, portfolio=portfolio)
    got = paths.loc[(paths["trial"] == 1) & (paths["path"] == 2)]
    np.testing.assert_allclose(got["return"], expected.returns)
    np.testing.assert_allclose(got["exposure"], expected.exposure)
    if portfolio == "market_neutral":  # a dollar-neutral book is fully invested or flat at each ts
        assert np.isclose(paths["exposure"], 1.0).mean() > 0.5
        assert (np.isclose(paths["exposure"], 1.0) | np.isclose(paths["exposure"], 0.0)).all()


def test_run_pipeline_end_to_end(settings: Settings) -> None:
    folder = run_pipeline(
        WfoConfig.from_params(SMALL),
        run_dir("wfo", "unit-run", settings),
        make_offline_store(settings),
        make_bar_store(settings),
        make_wfo_fits(settings),
        settings.reports_dir,
    )
    run = settings.home / "runs" / "wfo" / "unit-run"
    assert folder == settings.home / "reports" / "wfo" / "unit-run"
    assert (folder / "report.json").exists() and (folder / "report.html").exists()
    for t in range(2):
        for s in range(6):
            assert prediction_path(run, t, s).exists()
    paths = pd.read_parquet(run / "paths.parquet")
    data = load_dataset(run, ["ts"])
    assert sorted(paths.groupby(["trial", "path"]).size().unique()) == [data["ts"].nunique()]
    stats = json.loads((run / "statistics.json").read_text())
    assert 0.0 <= stats["pbo"] <= 1.0 and 0.0 <= stats["psr"] <= 1.0 and 0.0 <= stats["deflated_sharpe"] <= 1.0
    assert stats == statistics(run)  # recomputing from the same files gives the same numbers


def test_statistics_select_by_mean_path_sharpe_and_deflate_for_the_search(tmp_path: Path) -> None:
    from quant_engine.storage.atomic import write_json_atomic
    from quant_engine.wfo.stats import deflated_sharpe_ratio, probabilistic_sharpe_ratio, sharpe_moments

    rng = np.random.default_rng(5)
    days = pd.date_range("2020-01-01", periods=320, freq="B", tz="UTC")
    drift = {0: 0.0, 1: 0.002, 2: 0.0}
    rows, summaries = [], []
    for trial, mu in drift.items():
        for path in range(2):
            returns = rng.normal(mu, 0.01, len(days)) if trial != 2 else np.zeros(len(days))  # trial 2 stays flat
            rows.append(pd.DataFrame({"trial": trial, "path": path, "ts": days, "return": returns}))
            sharpe = returns.mean() / returns.std(ddof=1) * np.sqrt(252) if returns.std() else float("nan")
            summaries.append({"trial": trial, "path": path, "sharpe": sharpe})
    pd.concat(rows).to_parquet(tmp_path / "paths.parquet")
    write_json_atomic(tmp_path / "paths.json", summaries, non_finite="null")
    write_json_atomic(
        tmp_path / "config.json", {**SMALL, "trials": [{"max_depth": d} for d in (2, 3, 4)]}, non_finite="null"
    )
    annualisation = MarketTime("XNYS", "1d").annualisation(2021)
    write_json_atomic(tmp_path / "dataset.json", {"annualisation": annualisation}, non_finite="null")

    result = statistics(tmp_path)

    assert result["selected_trial"] == 1
    assert result["trials"][1]["sharpe_of_mean"] == pytest.approx(
        sharpe_moments(np.mean([rows[2]["return"], rows[3]["return"]], axis=0)).observed_sr
        * np.sqrt(annualisation["periods_per_year"])
    )
    assert result["trials"][2]["mean_path_sharpe"] is None  # a flat trial has no Sharpe ratio
    wide = pd.concat(rows).pivot(index="ts", columns=["trial", "path"], values="return")
    mean_series = wide.T.groupby(level="trial").mean().T.to_numpy()
    m = sharpe_moments(mean_series[:, 1])
    assert result["psr"] == pytest.approx(probabilistic_sharpe_ratio(m.observed_sr, 0.0, m.n_obs, m.skew, m.kurtosis))
    per_period = [sharpe_moments(mean_series[:, t]).observed_sr for t in (0, 1)]  # the flat trial has none
    assert result["var_trial_sharpes_per_period"] == pytest.approx(np.var(per_period, ddof=1))
    assert result["deflated_sharpe"] == pytest.approx(
        deflated_sharpe_ratio(
            m.observed_sr,
            m.n_obs,
            skew=m.skew,
            kurtosis=m.kurtosis,
            n_trials=3,
            var_trial_sharpes=np.var(per_period, ddof=1),
        )
    )
    assert result["deflated_sharpe"] < result["psr"]
    assert result["pbo"] < 0.2 and len(result["pbo_logits"]) == result["pbo_combinations"] == 12870


def test_replanning_a_run_folder_drops_its_old_predictions(settings: Settings, tmp_path: Path) -> None:
    build_dataset(WfoConfig.from_params(SMALL), tmp_path, make_offline_store(settings), make_bar_store(settings))
    plan(tmp_path)
    run_split(tmp_path, 0, 0)
    build_dataset(
        WfoConfig.from_params({**SMALL, "n_groups": 3}),
        tmp_path,
        make_offline_store(settings),
        make_bar_store(settings),
    )
    plan(tmp_path)
    assert not prediction_path(tmp_path, 0, 0).exists()


# --- single-path splitters: purged K-fold and walk-forward through the pipeline ------------------

SINGLE_PATH = {
    "purged_kfold": {"splitter": "purged_kfold", "n_groups": 4},
    "anchored": {"splitter": "walk_forward", "train_window": "365D", "test_window": "120D"},
    "rolling": {"splitter": "walk_forward", "train_window": 200, "test_window": 60, "anchored": False, "embargo": 3},
}


@pytest.fixture(scope="module")
def single_path_runs(store_home: Path) -> dict[str, Path]:
    """One whole run of each single-path splitter on the module's store."""
    settings = Settings(home=store_home)
    runs = {}
    for name, change in SINGLE_PATH.items():
        folder = run_dir("wfo", f"single-{name}", settings)
        run_pipeline(
            WfoConfig.from_params({**SMALL, **change}),
            folder,
            make_offline_store(settings),
            make_bar_store(settings),
            make_wfo_fits(settings),
            settings.reports_dir,
        )
        runs[name] = folder
    return runs


@pytest.mark.parametrize("name", list(SINGLE_PATH))
def test_single_path_splits_test_every_row_once_and_never_train_on_the_test(
    single_path_runs: dict[str, Path], name: str
) -> None:
    run = single_path_runs[name]
    written = json.loads((run / "plan.json").read_text())
    data = load_dataset(run, ["ts", "t1", "group"])
    n = written["n_splits"]
    assert written["splitter"] == SINGLE_PATH[name]["splitter"]
    assert written["n_paths"] == 1 and written["paths"] == [list(range(n))] and written["n_groups"] == n
    assert n == 4 if name == "purged_kfold" else n >= 3
    tested = []
    ts, t1 = data["ts"].to_numpy(), data["t1"].to_numpy()
    for split in written["splits"]:
        with np.load(split_path(run, split["split_id"])) as stored:
            roles = stored["roles"]
        test = np.flatnonzero(roles == TEST)
        tested.extend(test.tolist())
        assert (data["group"].to_numpy()[test] == split["split_id"]).all()
        assert sum(split[f"n_{r}"] for r in ("train", "test", "purged", "embargo", "unused")) == len(data)
        train = roles == TRAIN
        start, end = ts[test].min(), t1[test].max()
        assert not (train & (ts <= end) & (t1 >= start)).any(), "a training label overlaps the test"
        if name == "purged_kfold":
            assert split["n_unused"] == 0
            continue
        # walk-forward: training precedes the test window, its labels settle before it, and the
        # embargo is the gap right before it
        assert ts[train].max() < start and t1[train].max() < start
        gap = np.unique(ts[roles == EMBARGOED])
        if name == "rolling":
            before = np.unique(ts[ts < start])
            assert gap.tolist() == before[-3:][~np.isin(before[-3:], ts[roles == PURGED])].tolist()
            if split["split_id"] > 0:
                assert (roles[ts < ts[train].min()] == UNUSED).all() and split["n_unused"] > 0
        else:
            assert (gap >= start - np.timedelta64(3, "D")).all()
            assert ts[train].min() == ts.min()  # anchored: training expands from the first bar
        assert (roles[ts > ts[test].max()] == UNUSED).all()
    # every row of the path is tested once, and only the first training window goes untested
    assert len(tested) == len(set(tested)) == (data["group"] >= 0).sum()
    if name == "purged_kfold":
        assert len(tested) == len(data) and written["untested_rows"] == 0
    else:
        assert written["untested_rows"] == int((data["ts"] < data.loc[data["group"] == 0, "ts"].min()).sum()) > 0


def _oracle_path(run: Path, trial_id: int) -> pd.Series:
    """The trial's one path, backtested independently: its test segments' predictions, in split order."""
    from quant_engine.wfo.backtest import backtest

    config = WfoConfig.from_params(json.loads((run / "config.json").read_text()))
    n_splits = json.loads((run / "plan.json").read_text())["n_splits"]
    frame = pd.concat([pd.read_parquet(prediction_path(run, trial_id, s)) for s in range(n_splits)])
    trial = config.trials[trial_id]
    return backtest(frame, threshold=trial.threshold, cost_bps=config.cost_bps, portfolio=config.portfolio).returns


@pytest.mark.parametrize("name", list(SINGLE_PATH))
def test_single_path_pbo_is_cscv_over_the_test_segments(single_path_runs: dict[str, Path], name: str) -> None:
    from quant_engine.wfo.stats import probability_of_backtest_overfitting, sharpe_ratio

    run = single_path_runs[name]
    data = load_dataset(run, ["ts", "group"])
    tested_days = np.sort(data.loc[data["group"] >= 0, "ts"].unique())
    paths = pd.read_parquet(run / "paths.parquet")
    assert sorted(paths["path"].unique()) == [0]
    matrix = []
    for trial_id in range(2):
        got = paths.loc[paths["trial"] == trial_id]
        want = _oracle_path(run, trial_id)
        assert got["ts"].to_numpy().tolist() == tested_days.tolist() == want.index.to_numpy().tolist()
        np.testing.assert_allclose(got["return"], want.to_numpy(), rtol=0, atol=1e-15)
        matrix.append(want.to_numpy())
    matrix = np.column_stack(matrix)
    stats = json.loads((run / "statistics.json").read_text())
    expected = probability_of_backtest_overfitting(
        matrix,
        n_blocks=16,
        metric=lambda r: np.nan_to_num(np.asarray(sharpe_ratio(r, periods_per_year=1), dtype=float), nan=0.0),
    )
    assert stats["pbo"] == pytest.approx(expected.pbo) and stats["pbo_combinations"] == 12870
    np.testing.assert_allclose(stats["pbo_logits"], expected.logits)
    assert stats["splitter"] == SINGLE_PATH[name]["splitter"]
    assert stats["pbo_method"].startswith(
        f"CSCV over the {SPLITTER_NAMES[stats['splitter']]} test segments' per-trial returns"
    )
    assert "one out-of-sample path" in stats["selection"]
    sharpes = [t["path_sharpes"] for t in stats["trials"]]
    assert all(len(s) == 1 for s in sharpes) and stats["selected_trial"] == int(np.nanargmax([s[0] for s in sharpes]))
    assert 0 <= stats["deflated_sharpe"] <= stats["psr"] <= 1


def _plain_sharpe(values: list[float]) -> float:
    """Mean over standard deviation (n - 1), 0 for a flat series, in plain Python."""
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean / math.sqrt(variance) if variance > 0 else 0.0


def _brute_force_pbo(matrix: list[list[float]], n_blocks: int) -> tuple[float, list[float]]:
    """CSCV written out in plain Python (Bailey et al. 2017), ranking a flat series' Sharpe as 0."""
    size = len(matrix) // n_blocks
    rows = matrix[len(matrix) - size * n_blocks :]
    blocks = [rows[b * size : (b + 1) * size] for b in range(n_blocks)]
    n_trials, logits = len(matrix[0]), []
    for chosen in itertools.combinations(range(n_blocks), n_blocks // 2):
        inside = [row for b in chosen for row in blocks[b]]
        outside = [row for b in range(n_blocks) if b not in chosen for row in blocks[b]]
        is_scores = [_plain_sharpe([r[j] for r in inside]) for j in range(n_trials)]
        oos_scores = [_plain_sharpe([r[j] for r in outside]) for j in range(n_trials)]
        best = is_scores.index(max(is_scores))
        rank = sum(s < oos_scores[best] for s in oos_scores) + (sum(s == oos_scores[best] for s in oos_scores) + 1) / 2
        omega = rank / (n_trials + 1)
        logits.append(math.log(omega / (1 - omega)))
    return sum(v <= 0 for v in logits) / len(logits), logits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_path_statistics_match_a_brute_force_cscv(tmp_path: Path, seed: int) -> None:
    """A walk-forward run folder by hand: 3 trials, one path each over 2 test segments of 11 bars."""
    from quant_engine.storage.atomic import write_json_atomic

    rng = np.random.default_rng(seed)
    days = pd.date_range("2021-01-04", periods=22, freq="B", tz="UTC")
    returns = rng.normal(0.0, 0.01, (22, 3)) + [0.0, 0.003, -0.001]
    returns[3:9, 0] = 0.0  # a flat stretch: a block with no Sharpe ratio ranks as 0
    rows = [pd.DataFrame({"trial": t, "path": 0, "ts": days, "return": returns[:, t]}) for t in range(3)]
    pd.concat(rows).to_parquet(tmp_path / "paths.parquet")
    summaries = [{"trial": t, "path": 0, "sharpe": _plain_sharpe(returns[:, t].tolist()) * 15.9} for t in range(3)]
    write_json_atomic(tmp_path / "paths.json", summaries, non_finite="null")
    config = {**SMALL, **SINGLE_PATH["anchored"], "trials": [{"max_depth": d} for d in (2, 3, 4)]}
    write_json_atomic(tmp_path / "config.json", config, non_finite="null")
    annualisation = MarketTime("XNYS", "1d").annualisation(2021)
    write_json_atomic(tmp_path / "dataset.json", {"annualisation": annualisation}, non_finite="null")

    result = statistics(tmp_path)

    pbo, logits = _brute_force_pbo(returns.tolist(), 16)  # 22 bars: the 6 oldest dropped, 16 blocks of 1 bar
    assert result["pbo_blocks"] == 16 and len(result["pbo_logits"]) == math.comb(16, 8)
    np.testing.assert_allclose(result["pbo_logits"], logits, rtol=1e-12)
    assert result["pbo"] == pbo
    assert result["splitter"] == "walk_forward" and "22 bars" in result["pbo_method"]


def test_walk_forward_roles_by_hand() -> None:
    day = 86_400 * 10**9
    ts = np.arange(12) * day
    t1 = ts + 2 * day
    # a rolling window over rows 2..7 (rows 6 and 7 left out), testing rows 8..9
    roles = walk_forward_roles(ts, t1, np.array([2, 3, 4, 5]), np.array([8, 9]))
    # rows 6 and 7 carry labels reaching day 8: purged; 0, 1 are before the window and 10, 11 after the test
    assert roles.tolist() == [UNUSED] * 2 + [TRAIN] * 4 + [PURGED] * 2 + [TEST] * 2 + [UNUSED] * 2
    # labels of one bar: only row 7's reaches the test; rows 5 and 6 were dropped by a 2-bar embargo
    roles = walk_forward_roles(ts, ts + day, np.array([0, 1, 2, 3, 4]), np.array([8, 9]))
    assert roles.tolist() == [TRAIN] * 5 + [EMBARGOED] * 2 + [PURGED] + [TEST] * 2 + [UNUSED] * 2


def test_walk_forward_checks_that_need_data(settings: Settings, tmp_path: Path) -> None:
    store, bars = make_offline_store(settings), make_bar_store(settings)
    with pytest.raises(WfoConfigError, match=r"cannot be split by the walk-forward: train_window=600 covers all \d+"):
        build_dataset(
            WfoConfig.from_params({**SMALL, "splitter": "walk_forward", "train_window": 600}), tmp_path, store, bars
        )
    assert not (tmp_path / "dataset.parquet").exists()
    # the windows before the last must hold min_group_rows; the last holds what is left of the data
    change = {**SINGLE_PATH["anchored"], "min_group_rows": 200}
    summary = build_dataset(WfoConfig.from_params({**SMALL, **change}), tmp_path, store, bars)
    assert min(summary["group_rows"][:-1]) >= 200 > summary["group_rows"][-1]
    assert summary["untested_rows"] == summary["rows"] - sum(summary["group_rows"])
    with pytest.raises(
        WfoConfigError,
        match=r"walk-forward test window 0 \(from 2021-01-04 21:00:00\+00:00\) holds \d+ rows, fewer than "
        r"min_group_rows=300; use a longer test_window",
    ):
        build_dataset(WfoConfig.from_params({**SMALL, **change, "min_group_rows": 300}), tmp_path / "x", store, bars)


def test_a_walk_forward_embargo_leaving_no_training_data_fails_in_the_plan(settings: Settings, tmp_path: Path) -> None:
    change = {"splitter": "walk_forward", "train_window": 30, "test_window": 120, "embargo": 40}
    build_dataset(
        WfoConfig.from_params({**SMALL, **change}), tmp_path, make_offline_store(settings), make_bar_store(settings)
    )
    with pytest.raises(WfoConfigError, match=r"split 0 \(test window from .*\) has no training rows left"):
        plan(tmp_path)
