"""Served requests and their outcomes in the store (SQLite and PostgreSQL): idempotent writes, the rule "an error
stands", the online test's counts per version and period, and every bad field refused by name."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneloop.store import NotFound, ServedRequest

T0 = datetime(2026, 12, 7, 9, tzinfo=UTC)


def served(request_id: str, version: str = "7", arm: str = "canary", minutes: int = 0, **fields) -> ServedRequest:
    return ServedRequest(request_id=request_id, model_version=version, arm=arm,
                         served_at=T0 + timedelta(minutes=minutes), **fields)


def test_a_served_request_reads_back_and_a_retry_changes_nothing(store):
    request = served("r-1", latency_ms=12.5, prompt_tokens=40, completion_tokens=9)
    assert store.record_served(request) is True
    assert store.record_served(served("r-1", version="6", arm="production")) is False
    assert store.served_request("r-1") == request
    with pytest.raises(NotFound, match="request_id: 'r-2' was not served"):
        store.served_request("r-2")


def test_an_error_stands_and_a_success_after_it_changes_nothing(store, clock):
    store.record_served(served("r-1"))
    accepted = store.record_outcome("r-1", "success")
    assert (accepted.outcome, accepted.judged_at) == ("success", clock())
    corrected = store.record_outcome("r-1", "error", case_id="case-9", at=T0 + timedelta(hours=1))
    assert (corrected.outcome, corrected.case_id, corrected.judged_at) == ("error", "case-9", T0 + timedelta(hours=1))
    assert store.record_outcome("r-1", "success") == corrected
    assert store.record_outcome("r-1", "error", case_id="case-9") == corrected  # the same outcome again
    with pytest.raises(NotFound, match="request_id: 'nope' was not served \\(no router recorded it for model "
                                       "'default'\\)"):
        store.record_outcome("nope", "error")
    with pytest.raises(ValueError, match="outcome: must be one of success, error, got 'maybe'"):
        store.record_outcome("r-1", "maybe")  # type: ignore[arg-type]


def test_mean_latency_is_one_version_s_since_a_time(store):
    store.record_served(served("a", latency_ms=10.0))
    store.record_served(served("b", latency_ms=30.0, minutes=5))
    store.record_served(served("c", version="6", arm="production", latency_ms=500.0))
    store.record_served(served("d"))  # no latency recorded: not counted
    assert store.mean_latency_ms("7", since=T0) == pytest.approx(20.0)
    assert store.mean_latency_ms("7", since=T0 + timedelta(minutes=1)) == pytest.approx(30.0)
    assert store.mean_latency_ms("8", since=T0) is None


def test_mean_usage_is_one_version_s_recorded_tokens_since_a_time(store):
    store.record_served(served("a", prompt_tokens=10, completion_tokens=4))
    store.record_served(served("b", prompt_tokens=30, completion_tokens=8, minutes=5))
    store.record_served(served("c", version="6", arm="production", prompt_tokens=900, completion_tokens=900))
    store.record_served(served("d", minutes=6))  # no usage recorded (a speech model, an older version): not counted
    assert store.mean_usage("7", since=T0) == pytest.approx((20.0, 6.0))
    assert store.mean_usage("7", since=T0 + timedelta(minutes=1)) == pytest.approx((30.0, 8.0))
    assert store.mean_usage("7", since=T0 + timedelta(minutes=6)) is None
    assert store.mean_usage("8", since=T0) is None


def test_judged_counts_are_one_version_s_judged_requests_in_the_period(store):
    for i, outcome in enumerate(["error", "success", "success", None, "error"]):
        store.record_served(served(f"c-{i}", minutes=i, outcome=outcome))
    store.record_served(served("p-0", version="6", arm="production", outcome="error"))
    store.record_served(served("c-late", minutes=60, outcome="error"))
    store.for_model("other").record_served(served("c-0", outcome="error"))  # another model's request
    assert store.judged_counts("7", since=T0) == (5, 3)
    assert store.judged_counts("7", since=T0, until=T0 + timedelta(minutes=60)) == (4, 2)
    assert store.judged_counts("7", since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=60)) == (3, 1)
    assert store.judged_counts("6", since=T0) == (1, 1)
    assert store.judged_counts("8", since=T0) == (0, 0)
    assert store.served_request("c-0").judged_at == T0  # judged as it was served


outcomes = st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from([None, "success", "error"]),
                              st.lists(st.sampled_from(["success", "error"]), max_size=3)), max_size=30)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(outcomes)
def test_counts_match_the_rule_for_any_sequence_of_outcomes(store, requests):
    """Any served requests and later judgements: each version's counts are its judged requests, and a request is
    an error when any judgement said so. (Each example has versions of its own: the store outlives examples.)"""
    example = uuid.uuid4().hex[:8]
    expected = {"a": [0, 0], "b": [0, 0]}
    for i, (version, first, later) in enumerate(requests):
        request_id = f"{example}-{i}"
        store.record_served(served(request_id, version=f"{example}-{version}", outcome=first))
        for outcome in later:
            store.record_outcome(request_id, outcome)
        verdicts = [v for v in [first, *later] if v]
        if verdicts:
            expected[version][0] += 1
            expected[version][1] += "error" in verdicts
    for version, (judged, errors) in expected.items():
        assert store.judged_counts(f"{example}-{version}", since=T0) == (judged, errors)


@pytest.mark.parametrize(("fields", "error"), [
    ({"request_id": ""}, "request_id: must be a non-empty string of at most 200 characters, got ''"),
    ({"request_id": "x" * 201}, "request_id: must be a non-empty string of at most 200 characters"),
    ({"model_version": None}, "model_version: must be a non-empty string"),
    ({"arm": "blue"}, "arm: must be one of production, canary, got 'blue'"),
    ({"latency_ms": -1.0}, "latency_ms: must be a finite number >= 0, got -1.0"),
    ({"latency_ms": math.inf}, "latency_ms: must be a finite number >= 0, got inf"),
    ({"latency_ms": "12"}, "latency_ms: must be a finite number >= 0, got '12'"),
    ({"prompt_tokens": -3}, "prompt_tokens: must be an integer >= 0, got -3"),
    ({"completion_tokens": 2.5}, "completion_tokens: must be an integer >= 0, got 2.5"),
    ({"outcome": "fine"}, "outcome: must be one of success, error, got 'fine'"),
])
def test_a_bad_field_is_refused_by_name(fields, error):
    base = {"request_id": "r-1", "model_version": "7", "arm": "canary", "served_at": T0}
    with pytest.raises(ValueError, match=error.replace("(", r"\(")):
        ServedRequest(**(base | fields))


def test_a_correction_naming_a_served_request_becomes_a_case_of_the_version_that_served_it(store, wav_factory,
                                                                                           tmp_path, clock):
    """Ingest (JSONL): the row takes the request's version and judges the request an error, linked to the case;
    a request never served, or a row naming another version, is refused by field; the other rows are kept."""
    store.record_served(served("req-7", version="7"))
    store.record_served(served("req-8", version="8"))
    rows = [{"audio_path": str(wav_factory(f"u{i}.wav")), "prediction": "wrong words", "correction": f"right {i}",
             **extra} for i, extra in enumerate([{"request_id": "req-7"}, {"request_id": "nope"},
                                                  {"request_id": "req-8", "model_version": "6"}, {}])]
    batch = tmp_path / "corrections.jsonl"
    batch.write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = store.ingest_jsonl(batch)
    assert len(report.accepted) == 2
    assert [(r.line, r.field) for r in report.rejected] == [(2, "request_id"), (3, "model_version")]
    assert "'nope' was not served by this model" in report.rejected[0].reason
    assert report.rejected[1].reason == "'6', but request 'req-8' was served by version 8"
    case = store.get_case(report.accepted[0])
    assert case.model_version == "7"
    judged = store.served_request("req-7")
    assert (judged.outcome, judged.case_id, judged.judged_at) == ("error", case.id, clock())
    assert store.served_request("req-8").outcome is None  # its row was refused: not judged
    again = store.ingest_jsonl(batch)  # the same batch again: duplicates, nothing judged twice
    assert again.accepted == () and store.served_request("req-7").case_id == case.id


def test_a_chat_correction_through_the_python_api_judges_its_request(tmp_path):
    from tuneloop.store import ErrorCaseStore

    with ErrorCaseStore(f"sqlite:///{tmp_path / 'chat.db'}", model="support", task="chat") as store:
        store.record_served(served("chat-1", version="4"))
        case_id = store.store_case({"messages": [{"role": "user", "content": "what is a nickname?"}],
                                    "output": "a kind of nick", "ideal_response": "a familiar name for someone",
                                    "request_id": "chat-1"})
        assert store.get_case(case_id).model_version == "4"
        assert (store.served_request("chat-1").outcome, store.served_request("chat-1").case_id) == ("error", case_id)
        with pytest.raises(ValueError, match="request_id: 'chat-2' was not served by this model"):
            store.store_case({"messages": [{"role": "user", "content": "hi"}], "output": "x", "ideal_response": "y",
                              "request_id": "chat-2"})
