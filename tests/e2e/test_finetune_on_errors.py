"""`airflow dags test finetune_on_errors`: inbox ingestion, the deferrable sensor, exactly one weekly run."""

from __future__ import annotations

import json

import pytest

from tests.e2e.scenario import write_cases
from tuneloop.store import ErrorCaseStore

pytestmark = pytest.mark.slow


def _weekly_runs(scenario) -> list[dict]:
    out = scenario.airflow("dags", "list-runs", "finetune_weekly", "-o", "json").stdout
    tables = [line for line in out.splitlines() if line.startswith(("[{", "[]"))]  # skip Airflow's log lines
    return json.loads(tables[-1]) if tables else []


def test_sensor_starts_exactly_one_weekly_run(scenario, speech):
    inbox = scenario.root / "tuneloop" / "inbox"
    inbox.mkdir(parents=True)
    write_cases(inbox / "batch-001.jsonl", speech)

    scenario.airflow("dags", "test", "finetune_on_errors")
    runs = _weekly_runs(scenario)
    assert len(runs) == 1, runs
    assert runs[0]["run_id"].startswith("on_errors__")
    assert (inbox / "processed" / "batch-001.jsonl").exists()
    assert not list(inbox.glob("*.jsonl"))

    # Conditions still hold (the weekly run has not run yet) but it is recorded as in progress: no second run.
    scenario.airflow("dags", "test", "finetune_on_errors")
    assert len(_weekly_runs(scenario)) == 1

    # The claimed run is deleted (UI or REST API) before it ever starts: the next check fails the claim, without
    # a cooldown (it trained on nothing), and the sensor starts a new run.
    claimed = runs[0]["run_id"]
    deleted = scenario.api_get(f"/api/v2/dags/finetune_weekly/dagRuns/{claimed}", method="DELETE")
    assert deleted["status"] == 204, deleted
    scenario.airflow("dags", "test", "finetune_on_errors")
    again = [r["run_id"] for r in _weekly_runs(scenario)]
    assert len(again) == 1 and again[0] != claimed, again
    store = ErrorCaseStore.from_config(scenario.config())
    stale = store.training_run(claimed)
    assert stale.status == "failed" and "deleted before it started" in stale.summary["reason"], stale
    assert [r.run_id for r in store.running_training_runs()] == again


def test_no_run_when_conditions_are_unmet(scenario):
    scenario.airflow("dags", "test", "finetune_on_errors")
    assert _weekly_runs(scenario) == []
