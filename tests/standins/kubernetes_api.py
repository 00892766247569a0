"""A stand-in Kubernetes API server on loopback, so the stock KubernetesPodOperator runs a pod without a cluster.

Why: the ``kubernetes`` training backend is the unmodified KubernetesPodOperator, and a test machine has no
cluster. This server speaks the part of the core/v1 REST API that the operator uses -- in its sync path (the
``kubernetes`` client in the worker) and its deferrable path (``kubernetes_asyncio`` in KubernetesPodTrigger) --
to those real client libraries, over plain HTTP without authentication. A pod's containers are local processes:
the image is ignored (this machine's environment plays the image) and ``command + args`` run with ``python``
replaced by ``sys.executable``.

How it behaves (as a cluster does unless said otherwise):

* ``POST pods`` stores the manifest exactly as submitted (:attr:`KubernetesApiStandin.pods`), answers with the pod
  ``Pending``, and starts every container after ``pending_seconds`` (default 0: at once; more lets a test go
  through the operator's wait for the pod to start, and its watch of the pod's events). The pod goes Pending ->
  Running -> Succeeded / Failed; containers go waiting -> running -> terminated with the exit code and reason
  ``Completed`` / ``Error`` (killed by a signal: 128 + signal, like a container runtime). With
  ``terminationMessagePolicy: FallbackToLogsOnError`` a failed container's termination message is the tail of its
  log (80 lines, 2048 bytes at most), as the kubelet does.
* Environment of a container: :meth:`KubernetesApiStandin.base_env` (the variables named in ``passthrough_env``
  taken from this process, plus ``image_env``, by default the trainer image's PYTHONUNBUFFERED=1), then the pod's
  plain ``env`` values, then ``secretKeyRef`` values from :attr:`KubernetesApiStandin.secrets`, keyed by
  ``(secret name, key)``. ``$(VAR)`` in command and args is expanded from the pod's env, as the kubelet does.
  A missing secret or key does what the kubelet does: the container waits in ``CreateContainerConfigError``, the
  pod stays ``Pending`` with a Warning event, and KubernetesPodOperator fails at ``startup_timeout_seconds``.
* A command that cannot be executed terminates its container at once: exit code 128, reason ``StartError``.
* ``DELETE`` kills the container processes (SIGTERM to the process group, SIGKILL after the grace period, which
  is capped at 5 s here) and removes the pod at once: reads answer 404 afterwards. :meth:`logs` still works.
* Logs are stdout and stderr together, one RFC 3339 nanosecond timestamp per line; ``follow`` (streamed, chunked,
  until the container ends), ``timestamps``, ``sinceSeconds``, ``sinceTime``, ``tailLines`` and ``container`` are
  honoured. A container that has not started answers 400, like the API server.
* Events (Scheduled, Pulled, Created, Started, Failed, Killing) can be listed and watched (``watch=true``) with a
  ``fieldSelector``; they outlive the pod. Pods can be listed with ``labelSelector`` / ``fieldSelector``.
* Rejected with 422 Invalid, because a cluster would run them and this server cannot: init containers,
  containers without ``command`` (the image's entrypoint is unknown here), ``envFrom``, ``valueFrom`` other than
  ``secretKeyRef``, ``restartPolicy`` other than ``Never``, watching pods. Only recorded, never acted on: image,
  ``workingDir`` (processes run in ``workdir``), resources, node selector, tolerations, volumes, service account.
* Any namespace is accepted. An unknown path answers 404; a server-side crash answers 500 and is kept in
  :attr:`KubernetesApiStandin.errors` so a test can fail on it.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import json
import os
import re
import secrets as random_tokens
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Self
from urllib.parse import parse_qs, urlsplit

NODE_NAME = "standin-node"
IMAGE_ENV = {"PYTHONUNBUFFERED": "1"}  # what include/trainer/Dockerfile sets; the image is not run here
PASSTHROUGH_ENV = ("PATH", "HOME", "PYTHONPATH", "STORAGE_EMULATOR_HOST")
MAX_GRACE_SECONDS = 5.0
TERMINATION_LOG_LINES = 80  # the kubelet's FallbackToLogsOnError tail
TERMINATION_LOG_BYTES = 2048
WAIT_SLICE_SECONDS = 0.2  # how often a streaming request re-checks for shutdown


class ApiRequest(NamedTuple):
    """One request the server received: ``request[:2] == ("DELETE", "/api/v1/namespaces/ns/pods/name")``."""

    method: str
    path: str
    query: dict[str, str]


class ApiError(Exception):
    """An error the server answers as a Kubernetes ``Status`` object, as the real API server does."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def status(self) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


