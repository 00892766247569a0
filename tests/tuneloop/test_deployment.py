"""Deploy / reject / rollback: pure decisions on constructed histories, moves against a real local MLflow."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from tests.tuneloop.registry_testing import SERVING_CODE, MemoryHistory, MlflowEnv
from tuneloop.deployment import (
    DeploymentError,
    RollbackError,
    aliases_from_history,
    bootstrap_production,
    choose_rollback_target,
    deploy,
    production_lineage,
    register,
    reject,
    rollback,
    versions_to_archive,
)
from tuneloop.history import DeploymentEvent
from tuneloop.registry import ModelRegistry

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def _clock() -> Callable[[], datetime]:
    minutes = itertools.count()
    return lambda: T0 + timedelta(minutes=next(minutes))


def _events(*moves: tuple[str, str | None, str | None]) -> list[DeploymentEvent]:
    """``(action, from, to)`` in chronological order, returned newest first like the store."""
    return [
        DeploymentEvent(action, "m", from_v, to_v, "why", at=T0 + timedelta(hours=i))  # type: ignore[arg-type]
        for i, (action, from_v, to_v) in enumerate(moves)
    ][::-1]


# v1 -> v2 -> v3 (bad, rolled back to v2) -> v4 deployed from v2: production v4, previous v2.
HISTORY = _events(
    ("bootstrap", None, "1"), ("deploy", "1", "2"), ("deploy", "2", "3"), ("rollback", "3", "2"), ("deploy", "2", "4")
)


# -- pure decisions --------------------------------------------------------------------------------------------


def test_default_rollback_goes_to_previous_and_moves_previous_one_step_back() -> None:
    target = choose_rollback_target(HISTORY, current="4", previous="2")
    assert (target.version, target.new_previous) == ("2", "1")
    assert target.reasons == (
        "rolling back from version 4 to version 2, the 'previous' alias",
        "'previous' will point to version 1, production before 2",
    )


def test_a_version_rolled_back_from_is_not_chosen_by_default() -> None:
    """v3 was production after v2 but was rolled back; v4's lineage is v2 -> v1, never v3."""
    target = choose_rollback_target(HISTORY, current="4", previous=None)
    assert (target.version, target.new_previous) == ("2", "1")
    assert target.reasons[0] == "the 'previous' alias is not set"


def test_requested_version_must_have_served() -> None:
    assert choose_rollback_target(HISTORY, current="4", requested="3").version == "3"
    never = choose_rollback_target(HISTORY, current="4", requested="7")
    assert not never.found
    assert never.reasons[0].startswith("version 7 was never production (versions that were: 2, 3, 1)")
    assert choose_rollback_target(HISTORY, current="4", requested="4").reasons == ("version 4 is already production",)


def test_archived_versions_are_not_targets() -> None:
    archived = {"1": "archived (outside keep_previous_versions)"}
    refused = choose_rollback_target(HISTORY, current="4", requested="1", unavailable=archived)
    assert refused.reasons == (
        "version 1 cannot be a rollback target: it is archived (outside keep_previous_versions)",
    )
    target = choose_rollback_target(HISTORY, current="4", previous="2", unavailable=archived)
    assert (target.version, target.new_previous) == ("2", None)
    assert target.reasons[-1] == "'previous' will be removed: no available version was production before 2"


def test_nothing_to_roll_back_to() -> None:
    assert choose_rollback_target([], current=None).reasons == (
        "there is no production version, so there is nothing to roll back",
    )
    first = _events(("bootstrap", None, "1"))
    refused = choose_rollback_target(first, current="1", previous=None)
    assert not refused.found and "no earlier production version of 1 is available" in refused.reasons[-1]


def test_lineage_and_retention() -> None:
    assert production_lineage(HISTORY) == ["4", "2", "3", "1"]
    assert versions_to_archive(HISTORY, current="4", keep_previous_versions=2) == ["1"]
    assert versions_to_archive(HISTORY, current="4", keep_previous_versions=5) == []


