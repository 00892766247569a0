"""Dataset export: turn the store's new, corrected error cases into an immutable, content-addressed dataset.

Layout under ``<root>/datasets/<dataset_id>/``::

    audio/<content_hash>.wav   16 kHz (config.sample_rate) mono PCM16 copies: the dataset never depends on the
                               original files staying where they were
    train.jsonl, eval.jsonl    {"id", "audio": "audio/<hash>.wav", "text", "duration_s", "sample_rate",
                                "created_at", "model_version", "source", <config.slice_fields from metadata>}
    manifest.json              DatasetManifest.to_dict()

Steps, in order: validate each case (bad ones are quarantined in the store with the reason), deduplicate by
audio content (the most recent case of a recording wins; older ones with the same text are duplicates, with a
different text superseded), drop cases the leakage guard names (the audio or the transcript of a regression-suite
item: those must never be trained on), keep the ``max_cases`` most recent, and hold out the most recent
``eval_fraction`` (at least ``min_eval_cases``) for evaluation: a time split, so eval looks like the errors
production makes next. A train case with the same transcript as an eval case is held back (left new for a later
run), so the eval split never measures a sentence the candidate was just trained on.

Replay (``replay_path``): known-good older examples mixed into the train split (a seeded draw of ``replay_size``
rows, ids prefixed ``replay:``), so fine-tuning on new mistakes does not erode what the model already does well.
They pass the same audio checks and the leakage guard; a bad one is left out with its reason
(``replay_dropped``), never failing the export. They are not store cases, so nothing consumes them.

``dataset_id`` hashes the rows, the split and the dataset config — never times or run ids — so the same input
gives the same id, and an existing complete dataset is reused untouched. A dataset is written to a staging
folder and renamed into place, so a reader sees all of it or nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneloop.audio import AudioError, AudioInfo, load_mono, local_audio_path, probe_audio, write_wav16
from tuneloop.intake import transcript_too_long
from tuneloop.config import DatasetConfig
from tuneloop.regression import LeakageGuard, SuiteError, read_examples
from tuneloop.storage import StoragePath, as_path, is_local
from tuneloop.store import ErrorCase, ErrorCaseStore
from tuneloop.text import normalize_transcript

log = logging.getLogger(__name__)

DATASET_FORMAT = 1
MANIFEST_FILE = "manifest.json"
SPLIT_FILES = {"train": "train.jsonl", "eval": "eval.jsonl"}
# Row keys set from the case itself; a slice field with one of these names never overrides them.
FIXED_ROW_KEYS = ("id", "audio", "text", "duration_s", "sample_rate", "created_at", "model_version", "source")

AudioFetcher = Callable[[str], Path]
REPLAY_PREFIX = "replay:"
# Replay rows carry no time of their own that matters; a fixed one keeps the dataset id content-addressed.
REPLAY_CREATED_AT = datetime(1970, 1, 1, tzinfo=UTC)


class DatasetError(RuntimeError):
    """The dataset cannot be written (e.g. a foreign folder in the way)."""


class DatasetTooSmall(DatasetError):
    """Too few usable cases for a train split plus ``min_eval_cases``; the message has the numbers."""

    def __init__(self, usable: int, needed: int, counts: dict[str, int]) -> None:
        self.usable = usable
        self.needed = needed
        self.counts = counts
        dropped = ", ".join(f"{v} {k}" for k, v in counts.items() if v and k in _DROP_COUNTS)
        super().__init__(
            f"only {usable} usable cases for a dataset, need at least {needed} (min_eval_cases for eval plus one "
            f"for training); from {counts.get('candidates', 0)} new corrected cases"
            + (f" after dropping {dropped}" if dropped else "")
        )


_DROP_COUNTS = ("quarantined", "skipped", "duplicates", "superseded", "excluded")


@dataclass(frozen=True)
class CaseNote:
    """A case the export left out, why, and (for duplicates and superseded cases) the case kept instead."""

    id: str
    reason: str
    kept_id: str | None = None


@dataclass(frozen=True)
class DatasetManifest:
    """What a dataset contains and how it was made (``manifest.json``).

    ``directory`` and ``reused`` describe this particular export call and are not written to the file.
    """

    dataset_id: str
    created_at: datetime
    run_id: str
    case_ids: dict[str, tuple[str, ...]]
    counts: dict[str, int]
    quarantined: tuple[CaseNote, ...]
    superseded: tuple[CaseNote, ...]
    duplicates: tuple[CaseNote, ...]
    excluded_ids: tuple[str, ...]
    skipped: tuple[CaseNote, ...]
    config: dict[str, Any]
    stats: dict[str, Any]
    held_back: tuple[CaseNote, ...] = ()
    replay_dropped: tuple[CaseNote, ...] = ()
    files: dict[str, str] = field(default_factory=lambda: dict(SPLIT_FILES))
    format_version: int = DATASET_FORMAT
    directory: Path | None = field(default=None, compare=False)
    reused: bool = field(default=False, compare=False)

    @property
    def train_ids(self) -> tuple[str, ...]:
        return self.case_ids["train"]

    @property
    def eval_ids(self) -> tuple[str, ...]:
        return self.case_ids["eval"]

    @property
    def replay_ids(self) -> tuple[str, ...]:
        return self.case_ids.get("replay", ())

    @property
    def excluded_count(self) -> int:
        return len(self.excluded_ids)

    def case_ids_to_consume(self) -> tuple[str, ...]:
        """The cases a run that reached a verdict on this dataset has used up: its train cases, duplicates and
        superseded cases of those (or an outdated correction would return in the next export), and excluded cases
        (they would be excluded again every time). Eval cases stay new: nothing was trained on them, so the next
        run may. Quarantined cases are out already; skipped ones stay new."""
        train = set(self.train_ids)
        settled = {n.id for n in (*self.superseded, *self.duplicates) if n.kept_id in train}
        return tuple(sorted(train | settled | set(self.excluded_ids)))

    def split_path(self, split: str) -> Path:
        if self.directory is None:
            raise DatasetError(f"dataset {self.dataset_id}: manifest has no directory (not loaded from disk)")
        return self.directory / self.files[split]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["directory"], data["reused"]
        data["created_at"] = self.created_at.isoformat()
        data["case_ids"] = {split: list(ids) for split, ids in self.case_ids.items()}
        data["excluded_ids"] = list(self.excluded_ids)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, directory: Path | None = None, reused: bool = False) -> DatasetManifest:
        notes = {name: tuple(CaseNote(**note) for note in data.get(name, ()))
                 for name in ("quarantined", "superseded", "duplicates", "skipped", "held_back", "replay_dropped")}
        return cls(
            dataset_id=data["dataset_id"],
            created_at=datetime.fromisoformat(data["created_at"]),
            run_id=data["run_id"],
            case_ids={split: tuple(ids) for split, ids in data["case_ids"].items()},
            counts=dict(data["counts"]),
            excluded_ids=tuple(data.get("excluded_ids", ())),
            config=dict(data["config"]),
            stats=dict(data["stats"]),
            files=dict(data.get("files", SPLIT_FILES)),
            format_version=int(data.get("format_version", DATASET_FORMAT)),
            directory=directory,
            reused=reused,
            **notes,
        )


def load_manifest(path: str | Path | StoragePath) -> DatasetManifest:
    """Read ``manifest.json`` (give the file or the dataset folder, local or in object storage); raise
    DatasetError when absent or broken."""
    file = as_path(path)
    if file.is_dir():
        file = file / MANIFEST_FILE
    try:
        data = json.loads(file.read_text())
        return DatasetManifest.from_dict(data, directory=file.parent)
    except FileNotFoundError as error:
        raise DatasetError(f"{file}: no dataset manifest") from error
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"{file}: not a valid dataset manifest ({error})") from error


# --------------------------------------------------------------------------------------------------- export


@dataclass(frozen=True)
class _Candidate:
    """A case that passed validation, with its decoded audio's description and local path."""

    case: ErrorCase
    text: str
    info: AudioInfo
    path: Path


