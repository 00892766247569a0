"""Wait for a Vertex AI tuning job in the triggerer (the google provider's tuning operator sleeps in a worker
slot for the whole job; this waits in the triggerer instead).

Every poll reads the job; each change of its state goes into the task's log (Vertex has no event stream for
tuning jobs: its console and Vertex AI Experiments show the curves). One event ends the wait: ``done`` with the
job (succeeded, failed or cancelled: the task decides), ``timeout``, or ``error``. Killing the deferred task
cancels the job (:meth:`on_kill`), and the run's record notes that this job's end was reported.

The client is synchronous (the hook's credentials and connection lookups are), so each call runs in a thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class VertexTuningTrigger(BaseTrigger):
    """Poll tuning job ``job_name`` every ``settings["poll_seconds"]`` until it ends or ``deadline`` (epoch
    seconds) passes. ``settings``: ``training.vertex`` as a dict (connection, project, location, endpoint);
    ``record_uri`` (+ ``storage_conn_id``): the run's job record."""

    def __init__(self, *, settings: dict[str, Any], job_name: str, deadline: float, record_uri: str,
                 storage_conn_id: str | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.job_name = job_name
        self.deadline = deadline
        self.record_uri = record_uri
        self.storage_conn_id = storage_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("tuneloop.triggers.vertex_tuning.VertexTuningTrigger",
                {"settings": self.settings, "job_name": self.job_name, "deadline": self.deadline,
                 "record_uri": self.record_uri, "storage_conn_id": self.storage_conn_id})

    def _client(self) -> Any:
        from tuneloop.config import VertexTuningConfig
        from tuneloop.hooks.vertex_connection import vertex_client

        return vertex_client(VertexTuningConfig.model_validate(self.settings))

    def _job(self, client: Any) -> Any:
        from tuneloop.managed.vertex_jobs import job_state

        return job_state(client.tunings.get(name=self.job_name))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            client = await asyncio.to_thread(self._client)
            seen = None
            while True:
                job = await asyncio.to_thread(self._job, client)
                if job.state != seen:
                    seen = job.state
                    self.log.info(f"tuning job {job.id} is {job.state}")
                if job.done:
                    yield TriggerEvent({"status": "done", "job": job.to_dict()})
                    return
                remaining = self.deadline - time.time()
                if remaining <= 0:
                    yield TriggerEvent({"status": "timeout", "job": job.to_dict()})
                    return
                await asyncio.sleep(min(float(self.settings["poll_seconds"]), remaining))
        except Exception as error:  # one error event instead of a crashed trigger
            from tuneloop.hooks.vertex_connection import VertexConnectionError
            from tuneloop.managed.vertex_jobs import is_final

            final = is_final(error) or isinstance(error, VertexConnectionError)  # no job, no access, no connection
            yield TriggerEvent({"status": "error", "job_id": self.job_name, "retryable": not final,
                                "message": f"{type(error).__name__}: {error}"})

    async def on_kill(self) -> None:
        """The task was killed by a person: cancel the job, and note that its end is known."""
        from tuneloop.managed.run_files import record_ended_job
        from tuneloop.managed.vertex_jobs import mark_ended
        from tuneloop.storage import storage_root

        client = await asyncio.to_thread(self._client)
        job = await asyncio.to_thread(self._job, client)
        if job.status == "succeeded":
            return  # the next attempt collects its model
        if not job.done:
            await asyncio.to_thread(client.tunings.cancel, name=self.job_name)
            self.log.info(f"cancelled tuning job {self.job_name}: the task was killed")
        record = storage_root(self.record_uri, Path(self.record_uri), self.storage_conn_id)
        await asyncio.to_thread(mark_ended, record, self.job_name)
        ended = job.status if job.done else "cancelled"
        await asyncio.to_thread(record_ended_job, record, self.job_name, ended, job.billable_tokens)
