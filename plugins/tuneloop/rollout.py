"""Staged rollouts: a passing candidate on the ``green`` alias before production moves (``blue_green``), or on the
``canary`` alias with a share of the live traffic (``canary``) until the online test decides.

Like :mod:`tuneloop.deployment`, every function moves registry aliases and records one
:class:`~tuneloop.history.DeploymentEvent` (production unchanged: from = to = production; the staged version in
``details["version"]``), and is idempotent, because Airflow retries tasks. Production itself only ever moves
through :func:`tuneloop.deployment.deploy`, so ``previous``, retention and the deploy event stay as they are for
every strategy.

A canary's share is kept on its version (tags ``canary_percent`` and ``canary_started_at``: what a router reads
with the aliases) and in the start event. One canary per model at a time: starting another while one runs is
refused. Ending a canary removes the alias (traffic goes back to production) and says how it ended:
``promoted`` (deployed), ``rolled_back`` (found worse, or a person or the rollback DAG ended it),
``not_promoted`` (no difference shown by the deadline).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from tuneloop.deployment import (MAX_TAG_CHARS, Clock, DeploymentError, DeploymentHistory, _drop_candidate_alias,
                                 _event, _events, _ready_version, _record, _utcnow, deploy)
from tuneloop.history import DeploymentEvent
from tuneloop.registry import ModelRegistry

CanaryEnd = Literal["promoted", "rolled_back", "not_promoted"]
CANARY_ENDS: tuple[CanaryEnd, ...] = ("promoted", "rolled_back", "not_promoted")


@dataclass(frozen=True)
class Canary:
    """The canary running now: its version, its share of the traffic, when it started."""

    version: str
    traffic_percent: float
    started_at: datetime | None


def running_canary(registry: ModelRegistry) -> Canary | None:
    """The model's running canary (its ``canary`` alias and tags), or None."""
    version = registry.alias_version("canary")
    if version is None:
        return None
    tags = registry.get_version(version).tags
    started = tags.get("canary_started_at")
    return Canary(version, float(tags.get("canary_percent", 0)), datetime.fromisoformat(started) if started else None)


def canary_from_history(events: list[DeploymentEvent]) -> dict[str, Any] | None:
    """The running canary as the deployment history tells it (newest first; no registry read, for ``tuneloop
    status``): the latest start with no end after it, or None."""
    for event in events:
        if event.action == "canary_end" or (event.action == "deploy" and "canary_end" in event.details):
            return None
        if event.action == "canary_start":
            return {"version": event.details.get("version"), "traffic_percent": event.details.get("traffic_percent"),
                    "since": event.at.isoformat(), "by": event.actor}
    return None


def start_canary(registry: ModelRegistry, history: DeploymentHistory, version: str, *, traffic_percent: float,
                 reason: str, actor: str = "tuneloop", run_id: str | None = None,
                 details: Mapping[str, Any] | None = None, clock: Clock = _utcnow) -> DeploymentEvent:
    """Give ``version`` the ``canary`` alias and ``traffic_percent`` of the traffic; production serves the rest.
    Refused while another version is the canary. Starting the same canary again returns its start event."""
    version = str(version)
    if not 0 < traffic_percent < 100:
        raise DeploymentError(f"traffic_percent: a canary gets between 0 and 100 percent of the traffic, got "
                              f"{traffic_percent!r}")
    _ready_version(registry, version, "start a canary of")
    production = registry.production_version()
    if production is None:
        raise DeploymentError(f"{registry.model_name!r} has no production version to compare a canary with: "
                              "deploy the first version with the replace strategy")
    if version == production:
        raise DeploymentError(f"version {version} is production already; a canary is a new version")
    running = registry.alias_version("canary")
    if running is not None and running != version:
        raise DeploymentError(f"{registry.model_name!r} already runs a canary (version {running}); one canary per "
                              f"model: end it first (its online test, or tuneloop rollback)")
    if running == version:
        for event in _events(registry, history):
            if event.action == "canary_start" and event.details.get("version") == version:
                return event
    at = clock()
    registry.set_tags(version, {"decision": "canary", "canary_percent": f"{traffic_percent:g}",
                                "canary_started_at": at.isoformat()})
    registry.set_alias("canary", version)
    _drop_candidate_alias(registry, version)
    event = _event("canary_start", registry, production, production, reason=reason, actor=actor, run_id=run_id,
                   at=at, details={**(details or {}), "version": version, "traffic_percent": traffic_percent})
    return _record(history, event)


