"""Human approvals answered through Airflow's human-in-the-loop REST API while `airflow dags test` runs."""

from __future__ import annotations

import json

import pytest

from tests.e2e.scenario import Scenario, permissive_gate, write_cases
from tests.standins.mailbox import Mailbox

pytestmark = pytest.mark.slow


def _decision(scenario: Scenario) -> dict:
    records = list((scenario.root / "tuneloop" / "storage" / "runs").glob("*/decision.json"))
    assert len(records) == 1, records
    return json.loads(records[0].read_text())


def _history(scenario: Scenario):
    from tuneloop.store import ErrorCaseStore

    config = scenario.config()
    return ErrorCaseStore.from_config(config).deployment_history(config.mlflow.model_name)


def _production(scenario: Scenario) -> str | None:
    from tuneloop.registry import ModelRegistry

    config = scenario.config()
    return ModelRegistry(config.tracking_uri, config.registry_uri, config.mlflow.model_name).production_version()


@pytest.fixture
def approving(install, damaged_model, speech) -> Scenario:
    """A fixable production model, cases to learn from, and both approvals switched on."""
    scenario = install(damaged_model)
    permissive_gate(scenario)
    scenario.env["TUNELOOP__DEPLOYMENT__ROLLBACK_ON_ERROR_THRESHOLD"] = "100"
    scenario.env["TUNELOOP__TRIGGER__AUTO_APPROVE_FINETUNING"] = "false"
    scenario.tuneloop("ingest", str(write_cases(scenario.root / "cases.jsonl", speech)))
    return scenario


def test_approved_training_and_deployment(approving):
    with Mailbox() as mailbox:  # the model's people hear of each wait and of the deployment, by e-mail
        approving.env |= {"AIRFLOW_CONN_SMTP_TUNELOOP": mailbox.connection(),
                          "TUNELOOP__NOTIFICATIONS__CHANNELS": '[{"conn_id": "smtp_tuneloop", "to": ["ml@example.test"]}]'}
        seen = approving.dags_test_answering({"auto_deploy": False, "reason": "e2e approve"},
                                             {"approve_training": "Approve", "approve_deploy": "Approve"})

    assert [(s["task_id"], s["response"]["chosen_options"]) for s in seen] == [
        ("approve_training", ["Approve"]), ("approve_deploy", ["Approve"])]
    assert "new error cases" in seen[0]["body"]  # the approver reads why training was triggered
    assert seen[1]["subject"].startswith("Deploy version 2 to production?")
    assert "WER" in seen[1]["body"] and "auto_deploy is off" in seen[1]["body"]
    decision = _decision(approving)
    assert decision["status"] == "deployed", decision
    assert decision["approvals"]["training"]["approved"] and decision["approvals"]["deployment"]["by"]
    assert _production(approving) == "2"
    deployed = _history(approving)[0]  # the person who approved in Airflow answers for the deployment
    assert deployed.action == "deploy" and deployed.actor == decision["approvals"]["deployment"]["by"]
    assert deployed.details["approved_by"] == deployed.actor and deployed.details["dag_id"] == "finetune_weekly"
    # the "MLflow run" button of the report task, through the REST API the UI uses
    links = approving.api_get(f"/api/v2/dags/finetune_weekly/dagRuns/{decision['run_id']}/taskInstances/report/links")
    assert links["status"] == 200, links
    assert links["body"]["extra_links"]["MLflow run"] == decision["mlflow_run"]["url"]

    run_id = decision["run_id"]
    assert [m["Subject"] for m in mailbox.messages] == [
        f"tuneloop speech-to-text: training waiting for approval ({run_id})",
        f"tuneloop speech-to-text: deployment waiting for approval ({run_id})",
        f"tuneloop speech-to-text: deployed ({run_id})"]
    waiting, deploying, deployed_mail = mailbox.bodies()
    assert "new error cases" in waiting and "/tasks/approve_training/required_actions" in waiting
    assert "Deploy version 2 to production?" in deploying and "/tasks/approve_deploy/required_actions" in deploying
    assert f"Run {run_id}: DEPLOYED" in deployed_mail and decision["mlflow_run"]["url"] in deployed_mail


def test_rejected_deployment_leaves_production_and_is_recorded(approving):
    approving.env["TUNELOOP__TRIGGER__AUTO_APPROVE_FINETUNING"] = "true"
    seen = approving.dags_test_answering({"auto_deploy": False, "reason": "e2e decline"},
                                         {"approve_deploy": "Reject"})

    assert seen[0]["response"]["chosen_options"] == ["Reject"]
    decision = _decision(approving)
    assert decision["status"] == "declined", decision
    assert decision["task_states"]["deploy"] == "skipped"
    assert _production(approving) == "1"
    event = _history(approving)[0]
    assert (event.action, event.from_version, event.to_version) == ("approval_rejected", "1", "1")
    assert "deployment of version 2 not approved: rejected by" in event.reason


def test_unanswered_training_approval_times_out_as_a_reject(approving):
    approving.env["TUNELOOP__TRIGGER__APPROVAL_TIMEOUT_HOURS"] = str(2 / 3600)  # about two seconds
    approving.dags_test_answering({"reason": "e2e timeout"}, {"approve_training": "timeout"})

    decision = _decision(approving)
    assert decision["status"] == "not_approved", decision
    assert decision["approvals"]["training"]["by"] is None
    assert decision["task_states"]["export_dataset"] == "skipped" and decision["dataset"] is None
    event = _history(approving)[0]
    assert event.action == "approval_rejected" and event.details["stage"] == "training"
    assert "no answer within" in event.reason and _production(approving) == "1"
