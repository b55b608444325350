"""docker-compose.yaml and the Dockerfile are what a user with Docker would run: consistent, pinned, secret-free.

No Docker engine runs here, so the files are checked as data: services, ports, healthchecks,
environment, volumes and profiles agree with each other, with the repository and with the pins.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parents[3]
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
LONG_LIVED = (*AIRFLOW_SERVICES, "postgres", "feed", "bridge", "mlflow")
#: Names of variables that hold a secret (not PASSWORDS_FILE, which names where one is kept).
SECRET_NAMES = re.compile(r"(SECRET|PASSWORD|TOKENS?|_KEY)$", re.IGNORECASE)
#: ``${NAME:?message}``: compose refuses to start while NAME is unset.
REQUIRED_VARIABLE = re.compile(r"\$\{[A-Z_]+:\?[^}]*\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _pin(name: str) -> str:
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        package, _, version = line.partition("==")
        if package.strip().lower() == name:
            return version.strip()
    raise AssertionError(f"{name} is not pinned in requirements.txt")


def _container_ports(service: dict[str, Any]) -> set[int]:
    ports = {int(str(p).split(":")[-1]) for p in service.get("ports", [])}
    return ports | {int(p) for p in service.get("expose", [])}


def _healthcheck_text(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else test


def test_default_stack_has_every_service_with_a_healthcheck_and_restart_policy(services: dict) -> None:
    for name in LONG_LIVED:
        assert name in services, f"service {name} missing"
        assert "profiles" not in services[name], f"{name} must start without a profile"
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
        assert services[name]["restart"] == "unless-stopped", f"{name} is not restarted"
    assert services["airflow-init"]["restart"] == "no"
    assert "airflow db migrate" in services["airflow-init"]["command"][-1]


def test_healthchecks_probe_the_ports_the_services_expose(services: dict) -> None:
    expected = {"airflow-apiserver": 8080, "feed": 8765, "bridge": 8766, "mlflow": 5500, "moto": 5000, "redis": 6379}
    for name, port in expected.items():
        assert port in _container_ports(services[name]), f"{name} does not expose {port}"
        check = _healthcheck_text(services[name])
        assert f":{port}" in check or f"-p {port}" in check, f"{name}'s healthcheck does not probe {port}: {check}"
    for name, service in services.items():
        for port in _container_ports(service):
            assert str(port) in _healthcheck_text(service) or name.startswith("airflow-worker"), (
                f"{name} exposes {port} but its healthcheck never looks there"
            )


def test_every_airflow_process_shares_one_jwt_secret_and_one_database(services: dict) -> None:
    quant_engine_image = services["airflow-apiserver"]["image"]
    users = {n: s for n, s in services.items() if s.get("image") == quant_engine_image}
    assert set(AIRFLOW_SERVICES) | {"airflow-worker-1", "airflow-worker-2", "bridge", "feed"} <= set(users)
    for key in (
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
        "QE_HOME",
    ):
        values = {name: service["environment"][key] for name, service in users.items()}
        assert len(set(values.values())) == 1, f"{key} differs between services: {values}"
    assert "@postgres:5432/airflow" in users["airflow-scheduler"]["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert (
        users["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
        == "http://airflow-apiserver:8080/execution/"
    )
    assert services["bridge"]["environment"]["QE_FEED_URL"] == "ws://feed:8765"
    assert services["bridge"]["environment"]["QE_BRIDGE_PORT"] == "8766"
    feed_tickers = services["feed"]["command"][services["feed"]["command"].index("--tickers") + 1]
    assert services["bridge"]["environment"]["QE_BRIDGE_TICKERS"] == feed_tickers


def test_no_secret_has_a_value_in_the_file(services: dict) -> None:
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAMES.search(key) and not key.startswith("AWS_"):
                assert REQUIRED_VARIABLE.fullmatch(str(value)) or re.fullmatch(r"\$\{[A-Z_]+:-\}", str(value)), (
                    f"{name}: {key} must come from the environment without a default, got {value!r}"
                )
            if key.startswith("AWS_") and SECRET_NAMES.search(key):
                assert str(value).startswith("${") and str(value).endswith(":-}"), f"{name}: {key} has a value"
            if "postgresql" in str(value):
                assert "${POSTGRES_PASSWORD:?" in str(value), f"{name}: {key} embeds a database password"


def test_bind_mounts_exist_in_the_repository_and_named_volumes_are_declared(compose: dict, services: dict) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO_ROOT / source).is_dir(), f"{name} mounts {source}, which is not in the repository"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"
    mounts = {v.split(":")[1] for v in services["airflow-scheduler"]["volumes"]}
    assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/qe_home"} <= mounts
    assert services["airflow-scheduler"]["environment"]["QE_HOME"] == "/opt/airflow/qe_home"


def test_images_are_pinned_and_match_the_requirements(services: dict) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name} has no image"
        repository, _, tag = image.rpartition(":")
        assert repository and re.search(r"\d", tag) and tag != "latest", f"{name}: image {image} is not pinned"
    assert services["moto"]["image"] == f"motoserver/moto:{_pin('moto')}"


def test_scale_profile_runs_celery_workers_on_redis(services: dict) -> None:
    workers = [n for n, s in services.items() if "scale" in s.get("profiles", []) and "worker" in n]
    assert len(workers) >= 2
    for name in workers:
        assert services[name]["command"] == "celery worker"
        assert services[name]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert services[name]["environment"]["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["redis"]["profiles"] == ["scale"]
    assert services["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "${QE_EXECUTOR:-LocalExecutor}"


def test_aws_profile_runs_moto_and_creates_the_bucket(services: dict) -> None:
    assert services["moto"]["profiles"] == ["aws"] and services["moto-init"]["profiles"] == ["aws"]
    init = services["moto-init"]
    assert init["environment"]["AWS_ENDPOINT_URL"] == "http://moto:5000"
    assert "create_bucket" in init["command"][-1]
    assert init["depends_on"]["moto"]["condition"] == "service_healthy"
    for name in AIRFLOW_SERVICES:
        environment = services[name]["environment"]
        assert environment["QE_BACKEND"] == "${QE_BACKEND:-local}"
        assert environment["AWS_ENDPOINT_URL"] == "${AWS_ENDPOINT_URL:-}"


#: What the aws backend, SageMaker and the bridge's endpoint model read, passed through from the host.
AWS_SETTINGS = (
    "QE_BACKEND",
    "QE_S3_BUCKET",
    "QE_SAGEMAKER_ROLE_ARN",
    "QE_SAGEMAKER_FEATURE_STORE",
    "QE_PROCESSING_BATCH",
    "QE_SAGEMAKER_IMAGE_URI",
    "QE_AWS_CONN_ID",
    "QE_BRIDGE_MODEL",
    "QE_SAGEMAKER_ENDPOINT",
    "QE_ENDPOINT_INSTANCE_TYPE",
    "QE_ENDPOINT_IMAGE_URI",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)


def documented_aws_settings() -> list[str]:
    """The variables in docs/aws.md's "Settings for AWS" table, which says compose passes them all."""
    text = (REPO_ROOT / "docs" / "aws.md").read_text().split("## Settings for AWS", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in text.splitlines() if line.startswith("| `")]
    return sorted({name for cell in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)})


