from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from airflow.sdk import BaseSensorOperator, Context, PokeReturnValue
from airflow.sdk.exceptions import AirflowException, AirflowSensorTimeout, AirflowSkipException

from tuneloop.config import load_model_config
from tuneloop.triggers.trigger_conditions import TriggerConditionsTrigger


class TriggerConditionsSensor(BaseSensorOperator):
    """Wait until the fine-tuning trigger conditions hold; skip (no fine-tuning) if they don't in time.

    When they hold, the fine-tuning run it is about to start is recorded in the store as in progress, so that no
    other check starts a second one before that run's own first step; its run id (``on_errors__<this run id>``)
    is returned for the DAG's TriggerDagRunOperator. The claim names this DAG run: if the fine-tuning run is never
    created, or deleted before it starts, the next check fails the claim (:mod:`tuneloop.runs`) and may start
    another.

    Deferrable by default: after one check in the worker, the wait moves to the triggerer. Poke interval and
    timeout default to ``schedule.sensor_poke_seconds`` / ``schedule.sensor_timeout_minutes``.

    :param poke_interval_s: seconds between checks (default from config)
    :param timeout_minutes: give up (skip) after this long (default from config)
    :param deferrable: wait in the triggerer instead of holding a worker slot
    """

    def __init__(self, *, poke_interval_s: float | None = None, timeout_minutes: float | None = None,
                 deferrable: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.poke_interval_s = poke_interval_s
        self.timeout_minutes = timeout_minutes
        self.deferrable = deferrable

    def poke(self, context: Context) -> PokeReturnValue:
        from tuneloop.operators.dag_runs import dag_run_state
        from tuneloop.pipeline import evaluate_trigger

        config = load_model_config(self.dag_id)
        result = evaluate_trigger(config, now=datetime.now(timezone.utc), force=False, dag_run_state=dag_run_state,
                                  own_run_id=self._claim_id(context)).to_dict()
        if not result["should_trigger"]:
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(is_done=True, xcom_value=self._claim(config, context, result))

    def _claim(self, config: Any, context: Context, result: dict[str, Any]) -> dict[str, Any]:
        from tuneloop.store import ErrorCaseStore

        run_id = self._claim_id(context)
        claimer = {"dag_id": context["ti"].dag_id, "run_id": context["run_id"]}
        ErrorCaseStore.from_config(config).start_training_run(run_id, at=datetime.now(timezone.utc),
                                                              claimed_by=claimer)
        return {"summary": "error cases: " + "; ".join(result["reasons"]), "result": result, "run_id": run_id}

    @staticmethod
    def _claim_id(context: Context) -> str:
        """The weekly run this sensor run claims: a retried sensor must not take its own claim for another run."""
        return f"on_errors__{context['run_id']}"

    def execute(self, context: Context) -> Any:
        config = load_model_config(self.dag_id)
        if not self.deferrable:
            self.poke_interval = self.poke_interval_s or config.schedule.sensor_poke_seconds
            self.timeout = 60 * (self.timeout_minutes or config.schedule.sensor_timeout_minutes)
            try:
                return super().execute(context)
            except AirflowSensorTimeout as e:
                raise AirflowSkipException("trigger conditions unmet until the sensor timed out") from e
        first = self.poke(context)
        if first.is_done:
            return first.xcom_value
        timeout_s = 60 * (self.timeout_minutes or config.schedule.sensor_timeout_minutes)
        self.defer(
            trigger=TriggerConditionsTrigger(
                config=config.model_dump(mode="json"),
                poke_interval=self.poke_interval_s or config.schedule.sensor_poke_seconds,
                deadline=time.time() + timeout_s,
                own_run_id=self._claim_id(context),
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        if event["status"] == "success":
            return self._claim(load_model_config(self.dag_id), context, event["result"])
        if event["status"] == "timeout":
            raise AirflowSkipException("trigger conditions unmet: " + "; ".join(event["result"]["reasons"]))
        raise AirflowException(f"checking the trigger conditions failed: {event.get('message')}")

