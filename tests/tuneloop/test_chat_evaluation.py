"""The chat task's judging: the text gate run on a real run folder's prediction files, the record it writes,
and the post-deploy verdict rules."""

from __future__ import annotations

import json

import pytest

from tuneloop import storage
from tuneloop.config import TuneloopConfig
from tuneloop.pipeline import PipelineRun
from tuneloop.tasks import chat_evaluation, task_for


def _run(tmp_path, **validation: object) -> PipelineRun:
    config = TuneloopConfig.model_validate({"home": str(tmp_path / "home"), "task": "chat",
                                            "validation": {"min_eval_size": 5, **validation}})
    return PipelineRun(config, "manual__chat")


def _predictions(run: PipelineRun, tag: str, replies: list[str], references: list[str]) -> None:
    path = run.paths.predictions(tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": f"e{i}", "reference": ref, "hypothesis": reply, "latency_ms": 12.0,
                                        "generated_tokens": 7, "domain": "returns"}) + "\n"
                            for i, (reply, ref) in enumerate(zip(replies, references))))


REFS = [f"Returns are free for {d} days." for d in range(30, 42)]


def test_validate_passes_a_candidate_that_fixes_many_and_breaks_none(tmp_path):
    run = _run(tmp_path)
    storage.write_json(run.paths.base_source, {"source": "production", "version": "1"})
    _predictions(run, "production", ["I cannot help with that."] * 12, REFS)
    _predictions(run, "candidate", [*REFS[:10], "no", "no"], REFS)

    result = task_for("chat").validate(run)

    assert result["passed"] and result["verdict"] == "pass" and not result["requires_approval"]
    assert (result["metric"], result["n"], result["newly_fixed"], result["newly_broken"]) == ("exact_match", 12, 10, 0)
    assert result["significance_test"] == "mcnemar" and result["p_value"] == pytest.approx(0.5 ** 10)
    assert json.loads(run.paths.gate.read_text()) == result
    churn = [json.loads(line) for line in run.paths.churn.read_text().splitlines()]
    assert [row["id"] for row in churn] == [f"e{i}" for i in range(10)] and churn[0]["kind"] == "fixed"
    flat = chat_evaluation.flat_metrics(result)
    assert flat["candidate_exact_match"] == pytest.approx(10 / 12) and flat["newly_fixed"] == 10
    assert "exact_match 0.000 → 0.833" in chat_evaluation.headline(result)
    assert any("## Metrics" in line for line in chat_evaluation.record_sections({"gate": result}))


def test_validate_rejects_a_candidate_that_breaks_what_production_got_right(tmp_path):
    run = _run(tmp_path)
    storage.write_json(run.paths.base_source, {"source": "production", "version": "1"})
    _predictions(run, "production", REFS, REFS)
    _predictions(run, "candidate", ["Returns cost money."] * 12, REFS)

    result = task_for("chat").validate(run)

    assert not result["passed"] and result["verdict"] == "fail" and result["newly_broken"] == 12


def test_a_first_run_that_passes_waits_for_a_person(tmp_path):
    run = _run(tmp_path)
    storage.write_json(run.paths.base_source, {"source": "base_model", "version": None})
    _predictions(run, "production", ["?"] * 12, REFS)
    _predictions(run, "candidate", REFS, REFS)

    result = task_for("chat").validate(run)

    assert result["passed"] and result["requires_approval"] and result["first_run"]


def test_a_graded_primary_metric_is_judged_by_the_paired_bootstrap(tmp_path):
    run = _run(tmp_path, text={"primary_metric": "token_f1", "right_threshold": 0.9})
    storage.write_json(run.paths.base_source, {"source": "production", "version": "1"})
    _predictions(run, "production", ["Returns are not free."] * 12, REFS)
    _predictions(run, "candidate", REFS, REFS)

    result = task_for("chat").validate(run)

    assert result["significance_test"] == "bootstrap" and result["passed"]
    assert result["bootstrap"]["ci_low"] > 0


def _suite_run(tmp_path, suites: list[dict[str, object]]) -> PipelineRun:
    """A chat run with these suites configured, whose candidate and production replied to each suite (production
    is the version the candidate started from)."""
    config = TuneloopConfig.model_validate({"home": str(tmp_path / "home"), "task": "chat",
                                            "regression": {"suites": suites}})
    run = PipelineRun(config, "manual__suites")
    storage.write_json(run.paths.base_source, {"source": "production", "version": "6"})
    return run


