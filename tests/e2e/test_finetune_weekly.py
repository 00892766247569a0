"""`airflow dags test finetune_weekly` end to end on a tiny model: deploy (blue_green), reject, auto-rollback (replace),
a green version that fails its check, skip."""

from __future__ import annotations

import json

import pytest

from tests.e2e.scenario import Scenario, permissive_gate, write_cases

pytestmark = pytest.mark.slow


def _registry(scenario: Scenario):
    from tuneloop.registry import ModelRegistry

    config = scenario.config()
    return ModelRegistry(config.tracking_uri, config.registry_uri, config.mlflow.model_name)


def _store(scenario: Scenario):
    from tuneloop.store import ErrorCaseStore

    return ErrorCaseStore.from_config(scenario.config())


def _decision(scenario: Scenario) -> dict:
    records = list((scenario.root / "tuneloop" / "storage" / "runs").glob("*/decision.json"))
    assert len(records) == 1, records
    return json.loads(records[0].read_text())


def _dags_test(scenario: Scenario, conf: dict) -> None:
    scenario.airflow("dags", "test", "finetune_weekly", "-c", json.dumps(conf))


def _register_suite(scenario: Scenario, speech, count: int) -> None:
    """A regression suite made of the first ``count`` utterances, which are also among the error cases."""
    suite = scenario.root / "suite.jsonl"
    suite.write_text("".join(json.dumps({"id": f"s{i}", "audio": str(job.out_path), "text": text, "voice": job.voice})
                             + "\n" for i, (job, text) in enumerate(zip(speech["jobs"][:count], speech["texts"]))))
    scenario.tuneloop("suite", "add", "known-commands", str(suite), "--max-wer-degradation", "0.5")


def test_passing_candidate_is_deployed(install, damaged_model, speech):
    """Through blue_green, chosen in the run's form (the replace strategy deploys in every other e2e run)."""
    scenario = install(damaged_model)
    permissive_gate(scenario)
    scenario.env["TUNELOOP__DEPLOYMENT__ROLLBACK_ON_ERROR_THRESHOLD"] = "100"
    scenario.tuneloop("ingest", str(write_cases(scenario.root / "cases.jsonl", speech)))
    _register_suite(scenario, speech, 6)

    _dags_test(scenario, {"reason": "e2e deploy", "deployment_strategy": "blue_green"})

    decision = _decision(scenario)
    assert decision["status"] == "deployed", decision
    # blue_green: placed on green, checked through models:/...@green, then production moved in one step
    assert (decision["deployment"]["strategy"], decision["deployment"]["alias"]) == ("blue_green", "green")
    assert decision["post_deploy_check"]["passed"] and decision["rollout"]["action"] == "deploy"
    assert decision["task_states"]["online_test"] == "skipped" and decision["task_states"]["conclude"] == "success"
    # leakage guard: the suite's six utterances were among the cases and stayed out of the dataset
    assert decision["dataset"]["counts"]["excluded"] == 6
    assert decision["dataset"]["counts"]["excluded_suite_audio"] == 6
    suite = decision["regression"]["results"][0]
    assert (suite["name"], suite["n"], suite["passed"]) == ("known-commands", 6, True)
    assert suite["baseline_source"] == "production (this run)" and suite["baseline_version"] == "1"
    # the decision record is in MLflow, attached to the version, and linked
    from mlflow import MlflowClient

    config = scenario.config()
    client = MlflowClient(config.tracking_uri)
    mlflow_run = decision["mlflow_run"]["id"]
    assert decision["mlflow_run"]["url"].endswith(f"/runs/{mlflow_run}")
    folders = ("decision", "gate", "regression")
    logged = {a.path for folder in folders for a in client.list_artifacts(mlflow_run, folder)}
    assert {"decision/decision.json", "decision/decision.md", "gate/gate.json", "gate/churn.jsonl", "gate/gate.png",
            "regression/regression.json"} <= logged
    record = json.loads(open(client.download_artifacts(mlflow_run, "decision/decision.json")).read())
    assert record["status"] == "deployed" and record["gate"]["churn"]["n"] == decision["gate"]["n"]
    tags = _registry(scenario).get_version("2").tags
    assert tags["decision"] == "deployed" and tags["decision_record"] == f"runs:/{mlflow_run}/decision"
    suites = json.loads(scenario.tuneloop("suite", "list", "--json").stdout)
    assert [(h["model_version"], h["passed"]) for h in suites[0]["history"]] == [("2", True)]
    registry = _registry(scenario)
    assert registry.production_version() == decision["candidate_version"] == "2"
    assert registry.previous_version() == "1"
    assert "green" not in registry.aliases()
    history = _store(scenario).deployment_history(scenario.config().mlflow.model_name)
    assert [e.action for e in history][:2] == ["deploy", "green"]
    assert history[0].from_version == "1" and history[0].to_version == "2"
    counts = decision["dataset"]["counts"]  # train cases and suite-excluded ones are used up; eval cases stay new
    assert _store(scenario).statistics().to_dict()["by_state"].get("consumed") == counts["train"] + counts["excluded"]
    status = json.loads(scenario.tuneloop("status", "--json").stdout)
    assert status["model"]["production_version"] == "2"
    assert status["last_runs"][0]["status"] == "deployed"


