"""The ``openai`` backend's steps of a run: check, start or re-attach, collect, evaluate.

Called by :class:`tuneloop.pipeline.PipelineRun` (prepare and results) and by the managed operator (job and
evaluation), with a client the Airflow side built from the ``openai`` connection. The run's folder holds:

    training/spec.json            what was asked (base model, hyperparameters, suffix, the file check's figures)
    training/openai/check.json    the file check of both splits (examples, tokens, warnings)
    training/openai/job.json      the job's record: file ids and job id, written as soon as each is known
    training/openai/results.json  the result file's metrics per step, and the job as it ended
    training/model/               managed_model.json: the fine-tuned model id (what the registry versions)
    training/metrics.json         written last: present = training finished

Nothing is uploaded until both splits pass OpenAI's rules; the estimate of billable tokens is made from the
same check.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop import storage
from tuneloop.config import CHAT_EXPORTED_ROW_FIELDS
from tuneloop.managed.openai_jobs import (JobFailed, JobRequest, JobState, delete_uploads, mark_ended, result_metrics,
                                          start_or_attach)
from tuneloop.managed.run_files import check_summary, evaluation_outputs, record_ended_job
from tuneloop.managed.reference import ManagedModel, is_managed, read_managed, write_managed
from tuneloop.storage import StoragePath

if TYPE_CHECKING:
    from openai import OpenAI

    from tuneloop.pipeline import PipelineRun

LogLine = Callable[[str], None]
MAX_TAG = 500  # characters of an error kept in a version tag


def folder(run: PipelineRun) -> StoragePath:
    return run.paths.training / "openai"


def record_path(run: PipelineRun) -> StoragePath:
    return folder(run) / "job.json"


def base_model(run: PipelineRun) -> ManagedModel:
    """The OpenAI model this run fine-tunes: production's (read from the base model the run published), else
    ``training.openai.base_model``. A production version trained elsewhere cannot be fine-tuned by OpenAI."""
    if not is_managed(run.paths.base_model):
        source = run.base_model_source()
        raise ValueError(f"training.backend=openai fine-tunes OpenAI models, but production version "
                         f"{source.get('version')} is a Hugging Face model trained by tuneloop's trainer: use a "
                         f"trainer backend (local, kubernetes, gke, gce) for it, or register an OpenAI model as "
                         f"production first")
    return read_managed(run.paths.base_model)


def configured_base(run: PipelineRun) -> ManagedModel:
    return ManagedModel(provider="openai", model=run.config.training.openai.base_model)


def served_price_name(model: ManagedModel) -> str:
    """The name its requests are priced by (``costs.prices``): a fine-tuned model's own id (``ft:...``)."""
    return model.model


def priced_model(model: ManagedModel) -> str:
    """The model whose training price applies: the one fine-tuned, or the base of a fine-tuned one
    (``ft:<base>:<org>:<suffix>:<id>``: training it further bills at the base's price)."""
    return model.model.split(":")[1] if model.model.startswith("ft:") else model.model


def prepare(run: PipelineRun, dataset_id: str) -> dict[str, Any]:
    """Check both splits against OpenAI's rules (nothing is uploaded otherwise) and write the spec; ``done`` when
    the job already succeeded and its results are in the run's folder."""
    from tuneloop.openai_dataset import ChatFileRefused, check_chat_file, estimate_training_tokens

    settings, base = run.config.training.openai, base_model(run)
    local_keys = ("id", *CHAT_EXPORTED_ROW_FIELDS, *run.config.dataset.slice_fields)
    reports = {}
    for split, min_examples in (("train", settings.min_examples), ("eval", 1)):
        with storage.local_file(run.dataset_dir(dataset_id) / f"{split}.jsonl") as path:
            reports[split] = check_chat_file(path, model=base.base_model or base.model,
                                             max_example_tokens=settings.max_example_tokens,
                                             min_examples=min_examples, local_keys=local_keys)
        if not reports[split].ok:
            raise ChatFileRefused(reports[split])
    epochs = n_epochs(run)
    checks: dict[str, Any] = {split: check_summary(report) for split, report in reports.items()}
    checks["estimated_training_tokens"] = estimate_training_tokens(reports["train"],
                                                                   None if epochs == "auto" else int(epochs))
    storage.write_json(folder(run) / "check.json", checks)
    storage.write_json(run.paths.spec, {
        "backend": "openai", "base_model": base.model, "dataset_id": dataset_id,
        "dataset_uri": storage.uri(run.dataset_dir(dataset_id)),
        "output_uri": storage.uri(run.paths.training), "request": _request_dict(job_request(run, base)),
        "estimated_training_tokens": checks["estimated_training_tokens"]})
    return {"backend": "openai", "args": [], "done": (run.paths.training / "metrics.json").exists(),
            "estimated_training_tokens": checks["estimated_training_tokens"]}


def n_epochs(run: PipelineRun) -> int | str:
    return run.params.epochs or run.config.training.openai.n_epochs


def job_request(run: PipelineRun, base: ManagedModel) -> JobRequest:
    from tuneloop.managed.openai_jobs import suffix_for
    from tuneloop.pipeline import run_key

    settings = run.config.training.openai
    return JobRequest(
        base_model=base.model, suffix=suffix_for(run_key(run.run_id)), seed=run.config.training.seed,
        hyperparameters={"n_epochs": n_epochs(run), "batch_size": settings.batch_size,
                         "learning_rate_multiplier": settings.learning_rate_multiplier},
        metadata={"tuneloop_model": run.config.name[:512], "tuneloop_run": run_key(run.run_id)[:512]})


