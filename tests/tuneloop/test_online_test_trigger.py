"""The canary's wait in the triggerer, over a real store: it reads the model's configuration by DAG id, counts both
arms' judged requests since the canary started, and ends with the sequential test's decision."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tuneloop.config import load_config
from tuneloop.store import ErrorCaseStore, ServedRequest
from tuneloop.triggers.online_test import OnlineTestTrigger

START = datetime.now(UTC) - timedelta(hours=1)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path))
    (tmp_path / "tuneloop.yaml").write_text("{}\n")  # the defaults: not the repository's shipped file
    monkeypatch.setenv("TUNELOOP_CONFIG", str(tmp_path / "tuneloop.yaml"))
    monkeypatch.setenv("TUNELOOP__DEPLOYMENT__CANARY__MIN_SAMPLES", "50")
    with ErrorCaseStore.from_config(load_config()) as store:
        start_canary(store)
        yield store


def start_canary(store: ErrorCaseStore, version: str = "2") -> None:
    """The store's history of a running canary (what the trigger checks at every look)."""
    from tuneloop.history import DeploymentEvent

    store.record_deployment(DeploymentEvent(action="canary_start", model_name="speech-to-text", from_version="1",
                                            to_version="1", reason="gate passed", at=START,
                                            details={"version": version, "traffic_percent": 50}))


def serve(store: ErrorCaseStore, version: str, arm: str, requests: int, errors: int, *, before: bool = False) -> None:
    """``requests`` judged requests of ``version``, the first ``errors`` of them wrong."""
    at = START - timedelta(minutes=5) if before else START + timedelta(minutes=1)
    for i in range(requests):
        store.record_served(ServedRequest(request_id=f"{version}-{arm}-{before}-{i}", model_version=version, arm=arm,
                                          served_at=at, outcome="error" if i < errors else "success"))


def first_event(trigger: OnlineTestTrigger) -> dict[str, Any]:
    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("no event")

    return asyncio.run(asyncio.wait_for(first(), timeout=30))


def trigger(**overrides: Any) -> OnlineTestTrigger:
    kwargs = {"dag_id": "finetune_weekly", "canary_version": "2", "production_version": "1",
              "since": START.isoformat(), "deadline": time.time() + 3600, "poll_seconds": 0.01} | overrides
    return OnlineTestTrigger(**kwargs)


def test_a_clearly_worse_canary_ends_the_wait_with_a_rollback(store):
    serve(store, "1", "production", 270, 27)
    serve(store, "2", "canary", 30, 18)
    event = first_event(trigger())
    assert (event["status"], event["decision"]["action"]) == ("decided", "rollback")
    assert event["decision"]["look"]["canary"] == {"requests": 30, "errors": 18}


def test_a_better_canary_is_promoted_once_both_arms_have_min_samples(store):
    serve(store, "1", "production", 450, 135)
    serve(store, "2", "canary", 60, 3)
    serve(store, "2", "canary", 40, 40, before=True)  # served before the canary started: not counted
    event = first_event(trigger())
    assert event["decision"]["action"] == "promote"
    assert event["decision"]["look"]["canary"] == {"requests": 60, "errors": 3}


def test_no_difference_by_the_deadline_keeps_production(store):
    serve(store, "1", "production", 450, 90)
    serve(store, "2", "canary", 60, 12)
    event = first_event(trigger(deadline=time.time() - 1))
    assert event["decision"]["action"] == "keep_production"
    assert "deadline reached: no difference shown" in event["decision"]["reason"]


def test_a_canary_ended_by_hand_ends_the_wait(store):
    from tuneloop.history import DeploymentEvent

    serve(store, "1", "production", 50, 5)
    store.record_deployment(DeploymentEvent(action="canary_end", model_name="speech-to-text", from_version="1",
                                            to_version="1", reason="on-call: stop it", at=START + timedelta(minutes=2),
                                            details={"version": "2", "canary_end": "rolled_back"}))
    event = first_event(trigger())
    assert event["decision"]["action"] == "ended_elsewhere" and event["decision"]["look"] is None


def test_a_store_that_fails_is_looked_at_again_then_the_wait_ends_with_an_error(store, monkeypatch):
    from tuneloop.triggers import online_test as module

    calls = []

    def unavailable(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        raise ConnectionError("the store's database is unreachable")

    monkeypatch.setattr(ErrorCaseStore, "judged_counts", unavailable)
    monkeypatch.setattr(module, "MAX_FAILED_LOOKS", 3)
    event = first_event(trigger())
    assert event == {"status": "error", "message": "ConnectionError: the store's database is unreachable"}
    assert len(calls) == 3  # looked again twice before giving up


def test_the_trigger_serializes_every_argument():
    made = trigger(previous_p=0.5, looks=3)
    path, kwargs = made.serialize()
    assert path == "tuneloop.triggers.online_test.OnlineTestTrigger"
    assert OnlineTestTrigger(**kwargs).serialize() == (path, kwargs)


def test_a_model_the_dag_does_not_belong_to_is_an_error_event(tmp_path, monkeypatch):
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  - {name: support, task: chat, model_name: support-chat}\n")
    monkeypatch.setenv("TUNELOOP_CONFIG", str(config))
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path))
    event = first_event(trigger(dag_id="finetune_weekly_other"))
    assert event["status"] == "error" and "belongs to none of the configured models" in event["message"]
