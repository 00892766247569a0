"""Shared by test_registry.py and test_deployment.py: a real local MLflow per test, and an in-memory history.

Creating an MLflow SQLite database runs every schema migration (seconds), so one template database is built per
test session and each test gets a copy: real MLflow, isolated state, no shared model names.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient

from tuneloop.history import DeploymentEvent
from tuneloop.registry import ModelRegistry

SERVING_CODE = Path(__file__).with_name("serving_upper.py")


class MemoryHistory:
    """The store's deployment-history API, in memory (tuneloop.deployment.DeploymentHistory)."""

    def __init__(self) -> None:
        self.events: list[DeploymentEvent] = []

    def record_deployment(self, event: DeploymentEvent) -> None:
        self.events.append(event)

    def deployment_history(self, model_name: str | None = None, limit: int = 50) -> list[DeploymentEvent]:
        return [e for e in reversed(self.events) if model_name in (None, e.model_name)][:limit]


def template_db(base: Path) -> Path:
    """Build the migrated template database once (cwd moved so MLflow's defaults land in ``base``)."""
    path = base / "mlflow-template.db"
    if not path.exists():
        cwd = os.getcwd()
        os.chdir(base)
        try:
            MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
        finally:
            os.chdir(cwd)
    return path


@dataclass
class MlflowEnv:
    root: Path
    uri: str
    client: MlflowClient
    experiment_id: str

    @classmethod
    def create(cls, root: Path, template: Path) -> MlflowEnv:
        db = root / "mlflow.db"
        shutil.copyfile(template, db)
        uri = f"sqlite:///{db}"
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiment_id = client.create_experiment("tuneloop-test", artifact_location=(root / "artifacts").as_uri())
        return cls(root, uri, client, experiment_id)

    def registry(self, model_name: str = "speech-to-text", **kwargs) -> ModelRegistry:
        return ModelRegistry(self.uri, self.uri, model_name, **kwargs)

    def new_run(self) -> str:
        return self.client.create_run(self.experiment_id).info.run_id

    def model_dir(self, tag: str) -> Path:
        """A stand-in "HF model dir": the test serving code answers with this tag."""
        path = self.root / "models" / tag
        path.mkdir(parents=True, exist_ok=True)
        (path / "tag.txt").write_text(tag)
        return path

    def quick_version(self, registry: ModelRegistry, airflow_run_id: str) -> str:
        """A READY version without logging a pyfunc (for tests of alias logic, ~100x cheaper)."""
        registry.ensure_model()
        version = self.client.create_model_version(
            registry.model_name, source=self.model_dir(airflow_run_id).as_uri(), tags={"airflow_run_id": airflow_run_id}
        )
        return str(version.version)
