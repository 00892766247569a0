"""What can be checked of the Dockerfiles without a Docker engine: pinned bases, sources that exist, pins that
match the project's lock, no Airflow in the trainer image, and the trainer's command line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tuneloop.backends.command import ENTRYPOINT

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"airflow": REPO / "Dockerfile", "trainer": REPO / "include" / "trainer" / "Dockerfile"}


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in (raw.strip() for raw in text.splitlines()) if line and not line.startswith("#")]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;#]+)", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_images_are_pinned_and_sources_exist(name):
    instructions = _instructions(DOCKERFILES[name])
    bases = [args.split()[0] for op, args in instructions if op == "FROM"]
    assert bases and all(":" in base and not base.endswith(":latest") for base in bases), bases
    for op, args in instructions:
        if op == "COPY":
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            for source in sources:
                assert (REPO / source).exists(), f"{name} Dockerfile copies {source}, which is not in the repo"


def test_the_airflow_image_is_the_locked_airflow_version():
    (base,) = [args for op, args in _instructions(DOCKERFILES["airflow"]) if op == "FROM"]
    assert base.startswith(f"apache/airflow:{_pins(REPO / 'requirements.txt')['apache-airflow']}-python3.11")


def test_the_trainer_image_holds_no_airflow_and_matches_the_lock():
    trainer = _pins(REPO / "include" / "trainer" / "requirements.txt")
    lock = _pins(REPO / "requirements.txt")
    assert not [name for name in trainer if "airflow" in name]
    mismatched = {name: (version, lock.get(name)) for name, version in trainer.items()
                  if lock.get(name, "").split("+")[0] != version}
    assert not mismatched, f"trainer pins differ from requirements.txt: {mismatched}"
    text = DOCKERFILES["trainer"].read_text()
    assert "airflow" not in re.sub(r"#.*", "", text).lower()
    assert f"torch=={trainer['torch']}" in text  # the CUDA wheel is the same torch version as the lock


def test_the_trainer_image_runs_the_shared_command_line():
    (entrypoint,) = [args for op, args in _instructions(DOCKERFILES["trainer"]) if op == "ENTRYPOINT"]
    assert entrypoint == '["' + '", "'.join(ENTRYPOINT) + '"]'
