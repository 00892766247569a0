"""Regression suites of a chat model: fixed prompts with references, a baseline per suite, and history.

The chat twin of :mod:`tuneloop.regression` (same structure, same :class:`~tuneloop.config.SuiteSpec`, same report
and store history). A suite is a JSONL file of the trainer's chat rows, ``{"id", "messages": [<prompt turns>,
{"role": "assistant", "content": <reference>}], ...}``, fed to the trainer's ``evaluate`` as it is; each reply is
scored against its reference with ``validation.text.primary_metric`` (:mod:`tuneloop.text_metrics`, as the gate
scores the eval split), and :func:`run_chat_suite` judges the mean. Rules, all absolute on scores in [0, 1]
(higher is better), mirroring speech's with score drops in place of WER rises:

- the suite's baseline is its recorded ``baseline_score`` (made by ``baseline_version``), or, when none is
  recorded, production's mean on the suite in this same run; with neither (a first run) the candidate's mean
  becomes the record;
- ``score_drop = baseline - candidate mean``; above the suite's ``max_score_drop`` the suite fails;
- a sample fails when production got it right (score >= ``validation.text.right_threshold``) and the candidate
  gets it wrong, or, for graded metrics (token F1, JSON field match), when its score falls by more than
  ``regression.sample_degradation_threshold`` below production's on the same example; more than
  ``max_failed_samples_rate`` failed samples fail the suite (a ``critical`` suite tolerates none);
- ``score_drop > critical_degradation_threshold`` is a critical degradation; with ``fail_on_critical_degradation``
  it fails the run whatever the suite's type;
- a ``smoke`` suite is reported, and blocks only on a critical degradation.

Comparisons allow :data:`SCORE_TOLERANCE` for floating point, as the text gate does: a mean of 0.75 against a
baseline of 0.8 is a drop of 0.05, within a ``max_score_drop`` of 0.05.

Leakage guard: :func:`chat_leakage_guard` collects every suite item's normalised prompt
(:func:`tuneloop.tasks.chat.prompt_text` of the messages before the reference) and its SHA-256, the text and key
a chat export item carries, so no training example shares a prompt with a suite item.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneloop.intake import InvalidCase, sha256
from tuneloop.regression import FAILED_IDS_KEPT, LeakageGuard, SuiteError, read_suite, suite_blocks
from tuneloop.tasks.chat import check_messages, check_prompt_ends, prompt_text
from tuneloop.text_metrics import GRADED_METRICS

if TYPE_CHECKING:
    from tuneloop.config import RegressionConfig, SuiteSpec, TextValidationConfig
    from tuneloop.predictions import Prediction

# Means are sums of floats: 0.8 - 0.75 is 0.05000000000000004. A drop within this of a cap is at the cap.
SCORE_TOLERANCE = 1e-12


# ------------------------------------------------------------------------------------------- suite files


def read_chat_suite(spec: SuiteSpec) -> list[dict[str, Any]]:
    """The suite's rows (ids as strings): JSON objects with a unique id (a string or an integer) and
    ``messages`` checked as a case's conversation is (:func:`~tuneloop.tasks.chat.check_messages`, assistant
    turns may carry a ``weight``), the last one the assistant's reference after a prompt that ends with a user
    turn. Errors name the suite, the file and line, and the field (``messages[2].role``)."""
    path, label = Path(spec.data_path), f"suite {spec.name!r}"
    if not path.is_file():
        raise SuiteError(f"{label}: data_path {path} does not exist")
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{label} ({path}:{number})"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise SuiteError(f"{where}: not valid JSON ({error.msg})") from error
        if not isinstance(row, dict):
            raise SuiteError(f"{where}: a row must be a JSON object {{id, messages}}")
        case_id = row.get("id")
        if isinstance(case_id, bool) or not isinstance(case_id, (str, int)) or str(case_id) in seen or (
                isinstance(case_id, str) and not case_id.strip()):
            raise SuiteError(f"{where}: missing or duplicate id {case_id!r}")
        try:
            reference_conversation(row.get("messages"))
        except InvalidCase as error:
            raise SuiteError(f"{where}: {error}") from error
        seen.add(str(case_id))
        rows.append({**row, "id": str(case_id)})
    if not rows:
        raise SuiteError(f"{label}: {path} holds no rows")
    return rows


def reference_conversation(value: Any) -> list[dict[str, Any]]:
    """A suite row's messages, checked: a prompt ending with a user turn, then the assistant's reference."""
    messages = check_messages(value, "messages", allow_weight=True)
    if not messages or messages[-1]["role"] != "assistant":
        raise InvalidCase(f"messages[{len(messages) - 1}].role" if messages else "messages",
                          "the last message must be the assistant's reference reply (what the candidate's reply is "
                          f"scored against), got {messages[-1]['role'] if messages else 'no messages'}")
    check_prompt_ends(messages[:-1], "messages")
    return messages


def chat_leakage_guard(specs: Iterable[SuiteSpec], *, match_texts: bool = True) -> LeakageGuard:
    """The normalised prompts of every item of every suite, and their SHA-256 (what a chat export item's ``text``
    and ``guard_key`` are). ``match_texts`` False keeps only the hashes, which match the same items."""
    texts = {prompt_text(row["messages"][:-1]) for spec in specs for row in read_suite(spec, "chat")}
    return LeakageGuard(hashes=frozenset(sha256(text) for text in texts),
                        texts=frozenset(texts) if match_texts else frozenset(), key_noun="prompt", text_noun="prompt")


# ------------------------------------------------------------------------------------------------ judging


@dataclass(frozen=True)
class SuiteScores:
    """One suite's per-example scores of ``metric``: the candidate's, and production's on the same examples in
    the same order (None: no production model to compare with)."""

    metric: str
    ids: tuple[str, ...]
    candidate: tuple[float, ...]
    production: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        sizes = {len(self.ids), len(self.candidate), *(() if self.production is None else (len(self.production),))}
        if len(sizes) != 1:
            raise ValueError(f"suite scores: ids, candidate and production scores differ in length ({sizes})")


def suite_scores(candidate: Sequence[Prediction], production: Sequence[Prediction] | None,
                 text: TextValidationConfig) -> SuiteScores:
    """Score both models' replies on a suite with the primary metric, paired by id (``PredictionsError`` when the
    two files cover different examples), as :func:`tuneloop.tasks.chat_evaluation.score` scores the eval split."""
    from tuneloop.predictions import pair_predictions
    from tuneloop.tasks.chat_evaluation import score

    metric = text.primary_metric
    if production is None:
        return SuiteScores(metric, tuple(p.id for p in candidate),
                           tuple(score(p, text).value(metric) for p in candidate))
    paired = pair_predictions(production, candidate)
    return SuiteScores(metric, tuple(p.id for p in paired), tuple(score(p.candidate, text).value(metric)
                                                                  for p in paired),
                       tuple(score(p.baseline, text).value(metric) for p in paired))


@dataclass(frozen=True)
class ChatSuiteResult:
    """One suite on one chat candidate: every number the verdict used and the reasons in words. ``score`` is the
    candidate's mean of ``metric``; ``score_drop`` its fall below the baseline (negative: it rose)."""

    name: str
    type: str
    metric: str
    model_version: str | None
    baseline_version: str | None
    baseline_source: str  # "recorded" | "production (this run)" | "none"
    n: int
    score: float
    baseline_score: float
    production_score: float | None
    score_drop: float
    max_score_drop: float
    failed_samples: int
    failed_samples_rate: float
    failed_sample_ids: tuple[str, ...]
    critical: bool
    passed: bool
    blocking: bool
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_chat_suite(
    spec: SuiteSpec,
    scores: SuiteScores,
    config: RegressionConfig,
    *,
    right_threshold: float,
    model_version: str | None = None,
    production_version: str | None = None,
) -> ChatSuiteResult:
    """Judge the candidate's scores on one suite (see the module docstring for the rules)."""
    metric = scores.metric
    cand = np.asarray(scores.candidate, dtype=float)
    n = cand.size
    if n == 0:
        raise ValueError(f"suite {spec.name}: no predictions to judge")
    mean = math.fsum(cand) / n
    base = None if scores.production is None else np.asarray(scores.production, dtype=float)
    production_score = None
    failed_ids: list[str] = []
    reasons: list[str] = []
    if base is not None:
        production_score = math.fsum(base) / n
        fall = base - cand
        failed = (base >= right_threshold) & (cand < right_threshold)
        if metric in GRADED_METRICS:
            failed |= fall > config.sample_degradation_threshold + SCORE_TOLERANCE
        worst_first = np.flatnonzero(failed)
        failed_ids = [scores.ids[i] for i in worst_first[np.argsort(-fall[worst_first], kind="stable")]]
    if spec.baseline_score is not None:
        baseline, source, baseline_version = spec.baseline_score, "recorded", spec.baseline_version
        drop = baseline - mean
    elif base is not None:
        baseline, source, baseline_version = production_score, "production (this run)", production_version
        drop = math.fsum(np.concatenate([base, -cand])) / n  # correctly rounded: 0 when the sums tie
    else:
        baseline, source, baseline_version, drop = mean, "none", None, 0.0
        reasons.append(f"no recorded baseline and no production model: the candidate's {metric} becomes the record")
    failed_rate = len(failed_ids) / n
    allowed_rate = 0.0 if spec.type == "critical" else config.max_failed_samples_rate
    critical = drop > config.critical_degradation_threshold + SCORE_TOLERANCE
    within_drop = drop <= spec.max_score_drop + SCORE_TOLERANCE
    within_samples = failed_rate <= allowed_rate

    label = f"suite {spec.name} ({spec.type}, n={n})"
    score_words = (f"{metric} {mean:.3f} vs baseline {baseline:.3f} ({source}"
                   f"{f', version {baseline_version}' if baseline_version else ''}), {0.0 - drop:+.3f}")
    reasons.append(f"{label}: {score_words}, {'within' if within_drop else 'a drop above'} max_score_drop "
                   f"{spec.max_score_drop:g}")
    if base is None:
        reasons.append(f"{label}: per-sample check skipped, no production predictions to compare with")
    else:
        shown = ", ".join(repr(i) for i in failed_ids[:5])
        graded = (f" or fell by more than {config.sample_degradation_threshold:g}" if metric in GRADED_METRICS
                  else "")
        samples = (f"{len(failed_ids)} sample(s) production got right ({metric} >= {right_threshold:g}) got wrong"
                   f"{graded} ({failed_rate:.1%}{f': {shown}' if failed_ids else ''})")
        cap = ("a critical suite allows none" if spec.type == "critical"
               else f"max_failed_samples_rate {allowed_rate:.1%}")
        reasons.append(f"{label}: {samples}, {'within' if within_samples else 'above'} {cap}")
    if critical:
        reasons.append(f"{label}: critical degradation, {metric} fell by {drop:.3f} ({baseline:.3f} -> {mean:.3f}, "
                       f"absolute) > critical_degradation_threshold {config.critical_degradation_threshold:g}")
    passed = within_drop and within_samples and not critical
    return ChatSuiteResult(
        name=spec.name, type=spec.type, metric=metric, model_version=model_version,
        baseline_version=baseline_version, baseline_source=source, n=n, score=mean, baseline_score=baseline,
        production_score=production_score, score_drop=drop, max_score_drop=spec.max_score_drop,
        failed_samples=len(failed_ids), failed_samples_rate=failed_rate,
        failed_sample_ids=tuple(failed_ids[:FAILED_IDS_KEPT]), critical=critical, passed=passed,
        blocking=suite_blocks(spec, passed, critical, config), reasons=tuple(reasons),
    )
