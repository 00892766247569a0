"""Vertex AI clients from an Airflow connection (type google_cloud_platform, from ``AIRFLOW_CONN_*``) through the
google provider's GenAI hook: the connection's service account key gets a token at the stand-in's OAuth endpoint,
requests go to ``training.vertex.api_endpoint`` with it, retries and timeout come from ``training.vertex``."""

from __future__ import annotations

import json
import time

import pytest
from google.genai import errors

from tests.standins import vertex_fixtures
from tests.standins.vertex_fixtures import BASE, PARENT, set_connection
from tuneloop.config import VertexTuningConfig
from tuneloop.hooks.vertex_connection import (RETRY_STATUS, VertexConnectionError, VertexTuningHook, http_options,
                                              serving_config, vertex_client)

CONN = "tuneloop_vertex_connection_test"
# the stand-in's fixtures (its clock here, not tests/tuneloop/conftest.py's)
api, clock, info = (vertex_fixtures.api, vertex_fixtures.clock, vertex_fixtures.info)


@pytest.fixture
def connection(api, info, airflow_env, monkeypatch) -> dict[str, str]:
    set_connection(monkeypatch, CONN, info)
    return info


def _settings(api, **overrides) -> VertexTuningConfig:
    return VertexTuningConfig(**{"conn_id": CONN, "api_endpoint": api.base_url, "max_retries": 0, **overrides})


def test_the_client_gets_a_token_with_the_connection_s_key_and_sends_it(api, connection):
    client = vertex_client(_settings(api))  # no project_id: the connection's
    assert list(client.tunings.list()) == []
    assert [(call.method, call.target) for call in api.calls] == [
        ("POST", "/token"), ("GET", f"/v1beta1/{PARENT}/tuningJobs")]
    assert len(api.tokens) == 1
    token, account = next(iter(api.tokens.items()))
    assert account == connection["client_email"]
    assert api.calls[1].headers["authorization"] == f"Bearer {token}"
    assert connection["private_key_id"] not in json.dumps([call.headers for call in api.calls])

    elsewhere = vertex_client(_settings(api, project_id="other-project", location="europe-west4"))
    with pytest.raises(errors.ClientError, match="denied on resource .*projects/other-project/locations/europe-west4"):
        list(elsewhere.tunings.list())  # training.vertex's project and location win over the connection's


def test_retries_come_from_max_retries(api, connection):
    api.fail_next(2, http_status=429)
    client = vertex_client(_settings(api, project_id="acme-ml", max_retries=2))
    started = time.monotonic()
    assert client.models.generate_content(model=BASE, contents="hi").text == "[[C]]"
    assert len(api.requests) == 3 and time.monotonic() - started >= 1 + 2  # exponential backoff from 1 s

    api.fail_next(1, http_status=503)
    once = vertex_client(_settings(api, max_retries=0))  # held: a genai client closes its connections when collected
    with pytest.raises(errors.ServerError) as raised:
        once.models.generate_content(model=BASE, contents="hi")
    assert raised.value.code == 503 and len(api.requests) == 4  # no retry


def test_http_options_carry_the_endpoint_timeout_and_retries(api):
    options = http_options(_settings(api, max_retries=4, request_timeout_seconds=12.5))
    assert (options.base_url, options.timeout) == (api.base_url, 12_500)
    assert options.retry_options.attempts == 5 and set(options.retry_options.http_status_codes) == set(RETRY_STATUS)
    assert 400 not in RETRY_STATUS and 429 in RETRY_STATUS and 503 in RETRY_STATUS
    assert http_options(VertexTuningConfig()).base_url is None  # Google's endpoint for the location


def test_a_missing_connection_is_an_error_naming_it(api, airflow_env):
    with pytest.raises(VertexConnectionError, match=r"Airflow connection 'tuneloop_absent' \(type "
                                                    r"google_cloud_platform\) is missing"):
        vertex_client(_settings(api, conn_id="tuneloop_absent", project_id="acme-ml"))
    with pytest.raises(VertexConnectionError, match="'tuneloop_absent'"):
        vertex_client(_settings(api, conn_id="tuneloop_absent"))
    assert api.calls == []


def test_no_project_anywhere_is_an_error_saying_what_to_set(api, info, airflow_env, monkeypatch):
    set_connection(monkeypatch, CONN, {k: v for k, v in info.items() if k != "project_id"}, project=None)
    with pytest.raises(VertexConnectionError, match=f"project_id is not set and Airflow connection '{CONN}' names "
                                                    "no project"):
        vertex_client(_settings(api))
    assert list(vertex_client(_settings(api, project_id="acme-ml")).tunings.list()) == []


def test_the_hook_is_the_provider_s_genai_hook(api, connection):
    from airflow.providers.google.cloud.hooks.gen_ai import GenAIGenerativeModelHook

    hook = VertexTuningHook(_settings(api))
    assert isinstance(hook, GenAIGenerativeModelHook) and hook.gcp_conn_id == CONN and hook.project_id == "acme-ml"


def test_serving_config_holds_a_short_lived_token_never_the_key(api, connection):
    config = serving_config(_settings(api, max_retries=3, request_timeout_seconds=20))
    assert set(config) == {"access_token", "project", "location", "base_url", "max_retries", "timeout"}
    assert api.tokens == {config["access_token"]: connection["client_email"]}  # issued for the connection's account
    assert (config["project"], config["location"], config["base_url"]) == ("acme-ml", "us-central1", api.base_url)
    assert (config["max_retries"], config["timeout"]) == (3, 20)
    dumped = json.dumps(config)
    for secret in ("private_key", "private_key_id"):
        assert connection[secret] not in dumped
    assert "PRIVATE KEY" not in dumped and "keyfile" not in dumped
    assert serving_config(VertexTuningConfig(conn_id=CONN, project_id="p"))["base_url"] == ""  # Google's own