def export_dataset(
    store: ErrorCaseStore,
    root: Path,
    config: DatasetConfig,
    *,
    run_id: str,
    now: datetime | None = None,
    exclude_hashes: frozenset[str] = frozenset(),
    guard: LeakageGuard | None = None,
    fetch_audio: AudioFetcher | None = None,
) -> DatasetManifest:
    """Export the store's new corrected cases as a dataset under ``root/datasets`` and return its manifest.

    :param exclude_hashes: audio content hashes (``probe_audio(...).content_hash``) that must not appear, e.g.
        every regression-suite item; how many cases they removed is in ``counts["excluded"]``.
    :param guard: audio hashes and transcripts of regression-suite items (``regression.leakage_guard``); cases
        matching either are excluded, counted in ``counts["excluded_suite_audio"]`` / ``["excluded_suite_text"]``.
    :param fetch_audio: maps a remote audio URI (gs://...) to a local file. Without it, remote cases are
        skipped (left new, listed in ``skipped``). Raising ``AudioError`` from it quarantines the case; any
        other error fails the export (it may be transient).
    :raises DatasetTooSmall: too few usable cases for train plus ``min_eval_cases``.
    """
    now = now or datetime.now(UTC)
    cases = store.cases_for_export()
    candidates, quarantined, skipped = _validate(cases, config, fetch_audio)
    for note in quarantined:
        store.quarantine(note.id, note.reason)
    kept, duplicates, superseded = _deduplicate(candidates)
    guard = (guard or LeakageGuard()) | LeakageGuard(hashes=frozenset(exclude_hashes))
    reasons = {c.case.id: guard.reason(c.info.content_hash, c.text) for c in kept}
    excluded = [case_id for case_id, reason in reasons.items() if reason]
    kept = [c for c in kept if not reasons[c.case.id]]
    capped = kept[-config.max_cases:] if config.max_cases else kept
    counts = {
        "candidates": len(cases), "quarantined": len(quarantined), "skipped": len(skipped),
        "duplicates": len(duplicates), "superseded": len(superseded), "excluded": len(excluded),
        "excluded_suite_audio": sum(1 for r in reasons.values() if r and "audio" in r),
        "excluded_suite_text": sum(1 for r in reasons.values() if r and "transcript" in r),
        "dropped_by_max_cases": len(kept) - len(capped), "usable": len(capped),
    }
    if excluded:
        log.info("leakage guard: excluded %d case(s) matching regression-suite items (%d by audio, %d by text)",
                 len(excluded), counts["excluded_suite_audio"], counts["excluded_suite_text"])
    train, evaluation = _time_split(capped, config, counts)
    eval_texts = {c.text for c in evaluation}
    held_back = [CaseNote(c.case.id, "same transcript as an eval case") for c in train if c.text in eval_texts]
    train = [c for c in train if c.text not in eval_texts]
    if not train:
        raise DatasetTooSmall(len(capped) - len(held_back), config.min_eval_cases + 1, counts)
    counts["held_back_same_text_as_eval"] = len(held_back)
    taken = {c.info.content_hash for c in [*train, *evaluation]}
    replay, replay_dropped = _replay(config, guard, taken, eval_texts)
    rows = {"train": [_row(c, config) for c in [*train, *replay]], "eval": [_row(c, config) for c in evaluation]}
    counts |= {"train": len(train), "eval": len(evaluation), "replay": len(replay),
               "replay_dropped": len(replay_dropped)}
    dataset_id = _dataset_id(rows, config)
    manifest = DatasetManifest(
        dataset_id=dataset_id, created_at=now, run_id=run_id,
        case_ids={"train": tuple(c.case.id for c in train), "eval": tuple(c.case.id for c in evaluation),
                  "replay": tuple(c.case.id for c in replay)},
        counts=counts, quarantined=tuple(quarantined), superseded=tuple(superseded), duplicates=tuple(duplicates),
        excluded_ids=tuple(excluded), skipped=tuple(skipped), config=config.model_dump(mode="json"),
        stats={split: _split_stats(split_rows, config) for split, split_rows in rows.items()},
        held_back=tuple(held_back), replay_dropped=tuple(replay_dropped),
    )
    return _write_once(as_path(root) / "datasets", manifest, rows, [*train, *evaluation, *replay], config)