class ContainerConfigError(Exception):
    """The kubelet cannot build the container's configuration (a missing secret or key)."""


# --- the objects: pods, containers, events ----------------------------------------------------------------------


@dataclass
class Container:
    """One container of a pod: its local process, its state as the kubelet reports it, and its log lines."""

    name: str
    image: str
    fallback_to_logs: bool
    state: str = "waiting"  # waiting -> running -> terminated
    reason: str = "ContainerCreating"
    message: str = ""
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    process: subprocess.Popen[bytes] | None = None
    lines: list[tuple[int, bytes]] = field(default_factory=list)  # (unix time in ns, line with its newline)

    def text(self) -> str:
        return b"".join(line for _, line in self.lines).decode("utf-8", errors="replace")


@dataclass
class Pod:
    """A pod as the API server holds it: the live object (metadata may be patched) and its containers."""

    manifest: dict[str, Any]
    containers: list[Container]
    created: datetime
    resource_version: int

    @property
    def name(self) -> str:
        return self.manifest["metadata"]["name"]

    @property
    def namespace(self) -> str:
        return self.manifest["metadata"]["namespace"]

    def container(self, name: str) -> Container:
        return next(c for c in self.containers if c.name == name)

    def phase(self) -> str:
        """Pending until every container started; Succeeded / Failed once all ended; Running in between."""
        states = {c.state for c in self.containers}
        if "waiting" in states:
            return "Pending"
        if states != {"terminated"}:
            return "Running"
        return "Succeeded" if all(c.exit_code == 0 for c in self.containers) else "Failed"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_nano(unix_ns: int) -> str:
    """Go's RFC3339Nano, which the kubelet puts before each log line: trailing zeros of the fraction dropped."""
    seconds, nanos = divmod(unix_ns, 1_000_000_000)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


def container_status(container: Container) -> dict[str, Any]:
    """``status.containerStatuses[]`` of one container."""
    if container.state == "waiting":
        state: dict[str, Any] = {"waiting": {"reason": container.reason}}
        if container.message:
            state["waiting"]["message"] = container.message
    elif container.state == "running":
        state = {"running": {"startedAt": rfc3339(container.started_at)}}
    else:
        state = {"terminated": {"exitCode": container.exit_code, "reason": container.reason,
                                "startedAt": rfc3339(container.started_at or container.finished_at),
                                "finishedAt": rfc3339(container.finished_at)}}
        if container.message:
            state["terminated"]["message"] = container.message
    running = container.state == "running"
    status = {"name": container.name, "image": container.image, "imageID": "", "ready": running,
              "started": running, "restartCount": 0, "state": state, "lastState": {}}
    if container.process is not None:
        status["containerID"] = f"standin://{container.process.pid}"
        if container.state == "terminated":
            state["terminated"]["containerID"] = status["containerID"]
    return status


def pod_conditions(pod: Pod) -> list[dict[str, Any]]:
    """The four conditions a scheduled pod has; Ready while every container runs."""
    ready = all(c.state == "running" for c in pod.containers)
    phase = pod.phase()
    reason = {"Succeeded": "PodCompleted", "Failed": "PodFailed"}.get(phase, "ContainersNotReady")
    since = rfc3339(pod.created)

    def condition(kind: str, true: bool) -> dict[str, Any]:
        entry = {"type": kind, "status": "True" if true else "False", "lastProbeTime": None,
                 "lastTransitionTime": since}
        if not true:
            entry["reason"] = reason
        return entry

    return [condition("PodReadyToStartContainers", True), condition("Initialized", True),
            condition("Ready", ready), condition("ContainersReady", ready), condition("PodScheduled", True)]


