from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from tuneloop.stats import (
    StatsError,
    bootstrap_mean_deltas,
    mcnemar_exact,
    paired_bootstrap_mean,
    sign_test,
    sign_test_counts,
)
from tuneloop.text_gate import PairedScores, TextGateConfig, TextGateError, TextPair, text_gate
from tuneloop.text_metrics import TextScores

# --- the statistics it uses (tuneloop.stats) ---------------------------------------------------------------------


@pytest.mark.parametrize(("wins", "losses", "ties"), [(15, 5, 0), (15, 5, 80), (5, 15, 3), (10, 10, 0), (1, 0, 0),
                                                       (40, 25, 7)])
def test_sign_test_counts_is_the_one_sided_binomial_test(wins: int, losses: int, ties: int) -> None:
    result = sign_test_counts(wins, losses, ties, alpha=0.05)
    expected = binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue
    assert result.p_value == pytest.approx(expected, rel=1e-12)
    assert (result.wins, result.losses, result.ties, result.n) == (wins, losses, ties, wins + losses + ties)
    assert result.significant is bool(expected < 0.05)
    assert result.to_dict()["p_value"] == result.p_value


def test_sign_test_on_scores_drops_ties() -> None:
    base = np.array([0.5, 0.2, 1.0, 0.3, 0.3, 0.0])
    cand = np.array([0.7, 0.2, 0.9, 0.3 + 1e-15, 0.6, 0.1])  # 1e-15 is rounding noise: a tie
    result = sign_test(base, cand)
    assert (result.wins, result.losses, result.ties) == (3, 1, 2)
    assert result.p_value == pytest.approx(binomtest(3, 4, 0.5, alternative="greater").pvalue)
    assert sign_test_counts(0, 0, 5).p_value == 1.0
    assert sign_test_counts(15, 5).p_value == pytest.approx(0.0207, abs=1e-4)  # llm-track facts: 15 vs 5 -> 0.021


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sign_test([1.0, 0.0], [1.0]), "same size"),
        (lambda: sign_test_counts(-1, 2), ">= 0"),
        (lambda: sign_test_counts(1, 2, alpha=1.0), "alpha"),
        (lambda: paired_bootstrap_mean([], []), "zero examples"),
        (lambda: paired_bootstrap_mean([0.1], [float("nan")]), "finite"),
        (lambda: paired_bootstrap_mean([0.1], [0.2], resamples=0), "resamples"),
    ],
)
def test_stats_reject_bad_input(call, message: str) -> None:
    with pytest.raises(StatsError, match=message):
        call()


@pytest.mark.parametrize("graded", [True, False], ids=["index-resampling", "category-resampling"])
def test_mean_bootstrap_is_deterministic_and_order_free(graded: bool) -> None:
    rng = np.random.default_rng(0)
    base = rng.random(300) if graded else (rng.random(300) < 0.6).astype(float)
    cand = rng.random(300) if graded else (rng.random(300) < 0.7).astype(float)
    order = rng.permutation(300)
    one = bootstrap_mean_deltas(base, cand, resamples=2000, seed=4)
    np.testing.assert_array_equal(one, bootstrap_mean_deltas(base[order], cand[order], resamples=2000, seed=4))
    assert not np.array_equal(one, bootstrap_mean_deltas(base, cand, resamples=2000, seed=5))
    result = paired_bootstrap_mean(base, cand, resamples=2000, seed=4)
    assert result.delta == pytest.approx(cand.mean() - base.mean())
    assert result.p_value == (1 + np.count_nonzero(one <= 0)) / 2001
    assert result.ci_low <= result.lower_bound <= result.delta <= result.ci_high
    # the bootstrap spread is the standard error of a mean difference
    assert one.std() == pytest.approx((cand - base).std() / math.sqrt(300), rel=0.1)


