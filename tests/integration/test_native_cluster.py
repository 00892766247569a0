"""The native cluster end to end: Postgres, Redis, Celery workers, MLflow server, a real REST client.

A client starts ``finetune_on_errors`` through Airflow's REST API; its sensor defers to the triggerer until the
error cases arrive; the ``finetune_weekly`` run it starts runs on the Celery workers; the worker training dies
(SIGKILL of its whole process tree) right after the trainer's first checkpoint, and Airflow's retry on the other
worker resumes from it; the candidate goes out as a canary in the MLflow server's registry, its online test waits
in the triggerer, and a person ends it early from Airflow's Required actions ("Promote now", through the REST
API the UI uses), which resumes the deferred task at once and promotes the canary; nothing duplicated, all state in
the cluster's Postgres databases. One cluster and one run for all of it: each costs minutes.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.scenario import write_cases
from tests.integration.conftest import CLUSTER_ENV
from tests.integration.native_cluster import NativeCluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "speech-to-text"


def _bootstrap(cluster: NativeCluster, model_dir: Path) -> None:
    cluster.tuneloop("bootstrap", str(model_dir), "--reason", "integration baseline")


def _mlflow(cluster: NativeCluster):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=cluster.mlflow_url, registry_uri=cluster.mlflow_url)


def _store(cluster: NativeCluster):
    from tuneloop.store import ErrorCaseStore

    return ErrorCaseStore(cluster.description["client_env"]["TUNELOOP__STORE_URL"])


def _assert_no_local_state(cluster: NativeCluster) -> None:
    """Nothing fell back to the zero-config SQLite files: every store is a server."""
    local = [p for p in (cluster.tuneloop_home / "store.db", cluster.tuneloop_home / "mlflow.db",
                         Path(cluster.description["airflow_home"]) / "airflow.db") if p.exists()]
    assert not local, f"SQLite files created: {local}"


def test_on_errors_run_survives_a_killed_worker_and_deploys(start_cluster, damaged_model, speech, tmp_path):
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    # Longer training (120 steps, ~0.1-0.3 s each here) with a checkpoint every 2 steps: the worker dies right
    # after the first one, long before the end. A dead worker's task is failed (and retried, 5 s later) after 30 s
    # without a heartbeat.
    env = {**CLUSTER_ENV, "TUNELOOP__TRAINING__EPOCHS": "24", "TUNELOOP__TRAINING__CHECKPOINT_EVERY_STEPS": "2",
           "TUNELOOP__DEPLOYMENT__DEPLOYMENT_STRATEGY": "canary"}
    cluster = start_cluster(env, heartbeat_timeout=30)
    timings["cluster start"] = time.monotonic() - t0
    _bootstrap(cluster, damaged_model)
    lines = write_cases(tmp_path / "cases.jsonl", speech).read_text().splitlines(keepends=True)
    inbox = cluster.tuneloop_home / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / "batch-001.jsonl").write_text("".join(lines[:10]))  # too few to trigger (20 needed)
    later = tmp_path / "later.jsonl"
    later.write_text("".join(lines[10:]))

    api = cluster.api()
    for dag_id in ("finetune_on_errors", "finetune_weekly"):
        api.unpause(dag_id)
    t1 = time.monotonic()
    on_errors = api.trigger("finetune_on_errors")

    # ingest_inbox stores the 10 inbox cases; the conditions are unmet, so the sensor defers to the triggerer
    wait_for(lambda: api.task_states("finetune_on_errors", on_errors).get("wait_for_trigger_conditions")
             == "deferred", 240, "the sensor to defer", lambda: str(api.task_states("finetune_on_errors", on_errors)))
    assert api.task_states("finetune_on_errors", on_errors)["ingest_inbox"] == "success"
    assert (inbox / "processed" / "batch-001.jsonl").exists()
    cluster.tuneloop("ingest", str(later))  # the rest arrives: the trigger fires in the triggerer
    run = api.wait_run("finetune_on_errors", on_errors, timeout=240)
    assert run["state"] == "success", api.task_states("finetune_on_errors", on_errors)
    weekly_runs = api.dag_runs("finetune_weekly")
    assert [r["dag_run_id"] for r in weekly_runs] == [f"on_errors__{on_errors}"], weekly_runs
    run_id = weekly_runs[0]["dag_run_id"]

    # the worker running the training dies right after the trainer's first checkpoint
    runs_root = cluster.tuneloop_home / "storage" / "runs"

    def checkpointed() -> dict | None:
        tis = api.task_instances("finetune_weekly", run_id)
        if any(ti["state"] in ("failed", "upstream_failed") for ti in tis.values()):
            raise AssertionError(f"run failed before training: { {t: ti['state'] for t, ti in tis.items()} }")
        train = tis.get("train.local")
        if train is None or train["state"] != "running":
            return None
        return train if list(runs_root.glob("*/training/checkpoints/step-*/state.json")) else None

    train = wait_for(checkpointed, 400, "train to write its first checkpoint", interval=0.5)
    steps = sorted(p.parent.name for p in runs_root.glob("*/training/checkpoints/step-*/state.json"))
    victim = cluster.worker_hostnames[train["hostname"]]
    cluster.script("kill-worker", victim)
    timings["trigger to kill"] = time.monotonic() - t1
    print(f"killed worker{victim} ({train['hostname']}) running train.local, checkpoints on disk: {steps}")

    # the canary's online test waits in the triggerer (no traffic here: it would wait for days); a person ends it
    def online_test_waits() -> bool:
        states = api.task_states("finetune_weekly", run_id)
        if any(state in ("failed", "upstream_failed") for state in states.values()):
            raise AssertionError(f"run failed before its online test: {states}")
        return states.get("online_test") == "deferred"

    wait_for(online_test_waits, 600, "online_test to defer", lambda: str(api.task_states("finetune_weekly", run_id)))
    timings["kill to canary"] = time.monotonic() - t1 - timings["trigger to kill"]
    assert _store(cluster).deployment_history(MODEL)[0].action == "canary_start"
    [asked] = [d for d in api.get(f"/dags/finetune_weekly/dagRuns/{run_id}/hitlDetails")["hitl_details"]
               if d["task_instance"]["task_id"] == "online_test"]
    assert asked["options"] == ["Promote now", "Roll back now"] and "online test early" in asked["subject"]
    answered = api.respond("finetune_weekly", run_id, "online_test", "Promote now",
                           {"reason": "integration: the release needs it"})
    person = answered["responded_by"]["name"]

    weekly = api.wait_run("finetune_weekly", run_id, timeout=300)
    timings["answer to deployed"] = time.monotonic() - t1 - timings["trigger to kill"] - timings["kill to canary"]
    tis = api.task_instances("finetune_weekly", run_id)
    assert weekly["state"] == "success", {task: ti["state"] for task, ti in tis.items()}
    assert tis["deploy"]["state"] == "success" and tis["reject"]["state"] == "skipped"
    assert [t["state"] for t in api.tries("finetune_weekly", run_id, "online_test")] == ["success"]  # resumed
    decision = api.xcom("finetune_weekly", run_id, "online_test")
    assert (decision["action"], decision["decided_by"]) == ("promote", person), decision
    assert decision["reason"].startswith(f"ended early by {person}: promoted by hand (integration: the release")

    # the first attempt died with the worker; Airflow retried it on the surviving worker, which resumed
    tries = sorted(api.tries("finetune_weekly", run_id, "train.local"), key=lambda t: t["try_number"])
    assert [(t["try_number"], t["state"]) for t in tries] == [(1, "failed"), (2, "success")], tries
    assert tries[0]["hostname"] == train["hostname"]
    assert tries[1]["hostname"] in cluster.worker_hostnames and tries[1]["hostname"] != train["hostname"]
    log = api.log("finetune_weekly", run_id, "train.local", 2)
    assert "resuming from checkpoint step" in log, log[-3000:]
    metrics = api.xcom("finetune_weekly", run_id, "train.result")["metrics"]
    assert metrics["resumed_from_step"] and metrics["resumed_from_step"] >= 2, metrics
    assert metrics["resumed_from_step"] < metrics["steps"] == 120, metrics

    # every task ran on one of the Celery workers (their task-instance hostnames), none elsewhere
    workers = cluster.worker_hostnames
    ran = {task: ti["hostname"] for dag_id, rid in (("finetune_on_errors", on_errors), ("finetune_weekly", run_id))
           for task, ti in api.task_instances(dag_id, rid).items() if ti["state"] == "success"}
    assert ran and set(ran.values()) <= set(workers), ran
    print(f"tasks per worker: { {h: sorted(t for t, w in ran.items() if w == h) for h in workers} }")

    # deployed, nothing duplicated: the MLflow server's registry moved production to the one candidate
    client = _mlflow(cluster)
    assert client.get_model_version_by_alias(MODEL, "production").version == "2"
    assert client.get_model_version_by_alias(MODEL, "previous").version == "1"
    assert sorted(v.version for v in client.search_model_versions(f"name = '{MODEL}'")) == ["1", "2"]
    assert api.xcom("finetune_weekly", run_id, "register")["version"] == "2"
    history = _store(cluster).deployment_history(MODEL)
    assert [(e.action, e.from_version, e.to_version) for e in history] == [
        ("deploy", "1", "2"), ("canary_start", "1", "1"), ("bootstrap", None, "1")]
    assert (history[0].run_id, history[0].actor, history[0].details["canary_end"]) == (run_id, person, "promoted")
    experiment = client.get_experiment_by_name("tuneloop")
    mlflow_runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.airflow_run_id = '{run_id}'")
    assert len(mlflow_runs) == 1, [r.info.run_id for r in mlflow_runs]

    # all state in Postgres: Airflow's metadata and Celery's results, the store, MLflow's tracking and registry
    assert cluster.query("airflow", "SELECT dag_id, state FROM dag_run ORDER BY dag_id") == [
        ("finetune_on_errors", "success"), ("finetune_weekly", "success")]
    hosts = cluster.query("airflow", "SELECT DISTINCT hostname FROM task_instance WHERE state = 'success'")
    assert {h for (h,) in hosts} <= set(workers)
    assert cluster.query("airflow", "SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")[0][0] >= len(ran)
    assert cluster.query("store", "SELECT count(*) FROM tuneloop_error_cases")[0][0] == len(lines)
    assert cluster.query("store", "SELECT status FROM tuneloop_training_runs WHERE run_id = :r", r=run_id) == [
        ("deployed",)]
    assert cluster.query("mlflow", "SELECT alias, version FROM registered_model_aliases WHERE alias = 'production'"
                         ) == [("production", 2)]
    _assert_no_local_state(cluster)

    # the lost worker comes back, and the cluster is whole again
    cluster.script("start-worker", victim)
    assert cluster.script("status", check=False).returncode == 0
    timings["total"] = time.monotonic() - t0
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
