"""Drive a native cluster (scripts/cluster/cluster.sh) the way its users do: the script, the REST API, the CLIs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "cluster" / "cluster.sh"
T = TypeVar("T")


class AirflowApi:
    """A REST client of Airflow 3's public API, authenticated like any client: POST /auth/token."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        response = self.session.post(f"{self.base_url}/auth/token", json={"username": username, "password": password},
                                     timeout=30)
        if response.status_code != 201:
            raise AssertionError(f"POST /auth/token answered {response.status_code}: {response.text[:500]}")
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.session.request(method, f"{self.base_url}/api/v2{path}", timeout=60, **kwargs)
        if response.status_code >= 400:
            raise AssertionError(f"{method} /api/v2{path} answered {response.status_code}: {response.text[:2000]}")
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def unpause(self, dag_id: str) -> None:
        assert self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})["is_paused"] is False

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        run = self.request("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        return run["dag_run_id"]

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}")

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.get(f"/dags/{dag_id}/dagRuns", limit=100)["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        found = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=100)["task_instances"]
        return {ti["task_id"]: ti for ti in found}

    def tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/tries")["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}")["value"]

    def log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        """The task's log for one attempt, as text (the API returns structured events)."""
        body = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                        full_content="true")
        content = body.get("content")
        if isinstance(content, str):
            return content
        return "\n".join(item.get("event", "") if isinstance(item, dict) else str(item) for item in content or [])

    def wait_run(self, dag_id: str, run_id: str, timeout: float, on_poll: Callable[[], None] | None = None
                 ) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            if on_poll:
                on_poll()
            run = self.dag_run(dag_id, run_id)
            return run if run["state"] in ("success", "failed") else None

        return wait_for(finished, timeout, f"{dag_id} run {run_id} to finish",
                        lambda: json.dumps(self.task_states(dag_id, run_id)))

    def respond(self, dag_id: str, run_id: str, task_id: str, choice: str, params_input: dict[str, Any] | None = None
                ) -> dict[str, Any]:
        """Answer a task's Required action as a person in the UI does (the form posts the same request)."""
        return self.request("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails",
                            json={"chosen_options": [choice], "params_input": params_input or {}})

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {task: ti["state"] for task, ti in self.task_instances(dag_id, run_id).items()}


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, describe: Callable[[], str] | None = None,
             interval: float = 2.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                                 + (f"; now: {describe()}" if describe else ""))
        time.sleep(interval)


@dataclass
class NativeCluster:
    """A cluster started by the script, with what a test needs to use it as a client."""

    state_dir: Path
    description: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def script(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([str(SCRIPT), *args, "--state-dir", str(self.state_dir)], check=False,
                                capture_output=True, text=True, timeout=timeout, cwd=REPO)
        if check and result.returncode != 0:
            raise AssertionError(f"cluster.sh {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
        return result

    def load(self) -> None:
        """Read cluster.json, and a client's environment from ``cluster.sh env``: this process's environment less
        its Airflow/tuneloop settings, plus the cluster's."""
        self.description = json.loads((self.state_dir / "cluster.json").read_text())
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TUNELOOP"))}
        script_env = json.loads(self.script("env", "--json").stdout)
        pythonpath = os.pathsep.join(p for p in (script_env.pop("PYTHONPATH"), str(REPO)) if p)
        self.env = {**base, **script_env, "PYTHONPATH": pythonpath}

    @property
    def worker_hostnames(self) -> dict[str, str]:
        """hostname -> worker number."""
        return {w["hostname"]: w["role"].removeprefix("worker") for w in self.description["workers"]}

    @property
    def tuneloop_home(self) -> Path:
        return Path(self.description["tuneloop_home"])

    @property
    def mlflow_url(self) -> str:
        return self.description["urls"]["mlflow"]

    def api(self) -> AirflowApi:
        password_file = Path(self.description["admin"]["password_file"])
        password = json.loads(password_file.read_text())[self.description["admin"]["username"]]
        return AirflowApi(self.description["urls"]["airflow"], self.description["admin"]["username"], password)

    def tuneloop(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "tuneloop.cli", *args], check=False, env=self.env, cwd=REPO,
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"tuneloop {' '.join(args)} exited {result.returncode}:\n"
                                 f"{(result.stdout + result.stderr)[-6000:]}")
        return result

    def database_url(self, part: str) -> str:
        """SQLAlchemy URL of the cluster's ``airflow``, ``store`` or ``mlflow`` database."""
        env = self.description["client_env"]
        if part == "store":
            return env["TUNELOOP__STORE_URL"]
        return env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].rsplit("/", 1)[0] + "/" + self.description["databases"][part]

    def query(self, part: str, sql: str, **params: Any) -> list[tuple]:
        import sqlalchemy as sa

        engine = sa.create_engine(self.database_url(part))
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(sa.text(sql), params)]
        finally:
            engine.dispose()

    def logs_tail(self, lines: int = 30) -> str:
        out = []
        for log in sorted((self.state_dir / "logs").glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"===== {log.name}\n" + "\n".join(text))
        return "\n".join(out)
