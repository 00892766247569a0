"""A stand-in for the Compute Engine REST API (instances insert/get/delete, zone operations get/wait) on loopback.

The real ``google.cloud.compute_v1.InstancesClient`` talks to it over HTTP, so what the tests check is the request
the client really sends and the responses it really parses. Responses are shaped like the real API's: an
``Operation`` (``RUNNING`` when returned, ``DONE`` once the work is done, ``error.errors[]`` plus
``httpErrorStatusCode`` when it failed) and an ``Instance`` (``PROVISIONING`` -> ``RUNNING`` -> ``TERMINATED``
after the startup script powers off; ``STOPPING`` while being deleted; 404 afterwards). Errors carry GCE's error
body (``alreadyExists`` 409, ``notFound`` 404, ``invalid`` 400).

Inserting "boots" the VM: its ``startup-script`` metadata runs under bash on a :class:`CosMachine`, so the trainer
command really runs here and the completion marker really lands in the GCS emulator.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import threading
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from tests.standins.cos_vm import CosMachine

API = "https://www.googleapis.com/compute/v1"
_ZONE = r"/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)"
_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
_WAIT_SECONDS = 120  # zoneOperations.wait returns after at most two minutes, done or not


class ApiError(Exception):
    """An HTTP error with GCE's error body."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"code": status, "message": message,
                               "errors": [{"message": message, "domain": "global", "reason": reason}]}}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Operation:
    """One zonal operation; ``resource`` is the JSON the API returns."""

    resource: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Vm:
    """A live instance: the body it was inserted with, its status and its running startup script."""

    project: str
    zone: str
    body: dict[str, Any]
    machine: CosMachine
    id: int
    created: str
    status: str = "PROVISIONING"
    process: subprocess.Popen[bytes] | None = None
    script_ended: threading.Event = field(default_factory=threading.Event)


