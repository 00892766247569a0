"""The trainer's command line: the one contract every backend shares.

A local subprocess, a Kubernetes/GKE pod and a GCE VM all run ``python -m tuneloop_trainer <step> ...`` with
these arguments; only where it runs and how files get there differ.
"""

from __future__ import annotations

from collections.abc import Sequence

ENTRYPOINT = ("python", "-m", "tuneloop_trainer")


def train_args(spec_uri: str) -> list[str]:
    """``train``: everything else is in the spec (dataset, base model, output, hyperparameters)."""
    return ["train", "--spec", spec_uri]


def evaluate_args(model_uri: str, jobs: Sequence[tuple[str, str]], batch_size: int) -> list[str]:
    """``evaluate``: one model, several (data, output) pairs, transcribed in one process."""
    if not jobs:
        raise ValueError("evaluate needs at least one (data, output) pair")
    return ["evaluate", "--model-dir", model_uri, "--data", *(d for d, _ in jobs), "--output",
            *(o for _, o in jobs), "--batch-size", str(batch_size)]


def evaluate_jobs_args(jobs_uri: str) -> list[str]:
    """``evaluate-jobs``: several models, each with its (data, output) pairs, in one process (the jobs file is
    ``{"batch_size": N, "jobs": [{"model_dir", "data": [...], "output": [...]}]}``)."""
    return ["evaluate-jobs", "--jobs", jobs_uri]