def test_forced_run_after_a_stale_row_is_rejected_by_the_gate(scenario, speech):
    """A run left "running" (its DAG run gone) does not block a forced run, which the gate then rejects."""
    scenario.tuneloop("ingest", str(write_cases(scenario.root / "cases.jsonl", speech)))
    _store(scenario).start_training_run("manual__died_before_report")

    _dags_test(scenario, {"reason": "e2e reject", "force_trigger": True})

    decision = _decision(scenario)
    assert decision["status"] == "rejected", decision
    assert decision["gate"]["passed"] is False and decision["gate"]["reasons"]
    stale = _store(scenario).training_run("manual__died_before_report")
    assert stale.status == "failed" and "no longer exists in Airflow" in stale.summary["reason"]
    registry = _registry(scenario)
    assert registry.production_version() == "1"
    assert registry.get_version(decision["candidate_version"]).tags["verdict"] in ("fail", "insufficient_evidence")
    history = _store(scenario).deployment_history(scenario.config().mlflow.model_name)
    assert history[0].action == "reject" and history[0].from_version == history[0].to_version == "1"
    # the history names who started the run (`airflow dags test` triggers as "dag_test"), not the DAG
    assert history[0].actor == "dag_test" and history[0].details["triggered_by"] == "dag_test"


def test_failed_post_deploy_check_rolls_back(install, damaged_model, speech):
    scenario = install(damaged_model)
    permissive_gate(scenario)
    scenario.env["TUNELOOP__DEPLOYMENT__ROLLBACK_ON_ERROR_THRESHOLD"] = "0.0001"  # no tiny model is that good
    scenario.tuneloop("ingest", str(write_cases(scenario.root / "cases.jsonl", speech)))

    scenario.airflow("dags", "test", "finetune_weekly", "-c", json.dumps({"reason": "e2e rollback"}), check=False)

    decision = _decision(scenario)
    assert decision["status"] == "rolled_back", decision
    assert _registry(scenario).production_version() == "1"
    actions = [e.action for e in _store(scenario).deployment_history(scenario.config().mlflow.model_name)]
    assert actions[:3] == ["rollback", "deploy", "bootstrap"]


def test_a_green_version_that_fails_its_check_never_reaches_production(install, damaged_model, speech):
    scenario = install(damaged_model)
    permissive_gate(scenario)
    scenario.env |= {"TUNELOOP__DEPLOYMENT__ROLLBACK_ON_ERROR_THRESHOLD": "0.0001",
                     "TUNELOOP__DEPLOYMENT__DEPLOYMENT_STRATEGY": "blue_green"}
    scenario.tuneloop("ingest", str(write_cases(scenario.root / "cases.jsonl", speech)))

    scenario.airflow("dags", "test", "finetune_weekly", "-c", json.dumps({"reason": "e2e green"}), check=False)

    decision = _decision(scenario)
    assert decision["status"] == "rejected", decision
    assert decision["post_deploy_check"]["passed"] is False
    assert decision["task_states"]["conclude"] == "upstream_failed"
    registry = _registry(scenario)
    assert registry.production_version() == "1" and "green" not in registry.aliases()
    assert registry.get_version("2").tags["decision"] == "rejected"
    history = _store(scenario).deployment_history(scenario.config().mlflow.model_name)
    assert [e.action for e in history][:2] == ["reject", "green"]
    assert all(e.to_version == "1" for e in history)  # production never moved


def test_unmet_conditions_skip_the_run(scenario):
    _dags_test(scenario, {})

    decision = _decision(scenario)
    assert decision["status"] == "skipped"
    assert any("min_error_cases" in r for r in decision["trigger"]["reasons"])
    from mlflow import MlflowClient

    logged = MlflowClient(scenario.config().tracking_uri).list_artifacts(decision["mlflow_run"]["id"], "decision")
    assert {a.path for a in logged} == {"decision/decision.json", "decision/decision.md"}
    assert _registry(scenario).production_version() == "1"
