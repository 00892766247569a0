"""The README's UI command, verbatim, from a shell that never activated the venv: every component starts, the UI
answers its health endpoint, the REST API lists the three DAGs, the LocalExecutor forks no more workers than the
machine has CPUs, and stopping it the way Ctrl-C does leaves no process behind."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
COMMAND = ".venv/bin/airflow standalone"  # as printed in README.md and by `make ui`
DAG_IDS = {"finetune_weekly", "finetune_on_errors", "finetune_rollback"}
STARTUP_S = 180  # a fresh metadata DB is migrated first; measured ~25 s on an idle 2-core machine
STOP_S = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fresh_shell_env(home: Path) -> dict[str, str]:
    """This environment without any Airflow/tuneloop setting and without the venv on PATH (nobody activated it);
    a temporary AIRFLOW_HOME and free ports, so a developer's own UI or .airflow is never touched."""
    venv_bin = str(REPO / ".venv" / "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TUNELOOP", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p.rstrip("/") != venv_bin)
    env.update({
        "AIRFLOW_HOME": str(home / "airflow"),
        "TUNELOOP_HOME": str(home / "tuneloop"),
        "AIRFLOW__API__PORT": str(_free_port()),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__LOGGING__TRIGGERER_LOG_SERVER_PORT": str(_free_port()),
    })
    return env


def _started_by(groups: set[int], home: str) -> list[psutil.Process]:
    """Every live process in one of ``groups``, or anywhere with this test's AIRFLOW_HOME in its environment (one
    that moved to a session of its own; setproctitle hides the environment of some of the others)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and (
                    os.getpgid(proc.pid) in groups or proc.environ().get("AIRFLOW_HOME") == home):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue
    return found


def _groups(pid: int) -> set[int]:
    """The process groups of ``pid`` and all its descendants (standalone runs in a group of its own)."""
    groups = {os.getpgid(pid)}
    for child in psutil.Process(pid).children(recursive=True):
        try:
            groups.add(os.getpgid(child.pid))
        except ProcessLookupError:
            continue
    return groups


def _wait_for(what: str, probe: Callable[[], Any], server: subprocess.Popen, log: Path, deadline: float) -> Any:
    """Poll ``probe`` until it returns something truthy; fail early, with the log tail, if the server died."""
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"`{COMMAND}` exited ({server.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        try:
            result = probe()
            if result:
                return result
        except (requests.ConnectionError, requests.Timeout, FileNotFoundError):
            pass
        time.sleep(2)
    pytest.fail(f"no {what} within {STARTUP_S} s of `{COMMAND}`:\n{log.read_text()[-4000:]}")


STOPS = {  # how people stop it: Ctrl-C signals the terminal's process group; `kill` (or a closed terminal) the command
    "ctrl-c": lambda pid: os.killpg(pid, signal.SIGINT),
    "kill": lambda pid: os.kill(pid, signal.SIGTERM),
}
# How each is started: from a terminal (SIGINT at its default, whatever the test runner inherited: pytest started
# as a background job, as `... &` in a script, runs with SIGINT ignored, and an ignored signal survives exec); `kill`
# also as a script's background job (`... &`, nohup), which starts with SIGINT ignored, so standalone would never
# see the SIGINT that stops it.
STARTS = {"ctrl-c": lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
          "kill": lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)}


@pytest.fixture(params=sorted(STOPS))
def standalone(request, tmp_path: Path) -> Iterator[tuple[str, dict[str, str], subprocess.Popen, Path]]:
    """Starts the README's command as a terminal would (a process group of its own) and stops it with Ctrl-C (SIGINT
    to that group) or `kill` (SIGTERM to the command: Airflow's standalone alone would leave every component
    running); asserts that nothing it started is left (anything left is killed, so no failure leaks)."""
    env = _fresh_shell_env(tmp_path)
    log = tmp_path / "standalone.log"
    with log.open("wb") as out:
        server = subprocess.Popen(shlex.split(COMMAND), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True, preexec_fn=STARTS[request.param])
    try:
        yield f"http://127.0.0.1:{env['AIRFLOW__API__PORT']}", env, server, log
    finally:
        groups = _groups(server.pid) if server.poll() is None else {server.pid}
        STOPS[request.param](server.pid)
        try:
            server.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 10
        while (left := _started_by(groups, env["AIRFLOW_HOME"])) and time.monotonic() < deadline:
            time.sleep(0.5)
        described = []
        for proc in left:
            try:
                described.append((proc.pid, proc.cmdline()[:4]))
                proc.kill()
            except psutil.NoSuchProcess:
                continue
        assert server.returncode is not None and not left, (
            f"{STOP_S} s after {request.param}: `{COMMAND}` exit status {server.returncode}, still running: {described}")


@pytest.mark.slow
def test_the_readme_ui_command_serves_the_three_dags(standalone):
    url, env, server, log = standalone
    assert COMMAND in (REPO / "README.md").read_text(), "the README no longer documents this command"
    deadline = time.monotonic() + STARTUP_S

    def healthy() -> dict[str, Any] | None:
        health = requests.get(f"{url}/api/v2/monitor/health", timeout=5).json()
        parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
        return health if all((health.get(p) or {}).get("status") == "healthy" for p in parts) else None

    _wait_for("healthy /api/v2/monitor/health", healthy, server, log, deadline)
    # standalone generates the admin password and writes it here (the README says where to find it)
    password_file = Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
    password = json.loads(password_file.read_text())["admin"]
    response = requests.post(f"{url}/auth/token", json={"username": "admin", "password": password}, timeout=10)
    assert response.status_code in (200, 201), response.text
    headers = {"Authorization": f"Bearer {response.json()['access_token']}"}

    def dags() -> set[str] | None:
        body = requests.get(f"{url}/api/v2/dags", headers=headers, timeout=10).json()
        listed = {dag["dag_id"] for dag in body.get("dags", [])}
        return listed if DAG_IDS <= listed else None

    assert DAG_IDS <= _wait_for("the three DAGs in GET /api/v2/dags", dags, server, log, deadline)
    running = _started_by(_groups(server.pid), env["AIRFLOW_HOME"])
    workers = [p for p in running if "LocalExecutor" in " ".join(p.cmdline())]
    assert 0 < len(workers) <= max(2, os.cpu_count() or 1), [p.cmdline() for p in workers]
