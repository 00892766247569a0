"""The DAGs' schedules, approval timeouts and retries come from the tuneloop configuration (file, then env)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from tuneloop import schedule

if TYPE_CHECKING:
    from airflow.dag_processing.dagbag import DagBag

REPO = Path(__file__).resolve().parents[2]
CONFIG = {
    "schedule": {"weekly_cron": "30 4 * * 3", "on_errors_cron": "*/5 * * * *", "retries": 4,
                 "retry_delay_seconds": 7},
    "trigger": {"approval_timeout_hours": 6},
    "deployment": {"approval_timeout_hours": 1.5},
}
# tasks that set their own retries in the DAG file; every other task takes schedule.retries
OWN_RETRIES = {"approve_training": 0, "approve_budget": 0, "approve_deploy": 0, "post_deploy_check": 0, "report": 1}


@pytest.fixture
def load_dags(airflow_env, tmp_path, monkeypatch) -> Iterator[Callable[[dict | str], DagBag]]:
    """``load_dags(config)``: write ``config`` (a mapping, or raw text) as the tuneloop.yaml, parse dags/."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    for key in [k for k in os.environ if k.startswith("TUNELOOP__")]:
        monkeypatch.delenv(key, raising=False)

    def load(config: dict | str) -> DagBag:
        file = tmp_path / "tuneloop.yaml"
        file.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
        monkeypatch.setenv("TUNELOOP_CONFIG", str(file))
        schedule.clear_cache()  # the DAG files' reads are cached per process
        return DagBag(dag_folder=str(REPO / "dags"))

    yield load
    schedule.clear_cache()


def test_schedules_timeouts_and_retries_come_from_the_config(load_dags, monkeypatch):
    monkeypatch.setenv("TUNELOOP__SCHEDULE__ON_ERRORS_CRON", "*/10 * * * *")  # the environment wins over the file
    bag = load_dags(CONFIG)
    assert bag.import_errors == {}

    dags = bag.dags
    weekly, on_errors, rollback = dags["finetune_weekly"], dags["finetune_on_errors"], dags["finetune_rollback"]
    assert weekly.timetable.expression == "30 4 * * 3"
    assert on_errors.timetable.expression == "*/10 * * * *"
    assert rollback.schedule is None  # manual only
    assert weekly.get_task("approve_training").response_timeout == timedelta(hours=6)
    assert weekly.get_task("approve_deploy").response_timeout == timedelta(hours=1.5)
    for dag in (weekly, on_errors):
        assert dag.default_args == {"retries": 4, "retry_delay": timedelta(seconds=7)}
        assert {t.task_id: t.retries for t in dag.tasks if t.retries != 4} == {
            k: v for k, v in OWN_RETRIES.items() if dag.has_task(k)}
        assert {t.retry_delay for t in dag.tasks} == {timedelta(seconds=7)}


@pytest.mark.parametrize(("broken", "field"), [
    ({"schedule": {"retries": -1}}, "schedule.retries"),
    ({"trigger": {"approval_timeout_hours": "soon"}}, "trigger.approval_timeout_hours"),
    ({"schedule": {"weekly_cron": "every sunday"}}, "schedule.weekly_cron"),
    ("schedule: {weekly_cron: [", "not valid YAML"),
], ids=["negative-retries", "timeout-not-a-number", "not-a-cron", "not-yaml"])
def test_a_broken_config_is_each_scheduled_dags_import_error_naming_the_field(load_dags, broken, field):
    """Never a default schedule nobody configured; the manual rollback DAG reads no config and stays usable."""
    bag = load_dags(broken)

    assert sorted(bag.dags) == ["finetune_rollback"]
    assert {Path(f).name for f in bag.import_errors} == {"finetune_weekly.py", "finetune_on_errors.py"}
    for error in bag.import_errors.values():
        assert "ConfigError" in error and field in error, error
