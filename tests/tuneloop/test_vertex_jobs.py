"""One Vertex AI tuning job per run, found again by every retry; replies through generateContent: the real
``google-genai`` client with a service account's credentials against the stand-in Vertex AI API on loopback
(tests/standins/vertex_api.py), its clock driven by hand, the training files in the GCS emulator."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from google.genai import errors
from hypothesis import given
from hypothesis import strategies as st

from tests.standins import vertex_fixtures
from tests.standins.vertex_api import BATCH_SIZE, LABEL_VALUE, last_user_text
from tests.standins.vertex_fixtures import BASE, PARENT, PENDING_S, RUNNING_S, TOKENS_PER_EXAMPLE, example, upload
from tuneloop.managed.chat_api import ReplyError, ReplySettings
from tuneloop.managed.gemini_api import reply_rows
from tuneloop.managed.vertex_jobs import (JobFailed, JobRecord, JobRefused, JobRequest, cancel, is_final, job_state,
                                          label_value, mark_ended, start_or_attach)
from tuneloop.pipeline import run_key

pytestmark = pytest.mark.filterwarnings("ignore::google.genai.errors.ExperimentalWarning")  # tunings.tune warns
# the stand-in's fixtures (its clock here, not tests/tuneloop/conftest.py's)
api, client, clock, info = (vertex_fixtures.api, vertex_fixtures.client, vertex_fixtures.clock, vertex_fixtures.info)

RUN_ID = "scheduled__2026-12-06T00:00:00+00:00"
LABELS = {"tuneloop_model": "support", "tuneloop_run": label_value(run_key(RUN_ID))}
EXAMPLES = 12


@pytest.fixture
def request_(api) -> JobRequest:
    """The run's request, as vertex_training.job_request builds it, on files in the GCS emulator."""
    return JobRequest(base_model=BASE, training_uri=upload([example(i) for i in range(EXAMPLES)]),
                      validation_uri=upload([example(i) for i in range(3)]),
                      display_name=f"support-{run_key(RUN_ID)}", labels=LABELS, epoch_count=2,
                      learning_rate_multiplier=1.5, adapter_size=4)


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return tmp_path / "run" / "training" / "vertex" / "job.json"


def _creations(api) -> list[dict]:
    return [json.loads(call.body) for call in api.calls
            if call.method == "POST" and call.target.endswith("/tuningJobs")]


def _lists(api) -> list[dict[str, str]]:
    return [dict(parse_qsl(call.target.partition("?")[2])) for call in api.calls
            if call.method == "GET" and call.target.partition("?")[0].endswith("/tuningJobs")]


def test_creation_records_the_job_before_returning_and_a_retry_re_attaches(api, client, request_, record):
    seen_at_creation = []

    def log_line(line: str) -> None:
        if line.startswith("created tuning job"):  # the API answered: the record holds the start time, no job yet
            seen_at_creation.append(JobRecord.read(record))
        lines.append(line)

    lines: list[str] = []
    job = start_or_attach(client, record, request_, log_line)
    assert api.created == 1 and job.id.startswith(f"{PARENT}/tuningJobs/") and job.status == "pending"
    assert _creations(api) == [{
        "baseModel": BASE, "tunedModelDisplayName": request_.display_name, "labels": LABELS,
        "supervisedTuningSpec": {"trainingDatasetUri": request_.training_uri,
                                 "validationDatasetUri": request_.validation_uri,
                                 "hyperParameters": {"epochCount": 2, "learningRateMultiplier": 1.5,
                                                     "adapterSize": "ADAPTER_SIZE_FOUR"}}}]
    assert _lists(api) == [{"filter": " AND ".join(f"labels.{k}={v}" for k, v in sorted(LABELS.items())),
                            "pageSize": "20"}]  # no job of the run yet: looked for before creating one
    assert seen_at_creation[0].job_name is None and seen_at_creation[0].started_at > 0
    stored = JobRecord.read(record)
    assert (stored.job_name, stored.ended_jobs, stored.started_at) == (job.id, [], seen_at_creation[0].started_at)
    assert lines == [f"created tuning job {job.id} on {BASE}"]

    again = start_or_attach(client, record, request_, lines.append)
    assert again.id == job.id and api.created == 1 and len(_lists(api)) == 1  # read by its name, not searched for
    assert lines[-1] == f"re-attached to tuning job {job.id} (pending)"
    assert JobRecord.read(record).job_name == job.id


