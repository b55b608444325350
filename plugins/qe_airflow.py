"""Airflow-side helpers shared by the DAGs; the only code that knows both Airflow and quant-engine.

Lives in the plugins folder, which Airflow puts on ``sys.path`` for DAG files and workers alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping

from airflow.sdk import Asset, Param, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

#: The assets the DAGs hand on to each other: ingestion updates the feature store, the drift monitor
#: asks for retraining, training registers models and moves the champion.
FEATURE_STORE_ASSET = Asset("qe://feature-store/market_features")
RETRAINING_REQUESTED = Asset("qe://drift/retraining-requested")
REGISTRY_ASSET = Asset("qe://models/registry")
CHAMPION_ASSET = Asset("qe://models/champion")

#: Data sources ingestion reads (``quant_engine.data.sources.SOURCE_NAMES``; spelled out so parsing a
#: DAG never imports the library's data stack).
SOURCES = ["synthetic", "csv", "parquet", "yfinance"]


def feature_sets() -> list[str]:
    """The feature sets a form offers: the built-in ones, then those your feature modules declare.

    The same names as ``quant_engine.features.registry.feature_set_names()``, read from the
    feature modules' source instead of importing them, so parsing a DAG stays light.
    """
    from quant_engine.features.registry import declared_feature_set_names

    return list(declared_feature_set_names())


@contextlib.contextmanager
def fail_fast_on_bad_input() -> Iterator[None]:
    """Turn the library's bad-input errors into a task failure that is not retried.

    Retrying a run whose params name an unknown ticker or an empty range only delays the error the
    user has to read; infrastructure errors (I/O, network) still go through the normal retries.
    """
    try:
        yield
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


#: The failure mail, rendered by the SMTP notifier against the context Airflow hands the callback
#: (values are substituted, never parsed, so an error message cannot inject template code).
FAILURE_SUBJECT = "[quant-engine] {{ ti.dag_id }}: task {{ ti.task_id }} failed in run {{ ti.run_id }}"
FAILURE_HTML = (
    "<p>DAG <b>{{ ti.dag_id | e }}</b>, task <b>{{ ti.task_id | e }}</b>"
    "{% if ti.map_index is defined and ti.map_index >= 0 %} (map index {{ ti.map_index }}){% endif %} "
    "failed in run <b>{{ ti.run_id | e }}</b> on try {{ ti.try_number }}.</p>"
    "{% if data_interval_end %}<p>Data interval: {{ data_interval_start }} .. {{ data_interval_end }}</p>{% endif %}"
    "<p>Error:</p><pre>{{ qe_error | e }}</pre>"
    '{% if ti.log_url is defined %}<p><a href="{{ ti.log_url }}">Task log</a></p>{% endif %}'
)
#: The drift mail: the verdict, what it rests on and where the report lies.
DRIFT_SUBJECT = "[quant-engine] drift: {{ checked.verdict }} for {{ checked.model_name }} {{ checked.model_version }}"
DRIFT_HTML = (
    "<p>The drift check of run <b>{{ checked.run_id | e }}</b> judged "
    "<b>{{ checked.model_name | e }} {{ checked.model_version | e }}</b>: verdict <b>{{ checked.verdict }}</b>; "
    "retraining requested.</p>"
    "<p>Drifted features: {{ checked.drifted_features | join(', ') | e or 'none' }}</p>"
    "<p>Quality metrics out of bounds: {{ checked.breached_metrics | join(', ') | e or 'none' }}</p>"
    "<p>Report: {{ checked.report | e }}</p>"
)


def notify_on_failure(default_args: Mapping[str, object]) -> dict[str, object]:
    """A DAG's ``default_args`` with :func:`mail_task_failure` as every task's ``on_failure_callback``.

    Always attached: the callback reads ``QE_NOTIFY_*`` when it runs (on the worker), so turning
    mail on or off needs no DAG change, and parsing a DAG reads no setting.
    """
    return {**default_args, "on_failure_callback": mail_task_failure}


def mail_task_failure(context: Mapping[str, object]) -> None:
    """``on_failure_callback``: mail the task's final failure (not a retry, not a skip) to ``QE_NOTIFY_EMAILS``.

    Names the DAG, the task, the run, the data interval and the error.
    """
    error = context.get("exception")
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error or "unknown")
    _send_mail(FAILURE_SUBJECT, FAILURE_HTML, {**context, "qe_error": text})


def mail_drift_verdict(checked: Mapping[str, object], context: Mapping[str, object] | None = None) -> None:
    """Mail a drift check that asked for retraining (the ``check`` task's value) to ``QE_NOTIFY_EMAILS``.

    ``context`` defaults to the running task's.
    """
    if context is None:
        from airflow.sdk import get_current_context

        context = get_current_context()
    _send_mail(DRIFT_SUBJECT, DRIFT_HTML, {**context, "checked": dict(checked)})


def _send_mail(subject: str, html: str, context: Mapping[str, object]) -> None:
    """Send one mail through the provider's SMTP notifier.

    Nothing is sent without ``QE_NOTIFY_EMAILS``. A mail that cannot go out (bad setting, no
    connection, server down) is logged and swallowed: a notification never turns a run red.
    """
    import logging

    log = logging.getLogger("quant_engine.notifications")
    try:
        from quant_engine.config import Notifications

        settings = Notifications.from_env()
        if not settings.enabled:
            return
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        notifier = SmtpNotifier(
            to=list(settings.emails), subject=subject, html_content=html, smtp_conn_id=settings.smtp_conn_id
        )
        notifier(dict(context))
    except Exception as exc:
        log.error("notification not sent (%s: %s); the run goes on", type(exc).__name__, exc)
        return
    log.info("notification sent to %s: %s", ", ".join(settings.emails), notifier.subject)


def ready_or_skip(readiness: Mapping[str, object], *, max_wait_hours: float) -> PokeReturnValue:
    """A sensor's answer to the drift monitor's readiness value: done, wait again, or skip the run saying why.

    A run with nothing to do is a skip, not a failure, so a red run always means something is
    wrong: no champion to monitor yet skips at once; too few new rows (or none settled, as right
    after a retrain) skips once the sensor has waited ``max_wait_hours``. A skipped sensor skips
    every task after it and the run succeeds. The reason goes to the task log either way.
    """
    from quant_engine.monitoring.run import NO_CHAMPION

    reason = str(readiness["reason"])
    if readiness["ready"]:
        print(f"ready: {reason}")
        return PokeReturnValue(is_done=True, xcom_value=dict(readiness))
    if readiness["status"] == NO_CHAMPION:
        print(f"skipping the run: {reason}")
        raise AirflowSkipException(reason)
    waited_hours = _sensor_waited_seconds() / 3600
    if waited_hours >= max_wait_hours:
        why = f"nothing to judge after waiting {waited_hours:.1f} h: {reason}"
        print(f"skipping the run, {why}")
        raise AirflowSkipException(why)
    print(f"waiting (up to {max_wait_hours:g} h): {reason}")
    return PokeReturnValue(is_done=False)


def _sensor_waited_seconds() -> float:
    """How long the running reschedule-mode sensor has been waiting: since its first poke."""
    from datetime import UTC, datetime

    from airflow.sdk import get_current_context

    context = get_current_context()
    first = context["ti"].get_first_reschedule_date(context)
    return 0.0 if first is None else (datetime.now(UTC) - first).total_seconds()


def refuse_unknown_params(params: Mapping[str, object], dag: object) -> None:
    """Fail (without retries) a run whose conf holds a key the DAG does not declare.

    Airflow adds every conf key to the params, declared or not; a misspelt key (``tikers``) would
    otherwise be ignored and the run go ahead with the default.
    """
    declared = set(dag.params)  # type: ignore[attr-defined]
    unknown = sorted(set(params) - declared)
    if unknown:
        raise AirflowFailException(
            f"unknown parameter(s) {unknown} in the run's conf; known: {', '.join(sorted(declared))}"
        )


def asset_event_extras(triggering_asset_events: Mapping[object, Iterable[object]] | None) -> list[dict]:
    """The ``extra`` of every asset event that triggered the run (none for a manual run)."""
    events = (event for asset_events in (triggering_asset_events or {}).values() for event in asset_events)
    return [dict(getattr(event, "extra", None) or {}) for event in events]


def reading_params() -> dict[str, Param]:
    """How ingestion reads and judges bars: the group's market time and the validator's options."""
    return {
        "calendar": Param(
            None,
            type=["null", "string"],
            description="Exchange calendar of a new feature group: XNYS (default), 24/5 (FX), 24/7 "
            "(crypto), XLON, ...; a group keeps the one it was created with.",
        ),
        "bar_size": Param(
            None, type=["null", "string"], description="Bar size of a new feature group: 1d (default), 1h, 5m, ..."
        ),
        "assume_tz": Param(
            None,
            type=["null", "string"],
            description="csv / parquet: time zone of naive timestamps (UTC, America/New_York, ...).",
        ),
        "date_close": Param(
            None,
            type=["null", "string"],
            description="csv / parquet: HH:MM to stamp plain dates at in assume_tz instead of each session's close.",
        ),
        "on_error": Param(
            "raise",
            type="string",
            enum=["raise", "drop", "keep"],
            description="Broken or implausible bars: refuse the run, drop them, or keep the merely implausible ones.",
        ),
        "stamped_at": Param(
            "close",
            type="string",
            enum=["close", "open"],
            description="csv / parquet intraday bars: stamped at their close (the rule) or open.",
        ),
        "max_return_multiple": Param(
            100.0,
            type=["null", "number"],
            description="A return beyond this multiple of its ticker's recent median is "
            "implausible; empty turns the check off.",
        ),
        "max_volume_multiple": Param(1000.0, type=["null", "number"], description="Likewise for volume."),
    }


def tickers_param(default: object, description: str) -> Param:
    """A ``tickers`` param: a JSON list (``["GOOG", "MSFT"]``) or a comma-separated string, as users write them.

    :func:`quant_engine.validation.parse_tickers` reads either; the schema only keeps out what it
    never could (numbers, a list of non-strings).
    """
    return Param(default, type=["null", "string", "array"], items={"type": "string"}, description=description)


def dataset_params(defaults: Mapping[str, object]) -> dict[str, Param]:
    """The params of a labelled dataset built from the offline store, shared by every DAG that builds one.

    ``defaults`` are the library's defaults for the same keys, so a form and the code never disagree.
    """
    return {
        "tickers": tickers_param(
            defaults["tickers"],
            "Tickers, a list or comma-separated; empty: QE_DEFAULT_TICKERS, else every ticker in the offline store.",
        ),
        "feature_set": Param(
            defaults["feature_set"], type="string", enum=feature_sets(), description="Features joined from the store."
        ),
        "label_kind": Param(
            defaults["label_kind"],
            type="string",
            enum=["fixed", "triple_barrier"],
            description="fixed: sign of the horizon return; triple_barrier: first barrier hit.",
        ),
        "horizon": Param(
            defaults["horizon"], type="integer", minimum=1, description="Label horizon (vertical barrier) in bars."
        ),
        "label_target": Param(
            defaults["label_target"],
            type="string",
            enum=["absolute", "excess"],
            description="absolute: the ticker's own return; excess: its return minus the mean "
            "of all tickers at the same bar (fixed labels only).",
        ),
    }


def task_hostname() -> str:
    """The ``hostname`` a task instance records: its Celery worker's name in scale mode, else the machine's.

    ``make up`` in scale mode runs several workers on one machine and names each in
    ``QE_STACK_WORKER_NAME``; Airflow's ``[core] hostname_callable`` points here so the task
    instances (UI, REST API) say which worker ran them. Without the variable it is the machine's
    fully qualified name, Airflow's default.
    """
    import os
    import socket

    return os.environ.get("QE_STACK_WORKER_NAME") or socket.getfqdn()
