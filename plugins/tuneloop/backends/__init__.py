"""Training backends: where the trainer runs. ``local`` (a subprocess) is the default; pods, VMs and the
OpenAI API implement the same interface later. Choose with ``training.backend`` or the Params form."""

from __future__ import annotations

from tuneloop.backends.base import TrainerFailed, TrainingBackend
from tuneloop.backends.local import LocalBackend


def get_backend(name: str, *, timeout_s: float) -> TrainingBackend:
    """Return the backend called ``name``; unknown names are an error that lists the known ones."""
    backends = {"local": lambda: LocalBackend(timeout_s=timeout_s)}
    if name not in backends:
        raise ValueError(f"training.backend: unknown backend {name!r}; known: {', '.join(sorted(backends))}")
    return backends[name]()


__all__ = ["LocalBackend", "TrainerFailed", "TrainingBackend", "get_backend"]
