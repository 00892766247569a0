"""Several models in one store, on SQLite and PostgreSQL: each model sees only its own cases, runs, cooldown,
inference counts, suites, rejections and history, whatever the other models do with the same ids."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneloop.config import TuneloopConfig
from tuneloop.history import DeploymentEvent
from tuneloop.intake import CaseDraft, IngestLimits, InvalidCase, check_values, common_fields, refuse_unknown, sha256
from tuneloop.store import DEFAULT_MODEL, ErrorCaseStore, NotFound, StoreError, metadata

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
CHAT_KEYS = frozenset({"id", "messages", "output", "ideal", "rating", "error_types", "error_score", "model_version",
                       "created_at", "annotator", "source", "metadata"})


class ChatLike:
    """A stand-in for the chat task: the conversation and rating in ``payload``, no audio."""

    name = "chat"

    def parse_case(self, row: Mapping[str, Any], *, base_dir: Path | str, default_source: str, now: datetime,
                   limits: IngestLimits) -> CaseDraft:
        check_values(row, limits)
        refuse_unknown(row, CHAT_KEYS)
        if not isinstance(row.get("messages"), list):
            raise InvalidCase("messages", "must be a list of messages")
        fields = common_fields(row, default_source=default_source, now=now, limits=limits)
        content_hash = sha256(json.dumps([row["messages"], row.get("ideal") or row["output"]]))
        return CaseDraft(id=fields.pop("id") or content_hash[:32], audio_uri=None, audio_hash=None,
                         prediction=row["output"], correction=row.get("ideal"), content_hash=content_hash,
                         payload={"messages": row["messages"], "rating": row.get("rating")}, **fields)


def chat_row(question: str, ideal: str | None = "Paris.", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}], "output": "Lyon.", "ideal": ideal, **extra}


def remote(store: ErrorCaseStore, name: str, correction: str | None = "hello world", **kwargs: Any) -> str:
    """A speech case with remote audio (not probed: no files needed)."""
    return store.store_failed_case(f"gs://bucket/{name}.wav", "helo", correction, **kwargs)


def event(action: str, to_version: str | None, *, run_id: str | None = None, from_version: str | None = None,
          at: datetime = NOW) -> DeploymentEvent:
    return DeploymentEvent(action=action, model_name="shared-registry-name", from_version=from_version,
                           to_version=to_version, reason="test", run_id=run_id, at=at)


@pytest.fixture
def other(store) -> ErrorCaseStore:
    """A second speech model in the same database."""
    return store.for_model("stt-2")


# ----------------------------------------------------------------------------------------------------- cases


def test_each_model_sees_only_its_own_cases(store, other):
    assert remote(store, "a", case_id="c1") == "c1"
    assert remote(other, "a", case_id="c1") == "c1"  # the same id and the same content: one case in each model
    remote(store, "b", case_id="c2")
    assert store.statistics().total_cases == 2 and other.statistics().total_cases == 1
    assert [c.id for c in other.cases_for_export()] == ["c1"]
    with pytest.raises(NotFound, match="'c2' does not exist \\(model 'stt-2'\\)"):
        other.get_case("c2")
    with pytest.raises(NotFound):
        other.quarantine("c2", "not its case")
    other.quarantine("c1", "bad label")
    assert store.get_case("c1").state == "new" and other.get_case("c1").state == "quarantined"
    with pytest.raises(InvalidCase, match="already used"):  # an id is unique within a model
        remote(other, "other-audio", case_id="c1")
    assert store.statistics().by_state == {"new": 2, "consumed": 0, "quarantined": 0}
    assert other.statistics().model == "stt-2"


def test_consuming_a_run_touches_only_its_model(store, other):
    ids = [remote(store, name, case_id=name) for name in ("x", "y")]
    assert [remote(other, name, case_id=name) for name in ("x", "y")] == ids
    run = "scheduled__2025-06-01T00:00:00+00:00"  # both models' DAGs get the same run id
    store.finish_training_run(run, "deployed")
    other.start_training_run(run)
    assert store.mark_consumed(ids, run) == 2
    assert {other.get_case(i).state for i in ids} == {"new"}
    with pytest.raises(StoreError, match="still running"):
        other.mark_consumed(ids, run)


def test_the_same_bad_batch_is_refused_for_each_model(store, other, tmp_path):
    batch = tmp_path / "batch.jsonl"
    batch.write_text('{not json\n{"audio_uri": "gs://b/1.wav", "prediction": "p", "correction": "c"}\n')
    for model in (store, other, store):
        report = model.ingest_jsonl(batch)
        assert len(report.rejected) == 1
    assert len(store.ingest_rejections()) == 1 and len(other.ingest_rejections()) == 1
    assert store.statistics().rejected_rows == 1 and other.statistics().total_cases == 1


def test_a_chat_case_with_a_payload_and_no_audio_round_trips(store):
    chat = store.for_model("assistant", task=ChatLike())
    corrected = chat.store_case(chat_row("Capital of France?", metadata={"domain": "geo"}, rating=1))
    rated = chat.store_case(chat_row("Capital of Italy?", ideal=None, rating=5))
    assert chat.store_case(chat_row("Capital of France?")) == corrected  # the same case again
    case = chat.get_case(corrected)
    assert (case.audio_uri, case.audio_hash, case.prediction, case.correction) == (None, None, "Lyon.", "Paris.")
    assert case.payload == {"messages": [{"role": "user", "content": "Capital of France?"}], "rating": 1}
    assert case.metadata == {"domain": "geo"} and case.source == "api" and case.to_dict()["payload"] == case.payload
    assert [c.id for c in chat.cases_for_export()] == [corrected]
    assert {c.id for c in chat.cases_for_export(corrected_only=False)} == {corrected, rated}
    assert store.statistics().total_cases == 0 and store.cases_for_export(corrected_only=False) == []
    with pytest.raises(StoreError, match="model 'assistant' is a chat model: use store_case"):
        chat.store_failed_case("gs://bucket/a.wav", "x", "y")
    with pytest.raises(InvalidCase, match="audio_uri: unknown field"):
        chat.store_case({"audio_uri": "gs://bucket/a.wav", "messages": [], "output": "x"})


def test_chat_batches_are_checked_by_the_chat_task(store, tmp_path):
    chat = store.for_model("assistant", task=ChatLike())
    batch = tmp_path / "chat.jsonl"
    batch.write_text("".join(json.dumps(row) + "\n" for row in (chat_row("a?"), {"messages": "hi", "output": "x"})))
    report = chat.ingest_jsonl(batch)
    assert len(report.accepted) == 1 and [(r.line, r.field) for r in report.rejected] == [(2, "messages")]
    assert chat.get_case(report.accepted[0]).payload["messages"][0]["content"] == "a?"


# -------------------------------------------------------------------------------- runs, cooldown, inferences


def test_runs_and_cooldown_are_per_model(store, other):
    run = "scheduled__2025-06-01T00:00:00+00:00"
    store.start_training_run(run, at=NOW - timedelta(hours=3))
    other.start_training_run(run, at=NOW - timedelta(hours=2))
    store.finish_training_run(run, "deployed", at=NOW - timedelta(hours=1))
    assert (store.training_run(run).status, other.training_run(run).status) == ("deployed", "running")
    assert other.training_run(run).started_at == NOW - timedelta(hours=2)
    mine, theirs = (s.trigger_metrics(NOW, timedelta(days=1), None) for s in (store, other))
    assert mine.last_training_finished_at == NOW - timedelta(hours=1) and mine.running_training_run is None
    assert theirs.last_training_finished_at is None and theirs.running_training_run == run
    assert [r.run_id for r in other.running_training_runs()] == [run] and store.running_training_runs() == []
    assert other.fail_training_run(run, "worker lost") and store.training_run(run).status == "deployed"
    with pytest.raises(NotFound, match="model 'stt-3'"):
        store.for_model("stt-3").training_run(run)


def test_inference_counts_are_per_model(store, other):
    hour = NOW - timedelta(hours=1)
    store.record_inferences("3", 40, period_start=hour)
    other.record_inferences("3", 1000, period_start=hour)  # version "3" of another registered model
    store.record_inferences("3", 60, period_start=hour)  # replaces this model's count only
    assert store.trigger_metrics(NOW, timedelta(days=1), "3").window_inferences == 60
    assert other.trigger_metrics(NOW, timedelta(days=1), "3").window_inferences == 1000
    assert (store.statistics().inferences_total, other.statistics().inferences_total) == (60, 1000)


def test_suites_and_history_are_per_model(store, other, tmp_path):
    store.register_suite({"name": "critical", "data_path": str(tmp_path / "mine.jsonl")})
    other.register_suite({"name": "critical", "data_path": str(tmp_path / "theirs.jsonl")})
    other.register_suite({"name": "extra", "data_path": str(tmp_path / "extra.jsonl")})
    assert [s.data_path.name for s in store.registered_suites()] == ["mine.jsonl"]
    assert [s.name for s in other.registered_suites()] == ["critical", "extra"]
    result = {"name": "critical", "model_version": "4", "wer": 0.1, "cer": 0.05, "n": 10, "passed": True}
    assert store.record_suite_result("run-1", result) and other.record_suite_result("run-1", result | {"wer": 0.3})
    assert not other.record_suite_result("run-1", result)
    assert [r["wer"] for r in store.suite_history("critical")] == [0.1]
    assert [r["wer"] for r in other.suite_history()] == [0.3]

    assert store.record_deployment(event("bootstrap", "1", at=NOW - timedelta(hours=2)))
    assert store.record_deployment(event("deploy", "2", from_version="1", run_id="run-1"))
    assert other.record_deployment(event("deploy", "2", from_version="1", run_id="run-1"))  # the same event: each
    assert not other.record_deployment(event("deploy", "2", from_version="1", run_id="run-1"))
    assert store.deployed_versions("shared-registry-name") == ["2", "1"]
    assert other.deployed_versions("shared-registry-name") == ["2"]
    assert [e.action for e in other.deployment_history()] == ["deploy"]


# ------------------------------------------------------------------------------------------- scoping itself


def test_models_lists_every_model_with_rows(store, other):
    assert store.models() == []
    remote(other, "a")
    store.for_model("chat-bot").start_training_run("r1")
    store.for_model("counted").record_inferences("1", 1, period_start=NOW)
    assert store.models() == ["chat-bot", "counted", "stt-2"] and other.models() == store.models()


def test_for_model_shares_the_connections(store):
    other = store.for_model("stt-2")
    assert other._engine is store._engine and other._writer is store._writer
    assert (store.model, other.model) == (DEFAULT_MODEL, "stt-2")
    assert "model='stt-2'" in repr(other)
    for bad in ("", " stt", "x" * 201, None):
        with pytest.raises(ValueError, match="model: must be a non-empty string"):
            store.for_model(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown task 'vision'"):
        store.for_model("v", task="vision")


def test_from_config_is_scoped_to_the_configured_model(tmp_path):
    config = TuneloopConfig(home=tmp_path / "home")
    with ErrorCaseStore.from_config(config) as store:
        assert store.model == DEFAULT_MODEL  # single-model config (no model_key yet: the default)
    multi = SimpleNamespace(resolved_store_url=config.resolved_store_url, ingest=config.ingest,
                            dataset=config.dataset, model_key="assistant", task="chat")
    with ErrorCaseStore.from_config(multi) as store:  # type: ignore[arg-type]
        assert store.model == "assistant" and store._task == "chat"  # imported when a case needs it
        with pytest.raises(StoreError, match="a chat model"):
            remote(store, "a")


# ------------------------------------------------------------------------------- any interleaving of writes

MODELS = ("a", "b")
operations = st.one_of(
    st.tuples(st.just("case"), st.sampled_from(MODELS), st.integers(0, 3), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("quarantine"), st.sampled_from(MODELS), st.integers(0, 3)),
    st.tuples(st.just("start"), st.sampled_from(MODELS), st.integers(0, 1)),
    st.tuples(st.just("finish"), st.sampled_from(MODELS), st.integers(0, 1), st.sampled_from(["failed", "deployed"])),
    st.tuples(st.just("inferences"), st.sampled_from(MODELS), st.integers(0, 1), st.integers(0, 50)),
)


@dataclass
class Expected:
    """What one model's view must be: a dictionary model of its cases, runs and inference counts."""

    content_of: dict[str, tuple[int, int]] = field(default_factory=dict)  # case id -> (audio, text variant)
    id_of: dict[tuple[int, int], str] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)
    inferences: dict[int, int] = field(default_factory=dict)


