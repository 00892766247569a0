"""The decision record of a run: what happened, with every number and reason, in JSON and in plain words.

Written by the ``report`` step whatever happened (skipped, not approved, deployed, rejected, insufficient
evidence, declined, rolled back, failed), logged to the run's MLflow run, attached to the candidate's model
version, and used to close the run in the store: its cases are consumed only when the run reached a decision, so
a failed run leaves them available for the next one.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from tuneloop.history import version_label

if TYPE_CHECKING:
    from tuneloop.pipeline import PipelineRun

log = logging.getLogger(__name__)

CONSUMING = {"deployed", "rejected", "declined", "rolled_back"}


def classify(outcome: dict[str, Any]) -> str:
    """The run's status from its step results and task states."""
    states = outcome.get("states") or {}
    if states.get("check_trigger") == "skipped":
        return "skipped"
    if _declined(outcome.get("approve_training")):
        return "not_approved"
    if _declined(outcome.get("approve_budget")):
        return "over_budget"
    if outcome.get("rollback"):  # the placement undone: a green version dropped was never in production
        return "rejected" if outcome["rollback"].get("action") == "reject" else "rolled_back"
    placed = outcome.get("deploy") or {}
    if placed.get("strategy", "replace") == "replace":
        if placed and states.get("post_deploy_check") == "success":
            return "deployed"
    elif outcome.get("conclude"):
        return _concluded(outcome["conclude"])
    elif (outcome.get("online_test") or {}).get("action") == "ended_elsewhere":
        return "rolled_back"  # a person ended the canary (tuneloop rollback, the rollback DAG)
    if outcome.get("reject"):
        gate = outcome.get("validate") or {}
        return "insufficient_evidence" if gate.get("verdict") == "insufficient_evidence" else "rejected"
    if _declined(outcome.get("approve_deploy")):
        return "declined"
    return "failed"


def _concluded(event: dict[str, Any]) -> str:
    """A staged rollout's end: production moved (a green switch, a promoted canary), or a canary that ended
    without it -- found worse (rolled back) or no difference shown by the deadline (insufficient evidence)."""
    if event.get("action") == "deploy":
        return "deployed"
    return "rolled_back" if event.get("details", {}).get("canary_end") == "rolled_back" else "insufficient_evidence"


def _declined(approval: dict[str, Any] | None) -> bool:
    return bool(approval) and not approval.get("approved")


def build_record(run: PipelineRun, outcome: dict[str, Any], status: str) -> dict[str, Any]:
    gate = outcome.get("validate") or {}
    registered = outcome.get("register") or {}
    return {
        "run_id": run.run_id,
        "model_name": run.config.mlflow.model_name,
        "model": run.config.name,
        "task": run.config.task,
        "status": status,
        "reason_started": run.params.reason,
        "written_at": datetime.now(timezone.utc).isoformat(),
        "trigger": outcome.get("check_trigger"),
        "approvals": {"training": outcome.get("approve_training"), "budget": outcome.get("approve_budget"),
                      "deployment": outcome.get("approve_deploy")},
        "costs": run_costs(run, outcome),
        "dataset": outcome.get("export_dataset"),
        "training": (outcome.get("train") or {}).get("metrics"),
        "candidate_version": registered.get("version"),
        "production_before": registered.get("production_version"),
        "gate": gate,
        "regression": outcome.get("regression_suite"),
        "thresholds": {"validation": run.config.validation.model_dump(mode="json"),
                       "regression": run.config.regression.model_dump(mode="json", exclude={"suites"})},
        "deployment": outcome.get("deploy") or outcome.get("reject") or outcome.get("declined"),
        "post_deploy_check": outcome.get("post_deploy_check"),
        "online_test": outcome.get("online_test"),
        "rollout": outcome.get("conclude"),
        "rollback": outcome.get("rollback"),
        "task_states": outcome.get("states"),
    }


