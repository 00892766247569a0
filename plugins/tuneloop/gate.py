"""The gate: is the candidate measurably better than production on the same eval utterances?

One pure function, :func:`gate`, turns paired predictions and a :class:`~tuneloop.config.ValidationConfig` into
a :class:`GateResult` carrying every number it looked at and every reason in plain words. The ``decide`` branch
reads ``verdict`` only; the decision record shows the rest.

The checks (all must hold to pass):

1. eval size: ``n >= min_eval_size``; otherwise the verdict is ``insufficient_evidence`` (never a pass).
2. WER improvement ``baseline WER - candidate WER`` (absolute) must be ``> 0`` *and* ``>= min_wer_improvement``:
   with the default minimum of 0 a candidate identical to production must still fail -- retraining that changes
   nothing is not worth a deployment.
3. CER improvement must be ``>= min_cer_improvement`` (with the default 0: CER must not get worse).
4. when ``require_significance``: the paired-bootstrap one-sided p-value of the WER improvement must be
   ``< significance_alpha``.
5. the share of utterances whose WER got worse must be ``<= max_wer_degradation_rate``.
6. when ``require_no_major_degradation``: no utterance's WER may rise by more than
   ``major_degradation_threshold`` (absolute).

7. every declared slice with enough utterances stays within its ``max_wer_increase`` (:mod:`tuneloop.slices`).
8. newly broken utterances (production right, candidate wrong) stay within ``max_newly_broken`` and
   ``max_newly_broken_rate`` (:mod:`tuneloop.churn`).

Per-utterance "worse" compares error counts over the same reference, so it is exact (no float ties). Second
opinions are recorded, never gating: the Wilcoxon signed-rank test on per-utterance WER, NIST's matched-pairs
test on per-utterance error counts and McNemar's exact test on exactly-right utterances. Every statistic states
its alpha, resamples and n.

First run (no production model): with ``first_run_policy: absolute`` the checks are the eval size and the
candidate's own WER (and CER) against ``first_run_max_wer`` (``first_run_max_cer``); the comparison with the base
model is still computed and shown. With ``require_approval`` the usual checks run against the base model and a
pass sets ``requires_approval``: a person decides the first deployment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Literal

import numpy as np

from tuneloop.churn import ChurnReport, churn
from tuneloop.config import ValidationConfig
from tuneloop.metrics import ScoredPair, score_pair
from tuneloop.predictions import PairedPrediction
from tuneloop.slices import SliceResult, evaluate_slices
from tuneloop.stats import (
    BootstrapResult,
    MatchedPairsResult,
    McNemarResult,
    SignedRankResult,
    matched_pairs,
    mcnemar_exact,
    paired_bootstrap,
    wilcoxon_signed_rank,
)

Verdict = Literal["pass", "fail", "insufficient_evidence"]
WORST_SHOWN = 5
MAJOR_IDS_KEPT = 100
MAJOR_IDS_IN_REASON = 5


@dataclass(frozen=True)
class MetricComparison:
    """Baseline vs candidate corpus rate of one metric; ``improvement`` is ``baseline - candidate``."""

    metric: Literal["wer", "cer"]
    baseline: float
    candidate: float
    improvement: float
    relative_improvement: float | None
    min_improvement: float
    bootstrap: BootstrapResult | None


@dataclass(frozen=True)
class Degradation:
    """One utterance the candidate transcribes worse than production."""

    id: str
    baseline_wer: float
    candidate_wer: float
    increase: float
    reference: str | None = None
    baseline_hypothesis: str | None = None
    candidate_hypothesis: str | None = None


@dataclass(frozen=True)
class GateCheck:
    """One condition of the gate: its outcome and a sentence with the numbers behind it."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class GateResult:
    """Everything the gate decided and why. ``reasons``: every failed check's sentence, or on a pass all of them."""

    passed: bool
    verdict: Verdict
    n: int
    wer: MetricComparison
    cer: MetricComparison
    baseline_exact_match_rate: float
    candidate_exact_match_rate: float
    improved_count: int
    degraded_count: int
    degradation_rate: float
    major_degradation_count: int
    major_degradation_ids: tuple[str, ...]
    worst_degradations: tuple[Degradation, ...]
    wilcoxon: SignedRankResult | None
    matched_pairs: MatchedPairsResult | None
    mcnemar: McNemarResult | None
    slices: tuple[SliceResult, ...]
    churn: ChurnReport
    checks: tuple[GateCheck, ...]
    reasons: tuple[str, ...]
    thresholds: dict[str, Any]
    alpha: float
    first_run: bool = False
    policy: Literal["compare", "absolute", "require_approval"] = "compare"

    @property
    def requires_approval(self) -> bool:
        """A pass that a person must still approve before deployment (first run under ``require_approval``)."""
        return self.passed and self.policy == "require_approval"

    @property
    def baseline_wer(self) -> float:
        return self.wer.baseline

    @property
    def candidate_wer(self) -> float:
        return self.wer.candidate

    @property
    def wer_improvement(self) -> float:
        return self.wer.improvement

    @property
    def p_value(self) -> float | None:
        return self.wer.bootstrap.p_value if self.wer.bootstrap else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: tuples become lists, non-finite floats become None."""
        return json_safe(self)


def gate(
    paired: Sequence[PairedPrediction] | ScoredPair, config: ValidationConfig, *, first_run: bool = False
) -> GateResult:
    """Judge the candidate against production on paired eval predictions (see the module docstring).

    ``first_run``: there is no production model; the baseline predictions come from the base model the candidate
    was trained from, and ``config.first_run_policy`` applies.
    """
    scored = paired if isinstance(paired, ScoredPair) else score_pair(paired)
    n = scored.n
    base, cand = scored.baseline, scored.candidate

    # The CER bootstrap is the long pole (about 2 s of CPU at 100k utterances: a few thousand (diff, length)
    # categories to draw); the WER and slice bootstraps run beside it. numpy draws without holding the GIL, so this
    # keeps every core busy, and each bootstrap seeds itself: the results are those of running them in turn.
    with ThreadPoolExecutor(max_workers=1) as background:
        wer_job = background.submit(_compare, "wer", base.word_errors, cand.word_errors, base.reference_words,
                                    config.min_wer_improvement, config)
        slices_job = background.submit(evaluate_slices, scored, config.slices, resamples=config.slice_resamples,
                                       seed=config.bootstrap_seed, alpha=config.significance_alpha) if n else None
        cer = _compare("cer", base.char_errors, cand.char_errors, base.reference_chars, config.min_cer_improvement,
                       config)
    wer = wer_job.result()
    slices = slices_job.result() if slices_job else ()

    base_wer_u, cand_wer_u = base.utterance_wer, cand.utterance_wer
    # from the counts, not cand_wer_u - base_wer_u: 0.8 - 0.3 is 0.5000000000000001 and would be "more than 0.5"
    increase = (cand.word_errors - base.word_errors) / np.maximum(base.reference_words, 1)
    degraded = cand.word_errors > base.word_errors
    degraded_count = int(degraded.sum())
    major_idx = np.flatnonzero(increase > config.major_degradation_threshold)
    major_idx = major_idx[np.argsort(-increase[major_idx], kind="stable")]
    worst_idx = np.argsort(-increase, kind="stable")[:WORST_SHOWN]
    worst = tuple(_degradation(scored, int(i), base_wer_u, cand_wer_u, increase) for i in worst_idx if degraded[i])
    majors = [_degradation(scored, int(i), base_wer_u, cand_wer_u, increase) for i in major_idx[:MAJOR_IDS_IN_REASON]]
    changes = churn(scored)

    policy = "compare" if not first_run else config.first_run_policy
    if policy == "absolute":
        checks = (_check_size(n, config), *_check_absolute(wer, cer, config))
    else:
        checks = (
            _check_size(n, config),
            _check_improvement(wer, strict=True),
            _check_improvement(cer, strict=False),
            _check_significance(wer, config),
            _check_degradation_rate(degraded_count, n, config),
            _check_major(len(major_idx), majors, config),
            _check_slices(slices, config),
            _check_newly_broken(changes, config),
        )
    passed = all(c.passed for c in checks)
    verdict: Verdict = "pass" if passed else ("insufficient_evidence" if not checks[0].passed else "fail")
    reasons = tuple(c.detail for c in checks if passed or not c.passed)
    if not checks[0].passed:  # too small to judge: the other checks' outcomes are not evidence either way
        reasons = (checks[0].detail,)
    return GateResult(
        passed=passed,
        verdict=verdict,
        n=n,
        wer=wer,
        cer=cer,
        baseline_exact_match_rate=base.exact_match_rate,
        candidate_exact_match_rate=cand.exact_match_rate,
        improved_count=int((cand.word_errors < base.word_errors).sum()),
        degraded_count=degraded_count,
        degradation_rate=degraded_count / n if n else 0.0,
        major_degradation_count=len(major_idx),
        major_degradation_ids=tuple(scored.baseline.ids[i] for i in major_idx[:MAJOR_IDS_KEPT]),
        worst_degradations=worst,
        wilcoxon=wilcoxon_signed_rank(base_wer_u, cand_wer_u) if n else None,
        matched_pairs=matched_pairs(base.word_errors, cand.word_errors) if n else None,
        mcnemar=mcnemar_exact(base.word_errors == 0, cand.word_errors == 0) if n else None,
        slices=slices,
        churn=changes,
        checks=checks,
        reasons=reasons,
        thresholds=config.model_dump(mode="json"),
        alpha=config.significance_alpha,
        first_run=first_run,
        policy=policy,
    )


def _compare(
    metric: Literal["wer", "cer"],
    base_errors: np.ndarray,
    cand_errors: np.ndarray,
    lengths: np.ndarray,
    min_improvement: float,
    config: ValidationConfig,
) -> MetricComparison:
    total = max(int(lengths.sum()), 1)
    baseline = int(base_errors.sum()) / total
    candidate = int(cand_errors.sum()) / total
    improvement = (int(base_errors.sum()) - int(cand_errors.sum())) / total  # exact 0 when the counts tie
    bootstrap = None
    if len(lengths):
        bootstrap = paired_bootstrap(
            base_errors,
            cand_errors,
            lengths,
            resamples=config.bootstrap_resamples,
            seed=config.bootstrap_seed,
            alpha=config.significance_alpha,
        )
    return MetricComparison(
        metric=metric,
        baseline=baseline,
        candidate=candidate,
        improvement=improvement,
        relative_improvement=improvement / baseline if baseline > 0 else None,
        min_improvement=min_improvement,
        bootstrap=bootstrap,
    )


def _degradation(
    scored: ScoredPair, i: int, base_wer: np.ndarray, cand_wer: np.ndarray, increase: np.ndarray
) -> Degradation:
    pair = scored.pairs[i] if scored.pairs else None
    return Degradation(
        id=scored.baseline.ids[i],
        baseline_wer=float(base_wer[i]),
        candidate_wer=float(cand_wer[i]),
        increase=float(increase[i]),
        reference=pair.reference if pair else None,
        baseline_hypothesis=pair.baseline_hypothesis if pair else None,
        candidate_hypothesis=pair.candidate_hypothesis if pair else None,
    )


def _check_size(n: int, config: ValidationConfig) -> GateCheck:
    if n >= config.min_eval_size:
        return GateCheck("eval_size", True, f"{n} paired eval utterances (min_eval_size {config.min_eval_size})")
    return GateCheck(
        "eval_size",
        False,
        f"only {n} paired eval utterances, fewer than min_eval_size {config.min_eval_size}: not enough evidence "
        "to judge the candidate",
    )


def _check_improvement(m: MetricComparison, *, strict: bool) -> GateCheck:
    name, label = f"{m.metric}_improvement", m.metric.upper()
    change = f"{m.baseline:.3f} → {m.candidate:.3f} ({_signed(-m.improvement)}{_relative(m)}{format_ci(m.bootstrap)})"
    floor = f"min_{m.metric}_improvement {m.min_improvement:.3f}"
    if strict and m.improvement <= 0:
        worse = "got worse" if m.improvement < 0 else "did not change"
        return GateCheck(name, False, f"{label} {worse}: {change}; the candidate must be strictly better")
    if m.improvement < m.min_improvement:
        if m.improvement < 0:
            return GateCheck(name, False, f"{label} got worse: {change}; {floor} requires no increase")
        return GateCheck(name, False, f"{label} improved by only {m.improvement:.3f}: {change}, below {floor}")
    verb = "improved" if m.improvement > 0 else "did not get worse"
    return GateCheck(name, True, f"{label} {verb}: {change}; {floor}")


def _check_significance(m: MetricComparison, config: ValidationConfig) -> GateCheck:
    boot = m.bootstrap
    alpha = config.significance_alpha
    if not config.require_significance:
        stats = f" (for the record: p={format_p(boot.p_value)})" if boot else ""
        return GateCheck("significance", True, f"significance not required (require_significance=false){stats}")
    if boot is None:
        return GateCheck("significance", False, "WER improvement is not significant: no utterances to test")
    test = (f"{1 - alpha:.0%} lower bound {boot.lower_bound:+.3f}, {format_interval(boot)}; one-sided paired bootstrap, "
            f"{boot.resamples:,} resamples over n={boot.n}")
    if boot.p_value < alpha:
        return GateCheck(
            "significance", True, f"WER improvement is significant: p={format_p(boot.p_value)} < alpha {alpha:g} ({test})"
        )
    return GateCheck(
        "significance", False, f"WER improvement is not significant: p={format_p(boot.p_value)} >= alpha {alpha:g} ({test})"
    )


def _check_degradation_rate(degraded: int, n: int, config: ValidationConfig) -> GateCheck:
    rate = degraded / n if n else 0.0
    cap = config.max_wer_degradation_rate
    share = f"{rate:.1%} of utterances got a higher WER ({degraded} of {n})"
    if rate <= cap:
        return GateCheck("degradation_rate", True, f"{share}, within max_wer_degradation_rate {cap:.1%}")
    return GateCheck("degradation_rate", False, f"{share}, above max_wer_degradation_rate {cap:.1%}")


def _check_major(count: int, majors: list[Degradation], config: ValidationConfig) -> GateCheck:
    threshold = config.major_degradation_threshold
    if count == 0:
        return GateCheck("major_degradation", True, f"no utterance got worse by more than {threshold:g} WER")
    shown = ", ".join(f"{d.id!r} ({d.baseline_wer:.2f} → {d.candidate_wer:.2f})" for d in majors)
    more = f" and {count - len(majors)} more" if count > len(majors) else ""
    sentence = f"{count} utterance(s) got worse by more than {threshold:g} WER: {shown}{more}"
    if not config.require_no_major_degradation:
        return GateCheck("major_degradation", True, f"{sentence} (allowed: require_no_major_degradation=false)")
    return GateCheck("major_degradation", False, sentence)


def _check_slices(slices: tuple[SliceResult, ...], config: ValidationConfig) -> GateCheck:
    if not config.slices:
        return GateCheck("slices", True, "no slices declared (validation.slices)")
    gated = [s for s in slices if s.gated]
    failed = [s for s in gated if not s.passed]
    if failed:
        return GateCheck("slices", False, "; ".join(s.sentence() for s in failed))
    fields_ = ", ".join(spec.field for spec in config.slices)
    return GateCheck("slices", True, f"{len(gated)} gated slice value(s) of {fields_} within tolerance "
                                     f"({len(slices) - len(gated)} too small, reported only)")


def _check_newly_broken(changes: ChurnReport, config: ValidationConfig) -> GateCheck:
    count, rate = changes.newly_broken, changes.newly_broken_rate
    caps = []
    if config.max_newly_broken is not None:
        caps.append(("max_newly_broken", count > config.max_newly_broken, f"{config.max_newly_broken}"))
    if config.max_newly_broken_rate is not None:
        limit = config.max_newly_broken_rate
        caps.append(("max_newly_broken_rate", rate > limit, f"{limit:.1%}"))
    sentence = f"{count} utterance(s) newly broken ({rate:.1%}; churn: {changes.sentence()})"
    broken = [f"{name} {limit}" for name, over, limit in caps if over]
    if broken:
        ids = ", ".join(repr(e.id) for e in changes.examples.get("newly_broken", ())[:MAJOR_IDS_IN_REASON])
        return GateCheck("newly_broken", False, f"{sentence}, above {' and '.join(broken)}: e.g. {ids}")
    limits = " and ".join(f"{name} {limit}" for name, _, limit in caps) or "no cap set"
    return GateCheck("newly_broken", True, f"{sentence}, within {limits}")


def _check_absolute(wer: MetricComparison, cer: MetricComparison, config: ValidationConfig) -> tuple[GateCheck, ...]:
    prefix = "first run, no production model (first_run_policy=absolute): "
    checks = [_ceiling("wer", wer.candidate, config.first_run_max_wer, prefix)]
    if config.first_run_max_cer is not None:
        checks.append(_ceiling("cer", cer.candidate, config.first_run_max_cer, prefix))
    return tuple(checks)


def _ceiling(metric: str, value: float, ceiling: float, prefix: str) -> GateCheck:
    label = metric.upper()
    if value <= ceiling:
        return GateCheck(f"absolute_{metric}", True, f"{prefix}{label} {value:.3f} within first_run_max_{metric} "
                                                     f"{ceiling:g}")
    return GateCheck(f"absolute_{metric}", False, f"{prefix}{label} {value:.3f} above first_run_max_{metric} "
                                                  f"{ceiling:g}")


def sign(x: float) -> str:
    return "−" if x < 0 else "+" if x > 0 else "±"


def _signed(x: float) -> str:
    return f"{sign(x)}{abs(x):.3f}"


def _relative(m: MetricComparison) -> str:
    if m.relative_improvement is None:
        return ""
    change = -m.relative_improvement
    return f", {sign(change)}{abs(change):.1%} relative"


# Formatting shared with the text gate (tuneloop.text_gate): any bootstrap result with alpha, ci_low and ci_high.


def format_interval(boot: BootstrapResult) -> str:
    return f"{1 - boot.alpha:.0%} CI of the improvement [{boot.ci_low:.3f}, {boot.ci_high:.3f}]"


def format_ci(boot: BootstrapResult | None) -> str:
    return f", {format_interval(boot)}" if boot else ""


def format_p(p: float) -> str:
    return f"{p:.4g}"


def json_safe(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_safe(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
