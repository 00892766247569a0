"""The deferrable wait for a Vertex AI tuning job, against the stand-in Vertex AI API through a real Airflow
connection (``AIRFLOW_CONN_*``, type google_cloud_platform, a service account key of the stand-in) and the google
provider's GenAI hook. The stand-in's clock moves half a second on every read, so a job goes from pending to its end
in a few dozen polls of a few milliseconds each."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.standins import vertex_fixtures
from tests.standins.vertex_fixtures import (BASE, PARENT, PENDING_S, RUNNING_S, ManualClock, example, set_connection,
                                            upload)
from tuneloop import spent, storage
from tuneloop.config import VertexTuningConfig
from tuneloop.managed.vertex_jobs import JobRecord, JobRequest, start_or_attach
from tuneloop.triggers.vertex_tuning import VertexTuningTrigger

pytestmark = pytest.mark.filterwarnings("ignore::google.genai.errors.ExperimentalWarning")  # tunings.tune warns
# the stand-in's fixtures
api, client, info = (vertex_fixtures.api, vertex_fixtures.client, vertex_fixtures.info)

CONN = "tuneloop_vertex_trigger_test"
ESTIMATE = 4321  # the run's estimated trained tokens (spec.json)
STEP = 0.5  # seconds of the stand-in's clock a request takes


class SteppingClock(ManualClock):
    """Moves ``step`` seconds each time it is read (0: only on ``tick``)."""

    step = 0.0

    def __call__(self) -> float:
        now = self.now
        self.now += self.step
        return now


@pytest.fixture
def clock() -> SteppingClock:
    return SteppingClock()


@pytest.fixture
def settings(api, info, airflow_env, monkeypatch) -> dict[str, Any]:
    """``training.vertex`` as the operator hands it to the trigger; the connection holds the account's key."""
    set_connection(monkeypatch, CONN, info)
    return VertexTuningConfig(conn_id=CONN, project_id="acme-ml", api_endpoint=api.base_url, poll_seconds=0.005,
                              max_retries=0, request_timeout_seconds=5).model_dump(mode="json")


@pytest.fixture
def job(api, client, tmp_path) -> tuple[str, Path]:
    """A job created the way the operator creates it; its name and the run's record."""
    record = tmp_path / "run" / "training" / "vertex" / "job.json"
    storage.write_json(record.parent.parent / "spec.json", {"estimated_training_tokens": ESTIMATE})
    request = JobRequest(base_model=BASE, training_uri=upload([example(i) for i in range(10)]), validation_uri=None,
                         display_name="trigger-test", labels={"tuneloop_run": "trigger-test-0a1b2c3d"},
                         epoch_count=1)
    return start_or_attach(client, record, request).id, record


def _trigger(settings: dict[str, Any], job_name: str, record: Path, **overrides: Any) -> VertexTuningTrigger:
    kwargs = {"settings": settings, "job_name": job_name, "deadline": time.time() + 30, "record_uri": str(record),
              "storage_conn_id": None} | overrides
    return VertexTuningTrigger(**kwargs)


def _first_event(trigger: VertexTuningTrigger) -> dict[str, Any]:
    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(first())


def test_the_trigger_serializes_every_argument(tmp_path):
    settings = VertexTuningConfig(project_id="acme-ml", poll_seconds=5).model_dump(mode="json")
    trigger = _trigger(settings, f"{PARENT}/tuningJobs/1", tmp_path / "job.json", deadline=123.0,
                       storage_conn_id="gcs")
    path, kwargs = trigger.serialize()
    assert path == "tuneloop.triggers.vertex_tuning.VertexTuningTrigger"
    assert kwargs == {"settings": settings, "job_name": f"{PARENT}/tuningJobs/1", "deadline": 123.0,
                      "record_uri": str(tmp_path / "job.json"), "storage_conn_id": "gcs"}
    module, _, name = path.rpartition(".")
    rebuilt = getattr(__import__(module, fromlist=[name]), name)(**kwargs)
    assert rebuilt.serialize() == (path, kwargs)
    assert VertexTuningConfig.model_validate(rebuilt.settings) == VertexTuningConfig.model_validate(settings)


