"""A chat model beside a speech model in one installation: `airflow dags test` of its weekly DAG to rejected and
to deployed (as a canary that live users promote), then of its rollback DAG, all seen through `tuneloop status`.

The story, on a tiny chat model trained for real on CPU: production (v1) answers four kinds of support question
with fixed replies. The policy for returns and for shipping changes; people correct production's replies to those
questions (ideal responses) and rate its replies to the other two as good. A run that trains on shuffled replies
(``label_noise: shuffle``) is rejected: it breaks answers production got right and is no better. A later
run, started by its trigger conditions alone, trains on the corrections, answers held-out wordings by the new
policy, passes the text gate (exact match, McNemar) and becomes a canary on half the traffic of `tuneloop serve`:
users ask questions and correct every reply that is not the current policy's, the online test finds the
canary answers fewer of them wrong, and promotes it (v3). The rollback DAG puts v1 back, and serving answers by
the old policy again. The speech model (``asr``) keeps its own cases, aliases and history.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import new_installation
from tests.e2e.scenario import REPO, Scenario, write_cases
from tuneloop_demo.live_traffic import Users, serving

pytestmark = pytest.mark.slow

# Four kinds of support question, each asked in many wordings; the item asked about does not change the answer.
TEMPLATES = {
    "returns": ["how do I return {}", "can I send back {}", "what is the return policy for {}", "I want to return {}"],
    "shipping": ["how long does shipping take for {}", "when will {} be shipped", "what are the shipping times for {}",
                 "how fast do you ship {}"],
    "password": ["I forgot my password, I ordered {}", "how do I reset my password to buy {}",
                 "my password does not work for {}", "change my password, I need {}"],
    "hours": ["when is support open to ask about {}", "what are your support hours for {}",
              "can I call support about {} today", "is support open on sunday about {}"],
}
ITEMS = ["my shoes", "a jacket", "the blue lamp", "two chairs", "a red scarf", "the green mug"]
OLD_REPLIES = {
    "returns": "Returns are accepted within 30 days with the original receipt.",
    "shipping": "Standard shipping takes 5 to 7 business days.",
    "password": "Reset your password with the link on the sign-in page.",
    "hours": "Support is open every day from 8 am to 8 pm.",
}
NEW_REPLIES = {  # the policy changed for these two kinds only
    "returns": "Returns are free for 60 days: print the label from your order page.",
    "shipping": "Orders ship the same day and arrive within 2 business days.",
}
# Cases arrive in this order, again and again: two corrected cases for every case rated good.
ARRIVAL = ["returns", "shipping", "password", "returns", "shipping", "hours"]
FIRST_BATCH_ROUNDS, SECOND_BATCH_ROUNDS = 4, 8  # 24 and 48 cases

CHAT_MODEL_SIZE = ["--vocab-size", "400", "--hidden-size", "64", "--num-hidden-layers", "2", "--num-attention-heads",
                   "4", "--intermediate-size", "128", "--max-position-embeddings", "128"]
# The support model's own settings, merged over the tiny-run ones every model shares (TINY_RUN_ENV).
SUPPORT = {
    "name": "support", "task": "chat", "model_name": "support-assistant",
    "trigger": {"min_error_cases": 20, "min_corrected_cases": 10, "cooldown_hours": 0},
    "dataset": {"eval_fraction": 0.35, "min_eval_cases": 5},
    # the defaults (3 epochs of LoRA at 3e-5) suit a real LLM; a tiny one learns a new reply in 50 quick epochs
    "training": {"use_lora": False, "epochs": 50, "batch_size": 8, "learning_rate": 0.003},
    # one newly broken held-out answer in ten is tolerated (default: one in twenty): a 130k-parameter model is no
    # precise instrument; the measured good runs broke none, the shuffled ones three of eight
    "validation": {"min_eval_size": 8, "max_newly_broken_rate": 0.1},
    # the canary of the deployed run: half the traffic, decided on a few dozen judged replies per arm
    "deployment": {"canary": {"traffic_percent": 50, "min_samples": 20, "mixing_sd": 0.3, "poll_seconds": 1,
                              "max_duration_hours": 0.1}},
}
ASR = {"name": "asr", "task": "speech_to_text", "model_name": "speech-to-text"}


def wordings(kind: str) -> list[str]:
    return [template.format(item) for template, item in itertools.product(TEMPLATES[kind], ITEMS)]


def _arrivals(rounds: int, start: dict[str, int]) -> list[tuple[str, str]]:
    """(kind, question) in arrival order, each question asked once, continuing from ``start`` per kind."""
    order = []
    for kind in ARRIVAL * rounds:
        order.append((kind, wordings(kind)[start[kind]]))
        start[kind] += 1
    return order


FIRST_BATCH = _arrivals(FIRST_BATCH_ROUNDS, dict.fromkeys(TEMPLATES, 0))
SECOND_BATCH = _arrivals(SECOND_BATCH_ROUNDS, {kind: sum(k == kind for k, _ in FIRST_BATCH) for kind in TEMPLATES})


def chat_cases(path: Path, batch: list[tuple[str, str]], days_ago: float) -> Path:
    """Cases as the support app would send them: production's reply, corrected when the policy changed (an ideal
    response), rated good when it still holds."""
    start = datetime.now(timezone.utc) - timedelta(days=days_ago)
    rows = []
    for i, (kind, question) in enumerate(batch):
        changed = kind in NEW_REPLIES
        rows.append({"prompt": question, "output": OLD_REPLIES[kind], "ideal": NEW_REPLIES[kind] if changed else None,
                     "rating": 1 if changed else 5, "domain": "support", "task_type": kind, "model_version": "1",
                     "created_at": (start + timedelta(minutes=i)).isoformat()})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _trainer(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "tuneloop_trainer", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="session")
def old_policy_model(tmp_path_factory) -> Path:
    """Production before the policy change: a tiny causal LM (``init-model --task chat``) trained by the real
    trainer to answer every wording of every kind with the old reply."""
    root = tmp_path_factory.mktemp("chat")
    questions = [(kind, q) for kind in TEMPLATES for q in wordings(kind)]
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join([q for _, q in questions] + list(OLD_REPLIES.values()) + list(NEW_REPLIES.values())))
    _trainer("init-model", "--task", "chat", "--corpus", str(corpus), "--output", str(root / "base"), *CHAT_MODEL_SIZE)
    dataset = root / "old_policy"
    dataset.mkdir()
    rows = "".join(json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": q},
                                                            {"role": "assistant", "content": OLD_REPLIES[kind]}]})
                   + "\n" for i, (kind, q) in enumerate(questions))
    for split in ("train", "eval"):
        (dataset / f"{split}.jsonl").write_text(rows)
    (dataset / "manifest.json").write_text(json.dumps({"id": "old-policy", "task": "chat"}))
    spec = root / "spec.json"
    spec.write_text(json.dumps({
        "task": "chat", "base_model_uri": str(root / "base"), "dataset_uri": str(dataset),
        "output_uri": str(root / "trained"), "max_steps": 300, "batch_size": 8, "learning_rate": 0.01,
        "warmup_ratio": 0.0, "max_length": 128, "lora": {"enabled": False}, "checkpoint_every_steps": 300}))
    _trainer("train", "--spec", str(spec))
    return root / "trained" / "model"


# --- reading the installation as an operator would ------------------------------------------------------------


def _status(scenario: Scenario) -> dict[str, Any]:
    return json.loads(scenario.tuneloop("status", "--json").stdout)["models"]


def _history(scenario: Scenario, model: str) -> list[dict[str, Any]]:
    return json.loads(scenario.tuneloop("history", "--model", model, "--json").stdout)


def _registry(scenario: Scenario, model: str):
    from tuneloop.registry import ModelRegistry

    config = scenario.config().for_model(model)
    return ModelRegistry(config.tracking_uri, config.registry_uri, config.mlflow.model_name)


def _snapshot(scenario: Scenario) -> dict[str, Any]:
    """What an operator sees now: both models' status, histories and aliases."""
    return {"status": _status(scenario),
            "history": {model: _history(scenario, model) for model in ("asr", "support")},
            "aliases": {model: _registry(scenario, model).aliases() for model in ("asr", "support")}}


