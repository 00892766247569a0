"""Staged rollouts against a real local MLflow registry: a canary started, ended three ways, refused twice, ended by
a rollback; a green version switched to production in one step, or dropped without production moving."""

from __future__ import annotations


import pytest

from tests.tuneloop.registry_testing import MemoryHistory, MlflowEnv
from tuneloop.deployment import DeploymentError, aliases_from_history, bootstrap_production, deploy, rollback
from tuneloop.registry import ModelRegistry
from tuneloop.rollout import (canary_from_history, drop_green, end_canary, running_canary, stage_green, start_canary,
                              switch_green)


@pytest.fixture
def versions(env: MlflowEnv, registry: ModelRegistry, history: MemoryHistory) -> list[str]:
    """v1 in production, v2 and v3 registered."""
    made = [env.quick_version(registry, f"run-{i}") for i in range(1, 4)]
    bootstrap_production(registry, history, version=made[0])
    return made


def _history_agrees(registry: ModelRegistry, history: MemoryHistory) -> None:
    aliases = registry.aliases()
    assert aliases_from_history(history.deployment_history()) == {
        "production": aliases.get("production"), "previous": aliases.get("previous")}


def test_a_canary_gets_its_share_and_a_second_one_is_refused(registry, history, versions):
    v1, v2, v3 = versions
    registry.set_alias("candidate", v2)
    event = start_canary(registry, history, v2, traffic_percent=10, reason="gate passed", actor="airflow",
                         run_id="r2")
    assert registry.aliases() == {"production": v1, "canary": v2}
    assert (event.action, event.from_version, event.to_version) == ("canary_start", v1, v1)
    assert event.details == {"version": v2, "traffic_percent": 10}
    canary = running_canary(registry)
    assert (canary.version, canary.traffic_percent) == (v2, 10.0) and canary.started_at == event.at
    assert registry.get_version(v2).tags["decision"] == "canary"
    assert canary_from_history(history.deployment_history()) == {  # what tuneloop status shows, without MLflow
        "version": v2, "traffic_percent": 10, "since": event.at.isoformat(), "by": "airflow"}
    assert start_canary(registry, history, v2, traffic_percent=10, reason="retry") == event
    assert len(history.events) == 2  # bootstrap, canary_start
    with pytest.raises(DeploymentError, match=f"already runs a canary \\(version {v2}\\); one canary per model"):
        start_canary(registry, history, v3, traffic_percent=10, reason="another")
    _history_agrees(registry, history)


@pytest.mark.parametrize("percent", [0, 100, -5, 150])
def test_a_canary_share_must_leave_both_arms_traffic(registry, history, versions, percent):
    with pytest.raises(DeploymentError, match="traffic_percent: a canary gets between 0 and 100 percent"):
        start_canary(registry, history, versions[1], traffic_percent=percent, reason="x")


def test_production_is_no_canary_and_a_canary_needs_production(env, registry, history, versions):
    with pytest.raises(DeploymentError, match=f"version {versions[0]} is production already"):
        start_canary(registry, history, versions[0], traffic_percent=10, reason="x")
    other = env.registry("other-model")
    v = env.quick_version(other, "run-x")
    with pytest.raises(DeploymentError, match="has no production version to compare a canary with"):
        start_canary(other, history, v, traffic_percent=10, reason="x")


def test_a_promoted_canary_becomes_production_and_keeps_the_old_one_as_previous(registry, history, versions):
    v1, v2, _ = versions
    start_canary(registry, history, v2, traffic_percent=20, reason="gate passed")
    event = end_canary(registry, history, how="promoted", reason="online test: fewer errors", run_id="r2",
                       details={"online_test": {"always_valid_p": 0.01}})
    assert registry.aliases() == {"production": v2, "previous": v1}
    assert (event.action, event.from_version, event.to_version) == ("deploy", v1, v2)
    assert event.details["canary_end"] == "promoted" and event.details["online_test"] == {"always_valid_p": 0.01}
    assert end_canary(registry, history, how="promoted", reason="retry") is None  # nothing runs any more
    assert canary_from_history(history.deployment_history()) is None
    _history_agrees(registry, history)