def _validate(
    cases: Iterable[ErrorCase], config: DatasetConfig, fetch_audio: AudioFetcher | None
) -> tuple[list[_Candidate], list[CaseNote], list[CaseNote]]:
    """Split cases into usable candidates, cases to quarantine (with reasons) and remote cases to skip."""
    candidates: list[_Candidate] = []
    quarantined: list[CaseNote] = []
    skipped: list[CaseNote] = []
    for case in cases:
        text = normalize_transcript(case.correction or "")
        if not text:
            quarantined.append(CaseNote(case.id, f"correction is empty after normalisation: {case.correction!r}"))
            continue
        try:
            path = _local_file(case.audio_uri, fetch_audio)
            if path is None:
                skipped.append(CaseNote(case.id, f"remote audio {case.audio_uri} and no fetch_audio given"))
                continue
            info = probe_audio(path)
        except AudioError as error:
            detail = f" ({error.detail})" if error.detail else ""
            quarantined.append(CaseNote(case.id, f"audio {error.reason}: {case.audio_uri}{detail}"))
            continue
        problem = _audio_problem(case, info, config)
        if problem:
            quarantined.append(CaseNote(case.id, problem))
            continue
        candidates.append(_Candidate(case, text, info, path))
    return candidates, quarantined, skipped


