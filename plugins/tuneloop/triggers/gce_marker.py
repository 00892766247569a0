"""Deferrable wait for a GCE trainer VM's completion marker, in the triggerer (no worker slot held)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent


def storage_client(gcp_conn_id: str) -> Any:
    """A ``google.cloud.storage.Client`` from the Airflow connection; anonymous against an emulator
    (``STORAGE_EMULATOR_HOST``, used by the tests)."""
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="emulator", credentials=AnonymousCredentials())
    from airflow.providers.google.cloud.hooks.gcs import GCSHook

    return GCSHook(gcp_conn_id=gcp_conn_id).get_conn()


class GceMarkerTrigger(BaseTrigger):
    """Poll ``marker_uri`` every ``poll_seconds`` until it exists or ``deadline`` (epoch seconds) passes.

    Yields one event: ``success`` with the marker (whatever its exit code: the task decides), ``timeout``, or
    ``error`` with the message (e.g. an unreadable marker).
    """

    def __init__(self, *, marker_uri: str, gcp_conn_id: str, poll_seconds: float, deadline: float) -> None:
        super().__init__()
        self.marker_uri = marker_uri
        self.gcp_conn_id = gcp_conn_id
        self.poll_seconds = poll_seconds
        self.deadline = deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("tuneloop.triggers.gce_marker.GceMarkerTrigger",
                {"marker_uri": self.marker_uri, "gcp_conn_id": self.gcp_conn_id, "poll_seconds": self.poll_seconds,
                 "deadline": self.deadline})

    def _read(self) -> dict[str, Any] | None:
        from dataclasses import asdict

        from tuneloop.backends.gce import read_marker

        marker = read_marker(storage_client(self.gcp_conn_id), self.marker_uri)
        return asdict(marker) if marker else None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            while True:
                marker = await asyncio.to_thread(self._read)
                if marker is not None:
                    yield TriggerEvent({"status": "success", "marker": marker, "marker_uri": self.marker_uri})
                    return
                remaining = self.deadline - time.time()
                if remaining <= 0:
                    yield TriggerEvent({"status": "timeout", "marker_uri": self.marker_uri})
                    return
                await asyncio.sleep(min(self.poll_seconds, remaining))
        except Exception as e:  # one error event instead of a crashed trigger
            yield TriggerEvent({"status": "error", "message": f"{type(e).__name__}: {e}",
                                "marker_uri": self.marker_uri})
