"""A chat model's regression suites: the verdict rules (as rules: hypothesis draws the scores), the suite file's
refusals, the baseline/cap fields of the other kind of model refused where the task is known, and a chat suite's
result kept with its history in the store (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import timedelta

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from tests.tuneloop import test_store_migrations as migrations
from tuneloop.config import ConfigError, RegressionConfig, SuiteSpec, TuneloopConfig, load_config
from tuneloop.regression import SuiteError, leakage_guard, read_suite, run_suites
from tuneloop.store import ErrorCaseStore
from tuneloop.tasks.chat import prompt_text
from tuneloop.tasks.chat_suites import SCORE_TOLERANCE, SuiteScores, run_chat_suite

CONFIG = RegressionConfig()
PROPERTY = settings(max_examples=200, deadline=None)
new_database, batch = migrations.new_database, migrations.batch  # fixtures: empty databases on both backends


def _spec(**overrides: object) -> SuiteSpec:
    return SuiteSpec(**{"name": "policies", "data_path": "unused.jsonl", **overrides})


def _scores(candidate: list[float], production: list[float] | None = None,
            metric: str = "exact_match") -> SuiteScores:
    return SuiteScores(metric, tuple(f"p{i:03d}" for i in range(len(candidate))), tuple(candidate),
                       None if production is None else tuple(production))


def _right(count: int, n: int) -> list[float]:
    """``count`` right answers (1.0) then wrong ones (0.0), ``n`` in all."""
    return [1.0] * count + [0.0] * (n - count)


# ------------------------------------------------------------------------------------------------ verdicts


def test_no_change_passes_against_production_measured_in_the_run():
    prod = _right(16, 20)
    result = run_chat_suite(_spec(), _scores(prod, prod), CONFIG, right_threshold=1.0, model_version="7",
                            production_version="6")
    assert result.passed and not result.blocking and not result.critical
    assert (result.baseline_source, result.baseline_version, result.metric) == ("production (this run)", "6",
                                                                                "exact_match")
    assert (result.score, result.baseline_score, result.score_drop, result.failed_samples) == (0.8, 0.8, 0.0, 0)
    assert result.reasons[0] == ("suite policies (benchmark, n=20): exact_match 0.800 vs baseline 0.800 "
                                 "(production (this run), version 6), +0.000, within max_score_drop 0.05")


def test_the_recorded_baseline_wins_over_production():
    spec = _spec(baseline_score=0.9, baseline_version="3", max_score_drop=0.02)
    result = run_chat_suite(spec, _scores(_right(17, 20), _right(17, 20)), CONFIG, right_threshold=1.0)
    assert (result.baseline_source, result.baseline_version) == ("recorded", "3")
    assert result.score_drop == pytest.approx(0.05) and result.production_score == pytest.approx(0.85)
    assert not result.passed and result.blocking and "a drop above max_score_drop 0.02" in result.reasons[0]


@pytest.mark.parametrize(("right", "passed"), [(75, True), (74, False)])
def test_a_drop_just_within_max_score_drop_passes_and_just_beyond_fails(right, passed):
    """0.8 - 0.75 is 0.05000000000000004 in floating point: still a drop of 0.05, within the cap."""
    result = run_chat_suite(_spec(baseline_score=0.8, max_score_drop=0.05), _scores(_right(right, 100)), CONFIG,
                            right_threshold=1.0)
    assert result.passed is passed and result.blocking is not passed and not result.critical
    assert ("within max_score_drop 0.05" in result.reasons[0]) is passed


def test_failed_samples_and_critical_suites():
    prod = _right(40, 40)
    cand = [0.0] + [1.0] * 39  # one example production got right is now wrong; the mean falls by 0.025
    benchmark = run_chat_suite(_spec(), _scores(cand, prod), CONFIG, right_threshold=1.0)
    assert benchmark.passed and benchmark.failed_samples == 1 and benchmark.failed_sample_ids == ("p000",)
    assert benchmark.reasons[1] == ("suite policies (benchmark, n=40): 1 sample(s) production got right "
                                    "(exact_match >= 1) got wrong (2.5%: 'p000'), within max_failed_samples_rate 5.0%")
    critical = run_chat_suite(_spec(type="critical"), _scores(cand, prod), CONFIG, right_threshold=1.0)
    assert not critical.passed and critical.blocking and "a critical suite allows none" in critical.reasons[1]
    many = run_chat_suite(_spec(max_score_drop=0.5), _scores([0.0] * 4 + [1.0] * 36, prod), CONFIG,
                          right_threshold=1.0)
    assert not many.passed and many.failed_samples_rate == pytest.approx(0.1)


def test_a_graded_metric_also_fails_samples_whose_score_falls_far():
    """token F1: 0.5 -> 0.2 is wrong both times (right_threshold 0.9) but falls by 0.3 > 0.2; 0.9 -> 0.7 falls by
    0.2 (not more) but was right and is now wrong; 0.6 -> 0.45 is neither."""
    result = run_chat_suite(_spec(max_score_drop=1.0), _scores([0.2, 0.7, 0.45], [0.5, 0.9, 0.6], "token_f1"),
                            CONFIG, right_threshold=0.9)
    assert result.failed_sample_ids == ("p000", "p001")  # the biggest fall first
    assert "or fell by more than 0.2" in result.reasons[1]


def test_a_smoke_suite_is_report_only_unless_critical():
    prod = _right(18, 20)
    mild = run_chat_suite(_spec(type="smoke"), _scores(_right(16, 20), prod), CONFIG, right_threshold=1.0)
    assert not mild.passed and not mild.blocking and not mild.critical  # -0.1: beyond 0.05, not beyond 0.1
    severe = run_chat_suite(_spec(type="smoke"), _scores(_right(14, 20), prod), CONFIG, right_threshold=1.0)
    assert severe.critical and severe.blocking
    assert severe.reasons[-1].endswith("critical degradation, exact_match fell by 0.200 (0.900 -> 0.700, absolute) > "
                                       "critical_degradation_threshold 0.1")
    lenient = RegressionConfig(fail_on_critical_degradation=False)
    assert not run_chat_suite(_spec(type="smoke"), _scores(_right(14, 20), prod), lenient,
                              right_threshold=1.0).blocking


def test_a_first_run_without_production_records_the_candidate():
    result = run_chat_suite(_spec(), _scores(_right(3, 10)), CONFIG, right_threshold=1.0)
    assert result.passed and result.baseline_source == "none" and result.score_drop == 0
    assert result.reasons[0].startswith("no recorded baseline and no production model: the candidate's exact_match")
    assert any("per-sample check skipped" in r for r in result.reasons)


def test_run_suites_combines_chat_results_and_names_the_blocking_one():
    prod = _right(18, 20)
    good = run_chat_suite(_spec(name="a"), _scores(prod, prod), CONFIG, right_threshold=1.0)
    bad = run_chat_suite(_spec(name="b"), _scores(_right(10, 20), prod), CONFIG, right_threshold=1.0)
    report = run_suites([good, bad])
    assert not report.passed and report.reasons[0].startswith("suite b failed:")
    assert report.to_dict()["results"][1]["metric"] == "exact_match"


BINARY = st.sampled_from([0.0, 1.0])
GRADED = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.6, 0.75, 0.8, 0.9, 1.0])


@st.composite
def suites(draw: st.DrawFn, values: st.SearchStrategy[float]) -> tuple[SuiteSpec, list[float], list[float]]:
    n = draw(st.integers(1, 40))
    cand = draw(st.lists(values, min_size=n, max_size=n))
    prod = draw(st.lists(values, min_size=n, max_size=n))
    spec = _spec(type=draw(st.sampled_from(["benchmark", "critical", "smoke"])),
                 max_score_drop=draw(st.sampled_from([0.0, 0.05, 0.1, 0.3])),
                 baseline_score=draw(st.none() | GRADED))
    return spec, cand, prod


def _expected_verdict(spec: SuiteSpec, cand: list[float], prod: list[float], failed: int,
                      config: RegressionConfig) -> tuple[float, bool, bool, bool]:
    """The rules written out once more, straight from the module docstring."""
    baseline = spec.baseline_score if spec.baseline_score is not None else sum(prod) / len(prod)
    drop = baseline - sum(cand) / len(cand)
    allowed = 0.0 if spec.type == "critical" else config.max_failed_samples_rate
    critical = drop > config.critical_degradation_threshold + 1e-9
    passed = drop <= spec.max_score_drop + 1e-9 and failed / len(cand) <= allowed and not critical
    blocking = (critical and config.fail_on_critical_degradation) or (not passed and spec.type != "smoke")
    return drop, critical, passed, blocking


@PROPERTY
@given(suites(BINARY), st.booleans())
def test_right_wrong_verdicts_follow_the_rules(suite, fail_on_critical):
    spec, cand, prod = suite
    config = RegressionConfig(fail_on_critical_degradation=fail_on_critical)
    result = run_chat_suite(spec, _scores(cand, prod), config, right_threshold=1.0)
    broken = {f"p{i:03d}" for i, (c, p) in enumerate(zip(cand, prod)) if p == 1 and c == 0}
    assert set(result.failed_sample_ids) == broken and result.failed_samples == len(broken)
    drop, critical, passed, blocking = _expected_verdict(spec, cand, prod, len(broken), config)
    assert result.score_drop == pytest.approx(drop, abs=1e-9)
    assert (result.critical, result.passed, result.blocking) == (critical, passed, blocking)


@PROPERTY
@given(suites(GRADED), st.sampled_from([0.5, 0.8, 1.0]), st.sampled_from([0.1, 0.2, 0.5]))
def test_graded_verdicts_follow_the_rules(suite, right_threshold, sample_threshold):
    spec, cand, prod = suite
    config = RegressionConfig(sample_degradation_threshold=sample_threshold)
    result = run_chat_suite(spec, _scores(cand, prod, "token_f1"), config, right_threshold=right_threshold)
    failed = [(p - c, f"p{i:03d}") for i, (c, p) in enumerate(zip(cand, prod))
              if (p >= right_threshold > c) or p - c > sample_threshold + SCORE_TOLERANCE]
    assert list(result.failed_sample_ids) == [i for _, i in sorted(failed, key=lambda f: -f[0])][:20]
    drop, critical, passed, blocking = _expected_verdict(spec, cand, prod, len(failed), config)
    assert (result.critical, result.passed, result.blocking) == (critical, passed, blocking)


# ------------------------------------------------------------------------------------------- suite files


def _row(i: int, *messages: tuple[str, str], **extra: object) -> dict[str, object]:
    return {"id": i, "messages": [{"role": r, "content": c} for r, c in messages], **extra}


GOOD = _row(1, ("system", "You are the support assistant."), ("user", "Can I return a gift?"),
            ("assistant", "Yes, within 30 days."), domain="returns")


def _suite_file(tmp_path, *rows: object) -> SuiteSpec:
    path = tmp_path / "policies.jsonl"
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return _spec(data_path=path)


def test_a_chat_suite_reads_as_chat_rows(tmp_path):
    weighted = _row("two", ("user", "Hi"), ("assistant", "Hello."), ("user", "Refund?"), ("assistant", "Yes."))
    weighted["messages"][1]["weight"] = 0
    rows = read_suite(_suite_file(tmp_path, GOOD, "", weighted), "chat")
    assert [row["id"] for row in rows] == ["1", "two"] and rows[0]["domain"] == "returns"


@pytest.mark.parametrize(("rows", "line", "message"), [
    (["{not json"], 1, "not valid JSON"),
    ([GOOD, "[1, 2]"], 2, "a row must be a JSON object {id, messages}"),
    ([{"messages": GOOD["messages"]}], 1, "missing or duplicate id None"),
    ([GOOD, GOOD], 2, "missing or duplicate id 1"),
    ([_row(1, ("user", "Can I return a gift?"))], 1, "messages[0].role: the last message must be the assistant's "
                                                     "reference reply"),
    ([_row(1, ("user", "Hi"), ("assistant", "Hello."), ("assistant", "Yes."))], 1,
     "messages[1].role: the conversation must end with a user turn before the reply"),
    ([_row(1, ("assistant", "Yes."))], 1, "messages: needs at least one user turn before the reply"),
    ([_row(1, ("robot", "Hi"), ("assistant", "Yes."))], 1, "messages[0].role: must be one of system, user"),
    ([_row(1, ("user", "  "), ("assistant", "Yes."))], 1, "messages[0].content: empty"),
    ([{"id": 1, "messages": "hello"}], 1, "messages: must be a list of messages"),
])
def test_a_bad_chat_suite_row_is_refused_naming_file_line_and_field(tmp_path, rows, line, message):
    spec = _suite_file(tmp_path, *rows)
    with pytest.raises(SuiteError) as refused:
        read_suite(spec, "chat")
    assert f"suite 'policies' ({spec.data_path}:{line}): {message}" in str(refused.value)


def test_a_missing_or_empty_chat_suite_is_refused(tmp_path):
    with pytest.raises(SuiteError, match="data_path .* does not exist"):
        read_suite(_spec(data_path=tmp_path / "gone.jsonl"), "chat")
    with pytest.raises(SuiteError, match="holds no rows"):
        read_suite(_suite_file(tmp_path, ""), "chat")


def test_the_guard_holds_each_suite_items_normalised_prompt_and_its_hash(tmp_path):
    from tuneloop.intake import sha256

    guard = leakage_guard([_suite_file(tmp_path, GOOD)], task="chat")
    prompt = prompt_text(GOOD["messages"][:-1])
    assert prompt == "system: you are the support assistant.\nuser: can i return a gift?"
    assert guard.texts == {prompt} and guard.hashes == {sha256(prompt)}
    assert guard.reason(sha256(prompt), prompt) == "same prompt as a regression-suite item"
    assert guard.reason("other", "user: something else") is None
    assert leakage_guard([_suite_file(tmp_path, GOOD)], task="chat", match_texts=False).hashes == guard.hashes


# ------------------------------------------------------------------------- the other kind's fields refused


@pytest.mark.parametrize(("task", "fields", "named", "instead"), [
    ("chat", {"baseline_wer": 0.1}, "baseline_wer", "baseline_score"),
    ("chat", {"baseline_cer": 0.1}, "baseline_cer", "baseline_score"),
    ("chat", {"max_wer_degradation": 0.1}, "max_wer_degradation", "max_score_drop"),
    ("speech_to_text", {"baseline_score": 0.9}, "baseline_score", "baseline_wer"),
    ("speech_to_text", {"max_score_drop": 0.1}, "max_score_drop", "max_wer_degradation"),
])
def test_a_baseline_or_cap_of_the_other_kind_of_model_is_refused(tmp_path, task, fields, named, instead):
    suite = {"name": "policies", "data_path": str(tmp_path / "s.jsonl"), **fields}
    with pytest.raises(ValueError, match=rf"regression.suites\[0\].{named}: suite 'policies' belongs to a {task} "
                                         rf"model.*; use {instead}"):
        TuneloopConfig.model_validate({"task": task, "regression": {"suites": [suite]}})
    with pytest.raises(SuiteError, match=f"suite 'policies': {named}: "):
        read_suite(SuiteSpec.model_validate(suite), task)
    own = {"chat": {"baseline_score": 0.9, "max_score_drop": 0.1}, "speech_to_text": {"baseline_wer": 0.1}}[task]
    accepted = {k: v for k, v in suite.items() if k not in fields} | own
    assert TuneloopConfig.model_validate({"task": task, "regression": {"suites": [accepted]}}).regression.suites


def test_each_model_of_several_is_checked_against_its_own_task(tmp_path):
    suite = {"name": "policies", "data_path": str(tmp_path / "s.jsonl"), "baseline_score": 0.9}
    models = [{"name": "asr", "task": "speech_to_text", "model_name": "stt"},
              {"name": "support", "task": "chat", "model_name": "assistant", "regression": {"suites": [suite]}}]
    config = TuneloopConfig.model_validate({"models": models})
    assert config.for_model("support").regression.suites[0].baseline_score == 0.9
    with pytest.raises(ValueError, match=r"models\[1\] \(support\): regression.suites\[0\].baseline_wer"):
        TuneloopConfig.model_validate({"models": [models[0], {**models[1], "regression": {"suites": [
            {**suite, "baseline_score": None, "baseline_wer": 0.1}]}}]})
    yaml_file = tmp_path / "tuneloop.yaml"
    yaml_file.write_text(json.dumps({"regression": {"suites": [suite]}}))  # one speech model
    with pytest.raises(ConfigError, match=r"regression.suites\[0\].baseline_score: suite 'policies' belongs to a "
                                          r"speech_to_text model, judged by WER; use baseline_wer"):
        load_config(yaml_file, env={})


# --------------------------------------------------------------------------------------------------- store


def test_a_chat_suite_result_and_its_history_round_trip_through_the_store(store, clock):
    chat = store.for_model("support")
    prod = _right(18, 20)
    first = run_chat_suite(_spec(), _scores(prod, prod), CONFIG, right_threshold=1.0, model_version="4").to_dict()
    assert chat.record_suite_result("run-1", first) and not chat.record_suite_result("run-1", first)
    clock.now += timedelta(hours=1)
    second = run_chat_suite(_spec(), _scores(_right(12, 20), prod), CONFIG, right_threshold=1.0,
                            model_version="5").to_dict()
    assert chat.record_suite_result("run-2", second)
    store.record_suite_result("run-1", {"name": "policies", "wer": 0.1, "cer": 0.05, "n": 20, "passed": True})

    history = chat.suite_history("policies")
    assert [(h["run_id"], h["model_version"], h["metric"], h["passed"]) for h in history] == [
        ("run-2", "5", "exact_match", False), ("run-1", "4", "exact_match", True)]
    assert [h["score"] for h in history] == [pytest.approx(0.6), pytest.approx(0.9)]
    assert (history[0]["wer"], history[0]["cer"], history[0]["n"]) == (None, None, 20)
    assert history[0]["result"]["score_drop"] == pytest.approx(0.3) and history[0]["at"] == clock.now
    assert history[0]["result"]["failed_sample_ids"] == [f"p{i:03d}" for i in range(12, 18)]
    speech = store.suite_history()
    assert [(h["wer"], h["cer"], h["metric"], h["score"]) for h in speech] == [(0.1, 0.05, None, None)]


def test_a_store_migrated_from_version_1_keeps_chat_suite_results_too(new_database, batch):
    """Version 1 required WER and CER: the migrated table takes a chat result beside the speech one it had."""
    url = new_database()
    migrations.write_v1_store(url, batch, tables=["tuneloop_error_cases", "tuneloop_suite_results"])
    with ErrorCaseStore(url) as store:
        prod = _right(18, 20)
        result = run_chat_suite(_spec(), _scores(prod, prod), CONFIG, right_threshold=1.0, model_version="2")
        assert store.for_model("support").record_suite_result("run-1", result.to_dict())
        assert [(h["metric"], h["score"], h["wer"]) for h in store.for_model("support").suite_history()] == [
            ("exact_match", 0.9, None)]
        assert [(h["suite"], h["metric"], h["wer"]) for h in store.suite_history()] == [("critical", None, 0.1)]
