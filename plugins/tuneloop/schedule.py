"""What the DAG files read from tuneloop configuration at parse time: crons, approval timeouts, retries.

A small local YAML file plus environment variables (no network, no database), loaded once per process. An invalid
configuration raises :class:`~tuneloop.config.ConfigError` here, at parse time, so Airflow shows it as the DAG's
import error naming the field; falling back to defaults would instead run the loop on a schedule, or with approval
timeouts, that nobody configured.
"""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuneloop.config import TuneloopConfig


@functools.lru_cache(maxsize=1)
def _config() -> TuneloopConfig:
    from tuneloop.config import load_config

    return load_config()


def clear_cache() -> None:
    """Forget the loaded configuration (tests, and a long-lived process that must see an edited file)."""
    _config.cache_clear()


def models() -> list[TuneloopConfig]:
    """Each configured model's own configuration: the DAG files build one set of DAGs per model."""
    return _config().each_model()


def cron(key: str, model: TuneloopConfig | None = None) -> str:
    """``schedule.<key>`` (e.g. ``weekly_cron``) of ``model`` (default: the one-model configuration); raises
    ConfigError when the configuration is invalid."""
    from tuneloop.config import ConfigError

    value = getattr((model or _config()).schedule, key, None)
    if not isinstance(value, str):
        raise ConfigError(f"schedule.{key}: no such cron setting")
    return value


def approval_timeout(section: str, model: TuneloopConfig | None = None) -> timedelta:
    """How long an approval waits (``<section>.approval_timeout_hours``) before it counts as a reject."""
    from tuneloop.config import ConfigError

    hours = getattr(getattr(model or _config(), section, None), "approval_timeout_hours", None)
    if hours is None:
        raise ConfigError(f"{section}.approval_timeout_hours: no such setting")
    return timedelta(hours=hours)


def task_defaults(model: TuneloopConfig | None = None) -> dict[str, object]:
    """The DAGs' ``default_args``: ``schedule.retries`` and ``schedule.retry_delay_seconds``."""
    schedule = (model or _config()).schedule
    return {"retries": schedule.retries, "retry_delay": timedelta(seconds=schedule.retry_delay_seconds)}
