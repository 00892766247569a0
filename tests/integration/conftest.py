"""Integration fixtures: a native cluster (scripts/cluster/cluster.sh) on this machine's PostgreSQL and Redis.

The tests are skipped when PostgreSQL or Redis is unreachable, and fail instead under CI (``CI`` set).
The e2e fixtures ``speech`` (real espeak-ng utterances) and ``damaged_model`` (a tiny model fine-tuning repairs)
are shared with tests/e2e.
"""

from __future__ import annotations

import os
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import damaged_model, speech  # noqa: F401  (fixtures used by the tests here)
from tests.e2e.scenario import PERMISSIVE_GATE_ENV, TINY_RUN_ENV
from tests.integration.native_cluster import NativeCluster

POSTGRES = os.environ.get("TUNELOOP_CLUSTER_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
REDIS = os.environ.get("TUNELOOP_CLUSTER_REDIS", "redis://127.0.0.1:6379")

# The e2e installation's settings (tests/e2e/conftest.py `install`), a gate any strictly better candidate passes
# (tests/e2e/scenario.py `permissive_gate`), and no scheduled runs: only the runs a test starts. A cron of
# 29 February never fires before 2028 (the DAGs start in 2026 and do not catch up).
CLUSTER_ENV = {
    **TINY_RUN_ENV,
    **PERMISSIVE_GATE_ENV,
    "TUNELOOP__DEPLOYMENT__ROLLBACK_ON_ERROR_THRESHOLD": "100",
    "TUNELOOP__SCHEDULE__SENSOR_POKE_SECONDS": "2",
    "TUNELOOP__SCHEDULE__SENSOR_TIMEOUT_MINUTES": "5",
    "TUNELOOP__SCHEDULE__WEEKLY_CRON": "0 0 29 2 *",
    "TUNELOOP__SCHEDULE__ON_ERRORS_CRON": "0 0 29 2 *",
    "TUNELOOP__SCHEDULE__RETRY_DELAY_SECONDS": "5",  # the killed worker's training is retried at once
}


def _unreachable() -> str | None:
    """Why the cluster's services cannot be used, or None."""
    import psycopg2
    import redis

    pg = urllib.parse.urlsplit(POSTGRES)
    try:
        psycopg2.connect(host=pg.hostname, port=pg.port or 5432, user=pg.username or "postgres",
                         password=pg.password, dbname="postgres", connect_timeout=3).close()
    except psycopg2.Error as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        return f"PostgreSQL not reachable at {pg.hostname}:{pg.port}: {first_line}"
    try:
        redis.Redis.from_url(REDIS, socket_connect_timeout=3).ping()
    except redis.RedisError as error:
        return f"Redis not reachable at {REDIS}: {error}"
    return None


@pytest.fixture(scope="session")
def cluster_services() -> None:
    reason = _unreachable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI: the native-cluster tests need PostgreSQL and Redis)")
        pytest.skip(reason)


def _cluster_processes(cluster_id: str) -> list[int]:
    """Processes still carrying the cluster's id in their environment (what ``stop`` must have ended)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if f"TUNELOOP_CLUSTER_ID={cluster_id}".encode() in environ.split(b"\0"):
                found.append(int(entry))
    return found


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def start_cluster(cluster_services, tmp_path, request) -> Iterator[Callable[..., NativeCluster]]:
    """``start_cluster(env, heartbeat_timeout=60)``: a fresh cluster (its own databases, Redis db and state dir)
    started by the script; stopped, and its databases dropped, at teardown, which checks nothing is left."""
    started: list[NativeCluster] = []

    def start(env: dict[str, str], *, heartbeat_timeout: int = 60) -> NativeCluster:
        cluster = NativeCluster(tmp_path / f"cluster{len(started) + 1}")
        args = ["start", "--name", f"it_{uuid.uuid4().hex[:10]}", "--heartbeat-timeout", str(heartbeat_timeout)]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        started.append(cluster)
        cluster.script(*args)
        cluster.load()
        return cluster

    yield start

    for cluster in started:
        report = getattr(request.node, "rep_call", None)
        if (report is None or report.failed) and (cluster.state_dir / "logs").exists():
            print(f"\ncluster logs in {cluster.state_dir / 'logs'}; their ends:\n{cluster.logs_tail()}")
        cluster.script("stop", "--drop", "--grace", "10", check=False)
        if not cluster.description:
            continue
        left = _cluster_processes(cluster.description["id"])
        assert not left, f"processes of the cluster still running after stop: {left}"
        databases = list(cluster.description["databases"].values())
        import psycopg2

        pg = urllib.parse.urlsplit(POSTGRES)
        conn = psycopg2.connect(host=pg.hostname, port=pg.port or 5432, user=pg.username or "postgres",
                                password=pg.password, dbname="postgres")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (databases,))
                assert cur.fetchall() == [], "databases left after stop --drop"
        finally:
            conn.close()
        import redis

        broker_db = cluster.description.get("redis_db")
        if broker_db is not None:
            assert redis.Redis.from_url(f"{REDIS}/{broker_db}").dbsize() == 0, f"redis db {broker_db} left with keys"
