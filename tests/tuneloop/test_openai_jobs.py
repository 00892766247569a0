"""One fine-tuning job per run, found again by every retry; replies through the API: the real ``openai`` client
against the stand-in OpenAI API on loopback (tests/standins/openai_api.py), its clock driven by hand."""

from __future__ import annotations

import base64
import json
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai import OpenAI

from tests.standins.openai_api import WIND_DOWN
from tests.standins.openai_fixtures import BASE, KEY, api, client, clock  # noqa: F401  (fixtures)
from tuneloop.managed.chat_api import ReplyError, ReplySettings, reply_rows
from tuneloop.managed.openai_jobs import (JobRecord, JobRefused, JobRequest, cancel, mark_ended, refusal_message,
                                          result_metrics, start_or_attach, suffix_for, unseen_events)
from tuneloop.pipeline import run_key


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    def jsonl(name: str, n: int) -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                                         {"role": "assistant", "content": f"answer {i}"}]}) + "\n"
                                for i in range(n)))
        return path

    return {"train": jsonl("train.jsonl", 12), "eval": jsonl("eval.jsonl", 4)}


REQUEST = JobRequest(base_model=BASE, suffix="scheduled-2026-12-06-ab12cd34", seed=7,
                     hyperparameters={"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"},
                     metadata={"tuneloop_model": "support", "tuneloop_run": "scheduled__2026-12-06-ab12cd34"})


def _start(client: OpenAI, record: Path, files: dict[str, Path]):
    return start_or_attach(client, record, training=files["train"], validation=files["eval"], request=REQUEST)


def test_a_retry_re_attaches_to_the_run_s_job(api, client, files, tmp_path):
    record = tmp_path / "run" / "job.json"
    job = _start(client, record, files)
    assert (api.jobs_created, len(api.uploads)) == (1, 2)
    sent = api.job_requests[0]
    assert sent["method"] == {"type": "supervised", "supervised": {"hyperparameters": dict(REQUEST.hyperparameters)}}
    assert (sent["suffix"], sent["seed"], sent["metadata"]) == (REQUEST.suffix, 7, dict(REQUEST.metadata))
    stored = JobRecord.read(record)
    assert stored.job_id == job.id and stored.training_file and stored.validation_file

    again = _start(client, record, files)
    assert again.id == job.id and (api.jobs_created, len(api.uploads)) == (1, 2)


@pytest.mark.parametrize("lost", [("job_id",), ("validation_file",), ("training_file",),
                                  ("training_file", "validation_file", "job_id")])
def test_a_call_made_but_not_recorded_is_found_at_the_service(api, client, files, tmp_path, lost):
    """The task died after the API answered and before the id was written (the record itself, with its start
    time, is written before the first call): the retry recognises an upload by its name and size, the job by
    its metadata."""
    record = tmp_path / "job.json"
    job = _start(client, record, files)
    data = json.loads(record.read_text())
    data |= dict.fromkeys(lost)
    data["started_at"] = api.uploads[0][0]["created_at"]  # the stand-in's clock, not this machine's
    record.write_text(json.dumps(data))
    assert _start(client, record, files).id == job.id
    assert (api.jobs_created, len(api.uploads)) == (1, 2)


def test_a_reported_failure_lets_the_next_attempt_start_a_new_job_from_the_same_files(api, client, files, tmp_path,
                                                                                      clock):
    record = tmp_path / "job.json"
    api.fail_running = ("server_error", "The job failed due to an internal error.")
    job = _start(client, record, files)
    clock.tick(30)
    failed = client.fine_tuning.jobs.retrieve(job.id)
    assert failed.status == "failed" and failed.error.code == "server_error"
    assert _start(client, record, files).id == job.id  # not reported yet: the retry reports this failure

    mark_ended(record, job.id)
    api.fail_running = None
    second = _start(client, record, files)
    assert second.id != job.id and api.jobs_created == 2 and len(api.uploads) == 2
    assert JobRecord.read(record).ended_jobs == [job.id]


