"""The deferrable wait for an OpenAI fine-tuning job and the operator around it, against the stand-in OpenAI API
through the OpenAI provider's connection (``AIRFLOW_CONN_*``), on the wall clock with short durations."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.standins.openai_api import OpenAIStandIn
from tuneloop import spent, storage
from tuneloop.managed.openai_jobs import JobRecord, JobRequest, start_or_attach

BASE = "gpt-4.1-mini-2025-04-14"
KEY = "sk-test-trigger-secret"
CONN = "tuneloop_openai_trigger_test"
ESTIMATE = 4321  # the run's estimated trained tokens (spec.json)


@pytest.fixture
def api(airflow_env, monkeypatch):
    with OpenAIStandIn(api_key=KEY, validating_s=0.1, queued_s=0.1, running_s=0.6) as standin:
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", json.dumps(
            {"conn_type": "openai", "host": standin.base_url, "password": KEY}))
        yield standin


@pytest.fixture
def job(api, tmp_path) -> tuple[str, Path]:
    """A job created the way the operator creates it; returns its id and the run's record."""
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                      {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                             for i in range(10)))
    record = tmp_path / "training" / "openai" / "job.json"
    storage.write_json(tmp_path / "training" / "spec.json", {"estimated_training_tokens": ESTIMATE})
    request = JobRequest(base_model=BASE, suffix="trigger-test-0a1b2c3d", seed=0, hyperparameters={"n_epochs": 1},
                         metadata={"tuneloop_run": "trigger-test"})
    client = OpenAI(api_key=KEY, base_url=api.base_url, max_retries=0)
    state = start_or_attach(client, record, training=train, validation=None, request=request)
    return state.id, record


def _trigger(job_id: str, record: Path, **overrides: Any):
    from tuneloop.triggers.openai_finetune import OpenAIFineTuningTrigger

    kwargs = {"conn_id": CONN, "job_id": job_id, "poll_seconds": 0.1, "deadline": time.time() + 60,
              "record_uri": str(record), "storage_conn_id": None, "last_event": None} | overrides
    return OpenAIFineTuningTrigger(**kwargs)


def _first_event(trigger) -> dict[str, Any]:
    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(first())


def test_the_trigger_serializes_every_argument(tmp_path):
    trigger = _trigger("ftjob-1", tmp_path / "job.json", deadline=123.0, storage_conn_id="gcs", last_event="ev-2")
    path, kwargs = trigger.serialize()
    assert path == "tuneloop.triggers.openai_finetune.OpenAIFineTuningTrigger"
    assert kwargs == {"conn_id": CONN, "job_id": "ftjob-1", "poll_seconds": 0.1, "deadline": 123.0,
                      "record_uri": str(tmp_path / "job.json"), "storage_conn_id": "gcs", "last_event": "ev-2"}
    assert type(trigger)(**kwargs).serialize() == (path, kwargs)


def test_the_trigger_streams_the_job_s_events_and_ends_with_it(api, job):
    from structlog.testing import capture_logs

    job_id, record = job

    async def run_while_holding_the_job_running() -> dict[str, Any]:
        """The job stays running until the trigger has logged OpenAI's estimate (a busy machine may otherwise poll
        past the stand-in's short running phase)."""
        async def release() -> None:
            while not any("OpenAI estimates it finishes at" in entry["event"] for entry in logs):
                await asyncio.sleep(0.05)
            api.hold_running = False

        api.hold_running = True
        releasing = asyncio.create_task(release())
        try:
            async for event in _trigger(job_id, record).run():
                return event.payload
            raise AssertionError("the trigger ended without an event")
        finally:
            releasing.cancel()

    with capture_logs() as logs:  # the triggerer's logger; its lines go into the task's log
        event = asyncio.run(asyncio.wait_for(run_while_holding_the_job_running(), timeout=60))
    assert event["status"] == "done" and event["job"]["status"] == "succeeded"
    assert event["job"]["fine_tuned_model"].startswith(f"ft:{BASE}:")
    lines = [entry["event"] for entry in logs]
    streamed = [line for line in lines if line.startswith("[openai ")]
    assert any("Validating training file" in line for line in streamed), lines
    assert any("The job has successfully completed" in line for line in streamed), lines
    assert len(streamed) == len(set(streamed))  # each event once
    assert any("OpenAI estimates it finishes at" in line for line in lines), lines
    assert not any(KEY in line for line in lines)


def test_a_failed_job_is_an_event_the_task_decides_on(api, job):
    api.fail_running = ("invalid_training_file", "The file has fewer than 10 examples.")
    job_id, record = job
    event = _first_event(_trigger(job_id, record))
    assert event["status"] == "done" and event["job"]["status"] == "failed"
    assert event["job"]["error_code"] == "invalid_training_file"


def test_the_wait_times_out_and_a_bad_connection_is_an_error_event(api, job, tmp_path):
    job_id, record = job
    api.hold_running = True
    timeout = _first_event(_trigger(job_id, record, deadline=time.time() + 0.8))
    assert timeout["status"] == "timeout" and timeout["job"]["status"] in ("queued", "running", "validating_files")
    error = _first_event(_trigger(job_id, record, conn_id="tuneloop_no_such_connection"))
    assert error["status"] == "error" and "tuneloop_no_such_connection" in error["message"]


def test_killing_the_deferred_task_cancels_the_job_and_records_its_end(api, job):
    job_id, record = job
    api.hold_running = True
    asyncio.run(_trigger(job_id, record).on_kill())
    assert api.jobs[-1]["status"] == "cancelled"
    assert JobRecord.read(record).ended_jobs == [job_id]
    # OpenAI reports no trained tokens for it: it counts as at most the run's estimate
    assert spent.read(record.parent.parent) == [spent.Spent(job_id, ESTIMATE, "tokens", "cancelled", True)]


def test_killing_after_success_leaves_the_job_to_be_collected(api, job):
    job_id, record = job
    _first_event(_trigger(job_id, record))
    asyncio.run(_trigger(job_id, record).on_kill())
    assert api.jobs[-1]["status"] == "succeeded" and JobRecord.read(record).ended_jobs == []
    assert spent.read(record.parent.parent) == []  # the finished training is priced from its metrics


def test_the_client_comes_from_the_connection_with_the_backend_s_retries(api):
    from tuneloop.config import OpenAIFineTuningConfig
    from tuneloop.hooks.openai_connection import OpenAIConnectionError, openai_client, serving_config

    settings = OpenAIFineTuningConfig(conn_id=CONN, max_retries=2, request_timeout_seconds=7)
    client = openai_client(settings)
    assert (client.max_retries, client.timeout, str(client.base_url)) == (2, 7, api.base_url + "/")
    assert client.models.list().data  # the key is sent: the stand-in answers 401 without it
    assert serving_config(settings)["api_key"] == KEY
    with pytest.raises(OpenAIConnectionError, match="'tuneloop_missing' .*airflow connections add tuneloop_missing"):
        openai_client(OpenAIFineTuningConfig(conn_id="tuneloop_missing"))
