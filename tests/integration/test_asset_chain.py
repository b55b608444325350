"""The DAGs hand over through assets: ingestion -> drift_monitor -> spot_training.

Each test names the asset one DAG emits and checks the next DAG is scheduled on exactly that URI,
so renaming one side without the other fails here instead of silently never triggering.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def bag() -> DagBag:
    return DagBag(dag_folder=str(DAGS))


def emitted(bag: DagBag, dag_id: str) -> set[str]:
    return {outlet.uri for task in bag.get_dag(dag_id).tasks for outlet in task.outlets}


def scheduled_on(bag: DagBag, dag_id: str) -> set[str]:
    condition = bag.get_dag(dag_id).timetable.asset_condition
    return {asset.uri for asset in condition.objects}


@pytest.mark.parametrize(
    ("producer", "consumer", "uri"),
    [
        ("market_data_ingestion", "drift_monitor", "qe://feature-store/market_features"),
        ("drift_monitor", "spot_training", "qe://drift/retraining-requested"),
    ],
)
def test_each_dag_is_scheduled_on_the_asset_the_previous_one_emits(bag, producer, consumer, uri) -> None:
    assert uri in emitted(bag, producer)
    assert scheduled_on(bag, consumer) == {uri}


def test_only_the_request_task_emits_the_retraining_asset(bag) -> None:
    emitters = [
        t.task_id
        for t in bag.get_dag("drift_monitor").tasks
        if "qe://drift/retraining-requested" in {o.uri for o in t.outlets}
    ]
    assert emitters == ["request_retraining"]
    upstream = bag.get_dag("drift_monitor").get_task("request_retraining").upstream_task_ids
    assert "retraining_needed" in upstream  # the short-circuit that skips it when nothing drifted
