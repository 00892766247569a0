"""Deploy, reject, roll back: registry alias moves plus the deployment history that MLflow does not keep.

Every function takes the :class:`~tuneloop.registry.ModelRegistry` (the only thing that moves aliases) and a
:class:`DeploymentHistory` (the store), does its moves, and records one :class:`~tuneloop.history.DeploymentEvent`
(who, when, action, production before -> after, why). The decisions inside are pure functions over the
history -- :func:`choose_rollback_target`, :func:`versions_to_archive` -- so they are tested without MLflow.

Lineage: the *predecessor* of a version is the production version it replaced when it was deployed (the
``from_version`` of the deploy event that made it production). ``previous`` always points to the predecessor of
the production version, skipping versions that are archived or no longer exist; a rollback moves ``production``
to it (or to a requested version that served before) and ``previous`` one step further back. Versions that were
rolled back *from* are never chosen by default: they are newer than their target, not older.

Idempotency (Airflow retries tasks): deploying the version that is already production, rejecting a version
already rejected, or retrying a rollback with the same ``run_id`` records nothing new and returns the event
already recorded. Retention: only the production version and the ``keep_previous_versions`` most recent
versions before it stay rollback targets; older deployed versions get the tag ``archived=true``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from tuneloop.history import DeploymentAction, DeploymentEvent
from tuneloop.registry import ModelRegistry, RegistryNotFoundError

log = logging.getLogger(__name__)

HISTORY_LIMIT = 1000  # events read to reason about lineage; far more than any retention window
MAX_TAG_CHARS = 5000  # MLflow's limit on a tag value
_PRODUCTION_MOVES: frozenset[str] = frozenset({"deploy", "bootstrap", "rollback"})
_DEPLOYS: frozenset[str] = frozenset({"deploy", "bootstrap"})


class DeploymentHistory(Protocol):
    """The part of the tuneloop store that keeps deployment events (``tuneloop.store`` implements it)."""

    def record_deployment(self, event: DeploymentEvent) -> object: ...

    def deployment_history(self, model_name: str | None = None, limit: int = 50) -> list[DeploymentEvent]: ...


class DeploymentError(RuntimeError):
    """A deployment move was refused or failed; the message says why and what to do instead."""


class RollbackError(DeploymentError):
    """There is nothing to roll back to, or the requested version cannot be rolled back to."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


Clock = Callable[[], datetime]


# -- pure decisions ---------------------------------------------------------------------------------------------


def _newest_first(events: Sequence[DeploymentEvent]) -> list[DeploymentEvent]:
    return sorted(events, key=lambda e: e.at, reverse=True)  # stable: equal times keep the store's order


def production_lineage(events: Sequence[DeploymentEvent]) -> list[str]:
    """Versions that have been production, most recently served first, each once."""
    seen: dict[str, None] = {}
    for event in _newest_first(events):
        if event.action in _PRODUCTION_MOVES and event.to_version is not None:
            seen.setdefault(event.to_version, None)
    return list(seen)


def production_move(events: Sequence[DeploymentEvent]) -> DeploymentEvent | None:
    """The move that made the current production version (bootstrap, deploy or rollback); None before any."""
    return next((e for e in _newest_first(events) if e.action in _PRODUCTION_MOVES), None)


def aliases_from_history(events: Sequence[DeploymentEvent]) -> dict[str, str | None]:
    """``production`` and ``previous`` as tuneloop's own moves left them, read from the history alone.

    Every move writes the version it left as ``previous`` into the event's details (deploy: the production it
    replaced; rollback: the new rollback target; bootstrap: none), so the latest production move names both
    aliases. This lets ``tuneloop status`` answer without importing MLflow; an alias moved by hand in MLflow is
    not seen here (``tuneloop status --registry`` compares the two).
    """
    move = production_move(events)
    if move is None:
        return {"production": None, "previous": None}
    previous = move.details.get("previous")
    return {"production": move.to_version, "previous": None if previous is None else str(previous)}


def predecessor(events: Sequence[DeploymentEvent], version: str) -> str | None:
    """The production version that ``version`` replaced when it was (last) deployed; None if unknown or first."""
    for event in _newest_first(events):
        if event.action in _DEPLOYS and event.to_version == version:
            return event.from_version
    return None


