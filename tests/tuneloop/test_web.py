"""The status page's app in-process, behind Airflow's real auth manager (its users, JWTs and login URL), with a
stand-in that gives some users access to some DAGs only, as the FAB and Keycloak auth managers do.

Two models are configured: ``asr`` (speech, a history of judged versions and a real MLflow registry) and
``support`` (chat, nothing run yet). The browser tests against a running ``airflow api-server`` are in
tests/e2e/test_status_page.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.tuneloop.page_history import write_history
from tests.tuneloop.registry_testing import MlflowEnv, template_db

TWO_MODELS = """
models:
  - {name: asr, task: speech_to_text, model_name: speech-to-text}
  - {name: support, task: chat, model_name: support-assistant}
"""
SECRET = "s3cr3t-pa55"


@pytest.fixture(scope="module")
def airflow_db(airflow_env) -> None:
    """The session's SQLite metadata DB with its tables: token checks read revoked tokens there. Airflow may have
    been imported before ``airflow_env`` set its home, so the ORM is configured again first."""
    from airflow import settings
    from airflow.utils import db

    settings.configure_vars()
    settings.reconfigure_orm()
    db.initdb()


@pytest.fixture
def auth(airflow_db, monkeypatch: pytest.MonkeyPatch, tmp_path) -> Any:
    """Airflow's auth manager, initialised as the API server does: admin, a viewer, an operator, ``helpdesk`` (a
    viewer who may see the support model's DAGs only) and ``trainer`` (may run the weekly DAGs, not the rollback
    ones)."""
    from airflow.api_fastapi.app import _AuthManagerState, init_auth_manager

    passwords = tmp_path / "passwords.json"
    passwords.write_text(json.dumps({"admin": "a", "viewer": "v", "helpdesk": "h", "operator": "o"}))
    monkeypatch.setenv("AIRFLOW__CORE__AUTH_MANAGER", "tests.standins.dag_scoped_auth.DagScopedAuthManager")
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
                       "admin:admin,viewer:viewer,helpdesk:viewer,operator:user,trainer:user")
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "test-jwt-secret-" + "0123456789abcdef" * 4)
    monkeypatch.setenv("TUNELOOP_TEST_DAG_ACCESS", "helpdesk=finetune_weekly_support;"
                       "trainer=finetune_weekly_asr|finetune_weekly_support")  # trains, may not roll back
    monkeypatch.setattr(_AuthManagerState, "instance", None)
    return init_auth_manager()


@pytest.fixture
def installation(tmp_path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> dict[str, Any]:
    """Two models; ``asr`` with 40 runs and 8 versions in its store and v1..v3 in a real MLflow registry."""
    from tuneloop import web
    from tuneloop.config import load_config
    from tuneloop.deployment import bootstrap_production, deploy
    from tuneloop.store import ErrorCaseStore

    config_file = tmp_path / "tuneloop.yaml"
    config_file.write_text(TWO_MODELS)
    monkeypatch.setenv("TUNELOOP_CONFIG", str(config_file))
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    web.loaded_config.cache_clear()
    web._database.cache_clear()
    asr = load_config().for_model("asr")
    asr.home.mkdir(parents=True)
    history = write_history(ErrorCaseStore.from_config(asr), runs=40, versions=8, model_name="speech-to-text")
    env = MlflowEnv.create(asr.home, template_db(tmp_path_factory.getbasetemp()))
    registry = env.registry(asr.mlflow.model_name)
    store = ErrorCaseStore.from_config(asr)
    v1, v2 = (env.quick_version(registry, f"run-{i}") for i in (1, 2))
    bootstrap_production(registry, store, version=v1)
    registry.set_alias("candidate", v2)
    deploy(registry, store, v2, reason="gate passed: <b>WER</b> 0.31 -> 0.22")
    yield {"config": asr, "history": history, "registry": registry}
    web.loaded_config.cache_clear()
    web._database.cache_clear()


@pytest.fixture
def client(auth, installation) -> Iterator[TestClient]:
    """The app mounted under its prefix, as the API server mounts plugin apps."""
    from fastapi import FastAPI

    from tuneloop.web import URL_PREFIX, app

    server = FastAPI()
    server.mount(URL_PREFIX, app)
    with TestClient(server, base_url="http://testserver/tuneloop", follow_redirects=False) as client:
        yield client


def as_user(auth: Any, name: str, role: str) -> dict[str, str]:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return {"Authorization": f"Bearer {auth.generate_jwt(SimpleAuthManagerUser(username=name, role=role))}"}


def test_without_a_session_the_page_sends_to_login_and_the_json_is_refused(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 303
    assert "/auth/login" in page.headers["location"] and "next=" in page.headers["location"]
    for path in ("/api/status", "/api/compare?model=asr&a=1&b=2", "/api/decision?model=asr&run_id=x"):
        assert client.get(path).status_code == 401, path
    assert client.get("/api/status", headers={"Authorization": "Bearer forged.token.here"}).status_code == 403
    assert client.post("/api/rollback", json={"model": "asr", "reason": "bad"}).status_code == 401


def test_the_page_reads_the_session_cookie_like_the_airflow_ui(client: TestClient, auth: Any) -> None:
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    client.cookies.set(COOKIE_NAME_JWT_TOKEN, auth.generate_jwt(SimpleAuthManagerUser(username="viewer",
                                                                                      role="viewer")))
    assert client.get("/").status_code == 200


def test_json_is_tuneloop_status_json(client: TestClient, auth: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """The page and `tuneloop status --json` read one function: the same sections, the same values."""
    from tuneloop.cli import main

    served = client.get("/api/status", headers=as_user(auth, "viewer", "viewer")).json()["models"]
    assert main(["status", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)["models"]
    assert set(served) == set(printed) == {"asr", "support"}
    for name in served:
        assert served[name].keys() == printed[name].keys()
        for key in ("model", "decisions", "trend", "regression_suites", "costs", "cases", "last_runs"):
            assert served[name][key] == printed[name][key], (name, key)
    asr = served["asr"]
    assert asr["model"]["production_version"] == "2" and asr["model"]["previous_version"] == "1"
    assert len(asr["trend"]["points"]) == 8  # v1 (the first run's baseline), then 2..8, each judged by the gate
    assert [c["name"] for c in asr["trigger"]["conditions"]] == [
        "new error cases", "new corrected cases", "error rate", "hours since the last run"]


def test_the_page_shows_versions_trigger_trend_decisions_and_a_comparison(client: TestClient, auth: Any) -> None:
    html = client.get("/", headers=as_user(auth, "viewer", "viewer")).text
    asr = html[html.index('id="model-asr"'):html.index('id="model-support"')]
    production = re.search(r'<tr class="version-production">.*?</tr>', asr).group(0)
    assert "<b>v2</b>" in production and "gate passed: &lt;b&gt;WER&lt;/b&gt; 0.31 -&gt; 0.22" in production
    assert '<svg class="trend-chart"' in asr and asr.count('class="point ') == 8
    assert asr.count("<details class=decision") == 10 and "min_corrected_cases" in asr
    assert "Roll back production" not in asr  # a viewer may not start runs: no rollback form
    compare = client.get("/compare?model=asr&a=4&b=5", headers=as_user(auth, "viewer", "viewer"))
    assert compare.status_code == 200 and '<svg class="metrics-chart"' in compare.text
    assert "v4" in compare.text and "v5" in compare.text


def test_a_user_without_access_to_a_models_dag_sees_nothing_of_it(client: TestClient, auth: Any) -> None:
    helpdesk = as_user(auth, "helpdesk", "viewer")
    html = client.get("/", headers=helpdesk).text
    assert 'id="model-support"' in html and 'id="model-asr"' not in html and "speech-to-text" not in html
    assert "not shown" not in html  # not even how many models there are
    assert set(client.get("/api/status", headers=helpdesk).json()["models"]) == {"support"}
    for path in ("/api/compare?model=asr&a=1&b=2", "/compare?model=asr&a=1&b=2",
                 "/api/decision?model=asr&run_id=x", "/decision?model=asr&run_id=x"):
        assert client.get(path, headers=helpdesk).status_code == 404, path
    answer = client.post("/api/rollback", headers=helpdesk, json={"model": "asr", "reason": "not mine",
                                                                   "production": "2"})
    assert answer.status_code == 404


def test_rollback_needs_the_right_to_run_the_rollback_dag_and_json(client: TestClient, auth: Any,
                                                                    installation: dict[str, Any]) -> None:
    registry = installation["registry"]
    viewer, trainer = as_user(auth, "viewer", "viewer"), as_user(auth, "trainer", "user")
    operator = as_user(auth, "operator", "user")
    asked = {"model": "asr", "reason": "users complain", "production": "2"}
    for who in (viewer, trainer):  # reads the model; may not run finetune_rollback_asr
        assert client.post("/api/rollback", headers=who, json=asked).status_code == 403
        assert "Roll back production" not in client.get("/", headers=who).text
    body = json.dumps(asked).encode()
    for sent in (client.post("/api/rollback", headers=operator, data=asked),  # what another site could send:
                 client.post("/api/rollback", headers=operator, content=body),  # a form, an untyped body,
                 client.post("/api/rollback", headers=operator | {"Content-Type": "text/plain"}, content=body)):
        assert sent.status_code == 422  # ... a text/plain one: not JSON, so no rollback
    assert registry.production_version() == "2"
    assert "Roll back production v2 to v1" in client.get("/", headers=operator).text
    done = client.post("/api/rollback", headers=operator, json=asked)
    assert done.status_code == 200 and done.json()["message"] == "production v2 → v1"
    assert registry.production_version() == "1"
    status = client.get("/api/status", headers=operator).json()["models"]["asr"]["model"]
    assert status["production_since"]["actor"] == "ui:operator"
    assert status["production_since"]["reason"] == "users complain"
    again = client.post("/api/rollback", headers=operator, json=asked)  # a second click on the same page
    assert again.status_code == 409 and "production is v1 now" in again.json()["detail"]
    assert registry.production_version() == "1"


def test_no_secret_is_rendered(client: TestClient, auth: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneloop import web

    monkeypatch.setenv("TUNELOOP__MLFLOW__TRACKING_URI", f"postgresql://tuneloop:{SECRET}@db.internal:5432/mlflow")
    web.loaded_config.cache_clear()
    admin = as_user(auth, "admin", "admin")
    served = client.get("/api/status", headers=admin).text
    assert SECRET not in served and "postgresql://***@db.internal:5432/mlflow" in served
    page = client.get("/", headers=admin).text
    assert SECRET not in page and "MLflow postgresql://***@db.internal:5432/mlflow" in page


def test_unknown_versions_and_runs_are_answered_not_crashed(client: TestClient, auth: Any) -> None:
    admin = as_user(auth, "admin", "admin")
    unknown = client.get("/api/compare?model=asr&a=77&b=78", headers=admin).json()
    assert unknown["known"] == [] and unknown["churn"] is None
    assert client.get("/api/decision?model=asr&run_id=nope", headers=admin).status_code == 404
    assert client.get("/api/compare?model=asr&a=" + "9" * 101 + "&b=1", headers=admin).status_code == 422


def test_a_decision_record_is_read_where_the_report_wrote_it(client: TestClient, auth: Any,
                                                             installation: dict[str, Any], tmp_path) -> None:
    from tuneloop.store import ErrorCaseStore

    store = ErrorCaseStore.from_config(installation["config"])
    kept, gone = store.decided_runs(limit=2)
    record = {"run_id": kept.run_id, "status": kept.status, "task": "speech_to_text", "reason_started": "weekly",
              "candidate_version": kept.candidate_version, "thresholds": {}, "gate": {}}
    path = tmp_path / "decision.json"
    path.write_text(json.dumps(record))
    store.finish_training_run(kept.run_id, kept.status, summary={"record": str(path)})
    store.finish_training_run(gone.run_id, gone.status, summary={"record": str(tmp_path / "deleted.json")})
    admin = as_user(auth, "admin", "admin")
    assert client.get("/api/decision", params={"model": "asr", "run_id": kept.run_id}, headers=admin).json() == record
    page = client.get("/decision", params={"model": "asr", "run_id": kept.run_id}, headers=admin)
    assert page.status_code == 200 and f"&quot;run_id&quot;: &quot;{kept.run_id}&quot;" in page.text
    missing = client.get("/api/decision", params={"model": "asr", "run_id": gone.run_id}, headers=admin)
    assert missing.status_code == 404 and "is gone from" in missing.json()["detail"]
