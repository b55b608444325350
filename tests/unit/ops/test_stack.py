"""ops/stack.py (make up / make down): the same services and settings as the compose file, checked input."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("qe_stack", REPO_ROOT / "ops" / "stack.py")
stack = importlib.util.module_from_spec(_spec)
sys.modules["qe_stack"] = stack  # dataclasses look their module up there
_spec.loader.exec_module(stack)
#: make up's process name -> the compose service that runs the same command.
COMPOSE_NAME = {
    "api-server": "airflow-apiserver",
    "scheduler": "airflow-scheduler",
    "dag-processor": "airflow-dag-processor",
    "triggerer": "airflow-triggerer",
    "feed": "feed",
    "bridge": "bridge",
}


@pytest.fixture
def config(tmp_path: Path) -> object:
    return stack.StackConfig.from_env({"QE_STACK_DIR": str(tmp_path / "stack"), "QE_HOME": str(tmp_path / "home")})


def test_make_up_runs_the_compose_stacks_long_lived_services(config: object) -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text())["services"]
    default = {name for name, service in compose.items() if "profiles" not in service}
    assert set(COMPOSE_NAME) == set(stack.services(config))
    assert {COMPOSE_NAME[name] for name in stack.services(config)} | {"postgres", "airflow-init"} == default
    for name, command in stack.services(config).items():
        compose_command = compose[COMPOSE_NAME[name]]["command"]
        words = compose_command.split() if isinstance(compose_command, str) else compose_command
        assert words[0] in command, f"{name} runs {command}, compose runs {words}"


def test_services_share_the_settings_compose_gives_airflow(config: object) -> None:
    env = stack.service_env(config)
    compose_env = yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text())["x-airflow-env"]
    assert env["AIRFLOW__CORE__AUTH_MANAGER"] == compose_env["AIRFLOW__CORE__AUTH_MANAGER"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow@127.0.0.1:55432/")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:28080/execution/"
    assert env["QE_BRIDGE_PORT"] == "8766" and env["QE_FEED_URL"] == "ws://127.0.0.1:8765"
    # the JWT secret is generated once, kept private, and the same on every start
    secret_file = Path(config.folder) / "jwt_secret"
    assert len(env["AIRFLOW__API_AUTH__JWT_SECRET"]) >= 64 and secret_file.stat().st_mode & 0o077 == 0
    assert stack.service_env(config)["AIRFLOW__API_AUTH__JWT_SECRET"] == env["AIRFLOW__API_AUTH__JWT_SECRET"]


@pytest.mark.parametrize("value", ["0", "70000", "http", ""])
def test_a_bad_port_is_refused_with_its_name(value: str) -> None:
    with pytest.raises(SystemExit, match=f"QE_STACK_API_PORT={value!r}"):
        stack.StackConfig.from_env({"QE_STACK_API_PORT": value})


def test_down_with_nothing_running_is_a_no_op(config: object, capsys: pytest.CaptureFixture) -> None:
    stack.down(config)
    stack.down(config)
    assert capsys.readouterr().out.count("The quant-engine stack is down.") == 2


def test_airflow_logs_in_with_a_password_in_no_url_or_environment(config: object) -> None:
    env = stack.service_env(config)
    url = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert ":" not in url.split("//", 1)[1].split("@", 1)[0]  # a role, no password
    pgpass = Path(env["PGPASSFILE"])
    host, port, database, role, password = pgpass.read_text().strip().split(":")
    assert (host, port, database, role) == ("127.0.0.1", "55432", "airflow", stack.AIRFLOW_DB_ROLE)
    assert len(password) >= 48 and password not in "".join(env.values())
    for secret in (pgpass, config.airflow_db_password_file):
        assert secret.stat().st_mode & 0o777 == 0o600
    assert stack.service_env(config)["PGPASSFILE"] == str(pgpass) and pgpass.read_text().endswith(password + "\n")


def test_a_cluster_initialised_without_passwords_is_refused_with_the_way_out(config: object) -> None:
    data = config.pg_data
    data.mkdir(parents=True)
    (data / "pg_hba.conf").write_text("# TYPE DATABASE USER ADDRESS METHOD\nhost all all 127.0.0.1/32 trust\n")
    with pytest.raises(SystemExit, match="initialised without passwords.*make down"):
        stack._refuse_password_free_cluster(config)
    (data / "pg_hba.conf").write_text("host all all 127.0.0.1/32 scram-sha-256\n")
    with pytest.raises(SystemExit, match="initialised without passwords"):  # and no superuser password kept
        stack._refuse_password_free_cluster(config)
    stack._secret(config.pg_superuser_password_file)
    stack._refuse_password_free_cluster(config)


def test_the_ui_password_file_is_private_from_its_first_byte(config: object) -> None:
    previous = os.umask(0)
    try:
        stack.write_passwords(config)
    finally:
        os.umask(previous)
    path = Path(config.folder) / "passwords.json"
    assert path.stat().st_mode & 0o777 == 0o600 and json.loads(path.read_text()) == {config.user: config.password}