def _walk_back(
    events: Sequence[DeploymentEvent], start: str, skip: Collection[str], unavailable: Mapping[str, str]
) -> tuple[str | None, list[str]]:
    """First predecessor of ``start`` not in ``skip``/``unavailable``; also the skipped versions, for reasons."""
    passed_over: list[str] = []
    seen = {start}
    version = predecessor(events, start)
    while version is not None and version not in seen:
        if version not in skip and version not in unavailable:
            return version, passed_over
        passed_over.append(version)
        seen.add(version)
        version = predecessor(events, version)
    return None, passed_over


@dataclass(frozen=True)
class RollbackTarget:
    """Where a rollback goes (``version`` None: nowhere, see ``reasons``) and where ``previous`` goes after it."""

    version: str | None
    new_previous: str | None
    current: str | None
    requested: str | None
    reasons: tuple[str, ...]

    @property
    def found(self) -> bool:
        return self.version is not None


def choose_rollback_target(
    events: Sequence[DeploymentEvent],
    *,
    current: str | None,
    requested: str | None = None,
    previous: str | None = None,
    unavailable: Mapping[str, str] | None = None,
) -> RollbackTarget:
    """Pick the version to roll back to, with the reasons.

    :param events: the model's deployment history (any order).
    :param current: the production version now.
    :param requested: an explicit target; it must have served as production before and still be available.
    :param previous: the ``previous`` alias now, the default target.
    :param unavailable: versions that may not be targets, with why (``"archived"``, ``"deleted"``).
    """
    unavailable = dict(unavailable or {})

    def refuse(*why: str) -> RollbackTarget:
        return RollbackTarget(None, None, current, requested, why)

    if current is None:
        return refuse("there is no production version, so there is nothing to roll back")
    served = production_lineage(events)
    reasons: list[str] = []
    if requested is not None:
        if requested == current:
            return refuse(f"version {requested} is already production")
        if requested in unavailable:
            return refuse(f"version {requested} cannot be a rollback target: it is {unavailable[requested]}")
        if requested not in served:
            earlier = ", ".join(v for v in served if v != current) or "none"
            return refuse(
                f"version {requested} was never production (versions that were: {earlier}); only a version "
                "that has served can be rolled back to -- deploy it through the gate instead"
            )
        target = requested
        reasons.append(f"rolling back from version {current} to requested version {target}")
    elif previous is not None and previous != current and previous not in unavailable:
        target = previous
        reasons.append(f"rolling back from version {current} to version {target}, the 'previous' alias")
    else:
        if previous is None:
            reasons.append("the 'previous' alias is not set")
        elif previous == current:
            reasons.append(f"the 'previous' alias points to the production version {current}")
        else:
            reasons.append(f"the 'previous' alias points to version {previous}, which is {unavailable[previous]}")
        found, passed_over = _walk_back(events, current, {current}, unavailable)
        if found is None:
            skipped = "; ".join(f"{v} is {unavailable.get(v, 'production')}" for v in passed_over)
            return refuse(
                *reasons,
                f"nothing to roll back to: no earlier production version of {current} is available"
                + (f" ({skipped})" if skipped else ""),
            )
        target = found
        reasons.append(f"rolling back from version {current} to version {target}, production before it")
    new_previous, _ = _walk_back(events, target, {current, target}, unavailable)
    if new_previous is None:
        reasons.append(f"'previous' will be removed: no available version was production before {target}")
    else:
        reasons.append(f"'previous' will point to version {new_previous}, production before {target}")
    return RollbackTarget(target, new_previous, current, requested, tuple(reasons))


def versions_to_archive(events: Sequence[DeploymentEvent], *, current: str, keep_previous_versions: int) -> list[str]:
    """Served versions beyond the production version and the ``keep_previous_versions`` most recent before it."""
    if keep_previous_versions < 0:
        raise DeploymentError(f"keep_previous_versions must be >= 0, got {keep_previous_versions}")
    older = [v for v in production_lineage(events) if v != current]
    return older[keep_previous_versions:]


# -- moves ------------------------------------------------------------------------------------------------------


def _events(registry: ModelRegistry, history: DeploymentHistory) -> list[DeploymentEvent]:
    return _newest_first(history.deployment_history(registry.model_name, limit=HISTORY_LIMIT))


def _record(history: DeploymentHistory, event: DeploymentEvent) -> DeploymentEvent:
    history.record_deployment(event)
    log.info(
        "%s %s: %s -> %s by %s (%s)",
        event.action, event.model_name, event.from_version, event.to_version, event.actor, event.reason,
    )
    return event


