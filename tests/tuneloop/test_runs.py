"""Reconciling "running" rows with Airflow's DAG run states and the deadline: the pure decision, then applied."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tuneloop.runs import GONE, reconcile_run, reconcile_running_runs
from tuneloop.store import ErrorCaseStore, TrainingRun

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
DEADLINE = timedelta(hours=168)
CLAIM = {"dag_id": "finetune_on_errors", "run_id": "scheduled__1"}


def row(*, age_h: float = 1, claimed: bool = False, started: bool = True) -> TrainingRun:
    summary = {"started": started, **({"claimed_by": CLAIM} if claimed else {})}
    return TrainingRun("on_errors__scheduled__1" if claimed else "manual__1", "running",
                       NOW - timedelta(hours=age_h), summary=summary)


@pytest.mark.parametrize(("run", "state", "claimer", "in_progress", "reason"), [
    (row(), "running", None, True, "is running"),
    (row(), "queued", None, True, "is queued"),
    (row(), "success", None, False, "ended success in Airflow but its report never closed this run"),
    (row(), "failed", None, False, "ended failed"),
    (row(), GONE, None, False, "no longer exists in Airflow"),
    (row(), None, None, True, "Airflow state not checked"),
    (row(age_h=170), "running", None, False, "past schedule.run_timeout_hours=168 (Airflow state running)"),
    (row(age_h=170), None, None, False, "170.0 h after it started"),
    (row(claimed=True, started=False), GONE, "running", True, "claimed by finetune_on_errors/scheduled__1, which "
                                                             "is still running"),
    (row(claimed=True, started=False), GONE, "success", False, "deleted before it started, or never created"),
    (row(claimed=True, started=False), GONE, GONE, False, "(gone) but DAG run"),
    (row(claimed=True, started=False), "queued", None, True, "is queued"),
    (row(claimed=True, started=True), GONE, "success", False, "no longer exists in Airflow"),
])
def test_reconcile_run(run, state, claimer, in_progress, reason):
    verdict = reconcile_run(run, dag_run_state=state, claimer_state=claimer, now=NOW, timeout=DEADLINE)
    assert verdict.in_progress is in_progress
    assert reason in verdict.reason
    assert verdict.started is run.summary["started"]


def test_a_row_written_before_claims_were_tracked_counts_as_started():
    legacy = TrainingRun("scheduled__0", "running", NOW - timedelta(hours=1))
    verdict = reconcile_run(legacy, dag_run_state=GONE, claimer_state=None, now=NOW, timeout=DEADLINE)
    assert not verdict.in_progress and verdict.started


def test_stale_rows_are_failed_with_the_reason_and_the_live_ones_kept(tmp_path):
    store = ErrorCaseStore(f"sqlite:///{tmp_path}/store.db")
    store.start_training_run("manual__dead", at=NOW - timedelta(hours=3))
    store.start_training_run("manual__live", at=NOW - timedelta(hours=2))
    store.start_training_run("on_errors__b", at=NOW - timedelta(hours=1), claimed_by=CLAIM | {"run_id": "b"})
    store.start_training_run("manual__mine", at=NOW)
    airflow = {("finetune_weekly", "manual__live"): "running", ("finetune_on_errors", "b"): "success"}
    asked: list[tuple[str, str]] = []

    def lookup(dag_id: str, run_id: str) -> str:
        asked.append((dag_id, run_id))
        return airflow.get((dag_id, run_id), GONE)

    verdicts = reconcile_running_runs(store, now=NOW, timeout=DEADLINE, lookup=lookup, exclude_run_id="manual__mine")

    assert [(v.run_id, v.in_progress) for v in verdicts] == [
        ("manual__dead", False), ("manual__live", True), ("on_errors__b", False)]
    assert ("finetune_weekly", "manual__mine") not in asked
    dead = store.training_run("manual__dead")
    assert (dead.status, dead.finished_at) == ("failed", NOW)
    assert "finetune_weekly/manual__dead no longer exists" in dead.summary["reason"]
    assert store.training_run("on_errors__b").summary["started"] is False
    assert [r.run_id for r in store.running_training_runs()] == ["manual__live", "manual__mine"]
    # runs ended without a result start no cooldown: their cases are taken up by the next check
    assert store.last_finished_training() is None
    # a second pass finds nothing more to do
    assert [v.run_id for v in reconcile_running_runs(store, now=NOW, timeout=DEADLINE, lookup=lookup,
                                                     exclude_run_id="manual__mine")] == ["manual__live"]


def test_a_model_of_several_is_reconciled_against_its_own_weekly_dag(store):
    """Two models' DAGs get the same run ids: a chat model's live run must be looked up in
    finetune_weekly_support, not in finetune_weekly (where it does not exist and would be failed as gone)."""
    from tuneloop.config import TuneloopConfig
    from tuneloop.pipeline import evaluate_trigger

    config = TuneloopConfig.model_validate({"models": [
        {"name": "asr", "task": "speech_to_text", "model_name": "speech-to-text"},
        {"name": "support", "task": "chat", "model_name": "support-assistant"}]}).for_model("support")
    support = store.for_model("support", task="chat")
    support.start_training_run("scheduled__1", at=NOW - timedelta(hours=1))
    airflow = {("finetune_weekly_support", "scheduled__1"): "running"}

    evaluate_trigger(config, now=NOW, force=False, store=support,
                     dag_run_state=lambda dag_id, run_id: airflow.get((dag_id, run_id), GONE))

    assert support.training_run("scheduled__1").status == "running"
    evaluate_trigger(config, now=NOW, force=False, store=support, dag_run_state=lambda dag_id, run_id: GONE)
    run = support.training_run("scheduled__1")
    assert run.status == "failed" and "finetune_weekly_support/scheduled__1 no longer exists" in run.summary["reason"]
