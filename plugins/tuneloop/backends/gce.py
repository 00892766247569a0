"""The ``gce`` backend: one GPU VM per trainer step, told what to do by its startup script.

The VM boots Container-Optimized OS, installs the GPU driver, runs the trainer image with the same command line
as every other backend, writes a completion marker ``{"exit_code", "started_at", "finished_at", "instance"}``
to the bucket and powers off. Airflow waits for the marker (a deferrable sensor), reads it, fails clearly on a
non-zero exit status, and deletes the VM whatever happened. Everything here is plain data or one call to the
real client: the exact instance body and script are testable without a cloud project; the marker protocol is tested
against a GCS emulator, creating and deleting VMs against a stand-in speaking the Compute Engine REST API.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tuneloop.backends.base import TrainerFailed
from tuneloop.backends.command import ENTRYPOINT
from tuneloop.config import DEFAULT_MODEL, GceConfig
from tuneloop.pipeline import run_folder

# Uploads the marker from a machine that has no gcloud: Google's own CLI image, pinned.
CLOUD_SDK_IMAGE = "gcr.io/google.com/cloudsdktool/google-cloud-cli:545.0.0-slim"
_NOT_NAME = re.compile(r"[^a-z0-9-]+")
# Creating a GPU VM usually takes under a minute; deleting one a minute or two.
OPERATION_TIMEOUT_SECONDS = 600.0


class MarkerError(TrainerFailed):
    """A completion marker that cannot be read (bad JSON, missing field): the VM's outcome is unknown."""


class VmError(RuntimeError):
    """Compute Engine refused or failed to create or delete a trainer VM; the message names the VM and the reason."""


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


def instance_name(run_id: str, step: str, model: str = DEFAULT_MODEL) -> str:
    """A valid GCE instance name (RFC 1035, at most 63 characters), unique per model, run id and step (two
    models' DAGs get the same run ids)."""
    scoped = run_id if model == DEFAULT_MODEL else f"{model}/{run_id}"
    digest = hashlib.sha256(f"{scoped}/{step}".encode()).hexdigest()[:10]
    readable = _NOT_NAME.sub("-", f"tuneloop-{step}-{scoped}".lower()).strip("-")[:50].rstrip("-")
    return f"{readable}-{digest}"


def marker_uri(storage_root: str, run_key: str, step: str, model: str = DEFAULT_MODEL) -> str:
    """Where the VM of ``step`` writes its marker: ``<run folder>/markers/<step>.json``, in the run's folder
    (``pipeline.RunPaths.marker``, ``pipeline.run_folder``); the VM can only reach object storage."""
    if not storage_root.startswith("gs://"):
        raise ValueError(f"storage_root: the gce backend needs a gs:// URI, got {storage_root!r}")
    return f"{storage_root.rstrip('/')}/{run_folder(model, run_key)}/markers/{step}.json"


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


# --- creating and deleting the VM -------------------------------------------------------------------------------


def compute_client(credentials: Any, api_endpoint: str | None = None) -> Any:
    """A ``compute_v1.InstancesClient`` over REST, at Google's endpoint or ``api_endpoint``.

    ``api_endpoint`` may carry its scheme (``http://127.0.0.1:PORT`` for the tests' stand-in): the REST transport
    keeps a given scheme and only adds ``https://`` to a bare host. The client waits for insert and delete through
    a zone-operations client it builds without our client options, i.e. always at compute.googleapis.com; so with
    a custom endpoint we hand it one at the same endpoint, or it would create the VM in one place and poll another.
    """
    from google.api_core.client_options import ClientOptions
    from google.cloud import compute_v1

    if not api_endpoint:
        return compute_v1.InstancesClient(credentials=credentials, transport="rest")
    options = ClientOptions(api_endpoint=api_endpoint)
    client = compute_v1.InstancesClient(credentials=credentials, transport="rest", client_options=options)
    operations = compute_v1.ZoneOperationsClient(credentials=credentials, transport="rest", client_options=options)
    client._transport._extended_operations_services["zone_operations"] = operations
    return client


def create_vm(client: Any, *, project: str, zone: str, body: dict[str, Any],
              timeout: float = OPERATION_TIMEOUT_SECONDS) -> dict[str, Any]:
    """Create the VM ``body`` describes and wait until Compute Engine has it running (not until the trainer ends).

    Idempotent, so a retried task may call it again: a VM of that name already there (409 alreadyExists) is taken
    as this one. Returns ``{"name", "status", "created"}``, ``created`` False when it already existed. Anything
    else Compute Engine says no to is a VmError naming the VM and Compute Engine's reasons.
    """
    from google.api_core.exceptions import Conflict
    from google.cloud import compute_v1

    name = body["name"]
    instance = compute_v1.Instance.from_json(json.dumps(body))  # the body is the API's JSON (camelCase) form
    try:
        _run_operation(lambda: client.insert(project=project, zone=zone, instance_resource=instance),
                       f"creating VM {name} in {project}/{zone}", timeout, passes=Conflict)
        created = True
    except Conflict as error:
        if not _already_exists(error):
            raise VmError(f"creating VM {name} in {project}/{zone} failed: {error}") from error
        created = False
    status = client.get(project=project, zone=zone, instance=name).status
    return {"name": name, "status": status, "created": created}


def vm_created_at(client: Any, *, project: str, zone: str, name: str) -> datetime | None:
    """When the VM was created (Compute Engine's ``creationTimestamp``), or None when there is none."""
    from google.api_core.exceptions import NotFound

    try:
        instance = client.get(project=project, zone=zone, instance=name)
    except NotFound:
        return None
    return datetime.fromisoformat(instance.creation_timestamp) if instance.creation_timestamp else None


def delete_vm(client: Any, *, project: str, zone: str, name: str,
              timeout: float = OPERATION_TIMEOUT_SECONDS) -> bool:
    """Delete the VM and wait until it is gone: True. False when there was none (a retried cleanup, or a create
    that never happened): cleaning up must not fail on that; any other refusal is a VmError."""
    from google.api_core.exceptions import NotFound

    try:
        _run_operation(lambda: client.delete(project=project, zone=zone, instance=name),
                       f"deleting VM {name} in {project}/{zone}", timeout, passes=NotFound)
    except NotFound:
        return False
    return True


def _run_operation(start: Callable[[], Any], what: str, timeout: float, *, passes: type[Exception]) -> None:
    """Start a zonal operation and wait for it. ``passes`` (the error the caller judges) goes through unchanged;
    any other API error or the timeout is a VmError saying what failed (the client's message carries a failed
    operation's ``error.errors``, e.g. "503 SERVICE UNAVAILABLE ZONE_RESOURCE_POOL_EXHAUSTED: ...")."""
    from google.api_core.exceptions import GoogleAPICallError

    try:
        start().result(timeout=timeout)
    except passes:
        raise
    except GoogleAPICallError as error:
        raise VmError(f"{what} failed: {error}") from error
    except TimeoutError as error:  # concurrent.futures.TimeoutError since Python 3.11
        raise VmError(f"{what}: the operation was not done within {timeout:g} s") from error


def _already_exists(error: Exception) -> bool:
    """A 409 meaning "a VM of that name exists" (GCE's reason ``alreadyExists``, or an operation's
    ``RESOURCE_ALREADY_EXISTS``), not another conflict."""
    return "already exists" in str(error)