# -- moves against MLflow --------------------------------------------------------------------------------------


def _versions(env: MlflowEnv, registry: ModelRegistry, count: int) -> list[str]:
    return [env.quick_version(registry, f"run-{i}") for i in range(1, count + 1)]


def _history_agrees(registry: ModelRegistry, history: MemoryHistory) -> None:
    """What `tuneloop status` reads from the history alone is what the registry's aliases say."""
    aliases = registry.aliases()
    assert aliases_from_history(history.deployment_history()) == {  # newest first, as the store gives them
        "production": aliases.get("production"), "previous": aliases.get("previous")}


def _deploy_all(registry: ModelRegistry, history: MemoryHistory, versions: list[str], keep: int = 5) -> None:
    bootstrap_production(registry, history, version=versions[0], clock=_clock())
    for version in versions[1:]:
        registry.set_alias("candidate", version)
        deploy(registry, history, version, reason=f"gate passed for {version}", actor="airflow", run_id=f"r{version}",
               keep_previous_versions=keep)


def test_deploy_moves_aliases_tags_and_records_history(
    env: MlflowEnv, registry: ModelRegistry, history: MemoryHistory
) -> None:
    v1, v2 = _versions(env, registry, 2)
    boot = bootstrap_production(registry, history, version=v1, actor="alice", clock=_clock())
    assert (boot.action, boot.from_version, boot.to_version) == ("bootstrap", None, v1)
    registry.set_alias("candidate", v2)

    event = deploy(registry, history, v2, reason="gate passed: WER 0.30 -> 0.20", actor="airflow",
                   run_id="scheduled__2024-05-05", clock=lambda: T0)
    assert registry.aliases() == {"production": v2, "previous": v1}
    _history_agrees(registry, history)
    assert event == history.events[-1]
    assert (event.action, event.from_version, event.to_version, event.actor, event.run_id, event.at) == (
        "deploy", v1, v2, "airflow", "scheduled__2024-05-05", T0
    )
    assert event.reason == "gate passed: WER 0.30 -> 0.20"
    tags = registry.get_version(v2).tags
    assert tags["decision"] == "deployed" and tags["deployed_by"] == "airflow"

    again = deploy(registry, history, v2, reason="retry", actor="airflow", run_id="scheduled__2024-05-05")
    assert again == event and len(history.events) == 2  # idempotent


def test_deploy_refuses_a_missing_version(registry: ModelRegistry, history: MemoryHistory, env: MlflowEnv) -> None:
    _versions(env, registry, 1)
    with pytest.raises(DeploymentError, match="cannot deploy version 9 .* does not exist"):
        deploy(registry, history, "9", reason="x")


def test_reject_leaves_production(env: MlflowEnv, registry: ModelRegistry, history: MemoryHistory) -> None:
    v1, v2 = _versions(env, registry, 2)
    bootstrap_production(registry, history, version=v1)
    registry.set_alias("candidate", v2)
    registry.set_tags(v2, {"verdict": "fail"})
    event = reject(registry, history, v2, reason="WER improvement not significant (p=0.31)", actor="airflow",
                   run_id="r2")
    assert registry.aliases() == {"production": v1}
    _history_agrees(registry, history)
    assert (event.action, event.from_version, event.to_version, event.details) == ("reject", v1, v1, {"version": v2})
    tags = registry.get_version(v2).tags
    assert tags["decision"] == "rejected" and tags["rejected_reason"].startswith("WER improvement not significant")
    assert tags["verdict"] == "fail"  # the gate's verdict, set at registration, is kept
    assert reject(registry, history, v2, reason="again") == event and len(history.events) == 2
    with pytest.raises(DeploymentError, match="is production; use rollback"):
        reject(registry, history, v1, reason="x")


