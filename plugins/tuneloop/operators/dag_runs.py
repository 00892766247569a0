"""Airflow's DAG run states for :mod:`tuneloop.runs`, read through the Task SDK.

Task and trigger code in Airflow 3 may not touch the metadata database; the SDK asks the API server (the
triggerer answers the same messages), so this works in a worker, in the triggerer and under ``airflow dags test``.
"""

from __future__ import annotations


def dag_run_state(dag_id: str, run_id: str) -> str:
    """Airflow's state of the DAG run (queued, running, success, failed), or ``tuneloop.runs.GONE``."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    from tuneloop.runs import GONE

    if RuntimeTaskInstance.get_dr_count(dag_id=dag_id, run_ids=[run_id]) == 0:
        return GONE
    state = RuntimeTaskInstance.get_dagrun_state(dag_id=dag_id, run_id=run_id)
    return str(getattr(state, "value", state))
