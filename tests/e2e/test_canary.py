"""A canary earns production on live traffic, or goes back: `airflow dags test finetune_weekly` with the canary
strategy while simulated users call `tuneloop serve` on loopback.

One installation (the speech model) serves all three runs: `tuneloop serve` (the real CLI, a subprocess) answers
every request through the traffic split it reads from the registry, and records it in the store; the simulated
users send real recordings with sticky keys and judge each answer by a fixed pattern per arm (the error rate the
scenario gives the canary and production), so each run's online test sees a known difference:

- equal error rates: no difference shown, production kept at the deadline (cases stay for the next run);
- the canary worse: rolled back as soon as the sequential test says so, long before the deadline;
- the canary better: promoted once both arms have min_samples judged requests; production moves.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from tests.e2e.conftest import new_installation
from tests.e2e.scenario import REPO, Scenario, permissive_gate, write_cases
from tuneloop_demo.live_traffic import Users, call, recordings, serving

pytestmark = pytest.mark.slow

MIN_SAMPLES = 30
# the equal run's deadline: long enough for both arms to reach MIN_SAMPLES on a loaded machine (25 s gave one arm
# 29 judged answers once, with three test workers on two cores)
EQUAL_DEADLINE_S = 40
# error patterns per arm: the i-th judged request of an arm is wrong when i % 10 is in the set
TEN_PERCENT, THIRTY_PERCENT, SEVENTY_PERCENT = {0}, {0, 4, 7}, {0, 1, 3, 4, 6, 7, 9}


@pytest.fixture(scope="module")
def installation(tmp_path_factory, airflow_env, migrated_airflow_db, migrated_mlflow_db, damaged_model, speech):
    root = tmp_path_factory.mktemp("canary")
    scenario = new_installation(root, airflow_env, migrated_airflow_db, migrated_mlflow_db)
    permissive_gate(scenario)
    scenario.env |= {"TUNELOOP__DEPLOYMENT__DEPLOYMENT_STRATEGY": "canary",
                     "TUNELOOP__DEPLOYMENT__ROLLBACK_ON_ERROR_THRESHOLD": "100",
                     "TUNELOOP__DEPLOYMENT__CANARY__TRAFFIC_PERCENT": "50",
                     "TUNELOOP__DEPLOYMENT__CANARY__MIN_SAMPLES": str(MIN_SAMPLES),
                     "TUNELOOP__DEPLOYMENT__CANARY__MIXING_SD": "0.2",
                     "TUNELOOP__DEPLOYMENT__CANARY__POLL_SECONDS": "1"}
    scenario.tuneloop("bootstrap", str(damaged_model), "--reason", "e2e baseline")
    half = len(speech["jobs"]) // 2
    batches = [{**speech, "jobs": speech["jobs"][:half], "texts": speech["texts"][:half]},
               {**speech, "jobs": speech["jobs"][half:], "texts": speech["texts"][half:]}]
    scenario.tuneloop("ingest", str(write_cases(root / "cases-1.jsonl", batches[0])))
    scenario.batches = batches  # type: ignore[attr-defined]
    yield scenario


@pytest.fixture(scope="module")
def server(installation: Scenario):
    """`tuneloop serve` on a free loopback port, reading the aliases again every half second."""
    with serving(installation.env, REPO, installation.root / "serve.log") as base:
        yield base


def by_pattern(patterns: dict[str, set[int]]):
    """Users who find the i-th answer of an arm wrong when i % 10 is in that arm's pattern."""
    return lambda arm, answer, expected, judged: judged % 10 in patterns[arm]


def canary_run(installation: Scenario, server: str, patterns: dict[str, set[int]], reason: str,
               max_hours: float) -> tuple[dict[str, Any], Users]:
    before = set((installation.root / "tuneloop" / "storage" / "runs").glob("*"))
    batch = installation.batches[0]  # type: ignore[attr-defined]
    requests = recordings([(job.out_path, text) for job, text in zip(batch["jobs"][:8], batch["texts"])])
    users = Users(server, requests, by_pattern(patterns))
    users.start()
    installation.env["TUNELOOP__DEPLOYMENT__CANARY__MAX_DURATION_HOURS"] = str(max_hours)
    try:
        installation.airflow("dags", "test", "finetune_weekly", "-c",
                             json.dumps({"reason": reason, "force_trigger": True}))
    finally:
        users.stop.set()
        users.join(timeout=60)
    assert not users.errors, users.errors
    [folder] = set((installation.root / "tuneloop" / "storage" / "runs").glob("*")) - before
    return json.loads((folder / "decision.json").read_text()), users


