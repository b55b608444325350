"""The job image's two commands, run as SageMaker runs them, on a simulated ``/opt/ml``.

No Docker engine runs here, so each job runs as a subprocess that sees what the container would:

* the command the image or the job names, as is: ``train`` (``docker/sagemaker/Dockerfile`` puts
  ``docker/sagemaker/train`` on PATH; SageMaker starts a training container as ``docker run <image>
  train``) and the Processing request's ``ContainerEntrypoint`` (``python3 -m ...``), with ``python3``
  the Python 3.11 of this checkout's environment;
* the files SageMaker lays out (``input/config/hyperparameters.json`` holding the request's
  ``HyperParameters``, ``resourceconfig.json``, ``input/data/<channel>/``; ``processing/input``,
  ``processing/code``, ``config/resourceconfig.json``) under a temporary root that
  ``SAGEMAKER_BASE_DIR`` points at, and the request's ``Environment`` with ``/opt/ml`` moved there;
* only the packages the Dockerfile installs (and their dependencies): an import hook refuses every
  other third-party module, as the image would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import packages_distributions, requires
from pathlib import Path

import pandas as pd
import pytest
import xgboost as xgb
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import quant_engine
from quant_engine.aws.processing import (
    STAGED_DIRS,
    STAGED_FILES,
    ProcessingSpec,
    StagedRun,
    processing_job_request,
)
from quant_engine.aws.sagemaker_spot import (
    CHANNELS,
    SpotTrainingSpec,
    StagedTraining,
    training_job_request,
)
from quant_engine.backends import make_bar_store, make_group_stores, make_offline_store
from quant_engine.config import Settings
from quant_engine.features.ingest import IngestionRequest, ingest
from quant_engine.wfo.config import WfoConfig
from quant_engine.wfo.dataset import build_dataset
from quant_engine.wfo.plan import plan
from quant_engine.wfo.run_folder import load_plan, prediction_path
from quant_engine.wfo.runner import run_split

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "docker" / "sagemaker" / "Dockerfile"
OPT_ML = "/opt/ml"
SETTINGS = Settings(
    backend="aws",
    s3_bucket="qe-jobs",
    sagemaker_role_arn="arn:aws:iam::123456789012:role/qe-sagemaker",
    sagemaker_image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/quant-engine-job:0.1.0",
)
#: Refuses, as not installed, every top-level module of this environment's site-packages outside the
#: job image (``ALLOWED``); the standard library and what PYTHONPATH holds stay importable.
IMAGE_ONLY = """
import importlib.abc, importlib.machinery, sys, sysconfig
ALLOWED = set({allowed!r})
SITE = tuple({{sysconfig.get_path("purelib") + "/", sysconfig.get_path("platlib") + "/"}})
class ImageOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if "." in name or name in ALLOWED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        places = [] if spec is None else [spec.origin or "", *(spec.submodule_search_locations or [])]
        if any(place.startswith(SITE) for place in places):
            raise ModuleNotFoundError(f"No module named {{name!r}} (not installed in the job image)", name=name)
        return None
sys.meta_path.insert(0, ImageOnly())
"""


def image_modules() -> set[str]:
    """Top-level modules of the Dockerfile's pinned packages and of everything they require."""
    names = re.findall(r"^\s+([A-Za-z0-9_.-]+)==\S+", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert names, f"{DOCKERFILE} installs no pinned package"
    environment = {**default_environment(), "extra": ""}
    closure, todo = set(), [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name not in closure:
            closure.add(name)
            for line in requires(name) or []:
                requirement = Requirement(line)
                if requirement.marker is None or requirement.marker.evaluate(environment):
                    todo.append(canonicalize_name(requirement.name))
    owners = packages_distributions()
    modules = {top for top, dists in owners.items() if any(canonicalize_name(d) in closure for d in dists)}
    return modules | {"quant_engine"}


@pytest.fixture(scope="module")
def image_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose ``sitecustomize`` leaves a Python process only the job image's packages."""
    folder = tmp_path_factory.mktemp("image_only")
    (folder / "sitecustomize.py").write_text(IMAGE_ONLY.format(allowed=sorted(image_modules())))
    return folder


def on_opt_ml(value: str, root: Path) -> str:
    """``value`` with each ``/opt/ml`` path moved under ``root``, as the container's root maps there."""
    return value.replace(OPT_ML, str(root))


def container_env(root: Path, image_only: Path, environment: dict[str, str], python_path: str) -> dict[str, str]:
    """The job's environment: only PATH (this Python's ``python3`` first), the layout's root and what the job sets."""
    python_bin = Path(sys.executable).parent
    assert (python_bin / "python3").exists()
    env = {k: on_opt_ml(v, root) for k, v in environment.items()}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(image_only), env.get("PYTHONPATH"), python_path]))
    return {"PATH": f"{python_bin}:/usr/bin:/bin", "HOME": str(root), "SAGEMAKER_BASE_DIR": str(root), **env}


def run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=180, check=False)
    assert "not installed in the job image" not in result.stderr, result.stderr[-3000:]
    return result


# --- Processing -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planned_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A planned walk-forward run folder (2 tickers, 2021, 3 splits x 2 trials), built locally."""
    home = tmp_path_factory.mktemp("job_home")
    settings = Settings(home=home)
    group = make_offline_store()
    ingest(
        IngestionRequest.build("synthetic", "2021-01-01", "2021-12-31", tickers=["SYN03", "SYN04"], group=group),
        make_group_stores(settings),
    )
    trials = [{"max_depth": 2, "n_estimators": 5}, {"max_depth": 3, "n_estimators": 5}]
    params = {"start": "2021-01-01", "end": "2021-12-31", "n_groups": 3, "n_test_groups": 1, "embargo": 2,
              "min_group_rows": 50, "trials": trials}  # fmt: skip
    run_dir = home / "runs" / "wfo" / "manual__2026-01-01"
    build_dataset(WfoConfig.from_params(params), run_dir, make_offline_store(settings), make_bar_store(settings))
    plan(run_dir)
    return run_dir


