"""Walk-forward validation with combinatorial purged CV, one mapped task per (trial, split).

Triggered by people (``airflow dags test wfo_pipeline --conf '{...}'`` or the UI), never on a
schedule: a backtest answers a question someone asked. The first two tasks validate every
parameter against the offline store and the splitter, so bad input fails before any model trains.
Models run here or, with ``QE_BACKEND=aws``, as SageMaker Processing jobs. Files pass between
tasks through the run folder ``$QE_HOME/runs/wfo/<run_id>``; the report lands in
``$QE_HOME/reports/wfo/<run_id>``.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task
from qe_airflow import dataset_params

from quant_engine.wfo.pipeline import DEFAULT_PARAMS as D


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 2, "retry_delay": pendulum.duration(seconds=30)},
    tags=["quant-engine", "wfo"],
    params={
        **dataset_params(D),
        "start": Param(D["start"], type="string", format="date", description="First day of the sample."),
        "end": Param(D["end"], type="string", format="date", description="Last day of the sample, inclusive."),
        "pt_mult": Param(D["pt_mult"], type=["null", "number"], exclusiveMinimum=0,
                         description="Triple barrier: profit-take distance in volatilities; null disables it."),
        "sl_mult": Param(D["sl_mult"], type=["null", "number"], exclusiveMinimum=0,
                         description="Triple barrier: stop-loss distance in volatilities; null disables it."),
        "vol_window": Param(D["vol_window"], type="integer", minimum=2,
                            description="Triple barrier: bars in the volatility estimate."),
        "n_groups": Param(D["n_groups"], type="integer", minimum=2,
                          description="CPCV: contiguous groups of timestamps."),
        "n_test_groups": Param(D["n_test_groups"], type="integer", minimum=1,
                               description="CPCV: test groups per split (smaller than n_groups)."),
        "embargo": Param(D["embargo"], type=["string", "integer"],
                         description="Kept out of training after each test block: bars (5) or a duration ('5D')."),
        "trials": Param(D["trials"], type=["object", "array"],
                        description="XGBoost trials: a grid (object of lists, Cartesian product) or a list of "
                                    "objects; keys max_depth, learning_rate, n_estimators, subsample, "
                                    "colsample_bytree, min_child_weight, threshold."),
        "portfolio": Param(D["portfolio"], type="string", enum=["market_neutral", "directional"],
                           description="market_neutral: demeaned probabilities, dollar-neutral, gross exposure 1 "
                                       "per bar; directional: +1/-1 per ticker from the threshold, equal weight."),
        "cost_bps": Param(D["cost_bps"], type="number", minimum=0,
                          description="Cost per unit of position traded, in basis points."),
        "seed": Param(D["seed"], type="integer", minimum=0, description="Seed of every model."),
        "min_group_rows": Param(D["min_group_rows"], type="integer", minimum=1,
                                description="Fewest rows a CPCV group may hold."),
    },
    doc_md=__doc__,
)
def wfo_pipeline():
    @task
    def build_dataset(params=None, run_id=None) -> dict:
        from qe_airflow import fail_fast_on_bad_input

        from quant_engine.runs import run_dir
        from quant_engine.wfo import pipeline

        folder = run_dir("wfo", run_id)
        with fail_fast_on_bad_input():  # bad input fails now, without retries, before any split task
            summary = pipeline.build_dataset(pipeline.WfoConfig.from_params(dict(params)), folder)
        return {"run_dir": str(folder), "rows": summary["rows"], "tickers": len(summary["tickers"])}

    @task
    def plan(staged: dict) -> list[dict]:
        from qe_airflow import fail_fast_on_bad_input

        from quant_engine.wfo import pipeline

        with fail_fast_on_bad_input():
            tasks = pipeline.plan(staged["run_dir"])
        print(f"planned {len(tasks)} (trial, split) fits, one mapped run_split task each")
        return [{"run_dir": staged["run_dir"], **t, "position": i + 1, "of": len(tasks)} for i, t in enumerate(tasks)]

    @task(map_index_template="trial {{ task.op_kwargs['trial_id'] }} split {{ task.op_kwargs['split_id'] }}")
    def run_split(run_dir: str, trial_id: int, split_id: int, position: int, of: int) -> dict:
        from quant_engine.wfo import pipeline

        result = pipeline.execute_split(run_dir, trial_id, split_id)
        print(f"WFO fit {position}/{of} done (trial {trial_id}, split {split_id})")  # progress in the task log
        return result

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
        from quant_engine.wfo.report import headline, load_report, write_report

        folder = write_report(staged["run_dir"])
        print(headline(load_report(folder)))
        return str(folder / "report.html")

    staged = build_dataset()
    run_split.expand_kwargs(plan(staged)) >> assemble_paths(staged) >> statistics(staged) >> report(staged)


wfo_pipeline_dag = wfo_pipeline()
