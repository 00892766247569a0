"""Schedules for the DAG files, read from tuneloop configuration.

The one thing DAG files read at parse time: a small local YAML file plus environment variables (no network, no
database), cached per process. A broken config must not break DAG parsing, so it falls back to the default and
logs the error; the tasks, which load the config again, fail with the full message.
"""

from __future__ import annotations

import functools
import logging

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
