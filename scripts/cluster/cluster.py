"""A native tuneloop cluster on one machine, no Docker: the production topology with local processes.

    scripts/cluster/cluster.sh start  [--name dev] [--state-dir DIR] [--workers 2] [--env KEY=VALUE ...]
    scripts/cluster/cluster.sh status [--name dev | --state-dir DIR]
    scripts/cluster/cluster.sh env    [--name dev | --state-dir DIR] [--json]    # eval "$(... env)"
    scripts/cluster/cluster.sh stop   [--name dev | --state-dir DIR] [--drop]
    scripts/cluster/cluster.sh kill-worker N / start-worker N                   # failure drills

``start`` creates fresh databases on the PostgreSQL server (``TUNELOOP_CLUSTER_POSTGRES``, default
postgresql://postgres@127.0.0.1:5432, trust auth): ``tuneloop_<name>_airflow`` (Airflow metadata and Celery
results), ``tuneloop_<name>_store`` (the error-case store) and ``tuneloop_<name>_mlflow`` (MLflow tracking and
registry); claims an empty Redis database (``TUNELOOP_CLUSTER_REDIS``, default redis://127.0.0.1:6379) as the
Celery broker; runs ``airflow db migrate``; starts an MLflow server, the Airflow api-server, scheduler,
dag-processor and triggerer and N Celery workers, each in its own process group, logging to ``<state>/logs``;
and waits until every one of them is healthy and the repo's DAGs are parsed. Everything is local to the state
directory (default ``.tuneloop/clusters/<name>``, private to the user): ``cluster.json`` describes the cluster,
``cluster.env`` is the environment a client needs (Airflow CLI, ``tuneloop`` CLI), and the Airflow user
``admin``'s generated password is in ``airflow/simple_auth_manager_passwords.json``.

Every process the cluster starts, and everything they start in turn, carries ``TUNELOOP_CLUSTER_ID=<id>`` in its
environment; ``stop`` ends exactly those processes (SIGTERM, then SIGKILL after a grace period), whichever process
group they moved to, and with ``--drop`` drops the databases and empties the Redis database it claimed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432"
DEFAULT_REDIS = "redis://127.0.0.1:6379"
MARKER = "TUNELOOP_CLUSTER_ID"
ROLE = "TUNELOOP_CLUSTER_ROLE"
REDIS_CLAIM_KEY = "tuneloop:cluster"
ADMIN_USER = "admin"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,29}$")
SERVER_ROLES = ("mlflow", "api-server", "scheduler", "dag-processor", "triggerer")


# One-off setup before the processes start; the compose file's airflow-init runs the same.
INIT_COMMANDS = (
    ("airflow", "db", "migrate"),
    ("airflow", "pools", "set", "gpu", "1", "GPU training and inference", "--include-deferred"),
)


class ClusterError(RuntimeError):
    """Something the user must fix or look at; the message says what and where."""


def say(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


# --- small helpers -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: Any = None, token: str | None = None,
         timeout: float = 10) -> tuple[int, Any]:
    """(status, parsed JSON or text); status 0 when nothing answered."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except (urllib.error.URLError, OSError):
        return 0, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(text[-lines:])