def test_hyperparameters_left_out_leave_vertex_s_defaults(api, client, request_, record):
    plain = JobRequest(base_model=BASE, training_uri=request_.training_uri, validation_uri=None,
                       display_name="plain", labels=LABELS)
    start_or_attach(client, record, plain)
    assert _creations(api)[0]["supervisedTuningSpec"] == {"trainingDatasetUri": request_.training_uri}


def test_a_job_created_but_not_recorded_is_found_by_its_labels(api, client, request_, record, tmp_path):
    """The task died after Vertex answered and before the name was written: the retry finds the job by the run's
    labels, and never takes another run's job."""
    other_run = JobRequest(**{**request_.__dict__, "labels": {**LABELS, "tuneloop_run": label_value(run_key("x"))}})
    other = start_or_attach(client, tmp_path / "other.json", other_run)
    job = start_or_attach(client, record, request_)
    start_or_attach(client, tmp_path / "other-model.json",
                    JobRequest(**{**request_.__dict__, "labels": {**LABELS, "tuneloop_model": "billing"}}))
    assert api.created == 3

    data = json.loads(record.read_text())
    data["job_name"] = None
    record.write_text(json.dumps(data))
    lines: list[str] = []
    found = start_or_attach(client, record, request_, lines.append)
    assert found.id == job.id != other.id and api.created == 3
    assert lines == [f"found tuning job {job.id}, created by an earlier attempt"]
    assert JobRecord.read(record).job_name == job.id


def test_a_reported_failure_lets_the_next_attempt_create_a_new_job(api, client, clock, request_, record):
    api.fail_running = (13, "Internal error occurred.")
    job = start_or_attach(client, record, request_)
    clock.tick(PENDING_S + RUNNING_S)
    failed = start_or_attach(client, record, request_)  # not reported yet: the retry reports this failure
    assert failed.id == job.id and failed.status == "failed" and api.created == 1
    assert (failed.error_code, failed.error_message) == (13, "Internal error occurred.")
    assert failed.failure() == f"tuning job {job.id} failed: error 13: Internal error occurred."

    mark_ended(record, job.id)
    mark_ended(record, job.id)  # once
    assert JobRecord.read(record).ended_jobs == [job.id]
    api.fail_running = None
    lines: list[str] = []
    second = start_or_attach(client, record, request_, lines.append)
    assert second.id != job.id and api.created == 2 and second.status == "pending"
    assert lines == [f"job {job.id} ended and was reported: starting a new one",
                     f"created tuning job {second.id} on {BASE}"]  # the failed job, labelled alike, is skipped
    stored = JobRecord.read(record)
    assert (stored.job_name, stored.ended_jobs) == (second.id, [job.id])

    stored.job_name = None  # the new one lost too: the search finds it, never the reported one
    stored.write(record)
    assert start_or_attach(client, record, request_).id == second.id and api.created == 2


@pytest.mark.parametrize("refusal", [
    (400, "INVALID_ARGUMENT", "Base model gemini-2.5-flash is not supported for tuning in europe-west9."),
    (403, "PERMISSION_DENIED", "Permission 'aiplatform.tuningJobs.create' denied on resource."),
])
def test_a_refused_creation_is_a_final_job_refused_with_vertex_s_message(api, client, request_, record, refusal):
    code, status, message = refusal
    api.refuse_jobs = refusal
    with pytest.raises(JobRefused) as refused:
        start_or_attach(client, record, request_)
    assert str(refused.value) == f"Vertex AI refused to create the tuning job (HTTP {code}, {status}): {message}"
    assert isinstance(refused.value.__cause__, errors.ClientError) and is_final(refused.value.__cause__)
    assert api.created == 0 and JobRecord.read(record).job_name is None


