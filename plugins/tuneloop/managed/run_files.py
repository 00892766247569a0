"""What every managed provider's steps write into the run's folder the same way: the file check's summary and
the evaluation's prediction files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop import storage
from tuneloop.managed.reference import ManagedModel, read_managed
from tuneloop.storage import StoragePath

if TYPE_CHECKING:
    from tuneloop.pipeline import PipelineRun

Replies = Callable[[ManagedModel, list[dict[str, Any]]], list[dict[str, Any]]]


def check_summary(report: Any) -> dict[str, Any]:
    """What check.json keeps of a split's file check (any provider's)."""
    return {"examples": report.examples, "total_tokens": report.total_tokens, "max_tokens": report.max_tokens,
            "billable_tokens_per_epoch": report.billable_tokens_per_epoch, "encoding": report.encoding,
            "warning_counts": dict(report.warning_counts)}


def record_ended_job(job_record: StoragePath, job_id: str, outcome: str, billed_tokens: int | None) -> None:
    """Record what a job that ended without a model spent (:mod:`tuneloop.spent`): the tokens its provider billed,
    else at most the run's estimate. ``job_record``: the run's ``training/<provider>/job.json`` (the trigger knows
    only that), so the training folder is two levels up, with the estimate in its spec.json."""
    from tuneloop import spent

    training = job_record.parent.parent
    if billed_tokens is not None:
        entry = spent.Spent(job_id, float(billed_tokens), "tokens", outcome)
    else:
        estimate = storage.read_json(training / "spec.json")["estimated_training_tokens"]
        entry = spent.Spent(job_id, float(estimate), "tokens", outcome, upper_bound=True)
    spent.record(training, entry)


def evaluation_outputs(run: PipelineRun, replies: Replies) -> None:
    """Write every output of the run's evaluation jobs (``evaluate_jobs.json``) that is not there yet, each whole:
    ``replies`` answers a data file's rows with the job's managed model (any provider)."""
    for job in storage.read_json(run.paths.evaluate_jobs)["jobs"]:
        model = read_managed(_path(run, job["model_dir"]))
        for data, output in zip(job["data"], job["output"], strict=True):
            if _path(run, output).exists():
                continue  # written whole by an earlier attempt
            rows = storage.read_jsonl(_path(run, data))
            predictions = replies(model, rows)
            with storage.staged_output(_path(run, output)) as staged:
                staged.write_text("".join(_json_line(row) for row in predictions))


def _path(run: PipelineRun, uri: str) -> StoragePath:
    """A path the jobs file names (local, or under the run's storage root)."""
    if storage.is_local(uri):
        return Path(uri)
    root = run.config.resolved_storage_root
    return root / uri.removeprefix(storage.uri(root)).lstrip("/")


def _json_line(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"
