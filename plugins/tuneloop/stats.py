"""Paired significance tests for "is the candidate's corpus error rate lower than the baseline's?".

The paired bootstrap resamples utterances (with replacement, ``n`` out of ``n``), recomputes both corpus rates on
the same resample and looks at the distribution of their difference. Pairing matters: both models are judged on
the same utterances, so the utterance-to-utterance difficulty cancels out and the test is far more sensitive
than comparing two independent confidence intervals.

How it is fast and exact: a resample is a vector of multinomial counts ``w ~ Multinomial(n, 1/n, ..., 1/n)`` and
the statistic only needs ``sum(w * d)`` and ``sum(w * length)`` where ``d = baseline errors - candidate errors``.
Utterances with the same ``(d, length)`` are interchangeable, and merging categories of a multinomial gives a
multinomial, so the counts are drawn over the K distinct ``(d, length)`` pairs instead of the n utterances --
the same distribution, not an approximation. Pairs seen only a few times are merged into one "pool" category
instead; given how many draws land in the pool, each is a uniform pick among the pooled utterances (again
exact), which costs one random index per draw rather than one binomial per pair. K is small for word errors
(about 250 at 100k utterances) and a few thousand for character errors, so 10,000 resamples cost about
``10,000 x K`` binomial draws and one small matrix product, done in fixed-size chunks (bounded memory) over a
few threads (numpy releases the GIL while drawing). Each chunk has its own child seed, so results depend on the
seed and the data only -- not on the thread count or the utterance order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# One chunk holds at most this many multinomial counts (int64) -- 16 MiB -- plus a float64 copy for the product.
MAX_CHUNK_CELLS = 2**21
# Resamples per chunk (at most): small enough to spread over threads evenly. Fixed, never derived from the
# thread count, so the draws -- one child seed per chunk -- are the same however many threads run them.
CHUNK_RESAMPLES = 250
# A (diff, length) pair seen at most this often is cheaper to resample through the pool of rare utterances (a
# uniform index per draw) than as its own multinomial category (one binomial draw per resample, whatever its
# count). Measured on the benchmark's CER (100k utterances, 10k resamples, 1 thread): 0 -> 2.07 s, 1 -> 1.85 s,
# 2 -> 1.81 s, 4 -> 1.90 s, 8 -> 2.02 s, 16 -> 2.45 s.
RARE_PAIR_MAX_COUNT = 2
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)

ArrayLike = Sequence[int] | Sequence[float] | np.ndarray


class StatsError(ValueError):
    """Inputs a test cannot be run on (mismatched lengths, no utterances, bad alpha)."""


@dataclass(frozen=True)
class BootstrapResult:
    """Paired bootstrap of ``delta = baseline corpus rate - candidate corpus rate`` (positive: candidate better).

    ``ci_low``/``ci_high``: two-sided percentile interval at level ``1 - alpha``. ``p_value``: one-sided, the
    share of resamples with ``delta <= 0`` with the +1 correction, ``(1 + #{delta* <= 0}) / (resamples + 1)``,
    so it is never 0 and ``1 / (resamples + 1)`` is the smallest reportable value. ``lower_bound``: the one-sided
    ``1 - alpha`` lower confidence bound (the ``alpha`` quantile), the interval that goes with the one-sided
    p-value (``p_value < alpha`` and ``lower_bound > 0`` agree up to the +1 correction and interpolation), whereas
    the two-sided interval can still reach below 0 when ``alpha / 2 <= p_value < alpha``.
    """

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    resamples: int
    n: int
    alpha: float
    seed: int
    baseline_rate: float
    candidate_rate: float
    lower_bound: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SignedRankResult:
    """Wilcoxon signed-rank test on per-utterance values, one-sided (candidate lower). A second opinion only."""

    statistic: float
    p_value: float
    n_nonzero: int
    n: int
    test: str = "wilcoxon signed-rank (one-sided, zero_method=wilcox)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MatchedPairsResult:
    """NIST's matched-pairs sentence-segment word error test (MAPSSWE), one-sided: candidate makes fewer errors.

    ``mean_difference``: mean over utterances of ``baseline errors - candidate errors``; ``z``: that mean over its
    standard error. Unlike the signed-rank test it weighs a 5-error improvement 5 times a 1-error one.
    """

    mean_difference: float
    std_error: float
    z: float
    p_value: float
    n: int
    test: str = "NIST matched pairs (MAPSSWE, one-sided normal approximation)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's exact test on pass/fail items (an utterance is right when it has no error at all).

    ``fixed``: wrong under the baseline, right under the candidate; ``broken``: the reverse. Only these discordant
    items carry evidence; under "no difference" ``fixed ~ Binomial(fixed + broken, 1/2)``. ``p_value`` is
    one-sided (the candidate gets more items right), ``p_value_two_sided`` the usual two-sided exact test.
    """

    fixed: int
    broken: int
    both_right: int
    both_wrong: int
    p_value: float
    p_value_two_sided: float
    n: int
    test: str = "McNemar exact (binomial on discordant pairs)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_int_vector(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise StatsError(f"{name} must be one-dimensional, got shape {array.shape}")
    whole = np.issubdtype(array.dtype, np.integer) or bool(np.all(np.isfinite(array) & (array == np.round(array))))
    if not whole:
        raise StatsError(f"{name} must hold whole error/length counts")
    return array.astype(np.int64, copy=False)


def paired_bootstrap(
    base_errors: ArrayLike,
    cand_errors: ArrayLike,
    lengths: ArrayLike,
    *,
    resamples: int = 10_000,
    seed: int = 0,
    alpha: float = 0.05,
    workers: int | None = None,
) -> BootstrapResult:
    """Paired bootstrap over utterances of the corpus error-rate difference (see the module docstring).

    ``base_errors``/``cand_errors``: per-utterance edit errors; ``lengths``: reference lengths (words for WER,
    characters for CER). Rates use the metrics convention ``errors / max(total length, 1)``. Deterministic for a
    given seed and data; ``workers`` only changes speed.
    """
    return _bootstrap(base_errors, cand_errors, lengths, resamples, seed, alpha, workers)[1]


def bootstrap_deltas(
    base_errors: ArrayLike,
    cand_errors: ArrayLike,
    lengths: ArrayLike,
    *,
    resamples: int = 10_000,
    seed: int = 0,
    workers: int | None = None,
) -> np.ndarray:
    """The resampled deltas themselves (for plots and tests); same draws as :func:`paired_bootstrap`."""
    deltas, _ = _bootstrap(base_errors, cand_errors, lengths, resamples, seed, 0.05, workers)
    return deltas


def _bootstrap(
    base_errors: ArrayLike,
    cand_errors: ArrayLike,
    lengths: ArrayLike,
    resamples: int,
    seed: int,
    alpha: float,
    workers: int | None,
) -> tuple[np.ndarray, BootstrapResult]:
    base = _as_int_vector(base_errors, "base_errors")
    cand = _as_int_vector(cand_errors, "cand_errors")
    length = _as_int_vector(lengths, "lengths")
    n = base.size
    if not (cand.size == n == length.size):
        raise StatsError(f"base_errors, cand_errors and lengths differ in size: {n}, {cand.size}, {length.size}")
    if n == 0:
        raise StatsError("cannot bootstrap zero utterances")
    if resamples < 1:
        raise StatsError(f"resamples must be >= 1, got {resamples}")
    if not 0 < alpha < 1:
        raise StatsError(f"alpha must be in (0, 1), got {alpha}")
    if np.any(length < 0) or np.any(base < 0) or np.any(cand < 0):
        raise StatsError("errors and lengths must be non-negative")

    total = max(int(length.sum()), 1)
    base_rate = float(base.sum()) / total
    cand_rate = float(cand.sum()) / total
    delta = float((base - cand).sum()) / total

    deltas = _resample(_categories(base - cand, length), n, resamples, seed, workers)
    ci_low, ci_high, lower_bound = np.quantile(deltas, [alpha / 2, 1 - alpha / 2, alpha])
    p_value = (1 + int(np.count_nonzero(deltas <= 0))) / (resamples + 1)
    result = BootstrapResult(
        delta=delta,
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        p_value=p_value,
        resamples=resamples,
        n=n,
        alpha=alpha,
        seed=seed,
        baseline_rate=base_rate,
        candidate_rate=cand_rate,
        lower_bound=float(lower_bound),
    )
    return deltas, result


@dataclass(frozen=True, eq=False)
class _Categories:
    """Utterances grouped for resampling: frequent ``(diff, length)`` pairs and a pool of rare ones."""

    values: np.ndarray  # (K, 2) int64: diff and length of each frequent pair
    probabilities: np.ndarray  # (K + 1,) or (K,): frequent pairs' shares, then the pool's share if any
    pool_diff: np.ndarray  # (U,) one entry per utterance of a rare pair
    pool_length: np.ndarray


def _categories(diff: np.ndarray, length: np.ndarray) -> _Categories:
    """Group utterances by ``(diff, length)``; pairs seen at most RARE_PAIR_MAX_COUNT times go to the pool."""
    low = int(diff.min())
    span = int(length.max()) + 1
    keys = (diff - low) * span + length  # one int64 key per pair; sorted, so the order is data-determined
    unique, counts = np.unique(keys, return_counts=True)
    pairs = np.column_stack([unique // span + low, unique % span])
    rare = counts <= RARE_PAIR_MAX_COUNT
    pool = np.repeat(pairs[rare], counts[rare], axis=0)
    probabilities = counts[~rare] / diff.size
    if len(pool):
        probabilities = np.append(probabilities, len(pool) / diff.size)
    return _Categories(pairs[~rare], probabilities, np.ascontiguousarray(pool[:, 0]), np.ascontiguousarray(pool[:, 1]))


def _resample(groups: _Categories, n: int, resamples: int, seed: int, workers: int | None) -> np.ndarray:
    k, pooled = len(groups.values), len(groups.pool_diff)
    cells_per_resample = k + 1 + pooled  # counts, plus about one index per pooled utterance
    chunk = max(1, min(resamples, CHUNK_RESAMPLES, MAX_CHUNK_CELLS // cells_per_resample))
    starts = list(range(0, resamples, chunk))
    seeds = np.random.SeedSequence(seed).spawn(len(starts))
    deltas = np.empty(resamples, dtype=np.float64)

    def run(index: int) -> None:
        start = starts[index]
        size = min(chunk, resamples - start)
        rng = np.random.default_rng(seeds[index])
        counts = rng.multinomial(n, groups.probabilities, size=size)
        # (size, 2): resampled sum of diffs, resampled total length. Integer product: exact, and it stays out of
        # the BLAS library, whose own threads would fight the chunk threads for the cores.
        sums = (counts[:, :k] @ groups.values).astype(np.float64)
        if pooled:
            # Given how many draws fell in the pool, each is a uniform pick among the pooled utterances.
            in_pool = counts[:, k]
            picks = rng.integers(0, pooled, size=int(in_pool.sum()))
            # Resample r's picks are the r-th run of ``picks``, so its sums are differences of running totals:
            # integers, exact, and about 4x cheaper than a weighted bincount over an owner array.
            ends = np.cumsum(in_pool)
            for column, values in enumerate((groups.pool_diff, groups.pool_length)):
                totals = np.concatenate(([0], np.cumsum(values[picks])))
                sums[:, column] += totals[ends] - totals[ends - in_pool]
        deltas[start : start + size] = sums[:, 0] / np.maximum(sums[:, 1], 1.0)

    threads = max(1, min(workers or DEFAULT_WORKERS, len(starts)))
    if threads == 1:
        for index in range(len(starts)):
            run(index)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(run, range(len(starts))))
    return deltas


def wilcoxon_signed_rank(baseline: ArrayLike, candidate: ArrayLike) -> SignedRankResult:
    """One-sided Wilcoxon signed-rank test that the candidate's per-utterance values are lower.

    Ties (utterances scored the same by both models) carry no information and are dropped (``zero_method=
    "wilcox"``); when every utterance ties there is no evidence and the p-value is 1.
    """
    from scipy.stats import wilcoxon  # scipy is heavy; only the gate needs it

    x = np.asarray(baseline, dtype=np.float64)
    y = np.asarray(candidate, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise StatsError(f"baseline and candidate must be 1-D of the same size, got {x.shape} and {y.shape}")
    nonzero = int(np.count_nonzero(x != y))
    if nonzero == 0:
        return SignedRankResult(statistic=0.0, p_value=1.0, n_nonzero=0, n=x.size)
    test = wilcoxon(x, y, zero_method="wilcox", alternative="greater")
    p_value = float(test.pvalue)
    return SignedRankResult(
        statistic=float(test.statistic), p_value=p_value if math.isfinite(p_value) else 1.0, n_nonzero=nonzero, n=x.size
    )


def matched_pairs(base_errors: ArrayLike, cand_errors: ArrayLike) -> MatchedPairsResult:
    """NIST MAPSSWE: a z-test on the per-utterance difference in error counts (segments = utterances).

    With fewer than two utterances, or when every difference is the same (no spread), there is no standard error:
    a mean difference above 0 then gives p=0, anything else p=1.
    """
    from scipy.stats import norm

    base = _as_int_vector(base_errors, "base_errors")
    cand = _as_int_vector(cand_errors, "cand_errors")
    if base.size != cand.size:
        raise StatsError(f"base_errors and cand_errors differ in size: {base.size}, {cand.size}")
    n = base.size
    if n == 0:
        raise StatsError("cannot test zero utterances")
    diff = (base - cand).astype(np.float64)
    mean = float(diff.mean())
    std_error = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    if std_error == 0.0:
        z = math.inf if mean > 0 else (-math.inf if mean < 0 else 0.0)
        p_value = 0.0 if mean > 0 else 1.0
    else:
        z = mean / std_error
        p_value = float(norm.sf(z))
    return MatchedPairsResult(mean_difference=mean, std_error=std_error, z=z, p_value=p_value, n=n)


def mcnemar_exact(baseline_correct: ArrayLike, candidate_correct: ArrayLike) -> McNemarResult:
    """McNemar's exact test that the candidate gets more items exactly right (see :class:`McNemarResult`)."""
    from scipy.stats import binom

    base = np.asarray(baseline_correct, dtype=bool)
    cand = np.asarray(candidate_correct, dtype=bool)
    if base.shape != cand.shape or base.ndim != 1:
        raise StatsError(f"baseline and candidate must be 1-D of the same size, got {base.shape} and {cand.shape}")
    fixed = int(np.count_nonzero(~base & cand))
    broken = int(np.count_nonzero(base & ~cand))
    discordant = fixed + broken
    if discordant == 0:
        one_sided = two_sided = 1.0
    else:
        one_sided = float(binom.sf(fixed - 1, discordant, 0.5))  # P(X >= fixed)
        tail = float(binom.cdf(min(fixed, broken), discordant, 0.5))
        two_sided = min(1.0, 2.0 * tail)
    return McNemarResult(
        fixed=fixed,
        broken=broken,
        both_right=int(np.count_nonzero(base & cand)),
        both_wrong=int(np.count_nonzero(~base & ~cand)),
        p_value=one_sided,
        p_value_two_sided=two_sided,
        n=int(base.size),
    )


# --- Text tasks: graded per-example scores and win/loss counts -------------------------------------------------

# A per-example score difference at most this large is a tie: F1 values computed along different paths can differ
# in the last bit without either model being better on that example.
TIE_TOLERANCE = 1e-12
# Index resampling draws this many int64 indices per chunk at most (8 MiB); fixed, so results never depend on it.
MEAN_CHUNK_CELLS = 2**20


@dataclass(frozen=True)
class SignTestResult:
    """Sign test: does the candidate win on more examples than it loses? Ties carry no evidence and are dropped.

    Under "no difference" ``wins ~ Binomial(wins + losses, 1/2)``; ``p_value`` is one-sided (more wins), the
    exact binomial tail ``P(X >= wins)``. With no wins and no losses there is no evidence: p=1.
    """

    wins: int
    losses: int
    ties: int
    n: int
    p_value: float
    alpha: float
    test: str = "sign test (one-sided exact binomial on wins vs losses, ties dropped)"

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MeanBootstrapResult:
    """Paired bootstrap of ``delta = candidate mean score - baseline mean score`` (positive: candidate better).

    The same semantics as :class:`BootstrapResult`, for scores where higher is better (token F1, field match):
    ``ci_low``/``ci_high`` the two-sided percentile interval at level ``1 - alpha``; ``p_value`` one-sided,
    ``(1 + #{delta* <= 0}) / (resamples + 1)``; ``lower_bound`` the one-sided ``1 - alpha`` lower bound that goes
    with it.
    """

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    resamples: int
    n: int
    alpha: float
    seed: int
    baseline_mean: float
    candidate_mean: float
    lower_bound: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise StatsError(f"alpha must be in (0, 1), got {alpha}")


def sign_test_counts(wins: int, losses: int, ties: int = 0, *, alpha: float = 0.05) -> SignTestResult:
    """The sign test from counts (e.g. a pairwise judge's wins and losses, inconsistent verdicts as ties)."""
    from scipy.stats import binomtest

    _check_alpha(alpha)
    if min(wins, losses, ties) < 0:
        raise StatsError(f"wins, losses and ties must be >= 0, got {wins}, {losses}, {ties}")
    decided = wins + losses
    p_value = float(binomtest(wins, decided, 0.5, alternative="greater").pvalue) if decided else 1.0
    return SignTestResult(wins=wins, losses=losses, ties=ties, n=decided + ties, p_value=p_value, alpha=alpha)


def sign_test(baseline: ArrayLike, candidate: ArrayLike, *, alpha: float = 0.05) -> SignTestResult:
    """Sign test on paired per-example scores, higher is better: a win is ``candidate > baseline``.

    It ignores by how much each example changed, so it is a robust second opinion next to the bootstrap of the
    mean (a few large changes cannot carry it); differences within ``TIE_TOLERANCE`` are ties.
    """
    base, cand = _paired_floats(baseline, candidate)
    diff = cand - base
    wins = int(np.count_nonzero(diff > TIE_TOLERANCE))
    losses = int(np.count_nonzero(diff < -TIE_TOLERANCE))
    return sign_test_counts(wins, losses, base.size - wins - losses, alpha=alpha)


def _paired_floats(baseline: ArrayLike, candidate: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    base = np.asarray(baseline, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if base.shape != cand.shape or base.ndim != 1:
        raise StatsError(f"baseline and candidate must be 1-D of the same size, got {base.shape} and {cand.shape}")
    if not (np.all(np.isfinite(base)) and np.all(np.isfinite(cand))):
        raise StatsError("scores must be finite numbers")
    return base, cand


def paired_bootstrap_mean(
    baseline: ArrayLike,
    candidate: ArrayLike,
    *,
    resamples: int = 10_000,
    seed: int = 0,
    alpha: float = 0.05,
) -> MeanBootstrapResult:
    """Paired bootstrap over examples of the difference in mean per-example score (see :class:`MeanBootstrapResult`).

    Examples are resampled as pairs, so each example's difficulty cancels out. Deterministic for a given seed and
    data, and independent of the example order.
    """
    return _bootstrap_mean(baseline, candidate, resamples, seed, alpha)[1]


def bootstrap_mean_deltas(
    baseline: ArrayLike, candidate: ArrayLike, *, resamples: int = 10_000, seed: int = 0
) -> np.ndarray:
    """The resampled mean differences themselves (for plots and tests); same draws as :func:`paired_bootstrap_mean`."""
    return _bootstrap_mean(baseline, candidate, resamples, seed, 0.05)[0]


def _bootstrap_mean(
    baseline: ArrayLike, candidate: ArrayLike, resamples: int, seed: int, alpha: float
) -> tuple[np.ndarray, MeanBootstrapResult]:
    base, cand = _paired_floats(baseline, candidate)
    n = base.size
    if n == 0:
        raise StatsError("cannot bootstrap zero examples")
    if resamples < 1:
        raise StatsError(f"resamples must be >= 1, got {resamples}")
    _check_alpha(alpha)
    base_mean, cand_mean = math.fsum(base) / n, math.fsum(cand) / n
    deltas = _resample_mean(cand - base, resamples, seed)
    ci_low, ci_high, lower_bound = np.quantile(deltas, [alpha / 2, 1 - alpha / 2, alpha])
    result = MeanBootstrapResult(
        delta=math.fsum(np.concatenate([cand, -base])) / n,  # correctly rounded: exactly 0.0 when the sums tie
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        p_value=(1 + int(np.count_nonzero(deltas <= 0))) / (resamples + 1),
        resamples=resamples,
        n=n,
        alpha=alpha,
        seed=seed,
        baseline_mean=base_mean,
        candidate_mean=cand_mean,
        lower_bound=float(lower_bound),
    )
    return deltas, result


def _resample_mean(diff: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Bootstrap means of ``diff``, by the cheaper of two exact schemes (as in :func:`_resample`'s docstring).

    Few distinct differences (right/wrong metrics have at most 3, F1 on short answers a few dozen): multinomial
    counts over the distinct values, K draws per resample. Otherwise: n uniform indices per resample, in
    fixed-size chunks. The distinct values come out of ``np.unique`` sorted, so neither scheme depends on the
    example order.
    """
    n = diff.size
    rng = np.random.default_rng(seed)
    values, counts = np.unique(diff, return_counts=True)
    by_category = len(values) * 8 <= n  # a binomial draw costs several uniform indices
    ordered = values if by_category else np.repeat(values, counts)  # sorted: order-independent indexing
    deltas = np.empty(resamples, dtype=np.float64)
    chunk = max(1, MEAN_CHUNK_CELLS // len(ordered))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        if by_category:
            deltas[start : start + size] = (rng.multinomial(n, counts / n, size=size) @ values) / n
        else:
            deltas[start : start + size] = ordered[rng.integers(0, n, size=(size, n))].mean(axis=1)
    return deltas
