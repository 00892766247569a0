"""One OpenAI supervised fine-tuning job per run, found again by every retry.

A task that uploads files and creates a job can die at any point: between two calls, or after a call succeeded
but before its answer was kept. So each id is written to the run's folder (``training/openai/job.json``) the
moment the API returns it, and before each call the record is read and the service asked whether the call was
already made: uploads are recognised by their file name (unique to the run) and size, jobs by their metadata
(``tuneloop_run``). A retried or cleared task therefore re-attaches to the run's job; it never uploads twice or
starts a second job. The exception is a job that ended without success and whose end was already reported (the
task failed with OpenAI's error, or was killed and cancelled the job): the attempt after that is a person's
explicit restart, and creates a new job from the files already uploaded.

Everything here takes an ``openai.OpenAI`` client (built by the Airflow side from the ``openai`` connection) and
imports no Airflow. Errors the service will answer the same way again (a refused job creation, a failed job) are
:class:`JobRefused` / :class:`JobFailed`, which the operator turns into failures that are not retried.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop import storage
from tuneloop.storage import StoragePath

if TYPE_CHECKING:
    from openai import OpenAI

log = logging.getLogger(__name__)

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
MAX_SUFFIX = 64  # OpenAI's limit on a job's suffix
NO_NEW_JOBS_FROM = date(2027, 1, 6)  # OpenAI's announced end of new self-serve fine-tuning jobs
WIND_DOWN = ("OpenAI is winding down self-serve fine-tuning: organisations that never fine-tuned, or ran no "
             "fine-tuned model in the last 60 days, can no longer create jobs, and no one can from 2027-01-06 "
             "(fine-tuned models and their base models shut down on 2027-01-14). See the README's 'Managed "
             "fine-tuning' for the alternatives (training.backend: local / kubernetes / gke / gce with a "
             "Hugging Face model)")
UPLOAD_LOOKBACK_S = 3600  # uploads older than the record by more than this cannot be the run's


class JobRefused(RuntimeError):
    """OpenAI refused to create the job (bad request, no access, fine-tuning no longer offered): asking again
    gets the same answer."""


class JobFailed(RuntimeError):
    """The job ended failed or cancelled; the message carries OpenAI's error code and message."""


@dataclass(frozen=True)
class JobRequest:
    """What the job is asked to do. ``hyperparameters``: ``n_epochs``, ``batch_size``,
    ``learning_rate_multiplier``, each a number or ``"auto"``."""

    base_model: str
    suffix: str
    seed: int
    hyperparameters: Mapping[str, int | float | str]
    metadata: Mapping[str, str]


@dataclass
class JobRecord:
    """The run's job as kept in its folder; every id is written as soon as it is known."""

    started_at: float
    training_file: str | None = None
    validation_file: str | None = None
    job_id: str | None = None
    ended_jobs: list[str] = field(default_factory=list)  # failed or cancelled, and reported: never re-attached

    @classmethod
    def read(cls, path: StoragePath) -> JobRecord | None:
        if not path.exists():
            return None
        data = storage.read_json(path)
        return cls(**{k: data[k] for k in ("started_at", "training_file", "validation_file", "job_id",
                                           "ended_jobs") if k in data})

    def write(self, path: StoragePath) -> None:
        storage.write_json(path, asdict(self))


@dataclass(frozen=True)
class JobState:
    """A job as the task and the trigger report it."""

    id: str
    status: str
    model: str
    fine_tuned_model: str | None
    trained_tokens: int | None
    estimated_finish: int | None
    result_files: tuple[str, ...]
    error_code: str | None
    error_message: str | None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def failure(self) -> str:
        """Why the job did not succeed, in OpenAI's words."""
        if self.status == "cancelled":
            return f"fine-tuning job {self.id} was cancelled"
        code = self.error_code or "no error code"
        return f"fine-tuning job {self.id} failed: {code}: {self.error_message or 'no message'}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def job_state(job: Any) -> JobState:
    """A ``FineTuningJob`` (the client's object) as a plain :class:`JobState`."""
    error = getattr(job, "error", None)
    return JobState(id=job.id, status=job.status, model=job.model, fine_tuned_model=job.fine_tuned_model,
                    trained_tokens=job.trained_tokens, estimated_finish=job.estimated_finish,
                    result_files=tuple(job.result_files or ()),
                    error_code=getattr(error, "code", None) if error else None,
                    error_message=getattr(error, "message", None) if error else None)


