"""``plugins/qe_deploy.py`` and ``qe_endpoint.py``'s operators on the local backend: deploy the approved
version, check it, roll a broken one back (the operators do the local step only: no endpoint, no XCom)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

REPO_ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO_ROOT / "plugins"))

import qe_deploy  # noqa: E402 - the plugins folder is on the path only from here
from airflow.sdk.exceptions import AirflowFailException  # noqa: E402
from qe_endpoint import QeDeployOperator, QeRollbackOperator  # noqa: E402

from quant_engine.backends import make_group_stores, make_model_registry, make_offline_store  # noqa: E402
from quant_engine.features.ingest import IngestionRequest, ingest  # noqa: E402
from quant_engine.training.deployment import DeploymentHistory, HealthCheckError, served_version  # noqa: E402


def _register(registry, features: list[str], rows: np.ndarray, seed: int, folder: Path) -> str:
    labels = (rows[:, seed % rows.shape[1]] > 0).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "seed": seed}, xgb.DMatrix(rows, labels, feature_names=features), 3
    )
    booster.save_model(folder / f"model-{seed}.json")
    metadata = {"features": features, "data_start": "2024-01-02T00:00Z", "data_end": "2024-02-29T00:00Z"}
    return registry.register(folder / f"model-{seed}.json", metadata | {"data_fingerprint": f"data-{seed}"})


def test_local_deploy_serves_the_approved_version_and_rolls_a_broken_one_back(tmp_path: Path) -> None:
    ingest(
        IngestionRequest.build("synthetic", "2024-01-02", "2024-02-29", tickers=["SYN00", "SYN01"]), make_group_stores()
    )
    frame = make_offline_store().read()
    features = [c for c in frame.columns if c not in ("ticker", "event_time")][:3]
    rows = frame[features].dropna().to_numpy()
    registry = make_model_registry()
    v1, v2 = (_register(registry, features, rows, seed, tmp_path) for seed in (1, 2))
    with pytest.raises(ValueError, match="no champion to deploy"):
        qe_deploy.candidate(registry.name, None)
    registry.promote(v1, "first")

    chosen = qe_deploy.candidate(registry.name, None)
    assert (chosen["version"], chosen["live"]) == (v1, None)
    alice = {"responded_by_user": {"id": "7", "name": "alice"}}
    first = QeDeployOperator(task_id="deploy", chosen=chosen, approval=alice).execute({})
    assert (first["target"], first["by"], served_version(registry)) == ("local", "alice", v1)
    assert "scores 64 stored rows" in qe_deploy.health_check(first)
    healthy = {"healthy": True, "detail": "fine"}
    assert QeRollbackOperator(task_id="roll_back", deployed=first, verdict=healthy).execute({}) is None

    second = qe_deploy.deploy(qe_deploy.candidate(registry.name, v2), "bob")
    assert (second["previous"], served_version(registry)) == (v1, v2)
    model_file = next(Path(registry.fs.local_path(f"{registry.name}/versions/{v2}")).glob("model-*.json"))
    model_file.write_bytes(b'{"learner": "truncated')  # the artifact is damaged after its deployment
    with pytest.raises(HealthCheckError, match="cannot be loaded"):
        qe_deploy.health_check(second)
    unhealthy = {"healthy": False, "detail": "cannot be loaded"}
    with pytest.raises(AirflowFailException, match="deployment rolled back: cannot be loaded"):
        QeRollbackOperator(task_id="roll_back", deployed=second, verdict=unhealthy).execute({})
    assert served_version(registry) == v1
    assert qe_deploy.roll_back(second, "a retried rollback").endswith(f"serving {v1} again")  # changes nothing
    assert [(e.version, e.outcome) for e in DeploymentHistory(registry).entries()] == [
        (v1, "deployed"),
        (v2, "deployed"),
        (v2, "rolled_back"),
    ]
