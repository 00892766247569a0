"""Prices, training and inference costs, the budget check and seed 004's ROI."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tuneloop.costs import (Cost, Price, budget_check, hours_cost, mean_request_cost, training_tokens_cost,
                            price_for, request_cost, roi, total)

PRICES = {
    "gpt-4.1-mini-2025-04-14": Price(training_per_1m_tokens=5.0, input_per_1m_tokens=0.4, output_per_1m_tokens=1.6),
    "ft:gpt-4.1-mini-2025-04-14": Price(input_per_1m_tokens=0.8, output_per_1m_tokens=3.2),
    "g2-standard-8": Price(per_hour=0.85),
    "nvidia-l4": Price(per_hour=0.7),
}
FT = "ft:gpt-4.1-mini-2025-04-14:acme:support-run-1:AbC123"


def test_a_fine_tuned_model_is_priced_by_its_own_entry_else_its_base_s_ft_entry():
    assert price_for(PRICES, FT) == ("ft:gpt-4.1-mini-2025-04-14", PRICES["ft:gpt-4.1-mini-2025-04-14"])
    assert price_for({**PRICES, FT: Price(per_request=1.0)}, FT) == (FT, Price(per_request=1.0))
    assert price_for(PRICES, "ft:gpt-4o-2024-08-06:acme::x") is None
    assert price_for(PRICES, "gpt-4o") is None


def test_training_tokens_cost_is_trained_tokens_at_the_base_model_s_price():
    cost = training_tokens_cost(PRICES, "gpt-4.1-mini-2025-04-14", 2_000_000)
    assert cost.usd == pytest.approx(10.0) and cost.unit == "tokens"
    assert "2,000,000 trained tokens x $5/1M (gpt-4.1-mini-2025-04-14)" == cost.basis
    unknown = training_tokens_cost(PRICES, "gpt-4o-2024-08-06", 10)
    assert unknown.usd is None and "no costs.prices['gpt-4o-2024-08-06'].training_per_1m_tokens" in unknown.basis
    assert unknown.label().startswith("unknown (")


costs = st.builds(Cost, usd=st.none() | st.floats(min_value=0, max_value=1e6), basis=st.text(max_size=10),
                  quantity=st.floats(min_value=0, max_value=1e9), unit=st.sampled_from(["tokens", "hours"]),
                  upper_bound=st.booleans())


@given(st.lists(costs, min_size=1, max_size=6))
def test_a_total_is_unknown_if_any_part_is_and_an_upper_bound_if_any_part_is(parts):
    summed = total(parts)
    if any(part.usd is None for part in parts):
        assert summed.usd is None
    else:
        assert summed.usd == pytest.approx(sum(part.usd for part in parts))
    assert summed.upper_bound == any(part.upper_bound for part in parts)
    assert all(part.basis in summed.basis for part in parts)


def test_a_failed_job_and_the_job_that_made_the_model_add_up():
    failed = training_tokens_cost(PRICES, "gpt-4.1-mini-2025-04-14", 300_000, estimate=True, upper_bound=True)
    made = training_tokens_cost(PRICES, "gpt-4.1-mini-2025-04-14", 1_000_000)
    summed = total([failed, made])
    assert summed.usd == pytest.approx(6.5) and summed.upper_bound and summed.quantity == 1_300_000
    assert summed.label() == ("at most $6.50 (300,000 estimated trained tokens x $5/1M (gpt-4.1-mini-2025-04-14) + "
                              "1,000,000 trained tokens x $5/1M (gpt-4.1-mini-2025-04-14))")
    with pytest.raises(ValueError, match="parts: at least one cost"):
        total([])


def test_a_vm_costs_its_machine_and_accelerators_by_the_hour_and_local_costs_nothing():
    cost = hours_cost(PRICES, {"g2-standard-8": 1, "nvidia-l4": 2}, 1.5, upper_bound=True)
    assert cost.usd == pytest.approx(1.5 * (0.85 + 2 * 0.7)) and cost.upper_bound
    assert cost.label().startswith("at most $3.38 (1.50 h x $2.25/h (g2-standard-8 + 2 x nvidia-l4))")
    assert hours_cost(PRICES, {}, 0.2).usd == 0.0
    missing = hours_cost(PRICES, {"a2-highgpu-1g": 1, "nvidia-l4": 1}, 1.0)
    assert missing.usd is None and "'a2-highgpu-1g'" in missing.basis and "nvidia-l4'" not in missing.basis


def test_request_cost_from_tokens_in_and_out():
    assert request_cost(PRICES, FT, 1000, 250).usd == pytest.approx((0.8 * 1000 + 3.2 * 250) / 1e6)
    rows = [{"prompt_tokens": 100, "completion_tokens": 10}, {"prompt_tokens": 300, "completion_tokens": 30}]
    mean = mean_request_cost(PRICES, "gpt-4.1-mini-2025-04-14", rows)
    assert mean.usd == pytest.approx((0.4 * 200 + 1.6 * 20) / 1e6)
    assert mean_request_cost(PRICES, "unknown-model", rows).usd is None
    assert mean_request_cost(PRICES, FT, []).usd is None


def test_seed_004_roi_example():
    """Seed 004: $50 training, $0.002 -> $0.0015 per call, 10,000 calls, 85% -> 92% accuracy, $10 per error:
    $7,000 of errors avoided a month; it pays back at once. (The seed writes the saving as
    (0.002 - 0.0015) x 10,000 = $50; that product is $5.)"""
    result = roi(training_usd=50.0, expected_requests_per_month=10_000, error_rate_production=0.15,
                 error_rate_candidate=0.08, value_per_error_avoided_usd=10.0, request_cost_production_usd=0.002,
                 request_cost_candidate_usd=0.0015)
    assert result.errors_avoided_per_month == pytest.approx(700)
    assert result.error_value_per_month_usd == pytest.approx(7000)
    assert result.inference_saving_per_month_usd == pytest.approx(5)
    assert result.payback_days == pytest.approx(50 / (7005 / (365.25 / 12)))
    assert result.payback_days < 1
    assert result.roi_6_months_usd == pytest.approx(6 * 7005 - 50)


def test_a_candidate_that_costs_more_than_it_saves_never_pays_back():
    result = roi(training_usd=100.0, expected_requests_per_month=1000, error_rate_production=0.1,
                 error_rate_candidate=0.1, value_per_error_avoided_usd=10.0, request_cost_production_usd=0.001,
                 request_cost_candidate_usd=0.002)
    assert result.net_per_month_usd == pytest.approx(-1.0)
    assert (result.payback_days, result.payback_note) == (None, "no_gain")
    common = {"error_rate_production": 0.2, "error_rate_candidate": 0.1, "value_per_error_avoided_usd": 10.0,
              "request_cost_production_usd": None, "request_cost_candidate_usd": None}
    assert roi(training_usd=0.0, expected_requests_per_month=100, **common).payback_days == 0.0  # local: at once
    assert roi(training_usd=0.0, expected_requests_per_month=0, **common).payback_note == "no_traffic"
    unknown = roi(training_usd=None, expected_requests_per_month=100, **common)
    assert (unknown.payback_days, unknown.payback_note, unknown.roi_6_months_usd) == (None, "unknown_cost", None)
    assert unknown.inference_saving_per_month_usd is None


money = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@given(estimate=st.one_of(st.none(), money), spent=money, max_run=st.one_of(st.none(), money),
       monthly=st.one_of(st.none(), money), unknown=st.integers(0, 3))
def test_the_budget_rule(estimate, spent, max_run, monthly, unknown):
    """Within budget exactly when every set limit is shown to hold: estimate <= max_run_usd and estimate <= what
    is left of the month, a month none of whose runs cost an unknown amount; an unknown estimate holds no limit;
    with no limits every run is within."""
    check = budget_check(Cost(estimate, "test"), spent_this_month_usd=spent, max_run_usd=max_run,
                         monthly_budget_usd=monthly, unknown_runs_this_month=unknown)
    holds_run = max_run is None or (estimate is not None and estimate <= max_run)
    holds_month = monthly is None or (estimate is not None and estimate <= monthly - spent)
    month_known = monthly is None or unknown == 0
    assert check.within == (holds_run and holds_month and month_known)
    assert len(check.reasons) == (not holds_run) + (not holds_month) + (not month_known)
    if max_run is not None and not holds_run:
        assert any("costs.max_run_usd" in reason for reason in check.reasons)


def test_the_cost_report_adds_known_costs_per_month_and_counts_unknown_ones():
    from datetime import UTC, datetime

    from tuneloop.costs import cost_report
    from tuneloop.store.training_runs import TrainingRun

    def run(run_id: str, month: int, usd: float | None, status: str = "deployed") -> TrainingRun:
        at = datetime(2026, month, 15, tzinfo=UTC)
        training = {"usd": usd, "basis": "test"} if status != "skipped" else None
        return TrainingRun(run_id, status, at, at, summary={"costs": {"training": training}})

    report = cost_report([run("b", 11, 2.5), run("a", 10, 1.0), run("c", 11, None), run("d", 11, None, "skipped")],
                         monthly_budget_usd=10.0, max_run_usd=5.0)
    assert [r["run_id"] for r in report["runs"]] == ["a", "b", "c", "d"]
    assert report["months"] == [
        {"month": "2026-10", "training_usd": 1.0, "runs": 1, "unknown_runs": 0, "monthly_budget_usd": 10.0,
         "left_usd": 9.0},
        {"month": "2026-11", "training_usd": 2.5, "runs": 2, "unknown_runs": 1, "monthly_budget_usd": 10.0,
         "left_usd": 7.5}]