@pytest.mark.parametrize("how", ["rolled_back", "not_promoted"])
def test_a_canary_that_is_not_promoted_sends_traffic_back_to_production(registry, history, versions, how):
    v1, v2, v3 = versions
    start_canary(registry, history, v2, traffic_percent=10, reason="gate passed")
    event = end_canary(registry, history, how=how, reason="the online test says so", run_id="r2")
    assert registry.aliases() == {"production": v1}
    assert (event.action, event.from_version, event.to_version) == ("canary_end", v1, v1)
    assert (event.details["version"], event.details["canary_end"]) == (v2, how)
    tags = registry.get_version(v2).tags
    assert tags["decision"] == f"canary_{how}" and tags["canary_end_reason"] == "the online test says so"
    assert running_canary(registry) is None and canary_from_history(history.deployment_history()) is None
    start_canary(registry, history, v3, traffic_percent=10, reason="the next one may start")
    _history_agrees(registry, history)


def test_rollback_ends_a_running_canary_and_leaves_production(registry, history, env, versions):
    v1, v2, v3 = versions
    registry.set_alias("candidate", v2)
    deploy(registry, history, v2, reason="v2 deployed")
    start_canary(registry, history, v3, traffic_percent=10, reason="gate passed")
    event = rollback(registry, history, reason="on-call: stop the canary", actor="bob", run_id="rb-1")
    assert (event.action, event.details["canary_end"], event.actor) == ("canary_end", "rolled_back", "bob")
    assert registry.aliases() == {"production": v2, "previous": v1}
    assert rollback(registry, history, reason="retry", run_id="rb-1") == event  # a retry does not roll production
    assert registry.aliases() == {"production": v2, "previous": v1}

    v4 = env.quick_version(registry, "run-4")
    start_canary(registry, history, v4, traffic_percent=10, reason="gate passed")
    back = rollback(registry, history, to_version=v1, reason="v1 it is", run_id="rb-2")
    assert (back.action, back.to_version) == ("rollback", v1)
    assert registry.aliases() == {"production": v1}
    assert registry.get_version(v4).tags["decision"] == "canary_rolled_back"
    _history_agrees(registry, history)


def test_green_switches_to_production_in_one_step(registry, history, versions):
    v1, v2, _ = versions
    registry.set_alias("candidate", v2)
    staged = stage_green(registry, history, v2, reason="gate passed", run_id="r2")
    assert registry.aliases() == {"production": v1, "green": v2}
    assert (staged.action, staged.details) == ("green", {"strategy": "blue_green", "version": v2})
    assert stage_green(registry, history, v2, reason="retry", run_id="r2") == staged
    event = switch_green(registry, history, reason="green passed its check", run_id="r2")
    assert registry.aliases() == {"production": v2, "previous": v1}
    assert (event.action, event.from_version, event.to_version, event.details["strategy"]) == (
        "deploy", v1, v2, "blue_green")
    assert switch_green(registry, history, reason="retry", run_id="r2") == event
    _history_agrees(registry, history)


def test_a_green_version_that_fails_its_check_never_moves_production(registry, history, versions):
    v1, v2, _ = versions
    stage_green(registry, history, v2, reason="gate passed", run_id="r2")
    event = drop_green(registry, history, reason="post-deploy check on green: WER 0.7 > 0.5", run_id="r2")
    assert registry.aliases() == {"production": v1}
    assert (event.action, event.details) == ("reject", {"strategy": "blue_green", "version": v2})
    assert registry.get_version(v2).tags["decision"] == "rejected"
    assert drop_green(registry, history, reason="retry") is None
    with pytest.raises(DeploymentError, match="has no green version to switch to"):
        switch_green(registry, history, reason="x", run_id="r3")
    _history_agrees(registry, history)


def test_an_automatic_rollback_of_production_leaves_a_running_canary_alone(registry, history, versions):
    """A run's own auto-rollback (replace strategy) undoes its deployment and nothing else."""
    v1, v2, v3 = versions
    start_canary(registry, history, v3, traffic_percent=10, reason="an earlier run's canary")
    registry.set_alias("candidate", v2)
    deploy(registry, history, v2, reason="gate passed")
    event = rollback(registry, history, reason="auto-rollback: post-deploy check failed", run_id="r2",
                     end_canary=False)
    assert (event.action, event.from_version, event.to_version) == ("rollback", v2, v1)
    assert registry.aliases() == {"production": v1, "canary": v3}
