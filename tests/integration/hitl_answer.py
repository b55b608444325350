"""Answer a waiting human-in-the-loop task as a person would through Airflow's HITL REST API.

Run as ``python hitl_answer.py <dag_id> <task_id> <option> <user>`` with ``AIRFLOW_HOME`` naming the
metadata database of a running ``airflow dags test``. It waits for the task to park in
``awaiting_input``, then does what the API's ``update_hitl_detail`` does (records the response on
the HITL detail and resumes the task with ``handle_event_submit``), so ``dag.test()``'s loop
schedules the task's ``execute_complete``. Exits 1 when no task waits within the timeout.
"""

from __future__ import annotations

import sys
import time

from airflow.models.hitl import HITLDetail
from airflow.models.taskinstance import TaskInstance
from airflow.models.trigger import handle_event_submit
from airflow.triggers.base import TriggerEvent
from airflow.utils import timezone
from airflow.utils.session import create_session
from airflow.utils.state import TaskInstanceState
from sqlalchemy import select


def answer(dag_id: str, task_id: str, option: str, user: str, timeout_s: float = 300.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with create_session() as session:
            ti = session.scalars(
                select(TaskInstance).where(
                    TaskInstance.dag_id == dag_id,
                    TaskInstance.task_id == task_id,
                    TaskInstance.state == TaskInstanceState.AWAITING_INPUT,
                )
            ).first()
            detail = None if ti is None else session.get(HITLDetail, ti.id)
            if detail is not None and not detail.response_received:
                detail.responded_by = {"id": user, "name": user}
                detail.responded_at = timezone.utcnow()
                detail.chosen_options = [option]
                detail.params_input = {}
                session.add(detail)
                handle_event_submit(TriggerEvent(detail.as_resume_event_payload()), task_instance=ti, session=session)
                return ti.run_id
        time.sleep(1)
    raise SystemExit(f"no {dag_id}.{task_id} awaited input within {timeout_s:g} s")


if __name__ == "__main__":
    print(answer(*sys.argv[1:5]))