def run_costs(run: PipelineRun, outcome: dict[str, Any]) -> dict[str, Any]:
    """What the run cost and what its candidate would save (:mod:`tuneloop.costs`): the budget check made before
    training, the training's actual cost (once training started, whether or not it finished), production's and
    the candidate's inference cost per request where the evaluation recorded token usage, and seed 004's ROI once
    the gate has compared them."""
    from tuneloop.costs import roi

    costs: dict[str, Any] = {"budget": outcome.get("check_budget")}
    if outcome.get("train") or (outcome.get("states") or {}).get("train.prepare") == "success":
        costs["training"] = run.training_cost().to_dict()  # a failed training too: what it spent counts
    costs["inference"] = run.inference_costs() if outcome.get("evaluate") else {}
    rates = _error_rates(outcome.get("validate") or {})
    if "training" in costs and rates is not None:
        production, candidate = (costs["inference"].get(tag, {}).get("usd") for tag in ("production", "candidate"))
        costs["roi"] = roi(training_usd=costs["training"]["usd"], expected_requests_per_month=run.expected_requests(),
                           error_rate_production=rates[0], error_rate_candidate=rates[1],
                           value_per_error_avoided_usd=run.config.costs.value_per_error_avoided_usd,
                           request_cost_production_usd=production, request_cost_candidate_usd=candidate).to_dict()
    return costs


def _error_rates(gate: dict[str, Any]) -> tuple[float, float] | None:
    """Share of requests production and the candidate get wrong: speech, utterances not transcribed exactly;
    chat, one minus the primary metric's mean (exact match: the share answered wrong)."""
    for base, cand in (("baseline_exact_match_rate", "candidate_exact_match_rate"),
                       ("baseline_mean", "candidate_mean")):
        if gate.get(base) is not None and gate.get(cand) is not None:
            return 1 - float(gate[base]), 1 - float(gate[cand])
    return None


def summary_lines(record: dict[str, Any]) -> list[str]:
    """The record in plain words, one line per fact; printed in the task log and the top of decision.md."""
    lines = [f"Run {record['run_id']}: {record['status'].upper()} (started: {record['reason_started']})"]
    trigger = record.get("trigger") or {}
    lines += [f"trigger: {r}" for r in trigger.get("reasons", [])]
    for kind, approval in (record.get("approvals") or {}).items():
        if approval:
            lines.append(f"{kind} approval: {approval.get('summary', approval)}")
    dataset = record.get("dataset") or {}
    if dataset:
        lines.append(f"dataset {dataset['dataset_id']}: {dataset['counts']}")
    lines += _cost_lines(record.get("costs") or {})
    gate = record.get("gate") or {}
    if gate:
        lines.append(f"gate verdict: {gate.get('verdict')}")
        lines += [f"gate: {r}" for r in gate.get("reasons", [])]
    regression = record.get("regression") or {}
    for suite in regression.get("results", []):
        lines += [f"regression: {r}" for r in suite.get("reasons", [])]
    if regression and not regression.get("passed"):
        lines.append("regression verdict: failed")
    if record.get("candidate_version"):
        lines.append(f"candidate: version {record['candidate_version']} "
                     f"(production before: {record.get('production_before') or 'none'})")
    for key in ("deployment", "rollback"):
        event = record.get(key)
        if event:
            lines.append(f"{event['action']}: {version_label(event['from_version'])} -> "
                         f"{version_label(event['to_version'])} ({event['reason']})")
    check = record.get("post_deploy_check") or {}
    lines += [f"post-deploy: {r}" for r in check.get("reasons", [])]
    online = record.get("online_test") or {}
    if online:
        lines.append(f"online test: {online['action']} ({online['reason']})")
        winner = online.get("winner")
        if winner:
            scores = ", ".join(f"{arm} {score:.3f}" for arm, score in winner["scores"].items())
            lines.append(f"seed 004's weighted winner (reported, not decided on): {winner['winner']} ({scores}; "
                         f"weights {winner['weights']})")
    rollout = record.get("rollout") or {}
    if rollout:
        lines.append(f"rollout: {rollout['action']} {version_label(rollout['from_version'])} -> "
                     f"{version_label(rollout['to_version'])} ({rollout['reason']})")
    if record["status"] == "failed":
        failed = [t for t, s in (record.get("task_states") or {}).items() if s in ("failed", "upstream_failed")]
        lines.append(f"failed steps: {', '.join(failed) or 'unknown'}; cases stay available for the next run")
    return lines


