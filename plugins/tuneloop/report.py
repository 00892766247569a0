"""The decision record of a run: what happened, with every number and reason, in JSON and in plain words.

Written by the ``report`` step whatever happened (skipped, deployed, rejected, held, rolled back, failed), logged
to the run's MLflow run, and used to close the run in the store: its cases are consumed only when the run reached
a decision, so a failed run leaves them available for the next one.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuneloop.pipeline import PipelineRun

FINISHED = {"deployed", "rejected", "held", "rolled_back"}


def classify(outcome: dict[str, Any]) -> str:
    """The run's status from its step results and task states."""
    states = outcome.get("states") or {}
    if states.get("check_trigger") == "skipped":
        return "skipped"
    if outcome.get("rollback"):
        return "rolled_back"
    if outcome.get("deploy") and states.get("post_deploy_check") == "success":
        return "deployed"
    if outcome.get("reject"):
        return "rejected"
    if outcome.get("hold"):
        return "held"
    return "failed"


def build_record(run: "PipelineRun", outcome: dict[str, Any], status: str) -> dict[str, Any]:
    gate = outcome.get("validate") or {}
    registered = outcome.get("register") or {}
    return {
        "run_id": run.run_id,
        "model_name": run.config.mlflow.model_name,
        "status": status,
        "reason_started": run.params.reason,
        "written_at": datetime.now(timezone.utc).isoformat(),
        "trigger": outcome.get("check_trigger"),
        "dataset": outcome.get("export_dataset"),
        "training": (outcome.get("train") or {}).get("metrics"),
        "candidate_version": registered.get("version"),
        "production_before": registered.get("production_version"),
        "gate": gate,
        "thresholds": run.config.validation.model_dump(),
        "deployment": outcome.get("deploy") or outcome.get("reject") or outcome.get("hold"),
        "post_deploy_check": outcome.get("post_deploy_check"),
        "rollback": outcome.get("rollback"),
        "task_states": outcome.get("states"),
    }


def summary_lines(record: dict[str, Any]) -> list[str]:
    """The record in plain words, one line per fact; also the body of decision.md."""
    lines = [f"Run {record['run_id']}: {record['status'].upper()} (started: {record['reason_started']})"]
    trigger = record.get("trigger") or {}
    lines += [f"trigger: {r}" for r in trigger.get("reasons", [])]
    dataset = record.get("dataset") or {}
    if dataset:
        lines.append(f"dataset {dataset['dataset_id']}: {dataset['counts']}")
    gate = record.get("gate") or {}
    if gate:
        lines.append(f"gate verdict: {gate.get('verdict')}")
        lines += [f"gate: {r}" for r in gate.get("reasons", [])]
    if record.get("candidate_version"):
        lines.append(f"candidate: version {record['candidate_version']} "
                     f"(production before: {record.get('production_before')})")
    for key in ("deployment", "rollback"):
        event = record.get(key)
        if event:
            lines.append(f"{event['action']}: {event['from_version']} -> {event['to_version']} ({event['reason']})")
    check = record.get("post_deploy_check") or {}
    lines += [f"post-deploy: {r}" for r in check.get("reasons", [])]
    if record["status"] == "failed":
        failed = [t for t, s in (record.get("task_states") or {}).items() if s in ("failed", "upstream_failed")]
        lines.append(f"failed steps: {', '.join(failed) or 'unknown'}; cases stay available for the next run")
    return lines


def to_markdown(record: dict[str, Any]) -> str:
    lines = summary_lines(record)
    body = "\n".join(f"- {line}" for line in lines[1:])
    return f"# {lines[0]}\n\n{body}\n\n```json\n{json.dumps(record, indent=2, default=str)}\n```\n"


def write_decision_record(run: "PipelineRun", outcome: dict[str, Any]) -> dict[str, Any]:
    """Write decision.json/.md, log them to MLflow, close the run in the store; return the record + summary."""
    from tuneloop import tracking
    from tuneloop.pipeline import _write_json

    status = classify(outcome)
    record = build_record(run, outcome, status)
    _write_json(run.paths.root / "decision.json", record)
    (run.paths.root / "decision.md").write_text(to_markdown(record))
    if status != "skipped":  # a skipped run has nothing worth an MLflow run
        mlflow_run = run.mlflow_run_id()
        tracking.log_artifact(run.config, mlflow_run, run.paths.root / "decision.json", "decision")
        tracking.log_artifact(run.config, mlflow_run, run.paths.root / "decision.md", "decision")
        tracking.set_tags(run.config, mlflow_run, {"status": status})
    dataset_id = (record.get("dataset") or {}).get("dataset_id")
    run.store.finish_training_run(run.run_id, status, dataset_id=dataset_id,
                                  candidate_version=record.get("candidate_version"),
                                  summary={"lines": summary_lines(record)})
    if status in FINISHED and dataset_id:
        run.store.mark_consumed(_trained_case_ids(run, dataset_id), run.run_id)
    return {"status": status, "summary": summary_lines(record), "record": str(run.paths.root / "decision.json")}


def _trained_case_ids(run: "PipelineRun", dataset_id: str) -> list[str]:
    """Train cases and their duplicates/superseded twins; eval cases stay new (not trained on: next run may)."""
    from tuneloop.datasets import load_manifest

    return list(load_manifest(run.config.resolved_storage_root / "datasets" / dataset_id).case_ids_to_consume())