def _replay(
    config: DatasetConfig, guard: LeakageGuard, taken: set[str], eval_texts: set[str]
) -> tuple[list[_Candidate], list[CaseNote]]:
    """The replay rows for this export: a seeded draw from ``replay_path``, checked like cases, never a suite
    item, a recording already in the dataset, or an eval transcript."""
    if config.replay_path is None:
        return [], []
    try:
        rows = read_examples(Path(config.replay_path), "replay", "dataset.replay_path")
    except SuiteError as error:
        raise DatasetError(str(error)) from error
    random.Random(config.replay_seed).shuffle(rows)
    kept: list[_Candidate] = []
    dropped: list[CaseNote] = []
    for row in rows[: config.replay_size]:
        case_id = f"{REPLAY_PREFIX}{row['id']}"
        text = normalize_transcript(row["text"])
        try:
            info = probe_audio(row["audio"])
        except AudioError as error:
            dropped.append(CaseNote(case_id, f"audio {error.reason}: {row['audio']}"))
            continue
        case = ErrorCase(id=case_id, created_at=REPLAY_CREATED_AT, source="replay", model_version=None,
                         audio_uri=row["audio"], audio_hash=info.content_hash, prediction=text, correction=text,
                         error_types=(), error_score=None, annotator=None, content_hash=info.content_hash,
                         metadata={k: v for k, v in row.items() if k not in ("id", "audio", "text")},
                         state="consumed")
        problem = (_audio_problem(case, info, config) or guard.reason(info.content_hash, text)
                   or _replay_overlap(text, info.content_hash, taken, eval_texts))
        if problem:
            dropped.append(CaseNote(case_id, problem))
            continue
        kept.append(_Candidate(case, text, info, Path(row["audio"])))
    kept.sort(key=lambda c: c.case.id)  # the draw decides which rows, not their order in the file
    return kept, dropped


def _replay_overlap(text: str, content_hash: str, taken: set[str], eval_texts: set[str]) -> str | None:
    if not text:
        return "transcript is empty after normalisation"
    if content_hash in taken:
        return "same audio as a case in this dataset"
    if text in eval_texts:
        return "same transcript as an eval case"
    return None


