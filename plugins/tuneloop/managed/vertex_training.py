"""The ``vertex`` backend's steps of a run: check, write Vertex's files, start or re-attach, collect, evaluate.

Called by :class:`tuneloop.pipeline.PipelineRun` (prepare and results) and by the managed operator (job and
evaluation), with a ``google.genai`` client the Airflow side built from the Google Cloud connection. The run's
folder (in a bucket: Vertex reads the files from there) holds:

    training/spec.json             what was asked (base model, hyperparameters, labels, the file check's figures)
    training/vertex/check.json     the file check of both splits (examples, estimated tokens, warnings)
    training/vertex/train.jsonl    the training split in Vertex's format (what the job reads)
    training/vertex/validation.jsonl
    training/vertex/job.json       the job's record: its resource name, written as soon as Vertex returns it
    training/vertex/results.json   the job as it ended
    training/model/                managed_model.json: the tuned model's endpoint (what the registry versions)
    training/metrics.json          written last: present = training finished

Nothing is written for Vertex until both splits pass its rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tuneloop import storage
from tuneloop.config import CHAT_EXPORTED_ROW_FIELDS
from tuneloop.managed.run_files import check_summary, evaluation_outputs, record_ended_job
from tuneloop.managed.reference import ManagedModel, is_managed, read_managed, write_managed
from tuneloop.managed.vertex_jobs import JobFailed, JobRequest, JobState, label_value, mark_ended, start_or_attach
from tuneloop.storage import StoragePath

if TYPE_CHECKING:
    from google.genai import Client

    from tuneloop.pipeline import PipelineRun

LogLine = Callable[[str], None]
SPLITS = {"train": "train.jsonl", "eval": "validation.jsonl"}


def folder(run: PipelineRun) -> StoragePath:
    return run.paths.training / "vertex"


def record_path(run: PipelineRun) -> StoragePath:
    return folder(run) / "job.json"


def base_model(run: PipelineRun) -> ManagedModel:
    """The Gemini model this run tunes: production's (read from the base model the run published), else
    ``training.vertex.base_model``. A production version trained elsewhere cannot be tuned by Vertex."""
    if is_managed(run.paths.base_model):
        model = read_managed(run.paths.base_model)
        if model.provider == "vertex":
            return model
        what = f"an {model.provider} model ({model.model})"
    else:
        what = "a Hugging Face model trained by tuneloop's trainer"
    version = run.base_model_source().get("version")
    raise ValueError(f"training.backend=vertex tunes Gemini models on Vertex AI, but production version {version} "
                     f"is {what}: use that model's backend, or register a Gemini model as production first "
                     f"(tuneloop bootstrap --vertex-model)")


def configured_base(run: PipelineRun) -> ManagedModel:
    return ManagedModel(provider="vertex", model=run.config.training.vertex.base_model)


def priced_model(model: ManagedModel) -> str:
    """The model whose training price applies: the Gemini model under any tuning."""
    return model.base_model or model.model


def served_price_name(model: ManagedModel) -> str:
    """The name its requests are priced by (``costs.prices``): a tuned Gemini model's endpoint bills at its base
    model's rates."""
    return model.base_model or model.model


def prepare(run: PipelineRun, dataset_id: str) -> dict[str, Any]:
    """Check both splits against Vertex's rules (nothing is written for Vertex otherwise) and write the spec;
    ``done`` when the job already succeeded and its results are in the run's folder."""
    from tuneloop.vertex_dataset import (MAX_VALIDATION_EXAMPLES, VertexFileRefused, check_vertex_file,
                                         estimate_training_tokens)

    settings, base = run.config.training.vertex, base_model(run)
    local_keys = ("id", *CHAT_EXPORTED_ROW_FIELDS, *run.config.dataset.slice_fields)
    reports = {}
    limits = {"train": {"min_examples": settings.min_examples},
              "eval": {"min_examples": 1, "max_examples": MAX_VALIDATION_EXAMPLES}}
    for split, limit in limits.items():
        with storage.local_file(run.dataset_dir(dataset_id) / f"{split}.jsonl") as path:
            reports[split] = check_vertex_file(path, model=priced_model(base), local_keys=local_keys,
                                               max_example_tokens=settings.max_example_tokens,
                                               train_earlier_replies=settings.train_earlier_replies, **limit)
        if not reports[split].ok:
            raise VertexFileRefused(reports[split])
    epochs = run.params.epochs or settings.epoch_count
    checks: dict[str, Any] = {split: check_summary(report) for split, report in reports.items()}
    checks["estimated_training_tokens"] = estimate_training_tokens(reports["train"], epochs)
    storage.write_json(folder(run) / "check.json", checks)
    storage.write_json(run.paths.spec, {
        "backend": "vertex", "base_model": base.model, "dataset_id": dataset_id,
        "dataset_uri": storage.uri(run.dataset_dir(dataset_id)), "output_uri": storage.uri(run.paths.training),
        "request": _request_dict(job_request(run, base, epochs)),
        "estimated_training_tokens": checks["estimated_training_tokens"]})
    return {"backend": "vertex", "args": [], "done": (run.paths.training / "metrics.json").exists(),
            "estimated_training_tokens": checks["estimated_training_tokens"]}


