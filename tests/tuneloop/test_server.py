"""``tuneloop serve``'s HTTP API on loopback: a real router over a real MLflow registry (a chat pyfunc logged from
code) and a real store, called with urllib like any client."""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.tuneloop.registry_testing import MemoryHistory, MlflowEnv
from tuneloop.deployment import bootstrap_production, register
from tuneloop.rollout import start_canary
from tuneloop.serving.router import Router
from tuneloop.serving.server import make_server
from tuneloop.store import ErrorCaseStore
from tuneloop.tasks import task_for

ECHO = Path(__file__).with_name("serving_echo.py")
QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "what is a nickname?"}]


@pytest.fixture
def api(tmp_path: Path, mlflow_template: Path, monkeypatch: pytest.MonkeyPatch):
    """The server on a free loopback port, production "base" and version 2 "tuned" registered; yields a caller,
    the registry, the history and the store."""
    monkeypatch.chdir(tmp_path)
    env = MlflowEnv.create(tmp_path, mlflow_template)
    registry, history = env.registry("support-chat"), MemoryHistory()
    common = {"serving_code": ECHO, "pip_requirements": ["pandas"]}
    bootstrap_production(registry, history, env.model_dir("base"), run_id=env.new_run(), **common)
    register(registry, history, env.model_dir("tuned"), run_id=env.new_run(), airflow_run_id="w1", **common)
    store = ErrorCaseStore(f"sqlite:///{tmp_path / 'store.db'}", model="support", task="chat")
    server = make_server(Router(registry, store, refresh_seconds=0), task_for("chat"), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def call(method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    yield call, registry, history, store
    server.shutdown()
    server.server_close()
    store.close()


def test_predict_answers_records_and_takes_the_outcome(api):
    call, registry, history, store = api
    status, health = call("GET", "/healthz")
    assert (status, health) == (200, {"status": "ok", "model": "support-chat", "production": "1", "canary": None,
                                      "canary_percent": 0.0})
    status, answer = call("POST", "/predict", {"input": QUESTION, "key": "user-1", "request_id": "req-1"})
    assert status == 200 and answer["output"] == "WHAT IS A NICKNAME?:base"
    assert (answer["request_id"], answer["model_version"], answer["arm"]) == ("req-1", "1", "production")
    assert store.served_request("req-1").model_version == "1"

    status, judged = call("POST", "/outcome", {"request_id": "req-1", "outcome": "error"})
    assert (status, judged["outcome"]) == (200, "error")
    assert store.judged_counts("1", since=datetime.now(UTC) - timedelta(hours=1)) == (1, 1)
    status, unnamed = call("POST", "/predict", {"input": {"messages": QUESTION[1:]}})
    assert status == 200 and len(unnamed["request_id"]) == 32  # a new id when none is given


def test_a_canary_gets_its_share_of_keys_through_the_api(api):
    call, registry, history, store = api
    start_canary(registry, history, "2", traffic_percent=30, reason="gate passed")
    assert call("GET", "/healthz")[1]["canary"] == "2"
    with ThreadPoolExecutor(8) as pool:  # concurrent clients, one store
        answers = list(pool.map(lambda i: call("POST", "/predict", {"input": QUESTION, "key": f"user-{i}"}),
                                range(100)))
    assert {status for status, _ in answers} == {200}
    canary = [a for _, a in answers if a["arm"] == "canary"]
    assert 15 <= len(canary) <= 45 and all(a["output"].endswith(":tuned") for a in canary)
    since = datetime.now(UTC) - timedelta(hours=1)
    for _, answer in answers:
        assert call("POST", "/outcome", {"request_id": answer["request_id"], "outcome": "success"})[0] == 200
    assert store.judged_counts("2", since=since) == (len(canary), 0)
    assert store.judged_counts("1", since=since) == (100 - len(canary), 0)


@pytest.mark.parametrize(("path", "body", "status", "error"), [
    ("/predict", {"key": "u"}, 400, "input: missing"),
    ("/predict", {"input": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, 400,
     "input.messages[1].role: the conversation must end with a user turn"),
    ("/predict", {"input": [{"role": "robot", "content": "hi"}]}, 400, "input.messages[0].role: must be one of"),
    ("/predict", {"input": QUESTION, "key": 42}, 400, "key: must be a non-empty string"),
    ("/predict", [1, 2], 400, "body: must be a JSON object"),
    ("/outcome", {"request_id": "nope", "outcome": "error"}, 404, "request_id: 'nope' was not served"),
    ("/outcome", {"request_id": "x", "outcome": "meh"}, 400, "outcome: must be success or error, got 'meh'"),
    ("/outcome", {"outcome": "error"}, 400, "request_id: missing"),
    ("/nowhere", {}, 404, "no such endpoint: POST /nowhere"),
])
def test_a_bad_request_is_refused_naming_the_field_and_the_server_serves_on(api, path, body, status, error):
    call = api[0]
    got, answer = call("POST", path, body)
    assert got == status and answer["error"].startswith(error), answer
    assert call("POST", "/predict", {"input": QUESTION})[0] == 200


def test_a_body_that_is_not_json_is_a_400(api):
    call = api[0]
    status, answer = call("POST", "/predict", raw=b"{not json")
    assert status == 400 and answer["error"].startswith("body: not JSON")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner,
                                                                                       max_size=3), max_leaves=8)


@given(st.one_of(json_values, st.binary(min_size=1).map(lambda b: {"audio_base64": base64.b64encode(b).decode()})))
def test_any_json_is_one_recording_or_refused_naming_the_field_for_speech(value):
    try:
        taken = task_for("speech_to_text").request_input(value)
    except ValueError as error:
        assert str(error).startswith("input.audio_base64: ")
        return
    assert taken == [base64.b64decode(value["audio_base64"])] and taken[0]


@given(json_values)
def test_any_json_is_one_conversation_or_refused_naming_the_field_for_chat(value):
    try:
        taken = task_for("chat").request_input(value)
    except ValueError as error:
        assert str(error).lstrip('"').startswith("input.messages")  # an odd key is quoted: "input.messages[0]. "
        return
    [conversation] = taken
    assert conversation and conversation[-1]["role"] == "user"