def test_rollback_to_previous_then_to_a_given_version(
    env: MlflowEnv, registry: ModelRegistry, history: MemoryHistory
) -> None:
    v1, v2, v3, v4, v5 = _versions(env, registry, 5)
    _deploy_all(registry, history, [v1, v2, v3])

    event = rollback(registry, history, reason="post-deploy WER 0.61 > 0.5", actor="airflow", run_id="rb-1")
    assert (event.action, event.from_version, event.to_version) == ("rollback", v3, v2)
    assert registry.aliases() == {"production": v2, "previous": v1}
    _history_agrees(registry, history)
    assert registry.get_version(v3).tags["rolled_back_reason"] == "post-deploy WER 0.61 > 0.5"
    assert rollback(registry, history, reason="retry", run_id="rb-1") == event  # a task retry does not roll back twice

    rollback(registry, history, reason="still bad", actor="bob")
    assert registry.aliases() == {"production": v1}  # nothing older than v1: previous removed
    _history_agrees(registry, history)
    with pytest.raises(RollbackError, match="nothing to roll back to"):
        rollback(registry, history, reason="and again")

    registry.set_alias("candidate", v4)
    deploy(registry, history, v4, reason="gate passed")
    event = rollback(registry, history, to_version=v3, reason="v3 was fine after all", actor="carol")
    assert registry.aliases() == {"production": v3, "previous": v2}
    _history_agrees(registry, history)
    assert (event.from_version, event.to_version, event.actor, event.details["requested"]) == (v4, v3, "carol", v3)

    reject(registry, history, v5, reason="failed the gate")
    with pytest.raises(RollbackError, match=f"version {v5} was never production"):
        rollback(registry, history, to_version=v5, reason="x")
    with pytest.raises(RollbackError, match="version 99 .*deleted from the registry"):
        rollback(registry, history, to_version="99", reason="x")


def test_versions_outside_keep_previous_versions_are_archived(
    env: MlflowEnv, registry: ModelRegistry, history: MemoryHistory
) -> None:
    versions = _versions(env, registry, 5)
    _deploy_all(registry, history, versions, keep=2)
    archived = [v for v in versions if registry.get_version(v).archived]
    _history_agrees(registry, history)
    assert archived == versions[:2]
    # each deploy names the version it pushed out of the window
    assert [e.details.get("archived") for e in history.events] == [None, None, None, [versions[0]], [versions[1]]]
    with pytest.raises(RollbackError, match="archived"):
        rollback(registry, history, to_version=versions[0], reason="x")
    assert rollback(registry, history, to_version=versions[2], reason="ok").to_version == versions[2]


def test_bootstrap_register_deploy_rollback_served_through_the_alias(
    env: MlflowEnv, registry: ModelRegistry, history: MemoryHistory
) -> None:
    common = {"serving_code": SERVING_CODE, "pip_requirements": ["pandas"]}
    boot = bootstrap_production(registry, history, env.model_dir("base"), run_id=env.new_run(), **common)
    assert registry.load_pyfunc("production").predict(["hi"]) == ["HI:base"]
    with pytest.raises(DeploymentError, match="already has production version"):
        bootstrap_production(registry, history, version=_versions(env, registry, 1)[0])
    assert bootstrap_production(registry, history, version=boot.to_version) == boot

    run_id = env.new_run()
    version = register(registry, history, env.model_dir("tuned"), run_id=run_id, airflow_run_id="w1", **common)
    assert register(registry, history, env.model_dir("tuned"), run_id=run_id, airflow_run_id="w1", **common) == version
    assert [e.action for e in history.events] == ["bootstrap", "register"]
    deploy(registry, history, version, reason="gate passed")
    assert registry.load_pyfunc("production").predict(["hi"]) == ["HI:tuned"]
    rollback(registry, history, reason="smoke check failed")
    assert registry.load_pyfunc("production").predict(["hi"]) == ["HI:base"]
    assert [(e.action, e.from_version, e.to_version) for e in history.events] == [
        ("bootstrap", None, boot.to_version),
        ("register", boot.to_version, boot.to_version),
        ("deploy", boot.to_version, version),
        ("rollback", version, boot.to_version),
    ]
