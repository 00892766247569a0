"""One Vertex AI supervised tuning job per run, found again by every retry.

The twin of :mod:`tuneloop.managed.openai_jobs` for Vertex AI's Gemini tuning, through ``google-genai`` (the client
the google provider's GenAI hook builds). Nothing is uploaded here: Vertex reads the training files from the run's
folder in Cloud Storage. The job's resource name is written to the run's folder (``training/vertex/job.json``) as
soon as Vertex returns it; a task that died before that finds its job by its labels (``tuneloop_run``,
``tuneloop_model``). So a retried or cleared task re-attaches to the run's job and never starts a second one,
except after a job whose failure or cancellation was already reported: the next attempt is a person's restart.

Errors Vertex will answer the same way again (a refused creation, a failed job) are :class:`JobRefused` /
:class:`JobFailed`, which the operator turns into failures that are not retried. No Airflow import.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tuneloop import storage
from tuneloop.managed.openai_jobs import JobFailed, JobRefused
from tuneloop.storage import StoragePath

if TYPE_CHECKING:
    from google.genai import Client

log = logging.getLogger(__name__)

STATUS = {"JOB_STATE_QUEUED": "queued", "JOB_STATE_PENDING": "pending", "JOB_STATE_RUNNING": "running",
          "JOB_STATE_SUCCEEDED": "succeeded", "JOB_STATE_FAILED": "failed", "JOB_STATE_CANCELLING": "cancelling",
          "JOB_STATE_CANCELLED": "cancelled", "JOB_STATE_PAUSED": "paused", "JOB_STATE_EXPIRED": "expired",
          "JOB_STATE_UPDATING": "updating", "JOB_STATE_PARTIALLY_SUCCEEDED": "failed"}
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "expired"})
MAX_LABEL = 63  # Google's limit on a label's key and value
RETRYABLE_STATUS = (408, 409, 429)

__all__ = ["JobFailed", "JobRefused", "JobRequest", "JobState", "start_or_attach", "cancel", "mark_ended",
           "is_final", "label_value"]


@dataclass(frozen=True)
class JobRequest:
    """What the job is asked to do: ``base_model`` a Gemini model, or a tuned model's resource
    (``projects/.../models/...``) to tune further; hyperparameters None leave Vertex's defaults."""

    base_model: str
    training_uri: str
    validation_uri: str | None
    display_name: str
    labels: Mapping[str, str]
    epoch_count: int | None = None
    learning_rate_multiplier: float | None = None
    adapter_size: int | None = None


@dataclass
class JobRecord:
    """The run's job as kept in its folder."""

    started_at: float
    job_name: str | None = None
    ended_jobs: list[str] = field(default_factory=list)  # failed or cancelled, and reported: never re-attached

    @classmethod
    def read(cls, path: StoragePath) -> JobRecord | None:
        if not path.exists():
            return None
        data = storage.read_json(path)
        return cls(**{k: data[k] for k in ("started_at", "job_name", "ended_jobs") if k in data})

    def write(self, path: StoragePath) -> None:
        storage.write_json(path, asdict(self))


@dataclass(frozen=True)
class JobState:
    """A job as the task and the trigger report it. ``id``: the job's resource name; ``endpoint``: where the tuned
    model is served; ``tuned_model``: the model resource (what a later run tunes further)."""

    id: str
    status: str
    state: str
    base_model: str | None
    tuned_model: str | None
    endpoint: str | None
    billable_tokens: int | None
    steps: int | None
    examples: int | None
    error_code: int | None
    error_message: str | None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def failure(self) -> str:
        """Why the job did not succeed, in Vertex's words."""
        if self.status == "cancelled":
            return f"tuning job {self.id} was cancelled"
        code = "no error code" if self.error_code is None else f"error {self.error_code}"
        return f"tuning job {self.id} {self.status}: {code}: {self.error_message or 'no message'}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def job_state(job: Any) -> JobState:
    """A ``TuningJob`` (the client's object) as a plain :class:`JobState`."""
    state = getattr(job.state, "value", job.state) or "JOB_STATE_UNSPECIFIED"
    tuned = job.tuned_model
    stats = job.tuning_data_stats.supervised_tuning_data_stats if job.tuning_data_stats else None
    return JobState(
        id=job.name, status=STATUS.get(state, "pending"), state=state, base_model=job.base_model,
        tuned_model=tuned.model if tuned else None, endpoint=tuned.endpoint if tuned else None,
        billable_tokens=_int(stats.total_billable_token_count) if stats else None,
        steps=_int(stats.tuning_step_count) if stats else None,
        examples=_int(stats.tuning_dataset_example_count) if stats else None,
        error_code=job.error.code if job.error else None, error_message=job.error.message if job.error else None)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def label_value(text: str) -> str:
    """``text`` as a Google label value: lower-case letters, digits, ``-`` and ``_``, at most 63 characters,
    keeping the end (a run key's hash) so two runs never share one."""
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-")
    return cleaned[-MAX_LABEL:]