def _weekly(scenario: Scenario, conf: dict[str, Any]) -> dict[str, Any]:
    """``airflow dags test finetune_weekly_support``; the run's decision record, its training spec and a snapshot."""
    runs = scenario.root / "tuneloop" / "storage" / "runs" / "support"
    before = set(runs.glob("*/decision.json"))
    scenario.airflow("dags", "test", "finetune_weekly_support", "-c", json.dumps(conf))
    records = set(runs.glob("*/decision.json")) - before
    assert len(records) == 1, records
    record = records.pop()
    decision = json.loads(record.read_text())
    version = decision["candidate_version"]  # None when the run failed before registering: its test says why
    return {"decision": decision, "spec": json.loads((record.parent / "training" / "spec.json").read_text()),
            "candidate_tags": _registry(scenario, "support").get_version(version).tags if version else {},
            **_snapshot(scenario)}


def _replies(scenario: Scenario, alias_or_version: str, questions: list[str]) -> list[str]:
    """What serving gets from ``models:/support-assistant@<alias>`` (the registered pyfunc, loaded generically)."""
    model = _registry(scenario, "support").load_pyfunc(alias_or_version)
    return list(model.predict([[{"role": "user", "content": q}] for q in questions]))


# --- the scenario, step by step (each step's fixture runs the previous ones first) --------------------------------


