"""One trainer step (``train`` or ``evaluate``) as a task group that runs on the backend chosen for the run.

    prepare ──► local ────────────────────────────► result
            ├─► pod (kubernetes | gke) ───────────► result
            ├─► create_vm ─► wait_vm ─► delete_vm ─► result
            └─► managed (openai, vertex) ─────────► result

``prepare`` writes the step's inputs into the run's folder and branches to the chosen backend (or straight to
``result`` when a retried run finds the step's outputs complete); ``result`` reads the outputs back and is what
later steps use. The backend is picked per run (Params form, else ``training.backend``), so every path is wired
and the others are skipped. ``delete_vm`` is ``create_vm``'s teardown: it runs whatever happened once the VM was
created (trigger rule ``all_done_setup_success``), a failed delete fails the run, and on other backends the
scheduler skips it without running it.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.branch import BaseBranchOperator
from airflow.sdk import Context, TaskGroup, TriggerRule

from tuneloop.operators.base import PipelineStepOperator
from tuneloop.operators.managed_training import ManagedTrainerOperator
from tuneloop.operators.trainer_vm import CreateTrainerVmOperator, DeleteTrainerVmOperator, TrainerVmSensor

STEP_KEY = "trainer_step"  # XCom key of prepare's {"backend", "args", "done"}
GPU_POOL = "gpu"  # Airflow pool: one slot per GPU, so GPU work never oversubscribes (created by the cluster's init)
RUNNER = {"local": "local", "kubernetes": "pod", "gke": "pod", "gce": "create_vm", "openai": "managed",
          "vertex": "managed"}


class PrepareTrainerStepOperator(PipelineStepOperator, BaseBranchOperator):
    """Write the step's inputs (spec or jobs file, base model, suites) and choose where the trainer runs."""

    def __init__(self, *, step: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step

    def choose_branch(self, context: Context) -> str:
        run = self.pipeline(context)
        dataset_id = self.upstream(context, "export_dataset")["dataset_id"]
        prepared = run.prepare_train(dataset_id) if self.step == "train" else run.prepare_evaluate(dataset_id)
        context["ti"].xcom_push(key=STEP_KEY, value=prepared)
        if prepared["done"]:
            self.log.info("%s: every output exists already; nothing to run", self.step)
            return sibling(self, "result")
        self.log.info("%s runs on the %s backend %s", self.step, prepared["backend"], " ".join(prepared["args"]))
        return sibling(self, RUNNER[prepared["backend"]])


class TrainerStepMixin:
    """What the runners of a step share: the command ``prepare`` chose."""

    step: str

    def prepared(self, context: Context) -> dict[str, Any]:
        return self.upstream(context, sibling(self, "prepare"), key=STEP_KEY)  # type: ignore[attr-defined]


class LocalTrainerOperator(TrainerStepMixin, PipelineStepOperator):
    """The ``local`` backend: the trainer as a subprocess of this worker, its output streamed into the task log.
    The trainer checkpoints as it goes, so a retried attempt resumes instead of starting over."""

    def __init__(self, *, step: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step

    def execute(self, context: Context) -> None:
        self.pipeline(context).run_locally(self.prepared(context), self.log.info)


class TrainerPodOperator(TrainerStepMixin, PipelineStepOperator):
    """The ``kubernetes`` and ``gke`` backends: the stock KubernetesPodOperator / GKEStartPodOperator, built when
    the task runs from the config and the prepared command (the pod spec depends on both).

    Delegating keeps everything the stock operator does -- deferral to the triggerer, log streaming, reattaching
    to a running pod on retry, deleting it at the end -- and keeps the Kubernetes client out of DAG parsing.
    The stock operator re-enters through ``trigger_reentry``; this one forwards it.
    """

    def __init__(self, *, step: str, **kwargs: Any) -> None:
        super().__init__(pool=GPU_POOL, **kwargs)
        self.step = step
        self._pod_operator: Any = None

    def stock_operator(self, context: Context) -> Any:
        from tuneloop.operators.pods import trainer_pod_operator

        if self._pod_operator is None:
            run, prepared = self.pipeline(context), self.prepared(context)
            self._pod_operator = trainer_pod_operator(
                task_id=self.task_id, training=run.config.training, backend=prepared["backend"],
                run_id=context["run_id"], step=self.step, args=prepared["args"])
        return self._pod_operator

    def execute(self, context: Context) -> Any:
        return self._recording_failure(context, lambda stock: stock.execute(context))

    def trigger_reentry(self, context: Context, event: dict[str, Any]) -> Any:
        return self._recording_failure(context, lambda stock: stock.trigger_reentry(context, event))

    def _recording_failure(self, context: Context, call: Any) -> Any:
        """Run the stock operator; when the training step fails (a timeout too), record its pod's hours
        (:mod:`tuneloop.spent`), so the failed run's cost counts. A deferral is no failure."""
        from airflow.sdk.exceptions import TaskDeferred

        try:
            return call(self.stock_operator(context))
        except TaskDeferred:
            raise
        except BaseException:  # AirflowTaskTimeout is a BaseException
            if self.step == "train" and self._pod_operator is not None:
                self._record_spent(context, self._pod_operator.pod)
            raise

    def _record_spent(self, context: Context, pod: Any) -> None:
        from datetime import datetime, timezone

        from tuneloop import spent
        from tuneloop.backends.pod import failed_pod_spent

        entry = failed_pod_spent(pod, datetime.now(timezone.utc))
        if entry is not None:
            spent.record(self.pipeline(context).paths.training, entry)
            self.log.info("training pod %s failed after %.2f h: recorded as spent", entry.resource, entry.quantity)

    def on_kill(self) -> None:
        if self._pod_operator is not None:
            self._pod_operator.on_kill()


class TrainerStepResultOperator(PipelineStepOperator):
    """Read the step's outputs back from the run's folder (wherever the trainer ran) and check they are complete."""

    def __init__(self, *, step: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step

    def execute(self, context: Context) -> dict[str, Any]:
        run = self.pipeline(context)
        if self.step == "train":
            result = run.train_result()
            self.log.info("training metrics: %s", result["metrics"])
            return result
        return run.evaluate_result(self.upstream(context, "export_dataset")["dataset_id"])


def sibling(task: Any, name: str) -> str:
    """The id of task ``name`` in the same task group as ``task``."""
    prefix = task.task_id.rsplit(".", 1)[0] + "." if "." in task.task_id else ""
    return prefix + name


def trainer_step(step: str, *, execution_timeout: Any) -> TaskGroup:
    """The task group of one trainer step; ``<step>.result`` carries its outcome."""
    tooltip = f"{step} on the run's backend (local, kubernetes, gke, gce, openai, vertex)"
    with TaskGroup(group_id=step, tooltip=tooltip) as group:
        prepare = PrepareTrainerStepOperator(task_id="prepare", step=step)
        local = LocalTrainerOperator(task_id="local", step=step, execution_timeout=execution_timeout)
        pod = TrainerPodOperator(task_id="pod", step=step, execution_timeout=execution_timeout)
        create_vm = CreateTrainerVmOperator(task_id="create_vm", step=step)
        wait_vm = TrainerVmSensor(task_id="wait_vm", step=step, pool=GPU_POOL)
        delete_vm = DeleteTrainerVmOperator(task_id="delete_vm", step=step)
        managed = ManagedTrainerOperator(task_id="managed", step=step, execution_timeout=execution_timeout)
        result = TrainerStepResultOperator(task_id="result", step=step,
                                           trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
        prepare >> [local, pod, create_vm, managed, result]
        create_vm >> wait_vm >> delete_vm.as_teardown(setups=create_vm, on_failure_fail_dagrun=True)
        [local, pod, wait_vm, delete_vm, managed] >> result
    return group
