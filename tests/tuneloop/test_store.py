"""The error-case store, on SQLite and (when reachable) PostgreSQL: every ``store`` test runs on both."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from tuneloop.config import TuneloopConfig
from tuneloop.history import DeploymentEvent
from tuneloop.store import ErrorCaseStore, InvalidCase, NotFound, StoreError, metadata

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
def add(store: ErrorCaseStore, audio: Path, correction: str | None = "hello world", **kwargs) -> str:
    return store.store_failed_case(audio, kwargs.pop("prediction", "hello word"), correction, **kwargs)


# ------------------------------------------------------------------------------------------ store_failed_case


def test_store_failed_case_round_trip(store, wav_factory):
    audio = wav_factory("a.wav")
    case_id = store.store_failed_case(
        str(audio), "helo world", "Hello, world!", ["word_substitution"], 0.85, {"voice": "en-us", "n": 1},
        source="production", model_version="3", annotator="ann", created_at="2025-05-01T10:00:00+02:00")
    case = store.get_case(case_id)
    assert case.audio_uri == str(audio) and case.audio_hash and len(case.audio_hash) == 64
    assert (case.prediction, case.correction) == ("helo world", "Hello, world!")
    assert case.error_types == ("word_substitution",) and case.error_score == 0.85
    assert case.metadata == {"voice": "en-us", "n": 1}
    assert (case.source, case.model_version, case.annotator, case.state) == ("production", "3", "ann", "new")
    assert case.created_at == datetime(2025, 5, 1, 8, 0, tzinfo=UTC)


def test_same_case_twice_is_one_row(store, wav_factory):
    audio = wav_factory("a.wav")
    first = add(store, audio, "Hello world")
    # same audio, same normalised correction, other metadata: still the same case
    assert add(store, audio, "hello, WORLD", metadata={"x": 1}) == first
    assert store.statistics().total_cases == 1
    assert add(store, audio, "hello there") != first  # a different correction is a different case


def test_relative_paths_are_stored_absolute(store, wav_factory, monkeypatch):
    audio = wav_factory("a.wav")
    monkeypatch.chdir(audio.parent)
    assert store.get_case(add(store, Path("a.wav"))).audio_uri == str(audio)


def test_remote_audio_is_accepted_unchecked(store):
    case = store.get_case(store.store_failed_case("gs://bucket/a.wav", "x", "hello"))
    assert case.audio_uri == "gs://bucket/a.wav" and case.audio_hash is None


def test_naive_created_at_is_utc_and_default_is_now(store, wav_factory):
    naive = store.get_case(add(store, wav_factory("a.wav"), created_at=datetime(2025, 1, 2, 3, 4)))
    assert naive.created_at == datetime(2025, 1, 2, 3, 4, tzinfo=UTC)
    assert store.get_case(add(store, wav_factory("b.wav"))).created_at == NOW


@pytest.mark.parametrize(
    ("kwargs", "field", "reason"),
    [
        ({"error_score": "high"}, "error_score", "finite number"),
        ({"error_score": float("nan")}, "error_score", "finite number"),
        ({"error_types": "substitution"}, "error_types", "list of strings"),
        ({"error_types": [1, 2]}, "error_types", "list of strings"),
        ({"metadata": ["voice"]}, "metadata", "JSON object"),
        ({"metadata": {"when": datetime(2025, 1, 1)}}, "metadata", "plain JSON"),
        ({"created_at": "yesterday"}, "created_at", "ISO-8601"),
        ({"correction": "  ?! "}, "correction", "empty after normalisation"),
        ({"prediction": None}, "prediction", "missing"),
        ({"model_version": ""}, "model_version", "non-empty"),
        ({"case_id": " x"}, "id", "surrounding spaces"),
    ],
)
def test_invalid_case_names_field_and_reason(store, wav_factory, kwargs, field, reason):
    audio = wav_factory("a.wav")
    kwargs = dict(kwargs)  # the parameter dict is shared by the sqlite and postgres runs
    correction = kwargs.pop("correction", "hello world")
    prediction = kwargs.pop("prediction", "hello word")
    with pytest.raises(InvalidCase) as caught:
        store.store_failed_case(audio, prediction, correction, **kwargs)
    assert caught.value.field == field and reason in caught.value.reason
    assert isinstance(caught.value, ValueError)
    assert store.statistics().total_cases == 0


@pytest.mark.parametrize(("content", "reason"), [(None, "audio file missing"), (b"not a wav", "audio file undecodable"),
                                                  (b"", "audio file empty")])
def test_bad_audio_is_refused(store, tmp_path, content, reason):
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InvalidCase) as caught:
        store.store_failed_case(path, "x", "hello")
    assert caught.value.field == "audio_path" and caught.value.reason.startswith(reason)


def test_reused_id_with_other_content_is_refused(store, wav_factory):
    add(store, wav_factory("a.wav"), case_id="case-1")
    assert add(store, wav_factory("a.wav"), case_id="case-1") == "case-1"
    with pytest.raises(InvalidCase, match="id: 'case-1' is already used"):
        add(store, wav_factory("b.wav"), case_id="case-1")


def test_empty_prediction_needs_a_correction(store, wav_factory):
    assert add(store, wav_factory("a.wav"), "hello", prediction="")  # the model said nothing: a real error
    with pytest.raises(InvalidCase, match="prediction: empty after normalisation"):
        add(store, wav_factory("b.wav"), None, prediction="  ")


# ------------------------------------------------------------------------------------------------ ingest_jsonl


def write_jsonl(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture
def batch(tmp_path, wav_factory) -> Path:
    """A batch mixing valid rows with every kind of bad row; audio paths relative to the batch file."""
    for name in ("a.wav", "b.wav", "c.wav", "d.wav"):
        wav_factory(name)
    (tmp_path / "audio" / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    ok = {"prediction": "helo", "correction": "hello", "model_version": "3"}
    folder = tmp_path / "audio"
    return write_jsonl(folder / "batch.jsonl", [
        {**ok, "audio_path": "a.wav", "metadata": {"voice": "f1"}, "created_at": "2025-05-01T00:00:00Z"},  # 1 ok
        "{not json",                                                                        # 2
        [1, 2, 3],                                                                          # 3
        {**ok},                                                                             # 4 no audio
        {**ok, "audio_path": "missing.wav"},                                                # 5
        {**ok, "audio_path": "corrupt.wav"},                                                # 6
        {**ok, "audio_path": "b.wav", "correction": "   "},                                 # 7
        {**ok, "audio_path": "b.wav", "error_score": "high"},                               # 8
        {**ok, "audio_path": "b.wav", "error_types": "substitution"},                       # 9
        {**ok, "audio_path": "b.wav", "metadata": "voice=f1"},                              # 10
        {**ok, "audio_path": "b.wav", "created_at": "last tuesday"},                        # 11
        {"audio_uri": str(folder / "b.wav"), "original_transcript": "x", "corrected_transcript": "bee"},  # 12 ok
        {**ok, "audio_path": "a.wav", "metadata": {"voice": "f1", "again": True}},          # 13 duplicate of 1
        "",                                                                                 # 14 blank: ignored
        {**ok, "audio_path": "c.wav", "colour": "red"},                                     # 15 unknown field
        {"id": "given-1", "audio_path": "gs://bucket/x.wav", "prediction": "p", "correction": "remote"},  # 16 ok
        {**ok, "audio_path": "c.wav", "correction": None, "error_types": ["deletion"]},     # 17 ok, uncorrected
    ])


EXPECTED_REJECTIONS = {
    2: ("line", "not valid JSON"), 3: ("line", "must be a JSON object"), 4: ("audio_path", "missing"),
    5: ("audio_path", "audio file missing"), 6: ("audio_path", "audio file undecodable"),
    7: ("correction", "empty after normalisation"), 8: ("error_score", "finite number"),
    9: ("error_types", "list of strings"), 10: ("metadata", "JSON object"), 11: ("created_at", "ISO-8601"),
    15: ("colour", "unknown field"),
}


def test_ingest_keeps_valid_rows_and_explains_every_rejection(store, batch):
    report = store.ingest_jsonl(batch, source="inbox")
    assert len(report.accepted) == 4 and "given-1" in report.accepted
    assert [(d.line, d.case_id) for d in report.duplicates] == [(13, report.accepted[0])]
    assert {r.line: (r.field, r.reason.split(":")[0].split(" (")[0]) for r in report.rejected}.keys() \
        == EXPECTED_REJECTIONS.keys()
    for row in report.rejected:
        field, reason = EXPECTED_REJECTIONS[row.line]
        assert row.field == field and reason in row.reason, row
        assert row.snippet
    assert report.rows == 16
    first = store.get_case(report.accepted[0])
    assert first.audio_uri == str(batch.parent / "a.wav") and first.metadata == {"voice": "f1"}
    assert first.source == "inbox" and first.created_at == datetime(2025, 5, 1, tzinfo=UTC)
    stored = store.ingest_rejections()
    assert sorted(r.line for r in stored) == sorted(EXPECTED_REJECTIONS) and stored[0].batch == str(batch)


def test_reingesting_a_batch_adds_nothing(store, batch):
    first = store.ingest_jsonl(batch)
    before = store.statistics()
    again = store.ingest_jsonl(batch)
    assert again.accepted == ()
    assert sorted(d.case_id for d in again.duplicates) == sorted([*first.accepted, first.accepted[0]])
    assert again.rejected == first.rejected
    assert store.statistics() == before


def test_duplicates_across_files(store, batch, tmp_path):
    store.ingest_jsonl(batch)
    other = write_jsonl(tmp_path / "other.jsonl", [
        {"audio_path": str(batch.parent / "a.wav"), "prediction": "whatever", "correction": "Hello!"},
        {"audio_path": str(batch.parent / "d.wav"), "prediction": "x", "correction": "new one"},
    ])
    report = store.ingest_jsonl(other)
    assert [d.line for d in report.duplicates] == [1] and len(report.accepted) == 1


def test_undecodable_line_is_rejected_not_fatal(store, tmp_path, wav_factory):
    audio = wav_factory("a.wav")
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'\xff\xfe{"bad": 1}\n' + json.dumps(
        {"audio_path": str(audio), "prediction": "p", "correction": "c"}).encode() + b"\n")
    report = store.ingest_jsonl(path)
    assert len(report.accepted) == 1 and report.rejected[0].field == "line" and "UTF-8" in report.rejected[0].reason


def test_missing_batch_file_is_an_error(store, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        store.ingest_jsonl(tmp_path / "nope.jsonl")


# -------------------------------------------------------------------------------------- metrics and statistics


def test_trigger_metrics_window_and_version(store, wav_factory):
    window = timedelta(hours=24)
    add(store, wav_factory("old.wav"), model_version="3", created_at=NOW - timedelta(hours=25))
    add(store, wav_factory("edge.wav"), model_version="3", created_at=NOW - window)      # start: included
    add(store, wav_factory("in.wav"), model_version="3", created_at=NOW - timedelta(hours=1))
    add(store, wav_factory("v2.wav"), model_version="2", created_at=NOW - timedelta(hours=1))
    add(store, wav_factory("raw.wav"), None, model_version="3", created_at=NOW)          # end: included
    store.record_inferences("3", 40, period_start=NOW - timedelta(hours=2))
    store.record_inferences("3", 60, period_start=NOW - timedelta(hours=2))            # replaces: retry-safe
    store.record_inferences("3", 7, period_start=NOW - timedelta(hours=30))            # outside the window
    store.record_inferences("2", 1000, period_start=NOW - timedelta(hours=2))
    metrics = store.trigger_metrics(NOW, window, "3")
    assert (metrics.new_cases, metrics.new_corrected_cases) == (5, 4)
    assert (metrics.window_errors, metrics.window_inferences) == (3, 60)
    assert metrics.window_start == NOW - window and metrics.window_end == NOW
    everything = store.trigger_metrics(NOW, window, None)
    assert (everything.window_errors, everything.window_inferences) == (4, 1060)
    assert not everything.training_in_progress and everything.last_training_finished_at is None


def test_record_inferences_validates(store):
    with pytest.raises(ValueError, match="count"):
        store.record_inferences("3", -1)
    with pytest.raises(ValueError, match="model_version"):
        store.record_inferences("", 1)


def test_statistics(store, wav_factory):
    add(store, wav_factory("a.wav"), error_types=["substitution", "deletion"], model_version="3")
    add(store, wav_factory("b.wav"), None, error_types=["substitution"])
    quarantined = add(store, wav_factory("c.wav"), model_version="3")
    store.quarantine(quarantined, "bad label")
    store.record_inferences("3", 10, period_start=NOW)
    stats = store.statistics()
    assert stats.total_cases == 3 and stats.by_state == {"new": 2, "consumed": 0, "quarantined": 1}
    assert (stats.corrected_cases, stats.new_corrected_cases) == (2, 1)
    assert stats.by_model_version == {"3": 2, "unknown": 1}
    assert stats.by_error_type == {"substitution": 2, "deletion": 1}
    assert stats.inferences_total == 10 and json.dumps(stats.to_dict())


def test_cases_for_export_new_corrected_oldest_first(store, wav_factory):
    late = add(store, wav_factory("late.wav"), created_at=NOW)
    early = add(store, wav_factory("early.wav"), created_at=NOW - timedelta(days=1))
    add(store, wav_factory("raw.wav"), None)
    gone = add(store, wav_factory("gone.wav"), created_at=NOW - timedelta(days=2))
    store.quarantine(gone, "corrupt")
    assert [c.id for c in store.cases_for_export()] == [early, late]
    assert [c.id for c in store.cases_for_export(limit=1)] == [early]
    assert store.get_case(gone).state_reason == "corrupt"


def test_quarantine_unknown_case(store):
    with pytest.raises(NotFound, match="nope"):
        store.quarantine("nope", "x")


# -------------------------------------------------------------------------------------- training runs, consuming


def test_mark_consumed_only_after_a_verdict(store, wav_factory):
    ids = [add(store, wav_factory(f"{i}.wav")) for i in range(3)]
    with pytest.raises(NotFound):
        store.mark_consumed(ids, "never-started")
    store.start_training_run("run-1")
    with pytest.raises(StoreError, match="still running"):
        store.mark_consumed(ids, "run-1")
    store.finish_training_run("run-1", "failed")
    assert store.mark_consumed(ids, "run-1") == 0
    assert {store.get_case(i).state for i in ids} == {"new"}

    store.start_training_run("run-2")
    store.finish_training_run("run-2", "rejected", dataset_id="ds-1")
    assert store.mark_consumed(ids[:2], "run-2") == 2
    assert store.mark_consumed(ids[:2], "run-2") == 0  # idempotent
    assert store.get_case(ids[0]).consumed_by_run == "run-2"
    assert store.get_case(ids[2]).state == "new"
    assert [c.id for c in store.cases_for_export()] == [ids[2]]


def test_training_run_lifecycle(store, clock):
    assert store.start_training_run("r1", at=NOW).status == "running"
    assert store.start_training_run("r1", at=NOW + timedelta(hours=1)).started_at == NOW  # idempotent
    assert store.trigger_metrics(NOW, timedelta(hours=1), None).running_training_run == "r1"
    clock.now = NOW + timedelta(hours=2)
    done = store.finish_training_run("r1", "deployed", dataset_id="ds-x", candidate_version="4", summary={"wer": 0.1})
    assert (done.status, done.finished_at, done.dataset_id) == ("deployed", clock.now, "ds-x")
    assert done.candidate_version == "4" and done.summary["wer"] == 0.1
    clock.now = NOW + timedelta(hours=3)
    assert store.finish_training_run("r1", "deployed").finished_at == NOW + timedelta(hours=2)  # retry keeps time
    with pytest.raises(StoreError, match="already finished deployed"):
        store.start_training_run("r1")
    with pytest.raises(ValueError, match="status"):
        store.finish_training_run("r1", "done")  # type: ignore[arg-type]


def test_failed_run_may_restart_and_skipped_runs_do_not_cool_down(store):
    store.start_training_run("r1", at=NOW)
    store.finish_training_run("r1", "failed", at=NOW + timedelta(hours=1))
    assert store.start_training_run("r1").status == "running"
    assert store.training_run("r1").finished_at is None
    store.finish_training_run("r1", "failed", at=NOW + timedelta(hours=2))
    store.finish_training_run("skip-1", "skipped", at=NOW + timedelta(hours=5))  # never started
    last = store.last_finished_training()
    assert last is not None and last.run_id == "r1" and last.finished_at == NOW + timedelta(hours=2)
    assert store.trigger_metrics(NOW + timedelta(hours=6), timedelta(hours=1), None).last_training_finished_at \
        == NOW + timedelta(hours=2)
    assert [r.run_id for r in store.training_runs()] == ["skip-1", "r1"]


def test_fail_training_run_ends_only_a_running_run(store, wav_factory):
    case = add(store, wav_factory("a.wav"))
    with pytest.raises(NotFound, match="nope"):
        store.fail_training_run("nope", "gone")
    store.start_training_run("r1", at=NOW)
    with pytest.raises(ValueError, match="reason"):
        store.fail_training_run("r1", " ")
    assert store.fail_training_run("r1", "worker lost", at=NOW + timedelta(hours=1))
    failed = store.training_run("r1")
    assert (failed.status, failed.finished_at, failed.summary["reason"]) == ("failed", NOW + timedelta(hours=1),
                                                                             "worker lost")
    assert store.trigger_metrics(NOW, timedelta(hours=1), None).running_training_run is None
    assert store.get_case(case).state == "new"
    store.finish_training_run("r2", "rejected", at=NOW)
    assert not store.fail_training_run("r2", "too late")  # its report closed it first: left as it is
    assert store.training_run("r2").status == "rejected"


def test_a_claimed_run_is_started_by_its_own_first_step(store):
    claim = {"dag_id": "finetune_on_errors", "run_id": "scheduled__1"}
    claimed = store.start_training_run("on_errors__1", at=NOW, claimed_by=claim)
    assert claimed.summary == {"started": False, "claimed_by": claim}
    started = store.start_training_run("on_errors__1", at=NOW + timedelta(minutes=5))
    assert started.summary == {"started": True, "claimed_by": claim} and started.started_at == NOW
    # a claim failed before it started does not start the cooldown, even once its report closed it (the report's
    # summary is merged, not replaced); a run ended without a result by fail_training_run does not either; a run
    # that started and failed in its own report does
    store.start_training_run("on_errors__2", at=NOW, claimed_by=claim)
    store.finish_training_run("on_errors__2", "failed", summary={"lines": ["check_trigger failed"]},
                              at=NOW + timedelta(hours=2))
    assert store.training_run("on_errors__2").summary["started"] is False
    assert store.last_finished_training() is None
    store.start_training_run("manual__3", at=NOW)
    store.fail_training_run("manual__3", "worker lost", at=NOW + timedelta(hours=2))
    assert store.training_run("manual__3").summary["no_result"] is True
    assert store.last_finished_training() is None
    store.finish_training_run("on_errors__1", "failed", at=NOW + timedelta(hours=1))
    assert store.last_finished_training().run_id == "on_errors__1"
    # the same run id started again (cleared in Airflow): a new attempt, with its own deadline
    assert store.start_training_run("on_errors__1", at=NOW + timedelta(hours=3)).started_at == NOW + timedelta(hours=3)


# ------------------------------------------------------------------------------------------------- deployments


def event(action, to_version, *, at, from_version=None, run_id=None) -> DeploymentEvent:
    return DeploymentEvent(action=action, model_name="stt", from_version=from_version, to_version=to_version,
                           reason="test", run_id=run_id, at=at)


def test_deployment_history_and_rollback_targets(store):
    assert store.record_deployment(event("bootstrap", "1", at=NOW))
    assert store.record_deployment(event("deploy", "2", from_version="1", run_id="r1", at=NOW + timedelta(hours=1)))
    # a retried task builds the event again with a new time: recorded once
    assert not store.record_deployment(event("deploy", "2", from_version="1", run_id="r1", at=NOW + timedelta(hours=2)))
    store.record_deployment(event("reject", None, from_version="2", run_id="r2", at=NOW + timedelta(hours=3)))
    store.record_deployment(event("deploy", "3", from_version="2", run_id="r3", at=NOW + timedelta(hours=4)))
    store.record_deployment(event("rollback", "2", from_version="3", at=NOW + timedelta(hours=5)))
    history = store.deployment_history("stt")
    assert [e.action for e in history] == ["rollback", "deploy", "reject", "deploy", "bootstrap"]
    assert history[0].at == NOW + timedelta(hours=5) and history[0].to_version == "2"
    assert store.deployed_versions("stt") == ["2", "3", "1"]
    assert store.deployed_versions("other") == [] and store.deployment_history(limit=1)[0].action == "rollback"


# ----------------------------------------------------------------------------------------------- construction


def test_bad_url_fails_fast():
    with pytest.raises(StoreError, match="store_url"):
        ErrorCaseStore("not a url")


def test_from_config_creates_the_sqlite_file(tmp_path):
    config = TuneloopConfig(home=tmp_path / "home")
    with ErrorCaseStore.from_config(config) as store:
        assert store.statistics().total_cases == 0
    assert (tmp_path / "home" / "store.db").is_file()
    ErrorCaseStore.from_config(config).close()  # tables exist: creating again is harmless


def test_unreachable_database_fails_fast():
    with pytest.raises(StoreError, match="127.0.0.1:1"):
        ErrorCaseStore("postgresql+psycopg2://postgres@127.0.0.1:1/nothing")


def test_concurrent_workers_store_each_case_once(tmp_path, batch):
    """Retried or parallel Airflow tasks: several stores on one new SQLite file, all ingesting the same batch."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    reports, errors = [], []

    def ingest() -> None:
        try:
            with ErrorCaseStore(url) as worker:
                reports.append(worker.ingest_jsonl(batch))
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=ingest) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(len(r.accepted) for r in reports) == 4
    with ErrorCaseStore(url) as store:
        assert store.statistics().total_cases == 4
        assert len(store.ingest_rejections()) == len(EXPECTED_REJECTIONS)
