"""Walk-forward validation with purged cross-validation, one mapped task per (trial, split) locally.

The ``splitter`` param picks the splits: combinatorial purged CV (many backtest paths), purged
K-fold or walk-forward (anchored or rolling windows; one path of the test windows, PBO by CSCV over
them), each purged by label spans and embargoed.

Triggered by people (``airflow dags test wfo_pipeline --conf '{...}'`` or the UI), never on a
schedule: a backtest answers a question someone asked. The first two tasks validate every
parameter against the offline store and the splitter, so bad input fails before any model trains.
Models run here or, with ``QE_BACKEND=aws``, as SageMaker Processing jobs: one job (and one
mapped task) per trial with its splits together, or per (trial, split) with
``QE_PROCESSING_BATCH=split``. Files pass between
tasks through the run folder ``$QE_HOME/runs/wfo/<run_id>``; the report lands in
``$QE_HOME/reports/wfo/<run_id>``.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task
from qe_forms import wfo_form


def _label(batch: list) -> str:
    """A mapped task's name in the grid: ``trial 1 split 2``, or ``trial 1 split 0,1,2`` for a batch."""
    trials = sorted({t for t, _ in batch})
    splits = ",".join(str(s) for _, s in batch)
    return f"trial {trials[0]} split {splits}" if len(trials) == 1 else f"{len(batch)} fits"


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 2, "retry_delay": pendulum.duration(seconds=30)},
    tags=["quant-engine", "wfo"],
    params=wfo_form(),
    doc_md=__doc__,
)
def wfo_pipeline():
    @task
    def build_dataset(params=None, run_id=None) -> dict:
        from qe_airflow import fail_fast_on_bad_input
        from qe_aws import aws_clients

        from quant_engine.backends import make_bar_store, make_offline_store
        from quant_engine.config import get_settings
        from quant_engine.runs import run_dir
        from quant_engine.wfo.config import WfoConfig
        from quant_engine.wfo.dataset import build_dataset

        aws = aws_clients()
        with fail_fast_on_bad_input():  # bad input fails now, without retries, before any split task
            settings = get_settings()
            folder = run_dir("wfo", run_id, settings)
            config = WfoConfig.from_params(dict(params), default_tickers=settings.default_tickers)
            summary = build_dataset(
                config, folder, make_offline_store(settings, aws=aws), make_bar_store(settings, aws=aws)
            )
        return {"run_dir": str(folder), "rows": summary["rows"], "tickers": len(summary["tickers"])}

    @task
    def plan(staged: dict) -> list[dict]:
        from qe_airflow import fail_fast_on_bad_input
        from qe_aws import aws_clients

        from quant_engine.backends import make_wfo_fits
        from quant_engine.wfo.plan import plan

        with fail_fast_on_bad_input():
            tasks = plan(staged["run_dir"])
        fits = make_wfo_fits(aws=aws_clients())
        fits.prepare(staged["run_dir"])
        # Locally one mapped task per (trial, split); on aws one per Processing job (QE_PROCESSING_BATCH).
        batches = fits.batches([(t["trial_id"], t["split_id"]) for t in tasks])
        print(f"planned {len(tasks)} (trial, split) fits in {len(batches)} mapped run_split task(s)")
        return [
            {
                "run_dir": staged["run_dir"],
                "tasks": batch,
                "label": _label(batch),
                "position": i + 1,
                "of": len(batches),
            }
            for i, batch in enumerate(batches)
        ]

    @task(map_index_template="{{ task.op_kwargs['label'] }}")
    def run_split(run_dir: str, tasks: list, label: str, position: int, of: int) -> list[dict]:
        from qe_aws import aws_clients

        from quant_engine.backends import make_wfo_fits

        results = make_wfo_fits(aws=aws_clients()).run(run_dir, [(int(t), int(s)) for t, s in tasks])
        print(f"WFO fits {position}/{of} done ({label})")  # progress in the task log
        return results

    @task
    def assemble_paths(staged: dict) -> dict:
        from quant_engine.wfo import pipeline

        return pipeline.assemble(staged["run_dir"])

    @task
    def statistics(staged: dict) -> dict:
        from quant_engine.wfo import pipeline

        result = pipeline.statistics(staged["run_dir"])
        return {k: result[k] for k in ("selected_trial", "pbo", "psr", "deflated_sharpe")}

    @task
    def report(staged: dict) -> str:
        from quant_engine.config import get_settings
        from quant_engine.wfo.report import headline, load_report, write_report

        folder = write_report(staged["run_dir"], get_settings().reports_dir)
        print(headline(load_report(folder)))
        return str(folder / "report.html")

    staged = build_dataset()
    run_split.expand_kwargs(plan(staged)) >> assemble_paths(staged) >> statistics(staged) >> report(staged)


wfo_pipeline_dag = wfo_pipeline()