def test_cancel_stops_the_job_and_the_next_attempt_starts_anew(api, client, files, tmp_path):
    record = tmp_path / "job.json"
    job = _start(client, record, files)
    assert cancel(client, record) == job.id
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert cancel(client, record) is None  # nothing left to cancel
    assert _start(client, record, files).id != job.id


def test_a_refused_creation_is_a_job_refused_naming_openai_s_code_and_the_wind_down(api, client, files, tmp_path):
    api.refuse_jobs = WIND_DOWN
    with pytest.raises(JobRefused, match=r"HTTP 403, fine_tuning_unavailable\): Fine-tuning job creation is no "
                                         r"longer available.*winding down.*2027-01-06"):
        _start(client, tmp_path / "job.json", files)
    api.refuse_jobs = (400, "model_not_available", "Model gpt-9 is not available for fine-tuning")
    with pytest.raises(JobRefused) as refused:
        _start(client, tmp_path / "job.json", files)
    assert "model_not_available" in str(refused.value)


def test_the_wind_down_is_named_only_where_it_is_the_likely_cause():
    assert "winding down" not in refusal_message(400, "invalid_suffix", "bad suffix", today=date(2026, 12, 1))
    assert "winding down" in refusal_message(400, "invalid_suffix", "bad suffix", today=date(2027, 1, 6))
    assert "winding down" in refusal_message(403, None, "forbidden", today=date(2026, 12, 1))


def test_the_service_s_own_trouble_is_left_to_the_task_s_retries(api, client, files, tmp_path):
    import openai

    api.refuse_jobs = (503, None, "overloaded")
    with pytest.raises(openai.InternalServerError):
        _start(client, tmp_path / "job.json", files)


def test_result_metrics_read_openai_s_base64_csv_and_plain_csv():
    csv_text = "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n1,1.5,0.2,,\n2,1.1,0.4,1.3,0.3\n"
    expected = [{"step": 1.0, "train_loss": 1.5, "train_accuracy": 0.2},
                {"step": 2.0, "train_loss": 1.1, "train_accuracy": 0.4, "valid_loss": 1.3,
                 "valid_mean_token_accuracy": 0.3}]
    assert result_metrics(base64.b64encode(csv_text.encode())) == expected
    assert result_metrics(csv_text.encode()) == expected


@given(st.text(min_size=1, max_size=300))
def test_a_suffix_is_short_plain_and_unique_per_run(run_id):
    suffix = suffix_for(run_key(run_id))
    assert 0 < len(suffix) <= 64 and set(suffix) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert suffix.endswith(run_key(run_id).rsplit("-", 1)[1])  # the key's hash: two runs never share a suffix


def test_unseen_events_are_those_after_the_last_seen_oldest_first():
    class Event:
        def __init__(self, id: str) -> None:
            self.id = id

    newest_first = [Event("e4"), Event("e3"), Event("e2"), Event("e1")]
    assert [e.id for e in unseen_events(newest_first, "e2")] == ["e3", "e4"]
    assert [e.id for e in unseen_events(newest_first, None)] == ["e1", "e2", "e3", "e4"]
    assert unseen_events(newest_first, "e4") == []


# --- replies through the API --------------------------------------------------------------------------------------


ROWS = [{"id": f"r{i}", "messages": [{"role": "system", "content": "be brief"},
                                     {"role": "user", "content": f"question {i}"},
                                     {"role": "assistant", "content": f"answer {i}", "weight": 1}],
         "domain": "billing"} for i in range(6)]


