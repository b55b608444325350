"""The drift monitor's sensor: a run with nothing to do skips, saying why; one that can wait, waits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from quant_engine.monitoring.run import NO_CHAMPION, READY, WAITING

REPO_ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("qe_airflow", REPO_ROOT / "plugins" / "qe_airflow.py")
qe_airflow = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qe_airflow)


def readiness(status: str, reason: str) -> dict:
    return {"status": status, "reason": reason, "ready": status == READY, "new_rows": 3}


def test_ready_hands_the_readiness_on(capsys: pytest.CaptureFixture) -> None:
    answer = qe_airflow.ready_or_skip(readiness(READY, "120 new rows"), max_wait_hours=6)
    assert answer.is_done and answer.xcom_value["new_rows"] == 3
    assert capsys.readouterr().out == "ready: 120 new rows\n"


def test_without_a_champion_the_run_skips_at_once(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(AirflowSkipException, match="^no champion yet$"):
        qe_airflow.ready_or_skip(readiness(NO_CHAMPION, "no champion yet"), max_wait_hours=6)
    assert capsys.readouterr().out == "skipping the run: no champion yet\n"


def test_too_few_rows_wait_until_the_wait_is_over(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(qe_airflow, "_sensor_waited_seconds", lambda: 5.5 * 3600)
    answer = qe_airflow.ready_or_skip(readiness(WAITING, "3 new rows"), max_wait_hours=6)
    assert not answer.is_done
    assert capsys.readouterr().out == "waiting (up to 6 h): 3 new rows\n"
    monkeypatch.setattr(qe_airflow, "_sensor_waited_seconds", lambda: 6 * 3600)
    with pytest.raises(AirflowSkipException, match="^nothing to judge after waiting 6.0 h: 3 new rows$"):
        qe_airflow.ready_or_skip(readiness(WAITING, "3 new rows"), max_wait_hours=6)