def _registry(installation: Scenario):
    from tuneloop.registry import ModelRegistry

    config = installation.config()
    return ModelRegistry(config.tracking_uri, config.registry_uri, config.mlflow.model_name)


def test_an_equal_canary_keeps_production_at_the_deadline(installation, server):
    started = time.monotonic()
    decision, users = canary_run(installation, server, {"production": THIRTY_PERCENT, "canary": THIRTY_PERCENT},
                                 "e2e canary: equal", max_hours=EQUAL_DEADLINE_S / 3600)
    online = decision["online_test"]
    assert (decision["status"], online["action"]) == ("insufficient_evidence", "keep_production"), online
    assert "deadline reached: no difference shown" in online["reason"]
    assert min(users.judged.values()) >= MIN_SAMPLES  # it had the samples; the arms did not differ
    assert users.versions == {"production": {"1"}, "canary": {"2"}}
    assert decision["rollout"]["details"]["canary_end"] == "not_promoted"
    registry = _registry(installation)
    assert registry.production_version() == "1" and "canary" not in registry.aliases()
    assert time.monotonic() - started > EQUAL_DEADLINE_S
    # the cases stay for the next run: a canary that proved nothing consumes none
    from tuneloop.store import ErrorCaseStore

    assert ErrorCaseStore.from_config(installation.config()).statistics().to_dict()["by_state"]["consumed"] == 0


def test_a_worse_canary_is_rolled_back_early(installation, server):
    decision, users = canary_run(installation, server, {"production": TEN_PERCENT, "canary": SEVENTY_PERCENT},
                                 "e2e canary: worse", max_hours=0.5)
    online = decision["online_test"]
    assert (decision["status"], online["action"]) == ("rolled_back", "rollback"), online
    assert users.judged["canary"] < 200 and online["look"]["always_valid_p"] <= 0.05
    registry = _registry(installation)
    assert registry.production_version() == "1" and "canary" not in registry.aliases()
    tags = registry.get_version("3").tags  # the run's report sets decision to the run's status
    assert tags["decision"] == "rolled_back" and tags["canary_end_reason"].startswith("online test: the canary gets")
    history = [e.action for e in _store(installation).deployment_history(installation.config().mlflow.model_name)]
    assert history[:2] == ["canary_end", "canary_start"]


def test_a_better_canary_is_promoted(installation, server):
    batch = installation.batches[1]  # type: ignore[attr-defined]
    installation.tuneloop("ingest", str(write_cases(installation.root / "cases-2.jsonl", batch)))
    decision, users = canary_run(installation, server, {"production": SEVENTY_PERCENT, "canary": TEN_PERCENT},
                                 "e2e canary: better", max_hours=0.5)
    online = decision["online_test"]
    assert (decision["status"], online["action"]) == ("deployed", "promote"), online
    assert min(online["look"]["production"]["requests"], online["look"]["canary"]["requests"]) >= MIN_SAMPLES
    assert online["winner"]["winner"] == "canary" and set(online["winner"]["weights"]) == {"accuracy", "latency"}
    registry = _registry(installation)
    assert (registry.production_version(), registry.previous_version()) == ("4", "1")
    assert "canary" not in registry.aliases()
    assert decision["rollout"]["action"] == "deploy" and decision["rollout"]["details"]["canary_end"] == "promoted"
    status = json.loads(installation.tuneloop("status", "--json").stdout)
    assert status["model"]["production_version"] == "4"
    deadline = time.monotonic() + 30  # the server follows the promotion without a restart
    while call(server, "GET", "/healthz")["production"] != "4":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert call(server, "POST", "/predict", {"input": {"audio_base64": base64.b64encode(
        batch["jobs"][0].out_path.read_bytes()).decode()}, "key": "after"})["model_version"] == "4"


def _store(installation: Scenario):
    from tuneloop.store import ErrorCaseStore

    return ErrorCaseStore.from_config(installation.config())
