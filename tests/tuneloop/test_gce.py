"""The gce backend: the exact VM body and startup script, and the marker protocol run for real.

The startup script is executed by bash with stand-ins for what only a COS VM has (docker, cos-extensions, mount,
poweroff); the stand-in for ``docker run ... gcloud storage cp`` uploads through the real google-cloud-storage
client to a GCS emulator on loopback, where ``read_marker`` finds it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuneloop.backends.base import TrainerFailed
from tuneloop.backends.command import train_args
from tuneloop.backends.gce import (
    CLOUD_SDK_IMAGE,
    check_marker,
    instance_body,
    instance_name,
    marker_uri,
    read_marker,
    startup_script,
)
from tuneloop.config import GceConfig

CONFIG = GceConfig(project_id="acme-ml", zone="europe-west4-a", machine_type="g2-standard-8",
                   accelerator_type="nvidia-l4", accelerator_count=1,
                   service_account_email="tuneloop-trainer@acme-ml.iam.gserviceaccount.com",
                   bucket="gs://acme-tuneloop/prod")
IMAGE = "europe-docker.pkg.dev/acme/ml/tuneloop-trainer:0.3.0"


def test_the_exact_instance_body():
    body = instance_body(CONFIG, name="tuneloop-train-r1-abc", script="#!/bin/bash\n", labels={"run": "r1"})
    assert body == {
        "name": "tuneloop-train-r1-abc",
        "machineType": "zones/europe-west4-a/machineTypes/g2-standard-8",
        "disks": [{"boot": True, "autoDelete": True, "initializeParams": {
            "sourceImage": "projects/cos-cloud/global/images/family/cos-stable", "diskSizeGb": "100"}}],
        "networkInterfaces": [{"network": "global/networks/default"}],
        "scheduling": {"onHostMaintenance": "TERMINATE", "automaticRestart": False},
        "metadata": {"items": [{"key": "startup-script", "value": "#!/bin/bash\n"}]},
        "labels": {"app": "tuneloop-trainer", "run": "r1"},
        "guestAccelerators": [{"acceleratorType": "zones/europe-west4-a/acceleratorTypes/nvidia-l4",
                               "acceleratorCount": 1}],
        "serviceAccounts": [{"email": "tuneloop-trainer@acme-ml.iam.gserviceaccount.com",
                             "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}],
    }


def test_the_exact_startup_script():
    marker = marker_uri(CONFIG.bucket, "r1-1234", "train")
    script = startup_script(CONFIG, image=IMAGE, args=train_args("gs://acme-tuneloop/prod/runs/r1/spec.json"),
                            marker=marker, env={"MLFLOW_TRACKING_URI": "https://mlflow.acme.internal"})
    assert marker == "gs://acme-tuneloop/prod/runs/r1-1234/markers/train.json"
    assert script == (
        "#!/bin/bash\n"
        "# tuneloop trainer VM: run one trainer step, write the completion marker, power off.\n"
        "set -u\n"
        "MARKER=gs://acme-tuneloop/prod/runs/r1-1234/markers/train.json\n"
        "IMAGE=europe-docker.pkg.dev/acme/ml/tuneloop-trainer:0.3.0\n"
        "cos-extensions install gpu -- -version=latest\n"
        "mount --bind /var/lib/nvidia /var/lib/nvidia\n"
        "mount -o remount,exec /var/lib/nvidia\n"
        "docker-credential-gcr configure-docker --registries=europe-docker.pkg.dev\n"
        'STARTED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"\n'
        "docker run --rm --name tuneloop-trainer --volume /var/lib/nvidia/lib64:/usr/local/nvidia/lib64 "
        "--volume /var/lib/nvidia/bin:/usr/local/nvidia/bin --device /dev/nvidia0:/dev/nvidia0 "
        "--device /dev/nvidia-uvm:/dev/nvidia-uvm --device /dev/nvidiactl:/dev/nvidiactl "
        "-e MLFLOW_TRACKING_URI=https://mlflow.acme.internal \"$IMAGE\" python -m tuneloop_trainer train --spec "
        "gs://acme-tuneloop/prod/runs/r1/spec.json\n"
        "CODE=$?\n"
        "printf '{\"exit_code\": %d, \"started_at\": \"%s\", \"finished_at\": \"%s\", \"instance\": \"%s\"}\\n' "
        "\"$CODE\" \"$STARTED\" \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" \"$(hostname)\" > /tmp/tuneloop-marker.json\n"
        f"docker run --rm --volume /tmp/tuneloop-marker.json:/marker.json:ro {CLOUD_SDK_IMAGE} "
        "gcloud storage cp /marker.json \"$MARKER\"\n"
        "poweroff\n"
    )


def test_names_and_bucket_are_checked():
    name = instance_name("manual__2026-11-22T04:00:00+00:00", "train")
    assert len(name) <= 63 and name[0].isalpha() and name == name.lower()
    with pytest.raises(ValueError, match="training.gce.bucket: must be a gs:// URI"):
        marker_uri("acme-bucket", "r", "train")


# --- the marker protocol against a GCS emulator ----------------------------------------------------------------

FAKE_DOCKER = """#!/bin/bash
# Stand-in for docker on the VM: the trainer exits with $FAKE_TRAINER_EXIT; "gcloud storage cp" uploads the
# mounted marker file to the (emulated) bucket with the real google-cloud-storage client.
if [[ "$*" == *tuneloop_trainer* ]]; then echo "trainer: $*" >> "$FAKE_LOG"; exit "$FAKE_TRAINER_EXIT"; fi
if [[ "$*" == *"gcloud storage cp"* ]]; then
  src=""; for arg in "$@"; do case "$arg" in *:/marker.json:ro) src="${arg%%:/marker.json:ro}";; esac; done
  exec "$FAKE_PYTHON" -c 'import sys