@pytest.mark.parametrize("name", [*AIRFLOW_SERVICES, "bridge"])
def test_every_documented_aws_setting_is_passed_through(services: dict, name: str) -> None:
    documented = documented_aws_settings()
    assert len(documented) > 20 and "QE_ENDPOINT_WAIT_TIMEOUT_S" in documented  # the table was read
    missing = [key for key in documented if key not in services[name]["environment"]]
    assert missing == [], f"{name} does not pass {missing} through, though docs/aws.md says compose does"


@pytest.mark.parametrize("name", [*AIRFLOW_SERVICES, "bridge"])
def test_every_aws_setting_reaches_airflow_and_the_bridge_from_the_host(services: dict, name: str) -> None:
    environment = services[name]["environment"]
    for key in AWS_SETTINGS:
        assert key in environment, f"{name} does not pass {key} through"
        assert re.fullmatch(rf"\$\{{{key}:-[^}}]*\}}", str(environment[key])), (
            f"{name}: {key} must come from the host (${{{key}:-...}}), got {environment[key]!r}"
        )
    assert environment["AWS_SESSION_TOKEN"] == "${AWS_SESSION_TOKEN:-}"  # temporary credentials, no default
    assert environment["QE_AWS_CONN_ID"] == "${QE_AWS_CONN_ID:-aws_default}"


def test_sagemaker_waits_defer_to_a_triggerer_that_can_run_their_trigger(services: dict) -> None:
    """Deferral is on in every Airflow process unless the host says otherwise, and the image's
    triggerer has what the provider's ``SageMakerTrigger`` needs: aiobotocore, accepting the pinned botocore."""
    for name in (*AIRFLOW_SERVICES, "airflow-worker-1", "airflow-worker-2"):
        assert services[name]["environment"]["AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"] == (
            "${AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE:-True}"
        ), f"{name} does not defer by default"
    assert importlib.metadata.version("aiobotocore") == _pin("aiobotocore")
    (accepted,) = [r for r in importlib.metadata.requires("aiobotocore") if Requirement(r).name == "botocore"]
    assert Requirement(accepted).specifier.contains(_pin("botocore")), f"aiobotocore wants {accepted}"


def test_dockerfile_base_matches_the_airflow_pin_and_python_311() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert base == f"apache/airflow:{_pin('apache-airflow')}-python3.11"
    assert re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)[-1] == "airflow"
    assert "-r /opt/airflow/quant-engine/requirements.txt" in text
    assert "COPY --chown=airflow:root include" in text and "/opt/airflow/quant-engine" in text
    for name in re.findall(r"\b([A-Za-z_][A-Za-z0-9_]*)=", text):
        assert not SECRET_NAMES.search(name), f"the Dockerfile sets {name}: secrets come at run time"


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_image() -> None:
    ignored = set((REPO_ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".airflow", ".stack*", "var", "tests"} <= ignored
    assert "README.md" not in ignored  # pyproject.toml names it as the package's readme


def test_only_the_init_job_and_the_api_server_mount_the_ui_passwords(services: dict) -> None:
    mounting = {
        name: mount
        for name, service in services.items()
        for mount in service.get("volumes", [])
        if isinstance(mount, str) and mount.startswith("airflow-auth:")
    }
    assert mounting == {
        "airflow-init": "airflow-auth:/opt/airflow/auth",
        "airflow-apiserver": "airflow-auth:/opt/airflow/auth:ro",
    }
    script = "\n".join(services["airflow-init"]["command"])
    assert script.index("umask 077") < script.index("passwords.json")
