"""What every training backend shares: where the trainer's log goes and how its failure is reported.

Every backend runs the same trainer command line (:mod:`tuneloop.backends.command`); only where it runs differs:
``local`` a subprocess here (:mod:`tuneloop.backends.local`), ``kubernetes`` / ``gke`` a pod
(:mod:`tuneloop.backends.pod`), ``gce`` a VM (:mod:`tuneloop.backends.gce`). Steps exchange files in the run's
folder (spec, model, predictions), never Python objects.
"""

from __future__ import annotations

from typing import Callable

LogLine = Callable[[str], None]


class TrainerFailed(RuntimeError):
    """The trainer exited with an error; the message carries the exit status and the end of its log."""