def proc_stat(pid: int) -> tuple[str, int, int, str] | None:
    """(state, ppid, pgid, start time) of a process, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[2]), fields[19]


def proc_start_time(pid: int) -> str | None:
    stat = proc_stat(pid)
    return None if stat is None else stat[3]


def proc_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def live_processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, pgid, start time) of every process that is not a zombie."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None and stat[0] != "Z":
                table[int(entry)] = stat[1:]
    return table


def find_processes(cluster_id: str, roots: dict[int, str | None], role: str | None = None) -> dict[int, str]:
    """pid -> start time of every live process a cluster started (or one role of it).

    A process belongs to it when it is one of the ``roots`` it spawned (same pid *and* start time, so a reused
    pid is never taken for one), is in a root's process group, descends from any of those, or carries the
    cluster's id in its environment (which catches orphans re-parented to init; Airflow's and Celery's
    ``setproctitle`` overwrites the environment of their main processes, so that alone would not do).
    """
    table = live_processes()
    found: dict[int, str] = {}
    leaders = {pid for pid, start in roots.items() if pid not in table or table[pid][2] == start}
    for pid, (ppid, pgid, start) in table.items():
        if pid == os.getpid():
            continue
        if (pid in roots and roots[pid] == start) or pgid in leaders:
            found[pid] = start
            continue
        env = proc_environ(pid)
        if env.get(MARKER) == cluster_id and (role is None or env.get(ROLE) == role):
            found[pid] = start
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _, start) in table.items():
            if ppid in found and pid not in found and pid != os.getpid():
                found[pid] = start
                grew = True
    return found


def still_running(processes: dict[int, str]) -> dict[int, str]:
    return {pid: start for pid, start in processes.items() if proc_start_time(pid) == start
            and (proc_stat(pid) or ("Z",))[0] != "Z"}


def signal_pids(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def end_processes(cluster: Cluster, role: str | None = None, grace_s: float = 15.0) -> int:
    """SIGTERM the cluster's (or one role's) processes, SIGKILL what is left after ``grace_s``."""
    first = cluster.processes(role)
    if not first:
        return 0
    signal_pids(first, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (still_running(first) or cluster.processes(role)):
        time.sleep(0.5)
    left = {**still_running(first), **cluster.processes(role)}
    if left:
        say(f"{len(left)} process(es) still running after {grace_s:.0f} s: SIGKILL")
        signal_pids(left, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (still_running(left) or cluster.processes(role)):
            time.sleep(0.2)
    return len(first)


# --- Postgres and Redis --------------------------------------------------------------------------------------


class Postgres:
    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ClusterError(f"TUNELOOP_CLUSTER_POSTGRES must be postgresql://user@host:port, got {url!r}")
        self.user = urllib.parse.unquote(parts.username or "postgres")
        self.password = urllib.parse.unquote(parts.password) if parts.password else None
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 5432

    def sqlalchemy_url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        auth = urllib.parse.quote(self.user)
        if self.password:
            auth += ":" + urllib.parse.quote(self.password)
        return f"{driver}://{auth}@{self.host}:{self.port}/{database}"

    def _connect(self):
        import psycopg2

        try:
            conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                    dbname="postgres", connect_timeout=5)
        except psycopg2.OperationalError as error:
            first = (str(error).strip().splitlines() or [""])[0]
            where = f"{self.host}:{self.port} as {self.user}"
            raise ClusterError(f"PostgreSQL not reachable at {where}: {first}") from error
        conn.autocommit = True
        return conn

    def check(self) -> None:
        self._connect().close()

    def existing(self, names: Iterable[str]) -> list[str]:
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (list(names),))
                return sorted(row[0] for row in cur.fetchall())
        finally:
            conn.close()

    def create(self, names: Iterable[str]) -> None:
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                for name in names:
                    cur.execute(f'CREATE DATABASE "{name}"')  # names are checked against NAME_PATTERN
        finally:
            conn.close()

    def drop(self, names: Iterable[str]) -> None:
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                for name in names:
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            conn.close()


class Redis:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def client(self, db: int):
        import redis

        return redis.Redis.from_url(f"{self.url}/{db}", socket_connect_timeout=5, socket_timeout=10)

    def check(self) -> None:
        import redis

        try:
            self.client(0).ping()
        except redis.RedisError as error:
            raise ClusterError(f"Redis not reachable at {self.url}: {error}") from error

    def claim(self, cluster_id: str) -> int:
        """An empty Redis database (1..15), claimed for this cluster by a key set only if absent."""
        for db in range(1, 16):
            client = self.client(db)
            if client.dbsize() != 0:
                continue
            if client.set(REDIS_CLAIM_KEY, cluster_id, nx=True):
                if client.dbsize() == 1:
                    return db
                client.delete(REDIS_CLAIM_KEY)
        raise ClusterError(f"no empty Redis database left on {self.url} (1..15 all hold keys): stop a cluster "
                           "with --drop, or empty one")

    def release(self, db: int, cluster_id: str) -> None:
        client = self.client(db)
        owner = client.get(REDIS_CLAIM_KEY)
        if owner is not None and owner.decode() == cluster_id:
            client.flushdb()


# --- the cluster ---------------------------------------------------------------------------------------------


class Cluster:
    """One cluster's description (``cluster.json``) and the operations on it."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    # -- paths and names --
    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def state_dir(self) -> Path:
        return Path(self.data["state_dir"])

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def description_file(self) -> Path:
        return self.state_dir / "cluster.json"

    @property
    def api_url(self) -> str:
        return self.data["urls"]["airflow"]

    @property
    def mlflow_url(self) -> str:
        return self.data["urls"]["mlflow"]

    @property
    def workers(self) -> list[dict[str, str]]:
        return self.data["workers"]

    def save(self) -> None:
        tmp = self.description_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.chmod(0o600)
        tmp.replace(self.description_file)

    @classmethod
    def load(cls, state_dir: Path) -> Cluster:
        file = state_dir / "cluster.json"
        if not file.exists():
            raise ClusterError(f"no cluster at {state_dir} (no cluster.json); start one with `cluster.sh start`")
        return cls(json.loads(file.read_text()))

    # -- configuration --
    @classmethod
    def new(cls, name: str, state_dir: Path, *, workers: int, concurrency: int, heartbeat_timeout: int,
            extra_env: dict[str, str], postgres: str, redis_url: str) -> Cluster:
        if not NAME_PATTERN.match(name):
            raise ClusterError(f"cluster name {name!r}: lowercase letters, digits and _, starting with a letter, "
                               "at most 30 characters")
        cluster_id = f"{name}-{uuid.uuid4().hex[:12]}"
        pg = Postgres(postgres)
        databases = {part: f"tuneloop_{name}_{part}" for part in ("airflow", "store", "mlflow")}
        ports = {"airflow": free_port(), "mlflow": free_port()}
        airflow_home = state_dir / "airflow"
        tuneloop_home = state_dir / "tuneloop"
        data = {
            "name": name,
            "id": cluster_id,
            "state_dir": str(state_dir),
            "repo": str(REPO),
            "python": sys.executable,
            "postgres": postgres,
            "redis": redis_url,
            "redis_db": None,
            "databases": databases,
            "ports": ports,
            "urls": {part: f"http://127.0.0.1:{port}" for part, port in ports.items()},
            "admin": {"username": ADMIN_USER,
                      "password_file": str(airflow_home / "simple_auth_manager_passwords.json")},
            "workers": [{"role": f"worker{i}", "hostname": f"{name}-worker{i}", "celery_node": f"worker{i}@{name}"}
                        for i in range(1, workers + 1)],
            "worker_concurrency": concurrency,
            "airflow_home": str(airflow_home),
            "tuneloop_home": str(tuneloop_home),
            "artifacts": str(state_dir / "mlartifacts"),
            "heartbeat_timeout": heartbeat_timeout,
            "extra_env": extra_env,
            "processes": {},
            "status": "new",
        }
        cluster = cls(data)
        data["client_env"] = cluster._client_env(pg)
        return cluster

    def _client_env(self, pg: Postgres) -> dict[str, str]:
        """What any client of the cluster (Airflow CLI, tuneloop CLI, the processes themselves) needs."""
        d = self.data
        api, airflow_db = d["urls"]["airflow"], d["databases"]["airflow"]
        env = {
            "AIRFLOW_HOME": d["airflow_home"],
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tuneloop_cluster_hostname.hostname",
            "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": d["admin"]["password_file"],
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.sqlalchemy_url(airflow_db),
            "AIRFLOW__CELERY__BROKER_URL": "",  # set once the Redis database is claimed
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + pg.sqlalchemy_url(airflow_db),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(d["worker_concurrency"]),
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "86400",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(d["ports"]["airflow"]),
            "AIRFLOW__API__BASE_URL": api,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(d["heartbeat_timeout"]),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGERER_LOG_SERVER_PORT": str(free_port()),
            "TUNELOOP_HOME": d["tuneloop_home"],
            "TUNELOOP__STORE_URL": pg.sqlalchemy_url(d["databases"]["store"]),
            "TUNELOOP__MLFLOW__TRACKING_URI": d["urls"]["mlflow"],
            "TUNELOOP__MLFLOW__UI_URL": d["urls"]["mlflow"],
            "TUNELOOP__MLFLOW__ARTIFACT_LOCATION": "mlflow-artifacts:/tuneloop",
        }
        env.update(d["extra_env"])
        return env

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) without any Airflow/tuneloop setting, plus the cluster's."""
        base = dict(os.environ if base is None else base)
        env = {k: v for k, v in base.items() if not k.startswith(("AIRFLOW", "TUNELOOP"))}
        bin_dir = str(Path(self.data["python"]).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
        env.update(self.data["client_env"])
        return env

    def process_env(self, role: str, hostname: str | None = None) -> dict[str, str]:
        env = self.client_env()
        env[MARKER] = self.id
        env[ROLE] = role
        env["TUNELOOP_CLUSTER_HOSTNAME"] = hostname or f"{self.name}-{role}"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def write_env_file(self) -> Path:
        lines = ["# Environment of the tuneloop cluster " + self.name + ": eval \"$(scripts/cluster/cluster.sh env)\""]
        for key, value in sorted(self.data["client_env"].items()):
            lines.append(f"export {key}={shlex.quote(value)}")
        lines.append(f"export PYTHONPATH={shlex.quote(str(HERE))}${{PYTHONPATH:+:$PYTHONPATH}}")
        path = self.state_dir / "cluster.env"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        return path

    # -- processes --
    def commands(self) -> dict[str, list[str]]:
        py, d = self.data["python"], self.data
        airflow = [py, "-m", "airflow"]
        commands = {
            "mlflow": [py, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(d["ports"]["mlflow"]),
                       "--workers", "1", "--backend-store-uri", self.pg.sqlalchemy_url(d["databases"]["mlflow"]),
                       "--artifacts-destination", d["artifacts"]],
            "api-server": [*airflow, "api-server", "--host", "127.0.0.1", "--port", str(d["ports"]["airflow"]),
                           "--workers", "1"],
            "scheduler": [*airflow, "scheduler"],
            "dag-processor": [*airflow, "dag-processor"],
            # Every process shares this machine's disk: the api-server reads task and trigger logs from the log
            # folder directly, so no log-serving sidecars (and no fixed ports) are needed.
            "triggerer": [*airflow, "triggerer", "--skip-serve-logs"],
        }
        for worker in self.workers:
            commands[worker["role"]] = [*airflow, "celery", "worker", "--celery-hostname", worker["celery_node"],
                                        "--concurrency", str(d["worker_concurrency"]), "--skip-serve-logs",
                                        "--without-gossip", "--without-mingle"]
        return commands

    @property
    def pg(self) -> Postgres:
        return Postgres(self.data["postgres"])

    @property
    def redis(self) -> Redis:
        return Redis(self.data["redis"])

    def hostname_of(self, role: str) -> str:
        for worker in self.workers:
            if worker["role"] == role:
                return worker["hostname"]
        return f"{self.name}-{role}"

    def spawn(self, role: str) -> int:
        command = self.commands()[role]
        log_path = self.logs / f"{role}.log"
        with log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n".encode())
            log.flush()
            process = subprocess.Popen(command, cwd=self.state_dir, env=self.process_env(role, self.hostname_of(role)),
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.data["processes"][role] = {"pid": process.pid, "start_time": proc_start_time(process.pid),
                                        "log": str(log_path), "command": command}
        self.save()
        pids = self.state_dir / "pids"
        pids.mkdir(exist_ok=True)
        (pids / f"{role}.pid").write_text(f"{process.pid}\n")
        return process.pid

    def processes(self, role: str | None = None) -> dict[int, str]:
        """Every live process this cluster (or one of its roles) started, children included."""
        roots = {info["pid"]: info["start_time"] for r, info in self.data["processes"].items()
                 if role is None or r == role}
        return find_processes(self.id, roots, role)

    def alive(self, role: str) -> bool:
        info = self.data["processes"].get(role)
        if not info:
            return False
        pid = info["pid"]
        if proc_start_time(pid) != info["start_time"]:
            return False
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"

    def check_alive(self, roles: Iterable[str]) -> None:
        for role in roles:
            if not self.alive(role):
                log = self.logs / f"{role}.log"
                raise ClusterError(f"{role} exited during start-up; its log ({log}) ends with:\n{tail(log)}")

    # -- health --
    def admin_password(self) -> str:
        return json.loads(Path(self.data["admin"]["password_file"]).read_text())[ADMIN_USER]

    def token(self) -> str:
        """An API token the way any REST client gets one: POST /auth/token with the user's credentials."""
        status, body = http("POST", f"{self.api_url}/auth/token",
                            {"username": ADMIN_USER, "password": self.admin_password()})
        if status not in (200, 201) or not isinstance(body, dict) or "access_token" not in body:
            raise ClusterError(f"POST {self.api_url}/auth/token answered {status}: {body}")
        return body["access_token"]

    def airflow_health(self) -> dict[str, str]:
        status, body = http("GET", f"{self.api_url}/api/v2/monitor/health", timeout=5)
        if status != 200 or not isinstance(body, dict):
            return {}
        return {part: (body.get(part) or {}).get("status") or "unknown"
                for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")}

    def mlflow_healthy(self) -> bool:
        status, _ = http("GET", f"{self.mlflow_url}/health", timeout=5)
        return status == 200

    def celery_pong(self, nodes: list[str], timeout: float = 2.0) -> set[str]:
        from celery import Celery

        app = Celery("tuneloop-cluster-ping", broker=self.data["client_env"]["AIRFLOW__CELERY__BROKER_URL"])
        try:
            replies = app.control.ping(destination=nodes, timeout=timeout) or []
        except Exception:  # noqa: BLE001 - broker hiccups during start-up: not answered yet
            return set()
        finally:
            app.close()
        return {node for reply in replies for node in reply}

    def dags_parsed(self, token: str) -> tuple[bool, str]:
        """All DAG files of the repo's dags/ folder parsed, without import errors."""
        expected = len([p for p in (REPO / "dags").glob("*.py") if not p.name.startswith("_")])
        status, errors = http("GET", f"{self.api_url}/api/v2/importErrors", token=token)
        if status == 200 and errors.get("total_entries"):
            details = "; ".join(f"{e.get('filename')}: {(e.get('stack_trace') or '').strip().splitlines()[-1:]}"
                                for e in errors.get("import_errors", []))
            raise ClusterError(f"DAG import errors: {details}")
        status, dags = http("GET", f"{self.api_url}/api/v2/dags?limit=100", token=token)
        if status != 200:
            return False, f"GET /api/v2/dags answered {status}"
        found = sorted(dag["dag_id"] for dag in dags.get("dags", []))
        return len(found) >= expected, f"{len(found)}/{expected} DAGs parsed: {found}"

    def wait_healthy(self, deadline: float, roles: Iterable[str] | None = None) -> None:
        roles = list(roles or self.data["processes"])
        pending = ["start-up"]
        token = None
        while time.monotonic() < deadline:
            self.check_alive(roles)
            waiting = []
            if "mlflow" in roles and not self.mlflow_healthy():
                waiting.append("mlflow server (/health)")
            if any(r in roles for r in SERVER_ROLES[1:]):
                health = self.airflow_health()
                if not health:
                    waiting.append("api-server (/api/v2/monitor/health)")
                for part, role in (("metadatabase", "api-server"), ("scheduler", "scheduler"),
                                   ("triggerer", "triggerer"), ("dag_processor", "dag-processor")):
                    if health and role in roles and health.get(part) != "healthy":
                        waiting.append(f"{role} ({part}: {health.get(part)})")
            nodes = [w["celery_node"] for w in self.workers if w["role"] in roles]
            if nodes and not waiting:
                missing = sorted(set(nodes) - self.celery_pong(nodes))
                waiting += [f"celery worker {node} (ping)" for node in missing]
            if not waiting and "dag-processor" in roles:
                token = token or self.token()
                parsed, detail = self.dags_parsed(token)
                if not parsed:
                    waiting.append(detail)
            if not waiting:
                return
            if waiting != pending:
                say("waiting for " + ", ".join(waiting))
                pending = waiting
            time.sleep(1.5)
        raise ClusterError("not healthy before the deadline; still waiting for: " + ", ".join(pending)
                           + f"\nlogs: {self.logs}")


# --- commands ------------------------------------------------------------------------------------------------


def resolve_state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir:
        return Path(args.state_dir).expanduser().resolve()
    return REPO / ".tuneloop" / "clusters" / args.name


def parse_env(pairs: Iterable[str], files: Iterable[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for file in files:
        for line in Path(file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                pairs = [*pairs, line.removeprefix("export ")]
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ClusterError(f"--env expects KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def prepare_state_dir(state_dir: Path) -> None:
    if state_dir.exists() and any(state_dir.iterdir()):
        if not (state_dir / "cluster.json").exists():
            raise ClusterError(f"{state_dir} exists and is not a cluster's state directory; pick another --state-dir")
        old = Cluster.load(state_dir)
        if old.processes():
            raise ClusterError(f"cluster {old.name} is running from {state_dir}: `cluster.sh stop` it first")
        left = old.pg.existing(old.data["databases"].values())
        if left:
            raise ClusterError(f"the last cluster in {state_dir} was stopped without --drop; its databases {left} "
                               f"still exist: `cluster.sh stop --state-dir {state_dir} --drop` first")
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)


def cmd_start(args: argparse.Namespace) -> int:
    started = time.monotonic()
    deadline = started + args.timeout
    try:
        from importlib.metadata import PackageNotFoundError, version

        version("apache-airflow-providers-celery")
    except PackageNotFoundError:
        raise ClusterError("apache-airflow-providers-celery is not installed in this Python "
                           f"({sys.executable}); `make setup` installs requirements.txt") from None
    state_dir = resolve_state_dir(args)
    extra_env = parse_env(args.env or [], args.env_file or [])
    pg, redis_server = Postgres(args.postgres), Redis(args.redis)
    pg.check()
    redis_server.check()
    prepare_state_dir(state_dir)
    cluster = Cluster.new(args.name, state_dir, workers=args.workers, concurrency=args.worker_concurrency,
                          heartbeat_timeout=args.heartbeat_timeout, extra_env=extra_env, postgres=args.postgres,
                          redis_url=args.redis)
    for folder in ("logs", "pids", "airflow", "tuneloop", "mlartifacts"):
        (state_dir / folder).mkdir(parents=True, exist_ok=True)
    databases = list(cluster.data["databases"].values())
    existing = pg.existing(databases)
    if existing:
        raise ClusterError(f"databases {existing} already exist (another cluster named {args.name!r}?): "
                           "pick another --name, or drop them")
    cluster.data["status"] = "starting"
    cluster.save()
    try:
        pg.create(databases)
        cluster.data["databases_created"] = True
        db = redis_server.claim(cluster.id)
        cluster.data["redis_db"] = db
        cluster.data["client_env"]["AIRFLOW__CELERY__BROKER_URL"] = f"{args.redis.rstrip('/')}/{db}"
        password_file = Path(cluster.data["admin"]["password_file"])
        password_file.write_text(json.dumps({ADMIN_USER: secrets.token_urlsafe(18)}) + "\n")
        password_file.chmod(0o600)
        cluster.save()
        cluster.write_env_file()
        say(f"cluster {cluster.name}: databases {', '.join(databases)}, redis db {db}, state {state_dir}")

        cluster.spawn("mlflow")
        say("airflow db migrate, pool gpu ...")
        migrate_log = cluster.logs / "migrate.log"
        for command in INIT_COMMANDS:  # what the compose file's airflow-init runs
            with migrate_log.open("ab") as log:
                init = subprocess.run([cluster.data["python"], "-m", *command], check=False, cwd=state_dir,
                                      env=cluster.process_env("migrate"), stdout=log, stderr=subprocess.STDOUT,
                                      timeout=max(30.0, deadline - time.monotonic()))
            if init.returncode != 0:
                raise ClusterError(f"{' '.join(command)} failed ({migrate_log}):\n{tail(migrate_log)}")
        say(f"migrated in {time.monotonic() - started:.0f} s; starting the processes")
        for role in cluster.commands():
            if role != "mlflow":
                cluster.spawn(role)
        cluster.wait_healthy(deadline)
    except BaseException as error:
        say(f"start failed: {error}" if isinstance(error, ClusterError) else f"start interrupted: {error!r}")
        end_processes(cluster, grace_s=5)
        if not args.keep_on_failure:
            drop_resources(cluster)
        cluster.data["status"] = "failed"
        cluster.save()
        raise
    cluster.data["status"] = "running"
    cluster.data["started_in_s"] = round(time.monotonic() - started, 1)
    cluster.save()
    broker = cluster.data["client_env"]["AIRFLOW__CELERY__BROKER_URL"]
    print(f"""tuneloop cluster {cluster.name} is up ({cluster.data['started_in_s']:.0f} s)
  Airflow   {cluster.api_url}   user {ADMIN_USER}, password in {cluster.data['admin']['password_file']}
  MLflow    {cluster.mlflow_url}
  workers   {', '.join(w['hostname'] for w in cluster.workers)} (Celery, broker {broker})
  state     {state_dir}  (logs/, cluster.json)
  clients   eval "$(scripts/cluster/cluster.sh env --state-dir {state_dir})"
  stop      scripts/cluster/cluster.sh stop --state-dir {state_dir} [--drop]""")
    return 0


def drop_resources(cluster: Cluster) -> None:
    if cluster.data.get("databases_created"):
        cluster.pg.drop(cluster.data["databases"].values())
        cluster.data["databases_created"] = False
    if cluster.data.get("redis_db") is not None:
        cluster.redis.release(cluster.data["redis_db"], cluster.id)
    cluster.save()


def cmd_stop(args: argparse.Namespace) -> int:
    cluster = Cluster.load(resolve_state_dir(args))
    count = end_processes(cluster, grace_s=args.grace)
    say(f"cluster {cluster.name}: ended {count} process(es)")
    cluster.data["status"] = "stopped"
    cluster.save()
    if args.drop:
        drop_resources(cluster)
        dropped = ", ".join(cluster.data["databases"].values())
        say(f"dropped databases {dropped} and redis db {cluster.data['redis_db']}")
        if args.remove_state:
            shutil.rmtree(cluster.state_dir)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cluster = Cluster.load(resolve_state_dir(args))
    up = True
    print(f"cluster {cluster.name} ({cluster.data['status']}), state {cluster.state_dir}")
    for role, info in cluster.data["processes"].items():
        alive = cluster.alive(role)
        up &= alive
        print(f"  {role:<14} pid {info['pid']:<8} {'running' if alive else 'NOT RUNNING'}   {info['log']}")
    health = cluster.airflow_health()
    print(f"  Airflow {cluster.api_url}: {health or 'not answering'}")
    print(f"  MLflow  {cluster.mlflow_url}: {'healthy' if cluster.mlflow_healthy() else 'not answering'}")
    up &= bool(health) and all(v == "healthy" for v in health.values())
    return 0 if up else 1


def cmd_env(args: argparse.Namespace) -> int:
    cluster = Cluster.load(resolve_state_dir(args))
    if args.json:
        print(json.dumps(cluster.data["client_env"] | {"PYTHONPATH": str(HERE)}, indent=2))
    else:
        sys.stdout.write((cluster.state_dir / "cluster.env").read_text())
    return 0


def cmd_kill_worker(args: argparse.Namespace) -> int:
    """SIGKILL one worker's whole process tree at once, as when its machine or pod dies."""
    cluster = Cluster.load(resolve_state_dir(args))
    role = f"worker{args.number}"
    pids = cluster.processes(role)
    if not pids:
        raise ClusterError(f"{role} of cluster {cluster.name} is not running")
    signal_pids(pids, signal.SIGKILL)
    say(f"{role}: SIGKILL to {len(pids)} process(es) {sorted(pids)}")
    return 0


def cmd_start_worker(args: argparse.Namespace) -> int:
    cluster = Cluster.load(resolve_state_dir(args))
    role = f"worker{args.number}"
    if role not in cluster.commands():
        raise ClusterError(f"cluster {cluster.name} has no {role}")
    if cluster.processes(role):
        raise ClusterError(f"{role} is already running")
    cluster.spawn(role)
    cluster.wait_healthy(time.monotonic() + args.timeout, roles=[role])
    say(f"{role} is up")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cluster.sh", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--name", default=os.environ.get("TUNELOOP_CLUSTER_NAME", "dev"),
                         help="cluster name: databases tuneloop_<name>_*, default state dir (default dev)")
        sub.add_argument("--state-dir", help="state directory (default .tuneloop/clusters/<name>)")

    start = commands.add_parser("start", help="create the databases, start every process, wait until healthy")
    common(start)
    start.add_argument("--workers", type=int, default=2, help="Celery workers (default 2)")
    start.add_argument("--worker-concurrency", type=int, default=2, help="task slots per worker (default 2)")
    start.add_argument("--heartbeat-timeout", type=int, default=60,
                       help="seconds without a task heartbeat before the scheduler fails (and retries) the task "
                            "(Airflow's default is 300)")
    start.add_argument("--env", action="append", metavar="KEY=VALUE", help="extra environment for every process "
                       "(e.g. TUNELOOP__TRIGGER__MIN_ERROR_CASES=20); repeatable")
    start.add_argument("--env-file", action="append", metavar="FILE", help="KEY=VALUE lines, like --env")
    start.add_argument("--timeout", type=float, default=420, help="seconds to become healthy (default 420)")
    start.add_argument("--keep-on-failure", action="store_true", help="keep the databases if start fails")
    start.add_argument("--postgres", default=os.environ.get("TUNELOOP_CLUSTER_POSTGRES", DEFAULT_POSTGRES))
    start.add_argument("--redis", default=os.environ.get("TUNELOOP_CLUSTER_REDIS", DEFAULT_REDIS))
    start.set_defaults(func=cmd_start)

    stop = commands.add_parser("stop", help="end every process the cluster started")
    common(stop)
    stop.add_argument("--drop", action="store_true", help="also drop its databases and empty its Redis database")
    stop.add_argument("--remove-state", action="store_true", help="with --drop: delete the state directory too")
    stop.add_argument("--grace", type=float, default=15, help="seconds between SIGTERM and SIGKILL (default 15)")
    stop.set_defaults(func=cmd_stop)

    status = commands.add_parser("status", help="processes and health; exit 1 unless all is up")
    common(status)
    status.set_defaults(func=cmd_status)

    env = commands.add_parser("env", help="the environment of a client of the cluster (shell or --json)")
    common(env)
    env.add_argument("--json", action="store_true")
    env.set_defaults(func=cmd_env)

    kill = commands.add_parser("kill-worker", help="SIGKILL worker N's whole process tree (failure drill)")
    common(kill)
    kill.add_argument("number", type=int)
    kill.set_defaults(func=cmd_kill_worker)

    restart = commands.add_parser("start-worker", help="start worker N again (after kill-worker)")
    common(restart)
    restart.add_argument("number", type=int)
    restart.add_argument("--timeout", type=float, default=180)
    restart.set_defaults(func=cmd_start_worker)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ClusterError as error:
        say(f"error: {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