class ComputeStandIn:
    """The API's state and behaviour; :meth:`start` serves it on ``127.0.0.1`` from a background thread.

    ``instances``: every inserted body by name, exactly as received (kept after deletion, for assertions);
    ``deleted``: names deleted, in order; ``requests``: ``(method, path)`` of every request, query string dropped;
    ``errors``: tracebacks of requests the stand-in itself crashed on (answered 500).
    """

    def __init__(self, root: Path, *, storage_emulator: str) -> None:
        self.root = root
        self.storage_emulator = storage_emulator
        self.instances: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self._vms: dict[tuple[str, str, str], Vm] = {}
        self._operations: dict[str, Operation] = {}
        self._next_insert_error: tuple[int, str, str] | None = None
        self._ids = itertools.count(1000)
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    # --- running the server ------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> ComputeStandIn:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def close(self) -> None:
        """Stop serving and kill every VM still running its script."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            for vm in self._vms.values():
                vm.status = "STOPPING"  # a VM still provisioning does not boot any more
                _kill(vm)

    # --- what tests use besides the API ------------------------------------------------------------------------

    def fail_next_insert(self, code: str, message: str, http_status: int = 503) -> None:
        """Make the next insert's operation end in this error (e.g. ``ZONE_RESOURCE_POOL_EXHAUSTED``), creating
        no VM, as GCE does when a zone has no capacity."""
        self._next_insert_error = (http_status, code, message)

    def vm_status(self, name: str) -> str | None:
        """The status of live VM ``name``; None when there is none."""
        vm = self._find(name)
        return vm.status if vm else None

    def wait_for_script(self, name: str, timeout: float = 60) -> str:
        """Wait until live VM ``name``'s startup script has ended; the instance status then."""
        vm = self._find(name)
        if vm is None:
            raise KeyError(f"no VM {name!r}")
        if not vm.script_ended.wait(timeout):
            raise TimeoutError(f"the startup script of VM {name} still runs after {timeout:g} s")
        return vm.status

    def machine(self, name: str) -> CosMachine:
        """The stand-in machine of VM ``name`` (its call log and serial console), also after deletion."""
        return CosMachine(root=self.root / name, hostname=name, storage_emulator=self.storage_emulator)

    # --- the API -----------------------------------------------------------------------------------------------

    def insert(self, project: str, zone: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name", "")
        _validate(zone, body)
        key = (project, zone, name)
        with self._lock:
            if key in self._vms:
                raise ApiError(409, "alreadyExists",
                               f"The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists")
            operation = self._operation(project, zone, "insert", name)
            error, self._next_insert_error = self._next_insert_error, None
            if error is not None:
                threading.Thread(target=self._fail, args=(operation, *error), daemon=True).start()
                return dict(operation.resource)
            self.instances[name] = body
            machine = CosMachine.install(self.root / name, hostname=name, storage_emulator=self.storage_emulator)
            vm = Vm(project=project, zone=zone, body=body, machine=machine, id=next(self._ids), created=_now())
            self._vms[key] = vm
            threading.Thread(target=self._boot, args=(vm, operation), daemon=True).start()
            return dict(operation.resource)

    def get(self, project: str, zone: str, name: str) -> dict[str, Any]:
        with self._lock:
            vm = self._vm(project, zone, name)
            zone_url = f"{API}/projects/{project}/zones/{zone}"
            metadata = {"kind": "compute#metadata", "fingerprint": "c3RhbmQtaW4=", **vm.body.get("metadata", {})}
            return {**vm.body, "kind": "compute#instance", "id": str(vm.id), "creationTimestamp": vm.created,
                    "status": vm.status, "zone": zone_url, "selfLink": f"{zone_url}/instances/{name}",
                    "machineType": f"{API}/projects/{project}/{vm.body['machineType']}", "metadata": metadata}

    def delete(self, project: str, zone: str, name: str) -> dict[str, Any]:
        with self._lock:
            vm = self._vm(project, zone, name)
            vm.status = "STOPPING"
            operation = self._operation(project, zone, "delete", name)
        threading.Thread(target=self._remove, args=(vm, operation), daemon=True).start()
        return dict(operation.resource)

    def get_operation(self, project: str, zone: str, name: str) -> dict[str, Any]:
        with self._lock:
            operation = self._operations.get(name)
            if operation is None or not operation.resource["zone"].endswith(f"/projects/{project}/zones/{zone}"):
                raise ApiError(404, "notFound",
                               f"The resource 'projects/{project}/zones/{zone}/operations/{name}' was not found")
            return dict(operation.resource)

    def wait_operation(self, project: str, zone: str, name: str) -> dict[str, Any]:
        self.get_operation(project, zone, name)
        self._operations[name].done.wait(_WAIT_SECONDS)
        return self.get_operation(project, zone, name)

    # --- behind the API ----------------------------------------------------------------------------------------

    def _find(self, name: str) -> Vm | None:
        with self._lock:
            return next((vm for (_, _, vm_name), vm in self._vms.items() if vm_name == name), None)

    def _vm(self, project: str, zone: str, name: str) -> Vm:
        vm = self._vms.get((project, zone, name))
        if vm is None:
            raise ApiError(404, "notFound", f"The resource 'projects/{project}/zones/{zone}/instances/{name}' "
                                            "was not found")
        return vm

    def _operation(self, project: str, zone: str, kind: str, target: str) -> Operation:
        op_id = next(self._ids)
        name = f"operation-{op_id}-stand-in"
        zone_url = f"{API}/projects/{project}/zones/{zone}"
        operation = Operation(resource={
            "kind": "compute#operation", "id": str(op_id), "name": name, "zone": zone_url, "operationType": kind,
            "targetLink": f"{zone_url}/instances/{target}", "targetId": str(op_id), "status": "RUNNING",
            "user": "stand-in@example.com", "progress": 0, "insertTime": _now(), "startTime": _now(),
            "selfLink": f"{zone_url}/operations/{name}"})
        self._operations[name] = operation
        return operation

    def _finish(self, operation: Operation, **error: Any) -> None:
        with self._lock:
            operation.resource.update(status="DONE", progress=100, endTime=_now(), **error)
        operation.done.set()

    def _fail(self, operation: Operation, http_status: int, code: str, message: str) -> None:
        self._finish(operation, error={"errors": [{"code": code, "message": message}]},
                     httpErrorStatusCode=http_status, httpErrorMessage=_HTTP_MESSAGES.get(http_status, "ERROR"))

    def _boot(self, vm: Vm, operation: Operation) -> None:
        """PROVISIONING -> RUNNING (the insert operation is DONE) -> TERMINATED once the script powers off."""
        script = next((item["value"] for item in vm.body.get("metadata", {}).get("items", [])
                       if item.get("key") == "startup-script"), None)
        with self._lock:
            if vm.status == "PROVISIONING":
                vm.process = vm.machine.boot(script) if script is not None else None
                vm.status = "RUNNING"
        self._finish(operation)
        if vm.process is not None:
            vm.process.wait()
            with self._lock:
                if vm.status == "RUNNING" and vm.machine.powered_off():
                    vm.status = "TERMINATED"
        vm.script_ended.set()

    def _remove(self, vm: Vm, operation: Operation) -> None:
        _kill(vm)
        with self._lock:
            if self._vms.get((vm.project, vm.zone, vm.body["name"])) is vm:
                del self._vms[(vm.project, vm.zone, vm.body["name"])]
                self.deleted.append(vm.body["name"])
        self._finish(operation)


_HTTP_MESSAGES = {400: "BAD REQUEST", 403: "FORBIDDEN", 404: "NOT FOUND", 409: "CONFLICT",
                  503: "SERVICE UNAVAILABLE"}


def _kill(vm: Vm) -> None:
    """Kill the VM's startup script and everything it started (its own process group)."""
    if vm.process is not None and vm.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.killpg(vm.process.pid, signal.SIGKILL)
        vm.process.wait()


def _validate(zone: str, body: dict[str, Any]) -> None:
    """The checks GCE makes that a wrong body from our code would hit first."""
    name = body.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ApiError(400, "invalid", f"Invalid value for field 'resource.name': '{name}'. Must be a match of "
                                       f"regex '{_NAME.pattern}'")
    machine_type = body.get("machineType", "")
    if not machine_type.startswith(f"zones/{zone}/machineTypes/"):
        raise ApiError(400, "invalid", f"Invalid value for field 'resource.machineType': '{machine_type}'. "
                                       f"Machine type must be in zone '{zone}'.")


def _handler(api: ComputeStandIn) -> type[BaseHTTPRequestHandler]:
    """The HTTP side: route, decode JSON, call ``api``, encode its answer or its ApiError."""
    routes: list[tuple[str, re.Pattern[str], Callable[..., dict[str, Any]]]] = [
        ("POST", re.compile(f"{_ZONE}/instances"), lambda m, body: api.insert(m["project"], m["zone"], body)),
        ("GET", re.compile(f"{_ZONE}/instances/(?P<name>[^/]+)"), lambda m, _: api.get(**m.groupdict())),
        ("DELETE", re.compile(f"{_ZONE}/instances/(?P<name>[^/]+)"), lambda m, _: api.delete(**m.groupdict())),
        ("GET", re.compile(f"{_ZONE}/operations/(?P<name>[^/]+)"), lambda m, _: api.get_operation(**m.groupdict())),
        ("POST", re.compile(f"{_ZONE}/operations/(?P<name>[^/]+)/wait"),
         lambda m, _: api.wait_operation(**m.groupdict())),
    ]

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            path = self.path.split("?")[0]
            api.requests.append((self.command, path))
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length)) if length else {}
                route = next(((pattern.fullmatch(path), call) for method, pattern, call in routes
                              if method == self.command and pattern.fullmatch(path)), None)
                if route is None:
                    raise ApiError(501, "notImplemented", f"the stand-in does not implement {self.command} {path}")
                status, answer = 200, route[1](route[0], body)
            except ApiError as error:
                status, answer = error.status, error.body
            except Exception:  # a bug in the stand-in: answer 500 and let the fixture fail the test
                api.errors.append(f"{self.command} {path}:\n{traceback.format_exc()}")
                status, answer = 500, ApiError(500, "backendError", "stand-in crashed").body
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # the tests read .requests instead
            pass

    return Handler
