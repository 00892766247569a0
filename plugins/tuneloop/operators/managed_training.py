"""The managed backends' runner in a trainer step group (:mod:`tuneloop.operators.trainer_step`): ``openai``
(OpenAI's fine-tuning API) and ``vertex`` (Vertex AI's Gemini tuning).

``train``: hand the checked splits to the provider and create the run's job, or re-attach to it (retries and
clears never start a second one), then wait in the triggerer and collect the tuned model. A refused job creation
or a failed job fails the task with the provider's error and is not retried: asking again gets the same answer
(so does a missing connection, a refused request, a job that is gone). Killing the task cancels the job; in
Airflow 3.3 clearing a task that is waiting is a kill too (its trigger's ``on_kill`` runs), so the attempt after
it starts a new job, while the retry of an attempt that died (a lost worker) re-attaches to the job.

``evaluate``: production and the candidate answer the eval split and every suite through the provider's API.

What differs per provider (its client from an Airflow connection, its trigger, its errors) is a
:class:`ManagedProvider`; the steps themselves are :func:`tuneloop.managed.steps`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException
from airflow.triggers.base import BaseTrigger

from tuneloop.operators.base import PipelineStepOperator


class ManagedProvider(ABC):
    """The Airflow side of one provider: a client from its connection, its trigger, which errors are final."""

    name: str

    def settings(self, run: Any) -> Any:
        return getattr(run.config.training, self.name)

    @abstractmethod
    def client(self, run: Any) -> Any:
        """A client for the provider's API from its Airflow connection."""

    @abstractmethod
    def trigger(self, run: Any, job: Any) -> BaseTrigger:
        """The trigger that waits for ``job`` in the triggerer."""

    @abstractmethod
    def job_state(self, job: dict[str, Any]) -> Any:
        """A job as a trigger event carried it."""

    @abstractmethod
    def is_final(self, error: BaseException) -> bool:
        """Whether the provider answers the same way when asked again (no retry)."""

    @abstractmethod
    def final_errors(self) -> tuple[type[BaseException], ...]:
        """The errors that fail the task without retries."""

    @abstractmethod
    def cancel(self, client: Any, record: Any, log_line: Any) -> str | None:
        """Cancel the run's job if it still runs; its id, or None."""


class OpenAIProvider(ManagedProvider):
    name = "openai"

    def client(self, run: Any) -> Any:
        from tuneloop.hooks.openai_connection import openai_client

        return openai_client(self.settings(run))

    def trigger(self, run: Any, job: Any) -> BaseTrigger:
        from tuneloop import storage
        from tuneloop.managed import openai_training
        from tuneloop.triggers.openai_finetune import OpenAIFineTuningTrigger

        settings = self.settings(run)
        return OpenAIFineTuningTrigger(
            conn_id=settings.conn_id, job_id=job.id, poll_seconds=settings.poll_seconds,
            deadline=time.time() + settings.timeout_hours * 3600,
            record_uri=storage.uri(openai_training.record_path(run)), storage_conn_id=run.config.storage_conn_id)

    def job_state(self, job: dict[str, Any]) -> Any:
        from tuneloop.managed.openai_jobs import JobState

        return JobState(**{**job, "result_files": tuple(job["result_files"])})

    def is_final(self, error: BaseException) -> bool:
        from tuneloop.managed.openai_jobs import is_final

        return is_final(error)

    def final_errors(self) -> tuple[type[BaseException], ...]:
        from tuneloop.hooks.openai_connection import OpenAIConnectionError
        from tuneloop.managed.openai_jobs import JobRefused

        return JobRefused, OpenAIConnectionError

    def cancel(self, client: Any, record: Any, log_line: Any) -> str | None:
        from tuneloop.managed.openai_jobs import cancel

        return cancel(client, record, log_line)


