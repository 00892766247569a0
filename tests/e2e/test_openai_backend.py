"""`airflow dags test finetune_weekly` with ``training.backend: openai``: the real ``openai`` client and the
OpenAI provider's connection against a stand-in OpenAI API on loopback (tests/standins/openai_api.py), which
speaks the files / fine-tuning jobs / models / chat completions protocol.

The support story of test_chat.py: production (v1, ``gpt-4.1-mini`` through the API) answers four kinds of
question with the old replies; the returns and shipping policy changed and people corrected those replies.
The stand-in plays OpenAI's part in what a fine-tuned model knows: a fine-tuned model answers each kind of
question with the reply most often given to it in the training file its job was created with (so what tuneloop
uploaded is what the candidate learns); the base model answers the old replies. The runs share one
installation, in order: a run over its budget, refused before anything is uploaded; a run whose worker is killed
while it waits (its retry re-attaches: one job), and through it the deployed candidate, with its costs and ROI; a
run over budget that a person approves, which goes on to a job that OpenAI fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from openai import OpenAI

from tests.e2e.conftest import new_installation
from tests.e2e.scenario import REPO, Scenario
from tests.e2e.test_chat import NEW_REPLIES, OLD_REPLIES, SECOND_BATCH, TEMPLATES, chat_cases
from tests.standins.openai_api import OpenAIStandIn, last_user_message

pytestmark = pytest.mark.slow

BASE = "gpt-4.1-mini-2025-04-14"
KEY = "sk-e2e-" + "k3y" * 8  # searched for afterwards in every file the run wrote
SUPPORT = {
    "task": "chat", "mlflow": {"model_name": "support-assistant"},
    "trigger": {"min_error_cases": 20, "min_corrected_cases": 10, "cooldown_hours": 0},
    "dataset": {"eval_fraction": 0.35, "min_eval_cases": 5},
    "training": {"backend": "openai", "openai": {"poll_seconds": 0.2, "max_retries": 2}},
    "validation": {"min_eval_size": 8, "max_newly_broken_rate": 0.1},
    "costs": {"prices": {BASE: {"training_per_1m_tokens": 5.0, "input_per_1m_tokens": 0.4,
                                "output_per_1m_tokens": 1.6},
                         f"ft:{BASE}": {"input_per_1m_tokens": 0.8, "output_per_1m_tokens": 3.2}},
              "expected_requests_per_month": 10_000},
}
OVER_BUDGET = {"TUNELOOP__COSTS__MAX_RUN_USD": "0.0001"}


def kind_of(question: str) -> str:
    return next(kind for kind, templates in TEMPLATES.items()
                if any(question.startswith(t.split("{}")[0]) for t in templates))


class SupportWorld:
    """The stand-in's answers: the base model's old replies; a fine-tuned model's from its training file."""

    def __init__(self, api: OpenAIStandIn) -> None:
        self.api = api

    def __call__(self, body: dict[str, Any]) -> str:
        kind = kind_of(last_user_message(body))
        learned = self.learned(body["model"]) if body["model"].startswith("ft:") else {}
        return learned.get(kind, OLD_REPLIES[kind])

    def learned(self, model: str) -> dict[str, str]:
        job = next(j for j in self.api.jobs if j["fine_tuned_model"] == model)
        content = next(c for f, c in self.api.uploads if f["id"] == job["training_file"])
        replies: dict[str, Counter] = {}
        for line in content.decode().splitlines():
            messages = json.loads(line)["messages"]
            user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
            replies.setdefault(kind_of(user), Counter())[messages[-1]["content"]] += 1
        return {kind: counts.most_common(1)[0][0] for kind, counts in replies.items()}


@pytest.fixture(scope="module")
def api():
    with OpenAIStandIn(api_key=KEY, validating_s=0.3, queued_s=0.3, running_s=2.0) as standin:
        standin.reply = SupportWorld(standin)
        yield standin


