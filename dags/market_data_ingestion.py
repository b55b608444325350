"""Daily market data ingestion: fetch bars -> features -> offline + online feature store.

The bars of the ingested sessions are stored too (offline group ``<feature group>_bars``), in the
same all-or-nothing write as the features, for the live bridge's warm-up and backfill.

Each scheduled run (weekdays at 16:30 New York) ingests the sessions of the group's exchange
calendar that closed in its data interval: Monday's run takes Monday's session, a run on a holiday
has none and skips cleanly. A run that names no source or tickers (every scheduled one) reads the
settings' universe: ``QE_DEFAULT_SOURCE`` (``QE_DEFAULT_SOURCE_PATH``) and ``QE_DEFAULT_TICKERS``.
With ``start``/``end`` params it backfills those sessions in one run; ``airflow backfill create``
fills a range run by run. Reruns are idempotent (the stores skip records they already hold).
Emits the feature-store asset ``drift_monitor`` schedules on.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task
from airflow.timetables.interval import CronDataIntervalTimetable
from qe_airflow import FEATURE_STORE_ASSET, notify_on_failure
from qe_forms import ingestion_form


@dag(
    schedule=CronDataIntervalTimetable("30 16 * * 1-5", timezone="America/New_York"),
    start_date=pendulum.datetime(2000, 1, 3, tz="America/New_York"),  # backfills may reach far back
    catchup=False,
    max_active_runs=1,
    default_args=notify_on_failure({"retries": 2, "retry_delay": pendulum.duration(minutes=5)}),
    tags=["quant-engine", "feature-store"],
    params=ingestion_form(),
    doc_md=__doc__,
)
def market_data_ingestion():
    @task
    def fetch_bars(params=None, run_id=None, data_interval_start=None, data_interval_end=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException
        from qe_airflow import fail_fast_on_bad_input
        from qe_aws import aws_clients

        from quant_engine.backends import make_offline_store
        from quant_engine.config import get_settings
        from quant_engine.features.ingest import IngestionRequest, NoSessionToIngest, fetch_bars, stage_frame
        from quant_engine.runs import run_dir

        window = (data_interval_start, data_interval_end) if data_interval_end is not None else None
        with fail_fast_on_bad_input():
            settings = get_settings()
            try:
                request = IngestionRequest.from_params(
                    dict(params),
                    make_offline_store(settings, aws=aws_clients()),
                    window=window,
                    defaults=settings.run_defaults,
                )
            except NoSessionToIngest as nothing:
                raise AirflowSkipException(f"no session: {nothing}") from None
            print(f"ingesting {request.describe()} from {request.source}")
            bars = fetch_bars(request)
        return {
            "bars": stage_frame(bars, run_dir("ingestion", run_id, settings) / "bars.parquet"),
            "request": request.to_dict(),
        }

    @task
    def compute_features(staged: dict, run_id=None) -> dict:
        import pandas as pd
        from qe_airflow import fail_fast_on_bad_input

        from quant_engine.config import get_settings
        from quant_engine.features.ingest import IngestionRequest, bars_in_range, compute_features, stage_frame
        from quant_engine.runs import run_dir

        request = IngestionRequest.from_dict(staged["request"])
        bars = pd.read_parquet(staged["bars"])
        with fail_fast_on_bad_input():
            features = compute_features(bars, request)
        folder = run_dir("ingestion", run_id, get_settings())
        return {
            **staged,
            "features": stage_frame(features, folder / "features.parquet"),
            "bars_in_range": stage_frame(bars_in_range(bars, request), folder / "bars_in_range.parquet"),
        }

    @task(outlets=[FEATURE_STORE_ASSET])
    def write_stores(staged: dict) -> dict:
        import dataclasses
        import shutil
        from pathlib import Path

        import pandas as pd
        from qe_airflow import fail_fast_on_bad_input
        from qe_aws import aws_clients

        from quant_engine.backends import make_group_stores
        from quant_engine.features.ingest import IngestionRequest, write_features

        request = IngestionRequest.from_dict(staged["request"])
        with fail_fast_on_bad_input():  # a group of another feature set or market time: retrying cannot help
            result = write_features(
                pd.read_parquet(staged["features"]),
                make_group_stores(aws=aws_clients()),
                bars=pd.read_parquet(staged["bars_in_range"]),
                market_time=request.market_time,
            )
        shutil.rmtree(Path(staged["features"]).parent, ignore_errors=True)  # staged files served their purpose
        print(
            f"ingested {result.rows_received} feature rows for {result.tickers} tickers "
            f"({result.start} .. {result.end}): {result.rows_written_offline} new offline, "
            f"{result.rows_updated_online} online updates, {result.bars_written_offline} new bars"
        )
        return dataclasses.asdict(result)

    write_stores(compute_features(fetch_bars()))


market_data_ingestion_dag = market_data_ingestion()
