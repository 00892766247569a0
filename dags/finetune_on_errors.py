"""
### finetune_on_errors — fine-tune as soon as enough errors pile up

Frequent schedule (`schedule.on_errors_cron`). `ingest_inbox` stores the JSONL batches dropped into the inbox
folder (bad rows are reported, valid rows kept); `wait_for_trigger_conditions` waits in the triggerer (deferrable,
no worker slot) until the trigger conditions hold — the same ones as `finetune_weekly`'s `check_trigger` — and then
`start_finetune` starts exactly one `finetune_weekly` run (its run id derives from this run's, so a retry cannot
start a second). If the conditions stay unmet until the sensor's timeout, the run is skipped: no fine-tuning.
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG

from tuneloop.config import TuneloopConfig
from tuneloop.operators.ingest import IngestInboxOperator
from tuneloop.schedule import cron, models, task_defaults
from tuneloop.sensors.trigger_conditions import TriggerConditionsSensor


def build(model: TuneloopConfig) -> DAG:
    """``finetune_on_errors`` (or ``finetune_on_errors_<name>``), starting the same model's weekly DAG."""
    with DAG(
        dag_id=model.dag_id("finetune_on_errors"),
        doc_md=__doc__,
        schedule=cron("on_errors_cron", model),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["tuneloop", "sensor", f"model:{model.name}"],
        default_args=task_defaults(model),
    ) as dag:
        ingest = IngestInboxOperator(task_id="ingest_inbox")
        wait = TriggerConditionsSensor(task_id="wait_for_trigger_conditions")
        start = TriggerDagRunOperator(
            task_id="start_finetune",
            trigger_dag_id=model.dag_id("finetune_weekly"),
            trigger_run_id="{{ ti.xcom_pull(task_ids='wait_for_trigger_conditions')['run_id'] }}",
            conf={"reason": "{{ ti.xcom_pull(task_ids='wait_for_trigger_conditions')['summary'] }}"},
            skip_when_already_exists=True,
        )
        ingest >> wait >> start
    return dag


for _model in models():
    globals()[_model.dag_id("finetune_on_errors")] = build(_model)
