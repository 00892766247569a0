"""Regression suites judged on constructed predictions: ten-word references, whole-word deletions as errors."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tuneloop.config import RegressionConfig, SuiteSpec
from tuneloop.predictions import Prediction
from tuneloop.regression import merge_suites, run_suite, run_suites
from tuneloop.store import ErrorCaseStore

WORDS = [f"{c}{c}{c}{c}" for c in "abcdefghij"]
REFERENCE = " ".join(WORDS)
CONFIG = RegressionConfig()


def _predictions(*errors: int) -> list[Prediction]:
    """One utterance per entry, with that many words dropped."""
    return [Prediction(f"s{i:03d}", REFERENCE, " ".join(WORDS[: 10 - e])) for i, e in enumerate(errors)]


def _spec(**overrides) -> SuiteSpec:
    return SuiteSpec(**{"name": "seen", "data_path": "unused.jsonl", **overrides})


def test_no_change_passes_against_production_measured_in_the_run() -> None:
    prod = _predictions(*[1] * 50)
    result = run_suite(_spec(), prod, prod, CONFIG, model_version="7", production_version="6")
    assert result.passed and not result.blocking and not result.critical
    assert (result.baseline_source, result.baseline_version) == ("production (this run)", "6")
    assert result.wer_degradation == 0
    assert result.failed_samples == 0 and result.n == 50


def test_wer_degradation_above_the_suite_cap_fails() -> None:
    result = run_suite(_spec(max_wer_degradation=0.05), _predictions(*[2] * 50), _predictions(*[1] * 50), CONFIG)
    assert not result.passed and result.blocking
    assert "+0.100, above max_wer_degradation 0.05" in result.reasons[0]


def test_recorded_baseline_is_used_when_present() -> None:
    spec = _spec(baseline_wer=0.05, baseline_cer=0.03, baseline_version="baseline_v1", max_wer_degradation=0.02)
    result = run_suite(spec, _predictions(*[1] * 40), _predictions(*[1] * 40), CONFIG)
    assert result.baseline_source == "recorded" and result.baseline_version == "baseline_v1"
    assert result.wer_degradation == pytest.approx(0.05) and not result.passed
    assert result.production_wer == pytest.approx(0.1)


def test_failed_samples_rate_and_critical_suites() -> None:
    prod = _predictions(*[0] * 40)
    cand = _predictions(*([3] + [0] * 39))  # one sample +0.3 WER (> 0.2); suite WER +0.0075
    benchmark = run_suite(_spec(), cand, prod, CONFIG)
    assert benchmark.passed and benchmark.failed_samples == 1 and benchmark.failed_sample_ids == ("s000",)
    assert "2.5%" in benchmark.reasons[1] and "within max_failed_samples_rate 5.0%" in benchmark.reasons[1]
    critical = run_suite(_spec(type="critical"), cand, prod, CONFIG)
    assert not critical.passed and critical.blocking and "a critical suite allows none" in critical.reasons[1]
    many = run_suite(_spec(), _predictions(*([3] * 4 + [0] * 36)), prod, CONFIG)
    assert not many.passed and many.failed_samples_rate == pytest.approx(0.1)


def test_a_smoke_suite_is_report_only_unless_critical() -> None:
    prod = _predictions(*[1] * 20)
    mild = run_suite(_spec(type="smoke"), _predictions(*[2] * 20), prod, CONFIG)  # +0.1: over 0.05, not > 0.1
    assert not mild.passed and not mild.blocking and not mild.critical
    severe = run_suite(_spec(type="smoke"), _predictions(*[3] * 20), prod, CONFIG)  # +0.2 > 0.1: critical
    assert severe.critical and severe.blocking and "critical degradation" in severe.reasons[-1]
    lenient = RegressionConfig(fail_on_critical_degradation=False)
    assert not run_suite(_spec(type="smoke"), _predictions(*[3] * 20), prod, lenient).blocking


@pytest.mark.parametrize(("production_errors", "candidate_errors", "critical"), [
    (1, 2, False),  # 0.1 -> 0.2: +100% relative, +0.1 absolute (not above 0.1)
    (0, 1, False),  # 0.0 -> 0.1: a relative rise is undefined; +0.1 absolute
    (5, 7, True),   # 0.5 -> 0.7: +40% relative, +0.2 absolute
])
def test_critical_degradation_is_an_absolute_wer_rise(production_errors, candidate_errors, critical) -> None:
    """critical_degradation_threshold (0.1) is ten WER points, and the decision record says so with both WERs."""
    result = run_suite(_spec(type="smoke", max_wer_degradation=1.0), _predictions(*[candidate_errors] * 20),
                       _predictions(*[production_errors] * 20), CONFIG)
    assert result.critical is critical and result.blocking is critical
    if critical:
        assert result.reasons[-1].endswith("critical degradation, WER rose by 0.200 (0.500 -> 0.700, absolute) > "
                                           "critical_degradation_threshold 0.1")


def test_run_suites_fails_when_any_suite_blocks_and_names_it() -> None:
    prod = _predictions(*[1] * 20)
    good = run_suite(_spec(name="a"), prod, prod, CONFIG)
    bad = run_suite(_spec(name="b"), _predictions(*[3] * 20), prod, CONFIG)
    report = run_suites([good, bad])
    assert not report.passed and report.reasons[0].startswith("suite b failed:")
    assert run_suites([good]).passed and run_suites([]).passed


def test_first_run_without_production_records_the_candidate() -> None:
    result = run_suite(_spec(), _predictions(*[1] * 10), None, CONFIG)
    assert result.passed and result.baseline_source == "none"
    assert any("per-sample check skipped" in r for r in result.reasons)


def test_registered_suites_override_configured_ones_and_results_keep_history(tmp_path) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with ErrorCaseStore(f"sqlite:///{tmp_path / 'store.db'}", clock=lambda: now) as store:
        store.register_suite({"name": "seen", "type": "critical", "data_path": str(tmp_path / "s.jsonl"),
                              "baseline_wer": 0.1, "baseline_version": "3"})
        store.register_suite({"name": "extra", "data_path": str(tmp_path / "e.jsonl")})
        merged = merge_suites([_spec(name="seen"), _spec(name="config-only")], store.registered_suites())
        assert [(s.name, s.type) for s in merged] == [("config-only", "benchmark"), ("extra", "benchmark"),
                                                       ("seen", "critical")]
        prod = _predictions(*[1] * 10)
        result = run_suite(_spec(), prod, prod, CONFIG, model_version="4").to_dict()
        assert store.record_suite_result("run-1", result) and not store.record_suite_result("run-1", result)
        store.record_suite_result("run-2", {**result, "model_version": "5", "wer": 0.2, "passed": False})
        history = store.suite_history("seen")
        assert [(h["run_id"], h["model_version"], h["passed"]) for h in history] == [
            ("run-2", "5", False), ("run-1", "4", True)]
        with pytest.raises(ValueError, match="type"):
            store.register_suite({"name": "x", "type": "nightly", "data_path": "x.jsonl"})
