"""The ``gce`` backend: one GPU VM per trainer step, told what to do by its startup script.

The VM boots Container-Optimized OS, installs the GPU driver, runs the trainer image with the same command line
as every other backend, writes a completion marker ``{"exit_code", "started_at", "finished_at", "instance"}``
to the bucket and powers off. Airflow waits for the marker (a deferrable sensor), reads it, fails clearly on a
non-zero exit status, and deletes the VM whatever happened. Everything here is plain data: the exact instance
body and script are testable without a cloud project; the marker protocol is tested against a GCS emulator.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from typing import Any

from tuneloop.backends.base import TrainerFailed
from tuneloop.backends.command import ENTRYPOINT
from tuneloop.config import GceConfig

# Uploads the marker from a machine that has no gcloud: Google's own CLI image, pinned.
CLOUD_SDK_IMAGE = "gcr.io/google.com/cloudsdktool/google-cloud-cli:545.0.0-slim"
_NOT_NAME = re.compile(r"[^a-z0-9-]+")


class MarkerError(TrainerFailed):
    """A completion marker that cannot be read (bad JSON, missing field): the VM's outcome is unknown."""


@dataclass(frozen=True)
class Marker:
    """What the VM reported when the trainer ended."""

    exit_code: int
    started_at: str
    finished_at: str
    instance: str

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0


def instance_name(run_id: str, step: str) -> str:
    """A valid GCE instance name (RFC 1035, at most 63 characters), unique per run id and step."""
    digest = hashlib.sha256(f"{run_id}/{step}".encode()).hexdigest()[:10]
    readable = _NOT_NAME.sub("-", f"tuneloop-{step}-{run_id}".lower()).strip("-")[:50].rstrip("-")
    return f"{readable}-{digest}"


def marker_uri(bucket: str, run_key: str, step: str) -> str:
    """Where the VM of ``step`` writes its marker: ``gs://bucket/prefix/runs/<run key>/markers/<step>.json``."""
    if not bucket.startswith("gs://"):
        raise ValueError(f"training.gce.bucket: must be a gs:// URI, got {bucket!r}")
    return f"{bucket.rstrip('/')}/runs/{run_key}/markers/{step}.json"


def startup_script(config: GceConfig, *, image: str, args: list[str], marker: str,
                   env: dict[str, str] | None = None) -> str:
    """The VM's startup script (bash on Container-Optimized OS). Every value is shell-quoted; no secrets: the VM
    reaches the bucket, the registry and MLflow with its service account."""
    gpu = config.accelerator_count > 0
    env_flags = " ".join(f"-e {shlex.quote(f'{k}={v}')}" for k, v in sorted((env or {}).items()))
    command = " ".join(shlex.quote(part) for part in [*ENTRYPOINT, *args])
    gpu_setup = (
        "cos-extensions install gpu -- -version=latest\n"
        "mount --bind /var/lib/nvidia /var/lib/nvidia\n"
        "mount -o remount,exec /var/lib/nvidia\n"
    ) if gpu else ""
    gpu_flags = ("--volume /var/lib/nvidia/lib64:/usr/local/nvidia/lib64 "
                 "--volume /var/lib/nvidia/bin:/usr/local/nvidia/bin "
                 "--device /dev/nvidia0:/dev/nvidia0 --device /dev/nvidia-uvm:/dev/nvidia-uvm "
                 "--device /dev/nvidiactl:/dev/nvidiactl ") if gpu else ""
    registry = image.split("/")[0]
    return (
        "#!/bin/bash\n"
        "# tuneloop trainer VM: run one trainer step, write the completion marker, power off.\n"
        "set -u\n"
        f"MARKER={shlex.quote(marker)}\n"
        f"IMAGE={shlex.quote(image)}\n"
        f"{gpu_setup}"
        f"docker-credential-gcr configure-docker --registries={shlex.quote(registry)}\n"
        'STARTED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"\n'
        f'docker run --rm --name tuneloop-trainer {gpu_flags}{env_flags} "$IMAGE" {command}\n'
        "CODE=$?\n"
        'printf \'{"exit_code": %d, "started_at": "%s", "finished_at": "%s", "instance": "%s"}\\n\' '
        '"$CODE" "$STARTED" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(hostname)" > /tmp/tuneloop-marker.json\n'
        f"docker run --rm --volume /tmp/tuneloop-marker.json:/marker.json:ro {CLOUD_SDK_IMAGE} "
        'gcloud storage cp /marker.json "$MARKER"\n'
        "poweroff\n"
    )


def instance_body(config: GceConfig, *, name: str, script: str, labels: dict[str, str] | None = None
                  ) -> dict[str, Any]:
    """The Compute Engine ``instances.insert`` body for one trainer VM."""
    zone = config.zone
    body: dict[str, Any] = {
        "name": name,
        "machineType": f"zones/{zone}/machineTypes/{config.machine_type}",
        "disks": [{"boot": True, "autoDelete": True, "initializeParams": {
            "sourceImage": config.boot_image, "diskSizeGb": str(config.boot_disk_gb)}}],
        "networkInterfaces": [{"network": config.network}],  # no external IP: private Google access
        "scheduling": {"onHostMaintenance": "TERMINATE", "automaticRestart": False},  # required with GPUs
        "metadata": {"items": [{"key": "startup-script", "value": script}]},
        "labels": {"app": "tuneloop-trainer", **(labels or {})},
    }
    if config.accelerator_count:
        body["guestAccelerators"] = [{
            "acceleratorType": f"zones/{zone}/acceleratorTypes/{config.accelerator_type}",
            "acceleratorCount": config.accelerator_count}]
    if config.service_account_email:
        body["serviceAccounts"] = [{"email": config.service_account_email,
                                    "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}]
    return body


def parse_marker(text: str, uri: str) -> Marker:
    """Read a marker; a broken one is a MarkerError naming the URI and what is wrong."""
    try:
        data = json.loads(text)
        return Marker(exit_code=int(data["exit_code"]), started_at=str(data["started_at"]),
                      finished_at=str(data["finished_at"]), instance=str(data["instance"]))
    except (ValueError, KeyError, TypeError) as error:
        raise MarkerError(f"completion marker {uri} is unreadable ({error!r}): {text[:200]!r}") from error


def check_marker(marker: Marker, uri: str) -> Marker:
    """Pass a successful marker through; a non-zero exit status is a TrainerFailed with where to look."""
    if marker.succeeded:
        return marker
    raise TrainerFailed(f"the trainer on VM {marker.instance} exited with status {marker.exit_code} "
                        f"(started {marker.started_at}, ended {marker.finished_at}; marker {uri}); its log is in "
                        f"the VM's serial console and Cloud Logging")


def read_marker(client: Any, uri: str) -> Marker | None:
    """The marker at ``uri`` (a ``google.cloud.storage.Client`` reads it), or None while the VM still works."""
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    blob = client.bucket(bucket).blob(name)
    if not blob.exists():
        return None
    return parse_marker(blob.download_as_text(), uri)