def test_replies_keep_the_rows_order_fields_usage_and_send_no_training_keys(api, client):
    api.reply = lambda body: f"  reply to {body['messages'][-1]['content']} "
    predictions = reply_rows(client, ROWS, ReplySettings(model=BASE, concurrency=3))
    assert [p["id"] for p in predictions] == [r["id"] for r in ROWS]
    assert predictions[2] | {"latency_ms": 0} == {
        "id": "r2", "reference": "answer 2", "hypothesis": "reply to question 2", "latency_ms": 0,
        "generated_tokens": predictions[2]["completion_tokens"], "prompt_tokens": predictions[2]["prompt_tokens"],
        "completion_tokens": predictions[2]["completion_tokens"], "domain": "billing"}
    assert all(p["prompt_tokens"] > 0 and p["completion_tokens"] > 0 for p in predictions)
    sent = api.requests[0]
    assert [m["role"] for m in sent["messages"]] == ["system", "user"] and "weight" not in json.dumps(sent)
    assert sent["temperature"] == 0 and sent["model"] == BASE


def test_rate_limits_and_server_errors_are_retried_with_backoff(api):
    client = OpenAI(api_key=KEY, base_url=api.base_url, max_retries=3, timeout=5)
    api.fail_next(2, 429)
    api.fail_next(1, 503)
    assert len(reply_rows(client, ROWS, ReplySettings(model=BASE, concurrency=2))) == len(ROWS)
    assert api.failures_served == 3


def test_a_request_that_keeps_failing_names_the_model_and_the_row(api):
    client = OpenAI(api_key=KEY, base_url=api.base_url, max_retries=1, timeout=5)
    api.fail_status = 500
    with pytest.raises(ReplyError, match=rf"{BASE} failed on row 'r\d' after the client's retries"):
        reply_rows(client, ROWS[:1], ReplySettings(model=BASE))


# --- retention ----------------------------------------------------------------------------------------------------


def test_retention_deletes_archived_fine_tuned_models_tuneloop_made_once(api, client, files, tmp_path, clock,
                                                                         monkeypatch):
    """Versions pushed out of keep_previous_versions by deploys: the ``ft:`` models tuneloop's jobs made are
    deleted at OpenAI (and then answer 404), each once; a model registered by hand (no job id), a base model and
    an HF version are left alone; a delete that fails is recorded on the version, never raised."""
    import openai

    from tests.tuneloop.registry_testing import MemoryHistory, MlflowEnv, template_db
    from tuneloop.deployment import bootstrap_production, deploy
    from tuneloop.managed.openai_training import retire_models

    monkeypatch.chdir(tmp_path)
    env = MlflowEnv.create(tmp_path, template_db(tmp_path))
    registry, history = env.registry("support-assistant"), MemoryHistory()
    fine_tuned = []
    for i in range(3):
        job = _start(client, tmp_path / f"job-{i}.json", files)
        clock.tick(30)
        fine_tuned.append(client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model)
    versions = [env.quick_version(registry, f"run-{i}") for i in range(6)]
    tags = [{"provider": "openai", "provider_model": f"ft:{BASE}:other-team::x1"},  # bootstrap --openai-model
            {"provider": "openai", "provider_model": BASE}, {},
            *({"provider": "openai", "provider_model": m, "provider_job_id": f"ftjob-{i}"}
              for i, m in enumerate(fine_tuned))]
    for version, version_tags in zip(versions, tags, strict=True):
        if version_tags:
            registry.set_tags(version, version_tags)
    bootstrap_production(registry, history, version=versions[0])
    archived = []
    for version in versions[1:]:
        registry.set_alias("candidate", version)
        archived += deploy(registry, history, version, reason="gate passed", keep_previous_versions=1
                           ).details.get("archived", [])
    assert archived == versions[:4]  # production v6 and previous v5 stay

    def unreachable() -> OpenAI:
        raise openai.APIConnectionError(request=None)  # type: ignore[arg-type]

    assert retire_models(registry, archived, unreachable, print) == []
    assert "APIConnectionError" in registry.get_version(versions[3]).tags["provider_model_delete_failed"]
    calls = []

    def factory() -> OpenAI:
        calls.append(1)
        return client

    assert retire_models(registry, archived, factory, print) == fine_tuned[:1]
    assert api.deleted_models == fine_tuned[:1]
    assert retire_models(registry, archived, factory, print) == [] and len(calls) == 1  # once; no client needed
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=fine_tuned[0], messages=[{"role": "user", "content": "hi"}])
