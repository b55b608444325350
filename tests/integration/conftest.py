"""Fixtures that run real DAGs with ``airflow dags test`` against a throw-away Airflow home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_BIN = str(Path(sys.executable).with_name("airflow"))


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Airflow home with a migrated SQLite metadata database, shared by the session's DAG tests."""
    home = tmp_path_factory.mktemp("airflow_home")
    env = {**os.environ, "AIRFLOW_HOME": str(home)}
    result = subprocess.run(
        [AIRFLOW_BIN, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return home


@pytest.fixture
def run_dag(airflow_home: Path, qe_home: Path) -> Callable[..., subprocess.CompletedProcess]:
    """``run_dag(dag_id, conf)`` runs ``airflow dags test`` and fails the test with its log if it fails."""

    def run(
        dag_id: str,
        conf: dict | None = None,
        *,
        expect_success: bool = True,
        timeout: int = 600,
        logical_date: str | None = None,
    ) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "QE_HOME": str(qe_home),
        }
        command = [AIRFLOW_BIN, "dags", "test", dag_id, *([logical_date] if logical_date else [])]
        if conf is not None:
            command += ["--conf", json.dumps(conf)]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        output = result.stdout + result.stderr
        succeeded = result.returncode == 0 and "state=success" in output
        if expect_success:
            assert succeeded, f"airflow dags test {dag_id} failed:\n{output[-6000:]}"
        return result

    return run