def pod_object(pod: Pod) -> dict[str, Any]:
    """The pod as ``GET /api/v1/namespaces/{ns}/pods/{name}`` returns it."""
    obj = copy.deepcopy(pod.manifest)
    obj["metadata"]["resourceVersion"] = str(pod.resource_version)
    obj["spec"]["nodeName"] = NODE_NAME
    obj["status"] = {"phase": pod.phase(), "conditions": pod_conditions(pod), "hostIP": "127.0.0.1",
                     "podIP": "127.0.0.1", "startTime": rfc3339(pod.created),
                     "containerStatuses": [container_status(c) for c in pod.containers]}
    return obj


def event_object(pod: Pod, version: int, reason: str, message: str, *, container: str | None = None,
                 warning: bool = False) -> dict[str, Any]:
    """A core/v1 Event about the pod, as the scheduler or kubelet would record it."""
    now = rfc3339(datetime.now(UTC))
    involved = {"kind": "Pod", "apiVersion": "v1", "namespace": pod.namespace, "name": pod.name,
                "uid": pod.manifest["metadata"]["uid"]}
    if container:
        involved["fieldPath"] = f"spec.containers{{{container}}}"
    return {"kind": "Event", "apiVersion": "v1",
            "metadata": {"name": f"{pod.name}.{version:016x}", "namespace": pod.namespace,
                         "uid": str(uuid.uuid4()), "resourceVersion": str(version), "creationTimestamp": now},
            "involvedObject": involved, "reason": reason, "message": message,
            "type": "Warning" if warning else "Normal", "count": 1, "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": "default-scheduler" if reason == "Scheduled" else "kubelet"}}


# --- what the kubelet would do with a container spec ------------------------------------------------------------


def unsupported(manifest: Mapping[str, Any]) -> str | None:
    """Why this server cannot run the pod (answered 422), or None."""
    spec = manifest.get("spec") or {}
    if spec.get("initContainers"):
        return "spec.initContainers: the stand-in does not run init containers"
    if spec.get("restartPolicy", "Always") != "Never":
        return "spec.restartPolicy: the stand-in runs each container once, so only Never is accepted"
    if not spec.get("containers"):
        return "spec.containers: Required value"
    for container in spec["containers"]:
        name = container.get("name")
        if not container.get("command"):
            return f"container {name}: command is required here (the image's entrypoint is unknown)"
        if container.get("envFrom"):
            return f"container {name}: envFrom is not supported by the stand-in"
        for var in container.get("env") or []:
            if "valueFrom" in var and "secretKeyRef" not in var["valueFrom"]:
                return f"container {name}: env {var['name']}: only valueFrom.secretKeyRef is supported"
    return None


def container_env(spec: Mapping[str, Any], secrets: Mapping[tuple[str, str], str], namespace: str) -> dict[str, str]:
    """The pod's own env for one container: plain values and resolved ``secretKeyRef``s, in spec order."""
    env: dict[str, str] = {}
    for var in spec.get("env") or []:
        if "valueFrom" not in var:
            env[var["name"]] = var.get("value", "")
            continue
        ref = var["valueFrom"]["secretKeyRef"]
        if (ref["name"], ref["key"]) in secrets:
            env[var["name"]] = secrets[(ref["name"], ref["key"])]
        elif not ref.get("optional", False):
            if any(secret == ref["name"] for secret, _ in secrets):
                raise ContainerConfigError(f"couldn't find key {ref['key']} in Secret {namespace}/{ref['name']}")
            raise ContainerConfigError(f'secret "{ref["name"]}" not found')
    return env


_VARIABLE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in command and args: unknown variables stay, ``$$`` escapes."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VARIABLE.sub(replace, value)