def apply(store: ErrorCaseStore, expected: Expected, op: tuple[Any, ...]) -> None:
    """Do ``op`` on the store and on the expected view, checking what the store answers."""
    kind, _, *args = op
    if kind == "case":
        audio, variant, with_id = args
        content, case_id = (audio, variant), f"c{audio}" if with_id else None
        row = {"id": case_id, "audio_uri": f"gs://bucket/{audio}.wav", "prediction": "p",
               "correction": ("hello alpha", "hello beta")[variant]}
        if case_id in expected.content_of and expected.content_of[case_id] != content:
            with pytest.raises(InvalidCase, match="already used"):
                store.store_case(row)
            return
        stored = store.store_case(row)
        if content in expected.id_of:
            assert stored == expected.id_of[content]
        else:
            expected.id_of[content], expected.content_of[stored], expected.states[stored] = stored, content, "new"
    elif kind == "quarantine":
        case_id = f"c{args[0]}"
        if case_id not in expected.states:
            with pytest.raises(NotFound):
                store.quarantine(case_id, "test")
            return
        store.quarantine(case_id, "test")
        expected.states[case_id] = "quarantined"
    elif kind == "start":
        run = f"run-{args[0]}"
        if expected.runs.get(run) == "deployed":
            with pytest.raises(StoreError, match="already finished"):
                store.start_training_run(run)
            return
        store.start_training_run(run)
        expected.runs[run] = "running"
    elif kind == "finish":
        run, status = f"run-{args[0]}", args[1]
        store.finish_training_run(run, status)
        expected.runs[run] = status
    else:
        hour, count = args
        store.record_inferences("3", count, period_start=NOW - timedelta(hours=hour))
        expected.inferences[hour] = count


