"""The ``openai`` backend's runner in a trainer step group (:mod:`tuneloop.operators.trainer_step`).

``train``: upload the checked splits and create the run's fine-tuning job, or re-attach to it (retries and clears
never start a second one), then wait in the triggerer (:class:`OpenAIFineTuningTrigger`: the job's events stream
into this task's log) and collect the fine-tuned model. A refused job creation or a failed job fails the task
with OpenAI's error and is not retried: asking again gets the same answer (so does a missing connection or key,
a refused request, a job that is gone). Killing the task cancels the job; in Airflow 3.3 clearing a task that is
waiting is a kill too (its trigger's ``on_kill`` runs), so the attempt after it starts a new job from the files
already uploaded, while the retry of an attempt that died (a lost worker) re-attaches to the job.

``evaluate``: production and the candidate answer the eval split and every suite through chat completions.
"""

from __future__ import annotations

import time
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from tuneloop.operators.base import PipelineStepOperator


class ManagedTrainerOperator(PipelineStepOperator):
    """Run a trainer step on a managed backend (``openai``)."""

    ui_color = "#e6f4ea"

    def __init__(self, *, step: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step
        self._cancel: Any = None

    def execute(self, context: Context) -> Any:
        from tuneloop.hooks.openai_connection import OpenAIConnectionError
        from tuneloop.managed.openai_jobs import JobRefused, is_final

        try:
            return self._execute(context)
        except (JobRefused, OpenAIConnectionError) as error:
            raise AirflowFailException(str(error)) from error
        except Exception as error:
            if is_final(error):  # a 4xx OpenAI answers every time: no retry
                raise AirflowFailException(f"OpenAI refused the request: {error}") from error
            raise

    def _execute(self, context: Context) -> Any:
        from tuneloop import storage
        from tuneloop.hooks.openai_connection import openai_client
        from tuneloop.managed import openai_training
        from tuneloop.managed.openai_jobs import cancel
        from tuneloop.triggers.openai_finetune import OpenAIFineTuningTrigger

        run = self.pipeline(context)
        settings = run.config.training.openai
        client = openai_client(settings)
        if self.step == "evaluate":
            openai_training.evaluate(run, client, self.log.info)
            return None
        record = openai_training.record_path(run)
        self._cancel = lambda: cancel(client, record, self.log.info)
        job = openai_training.start(run, client, self.log.info)
        if job.done:
            return self._finish(context, job.to_dict())
        self.log.info("waiting for fine-tuning job %s (%s) in the triggerer, polling every %gs", job.id, job.status,
                      settings.poll_seconds)
        self.defer(trigger=OpenAIFineTuningTrigger(
            conn_id=settings.conn_id, job_id=job.id, poll_seconds=settings.poll_seconds,
            deadline=time.time() + settings.timeout_hours * 3600, record_uri=storage.uri(record),
            storage_conn_id=run.config.storage_conn_id), method_name="execute_complete")

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        from tuneloop.hooks.openai_connection import openai_client
        from tuneloop.managed import openai_training
        from tuneloop.managed.openai_jobs import cancel

        if event["status"] == "error":
            message = f"waiting for fine-tuning job {event['job_id']} failed: {event['message']}"
            raise RuntimeError(message) if event.get("retryable", True) else AirflowFailException(message)
        if event["status"] == "timeout":
            run = self.pipeline(context)
            cancelled = cancel(openai_client(run.config.training.openai), openai_training.record_path(run),
                               self.log.info)
            raise AirflowFailException(
                f"fine-tuning job {event['job']['id']} was still {event['job']['status']} after "
                f"training.openai.timeout_hours={run.config.training.openai.timeout_hours:g}: "
                f"{'cancelled' if cancelled else 'it ended meanwhile; clear the task to collect it'}")
        return self._finish(context, event["job"])

    def _finish(self, context: Context, job: dict[str, Any]) -> dict[str, Any]:
        from tuneloop.hooks.openai_connection import openai_client
        from tuneloop.managed import openai_training
        from tuneloop.managed.openai_jobs import JobFailed, JobState

        run = self.pipeline(context)
        state = JobState(**{**job, "result_files": tuple(job["result_files"])})
        try:
            return openai_training.finish(run, openai_client(run.config.training.openai), state, self.log.info)
        except JobFailed as error:
            raise AirflowFailException(str(error)) from error

    def on_kill(self) -> None:
        if self._cancel is not None:
            self._cancel()
