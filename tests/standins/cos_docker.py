"""``docker`` on the stand-in Container-Optimized OS VM (see :mod:`tests.standins.cos_vm`); run as a program.

The trainer VM's startup script makes two kinds of ``docker run`` call, and this answers both for real, only here:

* the trainer image with ``python -m tuneloop_trainer ...``: the command runs in this machine's Python (the one
  running this file), with the ``-e`` variables, and its exit status is the container's;
* an image with ``gcloud storage cp SRC gs://...``: SRC is mapped through the ``--volume`` options and uploaded
  with the real google-cloud-storage client (to ``STORAGE_EMULATOR_HOST`` in tests).

Every call is appended to ``$VM_LOG``; anything else exits 125, as docker does for a bad command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field

_VALUE_OPTIONS = {"--name", "--volume", "-v", "--device", "-e", "--env"}
_FLAG_OPTIONS = {"--rm"}


@dataclass(frozen=True)
class ContainerRun:
    """What one ``docker run`` asked for."""

    image: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    volumes: dict[str, str] = field(default_factory=dict)  # container path -> host path


def parse_run(args: list[str]) -> ContainerRun:
    """The options of ``docker run ARGS`` the startup script uses; an unknown option is an error, not ignored."""
    env: dict[str, str] = {}
    volumes: dict[str, str] = {}
    position = 0
    while position < len(args) and args[position].startswith("-"):
        option = args[position]
        if option in _FLAG_OPTIONS:
            position += 1
            continue
        if option not in _VALUE_OPTIONS or position + 1 >= len(args):
            raise ValueError(f"unsupported docker run option {option!r}")
        value = args[position + 1]
        if option in ("-e", "--env"):
            key, _, val = value.partition("=")
            env[key] = val
        elif option in ("--volume", "-v"):
            host, container = value.split(":")[:2]
            volumes[container] = host
        position += 2
    if position >= len(args):
        raise ValueError("docker run without an image")
    return ContainerRun(image=args[position], command=args[position + 1:], env=env, volumes=volumes)


def upload(run: ContainerRun) -> int:
    """``gcloud storage cp SRC gs://bucket/name``, SRC being a mounted file."""
    from google.cloud import storage

    source, destination = run.command[3:5]
    bucket, _, name = destination.removeprefix("gs://").partition("/")
    storage.Client(project="cos-vm").bucket(bucket).blob(name).upload_from_filename(run.volumes[source])
    return 0


def run_command(run: ContainerRun) -> int:
    """The container's command, ``python`` being this interpreter; its exit status is the container's."""
    if not run.command or run.command[0] != "python":
        print(f"docker: executable {run.command[:1]} not found in the stand-in image", file=sys.stderr)
        return 127
    return subprocess.run([sys.executable, *run.command[1:]], env={**os.environ, **run.env}).returncode


def main(argv: list[str]) -> int:
    with open(os.environ["VM_LOG"], "a") as log:
        log.write(f"docker {' '.join(argv)}\n")
    if argv[:1] != ["run"]:
        print(f"docker stand-in: unsupported command {argv[:1]}", file=sys.stderr)
        return 125
    try:
        run = parse_run(argv[1:])
    except ValueError as error:
        print(f"docker stand-in: {error}", file=sys.stderr)
        return 125
    if run.command[:3] == ["gcloud", "storage", "cp"]:
        return upload(run)
    return run_command(run)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