def test_a_request_the_stand_in_refuses_names_the_field(api, client, request_, record):
    with pytest.raises(JobRefused, match=r"HTTP 400, INVALID_ARGUMENT\): baseModel: 'gemini-1.0-pro'"):
        start_or_attach(client, record, JobRequest(**{**request_.__dict__, "base_model": "gemini-1.0-pro"}))


@pytest.mark.parametrize(("code", "status", "kind"), [
    (429, "RESOURCE_EXHAUSTED", errors.ClientError), (408, "DEADLINE_EXCEEDED", errors.ClientError),
    (409, "ABORTED", errors.ClientError), (500, "INTERNAL", errors.ServerError),
    (503, "UNAVAILABLE", errors.ServerError)])
def test_quota_conflicts_and_the_service_s_trouble_are_left_to_the_task_s_retries(api, client, request_, record,
                                                                                  code, status, kind):
    api.refuse_jobs = (code, status, "try again later")
    with pytest.raises(kind) as raised:
        start_or_attach(client, record, request_)
    assert raised.value.code == code and not is_final(raised.value)
    assert not is_final(ConnectionError("connection refused")) and not is_final(TimeoutError())
    api.refuse_jobs = None
    assert start_or_attach(client, record, request_).status == "pending" and api.created == 1


def test_cancel_stops_a_running_job_and_marks_it_ended(api, client, clock, request_, record):
    assert cancel(client, record) is None  # no record: nothing to cancel
    job = start_or_attach(client, record, request_)
    clock.tick(PENDING_S)
    assert job_state(client.tunings.get(name=job.id)).status == "running"
    lines: list[str] = []
    assert cancel(client, record, lines.append) == job.id
    assert lines == [f"cancelled tuning job {job.id}"]
    cancelled = job_state(client.tunings.get(name=job.id))
    assert cancelled.status == "cancelled" and cancelled.done
    assert cancelled.failure() == f"tuning job {job.id} was cancelled"
    assert JobRecord.read(record).ended_jobs == [job.id]
    assert cancel(client, record) is None  # its end is known
    assert start_or_attach(client, record, request_).id != job.id


def test_cancel_leaves_an_ended_job_alone(api, client, clock, request_, record, tmp_path):
    job = start_or_attach(client, record, request_)
    clock.tick(PENDING_S + RUNNING_S)
    assert cancel(client, record) is None
    assert JobRecord.read(record).ended_jobs == [] and api.jobs[0]["state"] == "JOB_STATE_SUCCEEDED"

    api.fail_running = (13, "Internal error occurred.")
    failing = tmp_path / "failing.json"
    failed = start_or_attach(client, failing, JobRequest(**{**request_.__dict__, "labels": {"tuneloop_run": "f"}}))
    clock.tick(PENDING_S + RUNNING_S)
    assert cancel(client, failing) is None and JobRecord.read(failing).ended_jobs == []
    assert not [call for call in api.calls if call.target.endswith(":cancel")]
    assert {j["name"]: j["state"] for j in api.jobs} == {job.id: "JOB_STATE_SUCCEEDED",
                                                         failed.id: "JOB_STATE_FAILED"}


