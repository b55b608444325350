"""Every DAG file imports cleanly, defines its DAG, and does no work at import time.

The scheduler's DAG processor re-imports these files constantly, so heavy imports and I/O belong
inside tasks. The check runs each file in a fresh interpreter and looks at what it pulled in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((REPO_ROOT / "dags").glob("*.py"))
# boto3 is absent from the list on purpose: Airflow's provider manager imports it to normalise asset
# URIs as soon as any DAG declares an Asset, which no DAG file can avoid.
HEAVY_MODULES = ("pandas", "numpy", "xgboost", "duckdb", "pyarrow", "sklearn", "scipy", "matplotlib")

_PROBE = """
import json, runpy, sys
namespace = runpy.run_path(sys.argv[1])
from airflow.sdk import DAG
dags = sorted(v.dag_id for v in namespace.values() if isinstance(v, DAG))
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print(json.dumps({{"dags": dags, "heavy": heavy}}))
"""


def test_there_are_dags() -> None:
    assert DAG_FILES, "dags/ holds no DAG files"


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_light_and_defines_its_dag(dag_file: Path, tmp_path: Path) -> None:
    env = {**os.environ, "QE_HOME": str(tmp_path / "qe_home")}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY_MODULES), str(dag_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["dags"] == [dag_file.stem], f"{dag_file.name} should define exactly the DAG {dag_file.stem!r}"
    assert probe["heavy"] == [], f"{dag_file.name} imports {probe['heavy']} at parse time; import inside tasks"
    assert not (tmp_path / "qe_home").exists(), f"{dag_file.name} wrote to QE_HOME while being parsed"


def test_dagbag_has_no_import_errors() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {p.stem for p in DAG_FILES}


def test_the_dag_forms_offer_exactly_the_librarys_data_sources() -> None:
    import importlib.util

    from quant_engine.data.sources import SOURCE_NAMES

    spec = importlib.util.spec_from_file_location("qe_airflow", REPO_ROOT / "plugins" / "qe_airflow.py")
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    assert sorted(plugin.SOURCES) == sorted(SOURCE_NAMES)


def test_every_task_of_every_dag_mails_its_failure() -> None:
    """The failure notification (``QE_NOTIFY_EMAILS``) reaches every task, a new DAG's too."""
    from airflow.dag_processing.dagbag import DagBag
    from qe_airflow import mail_task_failure

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    silent = [
        f"{dag_id}.{task.task_id}"
        for dag_id, dag in bag.dags.items()
        for task in dag.tasks
        if mail_task_failure not in _callbacks(task.on_failure_callback)
    ]
    assert bag.dags and not silent, f"tasks that would fail without a mail: {silent}"


def _callbacks(value: object) -> list:
    """A task's callback setting as a list: Airflow takes one callable or a list of them."""
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]
