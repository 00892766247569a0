"""An auth manager with per-DAG permissions, as the FAB and Keycloak auth managers have them: Airflow's own
SimpleAuthManager (its users, roles, login and tokens), plus ``TUNELOOP_TEST_DAG_ACCESS``
(``user=dag_a|dag_b;other=dag_c``) limiting the named users to those DAGs. Configured the way any auth manager is
(``[core] auth_manager``), so the status page is tested against the one interface every auth manager implements."""

from __future__ import annotations

import os
from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager


def dag_access() -> dict[str, set[str]]:
    spec = os.environ.get("TUNELOOP_TEST_DAG_ACCESS", "")
    pairs = (item.split("=", 1) for item in spec.split(";") if "=" in item)
    return {user: set(dags.split("|")) for user, dags in pairs}


class DagScopedAuthManager(SimpleAuthManager):
    def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        allowed = dag_access().get(user.get_name())
        if allowed is not None and (details is None or details.id not in allowed):
            return False
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)
