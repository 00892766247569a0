"""
### finetune_rollback — put a previous model back into production

Manual only. Leave **target_version** empty to roll back to the `previous` alias (the model that production
replaced), or give a registered version number. The move and the **reason** are written to the deployment history
(`tuneloop history`). Rolling back to a version that was never deployed, or with nothing to roll back to, fails
with a message saying so; production is left untouched.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from tuneloop.operators.deploy import ManualRollbackOperator

with DAG(
    dag_id="finetune_rollback",
    doc_md=__doc__,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["tuneloop", "rollback"],
    default_args={"retries": 1},
    params={
        "target_version": Param(None, type=["null", "string"], description="Empty: the previous production."),
        "reason": Param("manual rollback", type="string", minLength=1, description="Why (kept in history)."),
    },
) as dag:
    ManualRollbackOperator(task_id="rollback")
