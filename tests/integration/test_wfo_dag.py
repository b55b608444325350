"""``airflow dags test wfo_pipeline`` end to end on a small ingested market, and its failure on bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from quant_engine.backends import make_group_stores, make_offline_store
from quant_engine.features.ingest import IngestionRequest, ingest

pytestmark = pytest.mark.airflow

TICKERS = ["SYN00", "SYN01", "SYN02", "SYN03"]
CONF = {
    "start": "2019-01-01",
    "end": "2021-12-31",
    "tickers": TICKERS,  # a JSON list in the conf, as users write it (a comma string works too)
    "n_groups": 4,
    "n_test_groups": 2,
    "embargo": "5D",
    "trials": [{"max_depth": 2, "n_estimators": 10}, {"max_depth": 3, "n_estimators": 10, "threshold": 0.02}],
}


@pytest.fixture
def market(qe_home: Path) -> Path:
    """The qe_home of this test with 4 tickers x 3 years of synthetic features ingested."""
    ingest(
        IngestionRequest.build("synthetic", CONF["start"], CONF["end"], tickers=TICKERS, group=make_offline_store()),
        make_group_stores(),
    )
    return qe_home


def test_wfo_pipeline_writes_a_sane_report(market: Path, run_dag: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QE_TRACKING", "1")  # the suite turns it off elsewhere; here the DAG logs to MLflow
    result = run_dag("wfo_pipeline", CONF)
    (folder,) = (market / "reports" / "wfo").iterdir()
    report = json.loads((folder / "report.json").read_text())
    assert (report["n_splits"], report["n_paths"], report["n_trials"]) == (6, 3, 2)
    assert 0 <= report["pbo"] <= 1 and 0 <= report["deflated_sharpe"] <= report["psr"] <= 1
    assert len(report["paths"]) == 3 and all(abs(p["sharpe"]) < 10 for p in report["paths"])
    assert report["data"]["tickers"] == TICKERS and report["config"]["n_groups"] == 4
    # the DAG's defaults for the book and the labels reach the run, and the report says which they were
    assert (report["config"]["portfolio"], report["config"]["horizon"], report["config"]["label_target"]) == (
        "market_neutral",
        1,
        "excess",
    )
    assert (folder / "report.html").stat().st_size > 10_000
    # the default chunk (15 fits per mapped task) runs the 12 fits in one task; the last task logged
    # where the report is
    output = result.stdout + result.stderr
    assert set(_mapped_indexes(output)) == {"trial 0 split 0 .. trial 1 split 5 (12 fits)"}
    assert f"report: {folder / 'report.html'}" in output
    assert report["setup"] in output
    assert_tracked_in_mlflow(market, folder, report)


def assert_tracked_in_mlflow(home: Path, folder: Path, report: dict) -> None:
    """The run is in the embedded MLflow store under QE_HOME, with its statistics and report."""
    from mlflow.tracking import MlflowClient

    from quant_engine.tracking import EXPERIMENTS, load_tracked_run

    tracked = load_tracked_run(folder)
    assert tracked is not None, f"no {folder / 'mlflow.json'}"
    assert tracked.tracking_uri == f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracked.tracking_uri)
    run = client.get_run(tracked.run_id)
    assert run.info.experiment_id == client.get_experiment_by_name(EXPERIMENTS["wfo"]).experiment_id
    assert run.data.metrics["pbo"] == pytest.approx(report["pbo"])
    assert run.data.metrics["deflated_sharpe"] == pytest.approx(report["deflated_sharpe"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"report.html", "report.json"}


def _mapped_indexes(output: str) -> list[str]:
    return [
        line.split("rendered_map_index='")[1].split("'")[0]
        for line in output.splitlines()
        if "task_id='run_split'" in line and "rendered_map_index='" in line
    ]


def test_chunked_fits_make_fewer_tasks_and_the_same_report(market: Path, run_dag: Callable) -> None:
    reports = {}
    for chunk in (1, 5):
        result = run_dag("wfo_pipeline", {**CONF, "chunk": chunk})
        (folder,) = [f for f in (market / "reports" / "wfo").iterdir() if f.name not in reports.values()]
        reports[chunk] = folder.name
        indexes = set(_mapped_indexes(result.stdout + result.stderr))
        if chunk == 1:  # one mapped task per (trial, split)
            assert indexes == {f"trial {t} split {s}" for t in range(2) for s in range(6)}
        if chunk == 5:  # 12 fits in tasks of 5, 5 and 2
            assert indexes == {
                "trial 0 split 0,1,2,3,4",
                "trial 0 split 5 .. trial 1 split 3 (5 fits)",
                "trial 1 split 4,5",
            }
    same = [
        {
            k: v
            for k, v in json.loads((market / "reports" / "wfo" / name / "report.json").read_text()).items()
            if k not in ("run_id", "generated_at", "files")
        }
        for name in reports.values()
    ]
    assert same[0] == same[1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tickers": "SYN00,SYN99"}, "unknown ticker(s) SYN99: not in the offline store"),
        ({"n_groups": 3, "embargo": "400D"}, "the purge and embargo leave a split without training data"),
        ({"portfolio": "long_only"}, "'long_only' is not one of ['market_neutral', 'directional']"),
    ],  # one failure per place a run can be refused (build_dataset, plan, the params' schema); the library's
)  # other refusals are its unit tests' (tests/unit/wfo), each a whole `airflow dags test` here
def test_bad_input_fails_before_any_split_task(market: Path, run_dag: Callable, change: dict, message: str) -> None:
    result = run_dag("wfo_pipeline", {**CONF, **change}, expect_success=False)
    output = result.stdout + result.stderr
    assert "state=success" not in output.split("DagRun Finished")[-1]
    assert message in output
    assert _mapped_indexes(output) == []
    assert not list((market / "runs" / "wfo").glob("*/predictions"))
    assert not (market / "reports").exists()
