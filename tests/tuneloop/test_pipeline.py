"""The run's plumbing: params, paths, the trigger + approval policy, gate metrics, the local backend."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone

import pytest

from tuneloop.backends import LocalBackend, TrainerFailed
from tuneloop.config import load_config
from tuneloop.pipeline import (
    PipelineRun,
    RunParams,
    evaluate_trigger,
    run_key,
    training_approval_reason,
)
from tuneloop.store import ErrorCaseStore

NOW = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)


@pytest.fixture
def config(tmp_path):
    env = {"TUNELOOP_HOME": str(tmp_path / "home"), "TUNELOOP__TRIGGER__MIN_ERROR_CASES": "3",
           "TUNELOOP__TRIGGER__MIN_CORRECTED_CASES": "3"}
    file = tmp_path / "tuneloop.yaml"
    file.write_text("trigger:\n  auto_approve_finetuning: false\n")
    return load_config(file, env=env)


@pytest.fixture
def store_with_cases(config, wav_factory):
    store = ErrorCaseStore.from_config(config)
    for i in range(3):
        store.store_failed_case(wav_factory(f"c{i}.wav"), "wrong words", f"right words {i}",
                                created_at=datetime(2026, 11, 19, tzinfo=timezone.utc))
    return store


def test_run_params_ignore_unknown_and_null():
    params = RunParams.from_mapping({"epochs": None, "force_trigger": True, "unrelated": 1, "label_noise": "shuffle"})
    assert params == RunParams(force_trigger=True, label_noise="shuffle")


def test_run_key_is_safe_and_distinct():
    a, b = run_key("manual__2026-11-22T00:34:01+00:00"), run_key("manual__2026-11-22T00:34:01_00:00")
    assert a != b and "/" not in a and ":" not in a and "+" not in a


def test_approval_policy_asks_a_person_unless_forced(config, store_with_cases):
    result = evaluate_trigger(config, now=NOW, force=False, store=store_with_cases)
    assert result.should_trigger
    assert training_approval_reason(config, result.should_trigger, forced=False) == (
        "trigger conditions hold and trigger.auto_approve_finetuning is false")
    assert training_approval_reason(config, True, forced=True) is None  # a person started it
    assert training_approval_reason(config, False, forced=False) is None  # nothing to approve
    auto = config.model_copy(update={"trigger": config.trigger.model_copy(update={"auto_approve_finetuning": True})})
    assert training_approval_reason(auto, True, forced=False) is None
    checked = PipelineRun(config, "scheduled__1", now=lambda: NOW).check_trigger()
    assert checked["should_trigger"] and checked["approval_required"]


def test_check_trigger_marks_the_run_and_tolerates_its_own_retry(config, store_with_cases):
    run = PipelineRun(config, "manual__1", RunParams(force_trigger=True), now=lambda: NOW)
    assert run.check_trigger()["should_trigger"]
    assert store_with_cases.training_run("manual__1").status == "running"
    assert run.check_trigger()["should_trigger"], "a retried check must not block on its own run"
    other = PipelineRun(config, "manual__2", RunParams(force_trigger=True), now=lambda: NOW).check_trigger()
    assert not other["should_trigger"] and any("in progress" in r for r in other["reasons"])


def test_training_spec_applies_params_over_config(config, tmp_path):
    run = PipelineRun(config, "r", RunParams(use_lora=False, epochs=2, label_noise="shuffle"))
    run.mlflow_run_id = lambda: "mlflow-run"
    spec = run.training_spec(tmp_path / "ds", tmp_path / "base")
    assert spec["lora"]["enabled"] is False and spec["epochs"] == 2 and spec["label_noise"] == "shuffle"
    assert spec["learning_rate"] == config.training.learning_rate
    assert spec["output_uri"] == str(run.paths.training)


def test_flat_metrics_reads_the_gate_record():
    gate = {"n": 40, "degradation_rate": 0.05,
            "wer": {"baseline": 0.4, "candidate": 0.3, "improvement": 0.1,
                    "bootstrap": {"ci_low": 0.05, "ci_high": 0.15, "p_value": 0.001}},
            "cer": {"baseline": 0.2, "candidate": 0.15, "improvement": 0.05, "bootstrap": None}}
    from tuneloop.tasks.speech_to_text import TASK

    flat = TASK.flat_metrics(gate)
    assert flat["candidate_wer"] == 0.3 and flat["wer_p_value"] == 0.001 and flat["gate_n"] == 40
    assert "cer_p_value" not in flat


def test_unknown_backend_lists_the_known_ones(config):
    with pytest.raises(ValueError, match="known: local, kubernetes, gke, gce"):
        PipelineRun(config, "r", RunParams(backend="gke-typo")).backend()


def test_remote_backends_need_object_storage(config):
    with pytest.raises(ValueError, match="training.backend=gce trains on another machine.*gs://"):
        PipelineRun(config, "r", RunParams(backend="gce")).backend()
    assert PipelineRun(config, "r", RunParams(backend="local")).backend() == "local"


def test_local_backend_reports_the_trainers_failure(tmp_path):
    backend = LocalBackend(timeout_s=60, python=sys.executable)
    lines: list[str] = []
    with pytest.raises(TrainerFailed, match="exited with status 2"):
        backend.train(tmp_path / "missing-spec.json", log_line=lines.append)
    assert lines and "tuneloop_trainer" in lines[0]


def _write_predictions(run: PipelineRun, tag: str, hypotheses: list[str]) -> None:
    from tuneloop.predictions import Prediction, write_predictions

    reference = "turn on the kitchen lights"
    write_predictions(run.paths.predictions(tag), [Prediction(f"u{i}", reference, h, slices={"voice": "a"})
                                                   for i, h in enumerate(hypotheses)])


@pytest.mark.parametrize(("policy", "passed", "needs_approval"), [
    ("require_approval", True, True),   # compared with the base model, then a person decides
    ("absolute", False, False),         # the candidate alone: WER 0.2 is above first_run_max_wer 0.1
])
def test_first_run_without_production_follows_the_configured_policy(tmp_path, policy, passed, needs_approval):
    from tuneloop.pipeline import _write_json

    env = {"TUNELOOP_HOME": str(tmp_path / "home"), "TUNELOOP__VALIDATION__FIRST_RUN_POLICY": policy,
           "TUNELOOP__VALIDATION__FIRST_RUN_MAX_WER": "0.1", "TUNELOOP__VALIDATION__BOOTSTRAP_RESAMPLES": "500"}
    run = PipelineRun(load_config(env=env), "manual__first")
    _write_json(run.paths.base_source, {"source": "base_model", "path": "/models/base", "version": None})
    _write_predictions(run, "production", ["turn on the"] * 40)              # base model: 0.4 WER
    _write_predictions(run, "candidate", ["turn on the kitchen light"] * 40)  # candidate: 0.2 WER
    result = run.validate()
    assert result["first_run"] is True and result["policy"] == policy
    assert result["passed"] is passed and result["requires_approval"] is needs_approval
    assert (run.deploy_needs_approval() is not None) is needs_approval
    if needs_approval:
        assert "first run with no production model" in run.deploy_needs_approval()
    assert run.paths.plot.exists() and run.paths.churn.exists()


def test_base_model_is_renamed_into_place_and_a_half_copy_is_redone(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (base / "model.safetensors").write_bytes(b"weights")
    config = load_config(env={"TUNELOOP_HOME": str(tmp_path / "home"), "TUNELOOP__TRAINING__BASE_MODEL": str(base)})
    run = PipelineRun(config, "manual__base")
    # a worker died mid-copy last time: a partial folder, and a target without base_model.json
    run.paths.base_model.mkdir(parents=True)
    (run.paths.base_model / "config.json").write_text("{}")
    (run.paths.root / "base_model.partial").mkdir()
    target = run.prepare_base_model()
    assert (target / "model.safetensors").read_bytes() == b"weights"
    assert not (run.paths.root / "base_model.partial").exists()
    assert run.base_model_source() == {"source": "base_model", "path": str(base), "version": None}
    assert run.prepare_base_model() == target  # complete: reused as it is


def test_forced_run_starts_after_a_stale_row(config, store_with_cases):
    """A row left running by a run whose DAG run is gone blocks nothing once Airflow is asked."""
    store_with_cases.start_training_run("manual__dead", at=NOW)
    forced = PipelineRun(config, "manual__2", RunParams(force_trigger=True), now=lambda: NOW)
    assert not forced.check_trigger()["should_trigger"], "without Airflow's state the row is within its deadline"
    airflow = {"manual__2": "running"}
    result = forced.check_trigger(lambda dag_id, run_id: airflow.get(run_id, "gone"))
    assert result["should_trigger"] and not any("in progress" in r for r in result["reasons"])
    dead = store_with_cases.training_run("manual__dead")
    assert dead.status == "failed" and "no longer exists in Airflow" in dead.summary["reason"]
    assert {c.state for c in store_with_cases.cases_for_export()} == {"new"}


def test_a_row_past_its_deadline_blocks_nothing(config, store_with_cases):
    store_with_cases.start_training_run("scheduled__hung", at=NOW - timedelta(hours=400))
    result = evaluate_trigger(config, now=NOW, force=False, store=store_with_cases)
    assert not result.metrics["training_in_progress"]
    assert result.should_trigger  # ended without a result: no cooldown, its cases are taken up at once
    assert "run_timeout_hours=336" in store_with_cases.training_run("scheduled__hung").summary["reason"]


def test_mlflow_unreachable_during_report_then_the_next_run_starts(tmp_path, monkeypatch, store_with_cases):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    env = {"TUNELOOP_HOME": str(tmp_path / "home"), "TUNELOOP__MLFLOW__TRACKING_URI": "http://127.0.0.1:9",
           "TUNELOOP__TRIGGER__MIN_ERROR_CASES": "3", "TUNELOOP__TRIGGER__MIN_CORRECTED_CASES": "3"}
    config = load_config(env=env)
    run = PipelineRun(config, "manual__1", RunParams(force_trigger=True), now=lambda: NOW)
    assert run.check_trigger()["should_trigger"]
    outcome = {"approve_training": {"approved": False, "by": "ana", "summary": "rejected by ana"},
               "states": {"check_trigger": "success", "approve_training": "success"}}

    with pytest.raises(Exception, match="127.0.0.1"):
        run.report(outcome)

    closed = store_with_cases.training_run("manual__1")
    assert closed.status == "not_approved" and closed.finished_at is not None
    assert (run.paths.root / "decision.json").exists()  # the record is kept even though MLflow never got it
    nxt = PipelineRun(config, "scheduled__2", now=lambda: NOW + timedelta(minutes=1)).check_trigger()
    assert nxt["should_trigger"], nxt["reasons"]


def test_a_run_s_training_cost_adds_what_its_attempts_without_a_model_spent(tmp_path, gcs_emulator):
    """A gce run (its folder in the bucket) whose first VM failed after half an hour and whose second trained for an
    hour: both count; with nothing recorded, nothing was billed; a missing price makes the total unknown."""
    import json
    import uuid

    from tuneloop import spent, storage

    file = tmp_path / "tuneloop.yaml"
    file.write_text(json.dumps({"storage_root": f"gs://acme-tuneloop/costs-{uuid.uuid4().hex[:8]}",
                                "training": {"backend": "gce"},
                                "costs": {"prices": {"g2-standard-8": {"per_hour": 1.0},
                                                     "nvidia-l4": {"per_hour": 0.5}}}}))
    run = PipelineRun(load_config(file, env={"TUNELOOP_HOME": str(tmp_path / "home")}), "r1", RunParams())
    nothing = run.training_cost()
    assert (nothing.usd, nothing.basis) == (0.0, "nothing billed: no training finished and no job, pod or VM was "
                                                 "started")

    spent.record(run.paths.training, spent.Spent("tuneloop-train-vm-1", 0.5, "hours", "deleted without a model"))
    failed = run.training_cost()
    assert failed.usd == pytest.approx(0.75) and failed.basis.startswith("tuneloop-train-vm-1 deleted without a "
                                                                         "model: 0.50 h x $1.5/h")
    storage.write_json(run.paths.training / "metrics.json", {"train_runtime_s": 3600})
    both = run.training_cost()
    assert both.usd == pytest.approx(0.75 + 1.5) and both.unit == "hours" and both.quantity == pytest.approx(1.5)

    unpriced = PipelineRun(load_config(file, env={"TUNELOOP_HOME": str(tmp_path / "home"),
                                                  "TUNELOOP__TRAINING__GCE__MACHINE_TYPE": "a2-highgpu-1g"}),
                           "r1", RunParams())
    assert unpriced.training_cost().usd is None and "'a2-highgpu-1g'" in unpriced.training_cost().basis


def test_a_managed_version_s_served_cost_is_its_recorded_tokens_at_its_price(tmp_path, mlflow_template):
    """The online test's cost per request (seed 004's winner weighs it): the served requests' mean tokens at the
    version's configured price; a self-hosted version, one without usage or without a price has none."""
    from tests.tuneloop.registry_testing import SERVING_CODE, MlflowEnv
    from tuneloop.deployment import register
    from tuneloop.managed.reference import ManagedModel, managed_tags, serving, write_managed
    from tuneloop.store import ServedRequest

    mlflow = MlflowEnv.create(tmp_path, mlflow_template)
    file = tmp_path / "tuneloop.yaml"
    file.write_text("costs:\n  prices:\n    ft:gpt-4.1-mini-2025-04-14: {input_per_1m_tokens: 0.8, "
                    "output_per_1m_tokens: 3.2}\n")
    config = load_config(file, env={"TUNELOOP_HOME": str(tmp_path / "home"), "TUNELOOP__MLFLOW__TRACKING_URI": mlflow.uri})
    run = PipelineRun(config, "r")
    how = serving("openai")
    versions = {}
    for name, model in (("priced", "ft:gpt-4.1-mini-2025-04-14:acme::a1"), ("unpriced", "gpt-5-nano")):
        write_managed(tmp_path / name, ManagedModel(provider="openai", model=model))
        versions[name] = register(run.registry, run.store, tmp_path / name, run_id=mlflow.new_run(),
                                  airflow_run_id=name, tags=managed_tags(ManagedModel("openai", model)),
                                  serving_code=how.code, pip_requirements=how.requirements)
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "tag.txt").write_text("local")
    versions["self-hosted"] = register(run.registry, run.store, tmp_path / "local", run_id=mlflow.new_run(),
                                       airflow_run_id="local", serving_code=SERVING_CODE)
    for name, version in versions.items():
        for i, (prompt, completion) in enumerate([(1000, 100), (3000, 300)]):
            run.store.record_served(ServedRequest(request_id=f"{name}-{i}", model_version=version, arm="canary",
                                                  served_at=NOW, prompt_tokens=prompt, completion_tokens=completion))
    assert run.served_cost_per_request(versions["priced"], NOW) == pytest.approx((0.8 * 2000 + 3.2 * 200) / 1e6)
    assert run.served_cost_per_request(versions["unpriced"], NOW) is None  # no costs.prices entry: unknown
    assert run.served_cost_per_request(versions["self-hosted"], NOW) is None  # costs what its machine costs
    assert run.served_cost_per_request(versions["priced"], NOW + timedelta(minutes=1)) is None  # nothing served
