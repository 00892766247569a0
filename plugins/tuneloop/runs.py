"""Is a training run recorded as ``running`` really still in progress?

A ``running`` row in the store blocks every later run (two runs would train on, and consume, the same cases). A row
can outlive its run: the worker was killed with no retries left, ``report`` failed, a run the sensor claimed was
never started, or a person cleared or deleted the DAG run in the UI. So before a trigger check trusts a running row
it is reconciled with Airflow's own record of that DAG run and with a deadline (``schedule.run_timeout_hours``).

The decision is one pure function, :func:`reconcile_run`; the Airflow side only looks states up (through the Task
SDK, see ``tuneloop.operators.dag_runs``) and passes them in as a :data:`DagRunStateLookup`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tuneloop.store import ErrorCaseStore, TrainingRun

log = logging.getLogger(__name__)

WEEKLY_DAG_ID = "finetune_weekly"  # the DAG whose runs have rows in tuneloop_training_runs (a model of several:
# finetune_weekly_<name>, TuneloopConfig.dag_id)
GONE = "gone"  # what a lookup returns for a DAG run that does not exist (deleted, or never created)
ACTIVE_STATES = frozenset({"queued", "running"})

DagRunStateLookup = Callable[[str, str], str]
"""``(dag_id, run_id) -> state``: Airflow's DagRunState value (queued, running, success, failed) or :data:`GONE`."""


@dataclass(frozen=True)
class RunLiveness:
    """The verdict on one running row: still in progress, or to be failed, and why in plain words."""

    run_id: str
    in_progress: bool
    reason: str
    started: bool  # False: a run the sensor claimed whose first step never ran (it trained on nothing)


def claimed_by(run: TrainingRun) -> dict[str, str] | None:
    """The DAG run that claimed ``run`` before it existed (``{"dag_id", "run_id"}``), or None."""
    claim = run.summary.get("claimed_by")
    return dict(claim) if isinstance(claim, dict) else None


def has_started(run: TrainingRun) -> bool:
    """Whether the run's own first step ran. Rows written before claims were tracked count as started."""
    return bool(run.summary.get("started", True))


def reconcile_run(run: TrainingRun, *, dag_run_state: str | None, claimer_state: str | None, now: datetime,
                  timeout: timedelta, dag_id: str = WEEKLY_DAG_ID) -> RunLiveness:
    """Decide whether a ``running`` row is still in progress.

    :param dag_run_state: Airflow's state of the run's DAG run, :data:`GONE`, or None when Airflow was not asked
        (then only the deadline applies).
    :param claimer_state: for a claimed run whose DAG run is gone, the state of the DAG run that claimed it (the
        claim comes a moment before the DAG run is created, so a live claimer means "about to start").
    :param timeout: ``schedule.run_timeout_hours``: a run older than this is failed whatever Airflow says.
    """
    started = has_started(run)
    if run.status != "running":
        return RunLiveness(run.run_id, False, f"already finished: {run.status}", started)
    age = now - run.started_at
    if age >= timeout:
        seen = f"Airflow state {dag_run_state}" if dag_run_state else "Airflow state not checked"
        return RunLiveness(run.run_id, False, f"no result {_hours(age)} after it started: past "
                           f"schedule.run_timeout_hours={_hours(timeout, unit=False)} ({seen})", started)
    where = f"DAG run {dag_id}/{run.run_id}"
    if dag_run_state is None:
        return RunLiveness(run.run_id, True, "within its deadline (Airflow state not checked)", started)
    if dag_run_state in ACTIVE_STATES:
        return RunLiveness(run.run_id, True, f"{where} is {dag_run_state}", started)
    if dag_run_state != GONE:
        return RunLiveness(run.run_id, False, f"{where} ended {dag_run_state} in Airflow but its report never "
                           "closed this run", started)
    claim = claimed_by(run)
    if claim and not started:
        claimer = f"{claim.get('dag_id')}/{claim.get('run_id')}"
        if claimer_state in ACTIVE_STATES:
            return RunLiveness(run.run_id, True, f"claimed by {claimer}, which is still {claimer_state}: "
                               f"{where} is about to be created", started)
        return RunLiveness(run.run_id, False, f"claimed by {claimer} ({claimer_state or GONE}) but {where} does not "
                           "exist: it was deleted before it started, or never created", started)
    return RunLiveness(run.run_id, False, f"{where} no longer exists in Airflow (deleted or cleared)", started)


def reconcile_running_runs(store: ErrorCaseStore, *, now: datetime, timeout: timedelta,
                           lookup: DagRunStateLookup | None, exclude_run_id: str | None = None,
                           dag_id: str = WEEKLY_DAG_ID) -> list[RunLiveness]:
    """Reconcile every running row of the store's model (but ``exclude_run_id``, the caller's own) against its DAG
    runs in ``dag_id``; fail those no longer in progress, with the reason, leaving their cases unconsumed. Returns
    every verdict."""
    verdicts = []
    for run in store.running_training_runs():
        if run.run_id == exclude_run_id:
            continue
        verdict = reconcile_run(run, now=now, timeout=timeout, dag_id=dag_id, **_states(run, lookup, dag_id))
        if not verdict.in_progress:
            if store.fail_training_run(run.run_id, verdict.reason, at=now):
                log.warning("training run %s failed by reconciliation: %s", run.run_id, verdict.reason)
        verdicts.append(verdict)
    return verdicts


def _states(run: TrainingRun, lookup: DagRunStateLookup | None, dag_id: str) -> dict[str, Any]:
    if lookup is None:
        return {"dag_run_state": None, "claimer_state": None}
    state = lookup(dag_id, run.run_id)
    claim = claimed_by(run)
    claimer_state = lookup(claim["dag_id"], claim["run_id"]) if claim and state == GONE else None
    return {"dag_run_state": state, "claimer_state": claimer_state}


def _hours(delta: timedelta, *, unit: bool = True) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if unit else f"{hours:g}"