def _local_file(uri: str, fetch_audio: AudioFetcher | None) -> Path | None:
    """The local file for ``uri``: the path itself, a fetched copy of a remote URI, or None if unfetchable."""
    path = local_audio_path(uri)
    if path is None and fetch_audio is not None:
        return fetch_audio(uri)
    return path


def _audio_problem(case: ErrorCase, info: AudioInfo, config: DatasetConfig) -> str | None:
    too_long = transcript_too_long(case.correction, info.duration_s, config.max_chars_per_second)
    if too_long:
        return f"correction too long for its audio: {too_long}"
    if case.audio_hash is not None and case.audio_hash != info.content_hash:
        return f"audio changed since ingestion: {case.audio_uri} no longer matches the stored content hash"
    if info.duration_s < config.min_duration_s:
        return f"audio too short: {info.duration_s:.3f} s < min_duration_s {config.min_duration_s:g}"
    if info.duration_s > config.max_duration_s:
        return f"audio too long: {info.duration_s:.3f} s > max_duration_s {config.max_duration_s:g}"
    return None


def _deduplicate(candidates: list[_Candidate]) -> tuple[list[_Candidate], list[CaseNote], list[CaseNote]]:
    """One case per recording: the most recent wins (its correction is the latest word on that audio).

    Returns the kept cases oldest first, then duplicates (same text as the kept one) and superseded cases.
    """
    latest: dict[str, _Candidate] = {}
    for candidate in sorted(candidates, key=_age):
        latest[candidate.info.content_hash] = candidate
    duplicates: list[CaseNote] = []
    superseded: list[CaseNote] = []
    for candidate in candidates:
        kept = latest[candidate.info.content_hash]
        if kept is candidate:
            continue
        if kept.text == candidate.text:
            duplicates.append(CaseNote(candidate.case.id, "same audio and text as a newer case", kept.case.id))
        else:
            superseded.append(CaseNote(candidate.case.id, "a newer case corrects the same audio differently",
                                       kept.case.id))
    return sorted(latest.values(), key=_age), duplicates, superseded


def _age(candidate: _Candidate) -> tuple[datetime, str]:
    return candidate.case.created_at, candidate.case.id


def _time_split(
    cases: list[_Candidate], config: DatasetConfig, counts: dict[str, int]
) -> tuple[list[_Candidate], list[_Candidate]]:
    """Oldest cases train, the most recent ``eval_fraction`` (rounded half up, at least min_eval_cases) evaluate."""
    eval_size = max(config.min_eval_cases, math.floor(len(cases) * config.eval_fraction + 0.5))
    if len(cases) - eval_size < 1:
        raise DatasetTooSmall(len(cases), config.min_eval_cases + 1, counts)
    return cases[:-eval_size], cases[-eval_size:]


def _row(candidate: _Candidate, config: DatasetConfig) -> dict[str, Any]:
    case = candidate.case
    row: dict[str, Any] = {
        "id": case.id,
        "audio": f"audio/{candidate.info.content_hash}.wav",
        "text": candidate.text,
        "duration_s": round(candidate.info.duration_s, 3),
        "sample_rate": config.sample_rate,
        "created_at": case.created_at.isoformat(),
        "model_version": case.model_version,
        "source": case.source,
    }
    for name in config.slice_fields:
        if name not in FIXED_ROW_KEYS and name in case.metadata:
            row[name] = case.metadata[name]
    return row


def _dataset_id(rows: dict[str, list[dict[str, Any]]], config: DatasetConfig) -> str:
    """Hash of what a trainer would see: rows (audio named by content hash), split and the dataset config."""
    canonical = json.dumps({"format": DATASET_FORMAT, "config": config.model_dump(mode="json"), "rows": rows},
                           sort_keys=True, separators=(",", ":"))
    return "ds-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _split_stats(rows: list[dict[str, Any]], config: DatasetConfig) -> dict[str, Any]:
    durations = [row["duration_s"] for row in rows]
    slices = {name: dict(sorted(Counter(str(row[name]) for row in rows if row.get(name) is not None).items()))
              for name in (*config.slice_fields, "model_version")}
    return {
        "cases": len(rows),
        "duration_s": {
            "total": round(sum(durations), 3),
            "min": min(durations, default=0.0),
            "max": max(durations, default=0.0),
            "mean": round(sum(durations) / len(durations), 3) if durations else 0.0,
        },
        "slices": slices,
    }


