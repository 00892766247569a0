"""Training backends: where the trainer runs. ``local`` (a subprocess) is the default; ``kubernetes`` and ``gke``
run it in a pod, ``gce`` on a VM. ``openai`` runs no trainer: OpenAI's fine-tuning API trains the model
(:mod:`tuneloop.managed`). Choose with ``training.backend`` or the Params form."""

from __future__ import annotations

from tuneloop.backends.base import TrainerFailed
from tuneloop.backends.local import LocalBackend

BACKENDS = ("local", "kubernetes", "gke", "gce", "openai")
REMOTE_TRAINERS = ("kubernetes", "gke", "gce")  # the trainer runs on another machine: it reads the run's bucket
MANAGED = ("openai",)  # a provider trains: the worker uploads the dataset, no trainer runs

__all__ = ["BACKENDS", "MANAGED", "REMOTE_TRAINERS", "LocalBackend", "TrainerFailed"]
