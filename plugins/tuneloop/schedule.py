"""Schedules for the DAG files, read from tuneloop configuration.

The one thing DAG files read at parse time: a small local YAML file plus environment variables (no network, no
database), cached per process. A broken config must not break DAG parsing, so it falls back to the default and
logs the error; the tasks, which load the config again, fail with the full message.
"""

from __future__ import annotations

import functools
import logging
from datetime import timedelta

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def cron(key: str, default: str) -> str:
    """Return ``schedule.<key>`` from the configuration (e.g. ``weekly_cron``), or ``default`` if unreadable."""
    from tuneloop.config import ConfigError, load_config

    try:
        return getattr(load_config().schedule, key)
    except (ConfigError, AttributeError) as e:
        log.error("schedule.%s unreadable, using %s: %s", key, default, e)
        return default


@functools.lru_cache(maxsize=None)
def approval_timeout(section: str, default_hours: float = 72) -> timedelta:
    """How long an approval waits (``<section>.approval_timeout_hours``) before it counts as a reject."""
    from tuneloop.config import ConfigError, load_config

    try:
        return timedelta(hours=getattr(load_config(), section).approval_timeout_hours)
    except (ConfigError, AttributeError) as e:
        log.error("%s.approval_timeout_hours unreadable, using %s h: %s", section, default_hours, e)
        return timedelta(hours=default_hours)


@functools.lru_cache(maxsize=None)
def task_defaults() -> dict[str, object]:
    """The DAGs' ``default_args``: ``schedule.retries`` and ``schedule.retry_delay_seconds``."""
    from tuneloop.config import ConfigError, ScheduleConfig, load_config

    try:
        schedule = load_config().schedule
    except ConfigError as e:
        log.error("schedule unreadable, using the default retries: %s", e)
        schedule = ScheduleConfig()
    return {"retries": schedule.retries, "retry_delay": timedelta(seconds=schedule.retry_delay_seconds)}
