"""The router over a real local MLflow registry (real pyfunc versions loaded through the registry) and a real store:
the canary's share, stickiness, an alias move picked up without a restart, every request recorded."""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.standins.clock import ManualClock
from tests.tuneloop.registry_testing import SERVING_CODE, MemoryHistory, MlflowEnv
from tuneloop.deployment import bootstrap_production, register
from tuneloop.rollout import end_canary, start_canary
from tuneloop.serving.router import NoProductionModel, Router, registry_loader
from tuneloop.store import ErrorCaseStore

KEYS = [f"user-{i}" for i in range(200)]


@pytest.fixture
def store(tmp_path: Path):
    with ErrorCaseStore(f"sqlite:///{tmp_path / 'store.db'}") as store:
        yield store


@pytest.fixture
def served_model(env: MlflowEnv):
    """A registered model whose production version answers "<INPUT>:base"; version 2 ("tuned") registered."""
    registry, history = env.registry(), MemoryHistory()
    common = {"serving_code": SERVING_CODE, "pip_requirements": ["pandas"]}
    base = bootstrap_production(registry, history, env.model_dir("base"), run_id=env.new_run(), **common).to_version
    tuned = register(registry, history, env.model_dir("tuned"), run_id=env.new_run(), airflow_run_id="w1", **common)
    return registry, history, base, tuned


def test_requests_follow_the_aliases_without_a_restart_and_are_recorded(served_model, store):
    registry, history, base, tuned = served_model
    clock = ManualClock()
    router = Router(registry, store, refresh_seconds=30, monotonic=clock)

    first = router.predict(["hi"], key="user-1", request_id="req-1")
    assert (first.output, first.version, first.arm) == (["HI:base"], base, "production")
    recorded = store.served_request("req-1")
    assert (recorded.model_version, recorded.arm, recorded.outcome) == (base, "production", None)
    assert recorded.latency_ms == pytest.approx(first.latency_ms)

    start_canary(registry, history, tuned, traffic_percent=50, reason="gate passed")
    assert router.predict(["hi"], key="user-1").version == base  # the split is read again after 30 s
    clock.tick(30)
    answers = {key: router.predict(["hi"], key=key) for key in KEYS}
    canary = {key for key, served in answers.items() if served.arm == "canary"}
    assert 0.35 < len(canary) / len(KEYS) < 0.65
    assert all(answers[key].output == ["HI:tuned"] and answers[key].version == tuned for key in canary)
    assert all(router.predict(["again"], key=key).arm == answers[key].arm for key in KEYS[:50])  # sticky
    since = datetime.now(UTC) - timedelta(hours=1)
    assert store.judged_counts(tuned, since=since) == (0, 0)  # served, not judged yet
    store.record_outcome(answers[next(iter(canary))].request_id, "error")
    assert store.judged_counts(tuned, since=since) == (1, 1)

    end_canary(registry, history, how="promoted", reason="online test: fewer errors")
    clock.tick(30)
    assert {router.predict(["hi"], key=key).version for key in KEYS[:20]} == {tuned}
    assert set(router._models) == {tuned}  # the old production version was unloaded


def test_a_model_without_production_cannot_be_served(env: MlflowEnv, store):
    with pytest.raises(NoProductionModel, match="'empty' has no production version to serve"):
        Router(env.registry("empty"), store).predict(["hi"], key="k")


def test_a_request_without_a_key_is_its_own_key(served_model, store):
    registry, history, base, tuned = served_model
    start_canary(registry, history, tuned, traffic_percent=50, reason="gate passed")
    router = Router(registry, store, refresh_seconds=0)
    arms = {router.predict(["hi"]).arm for _ in range(40)}
    assert arms == {"production", "canary"}  # new request ids land on both arms


def test_concurrent_first_requests_load_each_version_once(served_model, store):
    """Eight clients arriving together get one load per version (loads serialised): no copies of the weights, and
    MLflow's unguarded ``dbutils`` stand-in for models-from-code is not left in ``sys.modules``."""
    registry, history, base, tuned = served_model
    start_canary(registry, history, tuned, traffic_percent=50, reason="gate passed")
    loads, inside, most_inside, count = [], [0], [0], threading.Lock()

    def load(version: str):
        with count:
            loads.append(version)
            inside[0] += 1
            most_inside[0] = max(most_inside[0], inside[0])
        time.sleep(0.05)  # long enough for the other clients to arrive
        model = registry.load_pyfunc(version)
        with count:
            inside[0] -= 1
        return model

    router = Router(registry, store, refresh_seconds=0, load=load)
    with ThreadPoolExecutor(8) as pool:
        served = list(pool.map(lambda i: router.predict(["hi"], key=f"user-{i}"), range(64)))
    assert {s.version for s in served} == {base, tuned}
    assert sorted(loads) == sorted([base, tuned]) and most_inside[0] == 1
    assert "dbutils" not in sys.modules


