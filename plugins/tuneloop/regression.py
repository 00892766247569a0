"""Regression suites (the seed's RegressionTester): fixed test sets a candidate must not get worse on.

The eval split says whether the candidate fixes production's recent mistakes; suites say whether it still does
what production already did well (seen voices, critical commands, a public benchmark). A suite is a JSONL file of
``{"id", "audio", "text", ...}`` rows, registered in config (``regression.suites``) or through the store's API
(``ErrorCaseStore.register_suite``). The ``evaluate`` step transcribes every suite with the candidate and with
production; :func:`run_suite` judges one suite, :func:`run_suites` all of them. Rules, all thresholds absolute WER:

- the suite's baseline is its recorded ``baseline_wer`` (made by ``baseline_version``), or, when none is recorded,
  production's WER on the suite in this same run;
- ``wer_degradation = candidate WER - baseline WER``; above the suite's ``max_wer_degradation`` the suite fails;
- a sample fails when its WER rises by more than ``sample_degradation_threshold`` over production's transcript
  of the same sample; more than ``max_failed_samples_rate`` failed samples fail the suite (a ``critical`` suite
  tolerates none);
- ``wer_degradation > critical_degradation_threshold`` is a critical degradation; with
  ``fail_on_critical_degradation`` it fails the run whatever the suite's type. Absolute, like the suite's own cap
  that it overrides: the seed's "10% degradation is critical" is ten WER points (0.15 -> 0.26), as its "20%
  per-sample threshold" is 0.2 WER. A relative rise would make it, with the default caps, stricter than the
  suite's ``max_wer_degradation`` below a 0.5 baseline, and undefined on a perfectly transcribed suite;
- a ``smoke`` suite is reported, and blocks only on a critical degradation.

Leakage guard: :func:`leakage_guard` collects every suite item's audio content hash and normalised transcript;
the dataset export never lets one of them into training and reports how many it excluded.

Chat models have suites of the same structure (a JSONL file of chat rows whose final assistant message is the
reference), judged by the mean of ``validation.text.primary_metric`` with score drops instead of WER rises:
:mod:`tuneloop.tasks.chat_suites`. :func:`read_suite` and :func:`leakage_guard` take the model's task.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tuneloop.config import RegressionConfig, SuiteSpec
from tuneloop.metrics import score, score_pair
from tuneloop.predictions import Prediction, pair_predictions
from tuneloop.text import normalize_transcript

FAILED_IDS_KEPT = 20


class SuiteError(ValueError):
    """A suite file that cannot be used (missing, bad JSON, a row without id/audio/text); names file and line."""


@dataclass(frozen=True)
class LeakageGuard:
    """What must never be trained on: audio content hashes and normalised transcripts of held-out items.

    ``hashes`` are matched against an export item's ``guard_key``, ``texts`` against its ``text``; the nouns say
    what they are in the reasons (chat: the normalised prompt's hash and the normalised prompt, both "prompt").
    """

    hashes: frozenset[str] = frozenset()
    texts: frozenset[str] = frozenset()
    key_noun: str = "audio"
    text_noun: str = "transcript"

    def __or__(self, other: LeakageGuard) -> LeakageGuard:
        return LeakageGuard(self.hashes | other.hashes, self.texts | other.texts, self.key_noun, self.text_noun)

    def reason(self, audio_hash: str, text: str) -> str | None:
        """Why an item is excluded, or None: the same recording, or the same words, as a held-out item."""
        if audio_hash in self.hashes:
            return f"same {self.key_noun} as a regression-suite item"
        if text in self.texts:
            return f"same {self.text_noun} as a regression-suite item"
        return None


@dataclass(frozen=True)
class SuiteResult:
    """One suite on one candidate: every number the verdict used and the reasons in words."""

    name: str
    type: str
    model_version: str | None
    baseline_version: str | None
    baseline_source: str  # "recorded" | "production (this run)"
    n: int
    wer: float
    cer: float
    baseline_wer: float
    baseline_cer: float | None
    production_wer: float | None
    wer_degradation: float
    max_wer_degradation: float
    failed_samples: int
    failed_samples_rate: float
    failed_sample_ids: tuple[str, ...]
    critical: bool
    passed: bool
    blocking: bool
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SuiteVerdict(Protocol):
    """What :func:`run_suites` reads of a suite's result (speech's :class:`SuiteResult`, chat's
    :class:`~tuneloop.tasks.chat_suites.ChatSuiteResult`)."""

    name: str
    blocking: bool
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RegressionReport:
    """All suites: ``passed`` is false when a blocking suite failed or a critical degradation happened."""

    passed: bool
    results: tuple[SuiteVerdict, ...]
    reasons: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "results": [r.to_dict() for r in self.results], "reasons": list(self.reasons)}


def read_suite(spec: SuiteSpec, task: str = "speech_to_text") -> list[dict[str, Any]]:
    """The suite's rows for a model of ``task``. Speech: ``audio`` made absolute; every row needs a unique id, an
    audio path and a text. Chat: :func:`tuneloop.tasks.chat_suites.read_chat_suite`. A baseline or cap of the
    other kind of model (``SuiteSpec.task_problem``) is refused first."""
    problem = spec.task_problem(task)
    if problem:
        raise SuiteError(f"suite {spec.name!r}: {problem}")
    if task == "chat":
        from tuneloop.tasks.chat_suites import read_chat_suite

        return read_chat_suite(spec)
    return read_examples(Path(spec.data_path), f"suite {spec.name!r}", "data_path")


def read_examples(path: Path, label: str, field_name: str) -> list[dict[str, Any]]:
    """A JSONL file of ``{"id", "audio", "text", ...}`` examples (suites, replay data), ``audio`` made absolute
    (relative paths are relative to the file). Errors name ``label``, the file and the line."""
    if not path.is_file():
        raise SuiteError(f"{label}: {field_name} {path} does not exist")
    rows, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{label} ({path}:{number})"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SuiteError(f"{where}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) and row[k] for k in ("audio", "text")):
            raise SuiteError(f"{where}: a row needs non-empty string fields audio and text")
        if "id" not in row or str(row["id"]) in seen:
            raise SuiteError(f"{where}: missing or duplicate id {row.get('id')!r}")
        seen.add(str(row["id"]))
        audio = Path(row["audio"])
        rows.append({**row, "id": str(row["id"]), "audio": str(audio if audio.is_absolute() else path.parent / audio)})
    if not rows:
        raise SuiteError(f"{label}: {path} holds no rows")
    return rows


def leakage_guard(specs: Iterable[SuiteSpec], *, match_texts: bool = True,
                  task: str = "speech_to_text") -> LeakageGuard:
    """Audio hashes (and, with ``match_texts``, normalised transcripts) of every item of every suite; for a chat
    model the suite items' normalised prompts (:func:`tuneloop.tasks.chat_suites.chat_leakage_guard`)."""
    from tuneloop.audio import AudioError, probe_audio

    if task == "chat":
        from tuneloop.tasks.chat_suites import chat_leakage_guard

        return chat_leakage_guard(specs, match_texts=match_texts)
    hashes, texts = set(), set()
    for spec in specs:
        for row in read_suite(spec):
            try:
                hashes.add(probe_audio(row["audio"], trainable=False).content_hash)
            except AudioError as error:
                raise SuiteError(f"suite {spec.name!r}: item {row['id']!r}: {error}") from error
            if match_texts:
                texts.add(normalize_transcript(row["text"]))
    texts.discard("")
    return LeakageGuard(frozenset(hashes), frozenset(texts))


