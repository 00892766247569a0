"""The stock KubernetesPodOperator runs a pod end to end against the stand-in API server, in a real DAG run.

``dag.test()`` runs the task in-process and, for the deferrable operator, its KubernetesPodTrigger inline: so the
sync ``kubernetes`` client, ``kubernetes_asyncio`` and the provider's own code all talk HTTP to the stand-in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client import ApiException

from tests.standins.dags import standin_pods

DAGS = Path(standin_pods.__file__).parent
SECRET_VALUE = "hf_s3cr3t_v4lue"
NAMESPACE = "tuneloop"


@pytest.fixture(scope="module")
def airflow_db(airflow_env) -> Iterator[None]:
    """The session's SQLite metadata DB with tables, and the DAG bundle pointing at this folder's DAG file.

    Airflow may already have been imported (at collection) before ``airflow_env`` set its home, so the ORM is
    reconfigured from the now-current configuration before the tables are created.
    """
    from airflow import settings
    from airflow.utils import db

    bundles = [{"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": str(DAGS)}}]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
        settings.configure_vars()
        settings.reconfigure_orm()
        db.initdb()
        yield


def run_dag(dag) -> tuple[str, str]:
    """Run the DAG once; the state of the run and of its one task."""
    run = dag.test()
    (task,) = run.get_task_instances()
    return run.state, task.state


def task_log(capfd: pytest.CaptureFixture[str]) -> str:
    """What the run logged: in-process, Airflow's structlog renders task and trigger logs to stdout, not to
    stdlib handlers (so ``caplog`` sees none of it) and not to a log file."""
    out, err = capfd.readouterr()
    return out + err


@pytest.fixture
def cluster(kubernetes_standin, airflow_db):
    """The stand-in with the pod's secret in it."""
    kubernetes_standin.secrets[(standin_pods.SECRET_NAME, standin_pods.SECRET_KEY)] = SECRET_VALUE
    return kubernetes_standin


def test_deferrable_pod_runs_logs_and_is_deleted(cluster, capfd):
    # Pending long enough for the trigger to start (after the task defers) and watch the pod's events
    cluster.pending_seconds = 2.0
    assert run_dag(standin_pods.deferrable_pod) == ("success", "success")

    log = task_log(capfd)
    assert "[base] logs: pod started in step train" in log
    assert f"[base] logs: token from the secret: {SECRET_VALUE}" in log
    assert "[base] logs: last words, on stderr" in log
    assert f"The Pod has an Event: Successfully assigned {NAMESPACE}/standin-pod-deferrable" in log  # watched

    manifest = cluster.pods["standin-pod-deferrable"]
    spec = manifest["spec"]
    (container,) = spec["containers"]
    assert container["image"] == "europe-docker.pkg.dev/acme/ml/tuneloop-trainer:0.3.0"
    assert container["command"] == ["python", "-c", standin_pods.POD_SCRIPT]
    assert container["resources"] == standin_pods.RESOURCES
    assert spec["nodeSelector"] == standin_pods.NODE_SELECTOR
    assert spec["tolerations"] == standin_pods.TOLERATIONS
    assert spec["serviceAccountName"] == "tuneloop-trainer"
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": standin_pods.SECRET_NAME,
                                                                "key": standin_pods.SECRET_KEY}}} in container["env"]
    assert SECRET_VALUE not in json.dumps(manifest)

    assert cluster.deleted == ["standin-pod-deferrable"]
    assert not cluster.exists("standin-pod-deferrable", NAMESPACE)
    paths = {(method, path) for method, path, _ in cluster.requests}
    assert ("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/standin-pod-deferrable") in paths


def test_failing_pod_fails_the_task_with_its_exit_code_and_last_lines(cluster, capfd):
    assert run_dag(standin_pods.failing_pod) == ("failed", "failed")

    log = task_log(capfd)
    assert "[base] logs: last words, on stderr" in log
    # the operator's error: the termination message (FallbackToLogsOnError: the log's tail), then the pod
    assert "Pod standin-pod-fails returned a failure.\npod started in step train\n" in log
    assert "'exit_code': 3" in log
    assert cluster.deleted == ["standin-pod-fails"]


def test_sync_pod_follows_its_log_in_the_worker(cluster, capfd):
    cluster.pending_seconds = 0.5  # the worker waits for the start, polling the pod's events
    assert run_dag(standin_pods.sync_pod) == ("success", "success")

    log = task_log(capfd)
    assert f"[base] token from the secret: {SECRET_VALUE}" in log
    assert "[base] last words, on stderr" in log
    assert f"The Pod has an Event: Successfully assigned {NAMESPACE}/standin-pod-sync" in log  # polled
    log_reads = [query for method, path, query in cluster.requests
                 if path == f"/api/v1/namespaces/{NAMESPACE}/pods/standin-pod-sync/log"]
    assert {"follow": "True", "timestamps": "True", "container": "base"}.items() <= log_reads[0].items()
    assert cluster.deleted == ["standin-pod-sync"]


# --- the stand-in's own behaviour where the operator runs do not reach, through the real client ---------------


@pytest.fixture
def core_v1(kubernetes_standin):
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(str(kubernetes_standin.kubeconfig)))


def wait_for(predicate, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def bare_pod(name: str, script: str, env: list[dict] | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "containers": [
                {"name": "base", "image": "any", "command": ["python", "-c", script], "env": env or []}]}}


def test_a_missing_secret_keeps_the_pod_pending_like_the_kubelet(core_v1):
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "token"}}}]
    core_v1.create_namespaced_pod("default", bare_pod("no-secret", "print('never')", env))
    wait_for(lambda: core_v1.read_namespaced_pod("no-secret", "default").status.container_statuses[0].state.waiting
             .reason == "CreateContainerConfigError")

    pod = core_v1.read_namespaced_pod("no-secret", "default")
    assert pod.status.phase == "Pending"
    assert pod.status.container_statuses[0].state.waiting.message == 'secret "absent" not found'
    events = core_v1.list_namespaced_event("default", field_selector="involvedObject.name=no-secret").items
    assert ("Warning", 'Error: secret "absent" not found') in [(e.type, e.message) for e in events]
    with pytest.raises(ApiException) as waiting:
        core_v1.read_namespaced_pod_log("no-secret", "default", container="base")
    assert waiting.value.status == 400


def test_deleting_a_running_pod_kills_its_process_and_removes_it(core_v1, kubernetes_standin):
    script = "import time\nprint('alive', flush=True)\ntime.sleep(60)"
    core_v1.create_namespaced_pod("default", bare_pod("sleeper", script))
    wait_for(lambda: kubernetes_standin.logs("sleeper") == "alive\n")
    status = core_v1.read_namespaced_pod("sleeper", "default").status.container_statuses[0]
    pid = int(status.container_id.removeprefix("standin://"))

    started = time.monotonic()
    core_v1.delete_namespaced_pod("sleeper", "default")
    assert time.monotonic() - started < 5

    with pytest.raises(ApiException) as gone:
        core_v1.read_namespaced_pod("sleeper", "default")
    assert gone.value.status == 404
    wait_for(lambda: not Path(f"/proc/{pid}").exists())
    events = core_v1.list_namespaced_event("default", field_selector="involvedObject.name=sleeper").items
    assert "Killing" in [e.reason for e in events]