@pytest.fixture(scope="module")
def installation(tmp_path_factory, airflow_env, migrated_airflow_db, migrated_mlflow_db, api) -> Scenario:
    root = tmp_path_factory.mktemp("openai_backend")
    config = root / "tuneloop.yaml"
    config.write_text(yaml.safe_dump(SUPPORT, sort_keys=False))
    connection = json.dumps({"conn_type": "openai", "password": KEY, "host": api.base_url})
    scenario = new_installation(root, airflow_env, migrated_airflow_db, migrated_mlflow_db,
                                TUNELOOP_CONFIG=str(config), AIRFLOW_CONN_OPENAI_DEFAULT=connection)
    scenario.tuneloop("bootstrap", "--openai-model", BASE, "--reason", "e2e: the API's base model")
    scenario.tuneloop("ingest", str(chat_cases(root / "cases.jsonl", SECOND_BATCH, 1)))
    return scenario


def _runs(scenario: Scenario) -> Path:
    return scenario.root / "tuneloop" / "storage" / "runs"


def _decision(scenario: Scenario, run_folder: Path) -> dict[str, Any]:
    return json.loads((run_folder / "decision.json").read_text())


def _weekly(scenario: Scenario, conf: dict[str, Any]) -> tuple[Path, str]:
    """The run's folder and what `airflow dags test` printed."""
    before = set(_runs(scenario).glob("*")) if _runs(scenario).exists() else set()
    result = scenario.airflow("dags", "test", "finetune_weekly", "-c", json.dumps(conf), check=False)
    new = set(_runs(scenario).glob("*")) - before
    assert len(new) == 1, new
    return new.pop(), result.stdout + result.stderr


@pytest.fixture(scope="module")
def refused(installation, api) -> dict[str, Any]:
    """Over costs.max_run_usd with costs.over_budget: refuse: the run ends before anything is uploaded."""
    over = Scenario(installation.root, {**installation.env, **OVER_BUDGET, "TUNELOOP__COSTS__OVER_BUDGET": "refuse"})
    uploads, jobs = len(api.uploads), api.jobs_created
    folder, _ = _weekly(over, {"force_trigger": True, "reason": "e2e openai: over budget"})
    return {"folder": folder, "decision": _decision(installation, folder), "uploads": len(api.uploads) - uploads,
            "jobs": api.jobs_created - jobs}