def _request_dict(request: JobRequest) -> dict[str, Any]:
    return {"base_model": request.base_model, "suffix": request.suffix, "seed": request.seed,
            "hyperparameters": dict(request.hyperparameters), "metadata": dict(request.metadata)}


def start(run: PipelineRun, client: OpenAI, log_line: LogLine) -> JobState:
    """Upload the checked splits (only what OpenAI accepts of each row) and create the job, or re-attach."""
    from tuneloop.openai_dataset import write_upload_file

    spec = storage.read_json(run.paths.spec)
    with tempfile.TemporaryDirectory(prefix="tuneloop-openai-") as tmp:
        for split in ("train", "eval"):
            with storage.local_file(run.dataset_dir(spec["dataset_id"]) / f"{split}.jsonl") as source:
                write_upload_file(source, Path(tmp) / f"{split}.jsonl")
        return start_or_attach(client, record_path(run), training=Path(tmp) / "train.jsonl",
                               validation=Path(tmp) / "eval.jsonl", request=JobRequest(**spec["request"]),
                               log_line=log_line)


def finish(run: PipelineRun, client: OpenAI, job: JobState, log_line: LogLine) -> dict[str, Any]:
    """Collect a job that ended: on success its metrics (to MLflow too) and the fine-tuned model as the run's
    ``training/model``; otherwise :class:`JobFailed` with OpenAI's error (and the record notes the end was
    reported, so a person's clear of the task starts a new job)."""
    from tuneloop import tracking

    if job.status != "succeeded" or not job.fine_tuned_model:
        mark_ended(record_path(run), job.id)
        record_ended_job(record_path(run), job.id, job.status, job.trained_tokens)
        raise JobFailed(job.failure())
    steps = []
    for file_id in job.result_files:
        steps.extend(result_metrics(client.files.content(file_id).read()))
    storage.write_json(folder(run) / "results.json", {"job": job.to_dict(), "steps": steps})
    mlflow_run = run.mlflow_run_id()
    tracking.log_metric_history(run.config, mlflow_run, steps, prefix="openai_")
    base = read_managed(run.paths.base_model)
    write_managed(run.paths.model, ManagedModel(provider="openai", model=job.fine_tuned_model,
                                                base_model=base.model, job_id=job.id))
    last = steps[-1] if steps else {}
    metrics = {"trained_tokens": job.trained_tokens, "steps": int(last.get("step", 0)),
               "train_loss": last.get("train_loss"), "valid_loss": _last(steps, "valid_loss"),
               "job_id": job.id, "fine_tuned_model": job.fine_tuned_model, "base_model": base.model}
    tracking.log_params(run.config, mlflow_run, {"openai_job_id": job.id, "openai_model": job.fine_tuned_model,
                                                 "openai_base_model": base.model})
    delete_uploads(client, record_path(run), log_line)
    storage.write_json(run.paths.training / "metrics.json", metrics)  # last: present = finished
    log_line(f"fine-tuned model {job.fine_tuned_model}: {job.trained_tokens} trained tokens, {len(steps)} steps")
    return metrics


def _last(steps: list[dict[str, float]], key: str) -> float | None:
    return next((step[key] for step in reversed(steps) if key in step), None)


def evaluate(run: PipelineRun, client: OpenAI, log_line: LogLine) -> None:
    """The prepared evaluation jobs (candidate and production on the eval split and every suite) through chat
    completions: each output written whole, so a retry only redoes what is missing."""
    from tuneloop.managed.chat_api import ReplySettings, reply_rows

    settings = run.config.training.openai

    def replies(model: ManagedModel, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return reply_rows(client, rows, ReplySettings(model=model.model, concurrency=settings.concurrency,
                                                      max_reply_tokens=settings.max_reply_tokens,
                                                      seed=run.config.training.seed), log_line)

    evaluation_outputs(run, replies)


def retire_models(registry: Any, archived: list[str], client: Callable[[], OpenAI], log_line: LogLine) -> list[str]:
    """Delete at OpenAI the fine-tuned models of versions that retention archived (``keep_previous_versions``):
    production and previous are never archived, and only models a tuneloop job made (tagged
    ``provider_job_id``: a model registered with ``bootstrap --openai-model`` may serve others too) are deleted,
    each once (the version is tagged ``provider_model_deleted``). Best effort: the deploy already happened, so a
    delete that fails (no permission: deleting needs the organisation's Owner role; the API down) is logged and
    tagged ``provider_model_delete_failed`` with the reason, for a person to finish. Returns the deleted ids.
    ``client`` is only called when there is something to delete."""
    from tuneloop.managed.openai_jobs import delete_model

    retiring = {}
    for version in archived:
        tags = registry.get_version(version).tags
        mine = tags.get("provider") == "openai" and tags.get("provider_job_id")
        if mine and tags.get("provider_model", "").startswith("ft:") and tags.get("provider_model_deleted") != "true":
            retiring[version] = tags["provider_model"]
    deleted = []
    for version, model in retiring.items():
        try:
            found = delete_model(client(), model)
        except Exception as error:  # the deploy stands; the model stays at OpenAI until a person deletes it
            reason = f"{type(error).__name__}: {error}"[:MAX_TAG]
            registry.set_tags(version, {"provider_model_delete_failed": reason})
            log_line(f"version {version} was archived, but deleting its fine-tuned model {model} failed ({reason}); "
                     f"delete it by hand: openai api models.delete -i {model}")
            continue
        registry.set_tags(version, {"provider_model_deleted": "true"})
        deleted.append(model)
        log_line(f"version {version} was archived: {'deleted' if found else 'already gone:'} fine-tuned model {model}")
    return deleted