def test_mean_bootstrap_edge_cases() -> None:
    same = paired_bootstrap_mean([0.2, 0.4, 0.6], [0.6, 0.2, 0.4], resamples=500)
    assert same.delta == 0.0  # exactly: the sums tie
    better = paired_bootstrap_mean(np.zeros(50), np.full(50, 0.1), resamples=999)
    assert better.p_value == 1 / 1000 and better.ci_low == pytest.approx(0.1) and better.lower_bound > 0


@pytest.mark.parametrize("kind", ["f1-like", "right/wrong"])
def test_mean_bootstrap_interval_covers_the_true_difference_about_95_percent(kind: str) -> None:
    rng = np.random.default_rng(1)
    datasets, n, covered, below = 300, 120, 0, 0
    for seed in range(datasets):
        if kind == "f1-like":  # scores stay inside [0, 1] without clipping, so the true difference is exactly 0.05
            mu = 0.1 + 0.7 * rng.beta(2, 2, n)
            base, cand = mu + rng.uniform(-0.1, 0.1, n), mu + 0.05 + rng.uniform(-0.1, 0.1, n)
            truth = 0.05
        else:
            base, cand = (rng.random(n) < 0.6).astype(float), (rng.random(n) < 0.7).astype(float)
            truth = 0.1
        result = paired_bootstrap_mean(base, cand, resamples=1000, seed=seed)
        covered += result.ci_low <= truth <= result.ci_high
        below += result.lower_bound <= truth
    # 300 intervals: the Monte Carlo standard error of a 95% coverage is 1.3 points
    assert 0.90 <= covered / datasets <= 0.99
    assert 0.90 <= below / datasets <= 0.99


# --- the gate ------------------------------------------------------------------------------------------------------


def _paired(metric: str, base, cand) -> PairedScores:
    return PairedScores(metric, tuple(f"ex{i}" for i in range(len(base))), np.asarray(base, float),
                        np.asarray(cand, float))


def _binary(n: int, base_right: int, fixed: int, broken: int) -> PairedScores:
    """n examples: production right on the first ``base_right``; the candidate breaks ``broken`` of those and fixes
    ``fixed`` of the rest."""
    base = np.r_[np.ones(base_right), np.zeros(n - base_right)]
    cand = base.copy()
    cand[:broken] = 0
    cand[base_right : base_right + fixed] = 1
    return _paired("exact_match", base, cand)


CONFIG = TextGateConfig(bootstrap_resamples=1000)


def test_passes_a_clear_improvement_and_says_why() -> None:
    scores = _binary(200, 120, fixed=30, broken=4)
    result = text_gate(scores, CONFIG)
    assert result.passed and result.verdict == "pass"
    assert result.improvement == pytest.approx(26 / 200) and result.significance_test == "mcnemar"
    assert result.mcnemar == mcnemar_exact(scores.baseline == 1, scores.candidate == 1)
    assert result.p_value == result.mcnemar.p_value < 0.05
    assert (result.newly_broken, result.newly_fixed, result.improved_count, result.degraded_count) == (4, 30, 30, 4)
    assert [c.name for c in result.checks] == ["eval_size", "exact_match_improvement", "significance",
                                               "newly_broken"]
    assert len(result.reasons) == 4  # a pass lists every check
    assert "exact_match improved: 0.600 → 0.730 (+0.130" in result.reasons[1]
    assert "30 fixed vs 4 broken of 34 examples the models disagree on, n=200" in result.reasons[2]
    assert "sign test: 30 wins vs 4 losses, 166 ties" in result.reasons[2]
    assert "4 example(s) newly broken" in result.reasons[3] and "within max_newly_broken_rate 5.0%" in result.reasons[3]
    json.dumps(result.to_dict())
    assert result.to_dict()["thresholds"]["primary_metric"] == "exact_match"


