"""Research to production: a training run takes a finished walk-forward run's selected trial, records
the run in the model's metadata, and can require its deflated Sharpe before promoting."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from quant_engine.backends import (
    make_bar_store,
    make_group_stores,
    make_model_registry,
    make_offline_store,
    make_wfo_fits,
)
from quant_engine.config import Settings
from quant_engine.data.synthetic import Shift, SyntheticMarket
from quant_engine.features.ingest import IngestionRequest, ingest
from quant_engine.runs import run_dir
from quant_engine.training import pipeline
from quant_engine.training.dataset import TrainingSetError, load_summary
from quant_engine.wfo.config import WfoConfig
from quant_engine.wfo.pipeline import run_pipeline

START, END = "2019-01-01", "2021-12-31"
WFO = {
    "start": START,
    "end": END,
    "splitter": "walk_forward",
    "train_window": "365D",
    "test_window": "180D",
    "embargo": "5D",
    "trials": [
        {"max_depth": 2, "n_estimators": 30, "min_child_weight": 50, "learning_rate": 0.1},
        {"max_depth": 2, "n_estimators": 30, "min_child_weight": 50, "learning_rate": 0.05, "subsample": 0.8},
    ],
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 tickers x 3 years with three times the synthetic edge (a model must beat a coin to be promoted),
    and a finished walk-forward run ``wf-1`` over them."""
    home = tmp_path_factory.mktemp("research_home")
    settings = Settings(home=home)
    path = home / "bars.parquet"
    SyntheticMarket(
        n_tickers=6, seed=3, start="2018-06-01", end=END, shifts=[Shift("2018-06-04", "concept", edge_scale=3)]
    ).fetch(None, "2018-06-01", END).to_parquet(path)
    ingest(
        IngestionRequest.build("parquet", START, END, path=str(path), group=make_offline_store(settings)),
        make_group_stores(settings),
    )
    run_pipeline(
        WfoConfig.from_params(WFO),
        run_dir("wfo", "wf-1", settings),
        make_offline_store(settings),
        make_bar_store(settings),
        make_wfo_fits(settings),
        settings.reports_dir,
    )
    return home


