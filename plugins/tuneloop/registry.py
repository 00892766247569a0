"""The MLflow model registry, seen through tuneloop's three aliases. The only module that moves registry state.

Aliases, never stages (deprecated in MLflow): ``production`` is what serving loads
(``models:/<name>@production``), ``previous`` is the default rollback target, ``candidate`` is the version under
validation. Every version carries tags: ``airflow_run_id`` (also the idempotency key of registration),
``dataset_id``, ``verdict``, metrics. MLflow keeps no alias history, so :mod:`tuneloop.deployment` writes every
move to the store as well.

``mlflow`` is imported inside functions: importing this module stays cheap (DAG parsing, CLI start-up). Errors
are :class:`RegistryError` chained to the MLflow exception; "not found" is :class:`RegistryNotFoundError`, never
a silent ``None`` -- except for an alias that is not set, which is a normal state (no production model yet) and
reads as ``None``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

Alias = Literal["production", "previous", "candidate", "canary", "green"]
ALIASES: tuple[Alias, ...] = ("production", "previous", "candidate", "canary", "green")
AIRFLOW_RUN_ID_TAG = "airflow_run_id"
ARTIFACT_NAME = "model"
_NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
_ALREADY_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")
# One pyfunc load at a time in a process: MLflow's models-from-code loader keeps process-wide state while it runs
# (the model_config, the model being defined, a ``dbutils`` stand-in in sys.modules), so two loads at once -- two
# routers, or a router beside an evaluation -- could swap credentials or models.
_LOADING = threading.Lock()


class RegistryError(RuntimeError):
    """A registry call failed; the message names the model and version, ``__cause__`` holds MLflow's error."""


class RegistryNotFoundError(RegistryError):
    """The registered model or model version does not exist."""


class RegistryTimeoutError(RegistryError):
    """A model version did not become READY before the deadline."""


@dataclass(frozen=True)
class ModelVersionInfo:
    """A read-only view of one registered model version."""

    name: str
    version: str
    status: str
    run_id: str | None
    source: str
    created_at: datetime | None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def archived(self) -> bool:
        return self.tags.get("archived", "").lower() == "true"

    @classmethod
    def from_mlflow(cls, mv: ModelVersion) -> ModelVersionInfo:
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC) if mv.creation_timestamp else None
        return cls(
            name=mv.name,
            version=str(mv.version),
            status=str(mv.status),
            run_id=mv.run_id or None,
            source=mv.source,
            created_at=created,
            tags=dict(mv.tags or {}),
            aliases=tuple(mv.aliases or ()),
        )