def suffix_for(run_key: str) -> str:
    """The job's suffix (it becomes part of the fine-tuned model's name): the run key, lower-case letters, digits
    and dashes, at most 64 characters, keeping the key's hash at the end so two runs never share one."""
    stem, _, digest = run_key.rpartition("-")
    stem = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")
    return f"{stem[:MAX_SUFFIX - len(digest) - 1]}-{digest}" if stem else digest


def start_or_attach(client: OpenAI, record_path: StoragePath, *, training: Path, validation: Path | None,
                    request: JobRequest, log_line: Callable[[str], None] = log.info) -> JobState:
    """The run's job: the one recorded or found at the service, else uploaded and created now."""
    record = JobRecord.read(record_path) or JobRecord(started_at=time.time())
    record.write(record_path)
    if record.job_id and record.job_id not in record.ended_jobs:
        job = job_state(client.fine_tuning.jobs.retrieve(record.job_id))
        log_line(f"re-attached to fine-tuning job {job.id} ({job.status})")
        return job
    if record.job_id:
        log_line(f"job {record.job_id} ended and was reported: starting a new one from the same files")
    for kind, path in (("training_file", training), ("validation_file", validation)):
        if path is not None and getattr(record, kind) is None:
            setattr(record, kind, _upload(client, path, _upload_name(request, kind), record.started_at, log_line))
            record.write(record_path)
    job = _existing_job(client, request, record) or _create(client, request, record, log_line)
    record.job_id = job.id
    record.write(record_path)
    return job


def _upload_name(request: JobRequest, kind: str) -> str:
    """Unique to the model and run (two models' DAGs share run ids), so a retry finds only its own upload."""
    model = request.metadata.get("tuneloop_model", "")
    return f"tuneloop-{model}-{request.suffix}-{'train' if kind == 'training_file' else 'validation'}.jsonl"


def _upload(client: OpenAI, path: Path, name: str, since: float, log_line: Callable[[str], None]) -> str:
    size = path.stat().st_size
    for uploaded in _recent_uploads(client, since - UPLOAD_LOOKBACK_S):
        if uploaded.filename == name and uploaded.bytes == size:
            log_line(f"{name} was uploaded by an earlier attempt: {uploaded.id}")
            return uploaded.id
    with path.open("rb") as handle:
        uploaded = client.files.create(file=(name, handle), purpose="fine-tune")
    log_line(f"uploaded {name} ({size:,} bytes): {uploaded.id}")
    return uploaded.id


def _recent_uploads(client: OpenAI, since: float) -> Iterable[Any]:
    """Fine-tuning files uploaded after ``since``, newest first (the listing is paged; stop at older ones)."""
    for uploaded in client.files.list(purpose="fine-tune", order="desc"):
        if uploaded.created_at < since:
            return
        yield uploaded


def _existing_job(client: OpenAI, request: JobRequest, record: JobRecord) -> JobState | None:
    """A job an earlier attempt created but could not record (found by the run's metadata), unless its end was
    already reported."""
    for job in client.fine_tuning.jobs.list(metadata=dict(request.metadata), limit=20):
        if job.id not in record.ended_jobs:
            return job_state(job)
    return None


def _create(client: OpenAI, request: JobRequest, record: JobRecord, log_line: Callable[[str], None]) -> JobState:
    import openai

    try:
        job = client.fine_tuning.jobs.create(
            model=request.base_model, training_file=record.training_file, validation_file=record.validation_file,
            suffix=request.suffix, seed=request.seed, metadata=dict(request.metadata),
            method={"type": "supervised", "supervised": {"hyperparameters": dict(request.hyperparameters)}})
    except openai.APIStatusError as error:
        if not is_final(error):
            raise  # the service's trouble, not the request's: a retry of the task may succeed
        raise JobRefused(refusal_message(error.status_code, error.code, _error_text(error))) from error
    log_line(f"created fine-tuning job {job.id} on {request.base_model} (suffix {request.suffix})")
    return job_state(job)