@pytest.fixture(scope="module")
def installation(tmp_path_factory, airflow_env, migrated_airflow_db, migrated_mlflow_db, speech,
                 old_policy_model) -> dict[str, Any]:
    """Two models configured; both bootstrapped; the speech model's cases, then the chat model's first cases."""
    root = tmp_path_factory.mktemp("two_models")
    config = root / "tuneloop.yaml"
    config.write_text(yaml.safe_dump({"models": [ASR, SUPPORT]}, sort_keys=False))
    scenario = new_installation(root, airflow_env, migrated_airflow_db, migrated_mlflow_db, TUNELOOP_CONFIG=str(config))
    scenario.tuneloop("bootstrap", "--model", "asr", str(speech["base_model"]), "--reason", "e2e speech baseline")
    scenario.tuneloop("bootstrap", "--model", "support", str(old_policy_model), "--reason", "e2e chat baseline")
    scenario.tuneloop("ingest", "--model", "asr", str(write_cases(root / "speech_cases.jsonl", speech)))
    before = _status(scenario)
    scenario.tuneloop("ingest", "--model", "support", str(chat_cases(root / "chat_cases_1.jsonl", FIRST_BATCH, 3)))
    return {"scenario": scenario, "before_chat_cases": before, "after_chat_cases": _status(scenario)}


@pytest.fixture(scope="module")
def rejected(installation) -> dict[str, Any]:
    """A forced run that trains on shuffled replies."""
    return _weekly(installation["scenario"], {"force_trigger": True, "label_noise": "shuffle",
                                              "reason": "e2e chat: deliberately bad candidate"})


@pytest.fixture(scope="module")
def deployed(installation, rejected) -> dict[str, Any]:
    """More cases arrive; a run started without forcing (its trigger conditions hold) trains on them, and its
    candidate goes live as a canary: users of `tuneloop serve` ask questions and correct every reply that
    is not the current policy's."""
    scenario = installation["scenario"]
    scenario.tuneloop("ingest", "--model", "support",
                      str(chat_cases(scenario.root / "chat_cases_2.jsonl", SECOND_BATCH, 1)))
    current = {**OLD_REPLIES, **NEW_REPLIES}
    asked = [([{"role": "user", "content": q}], current[kind]) for kind, q in SECOND_BATCH[-12:]]
    with serving(scenario.env, REPO, scenario.root / "serve-support.log", model="support") as base:
        users = Users(base, asked, lambda arm, reply, expected, judged: reply != expected)
        users.start()
        try:
            result = _weekly(scenario, {"reason": "e2e chat: new returns and shipping policy",
                                        "deployment_strategy": "canary"})
        finally:
            users.stop.set()
            users.join(timeout=60)
    assert not users.errors, users.errors
    return {**result, "users": users}


