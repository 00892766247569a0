"""The canary's online test: the sequential test's calibration under peeking (measured by simulation), the
chi-squared test against scipy, the decision rule, seed 004's weighted winner."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from tuneloop.online_test import (Arm, ArmSummary, chi_squared, decide, ended_by_person, look, msprt_likelihood_ratio,
                                  weighted_winner)

ALPHA = 0.05
MIXING_SD = 0.05


def simulate(error_production: float, error_canary: float, *, runs: int, seed: int, share: float = 0.1,
             batch: int = 100, looks: int = 60, min_samples: int = 200) -> dict[str, float]:
    """``runs`` canary tests on simulated traffic: ``batch`` judged requests between looks, ``share`` of them to
    the canary, the waiting step looking after every batch (:func:`decide`) until it acts or ``looks`` batches
    pass (the deadline). Beside it, the same looks with the plain chi-squared test (p < alpha at a look with
    ``min_samples`` per arm: act), for contrast. Returns the share of runs ending in each action."""
    rng = np.random.default_rng(seed)
    to_canary = rng.binomial(batch, share, size=(runs, looks))
    errors_canary = rng.binomial(to_canary, error_canary)
    errors_production = rng.binomial(batch - to_canary, error_production)
    counts = np.cumsum(np.stack([batch - to_canary, errors_production, to_canary, errors_canary]), axis=2)
    outcomes = {"promote": 0, "rollback": 0, "keep_production": 0, "chi_squared_promote": 0,
                "chi_squared_rollback": 0}
    for run in range(runs):
        p, chi_done = 1.0, False
        for at in range(looks):
            n_p, e_p, n_c, e_c = (int(x) for x in counts[:, run, at])
            current = look(Arm(n_p, e_p), Arm(n_c, e_c), previous_p=p, mixing_sd=MIXING_SD)
            p = current.always_valid_p
            if not chi_done and min(n_p, n_c) >= min_samples and (current.chi_squared_p or 1) < ALPHA:
                outcomes["chi_squared_promote" if current.difference < 0 else "chi_squared_rollback"] += 1
                chi_done = True
            decision = decide(current, alpha=ALPHA, min_samples=min_samples, deadline_passed=at == looks - 1)
            if decision.action != "wait":
                outcomes[decision.action] += 1
                break
    return {action: count / runs for action, count in outcomes.items()}


def test_with_equal_error_rates_peeking_every_batch_promotes_at_most_alpha_of_the_time():
    """The acceptance's calibration: 2,000 simulated canary tests of an equal candidate (20% errors in both arms,
    10% of traffic, 60 looks of 100 requests). The sequential test promotes (or rolls back) in at most alpha of
    them, up to Monte Carlo error; the chi-squared test peeked at the same way rejects far more often."""
    runs = 2000
    result = simulate(0.2, 0.2, runs=runs, seed=7)
    monte_carlo = 3 * math.sqrt(ALPHA * (1 - ALPHA) / runs)
    assert result["promote"] <= ALPHA + monte_carlo, result
    assert result["promote"] + result["rollback"] <= ALPHA + monte_carlo, result
    assert result["keep_production"] >= 1 - ALPHA - monte_carlo
    peeking = result["chi_squared_promote"] + result["chi_squared_rollback"]
    assert peeking > 2 * ALPHA, result  # peeking at a fixed-horizon test inflates its error


def test_a_clearly_worse_canary_is_rolled_back_early_and_a_better_one_promoted():
    worse = simulate(0.10, 0.30, runs=200, seed=1)
    assert worse["rollback"] >= 0.95 and worse["promote"] == 0, worse
    better = simulate(0.30, 0.10, runs=200, seed=2)
    assert better["promote"] >= 0.95 and better["rollback"] == 0, better


def test_a_worse_canary_is_rolled_back_before_min_samples():
    p, at = 1.0, 0
    for at in range(1, 100):
        current = look(Arm(90 * at, 9 * at), Arm(10 * at, 6 * at), previous_p=p, mixing_sd=MIXING_SD)
        p = current.always_valid_p
        decision = decide(current, alpha=ALPHA, min_samples=200, deadline_passed=False)
        if decision.action != "wait":
            break
    assert decision.action == "rollback" and current.canary.requests < 200, (at, decision)
    assert decision.reason == ("the canary gets more requests wrong (error rate: production 18/180 = 10.0%, canary "
                               "12/20 = 60.0%; always-valid p = 0.0117 <= alpha 0.05)")


def test_an_early_lead_does_not_decide_a_later_look_against_its_evidence():
    """The canary looked much better early (short of min_samples); later the arms are equal. The running minimum
    remembers the early lead, but the decision rests on this look's evidence: wait, not promote or roll back."""
    early = look(Arm(400, 200), Arm(40, 0), mixing_sd=MIXING_SD)
    assert early.always_valid_p < ALPHA
    assert decide(early, alpha=ALPHA, min_samples=50, deadline_passed=False).action == "wait"
    later = look(Arm(900, 270), Arm(100, 31), previous_p=early.always_valid_p, mixing_sd=MIXING_SD)
    assert later.always_valid_p == early.always_valid_p and later.difference > 0
    assert decide(later, alpha=ALPHA, min_samples=50, deadline_passed=False).action == "wait"