@pytest.mark.parametrize(
    ("scores", "config", "failed", "phrase"),
    [
        (_binary(200, 120, 0, 0), CONFIG, "exact_match_improvement", "exact_match did not change: 0.600 → 0.600"),
        (_binary(200, 120, 3, 8), CONFIG, "exact_match_improvement", "exact_match got worse"),
        (_binary(200, 120, 12, 6), CONFIG.model_copy(update={"min_improvement": 0.05}), "exact_match_improvement",
         "improved by only 0.030"),
        (_binary(200, 120, 9, 4), CONFIG, "significance", "not significant: p=0.1334 >= alpha 0.05"),
        (_binary(200, 120, 60, 20), CONFIG, "newly_broken", "above max_newly_broken_rate 5.0%: e.g. 'ex0', 'ex1'"),
    ],
)
def test_fails_and_names_the_failed_check(scores: PairedScores, config: TextGateConfig, failed: str,
                                          phrase: str) -> None:
    result = text_gate(scores, config)
    assert not result.passed and result.verdict == "fail"
    assert failed in [c.name for c in result.checks if not c.passed]
    assert any(phrase in reason for reason in result.reasons), result.reasons
    assert all(c.detail in result.reasons for c in result.checks if not c.passed)


def test_too_few_examples_is_insufficient_evidence_whatever_else() -> None:
    result = text_gate(_binary(19, 5, fixed=14, broken=0), CONFIG)
    assert result.verdict == "insufficient_evidence" and not result.passed
    assert result.reasons == ("only 19 paired eval examples, fewer than min_eval_size 20: not enough evidence to "
                              "judge the candidate",)
    empty = text_gate(_paired("exact_match", [], []), CONFIG)
    assert empty.verdict == "insufficient_evidence" and empty.p_value is None and empty.sign_test is None


def test_graded_metric_gates_on_the_bootstrap() -> None:
    rng = np.random.default_rng(3)
    base = rng.random(150).round(2)
    cand = np.clip(base + rng.normal(0.08, 0.1, 150), 0, 1).round(2)
    config = CONFIG.model_copy(update={"primary_metric": "token_f1", "max_newly_broken_rate": None})
    result = text_gate(_paired("token_f1", base, cand), config)
    assert result.passed and result.significance_test == "bootstrap" and result.mcnemar is None
    assert result.p_value == result.bootstrap.p_value == pytest.approx(1 / 1001)
    assert "one-sided paired bootstrap, 1,000 resamples over n=150" in result.reasons[2]
    assert "no cap set" in result.reasons[3]


def test_newly_broken_uses_the_right_threshold_for_graded_scores() -> None:
    base = np.r_[np.full(10, 0.9), np.full(90, 0.5)]
    cand = np.r_[np.full(10, 0.7), np.full(90, 0.8)]
    config = CONFIG.model_copy(update={"primary_metric": "token_f1"})
    assert text_gate(_paired("token_f1", base, cand), config).newly_broken == 0  # nothing was perfect
    strict = text_gate(_paired("token_f1", base, cand), config.model_copy(update={"right_threshold": 0.8}))
    assert strict.newly_broken == 10 and strict.newly_fixed == 90 and strict.verdict == "fail"


def test_takes_scored_pairs_and_reports_the_other_scores() -> None:
    def scores(right: bool, latency: float) -> TextScores:
        return TextScores(exact_match=float(right), contains=1.0, token_f1=1.0 if right else 0.5,
                          generated_tokens=10, latency_s=latency)

    pairs = [TextPair(f"q{i}", scores(i < 20, 0.2), scores(i < 30, 0.3)) for i in range(40)]
    result = text_gate(pairs, CONFIG)
    assert result.n == 40 and result.baseline_mean == 0.5 and result.candidate_mean == 0.75 and result.passed
    assert result.secondary["token_f1"] == {"baseline": 0.75, "candidate": 0.875}
    assert result.secondary["latency_s"] == pytest.approx({"baseline": 0.2, "candidate": 0.3})
    assert "json_valid" not in result.secondary


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: _paired("exact_match", [1, 0.5], [1, 1]), "must be 0 or 1"),
        (lambda: _paired("token_f1", [1, 1.5], [1, 1]), r"must lie in \[0, 1\]"),
        (lambda: _paired("token_f1", [1, float("nan")], [1, 1]), r"must lie in \[0, 1\]"),
        (lambda: PairedScores("token_f1", ("a",), np.ones(2), np.ones(2)), "1 ids"),
        (lambda: text_gate(_paired("token_f1", [1], [1]), CONFIG), "primary metric is exact_match"),
    ],
)
def test_rejects_scores_it_cannot_judge(make, message: str) -> None:
    with pytest.raises(TextGateError, match=message):
        make()


