"""Benchmark the tuneloop page in the Airflow UI (issue 14): it loads in under 1 s with 1,000 runs and 100 versions.

    python benchmarks/bench_page.py [--backends sqlite,postgres] [--repeat 10] [--runs 1000] [--versions 100]

A real ``airflow api-server`` (its own AIRFLOW_HOME, SQLite metadata DB, simple auth manager) serves the page of a
model whose store holds ``--runs`` finished runs, ``--versions`` of them judged by the gate (written through the
store's API with real gate results: tests/tuneloop/page_history.py), 10 regression suite results and one run in
progress with its training steps logged to MLflow, so every lookup the page makes runs: the store's queries,
Airflow's database for the run's steps and the next scheduled run, MLflow for the training's progress. Each load
is an HTTP GET with a bearer token, timed at the client; the first load (imports, MLflow's first query) is shown
apart, the goal is on the median of the next ``--repeat`` loads. The JSON (``/tuneloop/api/status``) is timed
beside it. The store is on SQLite, then on PostgreSQL (skipped, with the reason, when it is not reachable).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

GOAL_S = 1.0
PASSWORD = "bench-password"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=100)
    args = parser.parse_args(argv)
    print(f"== the tuneloop page: {args.runs} runs, {args.versions} versions (goal: loads in < {GOAL_S:g} s)")
    failed = False
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix="bench-page-") as scratch:
            url = store_url(backend, Path(scratch))
            if url is None:
                continue
            failed |= not bench(backend, url, Path(scratch), args)
    return 1 if failed else 0


def store_url(backend: str, scratch: Path) -> str | None:
    if backend == "sqlite":
        return f"sqlite:///{scratch / 'store.db'}"
    from benchmarks.store_fixture import POSTGRES_ADMIN_URL, postgres_unreachable

    reason = postgres_unreachable()
    if reason:
        print(f"postgres: skipped: {reason}")
        return None
    import sqlalchemy as sa

    name = f"tuneloop_bench_page_{os.getpid()}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return sa.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def bench(backend: str, url: str, scratch: Path, args: argparse.Namespace) -> bool:
    env = environment(scratch, url)
    fill(env, args.runs, args.versions)
    server, base = start_server(env, scratch)
    try:
        token = bearer(base)
        first = load(base, "/tuneloop/", token)
        pages = [load(base, "/tuneloop/", token) for _ in range(args.repeat)]
        data = [load(base, "/tuneloop/api/status", token) for _ in range(args.repeat)]
    finally:
        server.terminate()
        server.wait(timeout=60)
        drop(backend, url)
    median, worst = statistics.median(pages), max(pages)
    ok = median < GOAL_S
    print(f"{backend:9s} page: median {median * 1000:6.0f} ms, slowest {worst * 1000:6.0f} ms of {args.repeat}"
          f" (first load {first * 1000:.0f} ms)   goal < {GOAL_S * 1000:.0f} ms: {'met' if ok else 'MISSED'}")
    print(f"{backend:9s} JSON: median {statistics.median(data) * 1000:6.0f} ms, slowest {max(data) * 1000:6.0f} ms")
    return ok


def environment(scratch: Path, url: str) -> dict[str, str]:
    (scratch / "passwords.json").write_text(json.dumps({"admin": PASSWORD}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TUNELOOP"))}
    return env | {
        "AIRFLOW_HOME": str(scratch / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{scratch / 'airflow.db'}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(scratch / "passwords.json"),
        "AIRFLOW__API_AUTH__JWT_SECRET": "bench-" + "j" * 64, "TUNELOOP_HOME": str(scratch / "tuneloop"),
        "TUNELOOP__STORE_URL": url, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")]),
    }


def fill(env: dict[str, str], runs: int, versions: int) -> None:
    """The history, suite results and a run in progress, written in a child process with ``env``'s settings."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-c", FILL, str(runs), str(versions)], env=env, check=True, cwd=REPO)
    print(f"  (store filled and Airflow's DB migrated in {time.perf_counter() - started:.0f} s)")


FILL = """
import sys
from datetime import datetime, timezone
from tests.tuneloop.page_history import write_history
from tuneloop import tracking
from tuneloop.config import load_config
from tuneloop.store import ErrorCaseStore

runs, versions = int(sys.argv[1]), int(sys.argv[2])
config = load_config()
config.home.mkdir(parents=True, exist_ok=True)
store = ErrorCaseStore.from_config(config)
write_history(store, runs=runs, versions=versions, model_name=config.mlflow.model_name)
for i in range(10):
    store.record_suite_result(f"suite-run-{i}", {"name": "known-commands", "type": "critical", "n": 6, "wer": 0.1,
                                                  "cer": 0.05, "passed": True, "model_version": str(i + 2)})
run_id = "manual__in-progress"
store.start_training_run(run_id, at=datetime.now(timezone.utc))
from mlflow import MlflowClient
client = MlflowClient(config.tracking_uri)
mlflow_run = tracking.ensure_run(config, run_id)
client.log_param(mlflow_run, "total_steps", "1000")
for step in range(10, 410, 10):
    client.log_metric(mlflow_run, "train_loss", 1.0 / step, step=step)
"""


def start_server(env: dict[str, str], scratch: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (scratch / "api-server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "airflow", "api-server", "--port", str(port)], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=5)
            return server, base
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"api-server did not start: {(scratch / 'api-server.log').read_text()[-3000:]}")
            time.sleep(0.5)


def bearer(base: str) -> str:
    request = urllib.request.Request(f"{base}/auth/token", method="POST", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"username": "admin", "password": PASSWORD}).encode())
    return json.loads(urllib.request.urlopen(request, timeout=30).read())["access_token"]


def load(base: str, path: str, token: str) -> float:
    request = urllib.request.Request(f"{base}{path}", headers={"Authorization": f"Bearer {token}"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as answer:
        body = answer.read()
    elapsed = time.perf_counter() - started
    if b"manual__in-progress" not in body or (path.endswith("/") and b"<progress" not in body):
        raise SystemExit(f"{path}: the page does not show the run in progress with its progress bar")
    return elapsed


def drop(backend: str, url: str) -> None:
    if backend != "postgres":
        return
    import sqlalchemy as sa

    from benchmarks.store_fixture import POSTGRES_ADMIN_URL

    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{sa.make_url(url).database}" WITH (FORCE)'))


if __name__ == "__main__":
    sys.exit(main())