def test_a_better_canary_waits_for_min_samples_and_the_deadline_keeps_production():
    better = look(Arm(900, 270), Arm(100, 5), mixing_sd=MIXING_SD)
    assert better.always_valid_p < ALPHA and better.difference < 0
    waiting = decide(better, alpha=ALPHA, min_samples=200, deadline_passed=False)
    assert waiting.action == "wait" and "waiting for 200 judged requests per arm" in waiting.reason
    assert decide(better, alpha=ALPHA, min_samples=100, deadline_passed=False).action == "promote"
    late = decide(better, alpha=ALPHA, min_samples=200, deadline_passed=True)
    assert late.action == "keep_production" and "short of 200 judged requests per arm" in late.reason
    equal = look(Arm(900, 180), Arm(300, 60), mixing_sd=MIXING_SD)
    end = decide(equal, alpha=ALPHA, min_samples=200, deadline_passed=True)
    assert end.action == "keep_production" and "no difference shown" in end.reason


arms = st.integers(min_value=0, max_value=5000).flatmap(
    lambda n: st.builds(Arm, requests=st.just(n), errors=st.integers(min_value=0, max_value=n)))


@given(arms, arms)
def test_the_chi_squared_test_is_scipy_s_without_continuity_correction(production, canary):
    statistic, p = chi_squared(production, canary)
    table = np.array([[production.errors, production.requests - production.errors],
                      [canary.errors, canary.requests - canary.errors]])
    if (table.sum(axis=0) == 0).any() or (table.sum(axis=1) == 0).any():
        assert (statistic, p) == (None, None)
        return
    expected = scipy_stats.chi2_contingency(table, correction=False)
    assert statistic == pytest.approx(expected.statistic, rel=1e-9, abs=1e-12)
    assert p == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-12)


@given(arms, arms, st.floats(min_value=1e-6, max_value=1.0))
def test_the_always_valid_p_never_rises_and_stays_in_0_1(production, canary, previous):
    current = look(production, canary, previous_p=previous, mixing_sd=MIXING_SD)
    assert 0 < current.always_valid_p <= previous
    assert current.likelihood_ratio > 0 and math.isfinite(current.likelihood_ratio)


