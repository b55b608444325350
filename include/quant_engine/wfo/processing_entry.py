"""Script-mode entry point of the walk-forward Processing job: ``python -m quant_engine.wfo.processing_entry``.

The container contract, the same on SageMaker and in a local subprocess:

* ``QE_PROCESSING_INPUT`` (default ``/opt/ml/processing/input``): a copy of the run folder
  (``config.json``, ``plan.json``, ``dataset.parquet``, ``splits/``), read only;
* ``QE_PROCESSING_OUTPUT`` (default ``/opt/ml/processing/output``): where
  ``predictions/trial=<t>/split=<s>.parquet`` are written, uploaded to S3 when the job ends;
* ``QE_WFO_TASKS``: the tasks to run as ``"trial:split,trial:split"``; unset means every task of
  the plan;
* ``QE_RESOURCE_CONFIG`` (default ``/opt/ml/config/resourceconfig.json``): on a cluster of several
  instances each one runs every ``n_hosts``-th task, by its position in ``hosts``;
* ``SAGEMAKER_BASE_DIR`` (default ``/opt/ml``, the name SageMaker's training toolkit gives it): the
  root the three defaults above sit under, so a test or a local run maps the whole layout at once.

Each task is :func:`quant_engine.wfo.runner.run_split`, exactly what a local DAG task runs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from quant_engine.wfo.run_folder import load_plan
from quant_engine.wfo.runner import run_split

BASE_DIR = "/opt/ml"
PROCESSING_INPUT = "/opt/ml/processing/input"
PROCESSING_OUTPUT = "/opt/ml/processing/output"
RESOURCE_CONFIG = "/opt/ml/config/resourceconfig.json"


def sagemaker_path(path: str, env: Mapping[str, str]) -> Path:
    """``path`` (under ``/opt/ml``) moved under ``SAGEMAKER_BASE_DIR`` when that is set.

    Examples
    --------
    >>> sagemaker_path(PROCESSING_INPUT, {"SAGEMAKER_BASE_DIR": "/tmp/ml"}).as_posix()
    '/tmp/ml/processing/input'
    """
    return Path(env.get("SAGEMAKER_BASE_DIR") or BASE_DIR) / Path(path).relative_to(BASE_DIR)


def parse_tasks(value: str) -> list[tuple[int, int]]:
    """``"0:1,2:3"`` -> ``[(0, 1), (2, 3)]``.

    Examples
    --------
    >>> parse_tasks("0:1, 2:3")
    [(0, 1), (2, 3)]
    """
    tasks = []
    for item in value.split(","):
        trial, sep, split = item.strip().partition(":")
        if not sep or not trial.isdigit() or not split.isdigit():
            raise ValueError(f"QE_WFO_TASKS item {item.strip()!r} is not 'trial:split' with whole numbers")
        tasks.append((int(trial), int(split)))
    return tasks


def format_tasks(tasks: Sequence[tuple[int, int]]) -> str:
    """The inverse of :func:`parse_tasks`."""
    return ",".join(f"{t}:{s}" for t, s in tasks)


def host_share(tasks: Sequence[tuple[int, int]], resource_config: Path) -> list[tuple[int, int]]:
    """The tasks this instance runs: all of them alone, every ``n``-th on a cluster of ``n``."""
    if not resource_config.exists():
        return list(tasks)
    config = json.loads(resource_config.read_text())
    hosts = sorted(config["hosts"])
    index = hosts.index(config["current_host"])
    return [task for i, task in enumerate(tasks) if i % len(hosts) == index]


def main(env: Mapping[str, str] | None = None) -> int:
    """Run this instance's share of the tasks; print one JSON line per finished task."""
    env = os.environ if env is None else env
    input_dir = Path(env.get("QE_PROCESSING_INPUT") or sagemaker_path(PROCESSING_INPUT, env))
    output_dir = Path(env.get("QE_PROCESSING_OUTPUT") or sagemaker_path(PROCESSING_OUTPUT, env))
    if not (input_dir / "plan.json").exists():
        raise FileNotFoundError(f"{input_dir} holds no plan.json; the job's input must be a planned run folder")
    listed = env.get("QE_WFO_TASKS")
    if listed:
        tasks = parse_tasks(listed)
    else:
        tasks = [(t["trial_id"], t["split_id"]) for t in load_plan(input_dir)["tasks"]]
    mine = host_share(tasks, Path(env.get("QE_RESOURCE_CONFIG") or sagemaker_path(RESOURCE_CONFIG, env)))
    output_dir.mkdir(parents=True, exist_ok=True)
    for trial_id, split_id in mine:
        result = run_split(input_dir, trial_id, split_id, output_dir=output_dir)
        result["path"] = str(Path(result["path"]).relative_to(output_dir))
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