def test_a_managed_version_is_served_with_the_connection_s_credentials(env: MlflowEnv, store, airflow_env,
                                                                       monkeypatch, tmp_path):
    """``tuneloop serve``'s loader: an OpenAI model in production answers through the API with the key of the
    Airflow connection its settings name (the version holds no credentials), replies as long as it was evaluated
    with; the request's usage is recorded."""
    from tests.standins.openai_api import OpenAIStandIn
    from tuneloop.config import TrainingConfig
    from tuneloop.managed.reference import ManagedModel, serving, write_managed

    key = "sk-serve-secret"
    with OpenAIStandIn(api_key=key, reply=lambda body: f"answer from {body['model']}") as api:
        monkeypatch.setenv("AIRFLOW_CONN_TUNELOOP_SERVE_TEST", json.dumps(
            {"conn_type": "openai", "host": api.base_url, "password": key}))
        model = ManagedModel(provider="openai", model="ft:gpt-4.1-mini-2025-04-14:acme:support:abc123")
        write_managed(tmp_path / "managed", model)
        how = serving("openai")
        registry = env.registry("support-chat")
        bootstrap_production(registry, MemoryHistory(), tmp_path / "managed", run_id=env.new_run(),
                             tags={"provider": "openai", "provider_model": model.model}, serving_code=how.code,
                             pip_requirements=how.requirements, signature=how.signature, model_config=how.model_config)
        training = TrainingConfig.model_validate({"openai": {"conn_id": "tuneloop_serve_test", "max_retries": 0,
                                                             "max_reply_tokens": 77}})
        router = Router(registry, store, load=registry_loader(registry, training), params=how.request_params)
        served = router.predict([[{"role": "user", "content": "hi"}]], request_id="r1")
        assert served.output == [f"answer from {model.model}"]
        recorded = store.served_request("r1")  # with the API's usage (the stand-in counts words)
        assert (recorded.model_version, recorded.prompt_tokens, recorded.completion_tokens) == ("1", 1, 3)
        assert [request["model"] for request in api.requests] == [model.model]  # the stand-in requires the key
        assert api.requests[0]["max_completion_tokens"] == 77  # as long as its evaluated replies


def test_a_model_whose_credentials_expire_is_loaded_again_in_the_background():
    """Renewing: the loaded model answers while a fresh one loads; due again ``renew_seconds`` after a load, a
    minute after a failed one."""
    from tuneloop.serving.router import Renewing

    clock, loads, outcomes = ManualClock(), [], iter([None, None, RuntimeError("token endpoint down"), None])

    class Answers:
        def __init__(self, n: int) -> None:
            self.n = n

        def predict(self, model_input, params=None):
            return [f"load {self.n}"]

    def load():
        failure = next(outcomes)
        if failure:
            raise failure
        loads.append(clock())
        return Answers(len(loads))

    def predict_and_settle(model):
        answer = model.predict(["hi"])
        for thread in threading.enumerate():
            if thread.name == "tuneloop-renew-credentials":
                thread.join(timeout=10)
        return answer

    model = Renewing(load, 1800, monotonic=clock)
    assert predict_and_settle(model) == ["load 1"]
    clock.tick(1799)
    assert predict_and_settle(model) == ["load 1"] and len(loads) == 1
    clock.tick(1)
    assert predict_and_settle(model) == ["load 1"]  # answered by the old one while the new one loaded
    assert predict_and_settle(model) == ["load 2"]
    clock.tick(1800)
    assert predict_and_settle(model) == ["load 2"]  # this renewal fails: the old one answers on
    clock.tick(59)
    assert predict_and_settle(model) == ["load 2"] and len(loads) == 2
    clock.tick(1)
    predict_and_settle(model)
    assert predict_and_settle(model) == ["load 3"]


def test_a_request_whose_usage_is_partly_missing_records_none(served_model, store):
    """Usage is recorded only when every row of the answer reports it: unknown is not zero tokens."""
    import pandas as pd

    registry, history, base, tuned = served_model

    class WithUsage:
        def predict(self, model_input, params=None):
            assert params == {"with_usage": True}
            return pd.DataFrame({"reply": ["a", "b"], "prompt_tokens": [5, None], "completion_tokens": [2, 3]})

    router = Router(registry, store, load=lambda version: WithUsage(), params={"with_usage": True})
    served = router.predict(["x", "y"], request_id="partial")
    assert served.output == ["a", "b"]
    recorded = store.served_request("partial")
    assert (recorded.prompt_tokens, recorded.completion_tokens) == (None, None)
