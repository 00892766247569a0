"""Deferrable wait for a GCE trainer VM's completion marker, in the triggerer (no worker slot held)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent

# A VM in one of these states runs nothing any more; without a marker, its trainer never finished.
ENDED_STATES = ("TERMINATED", "STOPPED", "SUSPENDED", "GONE")


def storage_client(gcp_conn_id: str) -> Any:
    """A ``google.cloud.storage.Client`` from the Airflow connection; anonymous against an emulator
    (``STORAGE_EMULATOR_HOST``, used by the tests)."""
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="emulator", credentials=AnonymousCredentials())
    from airflow.providers.google.cloud.hooks.gcs import GCSHook

    return GCSHook(gcp_conn_id=gcp_conn_id).get_conn()


def vm_status(instance: dict[str, Any]) -> str:
    """The VM's status (``RUNNING``, ``TERMINATED``...; ``GONE`` when it does not exist). ``instance``:
    ``{"project", "zone", "name", "gcp_conn_id", "api_endpoint"}``."""
    from google.api_core.exceptions import NotFound

    from tuneloop.backends.gce import compute_client
    from tuneloop.hooks.gcp import compute_credentials

    endpoint = instance.get("api_endpoint")
    client = compute_client(compute_credentials(instance["gcp_conn_id"], endpoint), endpoint)
    try:
        return client.get(project=instance["project"], zone=instance["zone"], instance=instance["name"]).status
    except NotFound:
        return "GONE"


class GceMarkerTrigger(BaseTrigger):
    """Poll ``marker_uri`` every ``poll_seconds`` until it exists or ``deadline`` (epoch seconds) passes.

    With ``instance`` it also watches the VM: a VM that ended (preempted, stopped, deleted) without writing its
    marker is an ``error`` at once instead of a wait until the deadline. The marker is read again after seeing
    the VM end, because the startup script uploads it just before powering off.

    Yields one event: ``success`` with the marker (whatever its exit code: the task decides), ``timeout``, or
    ``error`` with the message (e.g. an unreadable marker, a VM gone without one).
    """

    def __init__(self, *, marker_uri: str, gcp_conn_id: str, poll_seconds: float, deadline: float,
                 instance: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.marker_uri = marker_uri
        self.gcp_conn_id = gcp_conn_id
        self.poll_seconds = poll_seconds
        self.deadline = deadline
        self.instance = instance

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("tuneloop.triggers.gce_marker.GceMarkerTrigger",
                {"marker_uri": self.marker_uri, "gcp_conn_id": self.gcp_conn_id, "poll_seconds": self.poll_seconds,
                 "deadline": self.deadline, "instance": self.instance})

    def _read(self) -> dict[str, Any] | None:
        from dataclasses import asdict

        from tuneloop.backends.gce import read_marker

        marker = read_marker(storage_client(self.gcp_conn_id), self.marker_uri)
        return asdict(marker) if marker else None

    def _ended_without_marker(self) -> str | None:
        """The VM's status when it ended and still no marker is there, else None."""
        if self.instance is None:
            return None
        status = vm_status(self.instance)
        return status if status in ENDED_STATES and self._read() is None else None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            while True:
                marker = await asyncio.to_thread(self._read)
                if marker is not None:
                    yield TriggerEvent({"status": "success", "marker": marker, "marker_uri": self.marker_uri})
                    return
                ended = await asyncio.to_thread(self._ended_without_marker)
                if ended is not None:
                    yield TriggerEvent({"status": "error", "marker_uri": self.marker_uri, "message": (
                        f"VM {self.instance['name']} is {ended} and wrote no completion marker: it was preempted "
                        "or stopped, or its startup script died before the end (see its serial console)")})
                    return
                remaining = self.deadline - time.time()
                if remaining <= 0:
                    yield TriggerEvent({"status": "timeout", "marker_uri": self.marker_uri})
                    return
                await asyncio.sleep(min(self.poll_seconds, remaining))
        except Exception as e:  # one error event instead of a crashed trigger
            yield TriggerEvent({"status": "error", "message": f"{type(e).__name__}: {e}",
                                "marker_uri": self.marker_uri})
