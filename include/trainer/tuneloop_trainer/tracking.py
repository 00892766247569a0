"""Logging training parameters and metrics to an MLflow run the orchestrator already created.

The trainer never creates runs: the orchestrator owns the run (and its dataset and registry links) and passes
``{"tracking_uri", "run_id"}`` in the spec. mlflow is imported only when a run is configured, so the trainer
works without a tracking server.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tuneloop_trainer.arguments import SpecError
from tuneloop_trainer.spec import MlflowSpec

log = logging.getLogger(__name__)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"lora": {"r": 8}}`` -> ``{"lora.r": "8"}`` (MLflow params are flat strings)."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)
    return flat


class RunLogger:
    """Writes to one existing MLflow run; every method is a no-op when the spec has no ``mlflow`` section."""

    def __init__(self, target: MlflowSpec | None) -> None:
        self._client = None
        self._run_id = target.run_id if target else None
        if target is None:
            return
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=target.tracking_uri)
        try:
            self._client.get_run(target.run_id)
        except MlflowException as error:
            raise SpecError(f"mlflow.run_id {target.run_id!r} not found at {target.tracking_uri}: {error.message}"
                            "; create the run before training") from error

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params not yet on the run; a changed value (e.g. a longer resumed run) is kept and warned about."""
        if self._client is None:
            return
        from mlflow.entities import Param

        existing = self._client.get_run(self._run_id).data.params
        new = {}
        for key, value in flatten(params).items():
            if key not in existing:
                new[key] = value
            elif existing[key] != value:
                log.warning("mlflow param %s already logged as %r, not changing it to %r", key, existing[key], value)
        if new:
            self._client.log_batch(self._run_id, params=[Param(k, v) for k, v in new.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self._client is None:
            return
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        self._client.log_batch(
            self._run_id, metrics=[Metric(k, float(v), timestamp, step) for k, v in metrics.items()])