def _event(
    action: DeploymentAction,
    registry: ModelRegistry,
    from_version: str | None,
    to_version: str | None,
    *,
    reason: str,
    actor: str,
    run_id: str | None,
    at: datetime,
    details: Mapping[str, Any],
) -> DeploymentEvent:
    return DeploymentEvent(
        action=action,
        model_name=registry.model_name,
        from_version=from_version,
        to_version=to_version,
        reason=reason,
        actor=actor,
        run_id=run_id,
        at=at,
        details=dict(details),
    )


def _ready_version(registry: ModelRegistry, version: str, doing: str) -> None:
    try:
        info = registry.get_version(version)
    except RegistryNotFoundError as e:
        raise DeploymentError(f"cannot {doing} version {version} of {registry.model_name!r}: it does not exist") from e
    if info.status != "READY":
        raise DeploymentError(f"cannot {doing} version {version}: its status is {info.status}, not READY")


def _drop_candidate_alias(registry: ModelRegistry, version: str) -> None:
    if registry.candidate_version() == version:
        registry.remove_alias("candidate")


def apply_retention(
    registry: ModelRegistry, events: Sequence[DeploymentEvent], *, current: str, keep_previous_versions: int
) -> list[str]:
    """Tag ``archived=true`` on served versions outside the retention window; returns the versions archived now.

    A version deleted from the registry since is skipped with a warning: it is no rollback target either way.
    """
    planned = versions_to_archive(events, current=current, keep_previous_versions=keep_previous_versions)
    if not planned:
        return []
    known = {v.version: v for v in registry.list_versions()}  # one call, not one per version
    archived = []
    for version in planned:
        if version not in known:
            log.warning("model %s: version %s is in the history but not in the registry", registry.model_name, version)
        elif not known[version].archived:
            registry.set_tags(version, {"archived": "true"})
            archived.append(version)
    if archived:
        log.info("model %s: archived versions %s (keep_previous_versions=%d)", registry.model_name, archived,
                 keep_previous_versions)
    return archived


def deploy(
    registry: ModelRegistry,
    history: DeploymentHistory,
    version: str,
    *,
    reason: str,
    actor: str = "tuneloop",
    run_id: str | None = None,
    keep_previous_versions: int = 5,
    details: Mapping[str, Any] | None = None,
    clock: Clock = _utcnow,
) -> DeploymentEvent:
    """Make ``version`` production: old production becomes ``previous``, the candidate alias goes, tags and
    history record it, versions beyond the retention window are archived.

    Deploying the version that is already production records nothing new and returns the event that made it
    production (when the history lacks one -- a crash between the alias move and the record -- it is recorded).
    """
    version = str(version)
    _ready_version(registry, version, "deploy")
    current = registry.production_version()
    events = _events(registry, history)
    if current == version:
        _drop_candidate_alias(registry, version)
        latest = next((e for e in events if e.action in _PRODUCTION_MOVES), None)
        if latest is not None and latest.to_version == version:
            log.info("model %s: version %s is already production; nothing to do", registry.model_name, version)
            apply_retention(registry, events, current=version, keep_previous_versions=keep_previous_versions)
            return latest
        current = registry.previous_version()  # finish a deploy whose history record was lost

    registry.set_alias("production", version)
    if current is not None and current != version:
        registry.set_alias("previous", current)
    else:
        registry.remove_alias("previous")
    _drop_candidate_alias(registry, version)
    at = clock()
    registry.set_tags(version, {"decision": "deployed", "deployed_at": at.isoformat(), "deployed_by": actor})
    if registry.get_version(version).archived:
        registry.delete_tag(version, "archived")  # redeployed: it is a rollback target again

    event = _event("deploy", registry, current, version, reason=reason, actor=actor, run_id=run_id, at=at,
                   details={**(details or {}), "previous": current})
    archived = apply_retention(registry, [event, *events], current=version,
                               keep_previous_versions=keep_previous_versions)
    if archived:
        event = replace(event, details={**event.details, "archived": archived})
    return _record(history, event)


