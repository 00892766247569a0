"""The OpenAI stand-in's fine-tuning protocol, files, models and authentication, through the real ``openai`` client.

Most tests drive the stand-in's clock by hand, so every state is seen exactly and nothing sleeps; one runs on the
wall clock with short durations.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import time

import openai
import pytest
from openai import OpenAI

from tests.standins.openai_api import WIND_DOWN, OpenAIStandIn
from tests.standins.openai_fixtures import BASE, KEY, ManualClock, api, client, clock  # noqa: F401  (fixtures)

TOKENS_PER_EXAMPLE = 3 + (4 + 2) + (4 + 2)  # per example, then per message: user "question i", assistant "answer i"


def _jsonl(n: int = 10) -> bytes:
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                            {"role": "assistant", "content": f"answer {i}"}]}) + "\n"
                   for i in range(n)).encode()


def _upload(client: OpenAI, content: bytes | None = None, name: str = "train.jsonl") -> str:
    return client.files.create(file=(name, content or _jsonl()), purpose="fine-tune").id


def _job(client: OpenAI, **create: object):
    return client.fine_tuning.jobs.create(**{"model": BASE, "training_file": _upload(client), **create})


def test_a_job_goes_from_upload_to_a_fine_tuned_model_that_answers_chat(api, client, clock):
    api.reply = lambda body: f"I am {body['model']}"
    validation = _upload(client, _jsonl(3), "valid.jsonl")
    created = _job(client, suffix="support", validation_file=validation, metadata={"run": "r1"},
                   method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}})
    assert (created.status, created.hyperparameters.n_epochs, created.hyperparameters.batch_size) == (
        "validating_files", 2, "auto")
    assert api.jobs_created == 1 and api.job_requests[0]["suffix"] == "support"

    statuses = []
    for step in (0, 1, 1):
        clock.tick(step)
        statuses.append(client.fine_tuning.jobs.retrieve(created.id).status)
    assert statuses == ["validating_files", "queued", "running"]
    running = client.fine_tuning.jobs.retrieve(created.id)
    assert running.estimated_finish == int(clock.now + 10) and running.trained_tokens is None
    assert running.hyperparameters.batch_size == 1 and running.fine_tuned_model is None

    clock.tick(10)
    job = client.fine_tuning.jobs.retrieve(created.id)
    assert job.status == "succeeded" and job.finished_at == int(clock.now) and job.estimated_finish is None
    assert job.fine_tuned_model == f"ft:{BASE}:tuneloop-standin:support:sti{int(job.id[-6:]):05d}"
    assert job.trained_tokens == 2 * 10 * TOKENS_PER_EXAMPLE

    events = client.fine_tuning.jobs.list_events(created.id, limit=100).data
    messages = [e.message for e in reversed(events) if e.type == "message"]
    assert messages == [f"Created fine-tuning job: {job.id}", f"Validating training file: {job.training_file}",
                        "Files validated, moving job to queued state", "Fine-tuning job started",
                        f"New fine-tuned model created: {job.fine_tuned_model}", "The job has successfully completed"]
    metrics = [e for e in events if e.type == "metrics"]
    assert len(metrics) == 20 and metrics[0].data["step"] == 20 and metrics[-1].message.startswith("Step 1/20:")
    assert set(metrics[0].data) == {"step", "total_steps", "train_loss", "train_mean_token_accuracy"}

    checkpoints = client.fine_tuning.jobs.checkpoints.list(created.id).data
    assert [c.step_number for c in checkpoints] == [20, 10]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-20"
    assert checkpoints[0].metrics.valid_loss is not None

    result = client.files.retrieve(job.result_files[0])
    assert result.purpose == "fine-tune-results"
    rows = list(csv.DictReader(io.StringIO(base64.b64decode(client.files.content(result.id).read()).decode())))
    assert list(rows[0]) == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert [r["step"] for r in rows] == [str(s) for s in range(1, 21)]
    assert [r["step"] for r in rows if r["valid_loss"]] == ["10", "20"]

    assert job.fine_tuned_model in {m.id for m in client.models.list()}
    reply = client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == f"I am {job.fine_tuned_model}" and reply.usage.total_tokens > 0


def test_the_wall_clock_drives_a_job_with_short_durations():
    with OpenAIStandIn(validating_s=0.05, queued_s=0.05, running_s=0.2) as api:
        client = OpenAI(api_key="k", base_url=api.base_url, max_retries=0, timeout=5)
        job = _job(client, hyperparameters={"n_epochs": 1})  # the deprecated top-level field
        seen = [job.status]
        deadline = time.monotonic() + 5
        while seen[-1] != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.01)
            status = client.fine_tuning.jobs.retrieve(job.id).status
            if status != seen[-1]:
                seen.append(status)
    order = ["validating_files", "queued", "running", "succeeded"]
    assert seen[0] == "validating_files" and seen[-1] == "succeeded" and seen == sorted(seen, key=order.index)
    assert api.jobs[0]["trained_tokens"] == 10 * TOKENS_PER_EXAMPLE


@pytest.mark.parametrize("content, rule", [
    (_jsonl(9), "Training file has 9 example(s), but must have at least 10 examples."),
    (_jsonl(4) + b"{not json\n" + _jsonl(6), "Line 5 is not valid JSON"),
    (_jsonl(2) + b'{"prompt": "x"}\n' + _jsonl(8), 'Line 3, key "messages"'),
    (_jsonl(10) + json.dumps({"messages": [{"role": "user", "content": "q"}]}).encode(),
     'Line 11: no message with role "assistant"'),
])
def test_an_invalid_training_file_fails_the_job_not_its_creation(api, client, clock, content, rule):
    job = client.fine_tuning.jobs.create(model=BASE, training_file=_upload(client, content))
    assert job.status == "validating_files"
    clock.tick(1)
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "failed" and job.fine_tuned_model is None and job.trained_tokens is None
    assert (job.error.code, job.error.param) == ("invalid_training_file", "training_file")
    assert job.error.message.startswith("The job failed due to an invalid training file.") and rule in job.error.message
    last = client.fine_tuning.jobs.list_events(job.id).data[0]
    assert (last.level, last.message) == ("error", job.error.message)


def test_a_programmed_failure_ends_a_running_job_halfway(api, client, clock):
    api.fail_running = ("server_error", "The fine-tuning job failed due to an internal error.")
    job = _job(client)
    clock.tick(2)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
    clock.tick(5)
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "failed" and job.fine_tuned_model is None
    assert job.error.model_dump() == {"code": "server_error", "param": None,
                                      "message": "The fine-tuning job failed due to an internal error."}
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert events[0].level == "error" and max(e.data["step"] for e in events if e.type == "metrics") == 15
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data == []


def test_a_held_job_stays_running_until_released(api, client, clock):
    api.hold_running = True
    job = _job(client)
    clock.tick(100)
    held = client.fine_tuning.jobs.retrieve(job.id)
    assert held.status == "running" and held.estimated_finish == int(clock.now)
    api.hold_running = False
    clock.tick(1)
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded" and done.finished_at == int(clock.now - 1)  # not before it was last seen


def test_cancel_stops_a_job_and_a_finished_job_cannot_be_cancelled(api, client, clock):
    job = _job(client)
    clock.tick(3)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.fine_tuned_model is None
    clock.tick(100)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert client.fine_tuning.jobs.list_events(job.id).data[0].message == "Fine-tuning job cancelled"
    with pytest.raises(openai.BadRequestError, match="already cancelled"):
        client.fine_tuning.jobs.cancel(job.id)


def test_the_wind_down_refuses_job_creation(api, client):
    api.refuse_jobs = WIND_DOWN
    with pytest.raises(openai.PermissionDeniedError) as refused:
        _job(client)
    assert refused.value.status_code == 403 and refused.value.code == "fine_tuning_unavailable"
    assert refused.value.body["message"] == "Fine-tuning job creation is no longer available for this organization."
    assert api.jobs_created == 0 and len(api.job_requests) == 1 and client.fine_tuning.jobs.list().data == []


@pytest.mark.parametrize("create, param, code", [
    ({"training_file": "file-nope"}, "training_file", None),
    ({"validation_file": "file-nope"}, "validation_file", None),
    ({"model": "gpt-3.5-turbo-0125"}, "model", "model_not_available"),
    ({"suffix": "s" * 65}, "suffix", "string_above_max_length"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "object_above_max_properties"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}},
     "hyperparameters.n_epochs", None),
])
def test_creation_is_validated_like_the_service(api, client, create, param, code):
    with pytest.raises(openai.BadRequestError) as refused:
        _job(client, **create)
    assert (refused.value.param, refused.value.code) == (param, code)
    assert api.jobs_created == 0


def test_a_training_file_needs_the_fine_tune_purpose(api, client):
    other = client.files.create(file=("notes.jsonl", _jsonl()), purpose="assistants")
    with pytest.raises(openai.BadRequestError, match="purpose 'fine-tune'"):
        client.fine_tuning.jobs.create(model=BASE, training_file=other.id)


def test_jobs_are_listed_newest_first_filtered_by_metadata_and_paged(api, client):
    ids = [_job(client, metadata={"run": f"r{i}", "team": "a"}).id for i in range(3)]
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"run": "r1"})] == [ids[1]]
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "a"})] == ids[::-1]
    first = client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in first.data] == [ids[2], ids[1]] and first.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2, after=ids[1]).data] == [ids[0]]
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2)] == ids[::-1]  # the client follows has_more
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")


def test_files_are_stored_listed_served_and_deleted(api, client):
    content = _jsonl() + "caf\u00e9\r\n".encode()
    uploaded = client.files.create(file=("train.jsonl", io.BytesIO(content)), purpose="fine-tune")
    assert (uploaded.object, uploaded.bytes, uploaded.filename, uploaded.status) == (
        "file", len(content), "train.jsonl", "processed")
    assert api.uploads == [(uploaded.model_dump(), content)]
    assert client.files.content(uploaded.id).read() == content
    assert [f.id for f in client.files.list(purpose="fine-tune")] == [uploaded.id]
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError, match="No such File object"):
        client.files.retrieve(uploaded.id)
    with pytest.raises(openai.BadRequestError, match="Must be .jsonl"):
        client.files.create(file=("train.csv", b"a,b\n"), purpose="fine-tune")


def test_a_deleted_fine_tuned_model_is_gone_from_chat_and_base_models_cannot_be_deleted(api, client, clock):
    model = _finished(client, clock)
    assert client.models.retrieve(model).owned_by == "org-standin"
    assert client.models.delete(model).deleted and api.deleted_models == [model]
    with pytest.raises(openai.NotFoundError) as gone:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert gone.value.code == "model_not_found"
    assert model not in {m.id for m in client.models.list()}
    with pytest.raises(openai.NotFoundError):
        client.models.delete(model)
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete(BASE)


def _finished(client: OpenAI, clock: ManualClock) -> str:
    job = _job(client)
    clock.tick(12)
    return client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model


def test_strict_models_refuse_an_unknown_model_in_chat(api, client):
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert client.chat.completions.create(model="anything", **chat).choices[0].message.content == "[[C]]"
    api.strict_models = True
    with pytest.raises(openai.NotFoundError, match="does not exist or you do not have access"):
        client.chat.completions.create(model="anything", **chat)
    assert client.chat.completions.create(model="standin-judge", **chat).choices
    assert client.chat.completions.create(model=BASE, **chat).choices


def test_the_api_key_is_required_and_travels_only_in_the_authorization_header(api, client, clock):
    wrong = OpenAI(api_key="sk-wrong", base_url=api.base_url, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        wrong.models.list()
    assert denied.value.status_code == 401 and denied.value.code == "invalid_api_key"
    assert "sk-wrong" not in denied.value.message
    _finished(client, clock)
    client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "hi"}])
    accepted = [call for call in api.calls if call.headers["authorization"] == f"Bearer {KEY}"]
    assert len(accepted) == len(api.calls) - 1
    for call in api.calls:
        elsewhere = {k: v for k, v in call.headers.items() if k != "authorization"}
        assert KEY not in json.dumps(elsewhere) and KEY not in call.target and KEY.encode() not in call.body


def test_a_fine_tuned_model_can_be_fine_tuned_further_until_it_is_deleted(api, client, clock):
    first = _job(client)
    clock.tick(30)
    tuned = client.fine_tuning.jobs.retrieve(first.id).fine_tuned_model
    assert tuned.startswith(f"ft:{BASE}:")
    assert _job(client, model=tuned).model == tuned
    client.models.delete(tuned)
    with pytest.raises(openai.BadRequestError, match="not available for fine-tuning"):
        _job(client, model=tuned)