def run_suite(
    spec: SuiteSpec,
    candidate: Sequence[Prediction],
    production: Sequence[Prediction] | None,
    config: RegressionConfig,
    *,
    model_version: str | None = None,
    production_version: str | None = None,
) -> SuiteResult:
    """Judge the candidate's predictions on one suite (see the module docstring for the rules)."""
    cand = score(candidate)
    production_wer = None
    failed_ids: list[str] = []
    reasons: list[str] = []
    if production is not None:
        pair = score_pair(pair_predictions(production, candidate))
        production_wer = pair.baseline.corpus_wer
        rise = (pair.candidate.word_errors - pair.baseline.word_errors) / np.maximum(pair.baseline.reference_words, 1)
        failed = np.flatnonzero(rise > config.sample_degradation_threshold)
        failed_ids = [pair.baseline.ids[i] for i in failed[np.argsort(-rise[failed], kind="stable")]]
    if spec.baseline_wer is not None:
        baseline_wer, baseline_cer, source = spec.baseline_wer, spec.baseline_cer, "recorded"
        baseline_version = spec.baseline_version
    elif production is not None:
        baseline_wer, baseline_cer, source = production_wer, pair.baseline.corpus_cer, "production (this run)"
        baseline_version = production_version
    else:
        baseline_wer, baseline_cer, source, baseline_version = cand.corpus_wer, None, "none", None
        reasons.append("no recorded baseline and no production model: the candidate's WER becomes the record")
    degradation = cand.corpus_wer - baseline_wer
    failed_rate = len(failed_ids) / cand.n
    allowed_rate = 0.0 if spec.type == "critical" else config.max_failed_samples_rate
    critical = degradation > config.critical_degradation_threshold
    within_wer = degradation <= spec.max_wer_degradation
    within_samples = failed_rate <= allowed_rate

    label = f"suite {spec.name} ({spec.type}, n={cand.n})"
    wer_words = (f"WER {cand.corpus_wer:.3f} vs baseline {baseline_wer:.3f} ({source}"
                 f"{f', version {baseline_version}' if baseline_version else ''}), {degradation:+.3f}")
    if within_wer:
        reasons.append(f"{label}: {wer_words}, within max_wer_degradation {spec.max_wer_degradation:g}")
    else:
        reasons.append(f"{label}: {wer_words}, above max_wer_degradation {spec.max_wer_degradation:g}")
    if production is None:
        reasons.append(f"{label}: per-sample check skipped, no production predictions to compare with")
    else:
        shown = ", ".join(repr(i) for i in failed_ids[:5])
        samples = (f"{len(failed_ids)} sample(s) got worse by more than {config.sample_degradation_threshold:g} WER "
                   f"({failed_rate:.1%}{f': {shown}' if failed_ids else ''})")
        cap = ("a critical suite allows none" if spec.type == "critical"
               else f"max_failed_samples_rate {allowed_rate:.1%}")
        reasons.append(f"{label}: {samples}, {'within' if within_samples else 'above'} {cap}")
    if critical:
        reasons.append(f"{label}: critical degradation, WER rose by {degradation:.3f} ({baseline_wer:.3f} -> "
                       f"{cand.corpus_wer:.3f}, absolute) > critical_degradation_threshold "
                       f"{config.critical_degradation_threshold:g}")
    passed = within_wer and within_samples and not critical
    return SuiteResult(
        name=spec.name, type=spec.type, model_version=model_version, baseline_version=baseline_version,
        baseline_source=source, n=cand.n, wer=cand.corpus_wer, cer=cand.corpus_cer, baseline_wer=baseline_wer,
        baseline_cer=baseline_cer, production_wer=production_wer, wer_degradation=degradation,
        max_wer_degradation=spec.max_wer_degradation, failed_samples=len(failed_ids),
        failed_samples_rate=failed_rate, failed_sample_ids=tuple(failed_ids[:FAILED_IDS_KEPT]), critical=critical,
        passed=passed, blocking=suite_blocks(spec, passed, critical, config), reasons=tuple(reasons),
    )