def test_the_state_of_a_job_as_it_goes_from_pending_to_a_tuned_model(api, client, clock, request_, record):
    job = start_or_attach(client, record, request_)
    assert (job.state, job.status, job.done, job.base_model) == ("JOB_STATE_PENDING", "pending", False, BASE)
    assert (job.tuned_model, job.endpoint, job.billable_tokens, job.steps, job.examples) == (None,) * 5

    clock.tick(PENDING_S)
    running = job_state(client.tunings.get(name=job.id))
    steps = 2 * math.ceil(EXAMPLES / BATCH_SIZE)
    assert (running.status, running.examples, running.steps) == ("running", EXAMPLES, steps)
    assert running.endpoint is None and not running.done

    clock.tick(RUNNING_S)
    done = job_state(client.tunings.get(name=job.id))
    assert done.status == "succeeded" and done.state == "JOB_STATE_SUCCEEDED" and done.done
    assert re.fullmatch(rf"{PARENT}/endpoints/\d{{19}}", done.endpoint)
    assert re.fullmatch(rf"{PARENT}/models/\d{{19}}@1", done.tuned_model)
    assert done.billable_tokens == 2 * EXAMPLES * TOKENS_PER_EXAMPLE and isinstance(done.billable_tokens, int)
    assert (done.steps, done.examples, done.error_code, done.error_message) == (steps, EXAMPLES, None, None)
    assert api.jobs[0]["tunedModel"] == {"model": done.tuned_model, "endpoint": done.endpoint}
    assert json.loads(json.dumps(done.to_dict())) == done.to_dict()  # what a trigger event carries


def test_bad_training_data_fails_the_job_with_vertex_s_code_and_line(api, client, clock, request_, record):
    bad = upload([example(0), {"contents": []}])
    job = start_or_attach(client, record, JobRequest(**{**request_.__dict__, "training_uri": bad}))
    clock.tick(PENDING_S)
    failed = job_state(client.tunings.get(name=job.id))
    assert (failed.status, failed.error_code) == ("failed", 3)
    assert f"Invalid training dataset {bad}: line 2" in failed.failure()


# --- labels -----------------------------------------------------------------------------------------------------


@given(st.text(max_size=300))
def test_a_label_value_always_follows_google_s_rule(text):
    value = label_value(text)
    assert LABEL_VALUE.fullmatch(value) and re.fullmatch(r"[a-z0-9_-]{0,63}", value)


@given(st.text(min_size=1, max_size=300))
def test_a_run_key_s_label_keeps_its_hash(run_id):
    key = run_key(run_id)
    value = label_value(key)
    assert value.endswith(key.rsplit("-", 1)[1]) and len(value) <= 63
    if len(key) <= 63 and re.fullmatch(r"[a-z0-9_-]+", key) and not key.startswith("-"):
        assert value == key  # a key that is already a label value is kept as it is


@given(st.text(max_size=200), st.lists(st.text("0123456789abcdef", min_size=8, max_size=8), min_size=2, max_size=2,
                                       unique=True))
def test_two_run_keys_differing_only_in_their_hash_get_different_labels(stem, hashes):
    first, second = (label_value(f"{stem}-{digest}") for digest in hashes)
    assert first != second


def test_long_keys_keep_their_end():
    key = run_key("manual__" + "x" * 200)
    assert label_value(key) == key.lower()[-63:] and len(label_value(key)) == 63
    assert label_value("Support Assistant (EU)") == "support-assistant-eu"
    assert label_value("") == "" and label_value("???") == ""


# --- replies through generateContent -----------------------------------------------------------------------------


ROWS = [{"id": f"r{i}", "messages": [{"role": "system", "content": "be brief"},
                                     {"role": "user", "content": f"question {i}"},
                                     {"role": "assistant", "content": f"answer {i}", "weight": 1}],
         "domain": "billing", "slice": i % 2} for i in range(8)]


def test_replies_keep_the_rows_order_fields_and_usage_with_concurrency(api, client):
    in_flight, peak, lock = [0], [0], threading.Lock()

    def reply(body: dict, model: str) -> str:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        index = int(last_user_text(body).split()[-1])
        time.sleep(0.02 * (len(ROWS) - index))  # the first rows answer last
        with lock:
            in_flight[0] -= 1
        return f"  reply to {last_user_text(body)} "

    api.reply = reply
    lines: list[str] = []
    predictions = reply_rows(client, ROWS, ReplySettings(model=BASE, concurrency=4, max_reply_tokens=32, seed=7),
                             lines.append)
    assert [p["id"] for p in predictions] == [r["id"] for r in ROWS] and peak[0] == 4
    assert predictions[2] | {"latency_ms": 0} == {
        "id": "r2", "reference": "answer 2", "hypothesis": "reply to question 2", "latency_ms": 0,
        "prompt_tokens": 2 + 2, "completion_tokens": 4, "generated_tokens": 4,  # the stand-in counts words
        "domain": "billing", "slice": 0}
    assert all(p["latency_ms"] >= 20 for p in predictions)
    assert lines == [f"{BASE}: 8 replies, {8 * (4 + 4)} tokens, median latency "
                     f"{sorted(p['latency_ms'] for p in predictions)[4]:.0f} ms"]
    model, sent = api.requests[0]
    assert model == f"{PARENT}/publishers/google/models/{BASE}"
    assert sent["systemInstruction"]["parts"] == [{"text": "be brief"}]
    assert [c["role"] for c in sent["contents"]] == ["user"] and "weight" not in json.dumps(sent)
    assert "answer" not in json.dumps(sent)  # the reference is never sent
    assert sent["generationConfig"] == {"temperature": 0, "seed": 7, "maxOutputTokens": 32}