def _cost_lines(costs: dict[str, Any]) -> list[str]:
    from tuneloop.costs import payback_label

    lines = []
    budget = costs.get("budget") or {}
    if budget and not budget.get("within"):
        lines += [f"budget: {reason}" for reason in budget.get("reasons", [])]
    training = costs.get("training")
    if training:
        usd = "unknown" if training["usd"] is None else f"{'at most ' if training.get('upper_bound') else ''}" \
            f"${training['usd']:,.2f}"
        lines.append(f"training cost: {usd} ({training['basis']})")
    for tag, cost in (costs.get("inference") or {}).items():
        if cost.get("usd") is not None:
            lines.append(f"inference cost per request, {tag}: ${cost['usd']:.6f} ({cost['basis']})")
    result = costs.get("roi")
    if result:
        payback = payback_label(result)
        lines.append(f"ROI: {result['errors_avoided_per_month']:,.0f} errors avoided a month over "
                     f"{result['expected_requests_per_month']:,.0f} requests, worth "
                     f"${result['error_value_per_month_usd']:,.2f}; payback {payback}")
    return lines


def to_markdown(record: dict[str, Any]) -> str:
    """decision.md: the summary, then tables a reviewer reads (metrics, statistics, slices, churn, suites)."""
    from tuneloop.tasks import task_for

    lines = summary_lines(record)
    parts = [f"# {lines[0]}", "", *(f"- {line}" for line in lines[1:])]
    parts += task_for(record.get("task", "speech_to_text")).record_sections(record)
    parts += ["", "## Thresholds", "", "```json", json.dumps(record.get("thresholds"), indent=2), "```"]
    parts += ["", "## Full record", "", "```json", json.dumps(record, indent=2, default=str), "```", ""]
    return "\n".join(parts)


def speech_sections(record: dict[str, Any]) -> list[str]:
    """A speech record's tables: WER/CER, the statistics, slices, churn and suites."""
    parts: list[str] = []
    gate = record.get("gate") or {}
    if gate.get("wer"):
        parts += ["", "## Metrics (eval split)", "", _metrics_table(gate)]
        parts += ["", "## Statistics", "", _statistics_table(gate)]
    if gate.get("slices"):
        parts += ["", "## Slices", "", _slices_table(gate["slices"])]
    if gate.get("churn"):
        parts += ["", "## Churn", "", _churn_table(gate["churn"])]
    regression = record.get("regression") or {}
    if regression.get("results"):
        parts += ["", "## Regression suites", "", _suites_table(regression["results"])]
    return parts


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (cells formatted as the record's other tables)."""
    return _table(header, rows)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value).replace("|", "\\|")


def _metrics_table(gate: dict[str, Any]) -> str:
    rows = []
    for metric in ("wer", "cer"):
        m = gate[metric]
        boot = m.get("bootstrap") or {}
        rows.append([metric.upper(), m["baseline"], m["candidate"], m["improvement"],
                     f"[{_cell(boot.get('ci_low'))}, {_cell(boot.get('ci_high'))}]", boot.get("p_value")])
    return _table(["metric", "production", "candidate", "improvement", f"{1 - gate.get('alpha', 0.05):.0%} CI",
                   "p (one-sided)"], rows)


def _statistics_table(gate: dict[str, Any]) -> str:
    wer = (gate.get("wer") or {}).get("bootstrap") or {}
    bound = _cell(wer.get("lower_bound"))
    rows = [["paired bootstrap (WER)", wer.get("n"), wer.get("p_value"),
             f"{wer.get('resamples')} resamples, alpha {wer.get('alpha')}, one-sided lower bound {bound}"]]
    for key in ("wilcoxon", "matched_pairs", "mcnemar"):
        test = gate.get(key)
        if test:
            detail = (f"fixed {test['fixed']}, broken {test['broken']}" if key == "mcnemar"
                      else f"z {_cell(test['z'])}" if key == "matched_pairs" else f"{test['n_nonzero']} non-tied")
            rows.append([test.get("test", key), test.get("n"), test.get("p_value"), detail])
    return _table(["test", "n", "p", "detail"], rows)


def _slices_table(slices: list[dict[str, Any]]) -> str:
    rows = [[f"{s['field']}={s['value']}", s["n"], s["baseline_wer"], s["candidate_wer"], s["wer_increase"],
             "gated" if s["gated"] else "report only", ("pass" if s["passed"] else "FAIL") if s["gated"] else "-"]
            for s in slices]
    return _table(["slice", "n", "production WER", "candidate WER", "change", "role", "result"], rows)


def _churn_table(churn: dict[str, Any]) -> str:
    rows = [[kind, churn[kind], ", ".join(e["id"] for e in churn.get("examples", {}).get(kind, [])[:5])]
            for kind in ("fixed", "newly_broken", "improved", "worsened", "unchanged")]
    return _table(["kind", "count", "examples"], rows)


