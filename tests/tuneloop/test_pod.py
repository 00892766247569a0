"""The exact pod a trainer step runs in, for the kubernetes and gke backends (rendered, no cluster needed)."""

from __future__ import annotations

import pytest
from kubernetes.client import ApiClient

from tuneloop.backends.command import evaluate_args, train_args
from tuneloop.backends.pod import pod_name
from tuneloop.config import TrainingConfig
from tuneloop.operators.pods import trainer_pod_operator

RUN_ID = "manual__2026-11-22T04:00:00+00:00"
TRAINING = TrainingConfig(
    pod={"image": "europe-docker.pkg.dev/acme/ml/tuneloop-trainer:0.3.0", "gpus": 2, "cpu": "8", "memory": "32Gi",
         "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
         "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
         "service_account": "tuneloop-trainer", "secret_env": {"MLFLOW_TRACKING_TOKEN": "mlflow-credentials:token"}},
    gke={"project_id": "acme-ml", "location": "europe-west4", "cluster_name": "training"},
)


def _render(backend: str, args: list[str]) -> tuple[object, dict]:
    op = trainer_pod_operator(task_id="train", training=TRAINING, backend=backend, run_id=RUN_ID, step="train",
                              args=args, env={"MLFLOW_TRACKING_URI": "https://mlflow.acme.internal"})
    return op, ApiClient().sanitize_for_serialization(op.build_pod_request_obj(dry_run=True))


@pytest.mark.parametrize("backend", ["kubernetes", "gke"])
def test_the_exact_pod_spec(backend):
    op, pod = _render(backend, train_args("gs://acme-ml/tuneloop/runs/r1/training/spec.json"))
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container == {
        "name": "base",
        "image": "europe-docker.pkg.dev/acme/ml/tuneloop-trainer:0.3.0",
        "command": ["python", "-m", "tuneloop_trainer"],
        "args": ["train", "--spec", "gs://acme-ml/tuneloop/runs/r1/training/spec.json"],
        "resources": {"requests": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"},
                      "limits": {"memory": "32Gi", "nvidia.com/gpu": "2"}},
        "env": [{"name": "MLFLOW_TRACKING_URI", "value": "https://mlflow.acme.internal"},
                {"name": "MLFLOW_TRACKING_TOKEN",
                 "valueFrom": {"secretKeyRef": {"name": "mlflow-credentials", "key": "token"}}}],
        "envFrom": [], "ports": [], "volumeMounts": [], "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["serviceAccountName"] == "tuneloop-trainer" and spec["restartPolicy"] == "Never"
    assert pod["metadata"]["namespace"] == "tuneloop"
    assert pod["metadata"]["name"] == pod_name(RUN_ID, "train")
    assert pod["metadata"]["labels"]["tuneloop/step"] == "train"
    assert (op.deferrable, op.get_logs, op.on_finish_action.value if hasattr(op.on_finish_action, "value")
            else op.on_finish_action) == (True, True, "delete_pod")


def test_no_secret_value_anywhere_in_the_spec():
    _, pod = _render("kubernetes", train_args("gs://b/spec.json"))
    text = str(pod)
    assert "secretKeyRef" in text and "token" in text
    env = pod["spec"]["containers"][0]["env"]
    assert all("value" not in item or item["name"] != "MLFLOW_TRACKING_TOKEN" for item in env)


def test_gke_targets_the_configured_cluster_and_needs_a_project():
    op, _ = _render("gke", train_args("gs://b/spec.json"))
    assert (op.project_id, op.location, op.cluster_name, op.gcp_conn_id) == (
        "acme-ml", "europe-west4", "training", "google_cloud_default")
    with pytest.raises(ValueError, match="training.gke.project_id"):
        trainer_pod_operator(task_id="t", training=TrainingConfig(), backend="gke", run_id="r", step="train",
                             args=["train"])
    with pytest.raises(ValueError, match="does not run in a pod"):
        trainer_pod_operator(task_id="t", training=TRAINING, backend="local", run_id="r", step="train", args=[])


def test_a_cpu_pod_requests_no_gpu():
    training = TRAINING.model_copy(update={"pod": TRAINING.pod.model_copy(update={"gpus": 0})})
    op = trainer_pod_operator(task_id="evaluate", training=training, backend="kubernetes", run_id=RUN_ID,
                              step="evaluate", args=evaluate_args("gs://b/model", [("gs://b/eval.jsonl",
                                                                                    "gs://b/pred.jsonl")], 16))
    pod = ApiClient().sanitize_for_serialization(op.build_pod_request_obj(dry_run=True))
    container = pod["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "8", "memory": "32Gi"}, "limits": {"memory": "32Gi"}}
    assert container["args"] == ["evaluate", "--model-dir", "gs://b/model", "--data", "gs://b/eval.jsonl",
                                 "--output", "gs://b/pred.jsonl", "--batch-size", "16"]


def test_pod_names_are_dns_safe_and_distinct():
    names = {pod_name(RUN_ID, step) for step in ("train", "evaluate")} | {pod_name(RUN_ID + "x", "train")}
    assert len(names) == 3
    assert all(len(n) <= 63 and n == n.lower() and n[0].isalnum() and n[-1].isalnum() for n in names)


def test_bad_secret_reference_names_the_field():
    with pytest.raises(ValueError, match="secret_env.TOKEN: expected '<secret name>:<key>'"):
        TrainingConfig(pod={"secret_env": {"TOKEN": "just-a-value"}})


def test_a_failed_pod_spends_its_hours_from_creation(kubernetes_standin):
    """The pod as the Kubernetes client reads it back from the (stand-in) API server: its creation time is what
    the failed run's cost counts from; a pod never created spent nothing."""
    from datetime import datetime, timedelta, timezone

    from kubernetes import client, config
    from kubernetes.client import models as k8s

    from tuneloop.backends.pod import failed_pod_spent
    from tuneloop.spent import Spent

    core_v1 = client.CoreV1Api(config.new_client_from_config(str(kubernetes_standin.kubeconfig)))
    core_v1.create_namespaced_pod("default", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fails"},
                                              "spec": {"restartPolicy": "Never", "containers": [
                                                  {"name": "base", "image": "any",
                                                   "command": ["python", "-c", "raise SystemExit(3)"]}]}})
    pod = core_v1.read_namespaced_pod("fails", "default")
    later = pod.metadata.creation_timestamp + timedelta(minutes=90)
    assert pod.status.phase != "Succeeded"
    created = pod.metadata.creation_timestamp.isoformat(timespec="seconds")
    assert failed_pod_spent(pod, later) == Spent(f"fails (created {created})", 1.5, "hours", "failed")
    assert failed_pod_spent(pod, datetime.now(timezone.utc)).quantity < 0.01
    assert failed_pod_spent(None, later) is None
    assert failed_pod_spent(k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="never-created")), later) is None
    pod.status.phase = "Succeeded"  # a step that failed after its pod succeeded: the trainer's runtime prices it
    assert failed_pod_spent(pod, later) is None
