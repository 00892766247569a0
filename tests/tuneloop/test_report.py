"""The decision record: the run's status from its steps, and the plain-words summary."""

from __future__ import annotations

import pytest

from tuneloop.report import classify, summary_lines, to_markdown

EVENT = {"action": "deploy", "from_version": "1", "to_version": "2", "reason": "gate passed"}


@pytest.mark.parametrize(("outcome", "status"), [
    ({"states": {"check_trigger": "skipped"}}, "skipped"),
    ({"deploy": EVENT, "states": {"post_deploy_check": "success"}}, "deployed"),
    ({"deploy": EVENT, "rollback": {**EVENT, "action": "rollback"}, "states": {"post_deploy_check": "failed"}},
     "rolled_back"),
    ({"reject": {**EVENT, "action": "reject"}, "states": {}}, "rejected"),
    ({"hold": {**EVENT, "action": "register"}, "states": {}}, "held"),
    ({"states": {"train": "failed"}}, "failed"),
    ({"deploy": EVENT, "states": {"post_deploy_check": "failed"}}, "failed"),  # check failed, rollback did not run
])
def test_classify(outcome, status):
    assert classify(outcome) == status


def test_summary_says_why_in_plain_words():
    record = {"run_id": "r1", "status": "rejected", "reason_started": "scheduled",
              "trigger": {"reasons": ["triggered: 120 new error cases >= min_error_cases 100"]},
              "dataset": {"dataset_id": "ds-1", "counts": {"train": 80, "eval": 20}},
              "gate": {"verdict": "fail", "reasons": ["WER did not improve: 0.30 -> 0.31"]},
              "candidate_version": "3", "production_before": "2",
              "deployment": {**EVENT, "action": "reject", "to_version": "2"}}
    lines = summary_lines(record)
    assert lines[0].startswith("Run r1: REJECTED")
    assert "gate: WER did not improve: 0.30 -> 0.31" in lines
    assert "candidate: version 3 (production before: 2)" in lines
    assert to_markdown(record).startswith("# Run r1: REJECTED")


def test_failed_run_names_the_failed_steps():
    record = {"run_id": "r2", "status": "failed", "reason_started": "x",
              "task_states": {"train": "failed", "evaluate": "upstream_failed", "check_trigger": "success"}}
    assert "failed steps: train, evaluate" in summary_lines(record)[-1]
