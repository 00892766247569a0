from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from tuneloop.config import FinetuningConfig
from tuneloop.triggering import TriggerMetrics, check_trigger

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
CONFIG = FinetuningConfig(min_error_cases=100, min_corrected_cases=50, error_rate_threshold=0.15,
                          min_inferences_for_rate=100, cooldown_hours=24)


def metrics(**changes) -> TriggerMetrics:
    """Quiet defaults: nothing reaches a threshold, no run ever finished."""
    base = TriggerMetrics(new_cases=10, new_corrected_cases=10, window_errors=0, window_inferences=0,
                          window_start=NOW - timedelta(hours=168), window_end=NOW, model_version="3")
    return replace(base, **changes)


@pytest.mark.parametrize(
    ("new_cases", "corrected", "expected"),
    [(99, 50, False), (100, 50, True), (100, 49, False), (152, 60, True)],
)
def test_count_rule_boundaries(new_cases, corrected, expected):
    result = check_trigger(metrics(new_cases=new_cases, new_corrected_cases=corrected), CONFIG, now=NOW)
    assert result.should_trigger is expected
    sign = ">=" if new_cases >= 100 else "<"
    assert f"{new_cases} new error cases {sign} min_error_cases 100" in result.reasons


def test_counts_that_stopped_at_the_limit_read_as_at_least():
    """The store counts new cases only up to the larger threshold: the decision is the same, the words honest."""
    result = check_trigger(metrics(new_cases=100, new_corrected_cases=100, count_limit=100), CONFIG, now=NOW)
    assert result.should_trigger
    assert "at least 100 new error cases >= min_error_cases 100" in result.reasons
    assert "at least 100 new corrected cases >= min_corrected_cases 50" in result.reasons
    below = check_trigger(metrics(new_cases=99, new_corrected_cases=40, count_limit=100), CONFIG, now=NOW)
    assert "99 new error cases < min_error_cases 100" in below.reasons and not below.should_trigger
    assert below.metrics["count_limit"] == 100


def test_reasons_read_as_plain_words():
    result = check_trigger(metrics(new_cases=152, new_corrected_cases=60), CONFIG, now=NOW)
    assert result.reasons[0] == "triggered: enough new error cases"
    assert "152 new error cases >= min_error_cases 100" in result.reasons
    assert "60 new corrected cases >= min_corrected_cases 50" in result.reasons
    assert "cooldown: no training run has finished yet" in result.reasons


@pytest.mark.parametrize(
    ("errors", "inferences", "expected"),
    [(15, 100, True), (14, 100, False), (45, 300, True), (150, 1000, True), (149, 1000, False)],
)
def test_rate_rule_at_the_threshold(errors, inferences, expected):
    result = check_trigger(metrics(new_corrected_cases=50, window_errors=errors, window_inferences=inferences),
                           CONFIG, now=NOW)
    assert result.should_trigger is expected
    assert result.metrics["error_rate"] == errors / inferences


def test_rate_needs_enough_inferences():
    result = check_trigger(metrics(new_corrected_cases=50, window_errors=90, window_inferences=99), CONFIG, now=NOW)
    assert not result.should_trigger
    assert "error rate not used: 99 inferences in the window < min_inferences_for_rate 100" in result.reasons


def test_rate_needs_enough_corrected_cases():
    result = check_trigger(metrics(new_corrected_cases=49, window_errors=50, window_inferences=100), CONFIG, now=NOW)
    assert not result.should_trigger
    assert any(r.startswith("error rate 0.5000") and ">= error_rate_threshold" in r for r in result.reasons)


def test_rate_rule_can_be_switched_off():
    config = CONFIG.model_copy(update={"trigger_on_error_rate": False})
    result = check_trigger(metrics(new_corrected_cases=50, window_errors=50, window_inferences=100), config, now=NOW)
    assert not result.should_trigger
    assert "error-rate rule off (trigger_on_error_rate is false)" in result.reasons


@pytest.mark.parametrize(
    ("hours_ago", "expected"),
    [(3, False), (23.99, False), (24, True), (30, True)],
)
def test_cooldown_edge(hours_ago, expected):
    finished = NOW - timedelta(hours=hours_ago)
    result = check_trigger(metrics(new_cases=200, new_corrected_cases=100, last_training_finished_at=finished),
                           CONFIG, now=NOW)
    assert result.should_trigger is expected
    if hours_ago == 3:
        assert "cooldown: last training finished 3.0 h ago < 24 h" in result.reasons
        assert result.reasons[0] == "not triggered: inside the cooldown"


def test_never_while_a_run_is_in_progress_even_forced():
    busy = metrics(new_cases=500, new_corrected_cases=500, running_training_run="manual__1")
    for force in (False, True):
        result = check_trigger(busy, CONFIG, now=NOW, force=force)
        assert not result.should_trigger
        assert "training run manual__1 is still in progress" in result.reasons


def test_force_overrides_counts_and_cooldown():
    quiet = metrics(new_cases=3, new_corrected_cases=2, last_training_finished_at=NOW - timedelta(hours=1))
    assert not check_trigger(quiet, CONFIG, now=NOW).should_trigger
    forced = check_trigger(quiet, CONFIG, now=NOW, force=True)
    assert forced.should_trigger
    assert forced.reasons[0].startswith("triggered: forced")
    assert forced.metrics["forced"] is True


def test_force_does_not_override_nothing_to_train_on():
    result = check_trigger(metrics(new_cases=500, new_corrected_cases=0), CONFIG, now=NOW, force=True)
    assert not result.should_trigger
    assert "nothing to train on" in result.reasons[0]


def test_result_is_json_ready():
    result = check_trigger(metrics(last_training_finished_at=NOW - timedelta(days=2)), CONFIG, now=NOW)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["should_trigger"] is False
    assert data["metrics"]["last_training_finished_at"] == "2025-05-30T12:00:00+00:00"
    assert data["metrics"]["training_in_progress"] is False


def test_naive_now_is_refused():
    with pytest.raises(ValueError, match="now"):
        check_trigger(metrics(), CONFIG, now=datetime(2025, 6, 1))