def test_the_trigger_logs_each_state_once_and_ends_with_the_tuned_model(api, clock, info, settings, job):
    from structlog.testing import capture_logs

    job_name, record = job
    clock.step = STEP
    with capture_logs() as logs:  # the triggerer's logger; its lines go into the task's log
        event = _first_event(_trigger(settings, job_name, record))
    assert event["status"] == "done" and event["job"]["id"] == job_name
    assert event["job"]["status"] == "succeeded" and event["job"]["state"] == "JOB_STATE_SUCCEEDED"
    assert event["job"]["endpoint"].startswith(f"{PARENT}/endpoints/")
    assert event["job"]["tuned_model"].startswith(f"{PARENT}/models/") and event["job"]["examples"] == 10
    lines = [entry["event"] for entry in logs if entry["event"].startswith("tuning job")]
    assert lines == [f"tuning job {job_name} is {state}"
                     for state in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED")]
    polls = [call for call in api.calls if call.method == "GET" and call.target == f"/v1beta1/{job_name}"]
    assert len(polls) >= (PENDING_S + RUNNING_S) / STEP  # it waited the job out, one read a poll
    assert set(api.tokens.values()) == {info["client_email"]}  # with the connection's key
    assert not any(info["private_key"][40:80] in str(entry) for entry in logs)
    assert JobRecord.read(record).ended_jobs == []  # the task decides: success is collected, not recorded


def test_a_failed_job_is_an_event_the_task_decides_on(api, clock, settings, job):
    api.fail_running = (13, "Internal error occurred.")
    job_name, record = job
    clock.step = STEP
    event = _first_event(_trigger(settings, job_name, record))
    assert event["status"] == "done" and event["job"]["status"] == "failed"
    assert (event["job"]["error_code"], event["job"]["error_message"]) == (13, "Internal error occurred.")
    assert JobRecord.read(record).ended_jobs == []


def test_the_wait_times_out_with_the_job_as_it_was_last_seen(api, clock, settings, job):
    api.hold_running = True
    job_name, record = job
    clock.tick(PENDING_S)  # running, and held there
    started = time.monotonic()
    event = _first_event(_trigger(settings, job_name, record, deadline=time.time() + 0.3))
    assert event["status"] == "timeout" and event["job"]["status"] == "running"
    assert 0.3 <= time.monotonic() - started < 5
    assert api.jobs[0]["state"] == "JOB_STATE_RUNNING"  # the operator cancels it, not the trigger


def test_a_missing_connection_is_an_error_event_not_worth_a_retry(api, settings, job):
    job_name, record = job
    event = _first_event(_trigger({**settings, "conn_id": "tuneloop_no_such_connection"}, job_name, record))
    assert event["status"] == "error" and event["retryable"] is False and event["job_id"] == job_name
    assert event["message"].startswith("VertexConnectionError: ")
    assert "'tuneloop_no_such_connection' (type google_cloud_platform) is missing" in event["message"]


def test_a_5xx_is_an_error_event_worth_a_retry_and_a_4xx_is_not(api, settings, job, monkeypatch):
    from tests.standins.vertex_api import _Refused

    job_name, record = job
    missing = _first_event(_trigger(settings, f"{PARENT}/tuningJobs/404", record))
    assert missing["status"] == "error" and missing["retryable"] is False
    assert missing["message"].startswith("ClientError: 404 NOT_FOUND")

    def unavailable(*args: Any, **kwargs: Any) -> None:
        raise _Refused(503, "The service is currently unavailable.")

    monkeypatch.setattr(api, "_get_job", unavailable)  # the stand-in answers every read of a job with a 503
    event = _first_event(_trigger(settings, job_name, record))
    assert event["status"] == "error" and event["retryable"] is True
    assert event["message"] == "ServerError: 503 UNAVAILABLE. {'error': {'code': 503, 'message': " \
                               "'The service is currently unavailable.', 'status': 'UNAVAILABLE'}}"


def test_killing_the_deferred_task_cancels_the_job_and_records_its_end(api, clock, settings, job):
    job_name, record = job
    clock.tick(PENDING_S)
    asyncio.run(_trigger(settings, job_name, record).on_kill())
    assert [call.target for call in api.calls if call.method == "POST" and call.target.endswith(":cancel")] == [
        f"/v1beta1/{job_name}:cancel"]
    assert api.jobs[0]["state"] == "JOB_STATE_CANCELLED"
    assert JobRecord.read(record).ended_jobs == [job_name]
    [entry] = spent.read(record.parent.parent)
    assert (entry.resource, entry.unit, entry.outcome) == (job_name, "tokens", "cancelled")
    billed = api.jobs[0]["tuningDataStats"]["supervisedTuningDataStats"]["totalBillableTokenCount"]
    assert (entry.quantity, entry.upper_bound) == (int(billed), False)  # Vertex's count once it read the data


def test_killing_after_success_leaves_the_job_to_be_collected(api, clock, settings, job):
    job_name, record = job
    clock.tick(PENDING_S + RUNNING_S)
    asyncio.run(_trigger(settings, job_name, record).on_kill())
    assert api.jobs[0]["state"] == "JOB_STATE_SUCCEEDED" and JobRecord.read(record).ended_jobs == []
    assert spent.read(record.parent.parent) == []
    assert not [call for call in api.calls if call.target.endswith(":cancel")]


def test_killing_after_a_failure_records_its_end_without_cancelling(api, clock, settings, job):
    api.fail_running = (13, "Internal error occurred.")
    job_name, record = job
    clock.tick(PENDING_S + RUNNING_S)
    asyncio.run(_trigger(settings, job_name, record).on_kill())
    assert api.jobs[0]["state"] == "JOB_STATE_FAILED" and JobRecord.read(record).ended_jobs == [job_name]
    [entry] = spent.read(record.parent.parent)
    assert (entry.resource, entry.outcome) == (job_name, "failed")
    assert not [call for call in api.calls if call.target.endswith(":cancel")]


def test_killing_with_the_run_s_folder_in_a_bucket(api, client, clock, settings, gcs_emulator):
    """``storage_root: gs://...``: the record is an object, read and written through Airflow's ObjectStoragePath."""
    import uuid

    from tuneloop.storage import storage_root

    uri = f"gs://acme-tuneloop/trigger-test/{uuid.uuid4().hex}/training/vertex/job.json"
    record = storage_root(uri, Path("unused"))
    storage.write_json(record.parent.parent / "spec.json", {"estimated_training_tokens": ESTIMATE})
    job_name = start_or_attach(client, record, JobRequest(
        base_model=BASE, training_uri=upload([example(0)]), validation_uri=None, display_name="bucket",
        labels={"tuneloop_run": "bucket"})).id
    asyncio.run(_trigger(settings, job_name, Path(uri), record_uri=uri).on_kill())
    assert api.jobs[0]["state"] == "JOB_STATE_CANCELLED"
    assert JobRecord.read(storage_root(uri, Path("unused"))).ended_jobs == [job_name]
    assert [entry.resource for entry in spent.read(record.parent.parent)] == [job_name]