class VertexProvider(ManagedProvider):
    name = "vertex"

    def client(self, run: Any) -> Any:
        from tuneloop.hooks.vertex_connection import vertex_client

        return vertex_client(self.settings(run))

    def trigger(self, run: Any, job: Any) -> BaseTrigger:
        from tuneloop import storage
        from tuneloop.managed import vertex_training
        from tuneloop.triggers.vertex_tuning import VertexTuningTrigger

        settings = self.settings(run)
        return VertexTuningTrigger(
            settings=settings.model_dump(mode="json"), job_name=job.id,
            deadline=time.time() + settings.timeout_hours * 3600,
            record_uri=storage.uri(vertex_training.record_path(run)), storage_conn_id=run.config.storage_conn_id)

    def job_state(self, job: dict[str, Any]) -> Any:
        from tuneloop.managed.vertex_jobs import JobState

        return JobState(**job)

    def is_final(self, error: BaseException) -> bool:
        from tuneloop.managed.vertex_jobs import is_final

        return is_final(error)

    def final_errors(self) -> tuple[type[BaseException], ...]:
        from tuneloop.hooks.vertex_connection import VertexConnectionError
        from tuneloop.managed.vertex_jobs import JobRefused

        return JobRefused, VertexConnectionError

    def cancel(self, client: Any, record: Any, log_line: Any) -> str | None:
        from tuneloop.managed.vertex_jobs import cancel

        return cancel(client, record, log_line)


def _cancel(provider: ManagedProvider, client: Any, record: Any, log_line: Any) -> str | None:
    """Cancel the run's job if it still runs, and record what it spent: at most the run's estimate (a job
    cancelled this moment has no billed count yet)."""
    from tuneloop.managed.run_files import record_ended_job

    cancelled = provider.cancel(client, record, log_line)
    if cancelled:
        record_ended_job(record, cancelled, "cancelled", None)
    return cancelled


PROVIDERS: dict[str, ManagedProvider] = {p.name: p for p in (OpenAIProvider(), VertexProvider())}


class ManagedTrainerOperator(PipelineStepOperator):
    """Run a trainer step on a managed backend (``openai``, ``vertex``)."""

    ui_color = "#e6f4ea"

    def __init__(self, *, step: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step
        self._cancel: Any = None

    def execute(self, context: Context) -> Any:
        run = self.pipeline(context)
        provider = PROVIDERS[run.backend()]
        try:
            return self._execute(run, provider, context)
        except provider.final_errors() as error:
            raise AirflowFailException(str(error)) from error
        except Exception as error:
            if provider.is_final(error):  # a 4xx the provider answers every time: no retry
                raise AirflowFailException(f"{provider.name} refused the request: {error}") from error
            raise

    def _execute(self, run: Any, provider: ManagedProvider, context: Context) -> Any:
        from tuneloop.managed import steps

        client = provider.client(run)
        if self.step == "evaluate":
            steps(provider.name).evaluate(run, client, self.log.info)
            return None
        record = steps(provider.name).record_path(run)
        self._cancel = lambda: _cancel(provider, client, record, self.log.info)
        job = steps(provider.name).start(run, client, self.log.info)
        if job.done:
            return self._finish(context, job.to_dict())
        self.log.info("waiting for %s job %s (%s) in the triggerer, polling every %gs", provider.name, job.id,
                      job.status, provider.settings(run).poll_seconds)
        self.defer(trigger=provider.trigger(run, job), method_name="execute_complete")

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        from tuneloop.managed import steps

        if event["status"] == "error":
            message = f"waiting for the tuning job {event['job_id']} failed: {event['message']}"
            raise RuntimeError(message) if event.get("retryable", True) else AirflowFailException(message)
        if event["status"] == "timeout":
            run = self.pipeline(context)
            provider = PROVIDERS[run.backend()]
            cancelled = _cancel(provider, provider.client(run), steps(provider.name).record_path(run), self.log.info)
            raise AirflowFailException(
                f"tuning job {event['job']['id']} was still {event['job']['status']} after "
                f"training.{provider.name}.timeout_hours={provider.settings(run).timeout_hours:g}: "
                f"{'cancelled' if cancelled else 'it ended meanwhile; clear the task to collect it'}")
        return self._finish(context, event["job"])

    def _finish(self, context: Context, job: dict[str, Any]) -> dict[str, Any]:
        from tuneloop.managed import steps
        from tuneloop.managed.openai_jobs import JobFailed

        run = self.pipeline(context)
        provider = PROVIDERS[run.backend()]
        try:
            return steps(provider.name).finish(run, provider.client(run), provider.job_state(job), self.log.info)
        except JobFailed as error:
            raise AirflowFailException(str(error)) from error

    def on_kill(self) -> None:
        if self._cancel is not None:
            self._cancel()