def job_request(run: PipelineRun, base: ManagedModel, epochs: int) -> JobRequest:
    """Tune production's tuned model further (Vertex's continuous tuning), or the Gemini model itself."""
    from tuneloop.pipeline import run_key

    settings, key = run.config.training.vertex, run_key(run.run_id)
    return JobRequest(
        base_model=base.resource or base.model, training_uri=storage.uri(folder(run) / SPLITS["train"]),
        validation_uri=storage.uri(folder(run) / SPLITS["eval"]), display_name=f"{run.config.name}-{key}"[:128],
        labels={"tuneloop_model": label_value(run.config.name), "tuneloop_run": label_value(key)},
        epoch_count=epochs, learning_rate_multiplier=settings.learning_rate_multiplier,
        adapter_size=settings.adapter_size)


def _request_dict(request: JobRequest) -> dict[str, Any]:
    return {"base_model": request.base_model, "training_uri": request.training_uri,
            "validation_uri": request.validation_uri, "display_name": request.display_name,
            "labels": dict(request.labels), "epoch_count": request.epoch_count,
            "learning_rate_multiplier": request.learning_rate_multiplier, "adapter_size": request.adapter_size}


def start(run: PipelineRun, client: Client, log_line: LogLine) -> JobState:
    """Write the checked splits in Vertex's format into the run's folder and create the job, or re-attach."""
    from tuneloop.vertex_dataset import write_vertex_file

    spec = storage.read_json(run.paths.spec)
    for split, name in SPLITS.items():
        target = folder(run) / name
        if target.exists():
            continue  # written whole by an earlier attempt (staged, then one object)
        with storage.local_file(run.dataset_dir(spec["dataset_id"]) / f"{split}.jsonl") as source, \
                storage.staged_output(target) as staged:
            written = write_vertex_file(source, staged,
                                        train_earlier_replies=run.config.training.vertex.train_earlier_replies)
        log_line(f"wrote {written} {split} examples in Vertex's format to {storage.uri(target)}")
    return start_or_attach(client, record_path(run), JobRequest(**spec["request"]), log_line)


def finish(run: PipelineRun, client: Client, job: JobState, log_line: LogLine) -> dict[str, Any]:
    """Collect a job that ended: on success the tuned model's endpoint as the run's ``training/model``; otherwise
    :class:`JobFailed` with Vertex's error (and the record notes the end was reported)."""
    from tuneloop import tracking

    if job.status != "succeeded" or not job.endpoint:
        mark_ended(record_path(run), job.id)
        record_ended_job(record_path(run), job.id, job.status, job.billable_tokens)
        raise JobFailed(job.failure())
    storage.write_json(folder(run) / "results.json", {"job": job.to_dict()})
    base = read_managed(run.paths.base_model)
    gemini = priced_model(base)
    write_managed(run.paths.model, ManagedModel(provider="vertex", model=job.endpoint, base_model=gemini,
                                                job_id=job.id, resource=job.tuned_model))
    metrics = {"trained_tokens": job.billable_tokens, "steps": job.steps, "examples": job.examples,
               "job_id": job.id, "tuned_model": job.tuned_model, "endpoint": job.endpoint, "base_model": gemini}
    mlflow_run = run.mlflow_run_id()
    tracking.log_params(run.config, mlflow_run, {"vertex_job": job.id, "vertex_tuned_model": job.tuned_model,
                                                 "vertex_endpoint": job.endpoint, "vertex_base_model": gemini})
    storage.write_json(run.paths.training / "metrics.json", metrics)  # last: present = finished
    log_line(f"tuned model {job.tuned_model} serving at {job.endpoint}: {job.billable_tokens} billable tokens, "
             f"{job.steps} steps")
    return metrics


def evaluate(run: PipelineRun, client: Client, log_line: LogLine) -> None:
    """The prepared evaluation jobs (candidate and production on the eval split and every suite) through
    ``generateContent``: each output written whole, so a retry only redoes what is missing."""
    from tuneloop.managed.chat_api import ReplySettings
    from tuneloop.managed.gemini_api import reply_rows

    settings = run.config.training.vertex

    def replies(model: ManagedModel, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return reply_rows(client, rows, ReplySettings(model=model.model, concurrency=settings.concurrency,
                                                      max_reply_tokens=settings.max_reply_tokens,
                                                      seed=run.config.training.seed), log_line)

    evaluation_outputs(run, replies)
