"""Wait for a GCE trainer VM to finish (its completion marker in the bucket), deferred to the triggerer."""

from __future__ import annotations

import time
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException

from tuneloop.triggers.gce_marker import GceMarkerTrigger


class GceMarkerSensor(BaseOperator):
    """Succeed with the marker when the trainer exited 0; fail clearly on a non-zero exit (without retrying: the
    same marker would be read again), a timeout or an unreadable marker. The VM is deleted by a separate task with
    trigger rule ``all_done``.

    :param marker_uri: where the VM writes its marker (templated)
    :param timeout_hours: how long the step may run before the wait fails
    :param instance: ``{"project", "zone", "name", "gcp_conn_id", "api_endpoint"}`` of the VM: a VM that ended
        without a marker (preempted, stopped, deleted) fails the wait at once
    """

    template_fields = ("marker_uri",)
    ui_color = "#fce8e6"

    def __init__(self, *, marker_uri: str, gcp_conn_id: str = "google_cloud_default", poll_seconds: float = 30,
                 timeout_hours: float = 12, instance: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.marker_uri = marker_uri
        self.gcp_conn_id = gcp_conn_id
        self.poll_seconds = poll_seconds
        self.timeout_hours = timeout_hours
        self.instance = instance

    def execute(self, context: Context) -> None:
        self.defer(trigger=GceMarkerTrigger(marker_uri=self.marker_uri, gcp_conn_id=self.gcp_conn_id,
                                            poll_seconds=self.poll_seconds,
                                            deadline=time.time() + self.timeout_hours * 3600,
                                            instance=self.instance),
                   method_name="execute_complete")

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        from tuneloop.backends.base import TrainerFailed
        from tuneloop.backends.gce import Marker, check_marker

        if event["status"] == "timeout":
            raise TrainerFailed(f"no completion marker at {event['marker_uri']} within {self.timeout_hours:g} h")
        if event["status"] != "success":
            raise TrainerFailed(f"waiting for {event['marker_uri']} failed: {event['message']}")
        try:
            marker = check_marker(Marker(**event["marker"]), event["marker_uri"])
        except TrainerFailed as error:  # the VM's outcome is final: waiting again would read the same marker
            raise AirflowFailException(str(error)) from error
        self.log.info("trainer VM %s finished: exit 0 (%s -> %s)", marker.instance, marker.started_at,
                      marker.finished_at)
        return event["marker"]
