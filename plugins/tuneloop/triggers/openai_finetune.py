"""Wait for an OpenAI fine-tuning job in the triggerer (the OpenAI provider has a trigger for batches, none for
fine-tuning; this one is modelled on its ``OpenAIBatchTrigger``).

Every poll reads the job and its new events; each event goes into the task's log as it arrives (the triggerer's
log is the task's), and so does the job's ``estimated_finish`` whenever OpenAI changes it. One event ends the
wait: ``done`` with the job (succeeded, failed or cancelled: the task decides), ``timeout``, or ``error``.

Killing the deferred task (mark failed, clear) cancels the job (:meth:`on_kill`), and the run's record notes that
this job's end was reported, so the next attempt starts a new one. A triggerer restart is not a kill: the wait
moves to another triggerer and the job runs on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class OpenAIFineTuningTrigger(BaseTrigger):
    """Poll job ``job_id`` through Airflow connection ``conn_id`` every ``poll_seconds`` until it ends or
    ``deadline`` (epoch seconds) passes. ``record_uri`` (+ ``storage_conn_id``): the run's job record."""

    def __init__(self, *, conn_id: str, job_id: str, poll_seconds: float, deadline: float, record_uri: str,
                 storage_conn_id: str | None = None, last_event: str | None = None) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.job_id = job_id
        self.poll_seconds = poll_seconds
        self.deadline = deadline
        self.record_uri = record_uri
        self.storage_conn_id = storage_conn_id
        self.last_event = last_event

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("tuneloop.triggers.openai_finetune.OpenAIFineTuningTrigger",
                {"conn_id": self.conn_id, "job_id": self.job_id, "poll_seconds": self.poll_seconds,
                 "deadline": self.deadline, "record_uri": self.record_uri, "storage_conn_id": self.storage_conn_id,
                 "last_event": self.last_event})

    async def _client(self) -> Any:
        from airflow.providers.openai.hooks.openai import OpenAIHook

        return await OpenAIHook(conn_id=self.conn_id).aget_conn()

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from tuneloop.managed.openai_jobs import event_line, job_state, unseen_events

        try:
            client = await self._client()
            finish = None
            while True:
                job = job_state(await client.fine_tuning.jobs.retrieve(self.job_id))
                events = await self._events_since_last(client)
                for event in unseen_events(events, self.last_event):
                    self.log.info(event_line(event))
                self.last_event = events[0].id if events else self.last_event
                if job.estimated_finish and job.estimated_finish != finish:
                    finish = job.estimated_finish
                    at = datetime.fromtimestamp(finish, UTC).strftime("%Y-%m-%d %H:%M:%S")
                    self.log.info(f"job {job.id} is {job.status}; OpenAI estimates it finishes at {at} UTC")
                if job.done:
                    yield TriggerEvent({"status": "done", "job": job.to_dict()})
                    return
                remaining = self.deadline - time.time()
                if remaining <= 0:
                    yield TriggerEvent({"status": "timeout", "job": job.to_dict()})
                    return
                await asyncio.sleep(min(self.poll_seconds, remaining))
        except Exception as error:  # one error event instead of a crashed trigger
            from airflow.sdk.exceptions import AirflowNotFoundException

            from tuneloop.managed.openai_jobs import is_final

            final = is_final(error) or isinstance(error, AirflowNotFoundException)  # no key, no job, no connection
            yield TriggerEvent({"status": "error", "job_id": self.job_id, "retryable": not final,
                                "message": f"{type(error).__name__}: {error}"})

    async def _events_since_last(self, client: Any) -> list[Any]:
        """The job's events newer than the last one logged, newest first (OpenAI lists them so), every page."""
        events = []
        async for event in client.fine_tuning.jobs.list_events(self.job_id, limit=100):
            if event.id == self.last_event:
                break
            events.append(event)
        return events

    async def on_kill(self) -> None:
        """The task was killed by a person: cancel the job, and note that its end is known."""
        from tuneloop.managed.openai_jobs import mark_ended
        from tuneloop.managed.run_files import record_ended_job
        from tuneloop.storage import storage_root

        client = await self._client()
        job = await client.fine_tuning.jobs.retrieve(self.job_id)
        if job.status == "succeeded":
            return  # the next attempt collects its model
        if job.status not in ("failed", "cancelled"):
            await client.fine_tuning.jobs.cancel(self.job_id)
            self.log.info(f"cancelled fine-tuning job {self.job_id}: the task was killed")
        record = storage_root(self.record_uri, Path(self.record_uri), self.storage_conn_id)
        await asyncio.to_thread(mark_ended, record, self.job_id)
        ended = "cancelled" if job.status not in ("failed", "cancelled") else job.status
        await asyncio.to_thread(record_ended_job, record, self.job_id, ended, job.trained_tokens)
