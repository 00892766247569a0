"""What the DAG files read from the configuration at parse time."""

from __future__ import annotations

from datetime import timedelta

from tuneloop import schedule


def test_task_defaults_come_from_the_schedule_section(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path))
    monkeypatch.setenv("TUNELOOP__SCHEDULE__RETRY_DELAY_SECONDS", "5")
    monkeypatch.setenv("TUNELOOP__SCHEDULE__RETRIES", "3")
    schedule.task_defaults.cache_clear()
    try:
        assert schedule.task_defaults() == {"retries": 3, "retry_delay": timedelta(seconds=5)}
        monkeypatch.setenv("TUNELOOP__SCHEDULE__RETRIES", "-1")  # invalid: parsing goes on with the defaults
        schedule.task_defaults.cache_clear()
        assert schedule.task_defaults() == {"retries": 2, "retry_delay": timedelta(seconds=60)}
    finally:
        schedule.task_defaults.cache_clear()
