"""The gce backend: the exact VM body and startup script, and the marker protocol run for real.

The startup script is executed by bash with stand-ins for what only a COS VM has (tests/standins/cos_vm.py: docker,
cos-extensions, mount, poweroff, hostname): ``docker run`` of the trainer image runs the real trainer command here,
and ``docker run ... gcloud storage cp`` uploads through the real google-cloud-storage client to a GCS emulator on
loopback, where ``read_marker`` finds it. VMs are created and deleted by the real Compute Engine client against a
stand-in REST API (tests/standins/compute_api.py) that boots them the same way.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from tuneloop.backends.base import TrainerFailed
from tuneloop.backends.command import train_args
from tuneloop.backends.gce import (
    CLOUD_SDK_IMAGE,
    VmError,
    check_marker,
    create_vm,
    delete_vm,
    instance_body,
    instance_name,
    marker_uri,
    read_marker,
    startup_script,
    vm_created_at,
)
from tuneloop.config import GceConfig
from tests.standins.cos_vm import CosMachine

CONFIG = GceConfig(project_id="acme-ml", zone="europe-west4-a", machine_type="g2-standard-8",
                   accelerator_type="nvidia-l4", accelerator_count=1,
                   service_account_email="tuneloop-trainer@acme-ml.iam.gserviceaccount.com")
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
    marker = marker_uri("gs://acme-tuneloop/prod", "r1-1234", "train")
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
    with pytest.raises(ValueError, match="storage_root: the gce backend needs a gs:// URI"):
        marker_uri("acme-bucket", "r", "train")


# --- the marker protocol against a GCS emulator ----------------------------------------------------------------

# The real trainer CLI, run by the docker stand-in: ``--help`` exits 0, a spec that is not there exits 2.
SUCCEEDS = ["--help"]
FAILS = train_args("gs://acme-tuneloop/prod/runs/missing/spec.json")


@pytest.fixture
def vm(tmp_path, gcs_emulator) -> CosMachine:
    """A stand-in COS machine (tests/standins/cos_vm.py) whose marker uploads go to the GCS emulator."""
    return CosMachine.install(tmp_path / "vm", hostname="tuneloop-test-vm", storage_emulator=gcs_emulator)


@pytest.mark.parametrize("run_key", ["ok-run"])
def test_a_successful_run_leaves_a_marker_that_passes(vm, run_key):
    from google.cloud import storage

    client = storage.Client(project="test")
    uri = marker_uri("gs://acme-tuneloop/prod", run_key, "train")
    assert read_marker(client, uri) is None  # the VM is still working
    script = startup_script(CONFIG, image=IMAGE, args=SUCCEEDS, marker=uri)
    assert vm.run(script) == 0
    log = vm.log()
    assert "cos-extensions install gpu" in log and "docker run --rm --name tuneloop-trainer" in log
    assert log.rstrip().endswith("poweroff") and "usage: python -m tuneloop_trainer" in vm.console()
    marker = check_marker(read_marker(client, uri), uri)
    assert marker.exit_code == 0 and marker.instance == "tuneloop-test-vm"
    assert marker.finished_at >= marker.started_at


def test_a_failed_run_leaves_a_marker_that_fails_clearly(vm):
    from google.cloud import storage

    client = storage.Client(project="test")
    uri = marker_uri("gs://acme-tuneloop/prod", "failed-run", "train")
    script = startup_script(CONFIG.model_copy(update={"accelerator_count": 0}), image=IMAGE, args=FAILS,
                            marker=uri)
    vm.run(script)
    assert "cos-extensions" not in vm.log()  # no GPU asked for, no driver installed
    marker = read_marker(client, uri)
    assert marker is not None and marker.exit_code == 2
    with pytest.raises(TrainerFailed, match=r"exited with status 2 .*marker gs://acme-tuneloop/prod/runs/"
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


# --- creating and deleting the VM: the real client against the Compute Engine stand-in ------------------------

PROJECT = "acme-ml"


@pytest.fixture
def compute(compute_standin):
    """The real InstancesClient, built as the operators build it, pointed at the stand-in."""
    from tuneloop.backends.gce import compute_client
    from tuneloop.hooks.gcp import compute_credentials

    return compute_client(compute_credentials("unused", compute_standin.endpoint), compute_standin.endpoint)


def _trainer_vm(run_key: str, args: list[str]) -> tuple[dict, str]:
    """The exact insert body for one trainer VM, and its marker URI."""
    name = instance_name(run_key, "train")
    uri = marker_uri("gs://acme-tuneloop/prod", run_key, "train")
    script = startup_script(CONFIG, image=IMAGE, args=args, marker=uri)
    return instance_body(CONFIG, name=name, script=script, labels={"run": run_key}), uri


@pytest.mark.parametrize(("args", "exit_code"), [(SUCCEEDS, 0), (FAILS, 2)], ids=["succeeds", "fails"])
def test_a_created_vm_runs_the_trainer_and_leaves_its_marker(compute_standin, compute, args, exit_code):
    from google.cloud import storage

    body, uri = _trainer_vm(f"vm-exit-{exit_code}", args)
    name = body["name"]
    created = create_vm(compute, project=PROJECT, zone=CONFIG.zone, body=body)

    assert created["name"] == name and created["created"] is True
    assert created["status"] in ("RUNNING", "TERMINATED")  # the insert is done once the VM runs, not when it ends
    assert compute_standin.instances == {name: body}  # what the client sent is exactly instance_body(...)
    zone = f"/compute/v1/projects/{PROJECT}/zones/{CONFIG.zone}"
    assert compute_standin.requests[0] == ("POST", f"{zone}/instances")
    assert ("GET", f"{zone}/instances/{name}") in compute_standin.requests
    assert compute_standin.wait_for_script(name) == "TERMINATED"  # the script powered the VM off
    marker = read_marker(storage.Client(project="test"), uri)
    assert marker is not None and marker.instance == name and marker.exit_code == exit_code
    if exit_code:
        with pytest.raises(TrainerFailed, match=f"the trainer on VM {name} exited with status 2"):
            check_marker(marker, uri)
    else:
        check_marker(marker, uri)


def test_the_insert_operation_is_polled_at_the_configured_endpoint(compute_standin, compute):
    """The client polls through a zone-operations client of its own; compute_client points it at our endpoint."""
    body, _ = _trainer_vm("polled", SUCCEEDS)
    create_vm(compute, project=PROJECT, zone=CONFIG.zone, body=body)
    assert any(method == "GET" and "/operations/" in path for method, path in compute_standin.requests)


def test_an_operation_can_be_waited_for(compute_standin, compute):
    """zoneOperations.wait, which the client does not use but gcloud and other tools do."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import compute_v1

    body, _ = _trainer_vm("waited", SUCCEEDS)
    operation = compute.insert_unary(project=PROJECT, zone=CONFIG.zone,
                                     instance_resource=compute_v1.Instance.from_json(json.dumps(body)))
    assert operation.status == compute_v1.Operation.Status.RUNNING and operation.operation_type == "insert"
    operations = compute_v1.ZoneOperationsClient(credentials=AnonymousCredentials(), transport="rest",
                                                 client_options=ClientOptions(api_endpoint=compute_standin.endpoint))
    done = operations.wait(project=PROJECT, zone=CONFIG.zone, operation=operation.name)
    assert done.status == compute_v1.Operation.Status.DONE and done.target_link.endswith(f"/instances/{body['name']}")


