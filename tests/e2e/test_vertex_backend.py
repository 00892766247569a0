"""`airflow dags test finetune_weekly` with ``training.backend: vertex``: the google provider's GenAI hook and the real
``google-genai`` client, with a service account key in the Airflow connection, against a stand-in Vertex AI API on
loopback (tests/standins/vertex_api.py: tuning jobs, generateContent, and the OAuth token endpoint the key signs
its assertions for), and the run's folder in a bucket of the GCS emulator, from which the stand-in reads the
training files as Vertex does.

The support story of test_chat.py and test_openai_backend.py: production (v1, ``gemini-2.5-flash`` through the
API) answers with the old replies; people corrected those of the changed policy. A tuned endpoint answers each
kind of question with the reply most often given in the Vertex file its job read. One run: the dataset is
exported, checked and written in Vertex's format into the run's folder, the job runs, production and the tuned
endpoint answer the evaluation through generateContent, the candidate is deployed and served by its pyfunc.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import new_installation
from tests.e2e.scenario import Scenario
from tests.e2e.test_chat import NEW_REPLIES, OLD_REPLIES, SECOND_BATCH, chat_cases
from tests.e2e.test_openai_backend import kind_of
from tests.standins.vertex_api import VertexStandIn, last_user_text

pytestmark = pytest.mark.slow

BASE = "gemini-2.5-flash"
PROJECT = "acme-ml"


def support(api: VertexStandIn) -> dict[str, Any]:
    return {
        "task": "chat", "mlflow": {"model_name": "support-gemini"},
        "trigger": {"min_error_cases": 20, "min_corrected_cases": 10, "cooldown_hours": 0},
        "dataset": {"eval_fraction": 0.35, "min_eval_cases": 5},
        "training": {"backend": "vertex", "vertex": {
            "project_id": PROJECT, "api_endpoint": api.base_url, "poll_seconds": 0.2, "max_retries": 2,
            "min_examples": 10, "epoch_count": 2}},
        "validation": {"min_eval_size": 8, "max_newly_broken_rate": 0.1},
        "costs": {"prices": {BASE: {"training_per_1m_tokens": 5.0, "input_per_1m_tokens": 0.3,
                                    "output_per_1m_tokens": 2.5}},
                  "expected_requests_per_month": 10_000},
    }


class SupportWorld:
    """The stand-in's answers: the base model's old replies; a tuned endpoint's from its training file."""

    def __init__(self, api: VertexStandIn) -> None:
        self.api = api

    def __call__(self, body: dict[str, Any], model: str) -> str:
        kind = kind_of(last_user_text(body))
        learned = self.learned(model) if "/endpoints/" in model else {}
        return learned.get(kind, OLD_REPLIES[kind])

    def learned(self, endpoint: str) -> dict[str, str]:
        replies: dict[str, Counter] = {}
        for example in self.api.training_examples(endpoint):
            user = next(c for c in reversed(example["contents"]) if c["role"] == "user")["parts"][0]["text"]
            replies.setdefault(kind_of(user), Counter())[example["contents"][-1]["parts"][0]["text"]] += 1
        return {kind: counts.most_common(1)[0][0] for kind, counts in replies.items()}


@pytest.fixture(scope="module")
def api(gcs_emulator):
    with VertexStandIn(storage_emulator=gcs_emulator, pending_s=0.3, running_s=1.5) as standin:
        standin.reply = SupportWorld(standin)
        yield standin
    assert not standin.errors, standin.errors


@pytest.fixture(scope="module")
def installation(tmp_path_factory, airflow_env, migrated_airflow_db, migrated_mlflow_db, api, gcs_emulator):
    root = tmp_path_factory.mktemp("vertex_backend")
    config = root / "tuneloop.yaml"
    config.write_text(yaml.safe_dump(support(api), sort_keys=False))
    key = api.service_account_info(PROJECT)
    connection = json.dumps({"conn_type": "google_cloud_platform",
                             "extra": {"keyfile_dict": json.dumps(key), "project": PROJECT}})
    prefix = f"gs://acme-tuneloop/e2e-vertex-{uuid.uuid4().hex[:8]}"
    scenario = new_installation(root, airflow_env, migrated_airflow_db, migrated_mlflow_db,
                                TUNELOOP_CONFIG=str(config), AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT=connection,
                                STORAGE_EMULATOR_HOST=gcs_emulator, TUNELOOP__STORAGE_ROOT=prefix)
    scenario.prefix = prefix  # type: ignore[attr-defined]
    scenario.private_key = key["private_key"]  # type: ignore[attr-defined]
    scenario.tuneloop("bootstrap", "--vertex-model", BASE, "--reason", "e2e: the API's Gemini model")
    scenario.tuneloop("ingest", str(chat_cases(root / "cases.jsonl", SECOND_BATCH, 1)))
    return scenario


