"""The report files (keys, values, embedded plots, atomic writes) and the ``quant-engine wfo`` commands."""

from __future__ import annotations

import argparse
import base64
import doctest
import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quant_engine.backends import make_bar_store, make_group_stores, make_offline_store, make_wfo_fits
from quant_engine.cli import wfo as cli
from quant_engine.config import Settings, get_settings
from quant_engine.features.ingest import IngestionRequest, ingest
from quant_engine.runs import run_dir
from quant_engine.wfo import report as report_module
from quant_engine.wfo.config import WfoConfig
from quant_engine.wfo.defaults import DEFAULT_PARAMS
from quant_engine.wfo.pipeline import run_pipeline
from quant_engine.wfo.report import headline, latest_report, load_report, report_dir, setup, timestamp_roles
from quant_engine.wfo.run_folder import EMBARGOED, PURGED, TEST, TRAIN, UNUSED, load_dataset

CONF = {
    "start": "2020-01-01",
    "end": "2021-12-31",
    "tickers": "SYN05,SYN06",
    "n_groups": 4,
    "n_test_groups": 2,
    "embargo": 3,
    "trials": {"max_depth": [2, 3], "n_estimators": [6]},
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("report_home")
    ingest(
        IngestionRequest.build(
            "synthetic", "2020-01-01", "2021-12-31", tickers=["SYN05", "SYN06"], group=make_offline_store()
        ),
        make_group_stores(Settings(home=home)),
    )
    return home


@pytest.fixture(scope="module")
def report_folder(home: Path) -> Path:
    return run_pipeline(
        WfoConfig.from_params(CONF),
        run_dir("wfo", "report-run", Settings(home=home)),
        make_offline_store(Settings(home=home)),
        make_bar_store(Settings(home=home)),
        make_wfo_fits(Settings(home=home)),
        Settings(home=home).reports_dir,
    )


@pytest.fixture
def use_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QE_HOME", str(home))
    return home


def test_report_json_has_the_headline_and_every_path(report_folder: Path) -> None:
    report = json.loads((report_folder / "report.json").read_text())
    for key in (
        "pbo",
        "deflated_sharpe",
        "psr",
        "paths",
        "n_splits",
        "n_paths",
        "config",
        "data",
        "trials",
        "selected_trial",
        "statistics",
        "groups",
        "splits",
    ):
        assert key in report, key
    assert (report["n_splits"], report["n_paths"], report["n_trials"]) == (6, 3, 2)
    assert 0 <= report["pbo"] <= 1 and 0 <= report["psr"] <= 1 and 0 <= report["deflated_sharpe"] <= 1
    assert report["deflated_sharpe"] <= report["psr"]  # deflating for the search never raises the PSR
    assert [p["path"] for p in report["paths"]] == [0, 1, 2]
    assert all(p["trial"] == report["selected_trial"] for p in report["paths"])
    for path in report["paths"]:
        assert {"sharpe", "sortino", "max_drawdown", "hit_rate", "turnover", "total_return"} <= set(path)
        assert np.isfinite(path["sharpe"]) and 0 <= path["max_drawdown"] < 1 and 0 <= path["hit_rate"] <= 1
    assert report["config"]["tickers"] == ["SYN05", "SYN06"] and report["config"]["n_groups"] == 4
    config = report["config"]
    assert (config["portfolio"], config["label_kind"], config["horizon"], config["label_target"]) == (
        DEFAULT_PARAMS["portfolio"],
        DEFAULT_PARAMS["label_kind"],
        DEFAULT_PARAMS["horizon"],
        DEFAULT_PARAMS["label_target"],
    )
    assert report["setup"] == setup(config) and config["portfolio"] in report["setup"]
    assert report["data"]["first_ts"].startswith("2020-01-02") and report["data"]["rows"] > 900  # New Year closed
    assert report["data"]["annualisation"]["bar_size"] == "1d"
    assert 251 < report["data"]["annualisation"]["periods_per_year"] < 253
    assert [len(t["paths"]) for t in report["trials"]] == [3, 3]
    selected = report["trials"][report["selected_trial"]]
    assert selected["mean_path_sharpe"] == max(t["mean_path_sharpe"] for t in report["trials"])
    assert selected["mean_path_sharpe"] == pytest.approx(np.mean([p["sharpe"] for p in report["paths"]]))
    assert "pbo_logits" not in report["statistics"] and report["statistics"]["pbo_combinations"] == 12870
    assert report["files"]["html"] == str(report_folder / "report.html")
    assert report["splitter"] == "cpcv" and report["scheme"] == (
        "CPCV: 4 groups choose 2; 6 splits, 3 paths; embargo 3 bars after each test block; purged by label spans"
    )
    assert report["pbo_method"].startswith("CSCV over the mean of each trial's CPCV paths")


def test_report_html_is_self_contained_with_four_plots(report_folder: Path) -> None:
    page = (report_folder / "report.html").read_text()
    images = re.findall(r"<h2>([^<]+)</h2><img alt='[^']+' src='data:image/png;base64,([A-Za-z0-9+/=]+)'>", page)
    assert [title for title, _ in images] == [
        "Equity curves",
        "PBO logit histogram",
        "Sharpe distribution",
        "Split diagram",
    ]
    for _, data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")
    assert not re.search(r"(src|href)=['\"]https?:", page)  # nothing fetched from elsewhere
    assert "Probability of backtest overfitting" in page and "report-run" in page
    report = json.loads((report_folder / "report.json").read_text())
    assert f"<td>Portfolio and labels</td><td>{report['setup']}</td>" in page
    configuration = page.split("<h2>Configuration</h2>")[1]
    assert "&quot;portfolio&quot;: &quot;market_neutral&quot;" in configuration
    assert "&quot;label_target&quot;: &quot;excess&quot;" in configuration


def test_docstring_examples_run() -> None:
    assert doctest.testmod(report_module).failed == 0


@pytest.fixture(scope="module")
def walk_forward_folder(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rolling walk-forward run beside report-run; its report goes elsewhere, so report-run stays the latest."""
    settings = Settings(home=home)
    change = {"splitter": "walk_forward", "train_window": 150, "test_window": "120D", "anchored": False}
    return run_pipeline(
        WfoConfig.from_params({**CONF, **change}),
        run_dir("wfo", "walk-forward-run", settings),
        make_offline_store(settings),
        make_bar_store(settings),
        make_wfo_fits(settings),
        tmp_path_factory.mktemp("walk_forward_reports"),
    )


def test_a_walk_forward_report_says_which_scheme_made_its_one_path(home: Path, walk_forward_folder: Path) -> None:
    report = load_report(walk_forward_folder)
    scheme = (
        "walk-forward, rolling: training window 150 bars, test windows of 120D; "
        f"{report['n_splits']} splits, 1 path (the test windows in time order); embargo 3 bars before each test "
        "window; purged by label spans"
    )
    assert report["splitter"] == "walk_forward" and report["scheme"] == scheme and report["n_paths"] == 1
    assert report["pbo_method"].startswith("CSCV over the walk-forward test segments' per-trial returns")
    page = (walk_forward_folder / "report.html").read_text()
    assert f"<td>Splits and paths</td><td>{scheme}</td>" in page
    assert f"<td>PBO computed by</td><td>{html.escape(report['pbo_method'])}</td>" in page
    text = headline(report)
    assert scheme in text and "Sharpe of the one path" in text and "mean path Sharpe" not in text
    # the split diagram: each rolling window trains on the bars just before its test window
    run = home / "runs" / "wfo" / "walk-forward-run"
    times, grid = timestamp_roles(run, report["n_splits"])
    plan = json.loads((run / "plan.json").read_text())
    for split in plan["splits"]:
        row = grid[split["split_id"]]
        test = np.flatnonzero(row == TEST)
        assert times[test[0]] == pd.Timestamp(split["test_first_ts"]) and (np.diff(test) == 1).all()
        assert (row[test[-1] + 1 :] == UNUSED).all()
        trained = np.flatnonzero(row == TRAIN)
        assert trained[-1] < test[0] and (row[: trained[0]] == UNUSED).all()
        assert (row[test[0] - 3 : test[0]] != TRAIN).all() and (row[test[0] - 3 : test[0]] == EMBARGOED).any()
    assert (grid[1:] == UNUSED).any(axis=1).all()


def test_report_files_are_written_atomically(report_folder: Path) -> None:
    assert sorted(p.name for p in report_folder.iterdir()) == [".run_id", "report.html", "report.json"]  # no temp file


def test_split_diagram_roles_follow_the_plan(home: Path, report_folder: Path) -> None:
    run = home / "runs" / "wfo" / "report-run"
    times, grid = timestamp_roles(run, 6)
    data = load_dataset(run, ["ts", "group"])
    assert grid.shape == (6, data["ts"].nunique()) and times.is_monotonic_increasing
    group_of_time = data.drop_duplicates("ts")["group"].to_numpy()
    plan = json.loads((run / "plan.json").read_text())
    for split in plan["splits"]:
        assert ((grid[split["split_id"]] == TEST) == np.isin(group_of_time, split["test_groups"])).all()
        assert (grid[split["split_id"]] == PURGED).any()


def test_headline_latest_and_lookup(report_folder: Path, use_home: Path) -> None:
    report = load_report(report_folder)
    text = headline(report)
    assert "6 splits, 3 paths, 2 trials" in text and f"PBO {report['pbo']:.3f}" in text
    assert report["setup"] in text
    assert (
        latest_report(get_settings().reports_dir)
        == report_folder
        == report_dir("report-run", get_settings().reports_dir)
    )
    assert load_report(report_folder / "report.json") == report
    with pytest.raises(FileNotFoundError, match="no report at"):
        load_report(report_folder.parent / "missing")


def test_latest_report_without_any() -> None:
    with pytest.raises(FileNotFoundError, match="no WFO report under"):
        latest_report(get_settings().reports_dir)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="quant-engine")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_show(report_folder: Path, use_home: Path, capsys: pytest.CaptureFixture) -> None:
    for argv in (["wfo", "show", "--latest"], ["wfo", "show", "report-run"], ["wfo", "show", str(report_folder)]):
        args = _parse(argv)
        assert args.handler(args) == 0
        assert "WFO report report-run" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        _parse(["wfo", "show"])


def test_cli_run(use_home: Path, capsys: pytest.CaptureFixture) -> None:
    conf = {
        **CONF,
        "n_groups": 3,
        "n_test_groups": 1,
        "portfolio": "directional",
        "label_target": "absolute",
        "horizon": 2,
    }
    args = _parse(["wfo", "run", "--conf", json.dumps(conf), "--run-id", "cli-run"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "WFO report cli-run: 3 splits, 1 paths, 2 trials" in out
    assert "directional portfolio, 5 bps costs; labels: fixed, horizon 2 bar(s), absolute target" in out
    assert (use_home / "reports" / "wfo" / "cli-run" / "report.html").exists()


def test_cli_run_takes_the_splitter_and_its_windows(use_home: Path, capsys: pytest.CaptureFixture) -> None:
    conf = {k: v for k, v in CONF.items() if k != "embargo"}
    argv = ["wfo", "run", "--conf", json.dumps(conf), "--run-id", "cli-wf", "--splitter", "walk_forward"]
    args = _parse([*argv, "--train-window", "300D", "--test-window", "100", "--rolling", "--embargo", "2"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "walk-forward, rolling: training window 300D, test windows of 100 bars; " in out
    assert "1 path (the test windows in time order); embargo 2 bars before each test window" in out
    config = load_report(use_home / "reports" / "wfo" / "cli-wf")["config"]
    assert (config["splitter"], config["train_window"], config["test_window"], config["anchored"]) == (
        "walk_forward",
        "300D",
        100,
        False,
    )


@pytest.mark.parametrize(
    ("conf", "flags", "message"),
    [
        ("{not json", [], "--conf is not valid JSON"),
        ("[1, 2]", [], "--conf must be a JSON object"),
        ('{"n_test_groups": 9}', [], "n_test_groups=9 must be smaller than n_groups=6"),
        ('{"splitter": "cpcv"}', ["--splitter", "walk_forward"], "--splitter and --conf's 'splitter' both set"),
        ('{"anchored": true}', ["--rolling"], "--rolling and --conf's 'anchored' both set anchored"),
        ("{}", ["--splitter", "walk_forward", "--train-window", "20Y"], "train_window='20Y' is not a duration"),
        (
            '{"start": "2020-01-01", "end": "2020-12-31"}',
            ["--splitter", "walk_forward", "--train-window", "400D"],
            r"train_window='400D' is not shorter than the sample 2020-01-01 \.\. 2020-12-31",
        ),
    ],
)
def test_cli_run_rejects_bad_conf(conf: str, flags: list[str], message: str) -> None:
    args = _parse(["wfo", "run", "--conf", conf, *flags])
    with pytest.raises(ValueError, match=message):
        args.handler(args)


def test_paths_cover_the_whole_sample(home: Path, report_folder: Path) -> None:
    run = home / "runs" / "wfo" / "report-run"
    paths = pd.read_parquet(run / "paths.parquet")
    days = load_dataset(run, ["ts"])["ts"].drop_duplicates().reset_index(drop=True)
    for _, frame in paths.groupby(["trial", "path"]):
        pd.testing.assert_series_equal(frame["ts"].reset_index(drop=True), days, check_names=False)


def test_run_ids_that_map_to_one_folder_are_refused_not_overwritten(tmp_path: Path) -> None:
    from quant_engine.runs import RunIdError, claimed_folder, run_dir

    first = claimed_folder(tmp_path, "col/1")
    assert claimed_folder(tmp_path, "col/1") == first  # a rerun of the same id gets its folder back
    with pytest.raises(RunIdError, match="run id 'col_1' maps to folder .*col_1, which run 'col/1' already uses"):
        claimed_folder(tmp_path, "col_1")
    with pytest.raises(RunIdError, match="no characters usable"):
        run_dir("wfo", "///", get_settings())