def tag_value(value: Any) -> str:
    """MLflow tags are strings: strings pass through, everything else (numbers, dicts of metrics) as JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


class ModelRegistry:
    """Facade over ``mlflow.MlflowClient`` for one registered model.

    :param tracking_uri: MLflow tracking URI (runs, logged models, artifacts).
    :param registry_uri: model registry URI; defaults to the tracking URI.
    :param model_name: the registered model (one per pipeline).
    :param max_wait_s: deadline for a new version to become READY.
    :param poll_interval_s: pause between READY polls.
    :param clock: monotonic clock, injectable for tests.
    :param sleep: sleep function, injectable for tests.
    """

    def __init__(
        self,
        tracking_uri: str,
        registry_uri: str | None,
        model_name: str,
        *,
        max_wait_s: float = 300.0,
        poll_interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not model_name:
            raise RegistryError("model_name must not be empty")
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.model_name = model_name
        self.max_wait_s = max_wait_s
        self.poll_interval_s = poll_interval_s
        self._clock = clock
        self._sleep = sleep
        self._mlflow_client: MlflowClient | None = None

    def __repr__(self) -> str:
        return f"ModelRegistry(model_name={self.model_name!r}, registry_uri={self.registry_uri!r})"

    # -- plumbing ---------------------------------------------------------------------------------------------

    @property
    def client(self) -> MlflowClient:
        if self._mlflow_client is None:
            from mlflow import MlflowClient

            self._mlflow_client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        return self._mlflow_client

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn MLflow failures into RegistryError (RegistryNotFoundError for missing resources), chained."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except RegistryError:
            raise
        except MlflowException as e:
            kind = RegistryNotFoundError if e.error_code == _NOT_FOUND else RegistryError
            raise kind(f"{what} failed for model {self.model_name!r}: {e.message}") from e
        except Exception as e:  # unsupported URI schemes, connection errors: still a registry failure
            raise RegistryError(f"{what} failed for model {self.model_name!r} at {self.registry_uri}: {e}") from e

    @contextmanager
    def active(self) -> Iterator[None]:
        """Point MLflow's fluent API (``log_model``, ``load_model("models:/...")``) at this registry, then restore.

        The fluent API reads process-wide settings (and sets ``MLFLOW_TRACKING_URI``/``MLFLOW_REGISTRY_URI`` for
        subprocesses); both are put back on exit so nothing leaks into the caller's process.
        """
        import mlflow
        from mlflow.tracking import fluent
        from mlflow.tracking._model_registry import utils as registry_state
        from mlflow.tracking._tracking_service import utils as tracking_state

        # The module-level values (None when unset), not get_tracking_uri()'s resolved default: restoring a
        # resolved default would pin it and make later MLFLOW_TRACKING_URI changes ineffective.
        saved_tracking = getattr(tracking_state, "_tracking_uri", None)
        saved_registry = getattr(registry_state, "_registry_uri", None)
        keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")
        saved_env = {k: os.environ.get(k) for k in keys}
        # An experiment made active elsewhere in the process (``mlflow.set_experiment``, which also exports
        # MLFLOW_EXPERIMENT_ID) would make ``start_run(run_id=...)`` refuse a run of another experiment.
        saved_experiment = fluent._active_experiment_id
        fluent._active_experiment_id = None
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri)
        try:
            yield
        finally:
            fluent._active_experiment_id = saved_experiment
            mlflow.set_tracking_uri(saved_tracking)  # type: ignore[arg-type]  # None means "unset"
            mlflow.set_registry_uri(saved_registry)  # type: ignore[arg-type]
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def model_uri(self, alias_or_version: str) -> str:
        """``models:/<name>@<alias>`` for an alias, ``models:/<name>/<version>`` for a version number."""
        if alias_or_version in ALIASES:
            return f"models:/{self.model_name}@{alias_or_version}"
        return f"models:/{self.model_name}/{alias_or_version}"

    # -- reads ------------------------------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether the registered model exists (False before the first registration)."""
        try:
            self.aliases()
        except RegistryNotFoundError:
            return False
        return True

    def aliases(self) -> dict[str, str]:
        """All aliases of the registered model: alias -> version."""
        with self._errors("reading aliases"):
            return {k: str(v) for k, v in self.client.get_registered_model(self.model_name).aliases.items()}

    def alias_version(self, alias: Alias) -> str | None:
        """The version an alias points to, or None when the alias is not set (or nothing is registered yet:
        before the first registration there is no production model, which callers handle like an unset alias)."""
        _check_alias(alias)
        try:
            return self.aliases().get(alias)
        except RegistryNotFoundError:
            return None

    def production_version(self) -> str | None:
        return self.alias_version("production")

    def previous_version(self) -> str | None:
        return self.alias_version("previous")

    def candidate_version(self) -> str | None:
        return self.alias_version("candidate")

    def get_version(self, version: str) -> ModelVersionInfo:
        """One version; RegistryNotFoundError when it does not exist."""
        with self._errors(f"reading version {version}"):
            return ModelVersionInfo.from_mlflow(self.client.get_model_version(self.model_name, str(version)))

    def list_versions(self) -> list[ModelVersionInfo]:
        """Every version of the model, newest first."""
        with self._errors("listing versions"):
            found = self.client.search_model_versions(f"name = '{_quote(self.model_name)}'")
        return sorted((ModelVersionInfo.from_mlflow(v) for v in found), key=lambda v: int(v.version), reverse=True)

    def find_version_by_run(self, airflow_run_id: str) -> str | None:
        """The version registered by an Airflow run (the idempotency key), or None."""
        query = f"name = '{_quote(self.model_name)}' and tags.{AIRFLOW_RUN_ID_TAG} = '{_quote(airflow_run_id)}'"
        with self._errors(f"searching versions of run {airflow_run_id!r}"):
            found = list(self.client.search_model_versions(query))
        if not found:
            return None
        return str(min(int(v.version) for v in found))

    # -- writes -----------------------------------------------------------------------------------------------

    def ensure_model(self, description: str | None = None) -> None:
        """Create the registered model unless it exists."""
        from mlflow.exceptions import MlflowException

        with self._errors("creating the registered model"):
            try:
                self.client.create_registered_model(self.model_name, description=description)
                log.info("created registered model %s", self.model_name)
            except MlflowException as e:
                if e.error_code not in _ALREADY_EXISTS:
                    raise

    def set_alias(self, alias: Alias, version: str) -> None:
        _check_alias(alias)
        self.get_version(version)  # not found -> error, before any move
        with self._errors(f"setting alias {alias} -> {version}"):
            self.client.set_registered_model_alias(self.model_name, alias, str(version))
        log.info("model %s: alias %s -> version %s", self.model_name, alias, version)

    def remove_alias(self, alias: Alias) -> str | None:
        """Remove an alias; returns the version it pointed to (None when it was not set)."""
        current = self.alias_version(alias)
        if current is not None:
            with self._errors(f"removing alias {alias}"):
                self.client.delete_registered_model_alias(self.model_name, alias)
            log.info("model %s: alias %s removed (was version %s)", self.model_name, alias, current)
        return current

    def set_tags(self, version: str, tags: Mapping[str, Any]) -> None:
        """Set version tags; non-string values are stored as JSON."""
        self.get_version(version)
        with self._errors(f"tagging version {version}"):
            for key, value in tags.items():
                self.client.set_model_version_tag(self.model_name, str(version), key, tag_value(value))

    def delete_tag(self, version: str, key: str) -> None:
        with self._errors(f"deleting tag {key} of version {version}"):
            self.client.delete_model_version_tag(self.model_name, str(version), key)

    def wait_until_ready(self, version: str) -> ModelVersionInfo:
        """Poll until the version is READY; RegistryTimeoutError after ``max_wait_s``, RegistryError if it failed."""
        deadline = self._clock() + self.max_wait_s
        while True:
            info = self.get_version(version)
            if info.status == "READY":
                return info
            if info.status == "FAILED_REGISTRATION":
                raise RegistryError(f"model {self.model_name!r} version {version} failed registration")
            if self._clock() >= deadline:
                raise RegistryTimeoutError(
                    f"model {self.model_name!r} version {version} exceeded max wait of {self.max_wait_s:g} s "
                    f"to become READY (status {info.status})"
                )
            self._sleep(self.poll_interval_s)

    def register_candidate(
        self,
        model_dir: Path | str,
        *,
        run_id: str,
        tags: Mapping[str, Any] | None = None,
        serving_code: Path | str | None = None,
        airflow_run_id: str | None = None,
        pip_requirements: Sequence[str] | None = None,
        signature: Any = None,
        model_config: Mapping[str, Any] | None = None,
    ) -> str:
        """Log ``model_dir`` as an MLflow pyfunc into MLflow run ``run_id``, register it, point ``candidate`` at it.

        ``airflow_run_id`` (or ``tags["airflow_run_id"]``) is required: it is the idempotency key. When a version
        with that tag exists (a retried task) it is returned -- after making sure it is READY, tagged and holds the
        ``candidate`` alias -- instead of registering twice. The model is logged "from code": ``serving_code``
        (default: tuneloop_trainer's serving.py) defines the pyfunc and ``model_dir`` travels as its ``model``
        artifact. Non-string tag values (metrics) are stored as JSON. ``signature``: the pyfunc's MLflow signature
        (e.g. the chat model's ``max_new_tokens`` param; MLflow drops params a signature does not declare).
        ``model_config``: the keys ``load_pyfunc(model_config=...)`` may set at load time, with their defaults
        (MLflow ignores keys the logged model does not declare); never a secret: it is stored with the model.
        """
        key = airflow_run_id or (tags or {}).get(AIRFLOW_RUN_ID_TAG)
        if not key:
            raise RegistryError(f"register_candidate needs airflow_run_id (or a tags[{AIRFLOW_RUN_ID_TAG!r}])")
        all_tags = {**{k: tag_value(v) for k, v in (tags or {}).items()}, AIRFLOW_RUN_ID_TAG: str(key)}
        version = self.find_version_by_run(str(key)) if self.exists() else None
        if version is not None:
            log.info("model %s: run %s already registered version %s", self.model_name, key, version)
        else:
            model_dir = Path(model_dir)
            if not model_dir.is_dir():
                raise RegistryError(f"model directory {model_dir} does not exist")
            code, requirements = _serving(serving_code, pip_requirements)
            self.ensure_model()
            model_uri, model_id = self._log_model(model_dir, run_id, code, requirements, signature, model_config)
            # the SQL store resolves models:/<model_id> through the fluent tracking URI, hence active()
            with self.active(), self._errors(f"registering {model_uri}"):
                created = self.client.create_model_version(
                    self.model_name, source=model_uri, run_id=run_id, tags=all_tags, model_id=model_id,
                    await_creation_for=0,
                )
            version = str(created.version)
            log.info("model %s: registered version %s from run %s", self.model_name, version, run_id)
        self.wait_until_ready(version)
        self.set_tags(version, all_tags)
        self.set_alias("candidate", version)
        return version

    def _log_model(self, model_dir: Path, run_id: str, code: Path, requirements: list[str],
                   signature: Any = None, model_config: Mapping[str, Any] | None = None) -> tuple[str, str]:
        import mlflow

        with self.active(), self._errors(f"logging {model_dir} into run {run_id}"), mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name=ARTIFACT_NAME,
                    python_model=str(code),
                    artifacts={ARTIFACT_NAME: str(model_dir)},
                    pip_requirements=requirements,
                    signature=signature,
                    model_config=dict(model_config) if model_config else None,
                )
        return info.model_uri, info.model_id

    def load_pyfunc(self, alias_or_version: str = "production", model_config: dict[str, Any] | None = None) -> Any:
        """Load the served model through its alias (exactly what serving does) or a version number.
        ``model_config``: what its ``load_context`` needs besides the artifacts (a managed model's API
        credentials), held in memory only."""
        import mlflow

        uri = self.model_uri(alias_or_version)
        with _LOADING, self.active(), self._errors(f"loading {uri}"):
            return mlflow.pyfunc.load_model(uri, model_config=model_config)

    def download_model_dir(self, alias_or_version: str, target: Path | str) -> Path:
        """Copy the model directory a version was registered from (its ``model`` artifact) into ``target``.

        This is how training starts from production: the files are the ones that passed the gate, not a local
        copy that may have drifted.
        """
        import mlflow
        from mlflow.models import Model

        uri = self.model_uri(alias_or_version)
        target = Path(target)
        with tempfile.TemporaryDirectory() as tmp, self.active(), self._errors(f"downloading {uri}"):
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
            artifacts = Model.load(str(local / "MLmodel")).flavors.get("python_function", {}).get("artifacts") or {}
            if ARTIFACT_NAME not in artifacts:
                raise RegistryError(f"{uri} has no {ARTIFACT_NAME!r} artifact; it was not registered by tuneloop")
            target.mkdir(parents=True, exist_ok=True)
            shutil.copytree(local / artifacts[ARTIFACT_NAME]["path"], target, dirs_exist_ok=True)
        return target


def _check_alias(alias: str) -> None:
    if alias not in ALIASES:
        raise RegistryError(f"unknown alias {alias!r}; tuneloop uses {', '.join(ALIASES)}")


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def _serving(code: Path | str | None, requirements: Sequence[str] | None) -> tuple[Path, list[str]]:
    """The pyfunc definition file and its pip requirements; defaults come from tuneloop_trainer (torch-free)."""
    if code is None or requirements is None:
        try:
            import tuneloop_trainer
        except ImportError as e:
            raise RegistryError(
                "no serving_code/pip_requirements given and tuneloop_trainer is not importable "
                "(install tuneloop or put include/trainer on PYTHONPATH)"
            ) from e
        code = Path(tuneloop_trainer.serving_path()) if code is None else code
        requirements = list(tuneloop_trainer.SERVING_REQUIREMENTS) if requirements is None else requirements
    code = Path(code)
    if not code.is_file():
        raise RegistryError(f"serving code {code} does not exist")
    return code, list(requirements)