def start_or_attach(client: Client, record_path: StoragePath, request: JobRequest,
                    log_line: Callable[[str], None] = log.info) -> JobState:
    """The run's job: the one recorded or found by its labels, else created now."""
    record = JobRecord.read(record_path) or JobRecord(started_at=time.time())
    record.write(record_path)
    if record.job_name and record.job_name not in record.ended_jobs:
        job = job_state(client.tunings.get(name=record.job_name))
        log_line(f"re-attached to tuning job {job.id} ({job.status})")
        return job
    if record.job_name:
        log_line(f"job {record.job_name} ended and was reported: starting a new one")
    job = _existing_job(client, request, record, log_line) or _create(client, request, log_line)
    record.job_name = job.id
    record.write(record_path)
    return job


def _existing_job(client: Client, request: JobRequest, record: JobRecord,
                  log_line: Callable[[str], None]) -> JobState | None:
    """A job an earlier attempt created but could not record (found by the run's labels), unless its end was
    already reported."""
    terms = " AND ".join(f"labels.{key}={value}" for key, value in sorted(request.labels.items()))
    for job in client.tunings.list(config={"filter": terms, "page_size": 20}):
        labels = job.labels or {}
        if job.name not in record.ended_jobs and all(labels.get(k) == v for k, v in request.labels.items()):
            log_line(f"found tuning job {job.name}, created by an earlier attempt")
            return job_state(job)
    return None


def _create(client: Client, request: JobRequest, log_line: Callable[[str], None]) -> JobState:
    from google.genai import errors, types

    config = types.CreateTuningJobConfig(
        tuned_model_display_name=request.display_name, labels=dict(request.labels),
        validation_dataset=types.TuningValidationDataset(gcs_uri=request.validation_uri)
        if request.validation_uri else None,
        epoch_count=request.epoch_count, learning_rate_multiplier=request.learning_rate_multiplier,
        adapter_size=f"ADAPTER_SIZE_{_ADAPTER_WORDS[request.adapter_size]}" if request.adapter_size else None)
    try:
        job = client.tunings.tune(base_model=request.base_model,
                                  training_dataset=types.TuningDataset(gcs_uri=request.training_uri), config=config)
    except errors.APIError as error:
        if not is_final(error):
            raise  # the service's trouble, not the request's: a retry of the task may succeed
        raise JobRefused(f"Vertex AI refused to create the tuning job (HTTP {error.code}, {error.status}): "
                         f"{error.message}") from error
    log_line(f"created tuning job {job.name} on {request.base_model}")
    return job_state(job)


_ADAPTER_WORDS = {1: "ONE", 2: "TWO", 4: "FOUR", 8: "EIGHT", 16: "SIXTEEN"}


def is_final(error: BaseException) -> bool:
    """Whether asking Vertex again gets the same answer: a 4xx other than timeout, conflict and quota (bad request,
    no permission, not found). Connection errors and 5xx are worth a retry."""
    from google.genai import errors

    return isinstance(error, errors.ClientError) and error.code not in RETRYABLE_STATUS


def mark_ended(record_path: StoragePath, job_name: str) -> None:
    """Remember that the job's failure or cancellation was reported: the next attempt starts a new job."""
    record = JobRecord.read(record_path)
    if record is not None and job_name not in record.ended_jobs:
        record.ended_jobs.append(job_name)
        record.write(record_path)


def cancel(client: Client, record_path: StoragePath, log_line: Callable[[str], None] = log.info) -> str | None:
    """Cancel the run's job if it is still running (the task was killed); returns its name."""
    record = JobRecord.read(record_path)
    if record is None or record.job_name is None or record.job_name in record.ended_jobs:
        return None
    job = job_state(client.tunings.get(name=record.job_name))
    if job.done:
        return None
    client.tunings.cancel(name=job.id)
    log_line(f"cancelled tuning job {job.id}")
    mark_ended(record_path, job.id)
    return job.id
