"""Dataset export: turn the store's new, corrected error cases into an immutable, content-addressed dataset.

The steps here are the same for every kind of model; what depends on it (checking a case, its row, the files it
needs, deduplication keys) comes from the model's task (:mod:`tuneloop.tasks`). Speech's layout under
``<root>/datasets/<dataset_id>/``::

    audio/<content_hash>.wav   16 kHz (config.sample_rate) mono PCM16 copies: the dataset never depends on the
                               original files staying where they were
    train.jsonl, eval.jsonl    {"id", "audio": "audio/<hash>.wav", "text", "duration_s", "sample_rate",
                                "created_at", "model_version", "source", <config.slice_fields from metadata>}
    manifest.json              DatasetManifest.to_dict()

(chat: train.jsonl and eval.jsonl in OpenAI's chat fine-tuning format, plus the other formats asked for in
``dataset.chat.formats``, e.g. ``train.alpaca.jsonl``; see :mod:`tuneloop.tasks.chat`.)

Steps, in order: the task screens each case (bad ones are quarantined in the store with the reason; ones its
filters leave out stay new), deduplicate by the task's key (speech: audio content; the most recent case of a
recording wins; older ones with the same text are duplicates, with a different text superseded), drop cases the
leakage guard names (the audio or the transcript of a regression-suite item: those must never be trained on),
keep the ``max_cases`` most recent, and hold out the most recent ``eval_fraction`` (at least
``min_eval_cases``) for evaluation: a time split, so eval looks like the errors production makes next. A train
case with the same text (speech: transcript; chat: prompt) as an eval case is held back (left new for a later
run), so the eval split never measures a sentence the candidate was just trained on.

Replay (``replay_path``): known-good older examples mixed into the train split (a seeded draw of ``replay_size``
rows, ids prefixed ``replay:``), so fine-tuning on new mistakes does not erode what the model already does well.
They pass the same checks and the leakage guard; a bad one is left out with its reason (``replay_dropped``),
never failing the export. They are not store cases, so nothing consumes them.

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
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneloop.config import DatasetConfig
from tuneloop.regression import LeakageGuard
from tuneloop.storage import StoragePath, as_path, is_local
from tuneloop.store import ErrorCaseStore
from tuneloop.tasks import ExportItem, Note, Task, task_for

log = logging.getLogger(__name__)

DATASET_FORMAT = 1
MANIFEST_FILE = "manifest.json"
SPLIT_FILES = {"train": "train.jsonl", "eval": "eval.jsonl"}

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


CaseNote = Note  # a case the export left out, why, and the case kept instead (duplicates, superseded)


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
    filtered: tuple[CaseNote, ...] = ()  # left new: the task's filters (e.g. dataset.chat.domains) left them out
    files: dict[str, str] = field(default_factory=lambda: dict(SPLIT_FILES))
    task: str = "speech_to_text"
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
                 for name in ("quarantined", "superseded", "duplicates", "skipped", "held_back", "replay_dropped",
                              "filtered")}
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
            task=str(data.get("task", "speech_to_text")),
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
    task: Task | None = None,
) -> DatasetManifest:
    """Export the store's new cases as a dataset under ``root/datasets`` and return its manifest.

    :param exclude_hashes: guard keys (speech: audio content hashes, ``probe_audio(...).content_hash``) that must
        not appear, e.g. every regression-suite item; how many cases they removed is in ``counts["excluded"]``.
    :param guard: guard keys and texts of regression-suite items (``regression.leakage_guard``); cases matching
        either are excluded, counted in ``counts["excluded_suite_audio"]`` / ``["excluded_suite_text"]``.
    :param fetch_audio: maps a remote input URI (gs://...) to a local file. Without it, remote cases are
        skipped (left new, listed in ``skipped``). Raising ``AudioError`` from it quarantines the case; any
        other error fails the export (it may be transient).
    :param task: what kind of model the dataset is for (default speech to text): it checks and filters cases
        and writes their rows; everything else here is the same for every task.
    :raises DatasetTooSmall: too few usable cases for train plus ``min_eval_cases``.
    """
    task = task or task_for("speech_to_text")
    now = now or datetime.now(UTC)
    cases = store.cases_for_export(corrected_only=task.needs_correction)
    screened = task.screen(cases, config, fetch_audio, now)
    for note in screened.quarantined:
        store.quarantine(note.id, note.reason)
    kept, duplicates, superseded = _deduplicate(task, screened.items)
    guard = (guard or LeakageGuard()) | LeakageGuard(hashes=frozenset(exclude_hashes))
    reasons = {item.case.id: guard.reason(item.guard_key, item.text) for item in kept}
    excluded = [case_id for case_id, reason in reasons.items() if reason]
    kept = [item for item in kept if not reasons[item.case.id]]
    capped = kept[-config.max_cases:] if config.max_cases else kept
    counts = {
        "candidates": len(cases), "quarantined": len(screened.quarantined), "skipped": len(screened.skipped),
        "filtered": len(screened.filtered), "duplicates": len(duplicates), "superseded": len(superseded),
        "excluded": len(excluded),
        "excluded_suite_audio": sum(1 for r in reasons.values() if r and "audio" in r),
        "excluded_suite_text": sum(1 for r in reasons.values() if r and task.text_noun in r),
        "dropped_by_max_cases": len(kept) - len(capped), "usable": len(capped),
    }
    if excluded:
        log.info("leakage guard: excluded %d case(s) matching regression-suite items (%d by audio, %d by text)",
                 len(excluded), counts["excluded_suite_audio"], counts["excluded_suite_text"])
    train, evaluation = _time_split(capped, config, counts)
    eval_texts = {item.text for item in evaluation}
    held_back = [CaseNote(item.case.id, f"same {task.text_noun} as an eval case")
                 for item in train if item.text in eval_texts]
    train = [item for item in train if item.text not in eval_texts]
    if not train:
        raise DatasetTooSmall(len(capped) - len(held_back), config.min_eval_cases + 1, counts)
    counts["held_back_same_text_as_eval"] = len(held_back)
    taken = {item.key for item in [*train, *evaluation]}
    replay, replay_dropped = _replay(task, config, guard, taken, eval_texts)
    rows = {"train": [item.row for item in [*train, *replay]], "eval": [item.row for item in evaluation]}
    counts |= {"train": len(train), "eval": len(evaluation), "replay": len(replay),
               "replay_dropped": len(replay_dropped)}
    extra = task.extra_files(rows, config)
    dataset_id = _dataset_id({**rows, **extra}, config)
    manifest = DatasetManifest(
        dataset_id=dataset_id, created_at=now, run_id=run_id,
        case_ids={"train": tuple(i.case.id for i in train), "eval": tuple(i.case.id for i in evaluation),
                  "replay": tuple(i.case.id for i in replay)},
        counts=counts, quarantined=tuple(screened.quarantined), superseded=tuple(superseded),
        duplicates=tuple(duplicates), excluded_ids=tuple(excluded), skipped=tuple(screened.skipped),
        config=config.model_dump(mode="json"),
        stats={split: task.split_stats(split_rows, config) for split, split_rows in rows.items()},
        held_back=tuple(held_back), replay_dropped=tuple(replay_dropped), filtered=tuple(screened.filtered),
        files={**SPLIT_FILES, **{name: f"{name}.jsonl" for name in extra}}, task=task.name,
    )
    contents = {**rows, **extra}
    return _write_once(as_path(root) / "datasets", manifest, contents, [*train, *evaluation, *replay])


def _replay(
    task: Task, config: DatasetConfig, guard: LeakageGuard, taken: set[str], eval_texts: set[str]
) -> tuple[list[ExportItem], list[CaseNote]]:
    """The replay rows for this export: the task's draw from ``replay_path``, never a suite item, an example
    already in the dataset, or an eval text."""
    items, dropped = task.replay(config)
    kept: list[ExportItem] = []
    notes = list(dropped)
    for item in items:
        problem = guard.reason(item.guard_key, item.text) or _replay_overlap(task, item, taken, eval_texts)
        if problem:
            notes.append(CaseNote(item.case.id, problem))
            continue
        kept.append(item)
    kept.sort(key=lambda item: item.case.id)  # the draw decides which rows, not their order in the file
    return kept, notes


def _replay_overlap(task: Task, item: ExportItem, taken: set[str], eval_texts: set[str]) -> str | None:
    if item.key in taken:
        return f"same {task.example_noun} as a case in this dataset"
    if item.text in eval_texts:
        return f"same {task.text_noun} as an eval case"
    return None


def _deduplicate(task: Task, items: list[ExportItem]) -> tuple[list[ExportItem], list[CaseNote], list[CaseNote]]:
    """One item per key (speech: per recording): the most recent wins (its correction is the latest word).

    Returns the kept items oldest first, then duplicates (same text as the kept one) and superseded items.
    """
    latest: dict[str, ExportItem] = {}
    for item in sorted(items, key=_age):
        latest[item.key] = item
    duplicates: list[CaseNote] = []
    superseded: list[CaseNote] = []
    for item in items:
        kept = latest[item.key]
        if kept is item:
            continue
        if kept.text == item.text:
            duplicates.append(CaseNote(item.case.id, f"same {task.example_noun} and text as a newer case",
                                       kept.case.id))
        else:
            superseded.append(CaseNote(item.case.id, f"a newer case corrects the same {task.example_noun} "
                                                     "differently", kept.case.id))
    return sorted(latest.values(), key=_age), duplicates, superseded


def _age(item: ExportItem) -> tuple[datetime, str]:
    return item.case.created_at, item.case.id


def _time_split(
    items: list[ExportItem], config: DatasetConfig, counts: dict[str, int]
) -> tuple[list[ExportItem], list[ExportItem]]:
    """Oldest cases train, the most recent ``eval_fraction`` (rounded half up, at least min_eval_cases) evaluate."""
    eval_size = max(config.min_eval_cases, math.floor(len(items) * config.eval_fraction + 0.5))
    if len(items) - eval_size < 1:
        raise DatasetTooSmall(len(items), config.min_eval_cases + 1, counts)
    return items[:-eval_size], items[-eval_size:]


def _dataset_id(rows: dict[str, list[dict[str, Any]]], config: DatasetConfig) -> str:
    """Hash of what a trainer would see: rows (audio named by content hash), split and the dataset config."""
    canonical = json.dumps({"format": DATASET_FORMAT, "config": config.model_dump(mode="json"), "rows": rows},
                           sort_keys=True, separators=(",", ":"))
    return "ds-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------- write


def _write_once(
    datasets: Path, manifest: DatasetManifest, rows: dict[str, list[dict[str, Any]]], items: list[ExportItem],
) -> DatasetManifest:
    """Reuse a complete dataset with this id; otherwise write into staging and rename into place."""
    final = datasets / manifest.dataset_id
    existing = _complete_manifest(final)
    if existing is not None:
        log.info("dataset %s already exists at %s: reused", manifest.dataset_id, final)
        return existing
    if not is_local(datasets):
        return _upload(final, manifest, rows, items)
    datasets.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{manifest.dataset_id}-", dir=datasets))
    staging.chmod(0o755)  # mkdtemp makes it private; trainers may run as another user
    try:
        _write_contents(staging, manifest, rows, items)
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
    final: StoragePath, manifest: DatasetManifest, rows: dict[str, list[dict[str, Any]]], items: list[ExportItem],
) -> DatasetManifest:
    """Object storage has no atomic folder rename: write the files locally, upload them, the manifest last (its
    presence is what "complete" means, and one object upload is atomic). Two exports of the same content upload
    the same bytes, so a race is harmless."""
    with tempfile.TemporaryDirectory(prefix=f"tuneloop-{manifest.dataset_id}-") as tmp:
        local = Path(tmp)
        _write_contents(local, manifest, rows, items)
        files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
        for file in files:
            (final / file.relative_to(local).as_posix()).write_bytes(file.read_bytes())
        (final / MANIFEST_FILE).write_bytes((local / MANIFEST_FILE).read_bytes())
    log.info("uploaded dataset %s: %d train, %d eval cases, %d files to %s", manifest.dataset_id,
             len(manifest.train_ids), len(manifest.eval_ids), len(files) + 1, final)
    return replace(manifest, directory=final)


def _write_contents(
    folder: Path, manifest: DatasetManifest, rows: dict[str, list[dict[str, Any]]], items: list[ExportItem],
) -> None:
    for item in items:
        if item.write is not None:
            item.write(folder)
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
