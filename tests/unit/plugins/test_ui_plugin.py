"""The Quant Engine UI plugin: Airflow's login is required, and the pages render what QE_HOME holds."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from fastapi.testclient import TestClient

REPO_ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO_ROOT / "plugins"))

RUN_ID = "manual__2026-11-29T10:00:00+00:00"
RUN_FOLDER = "manual__2026-11-29T10_00_00_00_00"


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Airflow's SimpleAuthManager as the api-server sets it up, and a JWT it issued for ``admin``."""
    from airflow.api_fastapi.app import get_auth_manager, init_auth_manager, purge_cached_app
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    monkeypatch.setenv(
        "AIRFLOW__CORE__AUTH_MANAGER", "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
    )
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin")
    passwords = tmp_path / "passwords.json"
    passwords.write_text(json.dumps({"admin": "secret"}))
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "unit-test-jwt-secret-" + "0123456789abcdef" * 4)
    purge_cached_app()
    init_auth_manager()
    yield get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
    purge_cached_app()


@pytest.fixture
def client() -> TestClient:
    from quant_engine_ui.app import create_app

    return TestClient(create_app())


def _write_wfo_report(home: Path) -> None:
    folder = home / "reports" / "wfo" / RUN_FOLDER
    folder.mkdir(parents=True)
    report = {
        "run_id": RUN_FOLDER,
        "generated_at": "2026-11-29T10:05:00+00:00",
        "pbo": 0.1875,
        "deflated_sharpe": 0.4321,
        "psr": 0.9,
        "selected_trial": 1,
        "n_splits": 15,
        "n_paths": 5,
        "n_trials": 2,
        "setup": "market_neutral portfolio, 5 bps costs",
        "trials": [{"trial": 0, "mean_path_sharpe": 0.1}, {"trial": 1, "mean_path_sharpe": 1.23}],
    }
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "report.html").write_text("<html><body><h1>WFO report</h1><img alt='equity curves'></body></html>")


def _register_model(tmp_path: Path, wfo_run: dict | None = None) -> None:
    from quant_engine.backends import make_model_registry
    from quant_engine.training.registry import ModelMetadata

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, 2)), columns=["ret_1", "vol_20"])
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2, "seed": 0},
        xgb.DMatrix(frame, (frame["ret_1"] > 0).astype(int)),
        3,
    )
    booster.save_model(tmp_path / "model.json")
    registry = make_model_registry()
    version = registry.register(
        tmp_path / "model.json",
        ModelMetadata(
            features=("ret_1", "vol_20"),
            data_start="2020-01-01T00:00Z",
            data_end="2021-01-01T00:00Z",
            data_fingerprint="f00d",
            metrics={"logloss": 0.61},
            wfo_run=wfo_run,
        ),
    )
    registry.promote(version, reason="first model")


def _write_drift_report(home: Path) -> None:
    folder = home / "reports" / "drift" / "drift-run-1"
    folder.mkdir(parents=True)
    document = {
        "run_id": "drift-run-1",
        "model_name": "xgb_direction",
        "model_version": "v0001",
        "window": {"start": "2024-01-01", "end": "2024-03-01", "rows": 420},
        "verdict": "feature_drift",
        "retraining_requested": True,
        "evidence": {"alarms": {"vol_20": "ALARM", "ret_1": "OK"}},
    }
    (folder / "report.json").write_text(json.dumps(document))
    (folder / "report.html").write_text("<html><body>drift report</body></html>")


