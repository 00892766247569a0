"""Churn: what the candidate changed, utterance by utterance.

A better corpus WER can hide a model that fixes a hundred utterances and breaks forty that production got right;
users feel the forty. Every eval utterance falls in exactly one kind, by its word errors under each model:

- ``fixed``: production was wrong, the candidate is exactly right;
- ``newly_broken``: production was exactly right, the candidate is wrong;
- ``improved`` / ``worsened``: wrong under both, with fewer / more errors under the candidate;
- ``unchanged``: the same number of errors (right under both, or equally wrong).

The gate caps ``newly_broken`` (``max_newly_broken`` count and ``max_newly_broken_rate`` share of the eval set).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tuneloop.metrics import ScoredPair

ChurnKind = Literal["fixed", "newly_broken", "improved", "worsened", "unchanged"]
KINDS: tuple[ChurnKind, ...] = ("fixed", "newly_broken", "improved", "worsened", "unchanged")
EXAMPLES_KEPT = 10


@dataclass(frozen=True)
class ChurnExample:
    """One changed utterance, with both transcripts so a reader can see what changed."""

    id: str
    kind: ChurnKind
    baseline_errors: int
    candidate_errors: int
    reference: str | None = None
    baseline_hypothesis: str | None = None
    candidate_hypothesis: str | None = None


@dataclass(frozen=True)
class ChurnReport:
    """Counts per kind, and the first few examples of each changed kind (worst first for the bad kinds)."""

    n: int
    fixed: int
    newly_broken: int
    improved: int
    worsened: int
    unchanged: int
    examples: dict[str, tuple[ChurnExample, ...]]

    @property
    def newly_broken_rate(self) -> float:
        return self.newly_broken / self.n if self.n else 0.0

    def sentence(self) -> str:
        return (f"{self.fixed} fixed, {self.newly_broken} newly broken, {self.improved} improved, "
                f"{self.worsened} worsened, {self.unchanged} unchanged (of {self.n})")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["newly_broken_rate"] = self.newly_broken_rate
        return data


def classify(scored: ScoredPair) -> np.ndarray:
    """The churn kind of every utterance, as indices into :data:`KINDS`."""
    base, cand = scored.baseline.word_errors, scored.candidate.word_errors
    kinds = np.full(scored.n, KINDS.index("unchanged"), dtype=np.int8)
    kinds[(base > 0) & (cand == 0)] = KINDS.index("fixed")
    kinds[(base == 0) & (cand > 0)] = KINDS.index("newly_broken")
    kinds[(cand > 0) & (cand < base)] = KINDS.index("improved")
    kinds[(base > 0) & (cand > base)] = KINDS.index("worsened")
    return kinds


def churn(scored: ScoredPair, examples_kept: int = EXAMPLES_KEPT) -> ChurnReport:
    """Count the kinds and keep ``examples_kept`` examples of each changed kind."""
    kinds = classify(scored)
    counts = np.bincount(kinds, minlength=len(KINDS))
    change = scored.candidate.word_errors - scored.baseline.word_errors
    examples = {}
    for index, kind in enumerate(KINDS[:-1]):
        members = np.flatnonzero(kinds == index)
        order = np.argsort(-np.abs(change[members]), kind="stable")  # the biggest changes are the telling ones
        examples[kind] = tuple(_example(scored, int(i), kind) for i in members[order][:examples_kept])
    return ChurnReport(n=scored.n, examples=examples, **{k: int(counts[i]) for i, k in enumerate(KINDS)})


def iter_changed(scored: ScoredPair) -> Iterator[ChurnExample]:
    """Every utterance whose errors changed, in eval order (the full per-example report)."""
    kinds = classify(scored)
    for i in np.flatnonzero(kinds != KINDS.index("unchanged")):
        yield _example(scored, int(i), KINDS[kinds[i]])


def write_churn(path: Path, scored: ScoredPair) -> Path:
    """Write the full per-example report as JSONL (one changed utterance per line), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for example in iter_changed(scored):
            handle.write(json.dumps(asdict(example), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def _example(scored: ScoredPair, i: int, kind: ChurnKind) -> ChurnExample:
    pair = scored.pairs[i] if scored.pairs else None
    return ChurnExample(
        id=scored.baseline.ids[i],
        kind=kind,
        baseline_errors=int(scored.baseline.word_errors[i]),
        candidate_errors=int(scored.candidate.word_errors[i]),
        reference=pair.reference if pair else None,
        baseline_hypothesis=pair.baseline_hypothesis if pair else None,
        candidate_hypothesis=pair.candidate_hypothesis if pair else None,
    )
