"""Suite-wide set-up: a project-local Airflow home and a throw-away QE_HOME for every test.

`make test` exports the same Airflow variables; setting them here too lets a developer run
`pytest tests/...` directly from the venv.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("AIRFLOW_HOME", str(REPO_ROOT / ".airflow"))
# The DAGs and plugins under test are always this checkout's (as `make` sets them), even where the
# venv's plain-shell defaults (ops/shell_defaults.py) name another checkout sharing it.
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO_ROOT / "plugins")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
# Keep AWS SDK calls in tests away from any real account: moto intercepts, and these make sure a
# forgotten mock fails instead of reaching out with someone's credentials.
for _key, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}.items():
    os.environ[_key] = _value


@pytest.fixture(autouse=True)
def qe_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own empty QE_HOME, the local backend and no experiment tracking."""
    home = tmp_path_factory.mktemp("qe_home")
    monkeypatch.setenv("QE_HOME", str(home))
    monkeypatch.setenv("QE_BACKEND", "local")
    # MLflow tracking is off unless a test turns it on (tests/unit/tracking): importing MLflow and
    # creating its database take seconds, which every run in every test would pay.
    monkeypatch.setenv("QE_TRACKING", "0")
    return home


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep the stack tests (marked ``e2e``) on one xdist worker, one after the other.

    `make test` runs the suite on two workers (``-n 2 --dist loadgroup``): the stack tests spend most
    of their time waiting for Airflow, so the other worker gets through the rest meanwhile. Their
    stacks (``make up`` in ``.stack-e2e*``) are shared by tests and started one at a time, so all of
    them go to the same worker.
    """
    for item in items:
        if item.get_closest_marker("e2e") is not None:
            item.add_marker(pytest.mark.xdist_group("stack"))