def reject(
    registry: ModelRegistry,
    history: DeploymentHistory,
    version: str,
    *,
    reason: str,
    actor: str = "tuneloop",
    run_id: str | None = None,
    details: Mapping[str, Any] | None = None,
    clock: Clock = _utcnow,
) -> DeploymentEvent:
    """Refuse a candidate: production untouched, the version tagged ``decision=rejected``, candidate alias removed.

    The event's from/to are the (unchanged) production version; the rejected version is ``details["version"]``.
    Rejecting the production version is refused (roll back instead); rejecting twice records once.
    """
    version = str(version)
    try:
        info = registry.get_version(version)
    except RegistryNotFoundError as e:
        raise DeploymentError(f"cannot reject version {version} of {registry.model_name!r}: it does not exist") from e
    current = registry.production_version()
    if version == current:
        raise DeploymentError(f"version {version} is production; use rollback to take it out of service")
    _drop_candidate_alias(registry, version)
    if info.tags.get("decision") == "rejected":
        for event in _events(registry, history):
            if event.action == "reject" and event.details.get("version") == version:
                log.info("model %s: version %s already rejected; nothing to do", registry.model_name, version)
                return event
    event = _event("reject", registry, current, current, reason=reason, actor=actor, run_id=run_id, at=clock(),
                   details={**(details or {}), "version": version})
    registry.set_tags(version, {"decision": "rejected", "rejected_at": event.at.isoformat(), "rejected_by": actor,
                                "rejected_reason": reason[:MAX_TAG_CHARS]})
    return _record(history, event)


def _unavailable(registry: ModelRegistry, versions: Collection[str]) -> dict[str, str]:
    """Which of ``versions`` cannot be rollback targets, and why."""
    known = {v.version: v for v in registry.list_versions()}
    why: dict[str, str] = {}
    for version in versions:
        if version not in known:
            why[version] = "deleted from the registry"
        elif known[version].archived:
            why[version] = "archived (outside keep_previous_versions)"
    return why


def rollback(
    registry: ModelRegistry,
    history: DeploymentHistory,
    *,
    to_version: str | None = None,
    reason: str,
    actor: str = "tuneloop",
    run_id: str | None = None,
    details: Mapping[str, Any] | None = None,
    clock: Clock = _utcnow,
    end_canary: bool = True,
) -> DeploymentEvent:
    """Put an earlier version back in production: ``previous`` by default, or ``to_version``. When a person
    rolls back (``end_canary``, the default: the CLI and the rollback DAG) while a canary runs, the newest change is
    the canary: without ``to_version`` it is ended (traffic back to production, which stays) and its end event
    returned; with ``to_version`` it is ended and production rolled back too. An automatic rollback of a version
    this run put in production passes ``end_canary=False``: it undoes that and nothing else.

    Raises RollbackError with the reasons when there is nothing to roll back to or the request is not allowed.
    A retry with the same ``run_id`` (an Airflow task retry) does not roll back a second time.
    """
    from tuneloop.rollout import end_canary as end_running_canary

    if end_canary and run_id is not None and to_version is None:  # a retry of one that ended a canary: that was all
        for event in _events(registry, history):
            if event.action == "canary_end" and event.run_id == run_id:
                return event
    ended = end_running_canary(registry, history, how="rolled_back", reason=reason, actor=actor, run_id=run_id,
                               details=details, clock=clock) if end_canary else None
    if ended is not None and to_version is None:
        return ended
    requested = None if to_version is None else str(to_version)
    current = registry.production_version()
    events = _events(registry, history)
    if run_id is not None:
        for event in events:
            if event.action == "rollback" and event.run_id == run_id and event.to_version == current:
                log.info("model %s: run %s already rolled back to %s", registry.model_name, run_id, current)
                return event
    previous = registry.previous_version()
    mentioned = {v for e in events for v in (e.from_version, e.to_version) if v is not None}
    mentioned |= {v for v in (previous, requested) if v is not None}
    mentioned -= {current} if current else set()
    target = choose_rollback_target(
        events, current=current, requested=requested, previous=previous,
        unavailable=_unavailable(registry, mentioned),
    )
    if not target.found or target.version is None or current is None:
        raise RollbackError(f"cannot roll back {registry.model_name!r}: " + "; ".join(target.reasons))

    registry.set_alias("production", target.version)
    if target.new_previous is None:
        registry.remove_alias("previous")
    else:
        registry.set_alias("previous", target.new_previous)
    event = _event("rollback", registry, current, target.version, reason=reason, actor=actor, run_id=run_id,
                   at=clock(), details={**(details or {}), "previous": target.new_previous,
                                         "requested": requested, "reasons": list(target.reasons)})
    registry.set_tags(current, {"decision": "rolled_back", "rolled_back_at": event.at.isoformat(),
                                "rolled_back_reason": reason[:MAX_TAG_CHARS]})
    return _record(history, event)


