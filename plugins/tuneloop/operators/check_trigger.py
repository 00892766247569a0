from __future__ import annotations

from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowSkipException

from tuneloop.operators.base import PipelineStepOperator
from tuneloop.operators.dag_runs import dag_run_state


class CheckTriggerOperator(PipelineStepOperator):
    """Check the trigger conditions; skip the rest of the run (the report still runs) when they are unmet.

    The result ``{should_trigger, reasons, metrics}`` is pushed before skipping, so the report can say why. Runs
    recorded as running are first reconciled with Airflow's DAG run states (:mod:`tuneloop.runs`).
    """

    def execute(self, context: Context) -> dict[str, Any]:
        result = self.pipeline(context).check_trigger(dag_run_state)
        for reason in result["reasons"]:
            self.log.info("trigger: %s", reason)
        if not result["should_trigger"]:
            context["ti"].xcom_push(key="return_value", value=result)
            raise AirflowSkipException("trigger conditions unmet: " + "; ".join(result["reasons"]))
        return result