def is_final(error: BaseException) -> bool:
    """Whether asking OpenAI again gets the same answer: a 4xx other than timeout, conflict and rate limit (bad
    request, bad key, no permission, not found). Connection errors and 5xx are worth a retry."""
    import openai

    return isinstance(error, openai.APIStatusError) and 400 <= error.status_code < 500 \
        and error.status_code not in (408, 409, 429)


def refusal_message(status: int, code: str | None, message: str, today: date | None = None) -> str:
    """OpenAI's refusal in its own words, and the wind-down when it is the likely cause."""
    text = f"OpenAI refused to create the fine-tuning job (HTTP {status}, {code or 'no error code'}): {message}"
    today = today or datetime.now(UTC).date()
    if status == 403 or today >= NO_NEW_JOBS_FROM or "no longer" in message.lower():
        text += f". {WIND_DOWN}"
    return text


def _error_text(error: Any) -> str:
    """The error body's message (the client's ``message`` prefixes the status and repeats the body)."""
    body = error.body if isinstance(error.body, Mapping) else {}
    return str(body.get("message") or error.message)


def mark_ended(record_path: StoragePath, job_id: str) -> None:
    """Remember that the job's failure or cancellation was reported: the next attempt starts a new job."""
    record = JobRecord.read(record_path)
    if record is not None and job_id not in record.ended_jobs:
        record.ended_jobs.append(job_id)
        record.write(record_path)


def cancel(client: OpenAI, record_path: StoragePath, log_line: Callable[[str], None] = log.info) -> str | None:
    """Cancel the run's job if it is still running (the task was killed); returns its id."""
    record = JobRecord.read(record_path)
    if record is None or record.job_id is None or record.job_id in record.ended_jobs:
        return None
    job = job_state(client.fine_tuning.jobs.retrieve(record.job_id))
    if job.done:
        return None
    client.fine_tuning.jobs.cancel(job.id)
    log_line(f"cancelled fine-tuning job {job.id}")
    mark_ended(record_path, job.id)
    return job.id


def delete_uploads(client: OpenAI, record_path: StoragePath, log_line: Callable[[str], None] = log.info) -> None:
    """Delete the run's uploaded files once its job succeeded: they hold people's conversations, and OpenAI keeps
    files until they are deleted. Best effort (a file already gone, or a failed call, is logged)."""
    import openai

    record = JobRecord.read(record_path)
    for file_id in (record.training_file, record.validation_file) if record else ():
        if file_id is None:
            continue
        try:
            client.files.delete(file_id)
            log_line(f"deleted uploaded file {file_id}")
        except openai.NotFoundError:
            pass
        except openai.OpenAIError as error:
            log_line(f"could not delete uploaded file {file_id} ({type(error).__name__}: {error}); delete it by hand")


def delete_model(client: OpenAI, model: str) -> bool:
    """Delete a fine-tuned model; False when it was gone already (a retried retention)."""
    import openai

    try:
        client.models.delete(model)
    except openai.NotFoundError:
        return False
    return True


def unseen_events(newest_first: Sequence[Any], last_seen: str | None) -> list[Any]:
    """The events after ``last_seen``, oldest first, from a listing that gives them newest first."""
    fresh = []
    for event in newest_first:
        if event.id == last_seen:
            break
        fresh.append(event)
    return fresh[::-1]


def event_line(event: Any) -> str:
    stamp = datetime.fromtimestamp(event.created_at, UTC).strftime("%H:%M:%S")
    return f"[openai {stamp} {event.level}] {event.message}"


def result_metrics(content: bytes) -> list[dict[str, float]]:
    """The rows of a job's result file (``step,train_loss,train_accuracy,valid_loss,...``), empty cells left
    out. OpenAI serves the CSV base64-encoded; plain CSV is accepted too."""
    text = _decoded(content)
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        values = {}
        for key, value in row.items():
            if key and value not in (None, ""):
                try:
                    values[key.strip()] = float(value)
                except ValueError:
                    continue
        if "step" in values:
            rows.append(values)
    return rows


def _decoded(content: bytes) -> str:
    stripped = content.strip()
    if stripped.startswith(b"step"):
        return stripped.decode("utf-8", "replace")
    try:
        return base64.b64decode(stripped, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return stripped.decode("utf-8", "replace")
