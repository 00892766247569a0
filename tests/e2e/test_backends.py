"""`airflow dags test finetune_weekly` with the run's files in a bucket and the trainer elsewhere.

(The ``local`` backend with a bucket is the same trainer command as in these pods, run by the worker: the
kubernetes test covers its storage side.)

Storage is gs:// on a GCS emulator (the real gcsfs / google-cloud-storage clients, through Airflow's
ObjectStoragePath); the ``kubernetes`` backend runs the stock KubernetesPodOperator against a stand-in Kubernetes
API whose pods are local processes; the ``gce`` backend creates VMs through the real Compute Engine client on a
stand-in API that boots the real startup script. Nothing is read from or written to the local storage folder.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest

from tests.e2e.scenario import Scenario, permissive_gate, write_cases

pytestmark = pytest.mark.slow


@pytest.fixture
def bucket_scenario(install, damaged_model, speech, gcs_emulator):
    """An installation whose storage_root is a fresh prefix of the emulator's bucket, with cases to train on."""
    scenario = install(damaged_model)
    permissive_gate(scenario)
    prefix = f"gs://acme-tuneloop/e2e-{uuid.uuid4().hex[:8]}"
    scenario.env |= {"STORAGE_EMULATOR_HOST": gcs_emulator, "TUNELOOP__STORAGE_ROOT": prefix,
                     "TUNELOOP__DEPLOYMENT__ROLLBACK_ON_ERROR_THRESHOLD": "100"}
    scenario.tuneloop("ingest", str(write_cases(scenario.root / "cases.jsonl", speech)))
    scenario.prefix = prefix  # type: ignore[attr-defined]
    return scenario


def _bucket(scenario: Scenario):
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(scenario.prefix)  # type: ignore[attr-defined]


def _decision(scenario: Scenario) -> dict:
    records = list((_bucket(scenario) / "runs").glob("*/decision.json"))
    assert len(records) == 1, records
    return json.loads(records[0].read_text())


def _run_files(scenario: Scenario) -> set[str]:
    run = next(iter((_bucket(scenario) / "runs").iterdir()))
    return {str(p.path).removeprefix(str(run.path)).lstrip("/") for p in run.rglob("*") if p.is_file()}


def _assert_deployed_from_the_bucket(scenario: Scenario) -> dict:
    decision = _decision(scenario)
    assert decision["status"] == "deployed", decision
    files = _run_files(scenario)
    assert {"base_model.json", "base_model/config.json", "training/spec.json", "training/metrics.json",
            "training/model/config.json", "predictions/candidate/eval.jsonl", "predictions/production/eval.jsonl",
            "predictions/jobs.json", "gate.json", "churn.jsonl", "gate.png", "regression.json",
            "decision.json", "decision.md"} <= files, sorted(files)
    assert any(f.startswith("training/checkpoints/step-") for f in files), sorted(files)
    local = scenario.root / "tuneloop" / "storage"
    assert not local.exists() or not any(local.rglob("*.json")), "nothing may land in the local storage folder"
    from tuneloop.registry import ModelRegistry

    config = scenario.config()
    assert ModelRegistry(config.tracking_uri, config.registry_uri, config.mlflow.model_name).production_version() == "2"
    return decision


def _gce(scenario: Scenario, compute_standin) -> None:
    scenario.env |= {"TUNELOOP__TRAINING__GCE__PROJECT_ID": "acme-ml",
                     "TUNELOOP__TRAINING__GCE__API_ENDPOINT": compute_standin.endpoint,
                     "TUNELOOP__TRAINING__GCE__POLL_SECONDS": "1"}


def test_gce_backend_trains_and_evaluates_on_vms_and_deletes_them(bucket_scenario, compute_standin):
    from tuneloop.backends.gce import instance_name

    _gce(bucket_scenario, compute_standin)
    bucket_scenario.airflow("dags", "test", "finetune_weekly", "-c",
                            json.dumps({"reason": "e2e gce", "backend": "gce"}))

    decision = _assert_deployed_from_the_bucket(bucket_scenario)
    names = {instance_name(decision["run_id"], step) for step in ("train", "evaluate")}
    assert set(compute_standin.instances) == names and set(compute_standin.deleted) == names
    body = compute_standin.instances[instance_name(decision["run_id"], "train")]
    assert body["guestAccelerators"][0]["acceleratorCount"] == 1
    script = body["metadata"]["items"][0]["value"]
    assert "python -m tuneloop_trainer train --spec " + bucket_scenario.prefix in script
    assert {"markers/train.json", "markers/evaluate.json"} <= _run_files(bucket_scenario)