def _run_folder(scenario: Scenario) -> Any:
    from airflow.sdk import ObjectStoragePath

    runs = list((ObjectStoragePath(scenario.prefix) / "runs").iterdir())  # type: ignore[attr-defined]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def deployed(installation, api) -> dict[str, Any]:
    created = api.created
    result = installation.airflow("dags", "test", "finetune_weekly", "-c",
                                  json.dumps({"force_trigger": True, "reason": "e2e vertex: new policy"}), check=False)
    folder = _run_folder(installation)
    return {"folder": folder, "decision": json.loads((folder / "decision.json").read_text()),
            "jobs": api.created - created, "output": result.stdout + result.stderr}


def test_the_tuned_gemini_model_is_deployed_from_a_vertex_job(installation, api, deployed):
    decision = deployed["decision"]
    assert decision["status"] == "deployed", (decision["status"], deployed["output"][-3000:])
    assert deployed["jobs"] == 1
    gate = decision["gate"]
    assert gate["passed"] and gate["candidate_mean"] >= gate["baseline_mean"] + 0.25, gate
    job = api.jobs[-1]
    assert job["state"] == "JOB_STATE_SUCCEEDED" and job["baseModel"] == BASE
    assert job["labels"]["tuneloop_model"] == installation.config().name and job["labels"]["tuneloop_run"]
    folder = deployed["folder"]
    spec = job["supervisedTuningSpec"]
    assert spec["trainingDatasetUri"] == f"{folder / 'training' / 'vertex' / 'train.jsonl'}"
    assert spec["hyperParameters"]["epochCount"] == 2
    # what Vertex read: Gemini's format, the corrected replies as the model's last turn
    lines = [json.loads(line) for line in (folder / "training" / "vertex" / "train.jsonl").read_text().splitlines()]
    assert all(set(line) <= {"systemInstruction", "contents"} for line in lines)
    assert {line["contents"][-1]["parts"][0]["text"] for line in lines} >= set(NEW_REPLIES.values())
    model = json.loads((folder / "training" / "model" / "managed_model.json").read_text())
    assert model == {"provider": "vertex", "model": job["tunedModel"]["endpoint"], "base_model": BASE,
                     "job_id": job["name"], "resource": job["tunedModel"]["model"]}
    # production and the candidate were asked through generateContent; the post-deploy check through the pyfunc
    asked = Counter(model.rpartition("/")[0].rpartition("/")[2] for model, _ in api.requests)
    assert asked["models"] > 0 and asked["endpoints"] > 0
    check = decision["post_deploy_check"]  # replies through models:/support-gemini@production, as served
    assert check["passed"] is True and check["served_score"] >= gate["baseline_mean"] + 0.25, check
    status = json.loads(installation.tuneloop("status", "--json").stdout)
    assert status["model"]["production_version"] == "2"

    from mlflow import MlflowClient

    from tuneloop.registry import ModelRegistry

    config = installation.config()
    version = ModelRegistry(config.tracking_uri, config.registry_uri, config.mlflow.model_name).get_version("2")
    assert (version.tags["provider"], version.tags["provider_model"]) == ("vertex", job["tunedModel"]["endpoint"])
    params = MlflowClient(config.tracking_uri).get_run(version.run_id).data.params
    assert params["vertex_job"] == job["name"] and params["vertex_tuned_model"] == job["tunedModel"]["model"]


def test_the_run_s_cost_is_the_job_s_billable_tokens_at_the_configured_price(deployed, api):
    costs = deployed["decision"]["costs"]
    billable = int(api.jobs[-1]["tuningDataStats"]["supervisedTuningDataStats"]["totalBillableTokenCount"])
    assert costs["training"]["usd"] == pytest.approx(billable * 5.0 / 1e6)
    assert costs["budget"]["estimate"]["usd"] > 0  # estimated before the job from the checked Vertex file
    production, candidate = costs["inference"]["production"], costs["inference"]["candidate"]
    assert production["usd"] > 0 and candidate["usd"] > 0  # a tuned endpoint bills at its base model's rates
    assert costs["roi"]["errors_avoided_per_month"] > 0


def test_no_key_or_token_is_written_anywhere(installation, api, deployed):
    """Every local file the run wrote (logs, the store, MLflow's database and artifacts) and every object in the
    run's folder: neither the service account's private key nor an access token the stand-in issued."""
    secrets = [installation.private_key.split("\n")[1].encode(), *(t.encode() for t in api.tokens)]
    assert api.tokens  # the key was used
    leaks = [str(p) for p in Path(installation.root).rglob("*") if p.is_file()
             and any(secret in p.read_bytes() for secret in secrets)]
    leaks += [str(p) for p in deployed["folder"].rglob("*") if p.is_file()
              and any(secret in p.read_bytes() for secret in secrets)]
    assert leaks == [], leaks
