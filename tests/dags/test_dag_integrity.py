"""Every DAG file imports cleanly, fast, without heavy libraries, and follows the house rules."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tuneloop.backends import BACKENDS
from tuneloop.operators.trainer_step import RUNNER

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((REPO / "dags").glob("*.py"))
HEAVY = ("torch", "transformers", "peft", "mlflow", "jiwer", "tuneloop_trainer")


@pytest.fixture(scope="module")
def dagbag(airflow_env):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"finetune_weekly", "finetune_on_errors", "finetune_rollback"}


def test_an_invalid_config_is_an_import_error_naming_the_field(airflow_env, monkeypatch, tmp_path):
    """The scheduled DAGs read crons, timeouts and retries at parse time: a bad config must show in the Airflow UI
    as an import error that names the field, not as a DAG quietly running on default values."""
    from airflow.dag_processing.dagbag import DagBag

    from tuneloop import schedule

    bad = tmp_path / "tuneloop.yaml"
    bad.write_text("trigger:\n  approval_timeout_hours: 0\n")
    monkeypatch.setenv("TUNELOOP_CONFIG", str(bad))
    schedule.clear_cache()
    try:
        errors = DagBag(dag_folder=str(REPO / "dags")).import_errors
    finally:
        schedule.clear_cache()
    failed = {Path(path).name: text for path, text in errors.items()}
    assert set(failed) == {"finetune_weekly.py", "finetune_on_errors.py"}
    for text in failed.values():
        assert "invalid tuneloop configuration" in text and "trigger.approval_timeout_hours" in text


TWO_MODELS = """
models:
  - name: asr
    task: speech_to_text
    model_name: speech-to-text
  - name: support
    task: chat
    model_name: support-assistant
    schedule: {weekly_cron: "0 3 * * 1"}
    deployment: {approval_timeout_hours: 24}
"""


def test_several_models_get_their_own_dags(airflow_env, monkeypatch, tmp_path):
    """models: gives each model its three DAGs, ids suffixed with its name, each with its own overrides, and the
    sensor DAG starts its own model's loop."""
    from airflow.dag_processing.dagbag import DagBag

    from tuneloop import schedule

    config = tmp_path / "tuneloop.yaml"
    config.write_text(TWO_MODELS)
    monkeypatch.setenv("TUNELOOP_CONFIG", str(config))
    schedule.clear_cache()
    try:
        bag = DagBag(dag_folder=str(REPO / "dags"))
    finally:
        schedule.clear_cache()
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {f"{base}_{model}" for base in ("finetune_weekly", "finetune_on_errors",
                                                                 "finetune_rollback") for model in ("asr", "support")}
    support = bag.dags["finetune_weekly_support"]
    assert "chat" in support.tags and "model:support" in support.tags
    assert support.timetable.expression == "0 3 * * 1"
    assert bag.dags["finetune_weekly_asr"].get_task("approve_deploy").response_timeout.total_seconds() == 72 * 3600
    assert support.get_task("approve_deploy").response_timeout.total_seconds() == 24 * 3600
    assert bag.dags["finetune_on_errors_support"].get_task("start_finetune").trigger_dag_id == \
        "finetune_weekly_support"


@pytest.mark.parametrize("dag_id", ["finetune_weekly", "finetune_on_errors", "finetune_rollback"])
def test_house_rules(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert dag.tags and "tuneloop" in dag.tags
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.doc_md and len(dag.doc_md) > 100
    assert all(task.retries >= 0 for task in dag.tasks)
    assert dag.default_args.get("retries", 0) >= 1


def test_weekly_shape(dagbag):
    dag = dagbag.dags["finetune_weekly"]
    assert dag.get_task("decide").downstream_task_ids == {"approve_deploy", "reject"}
    assert dag.get_task("approve_deploy").downstream_task_ids == {"deploy"}
    assert dag.get_task("check_trigger").downstream_task_ids == {"approve_training"}
    for approval in ("approve_training", "approve_deploy"):
        task = dag.get_task(approval)
        assert task.defaults == ["Reject"] and task.response_timeout.total_seconds() == 72 * 3600
    assert dag.get_task("validate").operator_extra_links[0].name == "MLflow run"
    assert dag.get_task("rollback").trigger_rule == "one_failed"
    assert dag.get_task("report").trigger_rule == "all_done"
    assert set(dag.params.keys()) >= {"force_trigger", "auto_deploy", "use_lora", "epochs", "backend"}
    assert dag.params.get_param("backend").schema["enum"] == [None, "local", "kubernetes", "gke", "gce", "openai",
                                                                "vertex"]


@pytest.mark.parametrize("step", ["train", "evaluate"])
def test_trainer_steps_wire_every_backend(dagbag, step):
    """prepare branches to one runner per backend; the VM is deleted whatever happened once created (teardown);
    GPU work takes a pool slot."""
    dag = dagbag.dags["finetune_weekly"]
    task = lambda name: dag.get_task(f"{step}.{name}")  # noqa: E731
    runners = ("local", "pod", "create_vm", "managed", "result")
    assert task("prepare").downstream_task_ids == {f"{step}.{t}" for t in runners}
    assert set(RUNNER) == set(BACKENDS) and set(RUNNER.values()) <= set(runners)  # every backend has its runner
    assert task("managed").downstream_task_ids == {f"{step}.result"}
    assert task("create_vm").downstream_task_ids == {f"{step}.wait_vm", f"{step}.delete_vm"}
    assert task("wait_vm").downstream_task_ids == {f"{step}.delete_vm", f"{step}.result"}
    assert task("delete_vm").is_teardown and task("delete_vm").trigger_rule == "all_done_setup_success"
    assert task("create_vm").is_setup and task("delete_vm").on_failure_fail_dagrun
    assert task("result").trigger_rule == "none_failed_min_one_success"
    assert task("pod").pool == task("wait_vm").pool == "gpu" and task("local").pool == "default_pool"
    assert task("local").execution_timeout == task("pod").execution_timeout


def test_parse_is_light_and_fast(airflow_env):
    """Import the DAG files in a clean interpreter: report the parse time, forbid heavy imports.

    Airflow itself is imported first, as it is in the DAG processor; the time measured is the DAG files' own.
    """
    code = textwrap.dedent(f"""
        import importlib.util, sys, time
        import airflow.sdk, airflow.providers.standard.operators.trigger_dagrun
        t = time.perf_counter()
        for f in {[str(f) for f in DAG_FILES]!r}:
            spec = importlib.util.spec_from_file_location(f.rsplit('/', 1)[1][:-3], f)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        print(round(time.perf_counter() - t, 3))
        print(",".join(sorted(m for m in {HEAVY!r} if m in sys.modules)))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=airflow_env, check=True)
    lines = out.stdout.splitlines()
    seconds, heavy = lines[-2], lines[-1]
    print(f"\nDAG files parsed in {seconds} s (after importing Airflow)")
    assert heavy == "", f"DAG parsing imported heavy modules: {heavy}"
    assert float(seconds) < 5