def end_canary(registry: ModelRegistry, history: DeploymentHistory, *, how: CanaryEnd, reason: str,
               actor: str = "tuneloop", run_id: str | None = None, details: Mapping[str, Any] | None = None,
               keep_previous_versions: int = 5, clock: Clock = _utcnow) -> DeploymentEvent | None:
    """End the running canary: ``promoted`` deploys it (production moves, the old one becomes ``previous``);
    otherwise traffic goes back to production. Returns the event (the deploy's, when promoted), or None when no
    canary runs -- ending twice (a retry) is harmless."""
    if how not in CANARY_ENDS:
        raise DeploymentError(f"how: a canary ends {', '.join(CANARY_ENDS)}, got {how!r}")
    canary = running_canary(registry)
    if canary is None:
        return None
    extra = {**(details or {}), "strategy": "canary", "canary_end": how, "version": canary.version,
             "traffic_percent": canary.traffic_percent}
    if how == "promoted":
        event = deploy(registry, history, canary.version, reason=reason, actor=actor, run_id=run_id,
                       keep_previous_versions=keep_previous_versions, details=extra, clock=clock)
        registry.remove_alias("canary")
        return event
    recorded = next((e for e in _events(registry, history) if e.action == "canary_end"
                     and e.details.get("version") == canary.version), None)  # a retry after the record
    if recorded is None:
        production, at = registry.production_version(), clock()
        registry.set_tags(canary.version, {"decision": f"canary_{how}", "canary_ended_at": at.isoformat(),
                                           "canary_end_reason": reason[:MAX_TAG_CHARS]})
        recorded = _record(history, _event("canary_end", registry, production, production, reason=reason,
                                           actor=actor, run_id=run_id, at=at, details=extra))
    registry.remove_alias("canary")  # last: while it is there, a retry finds the canary to end
    return recorded


def stage_green(registry: ModelRegistry, history: DeploymentHistory, version: str, *, reason: str,
                actor: str = "tuneloop", run_id: str | None = None, clock: Clock = _utcnow) -> DeploymentEvent:
    """Put ``version`` on the ``green`` alias, where the post-deploy check runs before production moves. Staging
    the same version again returns its event."""
    version = str(version)
    _ready_version(registry, version, "stage")
    production = registry.production_version()
    if version == production:
        raise DeploymentError(f"version {version} is production already; green is for a new version")
    if registry.alias_version("green") == version:
        for event in _events(registry, history):
            if event.action == "green" and event.details.get("version") == version:
                return event
    registry.set_alias("green", version)
    _drop_candidate_alias(registry, version)
    event = _event("green", registry, production, production, reason=reason, actor=actor, run_id=run_id,
                   at=clock(), details={"strategy": "blue_green", "version": version})
    return _record(history, event)


def switch_green(registry: ModelRegistry, history: DeploymentHistory, *, reason: str, actor: str = "tuneloop",
                 run_id: str | None = None, keep_previous_versions: int = 5,
                 clock: Clock = _utcnow) -> DeploymentEvent:
    """Move production to the green version in one step (``previous`` keeps the old one for an instant switch
    back) and remove ``green``. A retry after the switch returns the deploy event."""
    green = registry.alias_version("green")
    if green is None:
        latest = next((e for e in _events(registry, history) if e.action == "deploy"
                       and e.details.get("strategy") == "blue_green" and e.run_id == run_id), None)
        if latest is not None:
            return latest
        raise DeploymentError(f"{registry.model_name!r} has no green version to switch to")
    event = deploy(registry, history, green, reason=reason, actor=actor, run_id=run_id,
                   keep_previous_versions=keep_previous_versions, details={"strategy": "blue_green"}, clock=clock)
    registry.remove_alias("green")
    return event


def drop_green(registry: ModelRegistry, history: DeploymentHistory, *, reason: str, actor: str = "tuneloop",
               run_id: str | None = None, clock: Clock = _utcnow) -> DeploymentEvent | None:
    """The green version failed its check: remove ``green`` (production never moved) and reject the version.
    None when nothing is green (a retry)."""
    from tuneloop.deployment import reject

    green = registry.alias_version("green")
    if green is None:
        return None
    event = reject(registry, history, green, reason=reason, actor=actor, run_id=run_id,
                   details={"strategy": "blue_green"}, clock=clock)
    registry.remove_alias("green")  # last: while it is there, a retry finds the version to reject
    return event
