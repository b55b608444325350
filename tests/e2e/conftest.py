"""The browser test's fixtures: the real stack from ``make up`` on its own ports and folder, and Chromium.

The stack lives in ``.stack-e2e/`` (Postgres data, Airflow home, service logs, QE_HOME) so it never
meets a developer's ``make up``; ``make down`` runs in teardown whatever happened. Screenshots, and
on failure the services' logs, go to ``tests/e2e/artifacts/`` (gitignored; CI keeps the folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "tests" / "e2e" / "artifacts"
STACK_DIR = REPO_ROOT / ".stack-e2e"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Flags for a headless Chromium on a machine without network or display (see the README).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)


@dataclass(frozen=True)
class Stack:
    """A running stack: where to reach it, how to log in, and its QE_HOME."""

    url: str
    user: str
    password: str
    qe_home: Path
    env: dict[str, str]

    def api_token(self) -> str:
        """A JWT from the api-server's own login endpoint, for reading run states over the REST API."""
        request = urllib.request.Request(
            f"{self.url}/auth/token",
            method="POST",
            data=json.dumps({"username": self.user, "password": self.password}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)["access_token"]

    def api(self, method: str, path: str, token: str, body: dict | None = None) -> dict:
        """One call of the api-server's REST API with a token from :meth:`api_token`; its JSON answer."""
        request = urllib.request.Request(
            f"{self.url}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)


def _make(target: str, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", target],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _keep_logs(name: str, folder: Path = STACK_DIR) -> None:
    logs = folder / "logs"
    if logs.is_dir():
        shutil.copytree(logs, ARTIFACTS / name, dirs_exist_ok=True)


@contextlib.contextmanager
def running_stack(folder: Path, ports: dict[str, int], extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """``make up`` in ``folder`` on ``ports`` (``QE_STACK_*_PORT`` names), ``make down`` afterwards, always."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "QE_STACK_DIR": str(folder),
        **{name: str(port) for name, port in ports.items()},
        "QE_STACK_USER": "admin",
        "QE_STACK_PASSWORD": "e2e-password",
        "QE_HOME": str(folder / "qe_home"),
        "QE_BACKEND": "local",
        **(extra_env or {}),
    }
    _make("down", env, timeout=120)  # a stack a killed run left behind
    shutil.rmtree(folder, ignore_errors=True)
    started = _make("up", env, timeout=420)
    try:
        if started.returncode != 0:
            _keep_logs(f"{folder.name}-logs", folder)
            pytest.fail(f"make up failed:\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}")
        yield Stack(
            url=f"http://127.0.0.1:{ports['QE_STACK_API_PORT']}",
            user="admin",
            password="e2e-password",
            qe_home=folder / "qe_home",
            env=env,
        )
    finally:
        stopped = _make("down", env, timeout=120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """``make up`` with the test's own ports and folder; ``make down`` afterwards, always."""
    ports = {
        "QE_STACK_PG_PORT": 55632,
        "QE_STACK_API_PORT": 28380,
        "QE_STACK_FEED_PORT": 28865,
        "QE_STACK_BRIDGE_PORT": 28866,
        "QE_STACK_MLFLOW_PORT": 28867,
    }
    with running_stack(STACK_DIR, ports) as running:
        yield running


@pytest.fixture(scope="module")
def scale_stack() -> Iterator[Stack]:
    """``make up`` in scale mode: Redis, CeleryExecutor and two workers, in its own folder and ports.

    A worker that dies is noticed after 30 s without a task heartbeat (Airflow's default is 300 s),
    so a test that kills one sees its tasks retried within its timeout. Module-scoped: it is down
    again before the next module's stack starts.
    """
    ports = {
        "QE_STACK_PG_PORT": 55642,
        "QE_STACK_API_PORT": 28390,
        "QE_STACK_FEED_PORT": 28875,
        "QE_STACK_BRIDGE_PORT": 28876,
        "QE_STACK_MLFLOW_PORT": 28877,
        "QE_STACK_REDIS_PORT": 56389,
    }
    settings = {
        "QE_STACK_WORKERS": "2",
        "QE_STACK_WORKER_CONCURRENCY": "2",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    }
    with running_stack(REPO_ROOT / ".stack-e2e-celery", ports, settings) as running:
        yield running


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[object]:
    """Debian's headless Chromium through its chromedriver (no driver download); a screenshot on failure."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for program in (CHROMIUM, CHROMEDRIVER):
        assert os.access(program, os.X_OK), (
            f"{program} missing: `make browser-deps` installs chromium and chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="qe-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(2)
    yield driver
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        driver.save_screenshot(str(ARTIFACTS / f"{request.node.name}-failure.png"))
        _keep_logs("stack-logs")
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Keep each phase's report on the item, so the browser fixture knows whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
