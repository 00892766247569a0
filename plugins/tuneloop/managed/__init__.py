"""Managed fine-tuning: a provider's API trains the model (OpenAI, Vertex AI), tuneloop keeps every contract.

The trainer backends (``local``, ``kubernetes``, ``gke``, ``gce``) run tuneloop's trainer somewhere; a managed
backend replaces the trainer with a provider's fine-tuning job. Everything around it stays as it is: the run's
folder holds the job's record and results, ``training/model`` is a model directory (holding a reference to the
provider's model instead of weights: :mod:`tuneloop.managed.reference`), evaluation writes the same predictions
files, the same gate judges them and the registry versions the reference like any model.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def steps(provider: str) -> ModuleType:
    """The provider's steps of a run (:mod:`~tuneloop.managed.openai_training`,
    :mod:`~tuneloop.managed.vertex_training`): each offers ``configured_base``, ``priced_model``,
    ``served_price_name``, ``prepare``, ``record_path``, ``start``, ``finish`` and ``evaluate`` with the same
    signatures."""
    return importlib.import_module(f"tuneloop.managed.{provider}_training")