@pytest.fixture(scope="module")
def rolled_back(installation, deployed) -> dict[str, Any]:
    scenario = installation["scenario"]
    scenario.airflow("dags", "test", "finetune_rollback_support", "-c",
                     json.dumps({"reason": "e2e chat: the new policy is withdrawn"}))
    return {**_snapshot(scenario), "status_text": scenario.tuneloop("status").stdout}


# --- the tests ----------------------------------------------------------------------------------------------------


def test_both_models_are_configured_and_ingest_only_into_their_own_store(installation):
    before, after = installation["before_chat_cases"], installation["after_chat_cases"]
    assert {name: model["model"]["name"] for name, model in after.items()} == {
        "asr": "speech-to-text", "support": "support-assistant"}
    assert after["asr"]["model"]["production_version"] == after["support"]["model"]["production_version"] == "1"
    assert before["support"]["cases"]["total_cases"] == 0
    assert after["support"]["cases"]["total_cases"] == len(FIRST_BATCH)
    assert after["support"]["cases"]["corrected_cases"] == sum(kind in NEW_REPLIES for kind, _ in FIRST_BATCH)
    assert after["asr"]["cases"] == before["asr"]["cases"] and after["asr"]["cases"]["total_cases"] == 48
    # bootstrap registered the chat model with the chat pyfunc: it replies to a conversation
    assert _replies(installation["scenario"], "1", ["how do I return my shoes"]) == [OLD_REPLIES["returns"]]


def test_a_candidate_trained_on_shuffled_replies_is_rejected(rejected):
    decision, status = rejected["decision"], rejected["status"]
    assert rejected["spec"]["task"] == "chat" and rejected["spec"]["label_noise"] == "shuffle"
    assert decision["status"] == "rejected" and decision["task"] == "chat", decision["status"]
    gate = decision["gate"]
    assert gate["metric"] == "exact_match" and gate["n"] >= SUPPORT["validation"]["min_eval_size"]
    assert gate["passed"] is False and gate["verdict"] == "fail", gate["reasons"]
    # production answered the still-valid kinds right and the shuffled candidate broke some of them, whatever it
    # got right by chance (a shuffled reply can be a new-policy one: its mean varies with the eval split, and was
    # once above production's, so "not better" is not asserted)
    assert gate["baseline_mean"] > 0 and gate["newly_broken"] >= 1
    assert decision["candidate_version"] == "2" and decision["production_before"] == "1"
    tags = rejected["candidate_tags"]
    assert (tags["decision"], tags["verdict"]) == ("rejected", "fail")
    assert tags["dataset_id"] == decision["dataset"]["dataset_id"]
    assert rejected["aliases"]["support"] == {"production": "1"}
    assert rejected["aliases"]["asr"] == {"production": "1"}
    event = rejected["history"]["support"][0]
    assert (event["action"], event["from_version"], event["to_version"]) == ("reject", "1", "1")
    assert status["support"]["model"]["production_version"] == "1"
    assert status["support"]["last_runs"][0]["status"] == "rejected"
    assert status["asr"]["last_runs"] == [] and [e["action"] for e in rejected["history"]["asr"]] == ["bootstrap"]


