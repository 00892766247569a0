"""The pairwise LLM judge against a loopback OpenAI-compatible stand-in, through the real ``openai`` client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tests.standins.openai_api import OpenAIStandIn, last_user_message, prefers_the_reference, section
from tuneloop.config import ConfigError, JudgeConfig, load_config
from tuneloop.judge import (
    JUDGE_SYSTEM_PROMPT,
    RAW_REPLY_KEPT,
    JudgeError,
    JudgeExample,
    client_settings,
    client_settings_from_connection,
    judge_pairs,
    parse_verdict,
    run_judge,
    sample_examples,
)

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
MODEL = "judge-model-1"


@pytest.fixture
def api() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn() as standin:
        yield standin


def _client(api: OpenAIStandIn, max_retries: int = 2) -> OpenAI:
    return OpenAI(api_key="test-key", base_url=api.base_url, max_retries=max_retries, timeout=5)


def _example(i: int, *, production: str, candidate: str, reference: str = "right") -> JudgeExample:
    return JudgeExample(id=f"ex-{i:03d}", reference=f"{reference} {i}", production=f"{production} {i}",
                        candidate=f"{candidate} {i}",
                        messages=({"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": f"question {i}?"}))


def _mixed() -> list[JudgeExample]:
    """10 the candidate gets right, 2 production gets right, 3 neither."""
    return ([_example(i, production="wrong", candidate="right") for i in range(10)]
            + [_example(i, production="right", candidate="wrong") for i in range(10, 12)]
            + [_example(i, production="wrong", candidate="also wrong") for i in range(12, 15)])


def test_a_consistent_preference_gives_wins_losses_and_ties(api):
    api.reply = prefers_the_reference
    examples = _mixed()

    result = judge_pairs(_client(api), examples, model=MODEL, alpha=0.05)

    assert (result.wins, result.losses, result.ties, result.inconsistent, result.unparseable) == (10, 2, 3, 0, 0)
    assert (result.n, result.n_available, result.model, result.endpoint) == (15, 15, MODEL, api.base_url + "/")
    assert result.win_rate == pytest.approx((10 + 3 / 2) / 15)
    assert result.p_value == pytest.approx(79 / 4096)  # P(X >= 10), X ~ Binomial(12, 1/2)
    assert result.significant
    assert [r.id for r in result.records] == [e.id for e in examples]
    assert [r.outcome for r in result.records] == ["win"] * 10 + ["loss"] * 2 + ["tie"] * 3
    assert result.records[0].to_dict() == {"id": "ex-000", "first": "candidate", "second": "candidate",
                                           "outcome": "win", "reason": "agreed"}
    assert {r.reason for r in result.records[12:]} == {"both_tie"}
    assert "won 10, lost 2 and tied 3" in result.summary()
    json.dumps(result.to_dict())


def test_each_pair_is_sent_twice_positions_swapped_with_the_reference_at_temperature_zero(api):
    api.reply = prefers_the_reference
    example = _example(7, production="wrong", candidate="right")

    judge_pairs(_client(api), [example], model=MODEL)

    assert len(api.requests) == 2
    orders = []
    for body in api.requests:
        assert body["model"] == MODEL and body["temperature"] == 0
        assert body["messages"][0] == {"role": "system", "content": JUDGE_SYSTEM_PROMPT}
        prompt = last_user_message(body)
        assert section(prompt, "Reference Answer") == "right 7"
        assert section(prompt, "Conversation") == "### System:\nBe brief.\n\n### User:\nquestion 7?"
        orders.append((section(prompt, "Assistant A's Reply"), section(prompt, "Assistant B's Reply")))
    assert sorted(orders) == sorted([("wrong 7", "right 7"), ("right 7", "wrong 7")])
    assert {h["authorization"] for h in api.headers} == {"Bearer test-key"}


def test_a_judge_that_always_says_a_wins_nothing(api):
    """Position bias: production wins in one order, the candidate in the other; every pair is a tie."""
    api.reply = lambda body: "Assistant A is better. [[A]]"

    result = judge_pairs(_client(api), _mixed(), model=MODEL)

    assert (result.wins, result.losses, result.ties, result.inconsistent) == (0, 0, 15, 15)
    assert result.p_value == 1.0 and not result.significant
    assert result.win_rate == 0.5
    assert {(r.first.winner, r.second.winner, r.reason) for r in result.records} == {
        ("production", "candidate", "inconsistent")}


def test_unparseable_verdicts_are_ties_recorded_with_the_reply_truncated(api):
    garbage = "Both replies have merit; I cannot decide. " * 50
    api.reply = lambda body: garbage

    result = judge_pairs(_client(api), _mixed()[:4], model=MODEL)

    assert (result.wins, result.losses, result.ties, result.unparseable, result.inconsistent) == (0, 0, 4, 4, 0)
    assert result.p_value == 1.0
    row = result.records[0].to_dict()
    assert (row["first"], row["second"], row["outcome"], row["reason"]) == ("unparseable", "unparseable", "tie",
                                                                            "unparseable")
    assert row["first_raw"] == garbage[:RAW_REPLY_KEPT] and len(row["first_raw"]) == RAW_REPLY_KEPT


@pytest.mark.parametrize(("reply", "verdict"), [
    ("[[A]]", "A"), ("reasons...\n[[B]]", "B"), ("Final verdict: [[C]].", "C"), ("[[A]] as said: [[A]]", "A"),
    ("[[A]] or maybe [[B]]", None), ("[A]", None), ("[[a]]", None), ("[[ A ]]", None), ("", None), (None, None),
])
def test_verdicts_are_parsed_strictly(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_transient_server_errors_are_retried_by_the_client(api):
    api.reply = prefers_the_reference
    api.fail_next(3, status=500)

    result = judge_pairs(_client(api, max_retries=3), _mixed()[:5], model=MODEL)

    assert result.wins == 5
    assert api.failures_served == 3 and len(api.requests) == 10 + 3


@pytest.mark.parametrize("status", [500, 401])
def test_a_permanent_failure_raises_naming_the_endpoint_and_the_model(api, status):
    api.fail_status = status

    with pytest.raises(JudgeError) as raised:
        judge_pairs(_client(api, max_retries=1), _mixed()[:3], model=MODEL)

    message = str(raised.value)
    assert MODEL in message and api.base_url in message and "after the client's retries" in message
    assert str(status) in message


def test_an_unreachable_endpoint_raises(api):
    client = _client(api, max_retries=0)
    api.close()
    with pytest.raises(JudgeError, match="APIConnectionError"):
        judge_pairs(client, _mixed()[:1], model=MODEL)


def test_the_sample_is_seeded_bounded_and_independent_of_the_input_order(api):
    api.reply = prefers_the_reference
    examples = [_example(i, production="wrong", candidate="right") for i in range(50)]

    first = sample_examples(examples, 10, seed=3)
    assert len(first) == 10 and [e.id for e in first] == sorted(e.id for e in first)  # in the given order
    assert {e.id for e in sample_examples(examples[::-1], 10, seed=3)} == {e.id for e in first}
    assert {e.id for e in sample_examples(examples, 10, seed=4)} != {e.id for e in first}
    assert sample_examples(examples[:5], 10, seed=3) == examples[:5]
    with pytest.raises(ValueError, match="repeated: ex-000"):
        sample_examples([examples[0], examples[0]], 10, seed=0)

    result = judge_pairs(_client(api), examples, model=MODEL, max_examples=10, seed=3)
    assert (result.n, result.n_available, result.max_examples, result.seed) == (10, 50, 10, 3)
    assert [r.id for r in result.records] == [e.id for e in first]
    assert len(api.requests) == 20
    assert "a seeded sample of 50" in result.summary()


@pytest.mark.parametrize(("host", "password", "extra", "base_url", "api_key", "forwarded"), [
    ("http://judge:8000/v1", "key-in-password", {}, "http://judge:8000/v1", "key-in-password", {}),
    ("http://ignored/v1", "ignored", {"openai_client_kwargs": {"base_url": "http://extra/v1", "api_key": "extra-key"}},
     "http://extra/v1", "extra-key", {}),
    (None, "sk-password", {"openai_client_kwargs": {"organization": "org-1", "default_headers": {"x-a": "1"}}},
     None, "sk-password", {"organization": "org-1", "default_headers": {"x-a": "1"}}),
    ("", None, {"auth_type": "api_key"}, None, None, {}),
])
def test_the_connection_maps_like_the_openai_provider(host, password, extra, base_url, api_key, forwarded):
    settings = client_settings_from_connection(host=host, password=password, extra=extra)
    assert (settings.base_url, settings.api_key, dict(settings.client_kwargs)) == (base_url, api_key, forwarded)
    assert api_key is None or api_key not in repr(settings)  # the key stays out of logs


def test_workload_identity_connections_are_refused_by_name():
    with pytest.raises(JudgeError, match="auth_type 'workload_identity' is not supported"):
        client_settings_from_connection(host=None, password=None, extra={"auth_type": "workload_identity"})


def test_the_configured_judge_reads_its_airflow_connection(api, monkeypatch, airflow_env):
    api.reply = prefers_the_reference
    monkeypatch.setenv("AIRFLOW_CONN_TUNELOOP_JUDGE_TEST", json.dumps(
        {"conn_type": "openai", "host": api.base_url, "password": "conn-secret-key"}))
    judge = JudgeConfig(enabled=True, model=MODEL, conn_id="tuneloop_judge_test", max_retries=0,
                        timeout_seconds=5)

    result = run_judge(judge, _mixed()[:3], alpha=0.05)

    assert result.wins == 3
    assert {h["authorization"] for h in api.headers} == {"Bearer conn-secret-key"}


def test_without_a_connection_the_environment_names_the_endpoint(airflow_env):
    env = {"OPENAI_BASE_URL": "http://local:8000/v1", "OPENAI_API_KEY": "env-key"}
    settings = client_settings("tuneloop_judge_undefined", env=env)
    assert (settings.base_url, settings.api_key) == ("http://local:8000/v1", "env-key")
    with pytest.raises(JudgeError, match="no API key.*OPENAI_API_KEY"):
        client_settings("tuneloop_judge_undefined", env={})


def test_judge_config_requires_a_model_when_enabled(tmp_path):
    assert JudgeConfig().enabled is False and JudgeConfig().model is None
    env = {"TUNELOOP_HOME": str(tmp_path), "TUNELOOP__VALIDATION__TEXT__JUDGE__ENABLED": "true"}
    with pytest.raises(ConfigError, match=r"validation\.text\.judge\.model: required when the judge is enabled"):
        load_config(env=env)
    judge = load_config(env={**env, "TUNELOOP__VALIDATION__TEXT__JUDGE__MODEL": "gpt-4.1"}).validation.text.judge
    assert (judge.model, judge.max_examples, judge.temperature, judge.gating, judge.conn_id) == (
        "gpt-4.1", 200, 0.0, True, "openai_default")


def test_the_judge_module_imports_no_airflow():
    code = "import sys, tuneloop.judge; print(sorted({m.split('.')[0] for m in sys.modules} & {'airflow', 'openai'}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                            env={**os.environ, "PYTHONPATH": str(PLUGINS)})
    assert result.stdout.strip() == "[]"
