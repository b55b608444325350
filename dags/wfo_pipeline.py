"""Walk-forward validation with purged cross-validation, one mapped task per ``chunk`` of (trial, split) fits.

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
``$QE_HOME/reports/wfo/<run_id>``. The ``chunk`` param (fits per mapped task) only cuts the fits
into tasks; each task logs its fits' compute seconds and returns them, so a run shows how much of a
task instance was fitting and how much was scheduling.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task
from qe_airflow import notify_on_failure
from qe_forms import wfo_form
from qe_sagemaker import QeFitsOperator


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args=notify_on_failure({"retries": 2, "retry_delay": pendulum.duration(seconds=30)}),
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
        config = {k: v for k, v in dict(params).items() if k != "chunk"}  # the orchestration's, not the library's
        with fail_fast_on_bad_input():  # bad input fails now, without retries, before any split task
            settings = get_settings()
            folder = run_dir("wfo", run_id, settings)
            summary = build_dataset(
                WfoConfig.from_params(config, default_tickers=settings.default_tickers),
                folder,
                make_offline_store(settings, aws=aws),
                make_bar_store(settings, aws=aws),
            )
        return {"run_dir": str(folder), "rows": summary["rows"], "tickers": len(summary["tickers"])}

    @task
    def plan(staged: dict, params=None) -> list[dict]:
        from qe_airflow import fail_fast_on_bad_input
        from qe_aws import aws_clients

        from quant_engine.backends import make_wfo_fits
        from quant_engine.wfo.plan import mapped_batches, plan

        fits = make_wfo_fits(aws=aws_clients())
        with fail_fast_on_bad_input():
            tasks = plan(staged["run_dir"])
            # Locally `chunk` fits per mapped task; on aws one task per Processing job (QE_PROCESSING_BATCH).
            batches = fits.batches([(t["trial_id"], t["split_id"]) for t in tasks], chunk=params["chunk"])
        fits.prepare(staged["run_dir"])
        print(f"planned {len(tasks)} (trial, split) fits in {len(batches)} mapped run_split task(s)")
        return mapped_batches(staged["run_dir"], batches)

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
        from qe_aws import experiment_tracker, publish_report

        from quant_engine.config import get_settings
        from quant_engine.wfo.report import headline, load_report, write_report

        folder = write_report(staged["run_dir"], get_settings().reports_dir, tracker=experiment_tracker())
        print(headline(load_report(folder)))
        return publish_report(folder, "wfo")  # S3 on the aws backend

    staged = build_dataset()
    # One mapped task per batch: its fits here, or one Processing job re-attached to on retry (aws).
    run_split = QeFitsOperator.partial(task_id="run_split", map_index_template="{{ task.batch_label }}")
    run_split.expand_kwargs(plan(staged)) >> assemble_paths(staged) >> statistics(staged) >> report(staged)


wfo_pipeline_dag = wfo_pipeline()