def _suites_table(results: list[dict[str, Any]]) -> str:
    rows = [[r["name"], r["type"], r["n"], r["baseline_wer"], r["wer"], r["wer_degradation"], r["failed_samples"],
             "pass" if r["passed"] else ("FAIL" if r["blocking"] else "fail (report only)")] for r in results]
    header = ["suite", "type", "n", "baseline WER", "candidate WER", "WER change (absolute)", "failed samples",
              "result"]
    return _table(header, rows)


def write_decision_record(run: PipelineRun, outcome: dict[str, Any]) -> dict[str, Any]:
    """Close the run in the store, then write decision.json/.md and log them to MLflow and the model version.

    The store's verdict comes first: it is what lets the next run start, so MLflow being down (or anything after
    it) fails this task, visibly, without leaving the run "in progress". Every step is idempotent (retries).
    """
    from tuneloop import storage, tracking

    status = classify(outcome)
    record = build_record(run, outcome, status)
    close_run(run, record)
    storage.write_json(run.paths.root / "decision.json", record)
    storage.write_text(run.paths.root / "decision.md", to_markdown(record))
    # every run gets its record in MLflow, a skipped one too: "why did nothing happen on Sunday?" has an answer
    mlflow_run = run.mlflow_run_id()
    record["mlflow_run"] = {"id": mlflow_run, "url": tracking.run_url(run.config, mlflow_run, run.config.mlflow.ui_url)}
    run.store.finish_training_run(run.run_id, status, summary={"mlflow_run": record["mlflow_run"]})
    storage.write_json(run.paths.root / "decision.json", record)
    storage.write_text(run.paths.root / "decision.md", to_markdown(record))
    tracking.log_artifact(run.config, mlflow_run, run.paths.root / "decision.json", "decision")
    tracking.log_artifact(run.config, mlflow_run, run.paths.root / "decision.md", "decision")
    tracking.set_tags(run.config, mlflow_run, {"status": status})
    version = record.get("candidate_version")
    if version:  # the version's page in MLflow says what became of it and where its record is
        run.registry.set_tags(version, {"decision": status, "decision_record": f"runs:/{mlflow_run}/decision"})
    return {"status": status, "summary": summary_lines(record), "record": storage.uri(run.paths.root / "decision.json"),
            "mlflow_run_id": mlflow_run}


def store_summary(run: PipelineRun, record: dict[str, Any]) -> dict[str, Any]:
    """What the store keeps of the record: enough for the status page's decisions, trend and comparisons (the
    summary lines, costs, the gate's scoreboard, the production version it was judged against, the trigger's
    reason) without reading a file per run; ``record`` points at the whole of it."""
    from tuneloop import storage

    gate = record.get("gate") or {}
    try:
        board = run.task.scoreboard(gate) if gate.get("verdict") else None
    except Exception as error:  # noqa: BLE001 - the page's numbers must never keep a run from closing
        log.warning("run %s: no scoreboard for the status page: %s: %s", run.run_id, type(error).__name__, error)
        board = None
    return {"lines": summary_lines(record), "costs": record.get("costs"), "scoreboard": board,
            "production_before": record.get("production_before"), "reason_started": record.get("reason_started"),
            "record": storage.uri(run.paths.root / "decision.json")}


def close_run(run: PipelineRun, record: dict[str, Any]) -> None:
    """The store's side of the report: the run's status, its suite results, and (after a verdict) its cases
    consumed. The trained case ids are read before anything is written, so a run is never left finished with
    its cases unconsumed by a manifest that could not be read."""
    status, version = record["status"], record.get("candidate_version")
    dataset_id = (record.get("dataset") or {}).get("dataset_id")
    consumed = _trained_case_ids(run, dataset_id) if status in CONSUMING and dataset_id else []
    run.store.finish_training_run(run.run_id, status, dataset_id=dataset_id, candidate_version=version,
                                  summary=store_summary(run, record))
    for suite in (record.get("regression") or {}).get("results", []):
        run.store.record_suite_result(run.run_id, {**suite, "model_version": version})
    if consumed:
        run.store.mark_consumed(consumed, run.run_id)


def _trained_case_ids(run: PipelineRun, dataset_id: str) -> list[str]:
    """Train cases and their duplicates/superseded twins; eval cases stay new (not trained on: next run may)."""
    from tuneloop.datasets import load_manifest

    return list(load_manifest(run.dataset_dir(dataset_id)).case_ids_to_consume())
