"""Start and stop the native stack behind ``make up`` / ``make down``: the compose services without Docker.

Postgres (the Airflow metadata database), ``airflow db migrate``, the api-server, scheduler
(LocalExecutor), dag-processor and triggerer, the replay feed, the bridge and the MLflow UI (``mlflow
server`` on the engine's embedded tracking database, ``$QE_HOME/mlflow/mlflow.db``) run as background
processes of this machine. Everything lives under one folder (``QE_STACK_DIR``, default ``.stack/``):
the Postgres data, the Airflow home, one log and one pid file per service, the generated secrets.

Postgres asks every login for a password (``scram-sha-256``, also on 127.0.0.1): its superuser
``postgres`` has a generated one, kept beside the data; Airflow logs in as ``airflow``, a role that
owns the ``airflow`` database and nothing else (no superuser, no CREATEDB, no CREATEROLE), with a
generated password of its own that libpq reads from ``pgpass`` (``PGPASSFILE``), so it is in no
URL or environment. Every secret file is created 0600 (private from its first byte, never
``chmod``-ed after writing) and written atomically.
``up`` waits for every service to be healthy and stops on the first one that is not, showing its log;
``down`` stops what the pid files name and is safe to repeat. Each service runs in its own process
group, so stopping it also stops the task processes it started.

Settings (environment): ``QE_STACK_DIR``, ``QE_STACK_PG_PORT`` (55432), ``QE_STACK_API_PORT`` (28080),
``QE_STACK_FEED_PORT`` (8765), ``QE_STACK_BRIDGE_PORT`` (8766), ``QE_STACK_MLFLOW_PORT`` (28500, the
MLflow UI), ``QE_STACK_USER`` / ``QE_STACK_PASSWORD`` (admin / admin), ``QE_STACK_TIMEOUT_S`` (240,
per service), ``QE_STACK_FEED_START`` (2024-01-02, first day the feed replays), ``QE_STACK_FEED_SOURCE``
(``synthetic``, or ``store``: the bars ingestion stored, as ``make up DATA=FILE`` sets after its
quickstart), ``QE_STACK_TICKERS`` (SYN00..SYN04, replayed by the feed and followed by the bridge).
``QE_HOME`` is handed to every service. The bridge runs before the registry has a champion (its
health says ``waiting_for_model``) and picks the first promoted one up by itself. As in compose, the
provider operators' waits (the SageMaker jobs) are deferred to the triggerer:
``AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE`` (``True`` unless set).

Scale mode (``QE_STACK_WORKERS=N``, N >= 1; ``make up SCALE=1`` means 2): the compose file's ``scale``
profile natively. Debian's ``redis-server`` is the Celery broker on ``QE_STACK_REDIS_PORT`` (56379),
bound to 127.0.0.1 and asking for a generated password (its config file is 0600); every Airflow
process runs the CeleryExecutor, with Celery's results in the metadata database; N ``airflow celery
worker`` processes named ``worker-1@<host>`` .. ``worker-N@<host>`` each run
``QE_STACK_WORKER_CONCURRENCY`` (2) tasks at a time. A task instance's ``hostname`` is its worker's
name (``qe_airflow.task_hostname``), so a run shows which worker ran what. ``make down`` stops the
workers and Redis whatever ``QE_STACK_WORKERS`` says then.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from quant_engine.storage.atomic import write_bytes_atomic

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
POSTGRES_OS_USER = "postgres"  # Postgres refuses to run as root; Debian's package creates this user
PG_SUPERUSER = "postgres"
#: The role Airflow logs in as: it owns the airflow database, and may do nothing else.
AIRFLOW_DB_ROLE = "airflow"


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and which ports it listens on, read once from the environment."""

    folder: Path
    pg_port: int
    api_port: int
    feed_port: int
    bridge_port: int
    user: str
    password: str
    timeout_s: float
    qe_home: Path
    feed_start: str
    tickers: str
    workers: int = 0
    feed_source: str = "synthetic"
    worker_concurrency: int = 2
    redis_port: int = 56379
    mlflow_port: int = 28500

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> StackConfig:
        env = dict(os.environ if env is None else env)

        def port(name: str, default: int) -> int:
            raw = env.get(name, str(default))
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise SystemExit(f"{name}={raw!r} is not a TCP port (1-65535)")
            return int(raw)

        def count(name: str, default: int, low: int, high: int) -> int:
            raw = env.get(name, str(default)).strip()
            if not raw.isdigit() or not low <= int(raw) <= high:
                raise SystemExit(f"{name}={raw!r} is not a whole number from {low} to {high}")
            return int(raw)

        return cls(
            folder=Path(env.get("QE_STACK_DIR", REPO_ROOT / ".stack")).resolve(),
            pg_port=port("QE_STACK_PG_PORT", 55432),
            api_port=port("QE_STACK_API_PORT", 28080),
            feed_port=port("QE_STACK_FEED_PORT", 8765),
            bridge_port=port("QE_STACK_BRIDGE_PORT", 8766),
            user=env.get("QE_STACK_USER", "admin"),
            password=env.get("QE_STACK_PASSWORD", "admin"),
            timeout_s=float(env.get("QE_STACK_TIMEOUT_S", "240")),
            qe_home=Path(env.get("QE_HOME", REPO_ROOT / "var")).resolve(),
            feed_start=env.get("QE_STACK_FEED_START", "2024-01-02"),
            tickers=env.get("QE_STACK_TICKERS", "SYN00,SYN01,SYN02,SYN03,SYN04"),
            workers=count("QE_STACK_WORKERS", 0, 0, 16),
            feed_source=feed_source(env.get("QE_STACK_FEED_SOURCE", "synthetic")),
            worker_concurrency=count("QE_STACK_WORKER_CONCURRENCY", 2, 1, 64),
            redis_port=port("QE_STACK_REDIS_PORT", 56379),
            mlflow_port=port("QE_STACK_MLFLOW_PORT", 28500),
        )

    @property
    def scale(self) -> bool:
        """Celery workers on Redis (the compose file's ``scale`` profile) instead of the LocalExecutor."""
        return self.workers > 0

    @property
    def worker_names(self) -> list[str]:
        return [f"worker-{i}" for i in range(1, self.workers + 1)]

    @property
    def redis_password_file(self) -> Path:
        return self.folder / "redis_password"

    @property
    def redis_conf(self) -> Path:
        """redis-server's config file: it holds the password, so it is 0600 like the other secrets."""
        return self.folder / "redis" / "redis.conf"

    @property
    def result_backend(self) -> str:
        """Celery's results in Airflow's metadata DB, logging in like Airflow (the password from ``pgpass``)."""
        return f"db+postgresql+psycopg2://{AIRFLOW_DB_ROLE}@127.0.0.1:{self.pg_port}/airflow"

    def broker_url(self) -> str:
        return f"redis://:{_secret(self.redis_password_file)}@127.0.0.1:{self.redis_port}/0"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def mlflow_dir(self) -> Path:
        """The engine's embedded MLflow store (``Settings.mlflow_dir``): the runs write it, the UI reads it."""
        return self.qe_home / "mlflow"

    @property
    def db_url(self) -> str:
        """Airflow's metadata DB, without the password: libpq reads it from :attr:`pgpass_file` (``PGPASSFILE``)."""
        return f"postgresql+psycopg2://{AIRFLOW_DB_ROLE}@127.0.0.1:{self.pg_port}/airflow"

    @property
    def pg_data(self) -> Path:
        """Postgres's data folder: in the stack folder, unless the ``postgres`` OS user could not reach it.

        As root, Postgres runs as ``postgres``, which needs to traverse every folder above its data
        (a checkout under ``/root`` is closed to it); then the data goes under ``/var/tmp``, named
        after the stack folder so ``down`` finds it again.
        """
        inside = self.folder / "postgres"
        if os.geteuid() != 0 or all(p.stat().st_mode & 0o001 for p in self.folder.parents if p.exists()):
            return inside
        digest = hashlib.sha1(str(self.folder).encode()).hexdigest()[:12]
        return Path("/var/tmp") / f"quant-engine-stack-{digest}" / "postgres"

    @property
    def pg_superuser_password_file(self) -> Path:
        """The superuser's password, beside the data: where ``initdb`` (as the ``postgres`` OS user) can read it."""
        return self.pg_data.parent / "pg_superuser_password"

    @property
    def airflow_db_password_file(self) -> Path:
        return self.folder / "airflow_db_password"

    @property
    def pgpass_file(self) -> Path:
        """libpq's password file for the ``airflow`` role (it ignores one that others could read)."""
        return self.folder / "pgpass"

    @property
    def airflow_home(self) -> Path:
        return self.folder / "airflow"

    def pid_file(self, name: str) -> Path:
        return self.folder / "run" / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.folder / "logs" / f"{name}.log"


