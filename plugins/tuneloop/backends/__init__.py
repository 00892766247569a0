"""Training backends: where the trainer runs. ``local`` (a subprocess) is the default; ``kubernetes`` and ``gke``
run it in a pod, ``gce`` on a VM. Choose with ``training.backend`` or the Params form."""

from __future__ import annotations

from tuneloop.backends.base import TrainerFailed
from tuneloop.backends.local import LocalBackend

BACKENDS = ("local", "kubernetes", "gke", "gce")

__all__ = ["BACKENDS", "LocalBackend", "TrainerFailed"]
