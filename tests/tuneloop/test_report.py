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
    ({"approve_deploy": {"approved": False, "by": "ana"}, "states": {"deploy": "skipped"}}, "declined"),
    ({"approve_training": {"approved": False, "by": None}, "states": {"export_dataset": "skipped"}}, "not_approved"),
    ({"approve_budget": {"approved": False, "by": "policy"}, "states": {"train.prepare": "skipped"}}, "over_budget"),
    ({"approve_budget": {"approved": False, "by": "ana"}, "states": {}}, "over_budget"),
    ({"approve_training": {"approved": True}, "reject": {**EVENT, "action": "reject"},
      "validate": {"verdict": "insufficient_evidence"}, "states": {}}, "insufficient_evidence"),
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


def test_markdown_has_the_tables_a_reviewer_reads():
    boot = {"ci_low": 0.01, "ci_high": 0.05, "p_value": 0.002, "n": 60, "resamples": 10000, "alpha": 0.05,
            "lower_bound": 0.015}
    record = {
        "run_id": "r3", "status": "rejected", "reason_started": "x", "thresholds": {"validation": {}},
        "gate": {"verdict": "fail", "alpha": 0.05, "reasons": ["slice condition=noisy got worse"],
                 "wer": {"baseline": 0.3, "candidate": 0.27, "improvement": 0.03, "bootstrap": boot},
                 "cer": {"baseline": 0.1, "candidate": 0.09, "improvement": 0.01, "bootstrap": boot},
                 "mcnemar": {"test": "McNemar exact", "n": 60, "p_value": 0.1, "fixed": 5, "broken": 2},
                 "slices": [{"field": "condition", "value": "noisy", "n": 30, "baseline_wer": 0.2, "candidate_wer": 0.3,
                             "wer_increase": 0.1, "gated": True, "passed": False}],
                 "churn": {"fixed": 5, "newly_broken": 2, "improved": 3, "worsened": 1, "unchanged": 49,
                           "examples": {"newly_broken": [{"id": "u7"}, {"id": "u9"}]}}},
        "regression": {"passed": False, "results": [
            {"name": "seen", "type": "critical", "n": 80, "baseline_wer": 0.02, "wer": 0.05, "wer_degradation": 0.03,
             "failed_samples": 2, "passed": False, "blocking": True, "reasons": ["suite seen (critical, n=80): ..."]}]},
    }
    text = to_markdown(record)
    for heading in ("## Metrics (eval split)", "## Statistics", "## Slices", "## Churn", "## Regression suites"):
        assert heading in text
    assert "| condition=noisy | 30 | 0.2 | 0.3 | 0.1 | gated | FAIL |" in text
    assert "| newly_broken | 2 | u7, u9 |" in text
    assert "| seen | critical | 80 | 0.02 | 0.05 | 0.03 | 2 | FAIL |" in text
    assert "- regression verdict: failed" in text