def test_creating_twice_is_idempotent(compute_standin, compute):
    body, _ = _trainer_vm("twice", SUCCEEDS)
    first = create_vm(compute, project=PROJECT, zone=CONFIG.zone, body=body)
    second = create_vm(compute, project=PROJECT, zone=CONFIG.zone, body=body)
    assert first["created"] is True and second["created"] is False and second["name"] == body["name"]
    assert second["status"] in ("RUNNING", "TERMINATED")
    assert [request for request in compute_standin.requests if request[0] == "POST"] == [
        ("POST", f"/compute/v1/projects/{PROJECT}/zones/{CONFIG.zone}/instances")] * 2
    assert list(compute_standin.instances) == [body["name"]]


def test_deleting_twice_is_idempotent_and_stops_a_running_trainer(compute_standin, compute):
    from google.api_core.exceptions import NotFound

    body = instance_body(CONFIG, name="tuneloop-train-long", script="#!/bin/bash\nsleep 60\npoweroff\n")
    before = datetime.now(timezone.utc)
    create_vm(compute, project=PROJECT, zone=CONFIG.zone, body=body)
    assert compute_standin.vm_status("tuneloop-train-long") == "RUNNING"
    created = vm_created_at(compute, project=PROJECT, zone=CONFIG.zone, name="tuneloop-train-long")
    assert created is not None and before - timedelta(seconds=1) <= created <= datetime.now(timezone.utc)

    assert delete_vm(compute, project=PROJECT, zone=CONFIG.zone, name="tuneloop-train-long") is True
    assert delete_vm(compute, project=PROJECT, zone=CONFIG.zone, name="tuneloop-train-long") is False
    assert compute_standin.deleted == ["tuneloop-train-long"]
    assert not compute_standin.machine("tuneloop-train-long").powered_off()  # killed in its sleep
    with pytest.raises(NotFound):
        compute.get(project=PROJECT, zone=CONFIG.zone, instance="tuneloop-train-long")
    assert vm_created_at(compute, project=PROJECT, zone=CONFIG.zone, name="tuneloop-train-long") is None