# ---------------------------------------------------------------------------------------------------- write


def _write_once(
    datasets: Path, manifest: DatasetManifest, rows: dict[str, list[dict[str, Any]]],
    cases: list[_Candidate], config: DatasetConfig,
) -> DatasetManifest:
    """Reuse a complete dataset with this id; otherwise write into staging and rename into place."""
    final = datasets / manifest.dataset_id
    existing = _complete_manifest(final)
    if existing is not None:
        log.info("dataset %s already exists at %s: reused", manifest.dataset_id, final)
        return existing
    if not is_local(datasets):
        return _upload(final, manifest, rows, cases, config)
    datasets.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{manifest.dataset_id}-", dir=datasets))
    staging.chmod(0o755)  # mkdtemp makes it private; trainers may run as another user
    try:
        _write_contents(staging, manifest, rows, cases, config)
        if final.exists():
            aside = datasets / f".incomplete-{manifest.dataset_id}-{uuid.uuid4().hex[:8]}"
            log.warning("dataset folder %s has no complete manifest; moving it to %s", final, aside)
            os.rename(final, aside)
        try:
            os.rename(staging, final)
        except OSError:
            winner = _complete_manifest(final)  # another export of the same content finished first
            if winner is None:
                raise
            return winner
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote dataset %s: %d train, %d eval cases at %s", manifest.dataset_id,
             len(manifest.train_ids), len(manifest.eval_ids), final)
    return replace(manifest, directory=final)


def _upload(
    final: StoragePath, manifest: DatasetManifest, rows: dict[str, list[dict[str, Any]]],
    cases: list[_Candidate], config: DatasetConfig,
) -> DatasetManifest:
    """Object storage has no atomic folder rename: write the files locally, upload them, the manifest last (its
    presence is what "complete" means, and one object upload is atomic). Two exports of the same content upload
    the same bytes, so a race is harmless."""
    with tempfile.TemporaryDirectory(prefix=f"tuneloop-{manifest.dataset_id}-") as tmp:
        local = Path(tmp)
        _write_contents(local, manifest, rows, cases, config)
        files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
        for file in files:
            (final / file.relative_to(local).as_posix()).write_bytes(file.read_bytes())
        (final / MANIFEST_FILE).write_bytes((local / MANIFEST_FILE).read_bytes())
    log.info("uploaded dataset %s: %d train, %d eval cases, %d files to %s", manifest.dataset_id,
             len(manifest.train_ids), len(manifest.eval_ids), len(files) + 1, final)
    return replace(manifest, directory=final)


def _write_contents(
    folder: Path, manifest: DatasetManifest, rows: dict[str, list[dict[str, Any]]],
    cases: list[_Candidate], config: DatasetConfig,
) -> None:
    for candidate in cases:
        target = folder / "audio" / f"{candidate.info.content_hash}.wav"
        write_wav16(target, load_mono(candidate.path, config.sample_rate), config.sample_rate)
    for split, split_rows in rows.items():
        lines = "".join(json.dumps(row, sort_keys=True) + "\n" for row in split_rows)
        (folder / manifest.files[split]).write_text(lines, encoding="utf-8")
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")


def _complete_manifest(folder: Path) -> DatasetManifest | None:
    """The manifest of a finished dataset in ``folder``, or None (absent, or not a complete dataset)."""
    if not (folder / MANIFEST_FILE).is_file():
        return None
    try:
        manifest = load_manifest(folder)
    except DatasetError as error:
        log.warning("%s", error)
        return None
    if manifest.dataset_id != folder.name or not all((folder / name).is_file() for name in manifest.files.values()):
        return None
    return replace(manifest, reused=True)
