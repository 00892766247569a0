"""The trainer as a Kubernetes pod: everything the ``kubernetes`` and ``gke`` backends put in the pod spec.

Plain functions over :class:`~tuneloop.config.PodConfig` returning Kubernetes client models, so the exact spec is
testable without a cluster; :mod:`tuneloop.operators.pods` hands them to the stock KubernetesPodOperator /
GKEStartPodOperator. No secret value ever enters the spec: ``secret_env`` becomes ``secretKeyRef`` references,
and cloud access comes from the pod's service account.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any

from kubernetes.client import models as k8s

from tuneloop.backends.command import ENTRYPOINT
from tuneloop.config import PodConfig
from tuneloop.spent import Spent, machine_hours

CONTAINER_NAME = "base"  # the name KubernetesPodOperator watches for logs and exit status
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def pod_name(run_id: str, step: str) -> str:
    """A DNS-1123 pod name for one step of one run: readable prefix, hash suffix (unique per run id and step)."""
    digest = hashlib.sha256(f"{run_id}/{step}".encode()).hexdigest()[:10]
    readable = _NOT_DNS.sub("-", f"tuneloop-{step}-{run_id}".lower()).strip("-")[:50].rstrip("-")
    return f"{readable}-{digest}"


def resources(config: PodConfig) -> k8s.V1ResourceRequirements:
    """CPU and memory requested; GPUs requested and limited alike (extended resources must be equal)."""
    requests: dict[str, str] = {"cpu": config.cpu, "memory": config.memory}
    limits: dict[str, str] = {"memory": config.memory}
    if config.gpus:
        requests[config.gpu_resource] = str(config.gpus)
        limits[config.gpu_resource] = str(config.gpus)
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


def tolerations(config: PodConfig) -> list[k8s.V1Toleration]:
    return [k8s.V1Toleration(**t) for t in config.tolerations]


def environment(config: PodConfig, plain: dict[str, str]) -> list[k8s.V1EnvVar]:
    """Plain values (URIs, run ids) as they are; secrets only as references to Kubernetes Secrets."""
    env = [k8s.V1EnvVar(name=name, value=value) for name, value in sorted(plain.items())]
    for name, ref in sorted(config.secret_env.items()):
        secret, key = ref.split(":")
        env.append(k8s.V1EnvVar(name=name, value_from=k8s.V1EnvVarSource(
            secret_key_ref=k8s.V1SecretKeySelector(name=secret, key=key))))
    return env


def pod_arguments(config: PodConfig, *, run_id: str, step: str, args: list[str],
                  env: dict[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for KubernetesPodOperator (and GKEStartPodOperator) running one trainer step."""
    return {
        "name": pod_name(run_id, step),
        "random_name_suffix": False,
        "namespace": config.namespace,
        "image": config.image,
        "cmds": list(ENTRYPOINT),
        "arguments": list(args),
        "container_resources": resources(config),
        "node_selector": dict(config.node_selector),
        "tolerations": tolerations(config),
        "service_account_name": config.service_account,
        "env_vars": environment(config, dict(config.env) | (env or {})),
        "labels": {"app.kubernetes.io/name": "tuneloop-trainer", "tuneloop/step": step},
        "startup_timeout_seconds": config.startup_timeout_seconds,
        "get_logs": True,
        "termination_message_policy": "FallbackToLogsOnError",  # a failed pod's error carries its last log lines
        "on_finish_action": "delete_pod",
        "deferrable": True,
    }


def failed_pod_spent(pod: k8s.V1Pod | None, now: datetime) -> Spent | None:
    """What a training pod spent when its step failed (:mod:`tuneloop.spent`): its hours from creation to ``now``;
    None for a pod never created (no creation time) or one that succeeded (the trainer's own runtime prices it)."""
    if pod is None or pod.metadata is None or pod.metadata.creation_timestamp is None:
        return None
    if pod.status is not None and pod.status.phase == "Succeeded":
        return None
    return machine_hours(pod.metadata.name, pod.metadata.creation_timestamp, now, "failed")
