"""A person at the approval form, played through Airflow's own REST API (in-process api-server app).

``python -m tests.e2e.hitl_responder DAG_ID TASK_ID=CHOICE [TASK_ID=CHOICE ...]``: waits until each task is
parked in ``awaiting_input``, then answers it with ``PATCH .../taskInstances/{task}/-1/hitlDetails``.
``CHOICE`` is ``Approve``, ``Reject`` or ``timeout`` (wait past the task's response timeout and run the
scheduler's own timeout sweep, as the scheduler would). Prints one JSON line per answer. Run with the same
environment as ``airflow dags test`` (same metadata DB) and
``AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True``.
"""

from __future__ import annotations

import json
import sys
import time

POLL_S = 0.5
WAIT_S = 600


def pending(client, dag_id: str, task_id: str) -> dict | None:
    response = client.get(f"/api/v2/dags/{dag_id}/dagRuns/~/hitlDetails",
                          params={"response_received": False, "state": "awaiting_input"})
    response.raise_for_status()
    for detail in response.json()["hitl_details"]:
        if detail["task_instance"]["task_id"] == task_id:
            return detail
    return None


def wait_for(client, dag_id: str, task_id: str) -> dict:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        detail = pending(client, dag_id, task_id)
        if detail:
            return detail
        time.sleep(POLL_S)
    raise TimeoutError(f"{task_id} never waited for input within {WAIT_S} s")


def answer(client, dag_id: str, task_id: str, choice: str) -> dict:
    detail = wait_for(client, dag_id, task_id)
    ti = detail["task_instance"]
    if choice == "timeout":
        from airflow.jobs.job import Job
        from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

        time.sleep(3)  # the tests set a response timeout of about 2 s
        SchedulerJobRunner(job=Job()).check_awaiting_input_timeouts()
        return {"task_id": task_id, "choice": "timeout", "subject": detail["subject"], "body": detail["body"]}
    url = f"/api/v2/dags/{dag_id}/dagRuns/{ti['dag_run_id']}/taskInstances/{task_id}/{ti['map_index']}/hitlDetails"
    response = client.patch(url, json={"chosen_options": [choice], "params_input": {}})
    response.raise_for_status()
    return {"task_id": task_id, "choice": choice, "subject": detail["subject"], "body": detail["body"],
            "response": response.json()}


def main(argv: list[str]) -> int:
    from fastapi.testclient import TestClient

    from airflow.api_fastapi.app import create_app

    dag_id, answers = argv[0], [a.split("=", 1) for a in argv[1:]]
    with TestClient(create_app(apps="core")) as client:
        for task_id, choice in answers:
            print(json.dumps(answer(client, dag_id, task_id, choice), default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
