"""Factories for the stock pod operators that run a trainer step on the ``kubernetes`` or ``gke`` backend.

The spec comes from :func:`tuneloop.backends.pod.pod_arguments`; these only choose the operator and add where
the cluster is. Both run deferrable (the worker slot is freed while the pod runs), stream the trainer's log into
the task log, delete the pod when it ends, and take a slot of the ``gpu`` pool.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.google.cloud.operators.kubernetes_engine import GKEStartPodOperator

from tuneloop.backends.pod import pod_arguments
from tuneloop.config import TrainingConfig


def trainer_pod_operator(
    *, task_id: str, training: TrainingConfig, backend: str, run_id: str, step: str, args: list[str],
    env: dict[str, str] | None = None, **operator_kwargs: Any,
) -> KubernetesPodOperator:
    """A KubernetesPodOperator (``kubernetes``) or GKEStartPodOperator (``gke``) for one trainer step."""
    kwargs = pod_arguments(training.pod, run_id=run_id, step=step, args=args, env=env) | operator_kwargs
    if backend == "gke":
        gke = training.gke
        if not gke.project_id:
            raise ValueError("training.gke.project_id: required by the gke backend")
        return GKEStartPodOperator(task_id=task_id, project_id=gke.project_id, location=gke.location,
                                   cluster_name=gke.cluster_name, gcp_conn_id=gke.gcp_conn_id, **kwargs)
    if backend == "kubernetes":
        return KubernetesPodOperator(task_id=task_id, kubernetes_conn_id=training.pod.kubernetes_conn_id, **kwargs)
    raise ValueError(f"training.backend: {backend!r} does not run in a pod (kubernetes, gke)")
