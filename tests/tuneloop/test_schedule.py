"""What the DAG files read from the configuration at parse time."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tuneloop import schedule
from tuneloop.config import ConfigError


@pytest.fixture
def fresh_schedule(monkeypatch, tmp_path):
    """The schedule module with nothing cached, reading only the environment the test sets."""
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path))
    schedule.clear_cache()
    yield schedule
    schedule.clear_cache()


def test_values_come_from_the_configuration(monkeypatch, fresh_schedule):
    monkeypatch.setenv("TUNELOOP__SCHEDULE__RETRY_DELAY_SECONDS", "5")
    monkeypatch.setenv("TUNELOOP__SCHEDULE__RETRIES", "3")
    monkeypatch.setenv("TUNELOOP__SCHEDULE__WEEKLY_CRON", "0 4 * * 1")
    monkeypatch.setenv("TUNELOOP__DEPLOYMENT__APPROVAL_TIMEOUT_HOURS", "6")
    assert fresh_schedule.task_defaults() == {"retries": 3, "retry_delay": timedelta(seconds=5)}
    assert fresh_schedule.cron("weekly_cron") == "0 4 * * 1"
    assert fresh_schedule.approval_timeout("deployment") == timedelta(hours=6)


@pytest.mark.parametrize("read", [
    lambda s: s.task_defaults(),
    lambda s: s.cron("weekly_cron"),
    lambda s: s.approval_timeout("trigger"),
], ids=["task_defaults", "cron", "approval_timeout"])
def test_an_invalid_configuration_raises_instead_of_using_defaults(monkeypatch, fresh_schedule, read):
    """A DAG parsed with default retries or a default cron would run on a schedule nobody configured."""
    monkeypatch.setenv("TUNELOOP__SCHEDULE__RETRIES", "-1")
    with pytest.raises(ConfigError, match=r"schedule\.retries"):
        read(fresh_schedule)


def test_unknown_keys_are_errors(fresh_schedule):
    with pytest.raises(ConfigError, match=r"schedule\.weekly_crn"):
        fresh_schedule.cron("weekly_crn")
    with pytest.raises(ConfigError, match=r"mlflow\.approval_timeout_hours"):
        fresh_schedule.approval_timeout("mlflow")
