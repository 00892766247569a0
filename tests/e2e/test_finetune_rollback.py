"""`airflow dags test finetune_rollback` on a real MLflow registry built without training (versions, no files)."""

from __future__ import annotations

import json
import shutil

import pytest
from mlflow import MlflowClient

from tests.e2e.scenario import Scenario
from tests.tuneloop.registry_testing import MlflowEnv

pytestmark = pytest.mark.slow


@pytest.fixture
def deployed_three_times(tmp_path, airflow_env, migrated_airflow_db, migrated_mlflow_db) -> tuple[Scenario, list[str]]:
    """An installation whose production went v1 (bootstrap) -> v2 -> v3 through the deployment module."""
    from tuneloop.deployment import bootstrap_production, deploy
    from tuneloop.store import ErrorCaseStore

    for folder in ("airflow", "tuneloop"):
        (tmp_path / folder).mkdir()
    shutil.copy2(migrated_airflow_db, tmp_path / "airflow" / "airflow.db")
    shutil.copy2(migrated_mlflow_db, tmp_path / "tuneloop" / "mlflow.db")
    scenario = Scenario(tmp_path, {**airflow_env, "AIRFLOW_HOME": str(tmp_path / "airflow"),
                                   "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/airflow/airflow.db",
                                   "TUNELOOP_HOME": str(tmp_path / "tuneloop")})
    config = scenario.config()
    mlflow = MlflowEnv(tmp_path, config.tracking_uri, MlflowClient(config.tracking_uri, config.registry_uri), "0")
    registry, store = mlflow.registry(config.mlflow.model_name), ErrorCaseStore.from_config(config)
    versions = [mlflow.quick_version(registry, f"weekly-{i}") for i in (1, 2, 3)]
    bootstrap_production(registry, store, version=versions[0])
    for version in versions[1:]:
        registry.set_alias("candidate", version)
        deploy(registry, store, version, reason=f"gate passed for v{version}", run_id=f"weekly-{version}")
    return scenario, versions


def _rollback(scenario: Scenario, conf: dict) -> dict:
    """Run the DAG with ``conf`` as its Params; return the newest deployment-history event."""
    from tuneloop.store import ErrorCaseStore

    scenario.airflow("dags", "test", "finetune_rollback", "-c", json.dumps(conf))
    config = scenario.config()
    return ErrorCaseStore.from_config(config).deployment_history(config.mlflow.model_name, limit=1)[0].to_dict()


def _aliases(scenario: Scenario) -> dict[str, str]:
    from tuneloop.registry import ModelRegistry

    config = scenario.config()
    return ModelRegistry(config.tracking_uri, config.registry_uri, config.mlflow.model_name).aliases()


def test_rollback_dag_defaults_to_previous_production_then_takes_a_target_version(deployed_three_times):
    scenario, (v1, v2, v3) = deployed_three_times
    assert _aliases(scenario) == {"production": v3, "previous": v2}

    event = _rollback(scenario, {"reason": "complaints about v3"})  # target_version left empty
    assert (event["action"], event["from_version"], event["to_version"]) == ("rollback", v3, v2)
    assert event["reason"] == "complaints about v3" and event["run_id"].startswith("manual__")
    assert event["actor"] == event["details"]["triggered_by"] == "dag_test"  # who triggered it, not the DAG
    assert _aliases(scenario) == {"production": v2, "previous": v1}

    event = _rollback(scenario, {"target_version": v1, "reason": "back to the baseline"})
    assert (event["action"], event["from_version"], event["to_version"]) == ("rollback", v2, v1)
    assert event["reason"] == "back to the baseline" and event["details"]["requested"] == v1
    assert _aliases(scenario) == {"production": v1}
