"""The status data (tuneloop.overview) against a straightforward reading of the same history: versions and their
roles, the trend, comparisons in both directions, the training's progress, the trigger's conditions, the tasks'
scoreboards, and URIs shown without their credentials."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.tuneloop.page_history import write_history
from tuneloop.config import load_config
from tuneloop.overview import MetricPoint, collect_status, compare_versions, redact_uri, training_progress

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


@pytest.fixture
def history(store, tmp_path):
    config = load_config(env={"TUNELOOP_HOME": str(tmp_path)})
    written = write_history(store, runs=30, versions=9, seed=3, model_name=config.mlflow.model_name)
    return config, store, written


def test_versions_trend_and_decisions_read_what_the_runs_recorded(history):
    config, store, written = history
    status = collect_status(config, store=store, now=NOW)
    judged = {run.candidate_version: run for run in store.runs_with_candidates(limit=1000)}
    assert len(judged) == 8  # versions 2..9
    roles = {v["role"]: v for v in status["model"]["versions"]}
    assert roles["production"]["version"] == written["production"] == status["model"]["production_version"]
    assert roles["production"]["moved"]["action"] in ("deploy", "rollback")  # its own move, not a later reject
    assert roles["production"]["moved"]["to_version"] == written["production"]
    for role in roles.values():  # each version's numbers are its own run's, as a candidate
        run = judged.get(role["version"])
        if run is not None:
            wer = next(m for m in run.summary["scoreboard"]["metrics"] if m["name"] == "wer")
            assert role["metrics"]["wer"] == wer["candidate"] and role["status"] == run.status
    origin, *points = status["trend"]["points"]
    first = judged[min(judged, key=int)]
    assert (origin["version"], origin["status"]) == (first.summary["production_before"], "baseline")
    assert origin["candidate"]["wer"] == next(m for m in first.summary["scoreboard"]["metrics"]
                                              if m["name"] == "wer")["baseline"]  # v1 as the first run measured it
    assert [p["version"] for p in points] == sorted(judged, key=int)  # v10 after v9, not after v1
    assert [p["status"] for p in points] == [judged[v].status for v in sorted(judged, key=int)]
    rolled_back = {e.from_version for e in store.deployment_history(config.mlflow.model_name) if e.action == "rollback"}
    assert {p["version"] for p in points if p["rolled_back_by_hand"]} == rolled_back & set(judged)
    decided = [r for r in store.training_runs(limit=1000) if r.status != "skipped"]
    decided.sort(key=lambda r: (r.finished_at, r.run_id), reverse=True)
    assert [d["run_id"] for d in status["decisions"]] == [r.run_id for r in decided[:10]]


def test_a_comparison_reads_the_run_that_judged_the_two_in_either_direction(history):
    config, store, _ = history
    run = next(r for r in store.runs_with_candidates(limit=1000) if r.summary.get("production_before"))
    before, after = str(run.summary["production_before"]), run.candidate_version
    board = run.summary["scoreboard"]
    forward, backward = compare_versions(config, store, before, after), compare_versions(config, store, after, before)
    assert forward["direct"] and backward["direct"] and forward["run_id"] == backward["run_id"] == run.run_id
    wer = next(m for m in board["metrics"] if m["name"] == "wer")
    assert (forward["metrics"][0]["a"], forward["metrics"][0]["b"]) == (wer["baseline"], wer["candidate"])
    assert (backward["metrics"][0]["a"], backward["metrics"][0]["b"]) == (wer["candidate"], wer["baseline"])
    assert forward["churn"] == backward["churn"] == {"from": before, "to": after, "counts": board["churn"]}
    assert [s["name"] for s in forward["slices"]] == [s["name"] for s in board["slices"]]


def test_versions_no_run_compared_are_shown_from_their_own_runs_with_a_warning(history):
    config, store, _ = history
    runs = {r.candidate_version: r for r in store.runs_with_candidates(limit=1000)}
    pairs = {(str(r.summary["production_before"]), r.candidate_version) for r in runs.values()}
    a, b = next((x, y) for x in sorted(runs, key=int) for y in sorted(runs, key=int)
                if x != y and (x, y) not in pairs and (y, x) not in pairs)
    compared = compare_versions(config, store, a, b)
    assert not compared["direct"] and compared["churn"] is None and "not measured on the same examples" in compared["note"]
    own = {v: next(m for m in runs[v].summary["scoreboard"]["metrics"] if m["name"] == "wer")["candidate"]
           for v in (a, b)}
    wer = next(m for m in compared["metrics"] if m["name"] == "wer")
    assert (wer["a"], wer["b"]) == (own[a], own[b])
    unknown = compare_versions(config, store, "900", "901")
    assert unknown["known"] == [] and unknown["metrics"] == []


def test_training_progress_is_step_over_total_with_an_eta_from_the_logged_rate() -> None:
    start = NOW.timestamp()
    points = [MetricPoint(10, start), MetricPoint(20, start + 5), MetricPoint(30, start + 10)]
    progress = training_progress(120, points, now=NOW + timedelta(seconds=12))
    assert (progress["step"], progress["total"], progress["fraction"]) == (30, 120, 0.25)
    assert progress["seconds_per_step"] == 0.5 and progress["eta_seconds"] == 45.0 - 2.0  # 2 s already spent
    assert progress["seconds_since_logged"] == pytest.approx(2.0)
    assert training_progress(120, points[:1], now=NOW)["eta_seconds"] is None  # one point: no rate yet
    assert training_progress(None, points, now=NOW) is None and training_progress(120, [], now=NOW) is None
    assert training_progress(20, points, now=NOW)["fraction"] == 1.0  # a resumed run that logged past its total


def test_a_failing_lookup_blanks_its_section_not_the_status(store, tmp_path) -> None:
    from tuneloop.overview import Lookups

    config = load_config(env={"TUNELOOP_HOME": str(tmp_path)})
    store.start_training_run("manual__now", at=NOW)

    def broken(*args):
        raise ConnectionError("MLflow is down")

    status = collect_status(config, store=store, now=NOW, lookups=Lookups(steps=broken, next_run=broken,
                                                                         training=broken))
    [running] = status["in_progress"]
    assert running["steps"] == running["progress"] == {"error": "ConnectionError: MLflow is down"}
    assert status["trigger"]["next_scheduled_run"] == {"error": "ConnectionError: MLflow is down"}


@given(user=st.text(st.characters(blacklist_characters="@/:?#[]", blacklist_categories=("Cs",)), min_size=1),
       secret=st.text(st.characters(blacklist_characters="@/?#[]", blacklist_categories=("Cs",)), min_size=4),
       query=st.booleans())
def test_a_uri_is_shown_without_its_credentials(user: str, secret: str, query: bool) -> None:
    from urllib.parse import quote

    uri = f"postgresql://{quote(user, safe='')}:{quote(secret, safe='')}@db.internal:5432/mlflow"
    uri += f"?token={quote(secret, safe='')}" if query else ""
    assert redact_uri(uri) == "postgresql://***@db.internal:5432/mlflow" + ("?***" if query else "")
    assert redact_uri("sqlite:////var/tuneloop/mlflow.db") == "sqlite:////var/tuneloop/mlflow.db"


def test_each_trigger_condition_is_its_value_against_its_threshold() -> None:
    from tuneloop.config import FinetuningConfig
    from tuneloop.triggering import TriggerMetrics, check_trigger

    config = FinetuningConfig(min_error_cases=100, min_corrected_cases=50, error_rate_threshold=0.15,
                              min_inferences_for_rate=100, cooldown_hours=24)
    metrics = TriggerMetrics(new_cases=120, new_corrected_cases=40, window_errors=30, window_inferences=100,
                             window_start=NOW - timedelta(days=7), window_end=NOW,
                             last_training_finished_at=NOW - timedelta(hours=30))
    conditions = {c.name: c for c in check_trigger(metrics, config, now=NOW).conditions}
    assert (conditions["new error cases"].value, conditions["new error cases"].met) == (120, True)
    assert (conditions["new corrected cases"].value, conditions["new corrected cases"].met) == (40, False)
    assert (conditions["error rate"].value, conditions["error rate"].threshold, conditions["error rate"].met) == (
        0.3, 0.15, True)
    assert (conditions["hours since the last run"].value, conditions["hours since the last run"].met) == (30.0, True)


def test_a_chat_gates_scoreboard_has_its_primary_score_higher_is_better() -> None:
    from tuneloop.tasks import task_for
    from tuneloop.text_gate import TextGateConfig, TextPair, text_gate
    from tuneloop.text_metrics import TextScores

    def scores(right: bool) -> TextScores:
        return TextScores(exact_match=float(right), contains=1.0, token_f1=1.0 if right else 0.5,
                          generated_tokens=10, latency_s=0.2)

    result = text_gate([TextPair(f"q{i}", scores(i < 20), scores(i < 30)) for i in range(40)],
                       TextGateConfig(bootstrap_resamples=200)).to_dict()
    board = task_for("chat").scoreboard(result)
    primary = board["metrics"][0]
    assert (board["primary"], primary["name"], primary["lower_is_better"]) == ("exact_match", "exact_match", False)
    assert (primary["baseline"], primary["candidate"]) == (0.5, 0.75) and primary["p_value"] is not None
    latency = next(m for m in board["metrics"] if m["name"] == "latency_s")
    assert latency["lower_is_better"] and board["churn"]["fixed"] == 10 and board["churn"]["newly_broken"] == 0


def test_the_candidate_is_the_newest_runs_version_unless_it_was_placed(store, tmp_path):
    from tuneloop.history import DeploymentEvent

    config = load_config(env={"TUNELOOP_HOME": str(tmp_path)})
    name = config.mlflow.model_name
    store.record_deployment(DeploymentEvent("bootstrap", name, None, "1", "first", at=NOW - timedelta(days=9)))
    board = {"n": 5, "verdict": "pass", "primary": "wer", "slices": [], "churn": {}, "reasons": [],
             "metrics": [{"name": "wer", "baseline": 0.4, "candidate": 0.3, "lower_is_better": True}]}
    for version, status, hours in (("2", "deployed", 48), ("3", "rejected", 24)):
        store.start_training_run(f"run-{version}", at=NOW - timedelta(hours=hours))
        store.finish_training_run(f"run-{version}", status, candidate_version=version, at=NOW - timedelta(
            hours=hours - 1), summary={"lines": [], "scoreboard": board, "production_before": str(int(version) - 1)})
    store.record_deployment(DeploymentEvent("deploy", name, "1", "2", "gate passed", run_id="run-2",
                                            at=NOW - timedelta(hours=47), details={"previous": "1"}))
    store.record_deployment(DeploymentEvent("reject", name, "2", "2", "v3 worse on WER", run_id="run-3",
                                            at=NOW - timedelta(hours=23), details={"version": "3"}))
    roles = {v["role"]: v for v in collect_status(config, store=store, now=NOW)["model"]["versions"]}
    assert (roles["candidate"]["version"], roles["candidate"]["status"]) == ("3", "rejected")
    assert roles["candidate"]["moved"]["reason"] == "v3 worse on WER"
    assert roles["production"]["moved"]["reason"] == "gate passed"  # not the reject, whose from/to is production
    assert (roles["production"]["metrics"], roles["production"]["measured_as"]) == ({"wer": 0.3}, "candidate")
    # v1 was bootstrapped, judged by no run: its numbers are what run-2 measured of it as production
    assert (roles["previous"]["metrics"], roles["previous"]["measured_as"]) == ({"wer": 0.4}, "production")
    store.start_training_run("run-4", at=NOW - timedelta(hours=2))
    store.finish_training_run("run-4", "deployed", candidate_version="4", summary={"lines": []}, at=NOW)
    store.record_deployment(DeploymentEvent("deploy", name, "2", "4", "better", run_id="run-4", at=NOW,
                                            details={"previous": "2"}))
    roles = {v["role"]: v for v in collect_status(config, store=store, now=NOW)["model"]["versions"]}
    assert "candidate" not in roles and roles["production"]["version"] == "4"  # v3 is settled: no candidate


def test_only_a_rollback_made_after_its_run_marks_a_version_rolled_back_by_hand(store, tmp_path):
    from tuneloop.history import DeploymentEvent

    config = load_config(env={"TUNELOOP_HOME": str(tmp_path)})
    name = config.mlflow.model_name
    board = {"n": 5, "verdict": "pass", "primary": "wer", "slices": [], "churn": {}, "reasons": [],
             "metrics": [{"name": "wer", "baseline": 0.3, "candidate": 0.2, "lower_is_better": True}]}
    for version, status in (("2", "rolled_back"), ("3", "deployed")):
        store.start_training_run(f"run-{version}", at=NOW - timedelta(hours=10 - int(version)))
        store.finish_training_run(f"run-{version}", status, candidate_version=version,
                                  summary={"scoreboard": board, "production_before": str(int(version) - 1)})
    # v2: its own post-deploy check sent it back; v3: a person, later
    store.record_deployment(DeploymentEvent("rollback", name, "2", "1", "post-deploy check failed", run_id="run-2"))
    store.record_deployment(DeploymentEvent("rollback", name, "3", "1", "users complain", actor="ui:ops"))
    points = collect_status(config, store=store, now=NOW)["trend"]["points"]
    assert [(p["version"], p["rolled_back_by_hand"]) for p in points] == [("1", False), ("2", False), ("3", True)]


def test_a_retried_training_counts_from_its_own_steps_and_a_silent_one_runs_out_of_eta() -> None:
    t0 = NOW.timestamp()
    first = [MetricPoint(10, t0), MetricPoint(20, t0 + 10), MetricPoint(30, t0 + 20)]
    resumed = [MetricPoint(30, t0 + 100), MetricPoint(40, t0 + 104), MetricPoint(50, t0 + 108)]  # from step 20's checkpoint
    progress = training_progress(100, first + resumed, now=datetime.fromtimestamp(t0 + 110, timezone.utc))
    assert progress["step"] == 50 and progress["seconds_per_step"] == 0.4  # this attempt's rate, not across the gap
    assert progress["eta_seconds"] == pytest.approx(50 * 0.4 - 2)  # from now: 2 s since the last point
    silent = training_progress(100, first, now=datetime.fromtimestamp(t0 + 1000, timezone.utc))
    assert silent["eta_seconds"] == 0.0 and silent["seconds_since_logged"] == pytest.approx(980)
