"""The ``gce`` backend as three tasks: create the trainer VM, wait for its completion marker, delete it.

The VM's instance body and startup script come from :mod:`tuneloop.backends.gce`; the VM writes its marker into
the run's folder in the bucket (``runs/<run key>/markers/<step>.json``). ``delete_vm`` is ``create_vm``'s
teardown in the group, so a failed or timed-out step still gives its VM back; a failed create deletes what it
may have made itself.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowSkipException

from tuneloop.operators.base import PipelineStepOperator
from tuneloop.sensors.gce_marker import GceMarkerSensor


def _prepared(task: Any, context: Context) -> dict[str, Any] | None:
    from tuneloop.operators.trainer_step import STEP_KEY, sibling

    return context["ti"].xcom_pull(task_ids=sibling(task, "prepare"), key=STEP_KEY)


def _compute(config: Any) -> Any:
    from tuneloop.backends.gce import compute_client
    from tuneloop.hooks.gcp import compute_credentials

    gce = config.training.gce
    if not gce.project_id:
        raise ValueError("training.gce.project_id: required by the gce backend")
    return compute_client(compute_credentials(gce.gcp_conn_id, gce.api_endpoint), gce.api_endpoint)


class CreateTrainerVmOperator(PipelineStepOperator):
    """Create the step's GPU VM (idempotent: a retry finds the VM it created). Any marker an earlier attempt
    left is removed first, so the wait sees this VM's outcome."""

    ui_color = "#fce8e6"

    def __init__(self, *, step: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step

    def execute(self, context: Context) -> dict[str, Any]:
        from tuneloop import storage
        from tuneloop.backends.gce import (create_vm, delete_vm, instance_body, instance_name, marker_uri,
                                           startup_script)
        from tuneloop.pipeline import run_key

        run, prepared = self.pipeline(context), _prepared(self, context)
        gce, marker = run.config.training.gce, run.paths.marker(self.step)
        uri = marker_uri(storage.uri(run.config.resolved_storage_root), run_key(context["run_id"]), self.step,
                         run.config.name)
        client = _compute(run.config)
        if marker.exists():
            marker.unlink()
        name = instance_name(context["run_id"], self.step, run.config.name)
        script = startup_script(gce, image=run.config.training.pod.image, args=prepared["args"],
                                marker=uri, env=dict(run.config.training.pod.env))
        body = instance_body(gce, name=name, script=script, labels={"tuneloop-step": self.step})
        try:
            instance = create_vm(client, project=gce.project_id, zone=gce.zone, body=body)
        except Exception:  # delete_vm (the teardown) runs only after a successful create: leave no half-made VM
            delete_vm(client, project=gce.project_id, zone=gce.zone, name=name)
            raise
        self.log.info("trainer VM %s (%s, %s x %s in %s): %s", name, gce.machine_type, gce.accelerator_count,
                      gce.accelerator_type, gce.zone, instance)
        return {"instance": name, "marker_uri": uri}


class TrainerVmSensor(GceMarkerSensor):
    """Wait (deferred, in the triggerer) for the VM's completion marker; fail on a non-zero exit status, or as soon
    as the VM ends without one (preempted, stopped)."""

    def __init__(self, *, step: str, **kwargs: Any) -> None:
        super().__init__(marker_uri="", **kwargs)
        self.step = step

    def execute(self, context: Context) -> None:
        from tuneloop.config import load_model_config
        from tuneloop.operators.trainer_step import sibling

        gce = load_model_config(self.dag_id).training.gce
        created = context["ti"].xcom_pull(task_ids=sibling(self, "create_vm"))
        self.marker_uri, self.gcp_conn_id = created["marker_uri"], gce.gcp_conn_id
        self.poll_seconds, self.timeout_hours = gce.poll_seconds, gce.timeout_hours
        self.instance = {"project": gce.project_id, "zone": gce.zone, "name": created["instance"],
                         "gcp_conn_id": gce.gcp_conn_id, "api_endpoint": gce.api_endpoint}
        super().execute(context)


class DeleteTrainerVmOperator(PipelineStepOperator):
    """Delete the step's VM whatever happened (it powers itself off, but a stopped VM still holds its disk and
    GPU quota). Skips when the run does not use the gce backend (the scheduler normally skips it first)."""

    ui_color = "#fce8e6"

    def __init__(self, *, step: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step

    def execute(self, context: Context) -> None:
        from tuneloop.backends.gce import delete_vm, instance_name, vm_created_at

        prepared = _prepared(self, context)
        if not prepared or prepared["backend"] != "gce":
            raise AirflowSkipException("this run's trainer did not run on a GCE VM")
        run = self.pipeline(context)
        gce, name = run.config.training.gce, instance_name(context["run_id"], self.step, run.config.name)
        client = _compute(run.config)
        try:
            created = vm_created_at(client, project=gce.project_id, zone=gce.zone, name=name)
        except Exception as error:  # noqa: BLE001 - the VM's cost is not worth a VM left running
            self.log.warning("could not read trainer VM %s before deleting it (%s): its hours go unrecorded", name,
                             error)
            created = None
        deleted = delete_vm(client, project=gce.project_id, zone=gce.zone, name=name)
        self.log.info("trainer VM %s %s", name, "deleted" if deleted else "was already gone")
        if self.step == "train" and created is not None and not (run.paths.training / "metrics.json").exists():
            self._record_spent(run, name, created)

    def _record_spent(self, run: Any, name: str, created: Any) -> None:
        """A training VM deleted without a model: its hours until now count as the run's cost
        (:mod:`tuneloop.spent`); a VM that trained is priced from the trainer's own runtime."""
        from datetime import datetime, timezone

        from tuneloop import spent

        entry = spent.machine_hours(name, created, datetime.now(timezone.utc), "deleted without a model")
        spent.record(run.paths.training, entry)
        self.log.info("trainer VM %s ran %.2f h without a model: recorded as spent", name, entry.quantity)