@pytest.fixture(scope="module")
def deployed(installation, api, refused) -> dict[str, Any]:
    """A run whose worker is killed (SIGKILL) while its job runs; the same run again re-attaches to that job,
    which succeeds; the candidate is deployed."""
    conf = json.dumps({"force_trigger": True, "reason": "e2e openai: new returns and shipping policy"})
    command = [sys.executable, "-m", "tests.e2e.dag_test_run", "finetune_weekly", "2026-12-06T12:00:00+00:00", conf]
    jobs_before, uploads_before = api.jobs_created, len(api.uploads)
    api.hold_running = True
    with (installation.root / "killed-worker.log").open("w") as log:
        worker = subprocess.Popen(command, env=installation.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            deadline = time.monotonic() + 600
            while not any(job["status"] == "running" for job in api.jobs[jobs_before:]):
                assert worker.poll() is None, (installation.root / "killed-worker.log").read_text()[-4000:]
                assert time.monotonic() < deadline, "the job never started running"
                time.sleep(0.2)
            time.sleep(1.0)  # the trigger polls at least once
        finally:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    killed = {"jobs": api.jobs_created - jobs_before, "uploads": len(api.uploads) - uploads_before,
              "status": api.jobs[-1]["status"]}
    api.hold_running = False
    earlier = {refused["folder"]}
    folders = set(_runs(installation).glob("*")) - earlier
    assert len(folders) == 1, folders  # the killed run's folder, with its job record
    installation.run(*command, check=False)  # the same DAG run again: the killed worker's retry
    assert set(_runs(installation).glob("*")) - earlier == folders  # the same run, the same folder
    folder = folders.pop()
    return {"folder": folder, "decision": _decision(installation, folder), "killed": killed,
            "jobs": api.jobs_created - jobs_before, "uploads": len(api.uploads) - uploads_before}


@pytest.fixture(scope="module")
def approved(installation, api, deployed) -> dict[str, Any]:
    """Over budget again, and a person approves in Airflow (Required actions): the run goes on to start its job,
    which OpenAI fails while it runs (the failed-job case: each DAG run here costs half a minute of CI)."""
    over = Scenario(installation.root, {**installation.env, **OVER_BUDGET})
    jobs = api.jobs_created
    api.fail_running = ("server_error", "The job failed due to an internal error.")
    try:
        seen = over.dags_test_answering({"force_trigger": True, "reason": "e2e openai: approved over budget"},
                                        {"approve_budget": "Approve"})
    finally:
        api.fail_running = None
    folder = max(_runs(installation).glob("*"), key=lambda f: (f / "decision.json").stat().st_mtime
                 if (f / "decision.json").exists() else 0)
    output = (installation.root / "logs" / "dags-test-answering.log").read_text()
    return {"seen": seen, "folder": folder, "decision": _decision(installation, folder),
            "jobs": api.jobs_created - jobs, "output": output,
            "costs": installation.tuneloop("costs", "--json").stdout}


def test_a_killed_worker_s_retry_re_attaches_and_the_candidate_is_deployed(installation, api, deployed):
    assert deployed["killed"] == {"jobs": 1, "uploads": 2, "status": "running"}
    assert deployed["jobs"] == 1 and deployed["uploads"] == 2  # the retry created nothing
    decision = deployed["decision"]
    assert decision["status"] == "deployed", (decision["status"], decision.get("gate", {}).get("reasons"))
    gate = decision["gate"]
    assert gate["passed"] and gate["candidate_mean"] >= gate["baseline_mean"] + 0.25, gate
    job = api.jobs[-1]
    assert job["status"] == "succeeded" and job["model"] == BASE
    model = json.loads((deployed["folder"] / "training" / "model" / "managed_model.json").read_text())
    assert model == {"provider": "openai", "model": job["fine_tuned_model"], "base_model": BASE, "job_id": job["id"],
                     "resource": None}
    # what was uploaded: OpenAI's keys only, the corrected replies as targets; deleted once the job succeeded
    train = next(c for f, c in api.uploads if f["id"] == job["training_file"]).decode().splitlines()
    assert all(set(json.loads(line)) == {"messages"} for line in train)
    assert {json.loads(line)["messages"][-1]["content"] for line in train} >= set(NEW_REPLIES.values())
    left = {f.id for f in OpenAI(api_key=KEY, base_url=api.base_url).files.list()}
    assert not left & {job["training_file"], job["validation_file"]}
    status = json.loads(installation.tuneloop("status", "--json").stdout)
    assert status["model"]["production_version"] == "2"
    # the version names its OpenAI model; the job's result file is in its MLflow run, step by step
    from mlflow import MlflowClient

    from tuneloop.registry import ModelRegistry

    config = installation.config()
    version = ModelRegistry(config.tracking_uri, config.registry_uri, config.mlflow.model_name).get_version("2")
    assert (version.tags["provider"], version.tags["provider_model"]) == ("openai", job["fine_tuned_model"])
    mlflow = MlflowClient(config.tracking_uri)
    losses = mlflow.get_metric_history(version.run_id, "openai_train_loss")
    assert len({m.step for m in losses}) == len(losses) > 1  # one value per step of the job
    assert mlflow.get_run(version.run_id).data.params["openai_job_id"] == job["id"]


def test_an_over_budget_run_is_refused_before_anything_is_uploaded(refused):
    decision = refused["decision"]
    assert decision["status"] == "over_budget", decision["status"]
    assert (refused["uploads"], refused["jobs"]) == (0, 0)
    budget = decision["costs"]["budget"]
    assert budget["within"] is False and budget["estimate"]["usd"] > 0.0001
    assert "estimated trained tokens x $5/1M (gpt-4.1-mini-2025-04-14)" in budget["estimate"]["basis"]
    assert any("costs.max_run_usd $0.00" in reason for reason in budget["reasons"])
    approval = decision["approvals"]["budget"]
    assert (approval["approved"], approval["by"]) == (False, "policy")
    assert decision["task_states"]["train.prepare"] == "skipped"


def test_the_deployed_run_s_costs_and_roi(installation, deployed, api):
    costs = deployed["decision"]["costs"]
    job = api.jobs[-1]
    assert costs["training"]["usd"] == pytest.approx(job["trained_tokens"] * 5.0 / 1e6)
    assert costs["budget"]["within"] is True
    production, candidate = costs["inference"]["production"], costs["inference"]["candidate"]
    assert production["usd"] > 0 and candidate["usd"] > production["usd"]  # a fine-tuned model costs more per token
    roi = costs["roi"]
    assert roi["expected_requests_per_month"] == 10_000 and roi["errors_avoided_per_month"] > 0
    assert roi["payback_days"] is not None and roi["payback_days"] < 1
    report = json.loads(installation.tuneloop("costs", "--json").stdout)
    row = next(r for r in report["runs"] if r["status"] == "deployed")
    assert row["training_usd"] == pytest.approx(costs["training"]["usd"]) and row["roi"]["payback_days"] < 1
    assert report["months"][-1]["training_usd"] >= costs["training"]["usd"]
    assert "costs this month: $" in installation.tuneloop("status").stdout


def test_an_approved_over_budget_run_goes_on_and_its_failed_job_fails_it_once(approved):
    assert [(s["task_id"], s["response"]["chosen_options"]) for s in approved["seen"]] == [
        ("approve_budget", ["Approve"])]
    assert "costs.max_run_usd" in approved["seen"][0]["body"]  # the approver reads the numbers
    decision = approved["decision"]
    assert decision["approvals"]["budget"]["approved"] and decision["approvals"]["budget"]["by"]
    # the job OpenAI failed fails the run with its code and message, once: a retry would have made a second job
    assert decision["status"] == "failed", decision["status"]
    assert decision["task_states"]["train.managed"] == "failed"
    assert decision["task_states"]["evaluate.prepare"] == "upstream_failed"
    assert approved["jobs"] == 1
    record = json.loads((approved["folder"] / "training" / "openai" / "job.json").read_text())
    assert record["ended_jobs"] == [record["job_id"]]
    assert (f"fine-tuning job {record['job_id']} failed: server_error: The job failed due to an internal error."
            in approved["output"])
    assert "[openai " in approved["output"] and "Fine-tuning job started" in approved["output"]  # events in the log
    # what the failed job cost counts: OpenAI reported no trained tokens, so at most the run's estimate
    estimate = json.loads((approved["folder"] / "training" / "spec.json").read_text())["estimated_training_tokens"]
    training = decision["costs"]["training"]
    assert training["usd"] == pytest.approx(estimate * 5.0 / 1e6) and training["upper_bound"]
    assert training["basis"].startswith(f"{record['job_id']} failed: at most {estimate:,} estimated trained tokens")
    report = json.loads(approved["costs"])
    row = next(r for r in report["runs"] if r["run_id"] == decision["run_id"])
    assert (row["training_usd"], row["training_upper_bound"]) == (training["usd"], True)


def test_no_secret_is_written_anywhere(installation, approved):
    """Every file the runs wrote: run folders, specs, logs, the store, MLflow's database and artifacts."""
    leaks = [str(path) for path in installation.root.rglob("*") if path.is_file()
             and KEY.encode() in path.read_bytes()]
    assert leaks == [], leaks