def register(
    registry: ModelRegistry,
    history: DeploymentHistory,
    model_dir: Path | str,
    *,
    run_id: str,
    airflow_run_id: str,
    reason: str = "candidate trained",
    actor: str = "tuneloop",
    tags: Mapping[str, Any] | None = None,
    serving_code: Path | None = None,
    pip_requirements: Sequence[str] | None = None,
    signature: Any = None,
    model_config: Mapping[str, Any] | None = None,
    clock: Clock = _utcnow,
) -> str:
    """Register a trained model as the candidate (:meth:`ModelRegistry.register_candidate`), recorded once.

    ``run_id`` is the MLflow run the model is logged into; the event carries ``airflow_run_id``. The ``register``
    event leaves production unchanged (from = to = production); the version is in details.
    """
    existed = registry.exists() and registry.find_version_by_run(airflow_run_id) is not None
    version = registry.register_candidate(model_dir, run_id=run_id, airflow_run_id=airflow_run_id, tags=tags,
                                          serving_code=serving_code, pip_requirements=pip_requirements,
                                          signature=signature, model_config=model_config)
    if not existed:
        current = registry.production_version()
        _record(history, _event("register", registry, current, current, reason=reason, actor=actor,
                                run_id=airflow_run_id, at=clock(), details={"version": version}))
    return version


def bootstrap_production(
    registry: ModelRegistry,
    history: DeploymentHistory,
    model_dir: Path | str | None = None,
    *,
    version: str | None = None,
    run_id: str | None = None,
    airflow_run_id: str = "bootstrap",
    reason: str = "first production model",
    actor: str = "tuneloop",
    tags: Mapping[str, Any] | None = None,
    serving_code: Path | str | None = None,
    pip_requirements: Sequence[str] | None = None,
    signature: Any = None,
    model_config: Mapping[str, Any] | None = None,
    clock: Clock = _utcnow,
) -> DeploymentEvent:
    """Give a model its first production version: ``model_dir`` registered now (logged into MLflow run
    ``run_id``), or an existing ``version``. Refused when another version is already production -- that is a
    deploy, which must pass the gate. Idempotent like :func:`deploy` (``airflow_run_id`` keys the registration).
    """
    if model_dir is not None and version is None:
        if run_id is None:
            raise DeploymentError("bootstrap_production with model_dir needs the MLflow run_id to log it into")
        version = registry.register_candidate(
            model_dir, run_id=run_id, airflow_run_id=airflow_run_id, tags=tags, serving_code=serving_code,
            pip_requirements=pip_requirements, signature=signature, model_config=model_config,
        )
    elif version is None or model_dir is not None:
        raise DeploymentError("bootstrap_production needs exactly one of model_dir and version")
    version = str(version)
    _ready_version(registry, version, "bootstrap")
    current = registry.production_version()
    if current is not None:
        if current != version:
            raise DeploymentError(
                f"{registry.model_name!r} already has production version {current}; bootstrap only sets the first "
                "production model -- use deploy (through the gate) or rollback"
            )
        _drop_candidate_alias(registry, version)
        latest = next((e for e in _events(registry, history) if e.action in _PRODUCTION_MOVES), None)
        if latest is not None and latest.to_version == version:
            return latest
    registry.set_alias("production", version)
    registry.remove_alias("previous")
    _drop_candidate_alias(registry, version)
    event = _event("bootstrap", registry, None, version, reason=reason, actor=actor, run_id=airflow_run_id,
                   at=clock(), details={})
    registry.set_tags(version, {"decision": "bootstrap", "deployed_at": event.at.isoformat(), "deployed_by": actor})
    return _record(history, event)


__all__ = [
    "DeploymentError",
    "DeploymentHistory",
    "RollbackError",
    "RollbackTarget",
    "apply_retention",
    "bootstrap_production",
    "choose_rollback_target",
    "deploy",
    "predecessor",
    "production_lineage",
    "register",
    "reject",
    "rollback",
    "versions_to_archive",
]
