"""Drift monitor: is the champion still fit for the market? If not, ask for retraining.

Runs whenever ingestion updates the feature store (the asset ``qe://feature-store/market_features``).
Graph::

    enough_new_data -> score -> check -> retraining_needed -> request_retraining

* ``enough_new_data`` (sensor, reschedule mode, so waiting holds no worker slot): waits up to
  ``max_wait_hours`` (6) until the store holds ``min_new_rows`` rows after the end of the
  champion's training data, some of them with settled labels. A run with nothing to do is a skip,
  not a failure, and its log says why: without a champion it skips at once, with too few new
  rows (as for days after a retrain) once the wait is over; every later task is skipped and the
  run succeeds. Not ``soft_fail``: that would turn bad input (an unknown model) into a silent
  skip too.
* ``score``: the batch scorer logs the champion's predictions on the window
  (``quant_engine.monitoring.scoring``); a rerun logs nothing twice.
* ``check``: the window's features against the baseline stored with the version, the settled
  predictions' quality against its holdout, the volatility regime, one verdict; drift metrics to
  the alarms; ``$QE_HOME/reports/drift/<run_id>/report.json`` and ``report.html``
  (``quant_engine.monitoring.run``).
* ``retraining_needed`` short-circuits on a verdict of ``none``, so ``request_retraining`` emits
  ``qe://drift/retraining-requested`` (extra: verdict, run id, model version), on which
  ``spot_training`` is scheduled, only when something drifted.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task
from qe_airflow import FEATURE_STORE_ASSET, RETRAINING_REQUESTED, mail_drift_verdict, notify_on_failure
from qe_forms import drift_form


@dag(
    schedule=[FEATURE_STORE_ASSET],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=notify_on_failure({"retries": 1, "retry_delay": pendulum.duration(seconds=30)}),
    tags=["quant-engine", "monitoring"],
    params=drift_form(),
    doc_md=__doc__,
)
def drift_monitor():
    # The poke itself skips after max_wait_hours (at most 24); the timeout is only a guard.
    @task.sensor(poke_interval=300, timeout=25 * 3600, mode="reschedule")
    def enough_new_data(params=None, dag=None):
        from qe_airflow import fail_fast_on_bad_input, ready_or_skip, refuse_unknown_params
        from qe_aws import aws_clients

        from quant_engine.backends import make_drift_monitor

        refuse_unknown_params(params, dag)
        with fail_fast_on_bad_input():
            monitor = make_drift_monitor(model_name=params["model_name"], aws=aws_clients())
            state = monitor.readiness(min_new_rows=params["min_new_rows"])
        return ready_or_skip(state, max_wait_hours=params["max_wait_hours"])

    @task
    def score(ready: dict, params=None) -> dict:
        from qe_airflow import fail_fast_on_bad_input
        from qe_aws import aws_clients

        from quant_engine.backends import make_drift_monitor
        from quant_engine.monitoring.scoring import score_batch

        with fail_fast_on_bad_input():
            monitor = make_drift_monitor(model_name=params["model_name"], aws=aws_clients())
            start, end = monitor.window(window_days=params["window_days"])
            result = score_batch(monitor.registry, monitor.store, start, end)
        print(
            f"scored {result.rows_scored} rows with {result.model_name} {result.model_version} "
            f"({result.start} .. {result.end}), {result.rows_appended} new in the prediction log"
        )
        return result.to_dict()

    @task
    def check(scored: dict, params=None, run_id=None) -> dict:
        from qe_airflow import fail_fast_on_bad_input
        from qe_aws import aws_clients, publish_report

        from quant_engine.backends import make_drift_monitor

        with fail_fast_on_bad_input():
            result = make_drift_monitor(model_name=params["model_name"], aws=aws_clients()).check(
                run_id,
                window_days=params["window_days"],
                comparison_threshold=params["comparison_threshold"],
                psi_threshold=params["psi_threshold"],
                wasserstein_threshold=params["wasserstein_threshold"],
                min_drifted_features=params["min_drifted_features"],
                confidence=params["confidence"],
            )
        report = publish_report(result.report_dir, "drift")  # S3 on the aws backend
        print(f"verdict {result.verdict} for {result.model_name} {result.model_version}; report: {report}")
        return result.to_dict() | {"report": report}

    @task.short_circuit
    def retraining_needed(checked: dict) -> bool:
        return checked["retrain"]

    @task(outlets=[RETRAINING_REQUESTED])
    def request_retraining(checked: dict, outlet_events=None) -> dict:
        extra = {
            "verdict": checked["verdict"],
            "run_id": checked["run_id"],
            "model_name": checked["model_name"],
            "model_version": checked["model_version"],
        }
        outlet_events[RETRAINING_REQUESTED].extra = extra
        print(f"retraining requested: {extra}")
        mail_drift_verdict(checked)  # to QE_NOTIFY_EMAILS, if set; a mail that fails is only logged
        return extra

    checked = check(score(enough_new_data()))
    retraining_needed(checked) >> request_retraining(checked)


drift_monitor_dag = drift_monitor()
