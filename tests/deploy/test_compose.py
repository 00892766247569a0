"""docker-compose.yaml, checked without Docker: it parses, every image is pinned, no secret is written in it,
and every service runs a command the native cluster (scripts/cluster) runs too."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
SERVICES = COMPOSE["services"]
# The processes of the production topology, as `program subcommand...`: what the native cluster starts.
CLUSTER_COMMANDS = {
    ("airflow", "api-server"), ("airflow", "scheduler"), ("airflow", "dag-processor"), ("airflow", "triggerer"),
    ("airflow", "celery", "worker"), ("mlflow", "server"), ("airflow", "db", "migrate"),
}
SECRET_KEYS = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$", re.IGNORECASE)


def _command(service: dict) -> list[str]:
    command = service["command"]
    return command if isinstance(command, list) else command.split()


def test_the_official_topology_is_there():
    assert {"postgres", "redis", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-worker",
            "airflow-triggerer", "airflow-init", "mlflow"} <= set(SERVICES)
    env = SERVICES["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["TUNELOOP__STORE_URL"].startswith("postgresql+psycopg2://") and env["TUNELOOP__STORE_URL"].endswith(
        "@postgres/tuneloop")
    assert env["TUNELOOP__MLFLOW__TRACKING_URI"] == "http://mlflow:5000"
    assert SERVICES["airflow-worker"]["deploy"]["replicas"] == 2


@pytest.mark.parametrize("name", [n for n in SERVICES if "command" in SERVICES[n]])
def test_every_command_is_one_the_native_cluster_runs(name):
    command = _command(SERVICES[name])
    if command[:2] == ["bash", "-c"]:  # the init job chains its commands: exactly the native cluster's init
        parts = [tuple(shlex.split(p)) for p in command[2].split("&&")]
        assert parts == list(_cluster_module().INIT_COMMANDS), f"{name}: {parts}"
        return
    known = [c for c in CLUSTER_COMMANDS if tuple(command[: len(c)]) == c]
    assert known, f"{name}: {command} is not a cluster command"


def _cluster_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cluster", REPO / "scripts" / "cluster" / "cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_native_cluster_script_starts_the_same_processes():
    script = (REPO / "scripts" / "cluster" / "cluster.py").read_text()
    for command in CLUSTER_COMMANDS:
        words = command[1:] if command[0] == "airflow" else command
        assert all(f'"{word}"' in script for word in words), f"scripts/cluster/cluster.py does not run {command}"


def test_images_are_pinned():
    images = {name: s["image"] for name, s in SERVICES.items() if "image" in s}
    images["x-tuneloop-common"] = COMPOSE["x-tuneloop-common"]["image"]
    for name, image in images.items():
        tag = re.sub(r"\$\{[^}]*:-([^}]*)\}", r"\1", image)  # the default of ${VAR:-default}
        assert ":" in tag and not tag.endswith(":latest"), f"{name}: image {image} is not pinned"


def _strings(value, path=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")
    elif isinstance(value, str):
        yield path, value


def test_no_secret_in_plain_text():
    for path, value in _strings(COMPOSE):
        key = path.rsplit(".", 1)[-1]
        if SECRET_KEYS.search(key) and value and not value.startswith("${"):
            pytest.fail(f"{path} holds a literal value; take it from the environment (.env)")
        for credential in re.findall(r"://[^:/@\s]+:([^@\s]*)@", value):
            assert credential.startswith("${") or credential == "", f"{path}: a password in a URL"


def test_env_example_has_no_values_for_secrets():
    for line in (REPO / ".env.example").read_text().splitlines():
        if line and not line.startswith("#") and SECRET_KEYS.search(line.split("=")[0]):
            assert line.split("=", 1)[1] == "", f".env.example must not ship a secret: {line}"