def test_a_failed_insert_operation_is_an_error_naming_the_vm_and_the_reason(compute_standin, compute):
    body, _ = _trainer_vm("no-capacity", SUCCEEDS)
    compute_standin.fail_next_insert("ZONE_RESOURCE_POOL_EXHAUSTED", "The zone 'projects/acme-ml/zones/"
                                     "europe-west4-a' does not have enough resources available to fulfill the request.")
    with pytest.raises(VmError, match=rf"creating VM {body['name']} in acme-ml/europe-west4-a failed: 503 SERVICE "
                                      r"UNAVAILABLE ZONE_RESOURCE_POOL_EXHAUSTED: The zone .* does not have enough"):
        create_vm(compute, project=PROJECT, zone=CONFIG.zone, body=body)
    assert compute_standin.instances == {}


def test_a_refused_insert_is_an_error_naming_the_vm(compute_standin, compute):
    body, _ = _trainer_vm("wrong-zone", SUCCEEDS)  # machineType in europe-west4-a, inserted in us-central1-a
    with pytest.raises(VmError, match=rf"creating VM {body['name']} in acme-ml/us-central1-a failed: 400 POST .*/"
                                      r"instances: Invalid value for field 'resource.machineType'"):
        create_vm(compute, project=PROJECT, zone="us-central1-a", body=body)


def test_the_client_goes_to_google_unless_told_otherwise():
    from google.auth.credentials import AnonymousCredentials

    from tuneloop.backends.gce import compute_client

    assert compute_client(AnonymousCredentials()).api_endpoint == "compute.googleapis.com"
    assert compute_client(AnonymousCredentials(), "http://127.0.0.1:9").api_endpoint == "http://127.0.0.1:9"


# --- the Airflow side: the deferrable wait ----------------------------------------------------------------------

def _first_event(trigger):
    import asyncio

    async def first():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(first())


def test_marker_trigger_serializes_every_argument():
    from tuneloop.triggers.gce_marker import GceMarkerTrigger

    instance = {"project": "p", "zone": "z", "name": "vm", "gcp_conn_id": "gcp", "api_endpoint": None}
    trigger = GceMarkerTrigger(marker_uri="gs://b/m.json", gcp_conn_id="gcp", poll_seconds=5, deadline=123.0,
                               instance=instance)
    path, kwargs = trigger.serialize()
    assert (path, kwargs) == ("tuneloop.triggers.gce_marker.GceMarkerTrigger", {
        "marker_uri": "gs://b/m.json", "gcp_conn_id": "gcp", "poll_seconds": 5, "deadline": 123.0,
        "instance": instance})
    assert GceMarkerTrigger(**kwargs).serialize() == (path, kwargs)


