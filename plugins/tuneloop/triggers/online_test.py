"""Wait for a canary's online test in the triggerer: every ``poll_seconds`` the judged requests of both arms since
the canary started are counted in the store, the sequential test looks (:mod:`tuneloop.online_test`), and the
wait ends as soon as it decides -- a clearly worse canary at once, a better one once both arms have
``min_samples`` judged requests, production kept at the deadline -- or when the canary was ended outside it
(``tuneloop rollback``, the rollback DAG: the store's deployment history says so), which the run reports as
rolled back.

Every look goes into the task's log (the counts, the error rates, the always-valid p-value). The trigger reads
the model's configuration by DAG id, as the triggerer has the same plugins and configuration as the workers; no
store URL (which may hold a password) is serialized. A triggerer restart starts the wait again from the state the
task deferred with: the counts are read again from the store (every served request is there), and the running
minimum of the p-value restarts from ``previous_p`` -- never lower than it was, so a restart can only make the
test more careful, never promote on evidence counted twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

MAX_FAILED_LOOKS = 10  # looks in a row the store may fail before the wait ends with an error (the task retries)


class OnlineTestTrigger(BaseTrigger):
    """The online test of ``canary_version`` against ``production_version`` over requests served since ``since``
    (ISO time), deciding at the latest at ``deadline`` (epoch seconds)."""

    def __init__(self, *, dag_id: str, canary_version: str, production_version: str, since: str, deadline: float,
                 poll_seconds: float, previous_p: float = 1.0, looks: int = 0) -> None:
        super().__init__()
        self.dag_id = dag_id
        self.canary_version = canary_version
        self.production_version = production_version
        self.since = since
        self.deadline = deadline
        self.poll_seconds = poll_seconds
        self.previous_p = previous_p
        self.looks = looks

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("tuneloop.triggers.online_test.OnlineTestTrigger",
                {"dag_id": self.dag_id, "canary_version": self.canary_version,
                 "production_version": self.production_version, "since": self.since, "deadline": self.deadline,
                 "poll_seconds": self.poll_seconds, "previous_p": self.previous_p, "looks": self.looks})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            settings, store = await asyncio.to_thread(self._open)
        except Exception as error:  # noqa: BLE001 - a broken configuration: the task fails with it
            yield TriggerEvent({"status": "error", "message": f"{type(error).__name__}: {error}"})
            return
        failed = 0
        while True:
            try:
                decision = await asyncio.to_thread(self._look, settings, store)
                failed = 0
            except Exception as error:  # noqa: BLE001 - a store outage: look again later, give up after a while
                failed += 1
                self.log.warning("online test: look failed (%d in a row): %s: %s", failed, type(error).__name__,
                                 error)
                if failed >= MAX_FAILED_LOOKS:
                    yield TriggerEvent({"status": "error", "message": f"{type(error).__name__}: {error}"})
                    return
                decision = {"action": "wait"}
            if decision["action"] != "wait":
                yield TriggerEvent({"status": "decided", "decision": decision, "looks": self.looks,
                                    "since": self.since})
                return
            await asyncio.sleep(self.poll_seconds)

    def _open(self) -> tuple[Any, Any]:
        from tuneloop.config import load_model_config
        from tuneloop.store import ErrorCaseStore

        config = load_model_config(self.dag_id)
        self.model_name = config.mlflow.model_name
        return config.deployment.canary, ErrorCaseStore.from_config(config)

    def _look(self, settings: Any, store: Any) -> dict[str, Any]:
        from tuneloop.deployment import HISTORY_LIMIT
        from tuneloop.online_test import decide, look_at
        from tuneloop.rollout import canary_from_history

        running = canary_from_history(store.deployment_history(self.model_name, limit=HISTORY_LIMIT))
        if running is None or running.get("version") != self.canary_version:
            self.log.info("online test: canary %s was ended outside it; the wait ends", self.canary_version)
            return {"action": "ended_elsewhere", "look": None,
                    "reason": f"canary {self.canary_version} was ended outside the online test (tuneloop rollback, "
                              "the rollback DAG)"}
        current = look_at(store, self.production_version, self.canary_version, since=datetime.fromisoformat(self.since),
                          previous_p=self.previous_p, mixing_sd=settings.mixing_sd)
        decision = decide(current, alpha=settings.alpha, min_samples=settings.min_samples,
                          deadline_passed=time.time() >= self.deadline)
        self.previous_p, self.looks = current.always_valid_p, self.looks + 1
        self.log.info("online test, look %d: %s", self.looks, decision.reason)
        return decision.to_dict()