def test_replies_of_a_tuned_endpoint(api, client, clock, request_, record):
    job = start_or_attach(client, record, request_)
    clock.tick(PENDING_S + RUNNING_S)
    endpoint = job_state(client.tunings.get(name=job.id)).endpoint
    trained = {e["contents"][0]["parts"][0]["text"]: e["contents"][-1]["parts"][0]["text"]
               for e in api.training_examples(endpoint)}
    api.reply = lambda body, model: trained.get(last_user_text(body), "not trained on that")
    predictions = reply_rows(client, ROWS[:3], ReplySettings(model=endpoint, concurrency=2))
    assert [p["hypothesis"] for p in predictions] == [p["reference"] for p in predictions]
    assert {model for model, _ in api.requests} == {endpoint}


def test_a_failure_that_persists_after_the_retries_names_the_model_and_the_row(api, info):
    from google import genai
    from google.oauth2 import service_account

    from tests.standins.vertex_api import CLOUD_PLATFORM
    from tuneloop.config import VertexTuningConfig
    from tuneloop.hooks.vertex_connection import http_options

    credentials = service_account.Credentials.from_service_account_info(info, scopes=[CLOUD_PLATFORM])
    retrying = genai.Client(vertexai=True, project="acme-ml", location="us-central1", credentials=credentials,
                            http_options=http_options(VertexTuningConfig(api_endpoint=api.base_url, max_retries=1)))
    api.fail_next(2, http_status=503)
    with pytest.raises(ReplyError, match=rf"{BASE} failed on row 'r5' after the client's retries: ServerError: "
                                         r"503 UNAVAILABLE"):
        reply_rows(retrying, ROWS[5:6], ReplySettings(model=BASE))
    assert len(api.requests) == 2  # the first try and max_retries=1 retry


def test_a_failed_job_fails_the_step_and_its_billed_tokens_count_as_spent(api, client, clock, request_, tmp_path):
    """vertex_training.finish on a job Vertex failed while it ran: Vertex's own billable count is recorded
    (training/spent.json), no model is written."""
    from tuneloop import spent
    from tuneloop.config import load_config
    from tuneloop.managed import vertex_training
    from tuneloop.pipeline import PipelineRun, RunParams

    run = PipelineRun(load_config(None, env={"TUNELOOP_HOME": str(tmp_path / "home")}), RUN_ID, RunParams())
    api.fail_running = (13, "Internal error occurred.")
    job = start_or_attach(client, vertex_training.record_path(run), request_)
    clock.tick(PENDING_S + RUNNING_S)
    failed = job_state(client.tunings.get(name=job.id))
    with pytest.raises(JobFailed, match=f"tuning job {re.escape(job.id)} failed: error 13: Internal error occurred"):
        vertex_training.finish(run, client, failed, print)
    assert failed.billable_tokens and spent.read(run.paths.training) == [
        spent.Spent(job.id, failed.billable_tokens, "tokens", "failed")]
    assert JobRecord.read(vertex_training.record_path(run)).ended_jobs == [job.id]
    assert not (run.paths.training / "metrics.json").exists() and not run.paths.model.exists()