def container_argv(spec: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """``command + args`` expanded; ``python`` is this interpreter, because this environment plays the image."""
    argv = [expand(part, env) for part in [*spec["command"], *(spec.get("args") or [])]]
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


def termination_log_tail(lines: list[tuple[int, bytes]]) -> str:
    """FallbackToLogsOnError: the last 80 lines of the log, at most its last 2048 bytes."""
    tail = b"".join(line for _, line in lines[-TERMINATION_LOG_LINES:])[-TERMINATION_LOG_BYTES:]
    return tail.decode("utf-8", errors="replace")


def stop_process(process: subprocess.Popen[bytes] | None, grace_seconds: float) -> None:
    """SIGTERM to the container's process group, SIGKILL once the grace period is over."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# --- selectors ----------------------------------------------------------------------------------------------------

_REQUIREMENT = re.compile(
    r"^\s*(?P<absent>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_./-]*)|\s+(?P<set_op>in|notin)\s*\((?P<values>[^)]*)\))?\s*$")


def label_requirement_holds(labels: Mapping[str, str], requirement: str) -> bool:
    """One requirement of a label selector: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (..)``, ``notin``."""
    match = _REQUIREMENT.match(requirement)
    if match is None:
        raise ApiError(400, "BadRequest", f"unable to parse requirement: {requirement!r}")
    key = match["key"]
    if match["absent"]:
        return key not in labels
    if match["op"]:
        equal = labels.get(key) == match["value"]
        return not equal if match["op"] == "!=" else equal
    if match["set_op"]:
        members = {v.strip() for v in match["values"].split(",")}
        return (labels.get(key) in members) == (match["set_op"] == "in")
    return key in labels


def labels_match(labels: Mapping[str, str], selector: str) -> bool:
    requirements = [r for r in re.split(r",(?![^()]*\))", selector) if r.strip()]
    return all(label_requirement_holds(labels, r) for r in requirements)


def fields_match(obj: Mapping[str, Any], selector: str) -> bool:
    """A field selector (``involvedObject.name=x,status.phase!=Failed``) over the object's dotted paths."""
    for requirement in filter(None, (r.strip() for r in selector.split(","))):
        negate = "!=" in requirement
        path, _, expected = requirement.replace("!=", "=").replace("==", "=").partition("=")
        value: Any = obj
        for part in path.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if ((str(value) if value is not None else "") == expected) == negate:
            return False
    return True


def flag(query: Mapping[str, str], name: str) -> bool:
    """A boolean query parameter; the Python clients send ``True``, kubectl sends ``true``."""
    return query.get(name, "").lower() in ("true", "1")


def parse_time_ns(text: str) -> int:
    """RFC 3339 (as in ``sinceTime``) to unix nanoseconds."""
    return int(datetime.fromisoformat(text).timestamp() * 1_000_000_000)


# --- the server ---------------------------------------------------------------------------------------------------


class KubernetesApiStandin:
    """The API server's state and operations; :class:`_Handler` turns HTTP requests into calls of these.

    One condition variable guards everything and wakes whoever streams logs or events when anything changes.
    """

    def __init__(self, *, secrets: Mapping[tuple[str, str], str] | None = None,
                 passthrough_env: Iterable[str] = PASSTHROUGH_ENV, image_env: Mapping[str, str] = IMAGE_ENV,
                 workdir: Path | None = None, pending_seconds: float = 0.0) -> None:
        self.secrets: dict[tuple[str, str], str] = dict(secrets or {})
        self.pending_seconds = pending_seconds  # scheduling + image pull: how long a new pod stays Pending
        self.passthrough_env: list[str] = list(passthrough_env)
        self.image_env: dict[str, str] = dict(image_env)
        self.workdir = workdir
        self.kubeconfig: Path | None = None
        self.pods: dict[str, dict[str, Any]] = {}  # manifests exactly as submitted, by pod name, kept after delete
        self.requests: list[ApiRequest] = []
        self.deleted: list[str] = []  # names of deleted pods, in order
        self.errors: list[str] = []  # tracebacks of requests the server failed on (answered 500)
        self._live: dict[tuple[str, str], Pod] = {}
        self._latest: dict[str, Pod] = {}  # the last pod of each name, for logs() after deletion
        self._events: list[dict[str, Any]] = []
        self._version = 0
        self._stopping = False
        self._changed = threading.Condition()
        handler = type("Handler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="kubernetes-standin", daemon=True)

    # lifecycle

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> KubernetesApiStandin:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Kill every container still running, end open streams, close the socket."""
        with self._changed:
            self._stopping = True
            pods = list(self._live.values())
            self._changed.notify_all()
        for pod in pods:
            for container in pod.containers:
                stop_process(container.process, grace_seconds=1)
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig for this server (plain http, a dummy token the server ignores); remembered as ``kubeconfig``."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "standin", "preferences": {},
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": {"token": "standin-token"}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin",
                                                         "namespace": "default"}}],
        }
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.kubeconfig = path
        return path

    # for tests

    def logs(self, name: str, container: str = "base") -> str:
        """Everything the pod's container wrote so far (also after the pod was deleted)."""
        with self._changed:
            return self._latest[name].container(container).text()

    def exists(self, name: str, namespace: str = "default") -> bool:
        with self._changed:
            return (namespace, name) in self._live

    def base_env(self) -> dict[str, str]:
        """What every container starts from: the image's ENV and the passed-through variables of this process."""
        passed = {name: os.environ[name] for name in self.passthrough_env if name in os.environ}
        return {**self.image_env, **passed}

    def record(self, request: ApiRequest) -> None:
        with self._changed:
            self.requests.append(request)

    # pods

    def create_pod(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        """Store the pod, answer it Pending (as the API server does), then start its containers."""
        reason = unsupported(manifest)
        if reason:
            raise ApiError(422, "Invalid", f"Pod is invalid: {reason}")
        submitted = copy.deepcopy(manifest)
        live = copy.deepcopy(manifest)
        metadata = live.setdefault("metadata", {})
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + random_tokens.token_hex(3)[:5]
        if not metadata.get("name"):
            raise ApiError(422, "Invalid", "Pod is invalid: metadata.name: Required value")
        metadata.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=rfc3339(datetime.now(UTC)))
        live.update(kind="Pod", apiVersion="v1")
        specs = live["spec"]["containers"]
        containers = [Container(name=s["name"], image=s.get("image", ""),
                                fallback_to_logs=s.get("terminationMessagePolicy") == "FallbackToLogsOnError")
                      for s in specs]
        with self._changed:
            if (namespace, metadata["name"]) in self._live:
                raise ApiError(409, "AlreadyExists", f'pods "{metadata["name"]}" already exists')
            pod = Pod(manifest=live, containers=containers, created=datetime.now(UTC),
                      resource_version=self._bump())
            self._live[(namespace, pod.name)] = pod
            self._latest[pod.name] = pod
            self.pods[pod.name] = submitted
            self._event(pod, "Scheduled", f"Successfully assigned {namespace}/{pod.name} to {NODE_NAME}")
            answer = pod_object(pod)
        starter = threading.Timer(self.pending_seconds, self._start_containers, args=(pod, specs))
        starter.daemon = True
        starter.start()
        return answer

    def read_pod(self, namespace: str, name: str) -> dict[str, Any]:
        with self._changed:
            return pod_object(self._pod(namespace, name))

    def list_pods(self, namespace: str | None, query: Mapping[str, str]) -> dict[str, Any]:
        if flag(query, "watch"):
            raise ApiError(400, "BadRequest", "the stand-in does not implement watching pods")
        with self._changed:
            items = [pod_object(p) for p in self._live.values() if namespace in (None, p.namespace)]
            version = self._version
        items = [p for p in items if labels_match(p["metadata"].get("labels") or {}, query.get("labelSelector", ""))
                 and fields_match(p, query.get("fieldSelector", ""))]
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(version)}, "items": items}

    def patch_pod(self, namespace: str, name: str, patch: Any, content_type: str) -> dict[str, Any]:
        """Merge and strategic-merge patches of labels and annotations (what the operator patches)."""
        if "json-patch" in content_type or not isinstance(patch, dict):
            raise ApiError(415, "UnsupportedMediaType", "the stand-in applies only merge patches")
        if set(patch) - {"metadata"} or set(patch.get("metadata") or {}) - {"labels", "annotations"}:
            raise ApiError(422, "Invalid", "the stand-in patches only metadata.labels and metadata.annotations")
        with self._changed:
            pod = self._pod(namespace, name)
            for key, values in (patch.get("metadata") or {}).items():
                target = pod.manifest["metadata"].setdefault(key, {})
                for item, value in (values or {}).items():
                    if value is None:
                        target.pop(item, None)
                    else:
                        target[item] = value
            pod.resource_version = self._bump()
            return pod_object(pod)

    def delete_pod(self, namespace: str, name: str, grace_seconds: float | None) -> dict[str, Any]:
        """Remove the pod at once (later reads are 404) and kill its processes."""
        with self._changed:
            pod = self._pod(namespace, name)
            del self._live[(namespace, name)]
            self.deleted.append(name)
            for container in pod.containers:
                if container.state == "running":
                    self._event(pod, "Killing", f"Stopping container {container.name}", container=container.name)
            pod.resource_version = self._bump()
            answer = pod_object(pod)
        answer["metadata"]["deletionTimestamp"] = rfc3339(datetime.now(UTC))
        if grace_seconds is None:
            grace_seconds = pod.manifest["spec"].get("terminationGracePeriodSeconds", 30)
        for container in pod.containers:
            stop_process(container.process, grace_seconds=min(float(grace_seconds), MAX_GRACE_SECONDS))
        return answer

    # logs

    def log_source(self, namespace: str, name: str, query: Mapping[str, str]) -> tuple[Container, int]:
        """The container whose log is asked for and the index of its first line to send."""
        with self._changed:
            pod = self._pod(namespace, name)
            names = [c.name for c in pod.containers]
            wanted = query.get("container") or (names[0] if len(names) == 1 else None)
            if wanted is None:
                raise ApiError(400, "BadRequest", f"a container name must be specified for pod {name}, "
                                                  f"choose one of: {names}")
            if wanted not in names:
                raise ApiError(400, "BadRequest", f"container {wanted} is not valid for pod {name}")
            container = pod.container(wanted)
            if container.state == "waiting":
                raise ApiError(400, "BadRequest", f'container "{wanted}" in pod "{name}" is waiting to start: '
                                                  f"{container.reason}")
            return container, self._first_line(container.lines, query)

    @staticmethod
    def _first_line(lines: list[tuple[int, bytes]], query: Mapping[str, str]) -> int:
        start = 0
        if "sinceSeconds" in query:
            cutoff = time.time_ns() - int(query["sinceSeconds"]) * 1_000_000_000
            start = bisect.bisect_left([t for t, _ in lines], cutoff)
        elif "sinceTime" in query:
            start = bisect.bisect_left([t for t, _ in lines], parse_time_ns(query["sinceTime"]))
        if "tailLines" in query:
            start = max(start, len(lines) - int(query["tailLines"]))
        return start

    def next_lines(self, container: Container, index: int, *, wait: bool) -> tuple[list[tuple[int, bytes]], bool]:
        """Lines from ``index`` on (waiting a moment for one if ``wait``), and whether the log is complete."""
        with self._changed:
            complete = container.state == "terminated" or self._stopping
            if wait and not complete and len(container.lines) <= index:
                self._changed.wait(WAIT_SLICE_SECONDS)
                complete = container.state == "terminated" or self._stopping
            return container.lines[index:], complete

    # events

    def list_events(self, namespace: str | None, query: Mapping[str, str]) -> dict[str, Any]:
        with self._changed:
            items = self._matching_events(namespace, query.get("fieldSelector", ""), after=0)
            version = self._version
        return {"kind": "EventList", "apiVersion": "v1", "metadata": {"resourceVersion": str(version)},
                "items": items}

    def next_events(self, namespace: str | None, selector: str, after: int) -> tuple[list[dict[str, Any]], bool]:
        """Events newer than resource version ``after`` (waiting a moment for one), and whether the server stops."""
        with self._changed:
            events = self._matching_events(namespace, selector, after)
            if not events and not self._stopping:
                self._changed.wait(WAIT_SLICE_SECONDS)
                events = self._matching_events(namespace, selector, after)
            return events, self._stopping

    def _matching_events(self, namespace: str | None, selector: str, after: int) -> list[dict[str, Any]]:
        return [copy.deepcopy(e) for e in self._events
                if int(e["metadata"]["resourceVersion"]) > after
                and namespace in (None, e["metadata"]["namespace"]) and fields_match(e, selector)]

    # internals (callers hold the lock, except for the threads' own entry points)

    def _bump(self) -> int:
        self._version += 1
        self._changed.notify_all()
        return self._version

    def _pod(self, namespace: str, name: str) -> Pod:
        pod = self._live.get((namespace, name))
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found')
        return pod

    def _event(self, pod: Pod, reason: str, message: str, *, container: str | None = None,
               warning: bool = False) -> None:
        self._events.append(event_object(pod, self._bump(), reason, message, container=container, warning=warning))

    def _start_containers(self, pod: Pod, specs: list[dict[str, Any]]) -> None:
        """Runs in a timer thread once the pod's Pending time is over. Holds the lock, so a pod deleted (or a server
        stopped) meanwhile gets no process that nobody would kill."""
        with self._changed:
            if self._stopping or self._live.get((pod.namespace, pod.name)) is not pod:
                return
            for container, spec in zip(pod.containers, specs):
                self._start_container(pod, container, spec)
            pod.resource_version = self._bump()

    def _start_container(self, pod: Pod, container: Container, spec: Mapping[str, Any]) -> None:
        """What the kubelet does: resolve the env, start the process, record events."""
        self._event(pod, "Pulled", f'Container image "{container.image}" already present on machine',
                    container=container.name)
        try:
            own_env = container_env(spec, self.secrets, pod.namespace)
        except ContainerConfigError as error:
            container.reason, container.message = "CreateContainerConfigError", str(error)
            self._event(pod, "Failed", f"Error: {error}", container=container.name, warning=True)
            return
        argv = container_argv(spec, own_env)
        now = datetime.now(UTC)
        try:
            container.process = subprocess.Popen(
                argv, env={**self.base_env(), **own_env}, cwd=self.workdir, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as error:
            message = f"failed to start container process {argv[0]!r}: {error}"
            container.state, container.reason, container.message = "terminated", "StartError", message
            container.exit_code, container.started_at, container.finished_at = 128, now, now
            self._event(pod, "Failed", f"Error: {message}", container=container.name, warning=True)
            return
        container.state, container.started_at = "running", now
        self._event(pod, "Created", f"Created container {container.name}", container=container.name)
        self._event(pod, "Started", f"Started container {container.name}", container=container.name)
        threading.Thread(target=self._collect_output, args=(pod, container), daemon=True,
                         name=f"pod-{pod.name}-{container.name}").start()

    def _collect_output(self, pod: Pod, container: Container) -> None:
        """Runs in a thread per container: timestamp each output line, then record how the process ended."""
        process = container.process
        assert process is not None and process.stdout is not None
        for line in iter(process.stdout.readline, b""):
            with self._changed:
                container.lines.append((time.time_ns(), line))
                self._changed.notify_all()
        code = process.wait()
        process.stdout.close()
        with self._changed:
            container.exit_code = code if code >= 0 else 128 - code  # killed by signal N: 128 + N
            container.reason = "Completed" if code == 0 else "Error"
            if container.fallback_to_logs and code != 0:
                container.message = termination_log_tail(container.lines)
            container.finished_at = datetime.now(UTC)
            container.state = "terminated"
            pod.resource_version = self._bump()


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, JSON bodies, chunked streams for ``follow`` logs and watches."""

    protocol_version = "HTTP/1.1"
    standin: KubernetesApiStandin  # set on the subclass each server makes

    _PODS = r"/api/v1/namespaces/(?P<namespace>[^/]+)/pods"
    _POD = _PODS + r"/(?P<name>[^/]+)"
    ROUTES: ClassVar[list[tuple[str, re.Pattern[str], str]]] = [
        ("GET", re.compile(r"/version"), "version"),
        ("GET", re.compile(r"/api/v1/pods"), "list_pods"),
        ("GET", re.compile(_PODS), "list_pods"),
        ("POST", re.compile(_PODS), "create_pod"),
        ("GET", re.compile(_POD), "read_pod"),
        ("GET", re.compile(_POD + r"/status"), "read_pod"),
        ("PATCH", re.compile(_POD), "patch_pod"),
        ("DELETE", re.compile(_POD), "delete_pod"),
        ("GET", re.compile(_POD + r"/log"), "pod_log"),
        ("GET", re.compile(r"/api/v1/events"), "events"),
        ("GET", re.compile(r"/api/v1/namespaces/(?P<namespace>[^/]+)/events"), "events"),
    ]

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: requests are kept in ``standin.requests`` instead of printed."""

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        self.standin.record(ApiRequest(method, url.path, query))
        body = self._read_body()
        try:
            for route_method, pattern, action in self.ROUTES:
                match = pattern.fullmatch(url.path)
                if route_method == method and match:
                    getattr(self, action)(query, body, **match.groupdict())
                    return
            raise ApiError(404, "NotFound", f"the stand-in does not implement {method} {url.path}")
        except ApiError as error:
            self._send_json(error.code, error.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 -- any crash is answered 500 and kept for the test to fail on
            self.standin.errors.append(traceback.format_exc())
            self._send_json(500, ApiError(500, "InternalError", traceback.format_exc(limit=3)).status())

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return raw.decode("utf-8", errors="replace")

    # answers

    def _send(self, code: int, payload: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _send_json(self, code: int, obj: Any) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json")

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _send_chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # routes

    def version(self, query: Mapping[str, str], body: Any) -> None:
        self._send_json(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-standin",
                              "platform": "linux/amd64"})

    def list_pods(self, query: Mapping[str, str], body: Any, namespace: str | None = None) -> None:
        self._send_json(200, self.standin.list_pods(namespace, query))

    def create_pod(self, query: Mapping[str, str], body: Any, namespace: str) -> None:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be a Pod in JSON")
        self._send_json(201, self.standin.create_pod(namespace, body))

    def read_pod(self, query: Mapping[str, str], body: Any, namespace: str, name: str) -> None:
        self._send_json(200, self.standin.read_pod(namespace, name))

    def patch_pod(self, query: Mapping[str, str], body: Any, namespace: str, name: str) -> None:
        content_type = self.headers.get("Content-Type", "")
        self._send_json(200, self.standin.patch_pod(namespace, name, body, content_type))

    def delete_pod(self, query: Mapping[str, str], body: Any, namespace: str, name: str) -> None:
        grace = (body or {}).get("gracePeriodSeconds") if isinstance(body, dict) else None
        grace = query.get("gracePeriodSeconds", grace)
        seconds = float(grace) if grace is not None else None
        self._send_json(200, self.standin.delete_pod(namespace, name, seconds))

    def pod_log(self, query: Mapping[str, str], body: Any, namespace: str, name: str) -> None:
        container, index = self.standin.log_source(namespace, name, query)
        stamped = flag(query, "timestamps")
        if not flag(query, "follow"):
            lines, _ = self.standin.next_lines(container, index, wait=False)
            self._send(200, self._format(lines, stamped), "text/plain")
            return
        self._start_stream("text/plain")
        complete = False
        while not complete:
            lines, complete = self.standin.next_lines(container, index, wait=True)
            self._send_chunk(self._format(lines, stamped))
            index += len(lines)
        self._end_stream()

    @staticmethod
    def _format(lines: list[tuple[int, bytes]], stamped: bool) -> bytes:
        if not stamped:
            return b"".join(line for _, line in lines)
        return b"".join(rfc3339_nano(at).encode() + b" " + line for at, line in lines)

    def events(self, query: Mapping[str, str], body: Any, namespace: str | None = None) -> None:
        if not flag(query, "watch"):
            self._send_json(200, self.standin.list_events(namespace, query))
            return
        self._start_stream("application/json")
        deadline = time.monotonic() + float(query.get("timeoutSeconds", 1800))
        after = int(query.get("resourceVersion") or 0)
        stopping = False
        while not stopping and time.monotonic() < deadline:
            events, stopping = self.standin.next_events(namespace, query.get("fieldSelector", ""), after)
            for event in events:
                self._send_chunk(json.dumps({"type": "ADDED", "object": event}).encode() + b"\n")
                after = int(event["metadata"]["resourceVersion"])
        self._end_stream()