@pytest.fixture
def settings(home: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("QE_HOME", str(home))
    return Settings(home=home)


def _prepare(settings: Settings, conf: dict, run_id: str) -> dict:
    return pipeline.prepare(
        conf,
        run_dir("training", run_id, settings),
        registry_of=lambda name: make_model_registry(settings, name),
        store=make_offline_store(settings),
        bar_store=make_bar_store(settings),
        settings=settings,
    )


@pytest.fixture(scope="module")
def trained(home: Path) -> dict:
    """The walk-forward run's trial trained, evaluated and registered (not promoted)."""
    settings = Settings(home=home)
    prepared = _prepare(settings, {"wfo_run_id": "wf-1", "interruptions": 1, "model_name": "from_wfo"}, "t-1")
    trained = pipeline.train(prepared, "t-1")
    registry = make_model_registry(settings, "from_wfo")
    evaluated = pipeline.evaluate(prepared, trained, registry)
    version = pipeline.register(prepared, trained, evaluated, registry)
    return {"prepared": prepared, "trained": trained, "evaluated": evaluated, "version": version}


def test_training_takes_the_selected_trial_and_records_the_run(home: Path, trained: dict) -> None:
    wfo = home / "runs" / "wfo" / "wf-1"
    statistics = json.loads((wfo / "statistics.json").read_text())
    trial = json.loads((wfo / "config.json").read_text())["trials"][statistics["selected_trial"]]
    prepared = trained["prepared"]
    hyperparameters = prepared["params"]["hyperparameters"]
    assert (hyperparameters["num_round"], hyperparameters["max_depth"], hyperparameters["seed"]) == (
        trial["n_estimators"],
        trial["max_depth"],
        42,
    )
    assert (hyperparameters["learning_rate"], hyperparameters["subsample"]) == (
        trial["learning_rate"],
        trial["subsample"],
    )
    # the run's labels and features, on the full data from the run's first day to the last stored one
    summary = load_summary(prepared["run_dir"])
    assert summary["params"]["feature_set"] == "default" and summary["params"]["label_target"] == "excess"
    assert summary["params"]["start"] == START and summary["params"]["end"] == END
    first = json.loads((wfo / "dataset.json").read_text())["first_ts"]
    assert summary["train_start"] == first and summary["holdout_end"].startswith("2021-12-30")
    record = make_model_registry(Settings(home=home), "from_wfo").get(trained["version"])
    booster = make_model_registry(Settings(home=home), "from_wfo").load_booster(trained["version"])
    assert booster.num_boosted_rounds() == trial["n_estimators"]
    meta = record.metadata
    assert meta.params == hyperparameters
    assert meta.wfo_run == prepared["wfo_run"]
    assert {k: meta.wfo_run[k] for k in ("run_id", "splitter", "pbo", "deflated_sharpe", "psr", "selected_trial")} == {
        "run_id": "wf-1",
        "splitter": "walk_forward",
        "pbo": statistics["pbo"],
        "deflated_sharpe": statistics["deflated_sharpe"],
        "psr": statistics["psr"],
        "selected_trial": statistics["selected_trial"],
    }
    assert meta.wfo_run["selected_params"] == trial and meta.wfo_run["n_splits"] >= 3
    assert meta.wfo_report == str(home / "reports" / "wfo" / "wf-1" / "report.html")
    assert meta.training["basis"].startswith("walk-forward run wf-1's selected trial")


def test_min_deflated_sharpe_refuses_and_says_so(home: Path, trained: dict) -> None:
    registry = make_model_registry(Settings(home=home), "from_wfo")
    dsr = trained["prepared"]["wfo_run"]["deflated_sharpe"]
    assert trained["evaluated"]["promote"], trained["evaluated"]["reason"]  # the floor alone lets it through
    strict = {**trained["prepared"], "params": {**trained["prepared"]["params"], "min_deflated_sharpe": 0.99}}
    refused = pipeline.evaluate(strict, trained["trained"], registry)
    assert not refused["promote"]
    assert refused["reason"] == (
        f"deflated Sharpe {dsr:.3f} of walk-forward run wf-1 is not above min_deflated_sharpe=0.99: the selected "
        "trial may owe its Sharpe ratio to the luck of searching 2 trials"
    )
    lenient = {**trained["prepared"], "params": {**trained["prepared"]["params"], "min_deflated_sharpe": dsr / 2}}
    assert pipeline.evaluate(lenient, trained["trained"], registry)["promote"]


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"wfo_run_id": "nope"}, r"wfo_run_id='nope': no wfo run of that id under .*runs/wfo \(newest runs: .*wf-1"),
        ({"wfo_run_id": "half"}, "wfo_run_id='half': walk-forward run 'half' has not finished: its statistics step"),
        ({"wfo_run_id": 7}, "wfo_run_id=7: run id 7 must be a non-empty string"),
        ({"min_deflated_sharpe": 0.5}, r"min_deflated_sharpe=0.5 needs a wfo_run_id"),
        ({"wfo_run_id": "wf-1", "min_deflated_sharpe": 1.5}, r"min_deflated_sharpe=1.5 must be a number in \[0, 1\)"),
        ({"wfo_run_id": "wf-1", "horizon": 3}, r"but the conf changes horizon=3 \(the run's: 1\)"),
    ],
)
def test_bad_research_parameters_fail_before_any_data_moves(settings: Settings, conf: dict, message: str) -> None:
    half = run_dir("wfo", "half", settings)  # a run whose statistics step has not run yet
    for name in ("config.json", "plan.json"):
        (half / name).write_bytes((settings.home / "runs" / "wfo" / "wf-1" / name).read_bytes())
    folder = run_dir("training", "refused", settings)
    with pytest.raises(TrainingSetError, match=message):
        _prepare(settings, conf, "refused")
    assert sorted(p.name for p in folder.iterdir()) == [".run_id"]  # nothing was joined or written


def _cli(*argv: str) -> int:
    from quant_engine.cli import training as cli

    parser = argparse.ArgumentParser(prog="quant-engine")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.handler(args)


def test_cli_train_with_a_wfo_run_id(settings: Settings, capsys: pytest.CaptureFixture) -> None:
    argv = ["train", "--wfo-run-id", "wf-1", "--conf", '{"interruptions": 0, "model_name": "cli_model"}']
    assert _cli(*argv, "--min-deflated-sharpe", "0.99", "--run-id", "cli-refused") == 0
    out = capsys.readouterr().out
    registry = make_model_registry(settings, "cli_model")
    (version,) = registry.versions()
    assert "training cli_model on walk-forward run wf-1's selected trial" in out
    assert f"registered cli_model {version}" in out and "from walk-forward run wf-1 (walk_forward)" in out
    assert "promote=False: deflated Sharpe " in out and "not above min_deflated_sharpe=0.99" in out
    assert registry.champion() is None and registry.get(version).metadata.wfo_run["run_id"] == "wf-1"
    assert _cli(*argv, "--run-id", "cli-promoted") == 0
    out = capsys.readouterr().out
    assert f"champion: {version} (was none)" in out  # the same bytes on the same data: the same version
    assert [line for line in out.splitlines() if line.startswith("  from walk-forward run wf-1")]
    _cli("models", "--name", "cli_model", "list")
    assert capsys.readouterr().out.splitlines()[1].rstrip().endswith("wf-1")
    with pytest.raises(ValueError, match="--wfo-run-id and --conf's 'wfo_run_id' both set wfo_run_id"):
        _cli("train", "--wfo-run-id", "wf-1", "--conf", '{"wfo_run_id": "wf-1"}')
