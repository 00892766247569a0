"""Training backends: where the trainer runs. ``local`` (a subprocess) is the default; ``kubernetes`` and ``gke``
run it in a pod, ``gce`` on a VM. ``openai`` and ``vertex`` run no trainer: OpenAI's fine-tuning API or Vertex AI's
Gemini tuning trains the model (:mod:`tuneloop.managed`). Choose with ``training.backend`` or the Params form."""

from __future__ import annotations

from tuneloop.backends.base import TrainerFailed
from tuneloop.backends.local import LocalBackend

BACKENDS = ("local", "kubernetes", "gke", "gce", "openai", "vertex")
READ_THE_BUCKET = ("kubernetes", "gke", "gce", "vertex")  # another machine reads the run's folder
MANAGED = ("openai", "vertex")  # a provider trains from the checked dataset; no trainer runs

__all__ = ["BACKENDS", "MANAGED", "READ_THE_BUCKET", "LocalBackend", "TrainerFailed"]
