"""ModelRegistry against a real local MLflow (SQLite + artifact folder in tmp_path)."""

from __future__ import annotations

import itertools
import json
import os

import mlflow
import pytest

from tests.tuneloop.registry_testing import SERVING_CODE, MlflowEnv
from tuneloop.registry import (
    ModelRegistry,
    ModelVersionInfo,
    RegistryError,
    RegistryNotFoundError,
    RegistryTimeoutError,
)


def _register(env: MlflowEnv, registry: ModelRegistry, airflow_run_id: str, tag: str, run_id: str | None = None) -> str:
    return registry.register_candidate(
        env.model_dir(tag),
        run_id=run_id or env.new_run(),
        tags={"airflow_run_id": airflow_run_id, "dataset_id": "ds-1", "metrics": {"wer": 0.25}, "verdict": "pass"},
        serving_code=str(SERVING_CODE),
        pip_requirements=["pandas"],
    )


def test_register_is_idempotent_and_served_through_an_alias(env: MlflowEnv) -> None:
    registry = env.registry()
    assert not registry.exists()
    run_id = env.new_run()
    version = _register(env, registry, "manual__2024-01-01", "v1", run_id)
    again = _register(env, registry, "manual__2024-01-01", "v1-retry", run_id)
    assert again == version == "1"
    assert [v.version for v in registry.list_versions()] == ["1"]

    info = registry.get_version(version)
    assert info.status == "READY" and info.run_id == run_id and info.aliases == ("candidate",)
    assert info.tags["airflow_run_id"] == "manual__2024-01-01" and info.tags["dataset_id"] == "ds-1"
    assert json.loads(info.tags["metrics"]) == {"wer": 0.25}
    assert registry.candidate_version() == version and registry.production_version() is None

    registry.set_alias("production", version)
    assert registry.load_pyfunc("production").predict(["hello"]) == ["HELLO:v1"]
    downloaded = registry.download_model_dir("production", env.root / "base-model")
    assert (downloaded / "tag.txt").read_text() == "v1"
    assert "MLFLOW_TRACKING_URI" not in os.environ  # active() put the process settings back

    second = _register(env, registry, "manual__2024-01-02", "v2")
    assert second == "2" and registry.candidate_version() == "2"
    registry.set_alias("production", second)
    mlflow.set_registry_uri(env.uri)
    try:
        served = mlflow.pyfunc.load_model(f"models:/{registry.model_name}@production")
    finally:
        mlflow.set_registry_uri(None)
    assert served.predict(["hi there"]) == ["HI THERE:v2"]


def test_not_found_is_an_error(env: MlflowEnv) -> None:
    registry = env.registry()
    assert registry.production_version() is None  # nothing registered yet: no production model, not an error
    with pytest.raises(RegistryNotFoundError, match="not found") as info:
        registry.aliases()
    assert isinstance(info.value.__cause__, mlflow.exceptions.MlflowException)
    version = env.quick_version(registry, "r1")
    with pytest.raises(RegistryNotFoundError, match="version 42"):
        registry.get_version("42")
    with pytest.raises(RegistryNotFoundError):
        registry.set_alias("production", "42")
    with pytest.raises(RegistryError, match="unknown alias 'champion'"):
        registry.set_alias("champion", version)  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="needs airflow_run_id"):
        registry.register_candidate(env.model_dir("y"), run_id=env.new_run(), serving_code=SERVING_CODE)
    with pytest.raises(RegistryError, match="model directory .* does not exist"):
        registry.register_candidate(env.root / "nope", run_id=env.new_run(), airflow_run_id="r2",
                                    serving_code=SERVING_CODE, pip_requirements=[])
    with pytest.raises(RegistryNotFoundError, match="logging"):
        registry.register_candidate(env.model_dir("x"), run_id="0" * 32, airflow_run_id="r3",
                                    serving_code=SERVING_CODE, pip_requirements=[])


def test_aliases_and_tags(env: MlflowEnv) -> None:
    registry = env.registry()
    v1, v2 = env.quick_version(registry, "r1"), env.quick_version(registry, "r2")
    registry.set_alias("production", v1)
    registry.set_alias("previous", v2)
    assert registry.aliases() == {"production": v1, "previous": v2}
    assert registry.remove_alias("previous") == v2 and registry.remove_alias("previous") is None
    registry.set_tags(v1, {"verdict": "deployed", "wer": 0.1})
    assert registry.get_version(v1).tags["wer"] == "0.1"
    assert registry.find_version_by_run("r2") == v2 and registry.find_version_by_run("r9") is None
    assert registry.model_uri("production") == "models:/speech-to-text@production"
    assert registry.model_uri("3") == "models:/speech-to-text/3"


def test_wait_until_ready_has_a_deadline(env: MlflowEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = itertools.count(0.0, 10.0)
    sleeps: list[float] = []
    registry = env.registry(max_wait_s=30, poll_interval_s=10, clock=lambda: next(ticks), sleep=sleeps.append)
    version = env.quick_version(registry, "r1")
    pending = ModelVersionInfo(registry.model_name, version, "PENDING_REGISTRATION", None, "", None)
    monkeypatch.setattr(registry, "get_version", lambda v: pending)
    with pytest.raises(RegistryTimeoutError, match="exceeded max wait of 30 s"):
        registry.wait_until_ready(version)
    assert sleeps == [10, 10]  # polls at t=10 and t=20, gives up at the deadline t=30


def test_bad_uri_fails_with_a_registry_error() -> None:
    with pytest.raises(RegistryError, match="foo://bar"):
        ModelRegistry("foo://bar", None, "m").production_version()
