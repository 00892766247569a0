"""One fine-tuning run, step by step, without Airflow.

``PipelineRun`` holds what every step needs (config, store, registry, the run's folder, its MLflow run) and has
one method per pipeline step. Operators are thin adapters that call exactly one of these methods and push its
small JSON-safe result to XCom; tests call them directly. Steps exchange files under the run's folder, keyed on the
Airflow run id (never the logical date), and every step can be re-run: it reuses what a previous attempt finished.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tuneloop import storage
from tuneloop.config import DEFAULT_MODEL, TuneloopConfig
from tuneloop.history import RunActor
from tuneloop.storage import StoragePath

if TYPE_CHECKING:
    from tuneloop.runs import DagRunStateLookup

log = logging.getLogger(__name__)

Outcome = str  # "approve_deploy" | "reject"


@dataclass(frozen=True)
class RunParams:
    """Per-run choices from the Params form or dag_run.conf; None means "use the configuration"."""

    force_trigger: bool = False
    auto_deploy: bool = True
    use_lora: bool | None = None
    epochs: int | None = None
    learning_rate: float | None = None
    backend: str | None = None
    deployment_strategy: str | None = None
    label_noise: str = "none"
    reason: str = "scheduled"

    @classmethod
    def from_mapping(cls, params: dict[str, Any]) -> "RunParams":
        known = {k: params[k] for k in cls.__dataclass_fields__ if k in params and params[k] is not None}
        return cls(**known)


@dataclass(frozen=True)
class RunPaths:
    """Where one run's files live: ``<storage_root>/runs/<run key>/`` -- a local folder, or a bucket prefix that the
    trainer's pod or VM reads and writes too."""

    root: StoragePath

    @property
    def base_model(self) -> StoragePath:
        return self.root / "base_model"

    @property
    def training(self) -> StoragePath:
        return self.root / "training"

    @property
    def spec(self) -> StoragePath:
        return self.training / "spec.json"

    @property
    def model(self) -> StoragePath:
        return self.training / "model"

    def predictions(self, model_tag: str, suite: str = "eval") -> StoragePath:
        return self.root / "predictions" / model_tag / f"{suite}.jsonl"

    @property
    def evaluate_jobs(self) -> StoragePath:
        """What the trainer's ``evaluate --jobs`` transcribes: models, inputs and outputs, as URIs."""
        return self.root / "predictions" / "jobs.json"

    def suite_copy(self, suite: str) -> StoragePath:
        """A regression suite's data copied beside the run, where a pod or VM can read it."""
        return self.root / "suites" / suite / f"{suite}.jsonl"

    def marker(self, step: str) -> StoragePath:
        """Where a GCE trainer VM reports the end of ``step`` (its exit status)."""
        return self.root / "markers" / f"{step}.json"

    @property
    def base_source(self) -> StoragePath:
        """Where the base model came from: ``{"source": "production", "version": ...}`` or a configured dir."""
        return self.root / "base_model.json"

    @property
    def gate(self) -> StoragePath:
        return self.root / "gate.json"

    @property
    def churn(self) -> StoragePath:
        return self.root / "churn.jsonl"

    @property
    def plot(self) -> StoragePath:
        return self.root / "gate.png"

    @property
    def regression(self) -> StoragePath:
        return self.root / "regression.json"

    @property
    def post_deploy(self) -> StoragePath:
        return self.root / "post_deploy_check.json"

    @property
    def online_test(self) -> StoragePath:
        return self.root / "online_test.json"