def test_processing_entry_runs_its_hosts_share_as_the_job_request_names_it(
    planned_run: Path, image_only: Path, tmp_path: Path
) -> None:
    root = tmp_path / "opt_ml"
    # what the job's ProcessingInputs download: the run's staged files and the package sources
    processing_input = root / "processing" / "input"
    for name in STAGED_FILES:
        (processing_input / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(planned_run / name, processing_input / name)
    for folder in STAGED_DIRS:
        shutil.copytree(planned_run / folder, processing_input / folder)
    package = Path(quant_engine.__file__).parent
    shutil.copytree(
        package, root / "processing" / "code" / "quant_engine", ignore=shutil.ignore_patterns("__pycache__")
    )
    # the second of two instances: it runs every other task
    (root / "config").mkdir()
    hosts = {"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]}
    (root / "config" / "resourceconfig.json").write_text(json.dumps(hosts))
    tasks = [(t["trial_id"], t["split_id"]) for t in load_plan(planned_run)["tasks"]][:4]
    request = processing_job_request(
        "qe-wfo-test", StagedRun.for_run(planned_run, SETTINGS), tasks, ProcessingSpec(), SETTINGS, "image"
    )

    command = request["AppSpecification"]["ContainerEntrypoint"]
    env = container_env(root, image_only, request["Environment"], python_path="")
    result = run(command, env, cwd=root)

    assert result.returncode == 0, result.stderr[-3000:]
    mine = tasks[1::2]
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(p["trial_id"], p["split_id"]) for p in printed] == mine
    output = root / "processing" / "output"
    written = sorted(p.relative_to(output) for p in output.rglob("*.parquet"))
    assert written == sorted(prediction_path(Path(), t, s) for t, s in mine)
    # the same predictions as the local task, run in this process with every package at hand
    local = tmp_path / "local"
    for trial_id, split_id in mine:
        run_split(planned_run, trial_id, split_id, output_dir=local)
        pd.testing.assert_frame_equal(
            pd.read_parquet(prediction_path(output, trial_id, split_id)),
            pd.read_parquet(prediction_path(local, trial_id, split_id)),
        )


# --- training -------------------------------------------------------------------------------------


def training_layout(root: Path, hyperparameters: dict[str, object]) -> dict[str, object]:
    """SageMaker's files for a training job of ``hyperparameters``; returns the job request."""
    request = training_job_request(
        "qe-train-test", StagedTraining("s3://qe-jobs/t"), hyperparameters, SpotTrainingSpec(), SETTINGS, "image"
    )
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(request["HyperParameters"]))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    channels = {c["ChannelName"]: {"ContentType": c["ContentType"]} for c in request["InputDataConfig"]}
    (config / "inputdataconfig.json").write_text(json.dumps(channels))
    frame = pd.DataFrame({"x1": [float(i % 7) for i in range(300)], "x2": [float(i % 5) for i in range(300)]})
    frame["label"] = (frame["x1"] > 3).astype("int8")
    for channel in CHANNELS:
        (root / "input" / "data" / channel).mkdir(parents=True)
        frame.to_parquet(root / "input" / "data" / channel / f"{channel}.parquet")
    return request


def test_train_command_trains_from_the_opt_ml_layout_and_resumes_from_its_checkpoints(
    image_only: Path, tmp_path: Path
) -> None:
    root = tmp_path / "opt_ml"
    hyperparameters = {"num_round": 12, "max_depth": 2, "checkpoint_every": 4, "subsample": 0.8}
    request = training_layout(root, hyperparameters)
    assert set(json.loads((root / "input/config/hyperparameters.json").read_text())) >= {"sagemaker_program"}
    bin_dir = tmp_path / "bin"  # the image's /usr/local/bin
    bin_dir.mkdir()
    shutil.copy2(REPO_ROOT / "docker" / "sagemaker" / "train", bin_dir / "train")
    env = container_env(root, image_only, {}, python_path=str(REPO_ROOT / "include"))  # the installed package
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    assert not [k for k in env if k.startswith("SM_")]  # no toolkit: the layout alone says everything

    first = run(["train"], env, cwd=root)

    assert first.returncode == 0, first.stderr[-3000:]
    model = root / "model" / "model.json"
    booster = xgb.Booster(model_file=str(model))
    assert booster.num_boosted_rounds() == 12 and booster.feature_names == ["x1", "x2"]
    metrics = json.loads((root / "model" / "metrics.json").read_text())
    assert metrics["resumed_from"] == 0 and metrics["checkpoints_written"] == 3
    assert metrics["validation"]["rows"] == 300
    assert list((root / "checkpoints").iterdir()), "no checkpoint in /opt/ml/checkpoints"
    assert request["CheckpointConfig"]["LocalPath"] == f"{OPT_ML}/checkpoints"
    # a spot restart: SageMaker restores /opt/ml/checkpoints and runs `train` again
    first_bytes = model.read_bytes()
    shutil.rmtree(root / "model")
    again = run(["train"], env, cwd=root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((root / "model" / "metrics.json").read_text())["resumed_from"] == 12
    assert model.read_bytes() == first_bytes