def _suite_predictions(run: PipelineRun, suite: str, tag: str, right: int, n: int = 20) -> None:
    path = run.paths.predictions(tag, suite)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": f"s{i}", "reference": REFS[i % 12],
                                        "hypothesis": REFS[i % 12] if i < right else "I cannot say."}) + "\n"
                            for i in range(n)))


def test_chat_suites_are_judged_against_recorded_and_production_baselines(tmp_path):
    """Two suites: one against production's score in this run (unchanged: passes), one against a recorded
    baseline it falls too far below (fails and blocks); both reach MLflow's metrics and the decision record."""
    run = _suite_run(tmp_path, [{"name": "policies", "data_path": str(tmp_path / "p.jsonl")},
                                {"name": "critical-facts", "type": "critical", "data_path": str(tmp_path / "c.jsonl"),
                                 "baseline_score": 0.95, "baseline_version": "3", "max_score_drop": 0.02}])
    for tag in ("candidate", "production"):
        _suite_predictions(run, "policies", tag, 18)
        _suite_predictions(run, "critical-facts", tag, 18)

    report = task_for("chat").regression(run)

    by_name = {r["name"]: r for r in report["results"]}
    critical, policies = by_name["critical-facts"], by_name["policies"]
    assert policies["passed"] and policies["baseline_source"] == "production (this run)"
    assert (policies["baseline_version"], policies["score"], policies["metric"]) == ("6", 0.9, "exact_match")
    assert not critical["passed"] and critical["blocking"] and critical["baseline_source"] == "recorded"
    assert critical["score_drop"] == pytest.approx(0.05) and critical["production_score"] == pytest.approx(0.9)
    assert not report["passed"] and report["reasons"][0].startswith("suite critical-facts failed:")
    assert task_for("chat").suite_metrics(report) == pytest.approx({
        "suite.critical-facts.exact_match": 0.9, "suite.critical-facts.score_drop": 0.05,
        "suite.critical-facts.failed_samples_rate": 0.0, "suite.policies.exact_match": 0.9,
        "suite.policies.score_drop": 0.0, "suite.policies.failed_samples_rate": 0.0})
    section = "\n".join(chat_evaluation.record_sections({"regression": report}))
    assert "## Regression suites" in section and "| critical-facts | critical | 20 | exact_match | 0.95 | 0.9 |" in section


def test_a_candidate_that_breaks_suite_answers_production_got_right_fails(tmp_path):
    run = _suite_run(tmp_path, [{"name": "policies", "data_path": str(tmp_path / "p.jsonl"),
                                 "max_score_drop": 0.5}])
    _suite_predictions(run, "policies", "production", 20)
    _suite_predictions(run, "policies", "candidate", 17)  # 3 of 20 broken: 15% > max_failed_samples_rate 5%

    result = task_for("chat").regression(run)["results"][0]

    assert not result["passed"] and list(result["failed_sample_ids"]) == ["s17", "s18", "s19"]
    assert "3 sample(s) production got right (exact_match >= 1) got wrong (15.0%" in result["reasons"][1]


def test_a_first_chat_run_records_the_candidate_and_a_registered_wer_suite_is_refused(tmp_path):
    run = _suite_run(tmp_path, [{"name": "policies", "data_path": str(tmp_path / "p.jsonl")}])
    storage.write_json(run.paths.base_source, {"source": "base_model", "version": None})
    _suite_predictions(run, "policies", "candidate", 10)
    _suite_predictions(run, "policies", "production", 20)  # the base model's: not a baseline

    result = task_for("chat").regression(run)["results"][0]

    assert result["passed"] and result["baseline_source"] == "none" and result["production_score"] is None
    run.store.register_suite({"name": "legacy", "data_path": str(tmp_path / "l.jsonl"), "baseline_wer": 0.1})
    with pytest.raises(ValueError, match="regression suite 'legacy' of chat model 'default': baseline_wer: suite "
                                         "'legacy' belongs to a chat model.*use baseline_score"):
        task_for("chat").regression(run)


@pytest.mark.parametrize(("served", "validated", "passed", "why"), [
    (0.9, 0.9, True, None),
    (0.4, 0.4, False, "served error rate (1 - exact_match) 0.600 > rollback_on_error_threshold 0.5"),
    (0.8, 0.9, False, "trails the validated candidate's by more than 0.05"),
])
def test_post_deploy_verdict(served, validated, passed, why):
    result = chat_evaluation._judge(TuneloopConfig(task="chat"), served, validated, 10, 0)
    assert result["passed"] is passed
    assert why is None or any(why in reason for reason in result["reasons"])


