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
    "mlflow": "mlflow",
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


def test_sagemaker_waits_defer_to_the_triggerer_unless_the_host_says_otherwise(
    config: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    compose_env = yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text())["x-airflow-env"]
    assert compose_env["AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"].endswith(":-True}")
    monkeypatch.delenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", raising=False)
    assert stack.service_env(config)["AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"] == "True"
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "False")
    assert stack.service_env(config)["AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"] == "False"


def test_the_mlflow_ui_serves_the_tracking_database_the_engine_writes(config: object) -> None:
    from quant_engine.config import Settings

    command = stack.services(config)["mlflow"]
    option = dict(zip(command[2::2], command[3::2], strict=False))
    assert command[1] == "server"
    assert option["--backend-store-uri"] == Settings(home=config.qe_home).tracking_store_uri
    assert option["--default-artifact-root"] == (config.qe_home / "mlflow" / "artifacts").as_uri()
    assert option["--host"] == "127.0.0.1" and option["--port"] == "28500"
    # the Quant Engine page links runs to this UI, and compose serves the same database in its QE_HOME
    assert stack.service_env(config)["QE_TRACKING_UI_URL"] == "http://127.0.0.1:28500"
    compose = _compose()["mlflow"]
    compose_option = dict(zip(compose["command"][1::2], compose["command"][2::2], strict=False))
    home = compose["environment"]["QE_HOME"]
    assert compose_option["--backend-store-uri"] == Settings(home=Path(home)).tracking_store_uri
    assert compose["environment"]["QE_TRACKING_UI_URL"].endswith(f"localhost:{compose_option['--port']}}}")


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


@pytest.fixture
def scale_config(tmp_path: Path) -> object:
    return stack.StackConfig.from_env(
        {"QE_STACK_DIR": str(tmp_path / "stack"), "QE_HOME": str(tmp_path / "home"), "QE_STACK_WORKERS": "2"}
    )


def _compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text())["services"]


def test_scale_mode_runs_the_compose_scale_profile(scale_config: object) -> None:
    compose = _compose()
    profile = {name for name, service in compose.items() if "scale" in service.get("profiles", [])}
    commands = stack.services(scale_config)
    scaled = {name for name in commands if name not in COMPOSE_NAME}
    # make up SCALE=1's default of two workers is the profile's two
    assert {"redis" if name == "redis" else f"airflow-{name}" for name in scaled} == profile
    assert list(commands)[0] == "redis"  # the broker first, so the executor finds it
    assert commands["redis"][-1] == str(scale_config.redis_conf)
    hostnames = []
    for name in scale_config.worker_names:
        command = commands[name]
        compose_words = compose[f"airflow-{name}"]["command"].split()
        assert command[1 : 1 + len(compose_words)] == compose_words, f"{name} runs {command}, compose {compose_words}"
        hostnames.append(command[command.index("--celery-hostname") + 1])
        assert command[command.index("--concurrency") + 1] == "2"
        assert command[command.index("--pid") + 1].endswith(f"/run/celery/{name}.pid")
    assert hostnames == ["worker-1@%h", "worker-2@%h"]
    assert set(stack.services(stack.StackConfig.from_env({"QE_STACK_DIR": "/x"}))) == set(COMPOSE_NAME)


def test_scale_mode_shares_celery_settings_like_compose(scale_config: object) -> None:
    env = stack.service_env(scale_config)
    compose_env = yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text())["x-airflow-env"]
    worker_env = _compose()["airflow-worker-1"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == worker_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    password = stack._secret(scale_config.redis_password_file)
    assert env["AIRFLOW__CELERY__BROKER_URL"] == f"redis://:{password}@127.0.0.1:56379/0"
    assert compose_env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    # results in the metadata DB, with the same driver as compose and the password from pgpass
    scheme = "db+postgresql+psycopg2://"
    assert compose_env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith(scheme)
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == f"{scheme}airflow@127.0.0.1:55432/airflow"
    assert env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "qe_airflow.task_hostname"
    assert stack.worker_env(env, "worker-2")["QE_STACK_WORKER_NAME"] == "worker-2"
    assert "QE_STACK_WORKER_NAME" not in env
    assert len(password) >= 48 and scale_config.redis_password_file.stat().st_mode & 0o777 == 0o600


def test_the_redis_config_binds_localhost_with_the_password_and_is_private(scale_config: object) -> None:
    path = stack.write_redis_conf(scale_config)
    settings = dict(line.split(" ", 1) for line in path.read_text().splitlines())
    assert settings["bind"] == "127.0.0.1" and settings["port"] == "56379" and settings["protected-mode"] == "yes"
    assert settings["requirepass"] == stack._secret(scale_config.redis_password_file)
    assert path.stat().st_mode & 0o777 == 0o600
    assert settings["requirepass"] not in " ".join(stack.services(scale_config)["redis"])  # not in `ps`


def test_redis_health_asks_for_the_password(scale_config: object, tmp_path: Path) -> None:
    import socket
    import subprocess
    import time

    server = stack._redis_server()
    assert Path(server).is_absolute(), "redis-server is missing: `make stack-deps` (run by `make test`) installs it"
    with socket.socket() as probe:  # a free port for this test's own server
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    config = stack.StackConfig.from_env(
        {"QE_STACK_DIR": str(tmp_path / "s"), "QE_STACK_WORKERS": "1", "QE_STACK_REDIS_PORT": str(free_port)}
    )
    process = subprocess.Popen([server, str(stack.write_redis_conf(config))], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not (healthy := stack._redis_healthy(config))[0] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert healthy == (True, "PONG")
        config.redis_password_file.write_text("not-the-password")
        ok, why = stack._redis_healthy(config)
        assert not ok and ("password" in why.lower() or "auth" in why.lower()), why
    finally:
        process.terminate()
        process.wait(10)


def test_down_stops_a_scaled_stack_whatever_the_worker_count_says_now(config: object) -> None:
    run = config.folder / "run"
    run.mkdir(parents=True)
    for name in ("redis", "worker-2", "worker-1", "scheduler"):
        (run / f"{name}.pid").write_text("0\n")  # no live process: down only forgets them
    order = stack.stop_order(config)
    assert order[:2] == ["worker-1", "worker-2"] and order[-1] == "redis"
    assert order.index("scheduler") < order.index("api-server")
    stack.down(config)
    assert not list(run.glob("*.pid"))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("QE_STACK_WORKERS", "-1"),
        ("QE_STACK_WORKERS", "two"),
        ("QE_STACK_WORKERS", "17"),
        ("QE_STACK_WORKER_CONCURRENCY", "0"),
    ],
)
def test_a_bad_worker_count_is_refused_with_its_name(name: str, value: str) -> None:
    with pytest.raises(SystemExit, match=f"{name}={value!r}"):
        stack.StackConfig.from_env({name: value})


def test_task_hostname_names_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.syspath_prepend(str(REPO_ROOT / "plugins"))
    from qe_airflow import task_hostname

    monkeypatch.delenv("QE_STACK_WORKER_NAME", raising=False)
    assert task_hostname() == socket.getfqdn()
    monkeypatch.setenv("QE_STACK_WORKER_NAME", "worker-7")
    assert task_hostname() == "worker-7"
