"""The Vertex AI stand-in's authentication, tuning jobs and generateContent, through the real ``google-genai`` client
with real google-auth service-account credentials; datasets live in the GCS emulator.

The stand-in's clock is driven by hand, so every job state is seen exactly and nothing sleeps.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from google import genai
from google.auth.exceptions import RefreshError
from google.auth.transport.requests import Request
from google.genai import errors, types
from google.genai.types import HttpOptions, HttpRetryOptions
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from tests.standins import vertex_fixtures
from tests.standins.vertex_api import CLOUD_PLATFORM, VertexStandIn, last_user_text
from tests.standins.vertex_fixtures import (BASE, BUCKET, LOCATION, PARENT, PROJECT, TOKENS_PER_EXAMPLE, ManualClock,
                                            example, upload)

api, client, clock, info = (vertex_fixtures.api, vertex_fixtures.client, vertex_fixtures.clock, vertex_fixtures.info)

pytestmark = pytest.mark.filterwarnings("ignore::google.genai.errors.ExperimentalWarning")  # tunings.tune warns


def _credentials(info: dict[str, str], scopes: tuple[str, ...] = (CLOUD_PLATFORM,)) -> service_account.Credentials:
    return service_account.Credentials.from_service_account_info(info, scopes=list(scopes))


def _client(api: VertexStandIn, credentials: Any, **options: Any) -> genai.Client:
    """As the product builds it."""
    return genai.Client(vertexai=True, project=PROJECT, location=LOCATION, credentials=credentials,
                        http_options=HttpOptions(base_url=api.base_url, **options))


def _tune(client: genai.Client, training: str | None = None, **config: Any) -> types.TuningJob:
    return client.tunings.tune(base_model=BASE,
                               training_dataset=types.TuningDataset(gcs_uri=training or upload([example(0)])),
                               config=types.CreateTuningJobConfig(**config))


def _api_calls(api: VertexStandIn) -> list[tuple[str, str]]:
    return [(call.method, call.target) for call in api.calls if call.target != "/token"]


# --- authentication ---------------------------------------------------------------------------------------------


def test_the_client_gets_a_token_with_the_service_account_and_sends_it(api, client, info):
    assert list(client.tunings.list()) == []
    assert [(call.method, call.target) for call in api.calls] == [
        ("POST", "/token"), ("GET", f"/v1beta1/{PARENT}/tuningJobs")]
    grant = dict(parse_qsl(api.calls[0].body.decode()))
    assert grant["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer" and grant["assertion"].count(".") == 2
    token = api.calls[1].headers["authorization"].removeprefix("Bearer ")
    assert api.tokens == {token: info["client_email"]}

    client.tunings.list()
    assert len(api.tokens) == 1, "the token is cached until it expires"
    assert info["token_uri"] == api.token_uri and info["type"] == "service_account"


def test_requests_without_a_token_or_with_one_it_did_not_issue_are_401(api, client):
    url = f"{api.base_url}v1beta1/{PARENT}/tuningJobs"
    missing = httpx.get(url)
    assert missing.status_code == 401
    assert missing.json()["error"]["status"] == "UNAUTHENTICATED" and missing.json()["error"]["code"] == 401
    assert httpx.get(url, headers={"authorization": "Bearer ya29.forged"}).status_code == 401

    forged = _client(api, user_credentials.Credentials(token="ya29.forged"))
    with pytest.raises(errors.ClientError) as raised:
        forged.tunings.get(name=f"{PARENT}/tuningJobs/1")
    assert (raised.value.code, raised.value.status) == (401, "UNAUTHENTICATED")


def test_an_assertion_not_signed_by_the_account_key_is_an_invalid_grant(api, info):
    other = api.service_account_info()
    impostor = {**info, "private_key": other["private_key"], "private_key_id": other["private_key_id"]}
    with pytest.raises(RefreshError, match="invalid_grant.*Invalid JWT Signature"):
        _credentials(impostor).refresh(Request())
    unknown = {**other, "client_email": "someone@elsewhere.iam.gserviceaccount.com"}
    with pytest.raises(RefreshError, match="account not found"):
        _credentials(unknown).refresh(Request())
    assert api.tokens == {}


def test_the_token_needs_the_cloud_platform_scope_and_the_account_s_own_project(api):
    read_only = ("https://www.googleapis.com/auth/devstorage.read_only",)
    narrow = _client(api, _credentials(api.service_account_info(), read_only))
    with pytest.raises(errors.ClientError, match="insufficient authentication scopes") as raised:
        list(narrow.tunings.list())
    assert (raised.value.code, raised.value.status) == (403, "PERMISSION_DENIED")

    stranger = _client(api, _credentials(api.service_account_info(project="elsewhere")))
    with pytest.raises(errors.ClientError, match="aiplatform.tuningJobs.list") as raised:
        list(stranger.tunings.list())
    assert raised.value.status == "PERMISSION_DENIED"


# --- tuning jobs ------------------------------------------------------------------------------------------------


def test_a_job_goes_from_pending_to_a_tuned_model_on_an_endpoint(api, client, clock):
    training = upload([example(i) for i in range(10)])
    validation = upload([example(i) for i in range(3)])
    created = _tune(client, training, validation_dataset=types.TuningValidationDataset(gcs_uri=validation),
                    epoch_count=2, learning_rate_multiplier=1.5, adapter_size=types.AdapterSize.ADAPTER_SIZE_FOUR,
                    tuned_model_display_name="support-v1", labels={"run": "r1", "team": "ml"})
    create = next(call for call in api.calls if call.method == "POST" and call.target.endswith("/tuningJobs"))
    assert create.target == f"/v1beta1/{PARENT}/tuningJobs"
    assert json.loads(create.body) == {
        "baseModel": BASE, "tunedModelDisplayName": "support-v1", "labels": {"run": "r1", "team": "ml"},
        "supervisedTuningSpec": {"trainingDatasetUri": training, "validationDatasetUri": validation,
                                 "hyperParameters": {"epochCount": 2, "learningRateMultiplier": 1.5,
                                                     "adapterSize": "ADAPTER_SIZE_FOUR"}}}
    assert created.name.startswith(f"{PARENT}/tuningJobs/") and created.name.rpartition("/")[2].isdigit()
    assert created.state == types.JobState.JOB_STATE_PENDING and created.create_time.timestamp() == clock.now
    assert created.base_model == BASE and created.labels == {"run": "r1", "team": "ml"}
    assert created.supervised_tuning_spec.hyper_parameters.adapter_size == types.AdapterSize.ADAPTER_SIZE_FOUR
    assert created.tuned_model is None and created.tuning_data_stats is None
    assert api.created == 1 and api.jobs[0]["state"] == "JOB_STATE_PENDING"

    clock.tick(1)
    running = client.tunings.get(name=created.name)
    assert running.state == types.JobState.JOB_STATE_RUNNING and running.start_time.timestamp() == clock.now
    assert running.tuned_model is None and running.end_time is None
    stats = running.tuning_data_stats.supervised_tuning_data_stats
    assert (stats.tuning_dataset_example_count, stats.tuning_step_count) == (10, 2 * 2)
    assert stats.total_tuning_character_count == 10 * len("Answer briefly.question 0answer 0")

    clock.tick(10)
    job = client.tunings.get(name=created.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED and job.end_time.timestamp() == clock.now
    assert job.has_ended and job.has_succeeded and job.error is None
    assert job.tuned_model.model.startswith(f"{PARENT}/models/") and job.tuned_model.model.endswith("@1")
    assert job.tuned_model.endpoint.startswith(f"{PARENT}/endpoints/")
    stats = job.tuning_data_stats.supervised_tuning_data_stats
    assert stats.total_billable_token_count == 2 * 10 * TOKENS_PER_EXAMPLE
    assert api.training_examples(job.tuned_model.endpoint) == [example(i) for i in range(10)]


def test_a_tuned_model_is_tuned_further_and_knows_both_jobs_examples(api, client, clock):
    first = _tune(client, upload([example(i) for i in range(10)]))
    clock.tick(11)
    tuned = client.tunings.get(name=first.name).tuned_model
    again = client.tunings.tune(base_model=tuned.model,
                                training_dataset=types.TuningDataset(gcs_uri=upload([example(20)])))
    create = [call for call in api.calls if call.method == "POST" and call.target.endswith("/tuningJobs")][-1]
    assert json.loads(create.body)["preTunedModel"] == {"tuned_model_name": tuned.model}  # genai's own spelling
    assert again.base_model == BASE and again.pre_tuned_model.tuned_model_name == tuned.model
    clock.tick(11)
    endpoint = client.tunings.get(name=again.name).tuned_model.endpoint
    assert api.training_examples(endpoint) == [*(example(i) for i in range(10)), example(20)]
    with pytest.raises(errors.ClientError, match="preTunedModel.tunedModelName") as refused:
        client.tunings.tune(base_model=f"{PARENT}/models/404@1",
                            training_dataset=types.TuningDataset(gcs_uri=upload([example(1)])))
    assert refused.value.code == 400


BAD_LINES = [
    ("{not json", "line 2: not valid JSON"),
    (json.dumps({"contents": []}), 'line 2: "contents" must be a non-empty list'),
    (json.dumps({"contents": [{"role": "assistant", "parts": [{"text": "hi"}]}]}), "line 2: contents[0].role"),
    (json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}), "line 2: the last content must have"),
    (json.dumps({"contents": [{"role": "model", "parts": [{"image": "x"}]}]}), "line 2: contents[0].parts"),
    (json.dumps({**example(1), "systemInstruction": {"parts": []}}), "line 2: systemInstruction.parts"),
]


def test_a_bad_training_line_fails_the_job_when_the_data_is_read(api, client, clock):
    jobs = [(_tune(client, training := upload([example(0), line, example(2)])), training, problem)
            for line, problem in BAD_LINES]
    assert all(created.state == types.JobState.JOB_STATE_PENDING for created, _, _ in jobs)
    clock.tick(1)
    for created, training, problem in jobs:
        job = client.tunings.get(name=created.name)
        assert job.state == types.JobState.JOB_STATE_FAILED and job.end_time.timestamp() == clock.now
        assert job.error.code == 3 and f"Invalid training dataset {training}: {problem}" in job.error.message


def test_a_missing_validation_dataset_fails_the_job(api, client, clock):
    missing = f"gs://{BUCKET}/vertex-standin/missing.jsonl"
    created = _tune(client, validation_dataset=types.TuningValidationDataset(gcs_uri=missing))
    clock.tick(1)
    job = client.tunings.get(name=created.name)
    assert job.state == types.JobState.JOB_STATE_FAILED
    assert job.error.message == f"The validation dataset {missing} does not exist or cannot be read."


REFUSED = [
    ("gemini-1.0-pro", f"gs://{BUCKET}/t.jsonl", {}, "baseModel"),
    (BASE, "/tmp/train.jsonl", {}, "supervisedTuningSpec.trainingDatasetUri"),
    (BASE, f"gs://{BUCKET}/t.jsonl", {"labels": {"Run": "r1"}}, "labels: key 'Run'"),
    (BASE, f"gs://{BUCKET}/t.jsonl", {"labels": {"run": "R1"}}, "labels: value 'R1'"),
    (BASE, f"gs://{BUCKET}/t.jsonl", {"epoch_count": 0}, "epochCount"),
    (BASE, f"gs://{BUCKET}/t.jsonl", {"batch_size": 4}, 'Unknown name "batchSize"'),
]


def test_a_request_the_service_refuses_is_a_400_naming_the_field(api, client):
    for base_model, training, config, field in REFUSED:
        with pytest.raises(errors.ClientError) as raised:
            client.tunings.tune(base_model=base_model, training_dataset=types.TuningDataset(gcs_uri=training),
                                config=types.CreateTuningJobConfig(**config))
        assert (raised.value.code, raised.value.status) == (400, "INVALID_ARGUMENT"), field
        assert field in raised.value.message
    assert api.created == 0


def test_refused_creation_answers_the_programmed_error(api, client):
    api.refuse_jobs = (429, "RESOURCE_EXHAUSTED", "Quota exceeded for tuning jobs.")
    with pytest.raises(errors.ClientError) as raised:
        _tune(client)
    assert (raised.value.code, raised.value.status, raised.value.message) == (
        429, "RESOURCE_EXHAUSTED", "Quota exceeded for tuning jobs.")
    assert api.jobs == []


def test_jobs_are_listed_newest_first_by_label_filter_and_page(api, client, clock):
    names = [_tune(client, labels={"team": team, "run": f"r{i}"}).name for i, team in enumerate("xyxxy")]
    config = types.ListTuningJobsConfig(filter="labels.team=x", page_size=2)
    assert [job.name for job in client.tunings.list(config=config)] == [names[3], names[2], names[0]]
    lists = [target for method, target in _api_calls(api) if method == "GET"]
    assert lists == [f"/v1beta1/{PARENT}/tuningJobs?pageSize=2&filter=labels.team%3Dx",
                     f"/v1beta1/{PARENT}/tuningJobs?pageSize=2&pageToken=2&filter=labels.team%3Dx"]

    both = types.ListTuningJobsConfig(filter='labels.team="y" AND labels.run=r4')
    assert [job.name for job in client.tunings.list(config=both)] == [names[4]]
    clock.tick(1)
    pending = types.ListTuningJobsConfig(filter="state=JOB_STATE_PENDING")
    assert list(client.tunings.list(config=pending)) == []
    with pytest.raises(errors.ClientError, match="Unsupported filter term"):
        client.tunings.list(config=types.ListTuningJobsConfig(filter="create_time>0"))


def test_a_cancelled_job_ends_and_cannot_be_cancelled_again(api, client, clock):
    created = _tune(client)
    assert client.tunings.cancel(name=created.name) is not None
    assert ("POST", f"/v1beta1/{created.name}:cancel") in _api_calls(api)
    clock.tick(100)
    job = client.tunings.get(name=created.name)
    assert job.state == types.JobState.JOB_STATE_CANCELLED and job.error.code == 1 and job.tuned_model is None
    with pytest.raises(errors.ClientError) as raised:
        client.tunings.cancel(name=created.name)
    assert (raised.value.code, raised.value.status) == (400, "FAILED_PRECONDITION")
    with pytest.raises(errors.ClientError) as raised:
        client.tunings.get(name=f"{PARENT}/tuningJobs/404")
    assert (raised.value.code, raised.value.status) == (404, "NOT_FOUND")


def test_running_jobs_fail_or_hold_as_programmed(api, client, clock):
    api.hold_running = True
    held = _tune(client)
    clock.tick(100)
    assert client.tunings.get(name=held.name).state == types.JobState.JOB_STATE_RUNNING
    api.hold_running = False
    assert client.tunings.get(name=held.name).state == types.JobState.JOB_STATE_SUCCEEDED

    api.fail_running = (13, "Internal error occurred.")
    failing = _tune(client)
    clock.tick(1 + 4)
    assert client.tunings.get(name=failing.name).state == types.JobState.JOB_STATE_RUNNING
    clock.tick(1)
    job = client.tunings.get(name=failing.name)
    assert job.state == types.JobState.JOB_STATE_FAILED and (job.error.code, job.error.message) == (
        13, "Internal error occurred.")


# --- generate content -------------------------------------------------------------------------------------------


def _succeeded(client: genai.Client, clock: ManualClock, examples: list[dict[str, Any]]) -> types.TuningJob:
    created = _tune(client, upload(examples))
    clock.tick(11)
    return client.tunings.get(name=created.name)


def test_generate_content_answers_by_the_reply_rule_on_base_models_and_tuned_endpoints(api, client, clock):
    def reply(body: dict[str, Any], model: str) -> str:
        if "/endpoints/" in model:  # a tuned model answers what it was trained to
            trained = {example["contents"][0]["parts"][0]["text"]: example["contents"][-1]["parts"][0]["text"]
                       for example in api.training_examples(model)}
            return trained.get(last_user_text(body), "I was not trained on that.")
        return f"{model.rpartition('/')[2]} says: {last_user_text(body)}"

    api.reply = reply
    response = client.models.generate_content(model=BASE, contents="hello there",
                                              config=types.GenerateContentConfig(system_instruction="Be brief."))
    assert response.text == f"{BASE} says: hello there"
    assert ("POST", f"/v1beta1/{PARENT}/publishers/google/models/{BASE}:generateContent") in _api_calls(api)
    usage = response.usage_metadata
    assert (usage.prompt_token_count, usage.candidates_token_count, usage.total_token_count) == (4, 4, 8)
    assert response.model_version == BASE and response.candidates[0].finish_reason == types.FinishReason.STOP
    model, body = api.requests[-1]
    assert model == f"{PARENT}/publishers/google/models/{BASE}"
    assert body["contents"] == [{"role": "user", "parts": [{"text": "hello there"}]}]
    assert body["systemInstruction"]["parts"] == [{"text": "Be brief."}]

    job = _succeeded(client, clock, [example(i) for i in range(3)])
    tuned = client.models.generate_content(model=job.tuned_model.endpoint, contents="question 1")
    assert tuned.text == "answer 1" and tuned.model_version == job.tuned_model.model
    assert ("POST", f"/v1beta1/{job.tuned_model.endpoint}:generateContent") in _api_calls(api)


def test_generate_content_on_what_does_not_serve_is_404(api, client, clock):
    for model in ("gemini-0.9-nano", f"{PARENT}/endpoints/123"):
        with pytest.raises(errors.ClientError) as raised:
            client.models.generate_content(model=model, contents="hi")
        assert (raised.value.code, raised.value.status) == (404, "NOT_FOUND")


def test_failures_are_answered_as_programmed_and_the_client_retries_only_when_told(api, client, info):
    api.fail_next(1)
    with pytest.raises(errors.ClientError) as raised:
        client.models.generate_content(model=BASE, contents="hi")
    assert (raised.value.code, raised.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert client.models.generate_content(model=BASE, contents="hi").text == "[[C]]"

    api.fail_next(1, http_status=503)
    with pytest.raises(errors.ServerError) as raised:
        client.models.generate_content(model=BASE, contents="hi")
    assert raised.value.status == "UNAVAILABLE"

    retrying = _client(api, _credentials(info), retry_options=HttpRetryOptions(attempts=3, initial_delay=0.01,
                                                                               max_delay=0.02, jitter=0))
    api.fail_next(2, http_status=429)
    before = len(api.requests)
    assert retrying.models.generate_content(model=BASE, contents="hi").text == "[[C]]"
    assert len(api.requests) - before == 3


def test_a_tuned_endpoint_is_deleted_before_its_model(api, client, clock, info):
    job = _succeeded(client, clock, [example(0)])
    endpoint, model = job.tuned_model.endpoint, job.tuned_model.model.removesuffix("@1")
    with pytest.raises(errors.ClientError) as raised:
        client.models.delete(model=model)
    assert raised.value.status == "FAILED_PRECONDITION"

    token = next(iter(api.tokens))
    deleted = httpx.delete(f"{api.base_url}v1beta1/{endpoint}", headers={"authorization": f"Bearer {token}"})
    assert deleted.status_code == 200 and deleted.json()["done"] is True
    client.models.delete(model=model)
    assert ("DELETE", f"/v1beta1/{model}") in _api_calls(api)
    assert api.deleted == [endpoint, model]
    with pytest.raises(errors.ClientError) as raised:
        client.models.generate_content(model=endpoint, contents="hi")
    assert raised.value.code == 404