def test_an_absolute_first_run_policy_is_refused_for_chat():
    with pytest.raises(ValueError, match="first_run_policy: 'absolute' judges a speech model alone"):
        TuneloopConfig.model_validate({"task": "chat", "validation": {"first_run_policy": "absolute"}})


def test_the_pairwise_judge_adds_its_sign_test_and_can_block(tmp_path, monkeypatch):
    """With validation.text.judge on, each eval pair goes to the OpenAI-compatible endpoint twice (positions
    swapped); a judge that sees no difference (always answers "A": position bias) blocks a candidate the metric
    alone would pass; one that prefers the reference-like reply lets it through."""
    from tests.standins.openai_api import OpenAIStandIn, prefers_the_reference

    with OpenAIStandIn() as api:
        monkeypatch.setenv("OPENAI_BASE_URL", api.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        run = _run(tmp_path, text={"judge": {"enabled": True, "model": "judge-1", "conn_id": "no_such_conn"}})
        storage.write_json(run.paths.base_source, {"source": "production", "version": "1"})
        dataset = tmp_path / "dataset"
        dataset.mkdir()
        (dataset / "eval.jsonl").write_text("".join(json.dumps({"id": f"e{i}", "messages": [
            {"role": "user", "content": f"How long can I return order {i}?"},
            {"role": "assistant", "content": ref}]}) + "\n" for i, ref in enumerate(REFS)))
        storage.write_json(run.paths.spec, {"dataset_uri": str(dataset)})
        _predictions(run, "production", ["I cannot help with that."] * 12, REFS)
        _predictions(run, "candidate", REFS, REFS)

        api.reply = lambda body: "[[A]]"
        biased = task_for("chat").validate(run)
        assert not biased["passed"] and biased["judge"]["inconsistent"] == 12
        assert any("validation.text.judge.gating" in reason for reason in biased["reasons"])
        assert len(api.requests) == 24 and {r["model"] for r in api.requests} == {"judge-1"}

        api.reply = prefers_the_reference
        fair = task_for("chat").validate(run)
        assert fair["passed"] and fair["judge"]["wins"] == 12 and fair["judge"]["losses"] == 0


def test_a_slice_that_got_worse_blocks_a_better_average(tmp_path):
    """domain=billing (6 examples) gets every answer wrong while returns improves: the average rises, the
    billing slice falls beyond max_score_drop 0, so the gate fails naming it."""
    run = _run(tmp_path, slices=[{"field": "domain", "min_n": 5}])
    storage.write_json(run.paths.base_source, {"source": "production", "version": "1"})
    refs = REFS + [f"Invoices are sent on day {d}." for d in range(6)]
    domains = ["returns"] * 12 + ["billing"] * 6
    for tag, replies in (("production", ["?"] * 12 + refs[12:]), ("candidate", REFS + ["?"] * 6)):
        path = run.paths.predictions(tag)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"id": f"e{i}", "reference": ref, "hypothesis": reply, "domain": d})
                                + "\n" for i, (reply, ref, d) in enumerate(zip(replies, refs, domains))))

    result = task_for("chat").validate(run)

    assert not result["passed"]
    assert any(r.startswith("slice domain=billing got worse: exact_match 1.000 → 0.000") for r in result["reasons"])
    assert {s["value"]: s["passed"] for s in result["slices"]} == {"returns": True, "billing": False}


def test_each_models_own_tokens_and_latency_are_reported(tmp_path):
    """The pairing shares the rows' slice fields; generated tokens and latency must still be each model's own."""
    run = _run(tmp_path)
    storage.write_json(run.paths.base_source, {"source": "production", "version": "1"})
    for tag, tokens, latency in (("production", 3, 10.0), ("candidate", 9, 30.0)):
        path = run.paths.predictions(tag)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"id": f"e{i}", "reference": ref, "hypothesis": ref, "latency_ms": latency,
                                            "generated_tokens": tokens}) + "\n" for i, ref in enumerate(REFS)))

    result = task_for("chat").validate(run)

    assert result["secondary"]["generated_tokens"] == {"baseline": 3, "candidate": 9}
    assert result["secondary"]["latency_s"] == {"baseline": 0.01, "candidate": 0.03}
    flat = chat_evaluation.flat_metrics(result)
    assert (flat["baseline_generated_tokens"], flat["candidate_generated_tokens"]) == (3, 9)
    section = "\n".join(chat_evaluation.record_sections({"gate": result}))
    assert "| generated_tokens | 3 | 9 |" in section
