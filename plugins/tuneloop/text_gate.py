"""The gate for text models: is the candidate measurably better than production on the same eval examples?

The text counterpart of :func:`tuneloop.gate.gate`, with the same structure and decision record: one pure
function, :func:`text_gate`, turns paired per-example scores and a :class:`TextGateConfig` into a
:class:`TextGateResult` with every number it looked at and every reason in plain words (the same
:class:`~tuneloop.gate.GateCheck` and verdicts as speech, so the branch task and the report read both alike).

Scores are per example, in [0, 1], higher is better (:mod:`tuneloop.text_metrics`); the gate judges one primary
metric. The checks (all must hold to pass):

1. eval size: ``n >= min_eval_size``; otherwise the verdict is ``insufficient_evidence`` (never a pass).
2. better: ``candidate mean - baseline mean`` must be ``> 0`` *and* ``>= min_improvement``; a candidate that
   changes nothing is not worth a deployment.
3. significant at ``significance_alpha``, one-sided: for right/wrong metrics (exact match, contains, JSON
   validity) McNemar's exact test on the examples the two models disagree on; for graded metrics (token F1,
   JSON field match) the paired bootstrap of the mean difference.
4. newly broken: the share of examples production got right (score >= ``right_threshold``) and the candidate
   gets wrong stays within ``max_newly_broken_rate``. A better average must not hide answers users relied on.
5. slices (only when ``slices`` are declared, e.g. ``domain``, ``task_type``): each value with at least
   ``min_n`` examples may fall by at most its ``max_score_drop``; smaller values are reported, not gated.

Second opinions are recorded, never gating: the sign test on per-example wins vs losses (how many examples
changed, not by how much), and for right/wrong metrics the bootstrap interval of the accuracy change (the
interval the reasons show). Every statistic states its alpha, resamples and n.

Why the false-pass rate stays at most ``alpha``: with no real difference the one-sided tests reject with
probability at most ``alpha`` (McNemar's exact test is conservative, the percentile bootstrap about exact at
these sizes) and the other checks can only turn a pass into a fail. ``tests/tuneloop/test_text_gate.py``
measures it on simulated no-improvement test sets, and the power on a true improvement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tuneloop.config import SliceSpec
from tuneloop.gate import GateCheck, Verdict, format_ci, format_interval, format_p, json_safe, sign
from tuneloop.slices import slice_values
from tuneloop.stats import (
    McNemarResult,
    MeanBootstrapResult,
    SignTestResult,
    mcnemar_exact,
    paired_bootstrap_mean,
    sign_test,
)
from tuneloop.text_metrics import BINARY_METRICS, TEXT_METRICS, TextMetric, TextScores

NEWLY_BROKEN_IDS_KEPT = 100
NEWLY_BROKEN_IDS_IN_REASON = 5


class TextGateError(ValueError):
    """Scores the gate cannot judge: misaligned, outside [0, 1], another metric than the configured one."""


@dataclass(frozen=True)
class TextSliceResult:
    """One value of one slice field (e.g. ``domain=billing``): its size, both means of the primary metric, the
    change and whether it was gated (``n >= min_n``) and passed (fell by at most ``max_score_drop``)."""

    field: str
    value: str
    n: int
    baseline_mean: float
    candidate_mean: float
    change: float
    max_score_drop: float
    min_n: int
    gated: bool
    passed: bool

    @property
    def name(self) -> str:
        return f"{self.field}={self.value}"

    def sentence(self, metric: str) -> str:
        change = f"{metric} {self.baseline_mean:.3f} → {self.candidate_mean:.3f} ({self.change:+.3f}, n={self.n})"
        if not self.gated:
            return f"slice {self.name}: {change}; reported only, fewer than min_n {self.min_n}"
        if self.passed:
            return f"slice {self.name}: {change}, within max_score_drop {self.max_score_drop:g}"
        return f"slice {self.name} got worse: {change}, a fall beyond max_score_drop {self.max_score_drop:g}"


def evaluate_text_slices(scores: PairedScores, rows: Sequence[dict[str, Any]],
                         specs: Sequence[SliceSpec]) -> tuple[TextSliceResult, ...]:
    """Every value of every declared slice field (``rows``: each example's fields, aligned with the scores),
    biggest first within a field; rows without the field fall in ``(missing)``, numeric fields into buckets."""
    results: list[TextSliceResult] = []
    for spec in specs:
        names, inverse, sizes = np.unique(slice_values(rows, spec), return_inverse=True, return_counts=True)
        for index in np.argsort(-sizes, kind="stable"):
            members = np.flatnonzero(inverse == index)
            base, cand = scores.baseline[members], scores.candidate[members]
            change = math.fsum(np.concatenate([cand, -base])) / members.size
            gated = members.size >= spec.min_n
            results.append(TextSliceResult(
                field=spec.field, value=str(names[index]), n=int(members.size), baseline_mean=float(base.mean()),
                candidate_mean=float(cand.mean()), change=change, max_score_drop=spec.max_score_drop,
                min_n=spec.min_n, gated=gated, passed=not gated or -change <= spec.max_score_drop + 1e-12))
    return tuple(results)


def _check_slices(slices: tuple[TextSliceResult, ...], metric: str) -> GateCheck:
    failed = [s for s in slices if not s.passed]
    if failed:
        return GateCheck("slices", False, "; ".join(s.sentence(metric) for s in failed))
    gated = sum(1 for s in slices if s.gated)
    return GateCheck("slices", True, f"{gated} slice value(s) gated, none fell beyond its max_score_drop")


class TextGateConfig(BaseModel):
    """Thresholds of the text gate (:meth:`from_validation` reads them from the configuration)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    primary_metric: TextMetric = Field("exact_match", description="the per-example score the gate judges")
    significance_alpha: float = Field(0.05, gt=0, lt=1, description="one-sided level of the significance test")
    min_eval_size: int = Field(20, ge=1, description="below this many paired examples: insufficient evidence")
    min_improvement: float = Field(0.0, ge=0, le=1, description="required rise of the primary metric's mean")
    max_newly_broken_rate: float | None = Field(
        0.05, ge=0, le=1, description="cap on the share of examples production got right and the candidate gets "
                                      "wrong (None: no cap)"
    )
    right_threshold: float = Field(
        1.0, gt=0, le=1, description="a score at or above this counts as right (for newly broken examples); "
                                     "right/wrong metrics score 0 or 1"
    )
    bootstrap_resamples: int = Field(10_000, ge=100)
    seed: int = 0
    slices: tuple[SliceSpec, ...] = Field((), description="fields gated value by value (domain, task_type, ...)")

    @classmethod
    def from_validation(cls, validation: Any) -> TextGateConfig:
        """The gate's settings from a ``ValidationConfig``: its ``text`` section plus the shared thresholds."""
        text = validation.text
        return cls(primary_metric=text.primary_metric, significance_alpha=validation.significance_alpha,
                   min_eval_size=validation.min_eval_size, min_improvement=text.min_improvement,
                   max_newly_broken_rate=validation.max_newly_broken_rate, right_threshold=text.right_threshold,
                   bootstrap_resamples=validation.bootstrap_resamples, seed=validation.bootstrap_seed,
                   slices=validation.slices)


@dataclass(frozen=True)
class TextPair:
    """One eval example scored for both models."""

    id: str
    baseline: TextScores
    candidate: TextScores


@dataclass(frozen=True, eq=False)
class PairedScores:
    """The primary metric's per-example scores of both models, aligned with ``ids`` (read-only arrays).

    The gate's input in columns: built from :class:`TextPair` rows by :meth:`from_pairs`, or directly (e.g. by a
    simulation) without one object per example.
    """

    metric: TextMetric
    ids: tuple[str, ...]
    baseline: np.ndarray
    candidate: np.ndarray

    def __post_init__(self) -> None:
        if self.metric not in TEXT_METRICS:
            raise TextGateError(f"unknown text metric {self.metric!r}; known: {', '.join(TEXT_METRICS)}")
        base = np.array(self.baseline, dtype=np.float64)
        cand = np.array(self.candidate, dtype=np.float64)
        n = len(self.ids)
        if base.shape != (n,) or cand.shape != (n,):
            raise TextGateError(f"{n} ids but baseline/candidate scores of shape {base.shape} and {cand.shape}")
        if not (np.all((base >= 0) & (base <= 1)) and np.all((cand >= 0) & (cand <= 1))):
            raise TextGateError(f"{self.metric} scores must lie in [0, 1]")
        if self.binary and not (np.all((base == 0) | (base == 1)) and np.all((cand == 0) | (cand == 1))):
            raise TextGateError(f"{self.metric} is right/wrong: scores must be 0 or 1")
        for array in (base, cand):
            array.setflags(write=False)
        object.__setattr__(self, "baseline", base)
        object.__setattr__(self, "candidate", cand)

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def binary(self) -> bool:
        return self.metric in BINARY_METRICS

    @classmethod
    def from_pairs(cls, pairs: Sequence[TextPair], metric: TextMetric) -> PairedScores:
        return cls(
            metric=metric,
            ids=tuple(p.id for p in pairs),
            baseline=np.array([p.baseline.value(metric) for p in pairs], dtype=np.float64),
            candidate=np.array([p.candidate.value(metric) for p in pairs], dtype=np.float64),
        )


@dataclass(frozen=True)
class TextGateResult:
    """Everything the text gate decided and why. ``reasons``: every failed check's sentence, or on a pass all.

    ``improvement``: ``candidate_mean - baseline_mean`` of the primary metric. ``significance_test``: which test
    gated (``mcnemar`` or ``bootstrap``). ``secondary``: the other scores' means (and generated tokens, latency)
    per model, reported only; present when the gate got :class:`TextPair` rows.
    """

    passed: bool
    verdict: Verdict
    n: int
    metric: TextMetric
    baseline_mean: float
    candidate_mean: float
    improvement: float
    min_improvement: float
    significance_test: str
    mcnemar: McNemarResult | None
    bootstrap: MeanBootstrapResult | None
    sign_test: SignTestResult | None
    improved_count: int
    degraded_count: int
    newly_fixed: int
    newly_broken: int
    newly_broken_rate: float
    newly_broken_ids: tuple[str, ...]
    secondary: dict[str, dict[str, float]]
    checks: tuple[GateCheck, ...]
    reasons: tuple[str, ...]
    thresholds: dict[str, Any]
    alpha: float
    slices: tuple[TextSliceResult, ...] = ()

    @property
    def p_value(self) -> float | None:
        """The gating test's one-sided p-value (None when there were no examples)."""
        if self.mcnemar is not None and self.significance_test == "mcnemar":
            return self.mcnemar.p_value
        return self.bootstrap.p_value if self.bootstrap else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: tuples become lists, non-finite floats become None."""
        return json_safe(self)


def text_gate(pairs: Sequence[TextPair] | PairedScores, config: TextGateConfig,
              rows: Sequence[dict[str, Any]] | None = None) -> TextGateResult:
    """Judge the candidate against production on paired per-example text scores (see the module docstring).

    ``rows``: each example's other fields (domain, task type, ...), aligned with ``pairs``, for ``config.slices``.
    """
    if isinstance(pairs, PairedScores):
        scores, secondary = pairs, {}
        if scores.metric != config.primary_metric:
            raise TextGateError(f"scores are {scores.metric}, but the primary metric is {config.primary_metric}")
    else:
        scores, secondary = PairedScores.from_pairs(pairs, config.primary_metric), _secondary(pairs)
    n, metric, alpha = scores.n, scores.metric, config.significance_alpha
    base, cand = scores.baseline, scores.candidate

    baseline_mean = math.fsum(base) / n if n else 0.0
    candidate_mean = math.fsum(cand) / n if n else 0.0
    # correctly rounded: exactly 0 when the sums tie (0.7 - 0.6 would be 0.09999999999999998, "below 0.1")
    improvement = math.fsum(np.concatenate([cand, -base])) / n if n else 0.0
    bootstrap = signs = mcnemar = None
    if n:
        bootstrap = paired_bootstrap_mean(base, cand, resamples=config.bootstrap_resamples, seed=config.seed,
                                          alpha=alpha)
        signs = sign_test(base, cand, alpha=alpha)
        if scores.binary:
            mcnemar = mcnemar_exact(base == 1, cand == 1)

    right_before, right_now = base >= config.right_threshold, cand >= config.right_threshold
    broken = np.flatnonzero(right_before & ~right_now)
    fixed = int(np.count_nonzero(~right_before & right_now))
    broken_ids = tuple(scores.ids[i] for i in broken[:NEWLY_BROKEN_IDS_KEPT])
    broken_rate = len(broken) / n if n else 0.0

    checks = (
        _check_size(n, config),
        _check_improvement(metric, baseline_mean, candidate_mean, improvement, bootstrap, config),
        _check_significance(metric, mcnemar, bootstrap, signs, config),
        _check_newly_broken(len(broken), fixed, n, broken_ids, config),
    )
    slices: tuple[TextSliceResult, ...] = ()
    if config.slices and n:
        if rows is None or len(rows) != n:
            raise TextGateError(f"config.slices needs each example's fields: got {0 if rows is None else len(rows)} "
                                f"rows for {n} examples")
        slices = evaluate_text_slices(scores, rows, config.slices)
        checks = (*checks, _check_slices(slices, metric))
    passed = all(c.passed for c in checks)
    verdict: Verdict = "pass" if passed else ("insufficient_evidence" if not checks[0].passed else "fail")
    reasons = tuple(c.detail for c in checks if passed or not c.passed)
    if not checks[0].passed:  # too small to judge: the other checks' outcomes are not evidence either way
        reasons = (checks[0].detail,)
    return TextGateResult(
        passed=passed,
        verdict=verdict,
        n=n,
        metric=metric,
        baseline_mean=baseline_mean,
        candidate_mean=candidate_mean,
        improvement=improvement,
        min_improvement=config.min_improvement,
        significance_test="mcnemar" if scores.binary else "bootstrap",
        mcnemar=mcnemar,
        bootstrap=bootstrap,
        sign_test=signs,
        improved_count=signs.wins if signs else 0,
        degraded_count=signs.losses if signs else 0,
        newly_fixed=fixed,
        newly_broken=len(broken),
        newly_broken_rate=broken_rate,
        newly_broken_ids=broken_ids,
        secondary=secondary,
        checks=checks,
        reasons=reasons,
        thresholds=config.model_dump(mode="json"),
        alpha=alpha,
        slices=slices,
    )


def _secondary(pairs: Sequence[TextPair]) -> dict[str, dict[str, float]]:
    """Means per model of every score that every example has (reported, not gated)."""
    summary: dict[str, dict[str, float]] = {}
    for name in (*TEXT_METRICS, "generated_tokens", "latency_s"):
        base = [getattr(p.baseline, name) for p in pairs]
        cand = [getattr(p.candidate, name) for p in pairs]
        if pairs and None not in base and None not in cand:
            summary[name] = {"baseline": math.fsum(map(float, base)) / len(pairs),
                             "candidate": math.fsum(map(float, cand)) / len(pairs)}
    return summary


def _check_size(n: int, config: TextGateConfig) -> GateCheck:
    if n >= config.min_eval_size:
        return GateCheck("eval_size", True, f"{n} paired eval examples (min_eval_size {config.min_eval_size})")
    return GateCheck(
        "eval_size",
        False,
        f"only {n} paired eval examples, fewer than min_eval_size {config.min_eval_size}: not enough evidence "
        "to judge the candidate",
    )


def _check_improvement(
    metric: str, baseline: float, candidate: float, improvement: float, boot: MeanBootstrapResult | None,
    config: TextGateConfig,
) -> GateCheck:
    name = f"{metric}_improvement"
    change = f"{baseline:.3f} → {candidate:.3f} ({_signed(improvement)}{format_ci(boot)})"
    floor = f"min_improvement {config.min_improvement:.3f}"
    if improvement <= 0:
        worse = "got worse" if improvement < 0 else "did not change"
        return GateCheck(name, False, f"{metric} {worse}: {change}; the candidate must be strictly better")
    if improvement < config.min_improvement:
        return GateCheck(name, False, f"{metric} improved by only {improvement:.3f}: {change}, below {floor}")
    return GateCheck(name, True, f"{metric} improved: {change}; {floor}")


def _check_significance(
    metric: str,
    mcnemar: McNemarResult | None,
    boot: MeanBootstrapResult | None,
    signs: SignTestResult | None,
    config: TextGateConfig,
) -> GateCheck:
    alpha = config.significance_alpha
    if boot is None or signs is None:
        return GateCheck("significance", False, f"{metric} improvement is not significant: no examples to test")
    second = (f"; second opinion, sign test: {signs.wins} wins vs {signs.losses} losses, {signs.ties} ties, "
              f"p={format_p(signs.p_value)}")
    if mcnemar is not None:
        p_value = mcnemar.p_value
        test = (f"one-sided McNemar exact test: {mcnemar.fixed} fixed vs {mcnemar.broken} broken of "
                f"{mcnemar.fixed + mcnemar.broken} examples the models disagree on, n={mcnemar.n}")
    else:
        p_value = boot.p_value
        test = (f"{1 - alpha:.0%} lower bound {boot.lower_bound:+.3f}, {format_interval(boot)}; one-sided paired "
                f"bootstrap, {boot.resamples:,} resamples over n={boot.n}")
    if p_value < alpha:
        return GateCheck("significance", True, f"{metric} improvement is significant: p={format_p(p_value)} < alpha "
                                               f"{alpha:g} ({test}){second}")
    return GateCheck("significance", False, f"{metric} improvement is not significant: p={format_p(p_value)} >= alpha "
                                            f"{alpha:g} ({test}){second}")


def _check_newly_broken(count: int, fixed: int, n: int, ids: tuple[str, ...], config: TextGateConfig) -> GateCheck:
    rate = count / n if n else 0.0
    sentence = (f"{count} example(s) newly broken, right before and wrong now ({rate:.1%}; {fixed} newly fixed; "
                f"right means a score >= {config.right_threshold:g})")
    cap = config.max_newly_broken_rate
    if cap is None:
        return GateCheck("newly_broken", True, f"{sentence}, no cap set")
    if rate > cap:
        shown = ", ".join(repr(i) for i in ids[:NEWLY_BROKEN_IDS_IN_REASON])
        return GateCheck("newly_broken", False, f"{sentence}, above max_newly_broken_rate {cap:.1%}: e.g. {shown}")
    return GateCheck("newly_broken", True, f"{sentence}, within max_newly_broken_rate {cap:.1%}")


def _signed(x: float) -> str:
    return f"{sign(x)}{abs(x):.3f}"
