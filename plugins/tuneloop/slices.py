"""Slices: the gate, value by value of a metadata field (voice, clean/noisy, duration bucket, source...).

A candidate can improve the corpus WER by getting much better on the common case while getting worse on a
minority -- one accent, noisy audio. Each declared :class:`~tuneloop.config.SliceSpec` splits the eval rows by a
field's value; a value with at least ``min_n`` utterances is *gated*: its WER may rise by at most
``max_wer_increase``. Smaller values are reported with their numbers but never decide anything: a WER on eight
utterances is noise. Rows without the field fall in the value ``(missing)``.

Each slice also gets a paired-bootstrap CI of its improvement, for the record and the plot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tuneloop.config import SliceSpec
from tuneloop.metrics import ScoredPair
from tuneloop.stats import BootstrapResult, paired_bootstrap

MISSING = "(missing)"


@dataclass(frozen=True)
class SliceResult:
    """One value of one slice field: its size, both WERs, the change and whether it was gated and passed."""

    field: str
    value: str
    n: int
    baseline_wer: float
    candidate_wer: float
    wer_increase: float
    max_wer_increase: float
    min_n: int
    gated: bool
    passed: bool
    bootstrap: BootstrapResult | None

    @property
    def name(self) -> str:
        return f"{self.field}={self.value}"

    def sentence(self) -> str:
        change = f"WER {self.baseline_wer:.3f} → {self.candidate_wer:.3f} ({self.wer_increase:+.3f}, n={self.n})"
        if not self.gated:
            return f"slice {self.name}: {change}; reported only, fewer than min_n {self.min_n}"
        if self.passed:
            return f"slice {self.name}: {change}, within max_wer_increase {self.max_wer_increase:g}"
        return f"slice {self.name} got worse: {change}, above max_wer_increase {self.max_wer_increase:g}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["name"] = self.name
        return data


def slice_values(rows: Sequence[dict[str, Any]], spec: SliceSpec) -> np.ndarray:
    """The slice value of each row: the field as text, its bucket for a bucketed field, or ``(missing)``."""
    raw = [row.get(spec.field) for row in rows]
    if spec.buckets is None:
        return np.array([MISSING if v is None or v == "" else str(v) for v in raw], dtype=object)
    edges = spec.buckets
    labels = [f"<{edges[0]:g}", *(f"{a:g}-{b:g}" for a, b in zip(edges, edges[1:])), f">={edges[-1]:g}"]
    numbers = np.array([_number(v) for v in raw], dtype=np.float64)
    values = np.array(labels, dtype=object)[np.searchsorted(edges, np.nan_to_num(numbers), side="right")]
    values[np.isnan(numbers)] = MISSING
    return values


def evaluate_slices(
    scored: ScoredPair,
    specs: Sequence[SliceSpec],
    *,
    resamples: int,
    seed: int,
    alpha: float,
) -> tuple[SliceResult, ...]:
    """Every value of every declared slice, biggest first within a field."""
    rows = [pair.slices for pair in scored.pairs]
    results: list[SliceResult] = []
    for spec in specs:
        names, inverse, sizes = np.unique(slice_values(rows, spec), return_inverse=True, return_counts=True)
        members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(sizes)[:-1])
        for index in np.argsort(-sizes, kind="stable"):
            results.append(_judge(scored, members[index], spec, str(names[index]), resamples, seed, alpha))
    return tuple(results)


def _judge(
    scored: ScoredPair, members: np.ndarray, spec: SliceSpec, value: str, resamples: int, seed: int, alpha: float
) -> SliceResult:
    base_errors = scored.baseline.word_errors[members]
    cand_errors = scored.candidate.word_errors[members]
    words = scored.baseline.reference_words[members]
    total = max(int(words.sum()), 1)
    baseline_wer, candidate_wer = int(base_errors.sum()) / total, int(cand_errors.sum()) / total
    increase = (int(cand_errors.sum()) - int(base_errors.sum())) / total  # exact 0 on a tie
    gated = members.size >= spec.min_n
    bootstrap = paired_bootstrap(base_errors, cand_errors, words, resamples=resamples, seed=seed, alpha=alpha)
    return SliceResult(
        field=spec.field,
        value=value,
        n=int(members.size),
        baseline_wer=baseline_wer,
        candidate_wer=candidate_wer,
        wer_increase=increase,
        max_wer_increase=spec.max_wer_increase,
        min_n=spec.min_n,
        gated=gated,
        passed=not gated or increase <= spec.max_wer_increase + 1e-12,
        bootstrap=bootstrap,
    )


def _number(raw: Any) -> float:
    """A numeric field's value, NaN when absent or not a number (it then falls in ``(missing)``)."""
    if raw is None or isinstance(raw, bool):
        return float("nan")
    try:
        return float(raw)
    except (TypeError, ValueError):
        return float("nan")