def run_key(run_id: str) -> str:
    """A filesystem-safe, collision-free folder name for an Airflow run id."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)[:80]
    return f"{safe}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"


def run_folder(model: str, key: str) -> str:
    """The run's folder under storage_root: ``runs/<run key>``, or ``runs/<model>/<run key>`` for a model of
    several (their DAGs get the same run ids; a run key always has a '-', a model name never)."""
    return f"runs/{key}" if model == DEFAULT_MODEL else f"runs/{model}/{key}"


class PipelineRun:
    """The steps of one ``finetune_weekly`` run. Construct per task; cheap (clients are created lazily)."""

    def __init__(self, config: TuneloopConfig, run_id: str, params: RunParams | None = None,
                 *, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.config = config
        self.run_id = run_id
        self.params = params or RunParams()
        self.paths = RunPaths(config.resolved_storage_root / run_folder(config.name, run_key(run_id)))
        self._now = now
        self._store = None
        self._registry = None

    # -- clients -------------------------------------------------------------------------------------------
    @property
    def store(self):
        if self._store is None:
            from tuneloop.store import ErrorCaseStore

            self._store = ErrorCaseStore.from_config(self.config)
        return self._store

    @property
    def registry(self):
        if self._registry is None:
            from tuneloop.registry import ModelRegistry

            self._registry = ModelRegistry(self.config.tracking_uri, self.config.registry_uri,
                                           self.config.mlflow.model_name)
        return self._registry

    @property
    def task(self):
        """What differs for this kind of model (:mod:`tuneloop.tasks`)."""
        from tuneloop.tasks import task_for

        return task_for(self.config.task)

    def mlflow_run_id(self) -> str:
        from tuneloop import tracking

        return tracking.ensure_run(self.config, self.run_id)

    # -- 1. check_trigger ----------------------------------------------------------------------------------
    def check_trigger(self, dag_run_state: DagRunStateLookup | None = None) -> dict[str, Any]:
        """Evaluate the trigger conditions; when they hold, mark this run as the training in progress.

        ``dag_run_state``: Airflow's DAG run states (the operator passes the Task SDK's), so that a run recorded as
        running whose DAG run is finished or gone stops blocking this one (:mod:`tuneloop.runs`).
        """
        result = evaluate_trigger(self.config, now=self._now(), force=self.params.force_trigger, store=self.store,
                                  own_run_id=self.run_id, dag_run_state=dag_run_state)
        if result.should_trigger:
            self.store.start_training_run(self.run_id, at=self._now())
        approval = training_approval_reason(self.config, result.should_trigger, self.params.force_trigger)
        return result.to_dict() | {"approval_required": approval is not None, "approval_reason": approval,
                                   "summary_md": "\n".join(f"- {r}" for r in result.reasons)}

    # -- 2. export_dataset ---------------------------------------------------------------------------------
    def export_dataset(self) -> dict[str, Any]:
        """Snapshot the corrected, unconsumed cases into an immutable dataset and log it to MLflow."""
        from tuneloop import tracking
        from tuneloop.datasets import export_dataset
        from tuneloop.regression import leakage_guard

        suites = self.suites()
        guard = (leakage_guard(suites, match_texts=self.config.regression.exclude_suite_texts, task=self.config.task)
                 if suites else None)
        with tempfile.TemporaryDirectory(prefix="tuneloop-audio-") as scratch:  # error-case audio from buckets
            manifest = export_dataset(self.store, self.config.resolved_storage_root, self.config.dataset,
                                      run_id=self.run_id, now=self._now(), guard=guard, task=self.task,
                                      fetch_audio=storage.audio_fetcher(self.config.storage_conn_id, Path(scratch)))
        if manifest.counts.get("excluded"):
            log.info("export excluded %d case(s) that match regression-suite items (%d by audio, %d by text)",
                     manifest.counts["excluded"], manifest.counts.get("excluded_suite_audio", 0),
                     manifest.counts.get("excluded_suite_text", 0))
        dataset_dir = self.dataset_dir(manifest.dataset_id)
        mlflow_run = self.mlflow_run_id()
        tracking.log_params(self.config, mlflow_run, {"dataset_id": manifest.dataset_id,
                                                      "reason": self.params.reason})
        tracking.log_metrics(self.config, mlflow_run, {
            "dataset_train_rows": manifest.counts["train"], "dataset_eval_rows": manifest.counts["eval"],
            "dataset_quarantined": manifest.counts["quarantined"],
            "dataset_excluded_suite_items": manifest.counts.get("excluded", 0)})
        for split in ("train", "eval"):
            tracking.log_dataset(self.config, mlflow_run, dataset_dir, manifest.dataset_id, split)
        tracking.log_artifact(self.config, mlflow_run, dataset_dir / "manifest.json", "dataset")
        return {"dataset_id": manifest.dataset_id, "dataset_dir": storage.uri(dataset_dir), "counts": manifest.counts}

    # -- 2b. approve_budget -------------------------------------------------------------------------------
    def budget_check(self, dataset_id: str) -> dict[str, Any]:
        """The training's estimated cost against ``costs.max_run_usd`` and what is left of this month's
        ``costs.monthly_budget_usd`` (written to budget.json). Nothing is uploaded or started here; for a managed
        backend the splits are checked against the provider's rules, which gives the token count."""
        from tuneloop.costs import budget_check

        costs = self.config.costs
        spent, unknown = self.spent_this_month()
        check = budget_check(self.training_estimate(dataset_id), spent_this_month_usd=spent,
                             unknown_runs_this_month=unknown, max_run_usd=costs.max_run_usd,
                             monthly_budget_usd=costs.monthly_budget_usd)
        _write_json(self.paths.root / "budget.json", check.to_dict())
        for reason in check.reasons:
            log.info("budget: %s", reason)
        return check.to_dict() | {"over_budget": costs.over_budget}

    def spent_this_month(self) -> tuple[float, int]:
        """This model's training costs of runs finished this calendar month (UTC), this run excluded: the known
        sum, and how many trained runs' cost is unknown (never counted as zero)."""
        month = self._now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        trainings = [(r.summary.get("costs") or {}).get("training") for r in self.store.finished_runs_since(month)
                     if r.run_id != self.run_id]
        known = [t["usd"] for t in trainings if t and t.get("usd") is not None]
        return sum(known), sum(1 for t in trainings if t and t.get("usd") is None)

    def training_estimate(self, dataset_id: str) -> Any:
        """What this run's training will cost (:class:`tuneloop.costs.Cost`): a managed job's estimated tokens at
        the training price; a pod's or VM's hours at most its timeout; local nothing."""
        from tuneloop.backends import MANAGED
        from tuneloop.costs import hours_cost, training_tokens_cost

        backend = self.backend()
        if backend in MANAGED:
            prepared = self.prepare_train(dataset_id)
            return training_tokens_cost(self.config.costs.prices, self._priced_base_model(),
                                        prepared["estimated_training_tokens"], estimate=True)
        training = self.config.training
        bound = training.gce.timeout_hours if backend == "gce" else training.timeout_minutes / 60
        return hours_cost(self.config.costs.prices, self.machine_parts(backend), bound, upper_bound=backend != "local")

    def training_cost(self) -> Any:
        """What this run's training cost: what the finished training reported (metrics.json) plus what every
        attempt that ended without a model spent (:mod:`tuneloop.spent`: failed and cancelled jobs, failed pods,
        VMs), or nothing when neither exists (no job, pod or VM was started)."""
        from tuneloop import spent
        from tuneloop.costs import Cost, total

        parts = [self._spent_cost(entry) for entry in spent.read(self.paths.training)]
        if (self.paths.training / "metrics.json").exists():
            parts.insert(0, self._finished_training_cost())
        if not parts:
            return Cost(0.0, "nothing billed: no training finished and no job, pod or VM was started")
        return total(parts)

    def _spent_cost(self, entry: Any) -> Any:
        """An attempt that ended without a model (:class:`tuneloop.spent.Spent`) at this run's prices."""
        from dataclasses import replace

        from tuneloop.costs import hours_cost, training_tokens_cost

        prices = self.config.costs.prices
        if entry.unit == "tokens":
            cost = training_tokens_cost(prices, self._priced_base_model(), int(entry.quantity),
                                        estimate=entry.upper_bound, upper_bound=entry.upper_bound)
        else:
            cost = hours_cost(prices, self.machine_parts(self.backend()), entry.quantity)
        bound = "at most " if entry.upper_bound else ""
        return replace(cost, basis=f"{entry.resource} {entry.outcome}: {bound}{cost.basis}")

    def _finished_training_cost(self) -> Any:
        """What the finished training cost, from what the trainer or the job reported (metrics.json)."""
        from tuneloop.backends import MANAGED
        from tuneloop.costs import Cost, hours_cost, training_tokens_cost

        metrics = storage.read_json(self.paths.training / "metrics.json")
        backend = self.backend()
        if backend in MANAGED:
            if metrics.get("trained_tokens") is None:
                return Cost(None, "the job reported no trained_tokens")
            return training_tokens_cost(self.config.costs.prices, self._priced_base_model(),
                                        int(metrics["trained_tokens"]))
        if metrics.get("train_runtime_s") is None:
            return Cost(None, "the trainer reported no train_runtime_s")
        hours = float(metrics["train_runtime_s"]) / 3600
        return hours_cost(self.config.costs.prices, self.machine_parts(backend), hours)

    def machine_parts(self, backend: str) -> dict[str, int]:
        """What a trainer backend bills by the hour: a GCE VM's machine type and accelerators, a pod's accelerator
        per GPU (its node selector's ``cloud.google.com/gke-accelerator``) else the backend itself; local: none."""
        training = self.config.training
        if backend == "gce":
            parts = {training.gce.machine_type: 1}
            if training.gce.accelerator_count:
                parts[training.gce.accelerator_type] = training.gce.accelerator_count
            return parts
        if backend in ("kubernetes", "gke"):
            accelerator = training.pod.node_selector.get("cloud.google.com/gke-accelerator")
            return {accelerator: training.pod.gpus} if accelerator and training.pod.gpus else {backend: 1}
        return {}

    def _priced_base_model(self) -> str:
        """The model whose training price applies (the provider's base model under any fine-tuning)."""
        from tuneloop.managed import steps
        from tuneloop.managed.reference import read_managed

        return steps(self.backend()).priced_model(read_managed(self.paths.base_model))

    def inference_costs(self) -> dict[str, dict[str, Any]]:
        """Production's and the candidate's cost per request, from the token usage their eval predictions recorded
        (a managed model's; a self-hosted model's predictions carry none and cost what its machine costs)."""
        from tuneloop.costs import mean_request_cost
        from tuneloop.managed import steps
        from tuneloop.managed.reference import is_managed, read_managed

        costs = {}
        for tag, model_dir in (("production", self.paths.base_model), ("candidate", self.paths.model)):
            path = self.paths.predictions(tag)
            if not (is_managed(model_dir) and path.exists()):
                continue
            model = read_managed(model_dir)
            name = steps(model.provider).served_price_name(model)
            costs[tag] = mean_request_cost(self.config.costs.prices, name, storage.read_jsonl(path)).to_dict()
        return costs

    def expected_requests(self) -> float:
        """Requests a month for ROI: ``costs.expected_requests_per_month``, else the model's recorded inferences
        (every version's) over the last 30 days."""
        if self.config.costs.expected_requests_per_month is not None:
            return float(self.config.costs.expected_requests_per_month)
        return float(self.store.inferences_since(self._now() - timedelta(days=30)))

    def budget_needs_approval(self, check: dict[str, Any]) -> str | None:
        if check["within"]:
            return None
        return "over budget: " + "; ".join(check["reasons"])

    # -- 3. train ------------------------------------------------------------------------------------------
    def dataset_dir(self, dataset_id: str) -> StoragePath:
        return self.config.resolved_storage_root / "datasets" / dataset_id

    def prepare_base_model(self) -> StoragePath:
        """The model to start from: production's files from the registry, else ``training.base_model``.

        Published under the run's folder (a pod or VM reads it from there) before ``base_model.json`` is written:
        a worker killed mid-download or mid-upload leaves nothing a retry could mistake for a model.
        """
        from tuneloop.managed.reference import is_managed

        target = self.paths.base_model
        if self.paths.base_source.exists() and ((target / "config.json").exists() or is_managed(target)):
            return target
        version = self.registry.production_version()
        with tempfile.TemporaryDirectory(prefix="tuneloop-base-") as tmp:
            if version is not None:
                local = self.registry.download_model_dir(version, Path(tmp) / "model")
                source: dict[str, Any] = {"source": "production", "version": version}
            else:
                local = self._configured_base_model(Path(tmp) / "model")
                source = {"source": "base_model", "path": str(local), "version": None}
            storage.publish_dir(local, target)
        _write_json(self.paths.base_source, source)
        return target

    def _configured_base_model(self, scratch: Path) -> Path:
        """``training.base_model``; for a managed backend, a model directory naming its configured base model."""
        from tuneloop.backends import MANAGED

        if self.backend() in MANAGED:
            from tuneloop.managed import steps
            from tuneloop.managed.reference import write_managed

            write_managed(scratch, steps(self.backend()).configured_base(self))
            return scratch
        if not self.config.training.base_model:
            raise ValueError("training.base_model: no production model is registered and no base model is "
                             "configured; set training.base_model to a Hugging Face model directory")
        base = Path(self.config.training.base_model)
        if not (base / "config.json").exists():
            raise ValueError(f"training.base_model: {base} is not a model directory (no config.json)")
        return base

    def base_model_source(self) -> dict[str, Any]:
        """What the candidate was trained from; ``source != "production"`` means a first run."""
        return storage.read_json(self.paths.base_source)

    def suites(self):
        """Regression suites: those in config plus those registered through the store (which win by name)."""
        from tuneloop.regression import merge_suites

        return merge_suites(self.config.regression.suites, self.store.registered_suites())

    def training_spec(self, dataset_dir: StoragePath, base_model: StoragePath) -> dict[str, Any]:
        t = self.config.training
        use_lora = t.use_lora if self.params.use_lora is None else self.params.use_lora
        return {
            "task": self.task.trainer_task,
            "base_model_uri": storage.uri(base_model),
            "dataset_uri": storage.uri(dataset_dir),
            "output_uri": storage.uri(self.paths.training),
            "seed": t.seed,
            "epochs": self.params.epochs or t.epochs,
            "max_steps": t.max_steps,
            "batch_size": t.batch_size,
            "learning_rate": self.params.learning_rate or t.learning_rate,
            "warmup_ratio": t.warmup_ratio,
            "weight_decay": 0.0,
            "lora": {"enabled": use_lora, "r": t.lora_rank, "alpha": t.lora_alpha, "dropout": t.lora_dropout,
                     "target_modules": list(t.lora_target_modules)},
            "precision": t.precision,
            "checkpoint_every_steps": t.checkpoint_every_steps,
            "label_noise": self.params.label_noise,
            "mlflow": {"tracking_uri": self.config.tracking_uri, "run_id": self.mlflow_run_id()},
        }

    def backend(self) -> str:
        """Where the trainer runs in this run: the Params form's choice, else ``training.backend``."""
        from tuneloop.backends import BACKENDS, MANAGED, READ_THE_BUCKET

        name = self.params.backend or self.config.training.backend
        if name not in BACKENDS:
            raise ValueError(f"training.backend: unknown backend {name!r}; known: {', '.join(BACKENDS)}")
        if name in MANAGED and self.config.task != "chat":
            raise ValueError(f"training.backend={name} fine-tunes chat models; this model's task is "
                             f"{self.config.task}: use local, kubernetes, gke or gce")
        if name in READ_THE_BUCKET and storage.is_local(self.paths.root):
            raise ValueError(f"training.backend={name} trains on another machine, which cannot read the "
                             f"local folder {self.paths.root}: set storage_root to object storage (gs://bucket/prefix)")
        return name

    def prepare_train(self, dataset_id: str) -> dict[str, Any]:
        """Publish the base model and the training spec; return the trainer command for the chosen backend."""
        from tuneloop.backends.command import train_args

        from tuneloop.backends import MANAGED

        backend = self.backend()
        base_model = self.prepare_base_model()
        if backend in MANAGED:
            from tuneloop.managed import steps

            return steps(backend).prepare(self, dataset_id)
        _write_json(self.paths.spec, self.training_spec(self.dataset_dir(dataset_id), base_model))
        return {"backend": backend, "args": train_args(storage.uri(self.paths.spec)), "done": False}

    def train_result(self) -> dict[str, Any]:
        """What the trainer left in the run's folder (metrics.json is written last: present = finished)."""
        metrics_file = self.paths.training / "metrics.json"
        if not metrics_file.exists():
            raise RuntimeError(f"the trainer finished without {storage.uri(metrics_file)}: its output is incomplete")
        return {"model_dir": storage.uri(self.paths.model), "base_model_dir": storage.uri(self.paths.base_model),
                "metrics": storage.read_json(metrics_file)}

    def train(self, dataset_id: str, log_line: Callable[[str], None]) -> dict[str, Any]:
        """Prepare, run the trainer on this machine, collect: the whole step in one call (tests, the CLI)."""
        step = self.prepare_train(dataset_id)
        self.run_locally(step, log_line)
        return self.train_result()

    def run_locally(self, step: dict[str, Any], log_line: Callable[[str], None]) -> None:
        """Run a prepared trainer command as a subprocess here (the ``local`` backend)."""
        from tuneloop.backends import LocalBackend

        if not step["done"]:
            LocalBackend(timeout_s=self.config.training.timeout_minutes * 60).run(step["args"], log_line=log_line)

    # -- 4. evaluate ---------------------------------------------------------------------------------------
    def prepare_evaluate(self, dataset_id: str) -> dict[str, Any]:
        """Write the jobs file (the eval split and every regression suite, with the candidate and with production,
        the base model of this run) and return the trainer command; ``done`` when every output exists already
        (each is written as one object or renamed into place: present = complete)."""
        from tuneloop.backends.command import evaluate_jobs_args

        backend = self.backend()
        inputs = self._evaluation_inputs(dataset_id)
        jobs = []
        for tag, model_dir in (("candidate", self.paths.model), ("production", self.paths.base_model)):
            todo = [(data, self.paths.predictions(tag, name)) for name, data in inputs.items()
                    if not self.paths.predictions(tag, name).exists()]
            if todo:
                jobs.append({"model_dir": storage.uri(model_dir), "data": [storage.uri(d) for d, _ in todo],
                             "output": [storage.uri(o) for _, o in todo]})
        _write_json(self.paths.evaluate_jobs, {"batch_size": self.config.training.eval_batch_size, "jobs": jobs})
        return {"backend": backend, "args": evaluate_jobs_args(storage.uri(self.paths.evaluate_jobs)),
                "done": not jobs}

    def _evaluation_inputs(self, dataset_id: str) -> dict[str, StoragePath]:
        """``{name: JSONL}``: the eval split, and each regression suite (copied beside the run when it runs
        elsewhere, so that a pod or VM reads it from the bucket)."""
        suites = self.suites() if self.config.regression.run_on_deploy else ()
        inputs: dict[str, StoragePath] = {"eval": self.dataset_dir(dataset_id) / "eval.jsonl"}
        for suite in suites:
            if storage.is_local(self.paths.root):
                inputs[suite.name] = Path(suite.data_path)
            else:
                inputs[suite.name] = storage.publish_split(Path(suite.data_path), self.paths.suite_copy(suite.name))
        return inputs

    def evaluate_result(self, dataset_id: str) -> dict[str, Any]:
        """The predictions the trainer wrote, checked to be all there."""
        names = ["eval", *(s.name for s in (self.suites() if self.config.regression.run_on_deploy else ()))]
        missing = [storage.uri(self.paths.predictions(tag, name)) for tag in ("candidate", "production")
                   for name in names if not self.paths.predictions(tag, name).exists()]
        if missing:
            raise RuntimeError(f"evaluation finished without {len(missing)} predictions file(s): {', '.join(missing)}")
        return {"candidate": storage.uri(self.paths.predictions("candidate")),
                "production": storage.uri(self.paths.predictions("production")),
                "suites": sorted(name for name in names if name != "eval")}

    def evaluate(self, dataset_id: str, log_line: Callable[[str], None]) -> dict[str, Any]:
        """Prepare, transcribe on this machine, collect (tests, the CLI)."""
        self.run_locally(self.prepare_evaluate(dataset_id), log_line)
        return self.evaluate_result(dataset_id)

    # -- 5. validate ---------------------------------------------------------------------------------------
    def validate(self) -> dict[str, Any]:
        """The gate: candidate vs production on the same eval examples, as the model's task judges them; writes
        gate.json (and the task's other evidence: churn, plot), logs the headline numbers to MLflow."""
        from tuneloop import tracking

        result = self.task.validate(self)
        mlflow_run = self.mlflow_run_id()
        tracking.log_metrics(self.config, mlflow_run, self.task.flat_metrics(result))
        for artifact in (self.paths.gate, self.paths.churn, self.paths.plot):
            if artifact.exists():
                tracking.log_artifact(self.config, mlflow_run, artifact, "gate")
        for reason in result["reasons"]:
            log.info("gate: %s", reason)
        return result

    # -- 5b. regression_suite ------------------------------------------------------------------------------
    def regression_suite(self) -> dict[str, Any]:
        """Every regression suite against its baseline and thresholds; writes regression.json."""
        from tuneloop import tracking

        if not self.config.regression.run_on_deploy:
            report = {"passed": True, "results": [], "reasons": ["regression.run_on_deploy is false: suites not run"]}
            _write_json(self.paths.regression, report)
            return report
        report = self.task.regression(self)
        _write_json(self.paths.regression, report)
        mlflow_run = self.mlflow_run_id()
        tracking.log_metrics(self.config, mlflow_run, self.task.suite_metrics(report))
        tracking.log_artifact(self.config, mlflow_run, self.paths.regression, "regression")
        for result in report["results"]:
            for reason in result["reasons"]:
                log.info("regression: %s", reason)
        return report

    # -- 6. register ---------------------------------------------------------------------------------------
    def register(self, dataset_id: str) -> dict[str, Any]:
        """Register the candidate as a model version tagged with its dataset, run and verdict."""
        gate_result = storage.read_json(self.paths.gate)
        regression = storage.read_json(self.paths.regression)
        verdict = gate_result["verdict"] if regression["passed"] else "fail"
        tags = {"dataset_id": dataset_id, "airflow_run_id": self.run_id, "verdict": verdict,
                "gate_verdict": gate_result["verdict"], "regression_passed": str(regression["passed"]).lower(),
                **{k: v for k, v in self.task.flat_metrics(gate_result).items()}}
        serving = self.serving()
        tags |= self._managed_tags()
        with storage.local_dir(self.paths.model) as model_dir:
            version = self.registry.register_candidate(model_dir, run_id=self.mlflow_run_id(), tags=tags,
                                                       serving_code=serving.code, pip_requirements=serving.requirements,
                                                       signature=serving.signature,
                                                       model_config=serving.model_config)
        return {"version": version, "production_version": self.registry.production_version()}

    def serving(self) -> Any:
        """How the candidate is served: the task's pyfunc, or the managed provider's for a managed model."""
        from tuneloop.managed import reference

        if reference.is_managed(self.paths.model):
            return reference.serving(reference.read_managed(self.paths.model).provider)
        return self.task.serving()

    def served_model_config(self) -> dict[str, Any] | None:
        """What loading the candidate's pyfunc needs besides its artifacts (``model_config``, kept in memory):
        the API's credentials from the Airflow connection for a managed model (its provider's
        ``tuneloop.hooks.<provider>_connection.serving_config``), else nothing."""
        from tuneloop.managed.reference import is_managed, read_managed, serving_credentials

        if not is_managed(self.paths.model):
            return None
        return serving_credentials(read_managed(self.paths.model).provider, self.config.training)

    def served_params(self) -> dict[str, Any] | None:
        """The candidate's predict params that keep its served replies as long as its evaluated ones (a managed
        model was evaluated with ``training.<provider>.max_reply_tokens``); None: the pyfunc's defaults."""
        from tuneloop.managed.reference import is_managed, read_managed, served_params

        if not is_managed(self.paths.model):
            return None
        return served_params(read_managed(self.paths.model).provider, self.config.training)

    # -- 7. decide -----------------------------------------------------------------------------------------
    def decide(self) -> Outcome:
        """``reject`` unless the gate and the regression suites both passed; else ``approve_deploy``, which
        promotes at once or waits for a person (auto_deploy off, or a first run under require_approval)."""
        gate_result = storage.read_json(self.paths.gate)
        regression = storage.read_json(self.paths.regression)
        if not gate_result["passed"] or not regression["passed"]:
            return "reject"
        return "approve_deploy"

    def deploy_needs_approval(self) -> str | None:
        """Why a person must approve this deployment, or None when it may go ahead on its own."""
        gate_result = storage.read_json(self.paths.gate)
        if gate_result.get("requires_approval"):
            return ("first run with no production model (validation.first_run_policy=require_approval): "
                    "the comparison was with the base model")
        if not self.params.auto_deploy:
            return "auto_deploy is off for this run"
        return None

    # -- 8. deploy / reject / approvals / rollback --------------------------------------------------------
    def strategy(self) -> Any:
        """How this run's candidate reaches production (:mod:`tuneloop.strategies`): the Params form's choice,
        else ``deployment.deployment_strategy``."""
        from tuneloop.strategies import strategy_for

        return strategy_for(self.params.deployment_strategy or self.config.deployment.deployment_strategy)

    def deploy(self, version: str, actor: RunActor | None = None) -> dict[str, Any]:
        """Place ``version`` as the run's strategy says (production, green, canary); ``actor``: who answers for it
        (the approver, else whoever started the run). The result names the strategy, the alias and the version."""
        strategy = self.strategy()
        event = strategy.place(self, version, actor or RunActor())
        self._retire_managed_models(event.details.get("archived") or [])
        return event.to_dict() | {"strategy": strategy.name, "alias": strategy.alias, "placed_version": version}

    def promote(self, placed: dict[str, Any], decision: dict[str, Any] | None,
                actor: RunActor | None = None) -> dict[str, Any] | None:
        """The strategy's last move once the placed version passed its check (and the online test decided)."""
        from tuneloop.strategies import Placement

        placement = Placement.of(placed)
        event = placement.strategy.finish(self, placement.version, decision, actor or RunActor())
        if event is None:
            return None
        self._retire_managed_models(event.details.get("archived") or [])
        return event.to_dict()

    def _managed_tags(self) -> dict[str, str]:
        """A managed candidate's provider and model id, as version tags (retention reads them)."""
        from tuneloop.managed.reference import is_managed, managed_tags, read_managed

        if not is_managed(self.paths.model):
            return {}
        return managed_tags(read_managed(self.paths.model))

    def _retire_managed_models(self, archived: list[str]) -> None:
        """Delete at the provider the fine-tuned models of the versions retention just archived."""
        from tuneloop.managed.openai_training import retire_models

        def client() -> Any:
            from tuneloop.hooks.openai_connection import openai_client

            return openai_client(self.config.training.openai)

        retire_models(self.registry, archived, client, log.info)

    def reject(self, version: str, actor: RunActor | None = None) -> dict[str, Any]:
        from tuneloop.deployment import reject

        actor = actor or RunActor()
        event = reject(self.registry, self.store, version, reason=self.gate_summary(), actor=actor.name,
                       run_id=self.run_id, details=actor.details())
        return event.to_dict()

    def deployment_summary(self, version: str) -> str:
        """What a person approving the deployment reads (Markdown): the verdicts and every reason."""
        gate_result = storage.read_json(self.paths.gate)
        regression = storage.read_json(self.paths.regression)
        production = self.registry.production_version()
        lines = [f"**Candidate version {version}** of `{self.config.mlflow.model_name}` "
                 f"(production now: {production or 'none'}); gate verdict **{gate_result['verdict']}**, "
                 f"regression suites **{'passed' if regression['passed'] else 'failed'}**.", ""]
        lines.append(f"- {self.task.headline(gate_result)}")
        lines += [f"- {reason}" for reason in gate_result["reasons"]]
        for suite in regression["results"]:
            lines += [f"- {reason}" for reason in suite["reasons"]]
        why = self.deploy_needs_approval()
        if why:
            lines += ["", f"Approval is needed because {why}. Reject (or no answer in "
                          f"{self.config.deployment.approval_timeout_hours:g} h) leaves production untouched."]
        return "\n".join(lines)

    def record_approval_rejected(self, stage: str, response: dict[str, Any]) -> dict[str, Any]:
        """A person rejected (or nobody answered) an approval: production is untouched; the history says so."""
        from tuneloop.history import DeploymentEvent

        production = self.registry.production_version()
        who = response.get("by") or "nobody (timed out)"
        what = {"training": "training", "budget": "training over budget"}.get(
            stage, f"deployment of version {response.get('version')}")
        event = DeploymentEvent(action="approval_rejected", model_name=self.config.mlflow.model_name,
                                from_version=production, to_version=production,
                                reason=f"{what} not approved: {response['summary']}", actor=str(who),
                                run_id=self.run_id, details={"stage": stage, **response})
        self.store.record_deployment(event)
        return event.to_dict()

    def post_deploy_check(self, dataset_id: str, deployed_version: str, alias: str = "production") -> dict[str, Any]:
        """Load ``models:/<name>@<alias>`` like a serving system would and run a smoke set through it."""
        result = self.task.post_deploy_check(self, dataset_id, deployed_version, alias)
        _write_json(self.paths.post_deploy, result)
        return result

    def record_online_test(self, decision: dict[str, Any], since: datetime | None = None) -> dict[str, Any]:
        """Keep the online test's decision with its numbers (online_test.json, and the run's MLflow metrics), and
        seed 004's weighted winner beside it (accuracy, mean latency and cost per request of each arm since
        ``since``; cost is left out where an arm has none, as a self-hosted version). Returns the decision as
        recorded."""
        from tuneloop import tracking

        looked = decision["look"]
        _write_json(self.paths.online_test, decision)  # first: a person's call survives a failure below
        if looked is not None and since is not None:
            decision = decision | {"winner": self._weighted_winner(looked, since)}
            _write_json(self.paths.online_test, decision)
        if looked is None:  # ended outside the test: no counts to log
            return decision
        metrics = {"online_production_requests": looked["production"]["requests"],
                   "online_production_errors": looked["production"]["errors"],
                   "online_canary_requests": looked["canary"]["requests"],
                   "online_canary_errors": looked["canary"]["errors"],
                   "online_always_valid_p": looked["always_valid_p"]}
        if looked.get("chi_squared_p") is not None:
            metrics["online_chi_squared_p"] = looked["chi_squared_p"]
        tracking.log_metrics(self.config, self.mlflow_run_id(), metrics)
        return decision

    def recorded_online_test(self) -> dict[str, Any] | None:
        """The online test's decision as recorded for this run, if it decided (a retried task returns it)."""
        return storage.read_json(self.paths.online_test) if self.paths.online_test.exists() else None

    def _weighted_winner(self, looked: dict[str, Any], since: datetime) -> dict[str, Any]:
        from tuneloop.online_test import ArmSummary, weighted_winner

        versions = {"production": self.registry.production_version(), "canary": self.registry.alias_version("canary")}
        arms = {}
        for arm, counts in ((arm, looked[arm]) for arm in ("production", "canary")):
            version = versions[arm]
            accuracy = 1 - counts["errors"] / counts["requests"] if counts["requests"] else 0.0
            latency = self.store.mean_latency_ms(version, since=since) if version else None
            cost = self.served_cost_per_request(version, since) if version else None
            arms[arm] = ArmSummary(accuracy=accuracy, latency_ms=latency, cost_usd=cost)
        return weighted_winner(arms["production"], arms["canary"])

    def served_cost_per_request(self, version: str, since: datetime) -> float | None:
        """What a request ``version`` served since ``since`` cost on average: its recorded tokens at its configured
        price (``costs.prices``). None for a self-hosted version (its cost is its machine's, not per request), or
        without recorded usage or a price."""
        from tuneloop.costs import request_cost
        from tuneloop.managed import steps
        from tuneloop.managed.reference import managed_from_tags

        model = managed_from_tags(self.registry.get_version(version).tags)
        usage = self.store.mean_usage(version, since=since) if model else None
        if model is None or usage is None:
            return None
        return request_cost(self.config.costs.prices, steps(model.provider).served_price_name(model), *usage).usd

    def auto_rollback(self, placed: dict[str, Any] | None, why: str,
                      actor: RunActor | None = None) -> dict[str, Any] | None:
        """Undo this run's placement (``deploy``'s result) after a failed check or wait: production back, green
        dropped, the canary ended -- only while the placed version is still where this run put it (never someone
        else's deployment)."""
        from tuneloop.strategies import Placement

        if not placed:
            return None
        placement = Placement.of(placed)
        event = placement.strategy.undo(self, placement.version, why, actor or RunActor())
        if event is None:
            log.warning("auto-rollback skipped: version %s is no longer where this run placed it", placement.version)
            return None
        return event.to_dict()

    def gate_summary(self) -> str:
        gate_result = storage.read_json(self.paths.gate)
        reasons = list(gate_result["reasons"])
        if self.paths.regression.exists():
            regression = storage.read_json(self.paths.regression)
            if not regression["passed"]:
                reasons += regression["reasons"]
        return "; ".join(reasons)

    # -- 9. report -----------------------------------------------------------------------------------------
    def report(self, outcome: dict[str, Any]) -> dict[str, Any]:
        """Write the decision record, finish the run in the store, consume the cases of a finished run."""
        from tuneloop.report import write_decision_record

        record = write_decision_record(self, outcome)
        return record


