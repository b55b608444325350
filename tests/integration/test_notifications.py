"""Failure and drift mail through the SMTP provider's notifier, received by a real SMTP server on loopback."""

from __future__ import annotations

import logging
import re
import socket

import pytest
from qe_airflow import mail_drift_verdict
from smtp_sink import SmtpSink

from quant_engine.config import Notifications, Settings, SettingsError
from quant_engine.monitoring.run import DriftCheckResult

CONN_ID = "qe_test_smtp"


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch):
    """A running SMTP sink, an Airflow connection to it, and QE_NOTIFY_* pointing there."""
    with SmtpSink() as server:
        for key, value in server.connection_env(CONN_ID).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("QE_NOTIFY_EMAILS", "ops@example.com, quant@example.com")
        monkeypatch.setenv("QE_NOTIFY_SMTP_CONN_ID", CONN_ID)
        yield server


def drift_result() -> dict:
    return DriftCheckResult(
        "scheduled__2026-03-02", "xgb_direction", "3", "both", True, "/qe/reports/drift/scheduled__2026-03-02",
        drifted_features=("realized_vol_20", "ret_5"), breached_metrics=("log_loss",),
    ).to_dict() | {"report": "s3://qe-bucket/quant-engine/reports/drift/scheduled__2026-03-02/report.html"}  # fmt: skip


@pytest.mark.airflow
def test_a_failed_run_mails_its_dag_task_run_and_error(sink: SmtpSink, run_dag) -> None:
    result = run_dag("market_data_ingestion", {"tikers": "SYN00", "start": "2024-03-04"}, expect_success=False)
    output = result.stdout + result.stderr
    run_id = re.search(r"DagRun Finished: dag_id=market_data_ingestion, .*?run_id=(\S+?),", output).group(1)
    assert "state=failed" in output

    (mail,) = sink.received  # one task failed for good; its downstream tasks are upstream_failed, not mailed
    assert mail.recipients == ("ops@example.com", "quant@example.com")
    assert mail.subject == f"[quant-engine] market_data_ingestion: task fetch_bars failed in run {run_id}"
    assert "DAG <b>market_data_ingestion</b>, task <b>fetch_bars</b>" in mail.text
    assert f"failed in run <b>{run_id}</b> on try 1" in mail.text
    assert "AirflowFailException: IngestionError: unknown ingestion parameter(s) [&#39;tikers&#39;]" in mail.text


def test_a_drift_verdict_mails_the_verdict_and_the_drifting_features(sink: SmtpSink) -> None:
    mail_drift_verdict(drift_result(), context={})
    (mail,) = sink.received
    assert mail.subject == "[quant-engine] drift: both for xgb_direction 3"
    assert "run <b>scheduled__2026-03-02</b>" in mail.text and "verdict <b>both</b>" in mail.text
    assert "Drifted features: realized_vol_20, ret_5" in mail.text
    assert "Quality metrics out of bounds: log_loss" in mail.text
    assert "Report: s3://qe-bucket/quant-engine/reports/drift/scheduled__2026-03-02/report.html" in mail.text


def test_without_recipients_nothing_is_sent(sink: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QE_NOTIFY_EMAILS")
    mail_drift_verdict(drift_result(), context={})
    assert sink.received == []


def test_a_mail_that_cannot_go_out_is_logged_and_the_task_goes_on(
    sink: SmtpSink, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", f"smtp://127.0.0.1:{dead_port}?disable_ssl=true")
    with caplog.at_level(logging.ERROR, logger="quant_engine.notifications"):
        mail_drift_verdict(drift_result(), context={})  # does not raise
    assert "notification not sent (ConnectionRefusedError" in caplog.text

    caplog.clear()
    monkeypatch.setenv("QE_NOTIFY_EMAILS", "ops@example.com,not-an-address")
    with caplog.at_level(logging.ERROR, logger="quant_engine.notifications"):
        mail_drift_verdict(drift_result(), context={})
    assert "QE_NOTIFY_EMAILS holds 'not-an-address', which is not an email address" in caplog.text
    assert sink.received == []


def test_notification_settings_parse_and_refuse_what_cannot_work() -> None:
    assert Settings.from_env({}).notifications == Notifications((), "smtp_default")
    assert not Notifications.from_env({}).enabled
    parsed = Notifications.from_env({"QE_NOTIFY_EMAILS": " a@x.org; b@y.org ,", "QE_NOTIFY_SMTP_CONN_ID": "mail"})
    assert parsed == Notifications(("a@x.org", "b@y.org"), "mail") and parsed.enabled
    with pytest.raises(SettingsError, match="'a b@x.org', which is not an email address"):
        Notifications.from_env({"QE_NOTIFY_EMAILS": "a b@x.org"})
    with pytest.raises(SettingsError, match="QE_NOTIFY_SMTP_CONN_ID must name"):
        Notifications(("a@x.org",), " ")