@given(arms, arms, st.sampled_from(["promote", "rollback"]), st.text(max_size=30))
def test_a_person_s_early_end_stands_whatever_the_numbers_and_keeps_them(production, canary, action, why):
    current = look(production, canary, mixing_sd=MIXING_SD)
    decision = ended_by_person(current, action, by="ada", why=why).to_dict()
    assert (decision["action"], decision["decided_by"]) == (action, "ada")
    assert decision["look"] == current.to_dict()
    done = "promoted" if action == "promote" else "rolled back"
    assert decision["reason"].startswith(f"ended early by ada: {done} by hand ({why.strip() or 'no reason given'})")
    assert "decided_by" not in decide(current, alpha=ALPHA, min_samples=1, deadline_passed=True).to_dict()


def test_a_person_ends_the_test_only_by_promoting_or_rolling_back_and_is_named():
    current = look(Arm(10, 1), Arm(10, 2), mixing_sd=MIXING_SD)
    with pytest.raises(ValueError, match="action: a person ends the test with promote or rollback, got 'wait'"):
        ended_by_person(current, "wait", by="ada", why="")
    with pytest.raises(ValueError, match="by: the person who ended the test must be named"):
        ended_by_person(current, "promote", by=" ", why="")


def test_no_evidence_is_a_likelihood_ratio_of_one():
    assert msprt_likelihood_ratio(Arm(0, 0), Arm(10, 3), mixing_sd=MIXING_SD) == 1.0
    assert msprt_likelihood_ratio(Arm(50, 0), Arm(10, 0), mixing_sd=MIXING_SD) == 1.0  # no error anywhere
    assert msprt_likelihood_ratio(Arm(50, 10), Arm(10, 2), mixing_sd=MIXING_SD) < 1.0  # equal rates: evidence for


@pytest.mark.parametrize(("fields", "error"), [
    ({"requests": -1, "errors": 0}, "requests: must be an integer >= 0, got -1"),
    ({"requests": 10, "errors": 11}, "errors: 11 is more than the 10 judged requests"),
    ({"requests": 1.5, "errors": 0}, "requests: must be an integer >= 0, got 1.5"),
    ({"requests": True, "errors": 0}, "requests: must be an integer >= 0, got True"),
])
def test_impossible_counts_are_refused_naming_the_field(fields, error):
    with pytest.raises(ValueError, match=error.replace("(", r"\(")):
        Arm(**fields)


def test_bad_settings_are_refused_naming_them():
    with pytest.raises(ValueError, match="mixing_sd: must be > 0"):
        look(Arm(1, 0), Arm(1, 0), mixing_sd=0)
    with pytest.raises(ValueError, match=r"previous_p: must be in \(0, 1\]"):
        look(Arm(1, 0), Arm(1, 0), previous_p=0, mixing_sd=MIXING_SD)
    with pytest.raises(ValueError, match=r"alpha: must be in \(0, 1\)"):
        decide(look(Arm(1, 0), Arm(1, 0), mixing_sd=MIXING_SD), alpha=1, min_samples=1, deadline_passed=False)


def test_seed_004_s_weighted_winner():
    production = ArmSummary(accuracy=0.80, latency_ms=200, cost_usd=0.002)
    canary = ArmSummary(accuracy=0.90, latency_ms=250, cost_usd=0.003)
    result = weighted_winner(production, canary)
    # production: 0.6 x 0.8/0.9 + 0.2 x 1 + 0.2 x 1; canary: 0.6 x 1 + 0.2 x 200/250 + 0.2 x 2/3
    assert result["scores"]["production"] == pytest.approx(0.6 * 0.8 / 0.9 + 0.4)
    assert result["scores"]["canary"] == pytest.approx(0.6 + 0.2 * 0.8 + 0.2 * 2 / 3)
    assert result["winner"] == "production"  # more accurate, but slower and dearer: seed 004's weights
    no_costs = weighted_winner(ArmSummary(0.8, 200), ArmSummary(0.9, 200))
    assert no_costs["weights"] == {"accuracy": 0.6, "latency": 0.2} and no_costs["winner"] == "canary"
    assert weighted_winner(ArmSummary(0.8), ArmSummary(0.8))["winner"] == "production"  # a tie changes nothing
