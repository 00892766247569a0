"""DAGs of one stock KubernetesPodOperator each, run by ``tests/standins/test_kubernetes_api.py`` against the stand-in
Kubernetes API server.

They live in a DAG file because ``dag.test()`` only runs a DAG that its bundle (this folder) has put in the
metadata DB. The pod asks for what a trainer pod asks for (GPUs, a node pool, tolerations, a token from a Secret),
prints the token it got through its environment, runs long enough for the operator to watch it running, and exits
with ``EXIT_CODE``.
"""

from __future__ import annotations

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG
from kubernetes.client import models as k8s

SECRET_NAME = "hf-credentials"
SECRET_KEY = "token"
RESOURCES = {"requests": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"},
             "limits": {"memory": "1Gi", "nvidia.com/gpu": "1"}}
NODE_SELECTOR = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
POD_SCRIPT = """\
import os, sys, time
print("pod started in step", os.environ["STEP"])
print("token from the secret:", os.environ["HF_TOKEN"])
time.sleep(float(os.environ["RUN_SECONDS"]))
print("last words, on stderr", file=sys.stderr)
sys.exit(int(os.environ["EXIT_CODE"]))"""  # no trailing newline: Jinja drops it when rendering ``cmds``


def pod_dag(dag_id: str, *, deferrable: bool, exit_code: int) -> DAG:
    """One DAG, one pod: ``python -c POD_SCRIPT`` with a plain env, a secretKeyRef env and GPU scheduling."""
    with DAG(dag_id, schedule=None, catchup=False, tags=["test"], doc_md=__doc__) as dag:
        KubernetesPodOperator(
            task_id="pod",
            name=dag_id.replace("_", "-"),
            random_name_suffix=False,
            namespace="tuneloop",
            image="europe-docker.pkg.dev/acme/ml/tuneloop-trainer:0.3.0",
            cmds=["python", "-c", POD_SCRIPT],
            env_vars=[
                k8s.V1EnvVar(name="STEP", value="train"),
                k8s.V1EnvVar(name="RUN_SECONDS", value="1"),
                k8s.V1EnvVar(name="EXIT_CODE", value=str(exit_code)),
                k8s.V1EnvVar(name="HF_TOKEN", value_from=k8s.V1EnvVarSource(
                    secret_key_ref=k8s.V1SecretKeySelector(name=SECRET_NAME, key=SECRET_KEY))),
            ],
            container_resources=k8s.V1ResourceRequirements(**RESOURCES),
            node_selector=NODE_SELECTOR,
            tolerations=[k8s.V1Toleration(**t) for t in TOLERATIONS],
            service_account_name="tuneloop-trainer",
            labels={"app.kubernetes.io/name": "tuneloop-trainer"},
            deferrable=deferrable,
            get_logs=True,
            on_finish_action="delete_pod",
            termination_message_policy="FallbackToLogsOnError",  # a failure's message ends with the log's tail
            poll_interval=0.2,  # the trigger's status polls (deferrable)
            startup_check_interval_seconds=1,  # polls while Pending (the provider's default is 5 s)
            startup_timeout_seconds=30,
        )
    return dag


deferrable_pod = pod_dag("standin_pod_deferrable", deferrable=True, exit_code=0)
failing_pod = pod_dag("standin_pod_fails", deferrable=True, exit_code=3)
sync_pod = pod_dag("standin_pod_sync", deferrable=False, exit_code=0)