@pytest.mark.parametrize("ending", ["powered off", "deleted"])
def test_a_vm_that_ends_without_a_marker_fails_the_wait_at_once(compute_standin, compute, ending):
    """A VM that cannot write its marker (here: no such bucket), or that is gone (preempted and deleted): the wait
    fails now, naming the VM, instead of at the 12 h deadline."""
    from tuneloop.triggers.gce_marker import GceMarkerTrigger

    name = instance_name(f"no-marker-{ending}", "train")
    uri = f"gs://no-such-bucket/runs/{name}/markers/train.json"
    body = instance_body(CONFIG, name=name, script=startup_script(CONFIG, image=IMAGE, args=SUCCEEDS, marker=uri))
    create_vm(compute, project=PROJECT, zone=CONFIG.zone, body=body)
    assert compute_standin.wait_for_script(name) == "TERMINATED"
    if ending == "deleted":
        delete_vm(compute, project=PROJECT, zone=CONFIG.zone, name=name)
    instance = {"project": PROJECT, "zone": CONFIG.zone, "name": name, "gcp_conn_id": "unused",
                "api_endpoint": compute_standin.endpoint}
    event = _first_event(GceMarkerTrigger(marker_uri=uri, gcp_conn_id="unused", poll_seconds=0.2,
                                          deadline=time.time() + 3600, instance=instance))
    status = "GONE" if ending == "deleted" else "TERMINATED"
    assert event["status"] == "error", event
    assert f"VM {name} is {status} and wrote no completion marker" in event["message"]


def test_marker_trigger_and_sensor_against_the_emulator(vm):
    from airflow.sdk.exceptions import TaskDeferred

    from tuneloop.sensors.gce_marker import GceMarkerSensor
    from tuneloop.triggers.gce_marker import GceMarkerTrigger

    uri = marker_uri("gs://acme-tuneloop/prod", "sensor-run", "train")
    timeout = _first_event(GceMarkerTrigger(marker_uri=uri, gcp_conn_id="x", poll_seconds=0.1,
                                            deadline=time.time() + 0.3))
    assert timeout == {"status": "timeout", "marker_uri": uri}

    sensor = GceMarkerSensor(task_id="wait_for_train", marker_uri=uri, poll_seconds=0.1, timeout_hours=0.01)
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    trigger = deferred.value.trigger
    assert deferred.value.method_name == "execute_complete" and trigger.marker_uri == uri

    vm.run(startup_script(CONFIG, image=IMAGE, args=FAILS, marker=uri))
    event = _first_event(trigger)
    assert event["status"] == "success" and event["marker"]["exit_code"] == 2
    with pytest.raises(AirflowFailException, match="exited with status 2"):  # final: no retry reads it again
        sensor.execute_complete({}, event)
    with pytest.raises(TrainerFailed, match="no completion marker"):
        sensor.execute_complete({}, timeout)


# --- credentials from the connection ----------------------------------------------------------------------------

@pytest.mark.parametrize(("endpoint", "loopback"), [
    ("http://127.0.0.1:8080", True), ("localhost:8080", True), ("http://[::1]:8080", True),
    ("https://compute.googleapis.com", False), ("europe-west4-compute.p.googleapis.com", False)])
def test_only_loopback_endpoints_count_as_loopback(endpoint, loopback):
    from tuneloop.hooks.gcp import is_loopback

    assert is_loopback(endpoint) is loopback


def test_compute_credentials_come_from_the_connection_except_on_loopback(tmp_path, monkeypatch):
    from google.auth.credentials import AnonymousCredentials

    from tuneloop.hooks.gcp import compute_credentials

    adc = tmp_path / "adc.json"  # application default credentials of a user: no key, no network needed
    adc.write_text(json.dumps({"type": "authorized_user", "client_id": "tuneloop.apps.googleusercontent.com",
                               "client_secret": "s", "refresh_token": "r", "quota_project_id": PROJECT}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    monkeypatch.setenv("AIRFLOW_CONN_GCP_TUNELOOP", json.dumps({"conn_type": "google_cloud_platform"}))

    assert isinstance(compute_credentials("gcp_tuneloop", "http://127.0.0.1:9"), AnonymousCredentials)
    credentials = compute_credentials("gcp_tuneloop", None)
    assert credentials.client_id == "tuneloop.apps.googleusercontent.com"