@pytest.fixture
def bridge(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A stand-in for the bridge's HTTP side on loopback, answering /health and /signals/latest."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
            payloads = {
                "/health": {"connected": True, "lag_ms": 12.5, "tick_rate": 2000.0},
                "/signals/latest": [{"ticker": "SYN03", "signal": 1, "probability": 0.61}],
            }
            if self.path == "/signals/latest" and self.headers.get("Authorization") != "Bearer ui-token":
                self.send_response(401)
                self.end_headers()
                return
            body = json.dumps(payloads.get(self.path, {})).encode()
            self.send_response(200 if self.path in payloads else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("QE_BRIDGE_URL", url)
    monkeypatch.setenv("QE_BRIDGE_UI_TOKEN", "ui-token")
    yield url
    server.shutdown()
    server.server_close()


def test_every_page_refuses_a_request_without_a_login(client: TestClient, token: str, qe_home: Path) -> None:
    _write_wfo_report(qe_home)
    for path in ("/", f"/wfo/{RUN_FOLDER}", f"/wfo/{RUN_FOLDER}/report.json", "/drift/drift-run-1"):
        assert client.get(path).status_code == 401, path
    forged = client.get("/", headers={"Authorization": "Bearer not-a-jwt"})
    assert forged.status_code == 403


def test_overview_shows_wfo_registry_drift_and_bridge(
    client: TestClient, token: str, qe_home: Path, tmp_path: Path, bridge: str
) -> None:
    _write_wfo_report(qe_home)
    _register_model(tmp_path)
    _write_drift_report(qe_home)
    client.cookies.set("_token", token)  # the cookie the Airflow UI's login sets
    page = client.get("/")
    assert page.status_code == 200
    text = page.text
    assert RUN_FOLDER in text and "0.188" in text and "0.432" in text and "1.23" in text
    assert "v0001" in text and "champion" in text and "first model" in text
    assert "feature_drift" in text and "vol_20" in text and "ALARM" in text
    assert bridge in text and "lag_ms" in text and "SYN03" in text and "0.61" in text


def test_run_pages_serve_the_stored_report_and_refuse_unknown_names(
    client: TestClient, token: str, qe_home: Path
) -> None:
    _write_wfo_report(qe_home)
    headers = {"Authorization": f"Bearer {token}"}
    page = client.get(f"/wfo/{RUN_FOLDER}", headers=headers)
    assert page.status_code == 200 and "equity curves" in page.text
    assert client.get(f"/wfo/{RUN_FOLDER}/report.json", headers=headers).json()["pbo"] == 0.1875
    assert client.get("/wfo/..%2F..%2Fetc", headers=headers).status_code == 404
    assert client.get("/wfo/no-such-run", headers=headers).status_code == 404


def test_empty_home_and_bridge_down_are_said_plainly(
    client: TestClient, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QE_BRIDGE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    client.cookies.set("_token", token)
    text = client.get("/").text
    assert "No walk-forward report yet" in text
    assert "No version registered" in text
    assert "No drift report yet" in text
    assert "bridge not reachable" in text


def test_signals_refused_for_a_wrong_token_are_said_plainly(
    client: TestClient, token: str, bridge: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QE_BRIDGE_UI_TOKEN", "wrong")
    client.cookies.set("_token", token)
    text = client.get("/").text
    assert "lag_ms" in text and "SYN03" not in text and "set QE_BRIDGE_UI_TOKEN" in text


def test_an_unreadable_report_or_registry_is_skipped_and_said_not_a_500(
    client: TestClient, token: str, qe_home: Path, tmp_path: Path
) -> None:
    _write_wfo_report(qe_home)
    broken = qe_home / "reports" / "wfo" / "broken-run"
    broken.mkdir(parents=True)
    (broken / "report.json").write_text("{not json")
    _register_model(tmp_path)
    stray = qe_home / "models" / "stray_model" / "versions" / "v0001"
    stray.mkdir(parents=True)
    (stray / "metadata.json").write_text("[]")
    drift = qe_home / "reports" / "drift" / "drift-run-2"
    drift.mkdir(parents=True)
    (drift / "report.json").write_text("{truncated")
    client.cookies.set("_token", token)
    page = client.get("/")
    assert page.status_code == 200
    text = page.text
    assert RUN_FOLDER in text and "v0001" in text  # the readable items are all there
    assert "Skipped walk-forward report broken-run: cannot read it" in text
    assert "Skipped registry stray_model: cannot read it" in text
    assert "Skipped drift report drift-run-2: cannot read it" in text


def test_the_champion_names_the_walk_forward_run_it_came_from(
    client: TestClient, token: str, qe_home: Path, tmp_path: Path
) -> None:
    _write_wfo_report(qe_home)
    wfo_run = {"run_id": RUN_ID, "splitter": "walk_forward", "pbo": 0.1875, "deflated_sharpe": 0.4321, "psr": 0.9}
    _register_model(tmp_path, {**wfo_run, "selected_trial": 1})
    client.cookies.set("_token", token)
    text = client.get("/").text
    origin = (
        f'The champion comes from walk-forward run <a href="wfo/{RUN_FOLDER}">{RUN_ID}</a> (walk_forward, '
        "trial 1: PBO 0.188, deflated Sharpe 0.432)."
    )
    assert origin in text
    # the run's row in the walk-forward table names its splitter; the link opens its report
    assert '<span title="">cpcv</span>' in text  # this stored report predates the splitter choice
    assert client.get(f"/wfo/{RUN_FOLDER}", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_a_champion_without_a_walk_forward_run_says_so(client: TestClient, token: str, tmp_path: Path) -> None:
    _register_model(tmp_path)
    client.cookies.set("_token", token)
    assert "The champion names no walk-forward run." in client.get("/").text


def test_online_adaptation_shows_batch_against_adapted_quality_week_by_week(
    client: TestClient, token: str, qe_home: Path
) -> None:
    from quant_engine.online.layer import OnlineLayer

    layer = OnlineLayer(updates_dir=qe_home / "online" / "xgb_direction" / "updates")
    sessions = pd.date_range("2024-01-02 21:00", periods=15, freq="B", tz="UTC")
    labels = pd.DataFrame({"ticker": "A", "ts": sessions[:-1], "t1": sessions[1:], "label": [1, 0] * 7})
    for ts in sessions:
        layer.write_updates(layer.settle(labels, ts))
        layer.adapt("A", ts, 0.6, "v0001")
    client.cookies.set("_token", token)
    text = client.get("/").text
    assert "<h2>Online adaptation</h2>" in text
    assert "2024-01-08" in text and "v0001" in text  # a week's row, by the week its labels settled


def test_runs_link_to_their_mlflow_runs(
    client: TestClient, token: str, qe_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quant_engine.backends import make_model_registry
    from quant_engine.tracking import TrackedRun, save_tracked_run

    _write_wfo_report(qe_home)
    save_tracked_run(qe_home / "reports" / "wfo" / RUN_FOLDER, TrackedRun("sqlite:///db", "1", "a" * 32))
    _register_model(tmp_path)
    make_model_registry().record_tracked_run("v0001", TrackedRun("sqlite:///db", "2", "b" * 32).to_json())
    _write_drift_report(qe_home)
    save_tracked_run(qe_home / "reports" / "drift" / "drift-run-1", TrackedRun("sqlite:///db", "3", "c" * 32))
    client.cookies.set("_token", token)
    without_ui = client.get("/").text  # no UI to link to: the run id is still shown
    assert f'<span title="sqlite:///db">{"a" * 12}</span>' in without_ui
    monkeypatch.setenv("QE_TRACKING_UI_URL", "http://127.0.0.1:28500")
    text = client.get("/").text
    for experiment, run in (("1", "a"), ("2", "b"), ("3", "c")):
        link = f'<a href="http://127.0.0.1:28500/#/experiments/{experiment}/runs/{run * 32}">{run * 12}</a>'
        assert link in text, link
