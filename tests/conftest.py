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


#: Where the stack tests live (``make up`` stacks, Celery workers, the browser): one xdist worker runs them.
STACK_TESTS = "tests/e2e/"


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Two workers (`make test`: ``-n 2``): every stack test on one of them, in order; the rest spread.

    The stack tests spend most of their time waiting for Airflow, so the other worker gets through
    the unit and integration tests meanwhile. Their stacks (``make up`` in ``.stack-e2e*``) are
    shared by tests and must start one at a time, so they form one unit of work. (xdist's own
    ``--dist loadgroup`` cannot do this under pytest 9: it renames node ids through an attribute
    pytest 9 no longer reads.)
    """
    from xdist.scheduler import LoadScopeScheduling

    class StackTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return STACK_TESTS if nodeid.startswith(STACK_TESTS) else nodeid

    return StackTestsTogether(config, log)