def feed_source(raw: str) -> str:
    """``QE_STACK_FEED_SOURCE``: what the feed replays, the synthetic market or the stored bars."""
    if raw not in ("synthetic", "store"):
        raise SystemExit(f"QE_STACK_FEED_SOURCE={raw!r} is not a feed source; use synthetic or store")
    return raw


def _secret(path: Path) -> str:
    """A random secret generated on first use and kept (mode 0600 from the start) so restarts keep it."""
    if not path.exists():
        write_bytes_atomic(path, secrets.token_urlsafe(48).encode(), mode=0o600)
    return path.read_text().strip()


def _pgpass(config: StackConfig) -> Path:
    """Write libpq's password file for Airflow's role (0600 from the start), so the password is in no URL."""
    line = f"127.0.0.1:{config.pg_port}:airflow:{AIRFLOW_DB_ROLE}:{_secret(config.airflow_db_password_file)}\n"
    return write_bytes_atomic(config.pgpass_file, line.encode(), mode=0o600)


def service_env(config: StackConfig) -> dict[str, str]:
    """The environment every service gets: one metadata DB, one JWT secret, the same folders as make."""
    env = dict(os.environ)
    tokens = [t for t in env.get("QE_BRIDGE_TOKENS", "").split(",") if t.strip()]
    ui_token = env.get("QE_BRIDGE_UI_TOKEN") or (tokens[0] if tokens else _secret(config.folder / "bridge_ui_token"))
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            "QE_HOME": str(config.qe_home),
            "QE_BRIDGE_URL": f"http://127.0.0.1:{config.bridge_port}",
            "QE_FEED_URL": f"ws://127.0.0.1:{config.feed_port}",
            "QE_BRIDGE_HOST": "127.0.0.1",
            "QE_BRIDGE_TICKERS": env.get("QE_BRIDGE_TICKERS") or config.tickers,
            # the UI plugin's subscriber token for the bridge's GET /signals/latest
            "QE_BRIDGE_UI_TOKEN": ui_token,
            "QE_BRIDGE_TOKENS": env.get("QE_BRIDGE_TOKENS") or ui_token,
            "QE_BRIDGE_PORT": str(config.bridge_port),
            # the Quant Engine page links each run to its page in this stack's MLflow UI
            "QE_TRACKING_UI_URL": config.mlflow_url,
            "AIRFLOW_HOME": str(config.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": env.get("AIRFLOW__CORE__PARALLELISM", "4"),
            # as compose: a SageMaker wait frees its slot of the 4, the triggerer polls the job
            "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": env.get("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": config.db_url,
            "PGPASSFILE": str(_pgpass(config)),
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{config.user}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(config.folder / "passwords.json"),
            "AIRFLOW__API_AUTH__JWT_SECRET": _secret(config.folder / "jwt_secret"),
            "AIRFLOW__API__SECRET_KEY": _secret(config.folder / "api_secret_key"),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(config.api_port),
            "AIRFLOW__API__BASE_URL": config.api_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{config.api_url}/execution/",
            "AIRFLOW__API__EXPOSE_CONFIG": "False",
        }
    )
    if config.scale:
        env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CELERY__BROKER_URL": config.broker_url(),
                "AIRFLOW__CELERY__RESULT_BACKEND": config.result_backend,
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(config.worker_concurrency),
                # a task instance's hostname names its worker (QE_STACK_WORKER_NAME), not just the machine
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "qe_airflow.task_hostname",
            }
        )
    return env


