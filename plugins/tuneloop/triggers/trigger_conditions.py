"""Deferrable wait for the fine-tuning trigger conditions, evaluated in the triggerer (no worker slot held)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent


class TriggerConditionsTrigger(BaseTrigger):
    """Poll the store every ``poke_interval`` seconds until the conditions hold or ``deadline`` passes.

    Yields one event: ``success`` (with the trigger result), ``timeout`` (conditions still unmet, with the last
    result) or ``error`` (with the message). ``config`` is the worker's configuration as JSON, so the triggerer
    checks exactly what the task would have checked.
    """

    def __init__(self, *, config: dict[str, Any], poke_interval: float, deadline: float,
                 own_run_id: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.poke_interval = poke_interval
        self.deadline = deadline
        self.own_run_id = own_run_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "tuneloop.triggers.trigger_conditions.TriggerConditionsTrigger",
            {"config": self.config, "poke_interval": self.poke_interval, "deadline": self.deadline,
             "own_run_id": self.own_run_id},
        )

    def _check(self) -> dict[str, Any]:
        from tuneloop.config import TuneloopConfig
        from tuneloop.operators.dag_runs import dag_run_state
        from tuneloop.pipeline import evaluate_trigger

        config = TuneloopConfig.model_validate(self.config)
        return evaluate_trigger(config, now=datetime.now(timezone.utc), force=False, dag_run_state=dag_run_state,
                                own_run_id=self.own_run_id).to_dict()

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            while True:
                result = await asyncio.to_thread(self._check)
                if result["should_trigger"]:
                    yield TriggerEvent({"status": "success", "result": result})
                    return
                remaining = self.deadline - time.time()
                if remaining <= 0:
                    yield TriggerEvent({"status": "timeout", "result": result})
                    return
                self.log.info("trigger conditions unmet, next check in %.0f s: %s", min(self.poke_interval, remaining),
                              "; ".join(result["reasons"]))
                await asyncio.sleep(min(self.poke_interval, remaining))
        except Exception as e:  # one error event instead of a crashed trigger
            yield TriggerEvent({"status": "error", "message": f"{type(e).__name__}: {e}"})