def evaluate_trigger(config: TuneloopConfig, *, now: datetime, force: bool, store: Any = None,
                     own_run_id: str | None = None, dag_run_state: DagRunStateLookup | None = None):
    """Trigger conditions for the production model. Used by the weekly DAG's first step and by the sensor, so
    both decide alike. ``own_run_id``: a retried check must not see its own run as "a training run in progress".
    Whether a person must approve the training is a separate question: :func:`training_approval_reason`.

    Runs recorded as running are reconciled first (:mod:`tuneloop.runs`): past ``schedule.run_timeout_hours``
    always, and against Airflow's DAG run states when ``dag_run_state`` is given; those that are over are failed,
    so no dead run blocks this check.
    """
    from tuneloop.runs import reconcile_running_runs
    from tuneloop.store import ErrorCaseStore
    from tuneloop.triggering import check_trigger

    if store is None:
        with ErrorCaseStore.from_config(config) as own_store:
            return evaluate_trigger(config, now=now, force=force, store=own_store, own_run_id=own_run_id,
                                    dag_run_state=dag_run_state)
    reconcile_running_runs(store, now=now, timeout=timedelta(hours=config.schedule.run_timeout_hours),
                           lookup=dag_run_state, exclude_run_id=own_run_id, dag_id=config.dag_id("finetune_weekly"))
    deployed = store.deployed_versions(config.mlflow.model_name)
    window = timedelta(hours=config.trigger.error_rate_window_hours)
    limit = max(config.trigger.min_error_cases, config.trigger.min_corrected_cases, 1)  # "at least the threshold?"
    metrics = store.trigger_metrics(now, window, deployed[0] if deployed else None, exclude_run_id=own_run_id,
                                    count_limit=limit)
    return check_trigger(metrics, config.trigger, now=now, force=force)


def training_approval_reason(config: TuneloopConfig, should_trigger: bool, forced: bool) -> str | None:
    """Why a person must approve this training (``approve_training`` waits), or None.

    With ``auto_approve_finetuning`` false, conditions that hold start a run that waits for approval in Airflow.
    A run started by hand with ``force_trigger`` was started by a person: that is the approval.
    """
    if not should_trigger or forced or config.trigger.auto_approve_finetuning:
        return None
    return "trigger conditions hold and trigger.auto_approve_finetuning is false"


def _write_json(path: StoragePath, data: Any) -> None:
    storage.write_json(path, data)