def run_suites(results: Sequence[SuiteVerdict]) -> RegressionReport:
    """Combine suite results: the run passes when no suite blocks."""
    blocking = [r for r in results if r.blocking]
    if not results:
        return RegressionReport(True, (), ("no regression suites registered",))
    if blocking:
        reasons = tuple(f"suite {r.name} failed: {'; '.join(r.reasons)}" for r in blocking)
        return RegressionReport(False, tuple(results), reasons)
    return RegressionReport(True, tuple(results), (f"{len(results)} regression suite(s) passed or are report-only",))


def suite_blocks(spec: SuiteSpec, passed: bool, critical: bool, config: RegressionConfig) -> bool:
    """Whether a suite's verdict fails the run: a critical degradation (with ``fail_on_critical_degradation``)
    whatever the suite's type, else a failed suite that is not ``smoke``."""
    if critical and config.fail_on_critical_degradation:
        return True
    return not passed and spec.type != "smoke"


def merge_suites(configured: Iterable[SuiteSpec], registered: Iterable[SuiteSpec]) -> tuple[SuiteSpec, ...]:
    """Config suites plus API-registered ones; a name registered through the API overrides the config's."""
    by_name = {s.name: s for s in configured}
    by_name.update({s.name: s for s in registered})
    return tuple(by_name[name] for name in sorted(by_name))
