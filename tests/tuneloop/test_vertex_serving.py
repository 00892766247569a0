"""The Vertex AI chat pyfunc (tuneloop_trainer/serving_vertex.py): logged from code into a real MLflow (a
SQLite store in the test's folder), loaded back with the ``model_config`` tuneloop gives it (an access token of the
Airflow connection's service account, from :func:`serving_config`), answering through ``generateContent`` of the
stand-in Vertex AI API on a tuned model's endpoint."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest

from tests.standins import vertex_fixtures
from tests.standins.vertex_api import last_user_text
from tests.standins.vertex_fixtures import PENDING_S, RUNNING_S, example, set_connection, upload
from tuneloop.config import VertexTuningConfig
from tuneloop.hooks.vertex_connection import serving_config
from tuneloop.managed.reference import SERVING_CONFIG_KEYS
from tuneloop_trainer import VERTEX_SERVING_REQUIREMENTS, serving_path, serving_signature

# tunings.tune warns; MLflow warns of no input example and no type hints (on purpose, as serving_chat.py)
pytestmark = pytest.mark.filterwarnings("ignore::google.genai.errors.ExperimentalWarning", "ignore::UserWarning")
# the stand-in's fixtures (its clock here, not tests/tuneloop/conftest.py's)
api, client, clock, info = (vertex_fixtures.api, vertex_fixtures.client, vertex_fixtures.clock, vertex_fixtures.info)

CONN = "tuneloop_vertex_serving_test"
CONVERSATIONS = [
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "question 1"}],
    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi, how can I help?"},
     {"role": "user", "content": "question 2"}],
]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated MLflow SQLite database, built once (seconds) and copied for each test."""
    from tests.tuneloop.registry_testing import template_db

    return template_db(tmp_path_factory.mktemp("mlflow-template"))


@pytest.fixture
def tracking(tmp_path: Path, template: Path) -> Iterator[str]:
    """A real MLflow (SQLite, artifacts in the test's folder) as the current tracking store, put back afterwards."""
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service import utils as tracking_state

    from tests.tuneloop.registry_testing import MlflowEnv

    saved = getattr(tracking_state, "_tracking_uri", None)
    env = MlflowEnv.create(tmp_path, template)
    mlflow.set_tracking_uri(env.uri)
    mlflow.set_experiment(experiment_id=env.experiment_id)
    yield env.uri
    fluent._active_experiment_id = None
    mlflow.set_tracking_uri(saved)  # type: ignore[arg-type]  # None means "unset"


@pytest.fixture
def endpoint(api, client, clock) -> str:
    """A tuned model's endpoint; it answers with its model and the question it was asked."""
    job = client.tunings.tune(base_model="gemini-2.5-flash",
                              training_dataset={"gcs_uri": upload([example(i) for i in range(3)])})
    clock.tick(PENDING_S + RUNNING_S)
    api.reply = lambda body, model: f" {model.rpartition('/')[2]} answers {last_user_text(body)} "
    return client.tunings.get(name=job.name).tuned_model.endpoint


@pytest.fixture
def model_config(api, info, airflow_env, monkeypatch) -> dict[str, Any]:
    """What tuneloop loads the pyfunc with: the connection's short-lived token, never its key."""
    set_connection(monkeypatch, CONN, info)
    return serving_config(VertexTuningConfig(conn_id=CONN, api_endpoint=api.base_url, max_retries=0,
                                             request_timeout_seconds=5))


def _log(tmp_path: Path, reference: dict[str, Any]) -> str:
    """Log the pyfunc as tuneloop does (the model dir holds only managed_model.json); its URI."""
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "managed_model.json").write_text(json.dumps(reference))
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=serving_path("vertex-chat"),
                                       artifacts={"model": str(model_dir)},
                                       pip_requirements=VERTEX_SERVING_REQUIREMENTS,
                                       signature=serving_signature("vertex-chat"),
                                       model_config=dict(SERVING_CONFIG_KEYS["vertex"]))
    return info.model_uri


def test_the_pyfunc_replies_through_generate_content_on_the_endpoint(api, tracking, tmp_path, endpoint,
                                                                     model_config):
    served = mlflow.pyfunc.load_model(_log(tmp_path, {"provider": "vertex", "model": endpoint}),
                                      model_config=model_config)
    endpoint_id = endpoint.rpartition("/")[2]
    replies = served.predict(CONVERSATIONS)
    assert replies == [f"{endpoint_id} answers question 1", f"{endpoint_id} answers question 2"]  # stripped, in order
    assert [model for model, _ in api.requests] == [endpoint, endpoint]
    bodies = sorted((body for _, body in api.requests), key=last_user_text)
    assert bodies[0]["systemInstruction"]["parts"] == [{"text": "Answer briefly."}]
    assert bodies[0]["contents"] == [{"role": "user", "parts": [{"text": "question 1"}]}]
    assert "systemInstruction" not in bodies[1]
    assert [content["role"] for content in bodies[1]["contents"]] == ["user", "model", "user"]
    assert all(body["generationConfig"] == {"temperature": 0, "maxOutputTokens": 64} for body in bodies)
    generate = [call for call in api.calls if call.target.endswith(":generateContent")]
    assert generate and {call.target for call in generate} == {f"/v1beta1/{endpoint}:generateContent"}
    assert {call.headers["authorization"] for call in generate} == {f"Bearer {model_config['access_token']}"}

    assert served.predict(pd.DataFrame({"messages": CONVERSATIONS})) == replies
    assert served.predict(CONVERSATIONS[1]) == replies[1:]  # one conversation
    assert served.predict(CONVERSATIONS, params={"max_new_tokens": 5}) == replies
    assert [body["generationConfig"]["maxOutputTokens"] for _, body in api.requests[-2:]] == [5, 5]
    usage = served.predict(CONVERSATIONS, params={"with_usage": True})  # a server's request: Gemini's usage too
    assert usage["reply"].tolist() == replies and usage["completion_tokens"].tolist() == [4, 4]
    assert usage["prompt_tokens"].tolist() == [4, 8]  # the stand-in counts words: system + question; three turns


def test_the_logged_model_holds_no_credentials(api, tracking, tmp_path, endpoint, model_config):
    uri = _log(tmp_path, {"provider": "vertex", "model": endpoint})
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "downloaded")))
    logged = "".join(path.read_text(errors="replace") for path in local.rglob("*") if path.is_file())
    assert endpoint in logged and model_config["access_token"] not in logged
    assert "PRIVATE KEY" not in logged and "keyfile" not in logged


def test_a_managed_model_of_another_provider_is_refused(api, tracking, tmp_path, model_config):
    uri = _log(tmp_path, {"provider": "openai", "model": "ft:gpt-4.1-mini-2025-04-14:acme::abc123"})
    with pytest.raises(ValueError, match="managed_model.json names provider 'openai', not 'vertex'"):
        mlflow.pyfunc.load_model(uri, model_config=model_config)
    assert api.requests == []


def test_the_serving_file_imports_nothing_from_tuneloop():
    tree = ast.parse(Path(serving_path("vertex-chat")).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not any(name.startswith("tuneloop") for name in imported), imported  # MLflow copies this file alone
    assert serving_path("vertex-chat").endswith("/serving_vertex.py")