from google.cloud import storage
bucket, _, name = sys.argv[2].removeprefix("gs://").partition("/")
storage.Client(project="test").bucket(bucket).blob(name).upload_from_filename(sys.argv[1])' "$src" "${@: -1}"
fi
echo "unexpected docker call: $*" >&2; exit 99
"""


@pytest.fixture
def vm(tmp_path, gcs_emulator):
    """A fake COS machine: PATH stand-ins for docker, cos-extensions, docker-credential-gcr, mount, poweroff."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    for tool in ("cos-extensions", "docker-credential-gcr", "mount", "poweroff"):
        (bin_dir / tool).write_text(f'#!/bin/bash\necho "{tool} $*" >> "$FAKE_LOG"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return bin_dir


def _boot(vm: Path, tmp_path: Path, script: str, exit_code: int, emulator: str) -> str:
    env = {**os.environ, "PATH": f"{vm}:{os.environ['PATH']}", "FAKE_TRAINER_EXIT": str(exit_code),
           "FAKE_LOG": str(tmp_path / "vm.log"), "FAKE_PYTHON": sys.executable, "STORAGE_EMULATOR_HOST": emulator}
    subprocess.run(["bash", "-c", script], env=env, check=True, timeout=60)
    return (tmp_path / "vm.log").read_text()


@pytest.mark.parametrize("run_key", ["ok-run"])
def test_a_successful_run_leaves_a_marker_that_passes(vm, tmp_path, gcs_emulator, run_key):
    from google.cloud import storage

    client = storage.Client(project="test")
    uri = marker_uri("gs://acme-tuneloop/prod", run_key, "train")
    assert read_marker(client, uri) is None  # the VM is still working
    script = startup_script(CONFIG, image=IMAGE, args=train_args("gs://acme-tuneloop/prod/spec.json"), marker=uri)
    log = _boot(vm, tmp_path, script, 0, gcs_emulator)
    assert "cos-extensions install gpu" in log and "trainer: run --rm --name tuneloop-trainer" in log
    assert log.rstrip().endswith("poweroff")
    marker = check_marker(read_marker(client, uri), uri)
    assert marker.exit_code == 0 and marker.instance and marker.finished_at >= marker.started_at


def test_a_failed_run_leaves_a_marker_that_fails_clearly(vm, tmp_path, gcs_emulator):
    from google.cloud import storage

    client = storage.Client(project="test")
    uri = marker_uri("gs://acme-tuneloop/prod", "failed-run", "train")
    script = startup_script(CONFIG.model_copy(update={"accelerator_count": 0}), image=IMAGE,
                            args=train_args("gs://acme-tuneloop/prod/spec.json"), marker=uri)
    log = _boot(vm, tmp_path, script, 3, gcs_emulator)
    assert "cos-extensions" not in log  # no GPU asked for, no driver installed
    marker = read_marker(client, uri)
    assert marker is not None and marker.exit_code == 3
    with pytest.raises(TrainerFailed, match=r"exited with status 3 .*marker gs://acme-tuneloop/prod/runs/"
                                            r"failed-run/markers/train.json"):
        check_marker(marker, uri)


def test_a_broken_marker_is_an_error_naming_it(gcs_emulator):
    from google.cloud import storage

    from tuneloop.backends.gce import MarkerError

    client = storage.Client(project="test")
    uri = "gs://acme-tuneloop/prod/runs/broken/markers/train.json"
    client.bucket("acme-tuneloop").blob("prod/runs/broken/markers/train.json").upload_from_string("{not json")
    with pytest.raises(MarkerError, match="completion marker gs://acme-tuneloop/prod/runs/broken/markers/train.json"):
        read_marker(client, uri)


# --- the Airflow side: the deferrable wait ----------------------------------------------------------------------

def _first_event(trigger):
    import asyncio

    async def first():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(first())


def test_marker_trigger_serializes_every_argument():
    from tuneloop.triggers.gce_marker import GceMarkerTrigger

    trigger = GceMarkerTrigger(marker_uri="gs://b/m.json", gcp_conn_id="gcp", poll_seconds=5, deadline=123.0)
    assert trigger.serialize() == ("tuneloop.triggers.gce_marker.GceMarkerTrigger", {
        "marker_uri": "gs://b/m.json", "gcp_conn_id": "gcp", "poll_seconds": 5, "deadline": 123.0})


def test_marker_trigger_and_sensor_against_the_emulator(vm, tmp_path, gcs_emulator):
    import time

    from airflow.sdk.exceptions import TaskDeferred

    from tuneloop.sensors.gce_marker import GceMarkerSensor
    from tuneloop.triggers.gce_marker import GceMarkerTrigger

    uri = marker_uri("gs://acme-tuneloop/prod", "sensor-run", "train")
    timeout = _first_event(GceMarkerTrigger(marker_uri=uri, gcp_conn_id="x", poll_seconds=0.1,
                                            deadline=time.time() + 0.3))
    assert timeout == {"status": "timeout", "marker_uri": uri}

    sensor = GceMarkerSensor(task_id="wait_for_train", marker_uri=uri, poll_seconds=0.1, timeout_hours=0.01)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    trigger = deferred.value.trigger
    assert deferred.value.method_name == "execute_complete" and trigger.marker_uri == uri

    script = startup_script(CONFIG, image=IMAGE, args=train_args("gs://acme-tuneloop/prod/spec.json"), marker=uri)
    _boot(vm, tmp_path, script, 7, gcs_emulator)
    event = _first_event(trigger)
    assert event["status"] == "success" and event["marker"]["exit_code"] == 7
    with pytest.raises(TrainerFailed, match="exited with status 7"):
        sensor.execute_complete({}, event)
    with pytest.raises(TrainerFailed, match="no completion marker"):
        sensor.execute_complete({}, timeout)
