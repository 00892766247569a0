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
    candidate = max(judged, key=int)
    if candidate not in {written["production"], status["model"]["previous_version"]}:
        assert roles["candidate"]["version"] == candidate
    for role in roles.values():  # each version's numbers are its own run's, as a candidate
        run = judged.get(role["version"])
        if run is not None:
            wer = next(m for m in run.summary["scoreboard"]["metrics"] if m["name"] == "wer")
            assert role["metrics"]["wer"] == wer["candidate"] and role["status"] == run.status
    points = status["trend"]["points"]
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
    assert progress["seconds_per_step"] == 0.5 and progress["eta_seconds"] == 45.0
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
    assert running["steps"] == {"error": "ConnectionError: MLflow is down"} and running["progress"] is None
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