def check_view(store: ErrorCaseStore, expected: Expected) -> None:
    stats = store.statistics()
    assert {c.id for c in store.cases_for_export(corrected_only=False)} \
        == {case_id for case_id, state in expected.states.items() if state == "new"}
    assert stats.total_cases == len(expected.states)
    assert stats.by_state["quarantined"] == sum(state == "quarantined" for state in expected.states.values())
    assert {r.run_id: r.status for r in store.training_runs(limit=100)} == expected.runs
    assert stats.inferences_total == sum(expected.inferences.values())
    metrics = store.trigger_metrics(NOW, timedelta(days=1), None)
    running = {run for run, status in expected.runs.items() if status == "running"}
    assert metrics.running_training_run in running | {None}
    assert (metrics.last_training_finished_at is None) == all(s == "running" for s in expected.runs.values())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operations, max_size=20))
def test_any_interleaving_keeps_each_models_view_its_own(store, ops):
    with store._engine.begin() as conn:  # one store per test, many examples: start each one empty
        for table in reversed(metadata.sorted_tables):
            conn.execute(sa.delete(table))
    stores = {name: store.for_model(name) for name in MODELS}
    expected = {name: Expected() for name in MODELS}
    for op in ops:
        apply(stores[op[1]], expected[op[1]], op)
    for name in MODELS:
        check_view(stores[name], expected[name])
