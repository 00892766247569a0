from __future__ import annotations

import numpy as np
import pytest

from tuneloop.stats import (
    StatsError,
    bootstrap_deltas,
    matched_pairs,
    mcnemar_exact,
    paired_bootstrap,
    wilcoxon_signed_rank,
)


def _simulated(n: int, seed: int, base_rate: float = 0.20, cand_rate: float = 0.15):
    """Utterances of 1-20 words; each word wrong with a model-specific probability."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 21, n)
    return rng.binomial(lengths, base_rate), rng.binomial(lengths, cand_rate), lengths


def test_deterministic_for_a_seed_and_independent_of_threads() -> None:
    base, cand, lengths = _simulated(2000, seed=0)
    one = bootstrap_deltas(base, cand, lengths, resamples=3000, seed=7, workers=1)
    two = bootstrap_deltas(base, cand, lengths, resamples=3000, seed=7, workers=2)
    other = bootstrap_deltas(base, cand, lengths, resamples=3000, seed=8, workers=2)
    np.testing.assert_array_equal(one, two)
    assert not np.array_equal(one, other)
    assert paired_bootstrap(base, cand, lengths, resamples=3000, seed=7) == paired_bootstrap(
        base, cand, lengths, resamples=3000, seed=7
    )


def test_does_not_depend_on_utterance_order() -> None:
    base, cand, lengths = _simulated(500, seed=1)
    order = np.random.default_rng(0).permutation(500)
    a = paired_bootstrap(base, cand, lengths, resamples=1000, seed=3)
    b = paired_bootstrap(base[order], cand[order], lengths[order], resamples=1000, seed=3)
    assert a == b


def test_ci_contains_the_true_delta_in_a_simulated_case() -> None:
    base, cand, lengths = _simulated(5000, seed=2)
    result = paired_bootstrap(base, cand, lengths, resamples=4000, seed=0)
    assert result.ci_low < 0.05 < result.ci_high  # the population difference is 0.20 - 0.15
    assert result.ci_low < result.delta < result.ci_high
    assert result.p_value == pytest.approx(1 / 4001)  # every resample favours the candidate
    assert (result.n, result.resamples, result.alpha, result.seed) == (5000, 4000, 0.05, 0)
    assert result.delta == pytest.approx(result.baseline_rate - result.candidate_rate)


def test_ci_coverage_is_near_nominal() -> None:
    """Over 120 simulated test sets, the 90% interval holds the true 0.05 difference about 90% of the time."""
    hits = 0
    for seed in range(120):
        base, cand, lengths = _simulated(400, seed=100 + seed)
        result = paired_bootstrap(base, cand, lengths, resamples=400, seed=seed, alpha=0.10)
        hits += result.ci_low <= 0.05 <= result.ci_high
    assert 0.80 <= hits / 120 <= 0.97


def test_matches_naive_index_resampling_in_distribution() -> None:
    """The grouped multinomial draws must have the spread of textbook index resampling."""
    base, cand, lengths = _simulated(300, seed=3)
    ours = bootstrap_deltas(base, cand, lengths, resamples=4000, seed=1)
    rng = np.random.default_rng(2)
    idx = rng.integers(0, 300, size=(4000, 300))
    naive = (base[idx].sum(1) - cand[idx].sum(1)) / lengths[idx].sum(1)
    assert ours.mean() == pytest.approx(naive.mean(), abs=0.002)
    assert ours.std() == pytest.approx(naive.std(), rel=0.08)


def test_identical_models_are_never_significant() -> None:
    base, _, lengths = _simulated(1000, seed=4)
    result = paired_bootstrap(base, base, lengths, resamples=500)
    assert (result.delta, result.ci_low, result.ci_high, result.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_worse_candidate_has_negative_delta_and_large_p() -> None:
    base, cand, lengths = _simulated(2000, seed=5, base_rate=0.10, cand_rate=0.14)
    result = paired_bootstrap(base, cand, lengths, resamples=1000)
    assert result.delta < 0 and result.ci_high < 0 and result.p_value == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_errors": [1, 2], "cand_errors": [1], "lengths": [3, 3]}, "differ in size"),
        ({"base_errors": [], "cand_errors": [], "lengths": []}, "zero utterances"),
        ({"base_errors": [1], "cand_errors": [1], "lengths": [-1]}, "non-negative"),
        ({"base_errors": [0.5], "cand_errors": [1], "lengths": [2]}, "whole error"),
        ({"base_errors": [1], "cand_errors": [1], "lengths": [2], "alpha": 1.5}, "alpha"),
        ({"base_errors": [1], "cand_errors": [1], "lengths": [2], "resamples": 0}, "resamples"),
    ],
)
def test_bad_inputs(kwargs: dict, message: str) -> None:
    with pytest.raises(StatsError, match=message):
        paired_bootstrap(**kwargs)


def test_wilcoxon_second_opinion() -> None:
    base, cand, lengths = _simulated(500, seed=6)
    better = wilcoxon_signed_rank(base / lengths, cand / lengths)
    assert better.p_value < 0.01 and better.n == 500 and 0 < better.n_nonzero <= 500
    assert wilcoxon_signed_rank(cand / lengths, base / lengths).p_value > 0.99
    assert wilcoxon_signed_rank(base, base).p_value == 1.0


def test_all_rare_pairs_resample_like_index_resampling() -> None:
    """Every (diff, length) pair distinct: everything goes through the pool of rare utterances."""
    rng = np.random.default_rng(9)
    lengths = np.arange(1, 401)
    base = rng.binomial(lengths, 0.2)
    cand = rng.binomial(lengths, 0.15)
    ours = bootstrap_deltas(base, cand, lengths, resamples=4000, seed=1)
    idx = rng.integers(0, 400, size=(4000, 400))
    naive = (base[idx].sum(1) - cand[idx].sum(1)) / lengths[idx].sum(1)
    assert ours.mean() == pytest.approx(naive.mean(), abs=0.002)
    assert ours.std() == pytest.approx(naive.std(), rel=0.08)


def test_95_percent_ci_covers_the_true_difference_at_about_the_nominal_rate() -> None:
    """200 seeded simulated test sets: the 95% interval holds the true 0.05 difference 90-99% of the time."""
    hits = 0
    for rep in range(200):
        base, cand, lengths = _simulated(300, seed=1000 + rep)
        result = paired_bootstrap(base, cand, lengths, resamples=500, seed=rep, alpha=0.05)
        hits += result.ci_low <= 0.05 <= result.ci_high
    assert 0.90 <= hits / 200 <= 0.99


def test_one_sided_lower_bound_goes_with_the_p_value() -> None:
    base, cand, lengths = _simulated(300, seed=5, cand_rate=0.185)
    result = paired_bootstrap(base, cand, lengths, resamples=5000, seed=0)
    assert result.ci_low < result.lower_bound < result.ci_high
    assert (result.p_value < 0.05) == (result.lower_bound > 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wilcoxon_matches_scipy(seed: int) -> None:
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 6, 300) / 10
    cand = np.clip(base - rng.integers(-2, 3, 300) / 10, 0, None)
    ours = wilcoxon_signed_rank(base, cand)
    theirs = wilcoxon(base, cand, zero_method="wilcox", alternative="greater")
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-12)
    assert ours.statistic == pytest.approx(theirs.statistic)
    assert ours.n == 300 and ours.n_nonzero == int(np.count_nonzero(base != cand))


@pytest.mark.parametrize(("fixed", "broken"), [(30, 12), (5, 5), (0, 7), (18, 0), (1, 0)])
def test_mcnemar_matches_scipy_binomtest(fixed: int, broken: int) -> None:
    from scipy.stats import binomtest

    both_right, both_wrong = 40, 25
    base = np.array([False] * fixed + [True] * broken + [True] * both_right + [False] * both_wrong)
    cand = np.array([True] * fixed + [False] * broken + [True] * both_right + [False] * both_wrong)
    result = mcnemar_exact(base, cand)
    assert (result.fixed, result.broken, result.both_right, result.both_wrong) == (fixed, broken, 40, 25)
    assert result.n == base.size
    assert result.p_value == pytest.approx(binomtest(fixed, fixed + broken, 0.5, alternative="greater").pvalue)
    assert result.p_value_two_sided == pytest.approx(binomtest(fixed, fixed + broken, 0.5).pvalue)


def test_mcnemar_without_discordant_items_has_no_evidence() -> None:
    result = mcnemar_exact([True, False, True], [True, False, True])
    assert (result.p_value, result.p_value_two_sided) == (1.0, 1.0)


def test_matched_pairs_z_is_the_one_sample_t_statistic_of_the_error_differences() -> None:
    from scipy.stats import norm, ttest_1samp

    base, cand, _ = _simulated(400, seed=9)
    result = matched_pairs(base, cand)
    t = ttest_1samp(base - cand, 0.0)
    assert result.z == pytest.approx(t.statistic)
    assert result.p_value == pytest.approx(norm.sf(t.statistic))
    assert result.mean_difference == pytest.approx(np.mean(base - cand)) and result.n == 400


def test_matched_pairs_without_spread() -> None:
    assert matched_pairs([2, 2, 2], [1, 1, 1]).p_value == 0.0
    assert matched_pairs([1, 1], [1, 1]).p_value == 1.0
    with pytest.raises(StatsError):
        matched_pairs([1, 2], [1])