# --- acceptance: false-pass rate and power on simulated test sets ------------------------------------------------

SETS, N, ALPHA = 400, 200, 0.05
SIMULATION = TextGateConfig(significance_alpha=ALPHA, bootstrap_resamples=500, seed=0, max_newly_broken_rate=None)
BETA = (0.3, 0.2)  # per-item accuracy: mean 0.6, most items easy or hard for both models (as with real test sets)


def _simulate(kind: str, gain: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``SETS`` paired test sets of ``N`` examples, the candidate better by ``gain`` in expectation.

    Right/wrong: each item has an accuracy ``p ~ Beta(0.3, 0.2)``, drawn i.i.d.; production is right with
    probability ``p``, the candidate, independently, with ``p + gain / 0.4 * (1 - p)`` (it removes the same share
    of every item's remaining error, so the mean accuracy rises by ``gain``). F1-like: each item has a difficulty
    ``mu ~ Beta(2, 2)``; each model scores ``clip(mu + noise, 0, 1)`` rounded to 0.05 (ties and exact 0s and 1s,
    as F1 on short answers has), the candidate with ``mu + gain``. ``gain = 0``: the same per-item accuracy.
    """
    if kind == "exact_match":
        p = rng.beta(*BETA, size=(SETS, N))
        q = p + gain / (1 - BETA[0] / sum(BETA)) * (1 - p)
        return (rng.random(p.shape) < p).astype(float), (rng.random(p.shape) < q).astype(float)
    mu = rng.beta(2, 2, size=(SETS, N))

    def scored(shift: float) -> np.ndarray:
        return np.clip(np.round((mu + shift + rng.normal(0, 0.25, mu.shape)) * 20) / 20, 0, 1)

    return scored(0.0), scored(gain)


def _pass_rate(kind: str, gain: float, config: TextGateConfig, seed: int) -> tuple[float, float]:
    """The share of simulated test sets the gate passes, and the simulated mean improvement."""
    base, cand = _simulate(kind, gain, np.random.default_rng(seed))
    ids = tuple(f"ex{i}" for i in range(N))
    passes = sum(text_gate(PairedScores(kind, ids, b, c), config).passed for b, c in zip(base, cand, strict=True))
    return passes / SETS, float((cand - base).mean())


@pytest.mark.parametrize(("kind", "gain"), [("exact_match", 0.10), ("token_f1", 0.10)])
def test_false_pass_rate_is_at_most_alpha_and_power_is_high(kind: str, gain: float) -> None:
    config = SIMULATION.model_copy(update={"primary_metric": kind})
    # No real improvement. The newly-broken cap is off: it can only turn passes into fails, so this measures the
    # significance test alone, the worst case.
    false_pass, _ = _pass_rate(kind, 0.0, config, seed=10)
    bound = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / SETS)
    power, realised = _pass_rate(kind, gain, config, seed=11)
    print(f"\n{kind}: false-pass rate {false_pass:.4f} (bound {bound:.4f}, {SETS} sets of n={N}, alpha {ALPHA}); "
          f"power {power:.4f} at a true improvement of {realised:+.3f} (simulated +{gain:.2f})")
    assert false_pass <= bound
    assert power >= 0.8
