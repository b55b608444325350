"""Daily market data ingestion: fetch bars -> features -> offline + online feature store.

The bars of the ingested days are stored too (offline group ``<feature group>_bars``), in the same
all-or-nothing write as the features, for the live bridge's warm-up and backfill.

Runs on weekdays after the US close for the day of its logical date; with ``start``/``end`` params
it backfills a range in one run. Reruns are idempotent (the stores skip records they already hold).
Emits the feature-store asset that ``drift_monitor`` and other downstream DAGs schedule on.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, Param, dag, task
from airflow.timetables.trigger import CronTriggerTimetable
from qe_airflow import SOURCES

FEATURE_STORE_ASSET = Asset("qe://feature-store/market_features")


@dag(
    schedule=CronTriggerTimetable("30 16 * * 1-5", timezone="America/New_York"),
    start_date=pendulum.datetime(2026, 1, 1, tz="America/New_York"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=5)},
    tags=["quant-engine", "feature-store"],
    params={
        "source": Param("synthetic", type="string", enum=SOURCES,
                        description="Where bars come from. synthetic is the embedded default market."),
        "path": Param(None, type=["null", "string"],
                      description="File or folder of bars, for the csv and parquet sources."),
        "tickers": Param(None, type=["null", "string"],
                         description="Comma-separated tickers; empty means every ticker of the source."),
        "start": Param(None, type=["null", "string"], format="date",
                       description="First day to ingest (YYYY-MM-DD). Empty: the last session on or before "
                                   "the run's logical date, or the whole file for csv / parquet."),
        "end": Param(None, type=["null", "string"], format="date",
                     description="Last day to ingest, inclusive; empty means the same day as start."),
        "feature_set": Param("default", type="string", enum=["default", "extended"],
                             description="Feature definitions to compute."),
    },
    doc_md=__doc__,
)
def market_data_ingestion():
    @task
    def fetch_bars(params=None, run_id=None, logical_date=None) -> dict:
        from qe_airflow import fail_fast_on_bad_input
        from quant_engine.features.ingest import IngestionRequest, fetch_bars, stage_frame
        from quant_engine.runs import run_dir

        with fail_fast_on_bad_input():
            request = IngestionRequest.for_run(
                (logical_date or pendulum.now("UTC")).isoformat(), source=params["source"],
                start=params["start"], end=params["end"], tickers=params["tickers"], path=params["path"],
                feature_set=params["feature_set"],
            )
            bars = fetch_bars(request)
        return {"bars": stage_frame(bars, run_dir("ingestion", run_id) / "bars.parquet"),
                "start": str(request.start.date()), "end": str(request.end.date())}

    @task
    def compute_features(staged: dict, params=None, run_id=None) -> dict:
        import pandas as pd

        from qe_airflow import fail_fast_on_bad_input
        from quant_engine.features.ingest import IngestionRequest, bars_in_range, compute_features, stage_frame
        from quant_engine.runs import run_dir

        request = IngestionRequest.build(source=params["source"], path=params["path"], start=staged["start"],
                                         end=staged["end"], feature_set=params["feature_set"])
        bars = pd.read_parquet(staged["bars"])
        with fail_fast_on_bad_input():
            features = compute_features(bars, request)
        folder = run_dir("ingestion", run_id)
        return {**staged, "features": stage_frame(features, folder / "features.parquet"),
                "bars_in_range": stage_frame(bars_in_range(bars, request), folder / "bars_in_range.parquet")}

    @task(outlets=[FEATURE_STORE_ASSET])
    def write_stores(staged: dict) -> dict:
        import dataclasses
        import shutil
        from pathlib import Path

        import pandas as pd

        from quant_engine.features.ingest import write_features

        result = write_features(pd.read_parquet(staged["features"]), bars=pd.read_parquet(staged["bars_in_range"]))
        shutil.rmtree(Path(staged["features"]).parent, ignore_errors=True)  # staged files served their purpose
        print(f"ingested {result.rows_received} feature rows for {result.tickers} tickers "
              f"({result.start} .. {result.end}): {result.rows_written_offline} new offline, "
              f"{result.rows_updated_online} online updates, {result.bars_written_offline} new bars")
        return dataclasses.asdict(result)

    write_stores(compute_features(fetch_bars()))


market_data_ingestion_dag = market_data_ingestion()