def test_a_failing_vm_fails_the_run_clearly_and_is_deleted(bucket_scenario, compute_standin):
    from tuneloop.backends.gce import instance_name

    _gce(bucket_scenario, compute_standin)
    # a VM whose trainer cannot write its scratch folder: the trainer exits non-zero on the VM
    bucket_scenario.env["TUNELOOP__TRAINING__POD__ENV"] = json.dumps({"TUNELOOP_TRAINER_SCRATCH": "/proc/no-such"})
    bucket_scenario.env["TUNELOOP__COSTS__PRICES"] = json.dumps({"g2-standard-8": {"per_hour": 0.85},
                                                                 "nvidia-l4": {"per_hour": 0.7}})
    result = bucket_scenario.airflow("dags", "test", "finetune_weekly", "-c",
                                     json.dumps({"reason": "e2e gce failure", "backend": "gce"}), check=False)

    decision = _decision(bucket_scenario)
    assert decision["status"] == "failed", decision
    assert decision["task_states"]["train.wait_vm"] == "failed"
    assert decision["task_states"]["train.delete_vm"] == "success"
    assert decision["task_states"]["evaluate.prepare"] == "upstream_failed"
    name = instance_name(decision["run_id"], "train")
    assert compute_standin.deleted == [name]
    # the VM's hours until its deletion are the failed run's cost
    training = decision["costs"]["training"]
    assert re.match(rf"{name} \(created [-0-9T:+]+\) deleted without a model: ", training["basis"]), training
    assert "$1.55/h" in training["basis"]
    assert 0 < training["quantity"] < 0.5 and training["usd"] == pytest.approx(training["quantity"] * 1.55)
    assert "exited with status" in result.stdout + result.stderr
    from tuneloop.registry import ModelRegistry

    config = bucket_scenario.config()
    assert ModelRegistry(config.tracking_uri, config.registry_uri, config.mlflow.model_name).production_version() == "1"


def test_kubernetes_backend_trains_and_evaluates_in_gpu_pods(bucket_scenario, kubernetes_standin):
    import os

    from tuneloop.backends.pod import pod_name

    bucket_scenario.env["AIRFLOW_CONN_KUBERNETES_DEFAULT"] = os.environ["AIRFLOW_CONN_KUBERNETES_DEFAULT"]
    bucket_scenario.env.pop("KUBECONFIG", None)
    bucket_scenario.env["TUNELOOP__TRAINING__POD__SECRET_ENV"] = json.dumps({"HF_TOKEN": "hf-credentials:token"})
    kubernetes_standin.secrets[("hf-credentials", "token")] = "not-in-any-spec"
    bucket_scenario.airflow("dags", "test", "finetune_weekly", "-c",
                            json.dumps({"reason": "e2e kubernetes", "backend": "kubernetes"}))

    decision = _assert_deployed_from_the_bucket(bucket_scenario)
    dataset_uri = f"{bucket_scenario.prefix}/datasets/{decision['dataset']['dataset_id']}"
    assert (_bucket(bucket_scenario) / "datasets" / decision["dataset"]["dataset_id"] / "manifest.json").exists()
    run = next(iter((_bucket(bucket_scenario) / "runs").iterdir()))
    spec = json.loads((run / "training" / "spec.json").read_text())
    assert spec["dataset_uri"] == dataset_uri and spec["output_uri"] == f"gs://{run.path}/training"
    names = {pod_name(decision["run_id"], step) for step in ("train", "evaluate")}
    assert set(kubernetes_standin.pods) == names and set(kubernetes_standin.deleted) >= names
    train = kubernetes_standin.pods[pod_name(decision["run_id"], "train")]
    container = train["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "tuneloop_trainer"]
    assert container["args"][:2] == ["train", "--spec"] and container["args"][2].startswith(bucket_scenario.prefix)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert train["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert "not-in-any-spec" not in json.dumps(kubernetes_standin.pods)
    assert "resuming" not in kubernetes_standin.logs(pod_name(decision["run_id"], "train"))
    assert "train split:" in kubernetes_standin.logs(pod_name(decision["run_id"], "train"))
