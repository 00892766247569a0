"""
### finetune_rollback — put a previous model back into production

Manual only. Leave **target_version** empty to roll back to the `previous` alias (the model that production
replaced), or give a registered version number. The move and the **reason** are written to the deployment history
(`tuneloop history`). Rolling back to a version that was never deployed, or with nothing to roll back to, fails
with a message saying so; production is left untouched. While a canary runs, the newest change is the canary:
an empty **target_version** ends it (all traffic back to production, which stays), a version number ends it and
rolls production back too.
"""

from __future__ import annotations

import logging
from datetime import datetime

from airflow.sdk import DAG, Param

from tuneloop.config import DEFAULT_MODEL, ConfigError, TuneloopConfig
from tuneloop.operators.deploy import ManualRollbackOperator
from tuneloop.schedule import models

log = logging.getLogger(__name__)


def build(model: TuneloopConfig) -> DAG:
    """``finetune_rollback`` (or ``finetune_rollback_<name>``) for one model's registered model."""
    with DAG(
        dag_id=model.dag_id("finetune_rollback"),
        doc_md=__doc__,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["tuneloop", "rollback", f"model:{model.name}"],
        default_args={"retries": 1},
        params={
            "target_version": Param(None, type=["null", "string"], description="Empty: the previous production."),
            "reason": Param("manual rollback", type="string", minLength=1, description="Why (kept in history)."),
        },
    ) as dag:
        ManualRollbackOperator(task_id="rollback")
    return dag


def _models() -> list[TuneloopConfig]:
    """Every model's configuration; with a broken configuration, the one-model DAG anyway: rolling back must stay
    in reach when a bad config edit is what took the scheduled DAGs down (the run itself needs a valid config)."""
    try:
        return models()
    except ConfigError as error:
        log.error("tuneloop configuration is invalid; offering finetune_rollback for a one-model installation: %s",
                  error)
        return [TuneloopConfig.model_construct(name=DEFAULT_MODEL)]


for _model in _models():
    globals()[_model.dag_id("finetune_rollback")] = build(_model)