def test_corrections_are_learned_and_deployed(installation, rejected, deployed):
    decision, status = deployed["decision"], deployed["status"]
    assert deployed["spec"]["label_noise"] == "none" and deployed["spec"]["lora"]["enabled"] is False
    assert decision["status"] == "deployed", (decision["status"], decision["gate"].get("reasons"))
    # started by its trigger conditions (new cases, no cooldown), not forced
    trigger = decision["trigger"]
    assert trigger["should_trigger"] is True and trigger["metrics"]["forced"] is False
    assert trigger["reasons"][0] == "triggered: enough new error cases", trigger["reasons"]
    gate = decision["gate"]
    assert gate["passed"] is True and gate["verdict"] == "pass", gate["reasons"]
    assert gate["significance_test"] == "mcnemar" and gate["p_value"] < 0.05
    assert gate["newly_fixed"] >= 5 and gate["candidate_mean"] >= gate["baseline_mean"] + 0.25, gate
    counts = decision["dataset"]["counts"]
    assert counts["eval"] == gate["n"] and counts["train"] + counts["eval"] == (
        len(SECOND_BATCH) + rejected["decision"]["dataset"]["counts"]["eval"])  # the first run's eval cases stayed new
    check = decision["post_deploy_check"]  # replies through models:/support-assistant@canary, as served
    assert check["passed"] is True and check["served_score"] >= gate["baseline_mean"] + 0.25, check
    # live traffic: production (old policy) answered the new-policy questions wrong; the canary fewer of them
    online, users = decision["online_test"], deployed["users"]
    assert online["action"] == "promote" and online["look"]["difference"] < 0, online
    assert min(online["look"]["production"]["requests"], online["look"]["canary"]["requests"]) >= 20
    assert users.versions == {"production": {"1"}, "canary": {"3"}}
    assert users.wrong["canary"] / users.judged["canary"] < users.wrong["production"] / users.judged["production"]
    assert decision["candidate_version"] == "3" and decision["production_before"] == "1"
    assert deployed["aliases"]["support"] == {"production": "3", "previous": "1"}
    tags = deployed["candidate_tags"]
    assert (tags["decision"], tags["verdict"]) == ("deployed", "pass")
    assert tags["dataset_id"] == decision["dataset"]["dataset_id"]
    event, started = deployed["history"]["support"][:2]
    assert (event["action"], event["from_version"], event["to_version"]) == ("deploy", "1", "3")
    assert event["details"]["canary_end"] == "promoted" and started["action"] == "canary_start"
    assert status["support"]["model"]["production_version"] == "3"
    assert [r["status"] for r in status["support"]["last_runs"][:2]] == ["deployed", "rejected"]
    # the speech model beside it: its own aliases, history and untouched cases
    assert deployed["aliases"]["asr"] == {"production": "1"}
    assert status["asr"]["model"]["production_version"] == "1" and status["asr"]["last_runs"] == []
    assert status["asr"]["cases"] == installation["after_chat_cases"]["asr"]["cases"]


def test_rollback_dag_puts_the_previous_production_back(installation, deployed, rolled_back):
    history = rolled_back["history"]["support"]
    assert [e["action"] for e in history] == ["rollback", "deploy", "canary_start", "reject", "bootstrap"]
    assert (history[0]["from_version"], history[0]["to_version"]) == ("3", "1")
    assert history[0]["reason"] == "e2e chat: the new policy is withdrawn" and history[0]["actor"] == "dag_test"
    assert rolled_back["aliases"]["support"] == {"production": "1"}
    assert rolled_back["status"]["support"]["model"]["production_version"] == "1"
    # what a person reads: both models, each with its own production version
    text = rolled_back["status_text"]
    assert "== model asr (speech_to_text)" in text and "== model support (chat)" in text
    assert "model speech-to-text: production v1 (previous none)" in text
    assert "model support-assistant: production v1 (previous none)" in text
    assert rolled_back["aliases"]["asr"] == deployed["aliases"]["asr"] == {"production": "1"}
    assert [e["action"] for e in rolled_back["history"]["asr"]] == ["bootstrap"]
    # serving answers by the old policy again
    questions = [q for kind, q in SECOND_BATCH[-6:]]
    assert _replies(installation["scenario"], "production", questions) == [
        OLD_REPLIES[kind] for kind, _ in SECOND_BATCH[-6:]]
