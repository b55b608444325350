"""A plain shell works: after ``make venv``, the venv's ``airflow``, ``quant-engine`` and ``python`` find
this checkout's DAGs, plugins, Airflow home and ``QE_HOME`` with nothing exported, as under ``make``.

The venv here is built as ``make venv`` leaves it, minus the installs: a fresh venv that sees the
project's installed packages and this checkout's library, the ``airflow`` and ``quant-engine``
scripts, and the ``.pth`` file written by the Makefile's own ``shell-defaults`` target. Commands then
run with only ``PATH`` and ``HOME`` set. Airflow itself runs against the session's throw-away,
migrated Airflow home (exported, which also checks that an exported value wins), so nothing is
written into the checkout's ``.airflow/`` or ``var/``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_IDS = {path.stem for path in (REPO_ROOT / "dags").glob("*.py")}
DEFAULTS = {
    "AIRFLOW_HOME": str(REPO_ROOT / ".airflow"),
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "QE_HOME": str(REPO_ROOT / "var"),
}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv as ``make venv`` leaves it, its plain-shell defaults written by ``make shell-defaults``."""
    venv = tmp_path_factory.mktemp("plain") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site_packages = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    # the installed packages, and this checkout's library first (what `pip install -e .` gives)
    (site_packages / "_installed.pth").write_text(f"{REPO_ROOT / 'include'}\n{sysconfig.get_path('purelib')}\n")
    for script in ("airflow", "quant-engine"):
        body = Path(sys.executable).with_name(script).read_text().split("\n", 1)[1]
        (venv / "bin" / script).write_text(f"#!{venv / 'bin' / 'python'}\n{body}")
        (venv / "bin" / script).chmod(0o755)
    # the dependencies are in: the stamp `make` leaves after installing them, so it installs nothing
    lock = (REPO_ROOT / "requirements.txt").read_bytes() + (REPO_ROOT / "pyproject.toml").read_bytes()
    (venv / f".deps-{hashlib.sha1(lock).hexdigest()[:16]}").touch()
    made = subprocess.run(
        ["make", "-s", "-C", str(REPO_ROOT), "shell-defaults", f"VENV={venv}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    assert (
        made.stdout.strip() == f"plain-shell defaults for this checkout: {site_packages / 'quant_engine_checkout.pth'}"
    )
    return venv


def plain_shell(venv: Path, home: Path, *command: str, **exported: str) -> subprocess.CompletedProcess:
    """``command`` in a shell that exports only PATH (the venv's bin first), HOME and ``exported``."""
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), **exported}
    result = subprocess.run(command, env=env, cwd=home, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result


def test_python_quant_engine_and_airflow_start_with_the_checkouts_defaults(venv: Path, tmp_path: Path) -> None:
    show = f"import json, os; print(json.dumps({{k: os.environ.get(k) for k in {sorted(DEFAULTS)!r}}}))"
    assert json.loads(plain_shell(venv, tmp_path, "python", "-c", show).stdout) == DEFAULTS
    home = "from quant_engine.config import get_settings; print(get_settings().home)"
    assert plain_shell(venv, tmp_path, "python", "-c", home).stdout.strip() == DEFAULTS["QE_HOME"]
    # an exported value wins over the default
    exported = plain_shell(venv, tmp_path, "python", "-c", home, QE_HOME=str(tmp_path / "elsewhere"))
    assert exported.stdout.strip() == str(tmp_path / "elsewhere")
    assert "usage: quant-engine" in plain_shell(venv, tmp_path, "quant-engine", "--help").stdout


def test_airflow_finds_the_projects_dags_and_plugins(venv: Path, airflow_home: Path, tmp_path: Path) -> None:
    def airflow(*argv: str) -> str:
        return plain_shell(venv, tmp_path, "airflow", *argv, AIRFLOW_HOME=str(airflow_home)).stdout

    assert airflow("config", "get-value", "core", "dags_folder").strip() == DEFAULTS["AIRFLOW__CORE__DAGS_FOLDER"]
    assert airflow("config", "get-value", "core", "plugins_folder").strip() == DEFAULTS["AIRFLOW__CORE__PLUGINS_FOLDER"]
    assert airflow("config", "get-value", "core", "load_examples").strip() == "False"
    listed = json.loads(airflow("dags", "list", "--local", "-o", "json").strip().splitlines()[-1])
    assert {dag["dag_id"] for dag in listed} == DAG_IDS
    assert all(dag["fileloc"].startswith(DEFAULTS["AIRFLOW__CORE__DAGS_FOLDER"]) for dag in listed)
    assert "No data found" in airflow("dags", "list-import-errors", "--local")