def worker_env(env: dict[str, str], name: str) -> dict[str, str]:
    """A Celery worker's environment: the shared one and the worker's own name."""
    return {**env, "QE_STACK_WORKER_NAME": name}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running_pid(config: StackConfig, name: str) -> int | None:
    path = config.pid_file(name)
    if not path.exists():
        return None
    pid = int(path.read_text().strip() or 0)
    return pid if pid > 0 and _alive(pid) else None


def _http_ok(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300, response.read(4000).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        return False, str(exc)


def _fail(config: StackConfig, name: str, why: str) -> None:
    log = config.log_file(name)
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
    raise SystemExit(f"{name} is not healthy: {why}\n--- last lines of {log} ---\n{tail}")


def _as_postgres_user(command: list[str]) -> list[str]:
    """Postgres refuses root; as root run its tools as the ``postgres`` OS user."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", POSTGRES_OS_USER, "--", *command]


def _pg_tool(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None
    )
    if not found:
        raise SystemExit(f"{name} not found: install PostgreSQL (Debian: apt-get install postgresql)")
    return found


def start_postgres(config: StackConfig) -> None:
    """Initialise the data folder once (password auth), start the server, and give Airflow its own role and DB."""
    log = config.log_file("postgres")
    if not (config.pg_data / "PG_VERSION").exists():
        config.pg_data.mkdir(parents=True, exist_ok=True, mode=0o700)
        password_file = config.pg_superuser_password_file
        _secret(password_file)
        if os.geteuid() == 0:  # initdb runs as the postgres OS user: the data and the password are its
            shutil.chown(config.pg_data, POSTGRES_OS_USER, POSTGRES_OS_USER)
            shutil.chown(password_file, POSTGRES_OS_USER, POSTGRES_OS_USER)
        subprocess.run(
            _as_postgres_user(
                [
                    _pg_tool("initdb"),
                    "-D",
                    str(config.pg_data),
                    "-U",
                    PG_SUPERUSER,
                    "--auth=scram-sha-256",
                    f"--pwfile={password_file}",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
    else:
        _refuse_password_free_cluster(config)
    status = subprocess.run(
        _as_postgres_user([_pg_tool("pg_ctl"), "-D", str(config.pg_data), "status"]), capture_output=True, check=False
    )
    if status.returncode != 0:
        log.touch()
        if os.geteuid() == 0:
            shutil.chown(log, POSTGRES_OS_USER, POSTGRES_OS_USER)
        options = f"-p {config.pg_port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off"
        started = subprocess.run(
            _as_postgres_user(
                [
                    _pg_tool("pg_ctl"),
                    "-D",
                    str(config.pg_data),
                    "-o",
                    options,
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if started.returncode != 0:
            _fail(config, "postgres", started.stdout + started.stderr)
    _create_airflow_database(config)
    print(f"  postgres      127.0.0.1:{config.pg_port} (data {config.pg_data}, password auth)")


def _refuse_password_free_cluster(config: StackConfig) -> None:
    """A cluster an older ``make up`` initialised lets anyone in (``trust``): say how to start afresh."""
    rules = [
        line.split()
        for line in (config.pg_data / "pg_hba.conf").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if any("trust" in rule for rule in rules) or not config.pg_superuser_password_file.exists():
        raise SystemExit(
            f"the Postgres data in {config.pg_data} was initialised without passwords (trust auth) by "
            "an older `make up`; run `make down`, delete that folder and run `make up` again (the "
            "Airflow metadata in it is lost; the engine's own state in QE_HOME is not)"
        )


def _create_airflow_database(config: StackConfig) -> None:
    """The ``airflow`` role (login, no other power) with its password, owning the ``airflow`` database."""
    import psycopg2  # the metadata DB driver from requirements.txt
    from psycopg2 import sql

    role = sql.Identifier(AIRFLOW_DB_ROLE)
    connection = psycopg2.connect(
        host="127.0.0.1",
        port=config.pg_port,
        user=PG_SUPERUSER,
        dbname="postgres",
        password=_secret(config.pg_superuser_password_file),
    )
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (AIRFLOW_DB_ROLE,))
        verb = "ALTER" if cursor.fetchone() else "CREATE"
        cursor.execute(
            sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s").format(role),
            (_secret(config.airflow_db_password_file),),
        )
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = 'airflow'")
        if cursor.fetchone() is None:
            cursor.execute(sql.SQL("CREATE DATABASE airflow OWNER {}").format(role))
        else:
            cursor.execute(sql.SQL("ALTER DATABASE airflow OWNER TO {}").format(role))
    connection.close()


def _redis_server() -> str:
    """Debian's ``redis-server`` (``up`` refuses to start scale mode without it)."""
    debian = Path("/usr/bin/redis-server")
    return shutil.which("redis-server") or (str(debian) if debian.exists() else "redis-server")


def write_redis_conf(config: StackConfig) -> Path:
    """Redis on 127.0.0.1 only, with the generated password, no persistence; the file is 0600 from the start."""
    folder = config.redis_conf.parent
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = [
        f"port {config.redis_port}",
        "bind 127.0.0.1",
        "protected-mode yes",
        f"requirepass {_secret(config.redis_password_file)}",
        "daemonize no",
        'logfile ""',  # stdout: the service's log file
        'save ""',
        "appendonly no",
        f"dir {folder}",
    ]
    return write_bytes_atomic(config.redis_conf, ("\n".join(lines) + "\n").encode(), mode=0o600)


def _redis_healthy(config: StackConfig) -> tuple[bool, str]:
    import redis  # the Celery provider's broker client, pinned in requirements.txt

    client = redis.Redis(
        host="127.0.0.1", port=config.redis_port, password=_secret(config.redis_password_file), socket_timeout=3
    )
    try:
        return bool(client.ping()), "PONG"
    except redis.RedisError as exc:
        return False, str(exc)
    finally:
        client.close()


def _workers_healthy(config: StackConfig) -> tuple[bool, str]:
    """Every worker answers Celery's ping through the broker (``celery inspect ping``, without Airflow)."""
    from celery import Celery

    app = Celery(broker=config.broker_url())
    try:
        replies = app.control.ping(timeout=2.0)
    except Exception as exc:  # the broker not answering is "not yet", whatever kombu calls it
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        app.close()
    answered = {node.split("@", 1)[0] for reply in replies for node in reply}
    missing = [name for name in config.worker_names if name not in answered]
    return not missing, f"no ping answer yet from {', '.join(missing)}" if missing else "pong"


def migrate(config: StackConfig, env: dict[str, str]) -> None:
    log = config.log_file("db-migrate")
    with log.open("w") as handle:
        result = subprocess.run(
            [str(BIN / "airflow"), "db", "migrate"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=config.timeout_s * 2,
        )
    if result.returncode != 0:
        _fail(config, "db-migrate", f"airflow db migrate exited {result.returncode}")
    print("  airflow db    migrated")


def _quant_engine_command(*args: str) -> list[str]:
    return [str(BIN / "quant-engine"), *args]


def services(config: StackConfig) -> dict[str, list[str]]:
    """Each long-lived service and its command line, in start order.

    The feed replays ``QE_STACK_TICKERS`` of the synthetic market (or, with ``QE_STACK_FEED_SOURCE=store``,
    of the bars ingestion stored: ``make up DATA=FILE``) from ``QE_STACK_FEED_START`` at the
    feed's default speed; the bridge subscribes to the same tickers and reads its settings
    (``QE_FEED_URL``, ``QE_BRIDGE_*``) from :func:`service_env`.
    """
    airflow = str(BIN / "airflow")
    redis = {"redis": [_redis_server(), str(config.redis_conf)]} if config.scale else {}
    workers = {
        name: [
            airflow,
            "celery",
            "worker",
            "--celery-hostname",
            f"{name}@%h",
            "--concurrency",
            str(config.worker_concurrency),
            "--pid",
            str(config.folder / "run" / "celery" / f"{name}.pid"),
            "--skip-serve-logs",  # one machine, one log folder: the api-server reads the task logs itself
        ]
        for name in config.worker_names
    }
    return {
        **redis,
        "api-server": [airflow, "api-server", "--host", "127.0.0.1", "--port", str(config.api_port), "--workers", "1"],
        "scheduler": [airflow, "scheduler"],
        "dag-processor": [airflow, "dag-processor"],
        "triggerer": [airflow, "triggerer"],
        **workers,
        "feed": _quant_engine_command(
            "feed",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(config.feed_port),
            "--source",
            config.feed_source,
            "--tickers",
            config.tickers,
            "--start",
            config.feed_start,
        ),
        "bridge": _quant_engine_command("bridge", "run"),
        "mlflow": [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{config.mlflow_dir / 'mlflow.db'}",
            "--default-artifact-root",
            (config.mlflow_dir / "artifacts").as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(config.mlflow_port),
            "--workers",
            "1",
        ],
    }


def start_service(config: StackConfig, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen | None:
    """Start ``name`` unless its pid file names a live process; the new process, or None."""
    if _running_pid(config, name):
        return None
    with config.log_file(name).open("a") as log:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
    config.pid_file(name).write_text(f"{process.pid}\n")
    return process


def _airflow_components_healthy(config: StackConfig) -> tuple[bool, str]:
    ok, body = _http_ok(f"{config.api_url}/api/v2/monitor/health")
    if not ok:
        return False, body
    health = json.loads(body)
    unhealthy = [
        part
        for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
        if (health.get(part) or {}).get("status") != "healthy"
    ]
    return not unhealthy, f"not healthy yet: {', '.join(unhealthy)}" if unhealthy else "healthy"


def wait_healthy(config: StackConfig, started: dict[str, subprocess.Popen]) -> None:
    """Poll each service's health endpoint until it answers, or stop with that service's log.

    A service in ``started`` that exits meanwhile fails at once instead of at the timeout.
    """
    checks = {
        **({"redis": lambda: _redis_healthy(config)} if config.scale else {}),
        "api-server": lambda: _airflow_components_healthy(config),
        **({"celery-workers": lambda: _workers_healthy(config)} if config.scale else {}),
        "feed": lambda: _http_ok(f"http://127.0.0.1:{config.feed_port}/health"),
        "bridge": lambda: _http_ok(f"http://127.0.0.1:{config.bridge_port}/health"),
        "mlflow": lambda: _http_ok(f"{config.mlflow_url}/health"),
    }
    for name, check in checks.items():
        begun = time.monotonic()
        deadline = begun + config.timeout_s
        why = "no answer"
        while time.monotonic() < deadline:
            for process_name, process in started.items():
                if process.poll() is not None:
                    _fail(config, process_name, f"the process exited with status {process.returncode}")
            ok, why = check()
            if ok:
                print(f"  {name:<13} healthy after {time.monotonic() - begun:.0f} s")
                break
            time.sleep(1.0)
        else:
            _fail(config, name, why)


def write_passwords(config: StackConfig) -> None:
    """SimpleAuthManager reads user passwords from this JSON file (0600 from the start); the login is the configured
    one."""
    write_bytes_atomic(
        config.folder / "passwords.json", (json.dumps({config.user: config.password}) + "\n").encode(), mode=0o600
    )


def up(config: StackConfig) -> None:
    for sub in ("run", "logs"):
        (config.folder / sub).mkdir(parents=True, exist_ok=True)
    config.qe_home.mkdir(parents=True, exist_ok=True)
    config.mlflow_dir.mkdir(exist_ok=True)
    print(f"Starting the quant-engine stack in {config.folder}")
    for name in ("feed", "bridge", "mlflow"):
        command = services(config)[name]
        if not Path(command[0]).exists():
            raise SystemExit(f"{name}: {command[0]} is not installed; run `make venv` first")
    if config.scale and not Path(_redis_server()).is_absolute():
        raise SystemExit(
            f"QE_STACK_WORKERS={config.workers} needs redis-server as the Celery broker, and it is not "
            "installed: `make stack-deps` installs it (Debian: apt-get install redis-server)"
        )
    start_postgres(config)
    env = service_env(config)
    write_passwords(config)
    if config.scale:
        write_redis_conf(config)
        (config.folder / "run" / "celery").mkdir(exist_ok=True)
    migrate(config, env)
    started = {
        name: process
        for name, command in services(config).items()
        if (
            process := start_service(
                config, name, command, worker_env(env, name) if name in config.worker_names else env
            )
        )
        is not None
    }
    wait_healthy(config, started)
    print(f"  api-server    {config.api_url}  (Airflow UI; login {config.user} / {config.password})")
    print(f"  Quant Engine  {config.api_url}/quant-engine/  (also in the UI's navigation)")
    print(
        f"  bridge        http://127.0.0.1:{config.bridge_port}/health  ws://127.0.0.1:{config.bridge_port}"
        "  (signals once the registry has a champion: run spot_training)"
    )
    print(f"  feed          http://127.0.0.1:{config.feed_port}/health  ws://127.0.0.1:{config.feed_port}")
    print(f"  mlflow        {config.mlflow_url}  (experiment tracking UI on {config.mlflow_dir / 'mlflow.db'})")
    if config.scale:
        print(
            f"  celery        {config.workers} workers ({', '.join(config.worker_names)}) x "
            f"{config.worker_concurrency} tasks; broker redis 127.0.0.1:{config.redis_port} (password auth)"
        )
    print(f"  logs          {config.folder / 'logs'}   QE_HOME {config.qe_home}")
    print("Stop with `make down`.")


def stop_service(config: StackConfig, name: str, grace_s: float = 20.0) -> None:
    """SIGTERM the service's process group, SIGKILL what is left after ``grace_s``; forget the pid."""
    pid = _running_pid(config, name)
    if pid is not None:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        print(f"  stopped {name} (pid {pid})")
    config.pid_file(name).unlink(missing_ok=True)


def stop_order(config: StackConfig) -> list[str]:
    """What ``down`` stops, in order: the workers first, Redis last, whatever ``QE_STACK_WORKERS`` says now.

    A stack started in scale mode leaves pid files for its workers and Redis; ``down`` stops every
    service a pid file names, so a plain ``make down`` also stops a scaled stack.
    """
    known = list(services(config))
    running = sorted(p.stem for p in (config.folder / "run").glob("*.pid")) if (config.folder / "run").is_dir() else []
    names = known + [name for name in running if name not in known]
    workers = [name for name in names if name.startswith("worker-")]
    rest = [name for name in reversed(known) if name not in workers and name != "redis"]
    extra = [name for name in names if name not in workers and name not in rest and name != "redis"]
    return workers + rest + extra + (["redis"] if "redis" in names else [])


def down(config: StackConfig) -> None:
    for name in stop_order(config):
        stop_service(config, name)
    if (config.pg_data / "PG_VERSION").exists():
        result = subprocess.run(
            _as_postgres_user([_pg_tool("pg_ctl"), "-D", str(config.pg_data), "status"]),
            capture_output=True,
            check=False,
        )
        if result.returncode == 0:
            subprocess.run(
                _as_postgres_user([_pg_tool("pg_ctl"), "-D", str(config.pg_data), "-m", "fast", "-w", "stop"]),
                check=True,
                stdout=subprocess.DEVNULL,
            )
            print("  stopped postgres")
    print("The quant-engine stack is down.")


def main(argv: list[str]) -> None:
    if len(argv) != 1 or argv[0] not in {"up", "down"}:
        raise SystemExit("usage: python ops/stack.py up|down")
    config = StackConfig.from_env()
    if argv[0] == "up":
        try:
            up(config)
        except BaseException:
            print("Start failed; stopping what was started.", file=sys.stderr)
            down(config)
            raise
    else:
        down(config)


if __name__ == "__main__":
    main(sys.argv[1:])
