"""Dataset export: turn the store's new, corrected error cases into an immutable, content-addressed dataset.

The steps here are the same for every kind of model; what depends on it (checking a case, its row, the files it
needs, deduplication keys) comes from the model's task (:mod:`tuneloop.tasks`). Speech's layout under
``<root>/datasets/<dataset_id>/``::

    audio/<content_hash>.wav   16 kHz (config.sample_rate) mono PCM16 copies: the dataset never depends on the
                               original files staying where they were
    train.jsonl, eval.jsonl    {"id", "audio": "audio/<hash>.wav", "text", "duration_s", "sample_rate",
                                "created_at", "model_version", "source", <config.slice_fields from metadata>}
    duplicates.jsonl           the cases left out as duplicates or superseded by a newer case (the manifest
                               only counts them)
    manifest.json              DatasetManifest.to_dict()

(chat: train.jsonl and eval.jsonl in OpenAI's chat fine-tuning format, plus the other formats asked for in
``dataset.chat.formats``, e.g. ``train.alpaca.jsonl``; see :mod:`tuneloop.tasks.chat`.)

Steps, in order: the task screens each case (bad ones are quarantined in the store with the reason; ones its
filters leave out stay new; a file that broke since ingestion is found when it is copied, last, and quarantined
then), deduplicate by the task's key (speech: audio content; the most recent case of a
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

``dataset_id`` hashes the split files' bytes (the rows, each split's and each format's) and the dataset config —
never times or run ids — so the same input gives the same id, and an existing complete dataset is reused
untouched. A dataset is written to a staging folder and renamed into place, so a reader sees all of it or nothing.

At scale (a hundred thousand cases and more): cases are read from the store newest first in batches, their
rows (and what writes their files) spooled to files, so memory holds one batch and a few bytes per case; audio
probed at ingestion is not decoded to be checked (its stored hash and duration are used); ``max_cases`` acts
before any work on a case's files; the files (speech: 16 kHz WAV copies) are written last, only for a dataset
that does not exist yet, by a pool of threads into a cache beside the datasets (``.cache/``), so an export killed
half way resumes where it stopped, and linked from there into the dataset.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from tuneloop.audio import AudioError
from tuneloop.config import DatasetConfig
from tuneloop.regression import LeakageGuard
from tuneloop.storage import StoragePath, as_path, is_local
from tuneloop.store import ErrorCase, ErrorCaseStore
from tuneloop.store.database import _batched
from tuneloop.tasks import ExportItem, Note, Task, task_for

log = logging.getLogger(__name__)

DATASET_FORMAT = 2  # 2: the id hashes the files' bytes; duplicates and superseded cases in duplicates.jsonl
MANIFEST_FILE = "manifest.json"
DUPLICATES_FILE = "duplicates.jsonl"  # one line per duplicate or superseded case: the manifest only counts them
EXPORT_BATCH = 2000  # cases read from the store, and rows written, at a time
STALE_AFTER_S = 7 * 24 * 3600  # an export's leftovers (work folders, unused cached files) kept this long
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
        """What ``manifest.json`` holds: everything but the duplicates and superseded cases, which are counted in
        ``counts`` and listed in ``duplicates_file`` (a frequent recording would otherwise fill the manifest)."""
        left_out = ("directory", "reused", "duplicates", "superseded")
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in left_out}  # no deep copy
        for name in ("quarantined", "skipped", "held_back", "replay_dropped", "filtered"):
            data[name] = [asdict(note) for note in data[name]]
        data["config"], data["stats"] = copy.deepcopy(self.config), copy.deepcopy(self.stats)
        data["created_at"] = self.created_at.isoformat()
        data["case_ids"] = {split: list(ids) for split, ids in self.case_ids.items()}
        data["excluded_ids"] = list(self.excluded_ids)
        data["duplicates_file"] = DUPLICATES_FILE
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, directory: Path | None = None, reused: bool = False) -> DatasetManifest:
        """From ``to_dict``'s shape; the duplicates and superseded cases are read from ``duplicates_file`` in
        ``directory`` (a format-1 manifest listed them itself)."""
        notes = {name: tuple(CaseNote(**note) for note in data.get(name, ()))
                 for name in ("quarantined", "superseded", "duplicates", "skipped", "held_back", "replay_dropped",
                              "filtered")}
        if "duplicates_file" in data and directory is not None:
            notes |= _read_duplicates(as_path(directory) / data["duplicates_file"])
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


def _read_duplicates(path: Path) -> dict[str, tuple[CaseNote, ...]]:
    """The ``duplicates`` and ``superseded`` notes of a dataset's duplicates file."""
    kinds: dict[str, list[CaseNote]] = {"duplicate": [], "superseded": []}
    for line in path.read_text(encoding="utf-8").splitlines():
        note = json.loads(line)
        kinds[note.pop("kind")].append(CaseNote(**note))
    return {"duplicates": tuple(kinds["duplicate"]), "superseded": tuple(kinds["superseded"])}


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
        raise DatasetError(f"{error.filename or file}: missing (a dataset needs its manifest and "
                           f"{DUPLICATES_FILE})") from error
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
    workers: int | None = None,
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
    :param workers: threads that write the examples' files (speech: decode, resample, write WAV); default the
        machine's cores, at most 8.
    :raises DatasetTooSmall: too few usable cases for train plus ``min_eval_cases``.

    A case whose audio no longer holds the recording probed at ingestion is found while its copy is written:
    it is quarantined and the export made again without it (the copies already made are kept in the cache).
    """
    task = task or task_for("speech_to_text")
    now = now or datetime.now(UTC)
    guard = (guard or LeakageGuard()) | LeakageGuard(hashes=frozenset(exclude_hashes))
    earlier: list[CaseNote] = []
    while True:
        try:
            return _export(store, as_path(root) / "datasets", config, task, guard, fetch_audio, run_id=run_id,
                           now=now, workers=workers or min(8, os.cpu_count() or 1), earlier=earlier)
        except _SourcesBroken as error:  # each round quarantines at least one case: this ends
            cases = [note for note in error.notes if not note.id.startswith(REPLAY_PREFIX)]
            for note in cases:
                store.quarantine(note.id, note.reason)
            replay = [note for note in error.notes if note.id.startswith(REPLAY_PREFIX)]
            if replay:  # not a store case: it cannot be quarantined, and would be drawn again
                raise DatasetError(f"replay example {replay[0].id} broke while the dataset was written: "
                                   f"{replay[0].reason}") from error
            earlier = [*error.quarantined, *cases]  # no longer new: the next round would not report them
            log.warning("export: quarantined %d case(s) whose audio changed or broke since ingestion; exporting "
                        "again without them", len(cases))


class _SourcesBroken(Exception):
    """Some kept examples' files could not be written (their source changed or broke since it was checked)."""

    def __init__(self, notes: list[CaseNote]) -> None:
        super().__init__(f"{len(notes)} example(s) could not be written")
        self.notes = notes
        self.quarantined: list[CaseNote] = []  # what the attempt quarantined before it wrote files


@dataclass(slots=True)
class _Kept:
    """What the export keeps in memory of a usable case while it reads the store: its row and what writes its
    files are in the spool files (:class:`_Spool`), not here."""

    id: str
    text: bytes  # digest of the item's text: the held-back rule compares texts
    offset: int  # where its row starts in the rows spool
    files_at: int  # where its files' line starts in the files spool (-1: no files)


@dataclass(frozen=True, slots=True)
class _Writer:
    """One example's files and the task's ``source`` for them; ``name`` names it in a reason (the case's audio
    URI, else its id)."""

    id: str
    name: str
    files: tuple[str, ...]
    source: dict[str, Any]


class _Spool:
    """Two append-only temporary files, read back by offset: the kept rows (copied into the splits as they are)
    and what writes each kept example's files. Memory holds offsets, not rows."""

    def __init__(self, folder: Path) -> None:
        self.rows = (folder / "rows.jsonl").open("w+b")
        self.files = (folder / "files.jsonl").open("w+b")
        self._ends = {"rows": 0, "files": 0}

    def add(self, item: ExportItem) -> tuple[int, int]:
        """Append the item's row (and its files' line, if it has files); return their offsets."""
        offset = self._append("rows", self.rows, _json_line(item.row))
        if not item.files:
            return offset, -1
        entry = {"name": item.case.audio_uri or item.case.id, "files": item.files, "source": item.source}
        return offset, self._append("files", self.files, _json_line(entry))

    def row(self, offset: int) -> bytes:
        self.rows.seek(offset)
        return self.rows.readline()

    def writer(self, case_id: str, offset: int) -> _Writer:
        self.files.seek(offset)
        entry = msgspec.json.decode(self.files.readline())
        return _Writer(case_id, entry["name"], tuple(entry["files"]), entry["source"])

    def close(self) -> None:
        self.rows.close()
        self.files.close()

    def _append(self, which: str, handle: BinaryIO, line: bytes) -> int:
        offset = self._ends[which]
        handle.write(line)
        self._ends[which] += len(line)
        return offset


@dataclass
class _Selection:
    """The export's pass over the store: kept cases newest first, and what was left out, and why."""

    kept: list[_Kept] = field(default_factory=list)
    quarantined: list[CaseNote] = field(default_factory=list)
    skipped: list[CaseNote] = field(default_factory=list)
    filtered: list[CaseNote] = field(default_factory=list)
    duplicates: list[CaseNote] = field(default_factory=list)
    superseded: list[CaseNote] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    tally: Counter[str] = field(default_factory=Counter)  # candidates, excluded by audio/text, beyond max_cases
    latest: dict[bytes, tuple[str, bytes]] = field(default_factory=dict)  # key digest -> newest case, text digest

    def counts(self) -> dict[str, int]:
        """The manifest's counts of this selection (every key, zeros too)."""
        return {"candidates": self.tally["candidates"], "quarantined": len(self.quarantined),
                "skipped": len(self.skipped), "filtered": len(self.filtered), "duplicates": len(self.duplicates),
                "superseded": len(self.superseded), "excluded": len(self.excluded),
                "excluded_suite_audio": self.tally["excluded_suite_audio"],
                "excluded_suite_text": self.tally["excluded_suite_text"],
                "dropped_by_max_cases": self.tally["dropped_by_max_cases"], "usable": len(self.kept)}


@dataclass
class _Splits:
    """The kept cases split (oldest first), the replay rows, and what was held back or dropped on the way."""

    train: list[_Kept]
    evaluation: list[_Kept]
    held_back: list[CaseNote]
    replay: list[ExportItem]
    replay_dropped: list[CaseNote]


def _export(store: ErrorCaseStore, datasets: Path, config: DatasetConfig, task: Task, guard: LeakageGuard,
            fetch_audio: AudioFetcher | None, *, run_id: str, now: datetime, workers: int,
            earlier: list[CaseNote]) -> DatasetManifest:
    """One attempt of :func:`export_dataset`; ``earlier``: cases earlier attempts quarantined (reported with this
    attempt's, and counted among its candidates)."""
    local = is_local(datasets)
    if local:
        datasets.mkdir(parents=True, exist_ok=True)
        _remove_stale(datasets.glob(".export-*"), now=time.time())
    with tempfile.TemporaryDirectory(prefix=".export-", dir=datasets if local else None) as work, \
            contextlib.closing(_Spool(Path(work))) as spool, _no_cycle_gc():
        selection = _select(store, task, config, guard, fetch_audio, now, spool)
        selection.quarantined[:0] = earlier
        selection.tally["candidates"] += len(earlier)
        counts = selection.counts()
        splits = _split(selection, task, config, guard, counts)
        staging = Path(tempfile.mkdtemp(prefix="dataset-", dir=work))
        staging.chmod(0o755)  # mkdtemp makes it private; trainers may run as another user
        files, stats = _write_splits(staging, task, config, spool, splits)
        manifest = _manifest(_dataset_id(staging, files, config), selection, splits, counts, files, stats,
                             config=config, task=task, run_id=run_id, now=now)
        existing = _complete_manifest(datasets / manifest.dataset_id)
        if existing is not None:
            log.info("dataset %s already exists at %s: reused", manifest.dataset_id, existing.directory)
            return existing
        writers = _writers(splits, spool)
        try:
            _write_files(writers, task, config, staging, _file_cache(datasets, config, task), workers)
        except _SourcesBroken as error:
            error.quarantined = selection.quarantined
            raise
        _write_records(staging, manifest)
        published = _publish(datasets, staging, manifest)
    _after_publish(datasets, config, task)
    return published


def _split(selection: _Selection, task: Task, config: DatasetConfig, guard: LeakageGuard,
           counts: dict[str, int]) -> _Splits:
    """The time split of the kept cases, the held-back rule, and the replay draw; ``counts`` gets their numbers."""
    kept = selection.kept[::-1]  # oldest first, as the splits are written
    train, evaluation = _time_split(kept, config, counts)
    eval_texts = {item.text for item in evaluation}
    held_back = [CaseNote(item.id, f"same {task.text_noun} as an eval case") for item in train
                 if item.text in eval_texts]
    train = [item for item in train if item.text not in eval_texts]
    if not train:
        raise DatasetTooSmall(len(kept) - len(held_back), config.min_eval_cases + 1, counts)
    in_dataset = {item.id for item in [*train, *evaluation]}
    taken = {key for key, (case_id, _) in selection.latest.items() if case_id in in_dataset}
    replay, replay_dropped = _replay(task, config, guard, taken, eval_texts)
    counts |= {"held_back_same_text_as_eval": len(held_back), "train": len(train), "eval": len(evaluation),
               "replay": len(replay), "replay_dropped": len(replay_dropped)}
    return _Splits(train, evaluation, held_back, replay, replay_dropped)


def _manifest(dataset_id: str, selection: _Selection, splits: _Splits, counts: dict[str, int],
              files: dict[str, str], stats: dict[str, Any], *, config: DatasetConfig, task: Task, run_id: str,
              now: datetime) -> DatasetManifest:
    return DatasetManifest(
        dataset_id=dataset_id, created_at=now, run_id=run_id,
        case_ids={"train": tuple(i.id for i in splits.train), "eval": tuple(i.id for i in splits.evaluation),
                  "replay": tuple(i.case.id for i in splits.replay)},
        counts=counts, quarantined=tuple(selection.quarantined), superseded=tuple(selection.superseded),
        duplicates=tuple(selection.duplicates), excluded_ids=tuple(selection.excluded),
        skipped=tuple(selection.skipped), config=config.model_dump(mode="json"), stats=stats,
        held_back=tuple(splits.held_back), replay_dropped=tuple(splits.replay_dropped),
        filtered=tuple(selection.filtered), files=files, task=task.name,
    )


def _select(store: ErrorCaseStore, task: Task, config: DatasetConfig, guard: LeakageGuard,
            fetch_audio: AudioFetcher | None, now: datetime, spool: _Spool) -> _Selection:
    """Read the store's new cases newest first, batch by batch, and decide each one: quarantined, skipped or
    filtered by the task; a duplicate or superseded by a newer case of the same key (the most recent wins); excluded
    by the leakage guard; beyond ``max_cases``; or kept, its row (and its files' source) appended to ``spool``.

    Reading newest first lets ``max_cases`` act before the files are touched: no file is read before the copy
    (audio probed at ingestion is not decoded again), and once the dataset is full the older cases are only matched
    against the kept ones (a duplicate of a kept case is settled with it), without fetching remote audio (those
    count as beyond ``max_cases``, not as skipped). Only audio never probed (ingested before the store kept
    durations) is still decoded while the cases are screened. Memory holds one batch of cases, and a few small
    values per case.
    """
    chosen = _Selection()
    pages = store.iter_cases_for_export(corrected_only=task.needs_correction, batch_size=EXPORT_BATCH)
    for batch in pages if store.single_connection else _read_ahead(pages):
        full = bool(config.max_cases) and len(chosen.kept) >= config.max_cases
        screened = task.screen(batch, config, None if full else fetch_audio, now)
        chosen.tally["candidates"] += len(batch)
        for note in screened.quarantined:
            store.quarantine(note.id, note.reason)
        chosen.quarantined += screened.quarantined
        chosen.filtered += screened.filtered
        if full:
            chosen.tally["dropped_by_max_cases"] += len(screened.skipped)  # not fetched: the dataset is full
        else:
            chosen.skipped += screened.skipped
        for item in screened.items:
            _decide(item, task, config, guard, chosen, spool)
    if chosen.excluded:
        log.info("leakage guard: excluded %d case(s) matching regression-suite items (%d by audio, %d by text)",
                 len(chosen.excluded), chosen.tally["excluded_suite_audio"], chosen.tally["excluded_suite_text"])
    return chosen


def _read_ahead(pages: Iterator[list[ErrorCase]]) -> Iterator[list[ErrorCase]]:
    """``pages``, the next one read by a thread while the caller works on this one: the database's part of a read
    (and SQLite's, which runs without the GIL) overlaps the task's checks."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-read") as reader:
        upcoming = reader.submit(next, pages, None)
        while (page := upcoming.result()) is not None:
            upcoming = reader.submit(next, pages, None)
            yield page


@contextlib.contextmanager
def _no_cycle_gc() -> Iterator[None]:
    """Python's cycle collector paused while the export holds a few objects per case: with a hundred thousand
    cases alive it runs again and again over all of them (a third of the export's time) and finds nothing, as
    the export makes no reference cycles; reference counting still frees everything. The pause is the process's
    (the collector has no other switch): an Airflow task process runs nothing else meanwhile."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _decide(item: ExportItem, task: Task, config: DatasetConfig, guard: LeakageGuard, chosen: _Selection,
            spool: _Spool) -> None:
    """One usable item, met newest first (see :func:`_select`)."""
    latest = chosen.latest
    text = _digest(item.text)
    key = _digest(item.key)
    newer = latest.get(key)
    if newer is not None:
        if newer[1] == text:
            chosen.duplicates.append(CaseNote(item.case.id, f"same {task.example_noun} and text as a newer case",
                                              newer[0]))
        else:
            chosen.superseded.append(CaseNote(item.case.id, f"a newer case corrects the same {task.example_noun} "
                                                            "differently", newer[0]))
        return
    latest[key] = (item.case.id, text)
    reason = guard.reason(item.guard_key, item.text)
    if reason:
        chosen.excluded.append(item.case.id)
        chosen.tally["excluded_suite_audio"] += "audio" in reason
        chosen.tally["excluded_suite_text"] += task.text_noun in reason
        return
    if config.max_cases and len(chosen.kept) >= config.max_cases:
        chosen.tally["dropped_by_max_cases"] += 1
        return
    chosen.kept.append(_Kept(item.case.id, text, *spool.add(item)))


def _digest(text: str) -> bytes:
    """16 bytes standing for a key or a text the export compares (a collision would take 2^64 of them)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _json_line(row: dict[str, Any]) -> bytes:
    """One row as a line of a split file: compact JSON, keys sorted (so the same row is the same bytes, which the
    dataset id hashes), UTF-8."""
    return msgspec.json.encode(row, order="sorted") + b"\n"


def _replay(
    task: Task, config: DatasetConfig, guard: LeakageGuard, taken: set[bytes], eval_texts: set[bytes],
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


def _replay_overlap(task: Task, item: ExportItem, taken: set[bytes], eval_texts: set[bytes]) -> str | None:
    if _digest(item.key) in taken:
        return f"same {task.example_noun} as a case in this dataset"
    if _digest(item.text) in eval_texts:
        return f"same {task.text_noun} as an eval case"
    return None


def _time_split(items: list[_Kept], config: DatasetConfig, counts: dict[str, int]) -> tuple[list[_Kept], list[_Kept]]:
    """Oldest cases train, the most recent ``eval_fraction`` (rounded half up, at least min_eval_cases) evaluate."""
    eval_size = max(config.min_eval_cases, math.floor(len(items) * config.eval_fraction + 0.5))
    if len(items) - eval_size < 1:
        raise DatasetTooSmall(len(items), config.min_eval_cases + 1, counts)
    return items[:-eval_size], items[-eval_size:]


# ---------------------------------------------------------------------------------------------------- write


def _write_splits(folder: Path, task: Task, config: DatasetConfig, spool: _Spool,
                  splits: _Splits) -> tuple[dict[str, str], dict[str, Any]]:
    """Write train.jsonl and eval.jsonl (rows copied from the spool as they were serialised, replay rows after
    the train cases) and the task's other formats, batch by batch; return the files written (name -> file) and
    each split's statistics, read back from its file in one pass."""
    files = dict(SPLIT_FILES)
    handles: dict[str, BinaryIO] = {}
    formats = bool(task.extra_files({"train": []}, config))  # rows are parsed back only for other formats
    try:
        for split, items in (("train", splits.train), ("eval", splits.evaluation)):
            lines = (spool.row(item.offset) for item in items)
            if split == "train":
                lines = itertools.chain(lines, (_json_line(item.row) for item in splits.replay))
            with (folder / files[split]).open("wb") as out:
                for batch in _batched(lines, EXPORT_BATCH):
                    out.writelines(batch)
                    if not formats:
                        continue
                    extra = task.extra_files({split: [msgspec.json.decode(line) for line in batch]}, config)
                    for name, rows in extra.items():
                        if name not in handles:
                            files[name] = f"{name}.jsonl"
                            handles[name] = (folder / files[name]).open("wb")
                        handles[name].writelines(_json_line(row) for row in rows)
    finally:
        for handle in handles.values():
            handle.close()
    for split in SPLIT_FILES:  # a split whose other formats got no rows still has their (empty) files
        for name in task.extra_files({split: []}, config):
            if name not in files:
                files[name] = f"{name}.jsonl"
                (folder / files[name]).touch()
    stats = {split: task.split_stats(_read_rows(folder / files[split]), config) for split in SPLIT_FILES}
    return files, stats


def _read_rows(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as handle:
        for line in handle:
            yield msgspec.json.decode(line)


def _dataset_id(folder: Path, files: dict[str, str], config: DatasetConfig) -> str:
    """Hash of what a trainer would see: the bytes of every split and format file (rows name their audio by
    content hash) and the dataset config -- never times or run ids."""
    digest = hashlib.sha256(json.dumps({"format": DATASET_FORMAT, "config": config.model_dump(mode="json")},
                                       sort_keys=True, separators=(",", ":")).encode("utf-8"))
    for name in sorted(files):
        file_digest = hashlib.sha256()
        with (folder / files[name]).open("rb") as handle:
            while chunk := handle.read(1 << 20):
                file_digest.update(chunk)
        digest.update(f"\n{name}:{file_digest.hexdigest()}".encode())
    return "ds-" + digest.hexdigest()[:16]


FILE_CACHE = ".cache"  # beside local datasets: each example's files, kept between exports
_FILE_CACHE_VERSION = 1  # bump when what a cached file holds changes for the same name (e.g. resampling)


def _file_cache(datasets: Path, config: DatasetConfig, task: Task) -> Path:
    """Where examples' files are kept between exports (a retried or repeated export does not write them again):
    beside the datasets when they are local, else in the user's own cache folder (never a shared temporary one).
    Keyed by what decides what a file named by its content holds: the task, the dataset config, the dataset
    format and this cache's version."""
    settings = json.dumps([_FILE_CACHE_VERSION, DATASET_FORMAT, task.name, config.model_dump(mode="json")],
                          sort_keys=True)
    key = hashlib.sha256(settings.encode("utf-8")).hexdigest()[:16]
    return _cache_root(datasets) / key


def _cache_root(datasets: Path) -> Path:
    if is_local(datasets):
        return datasets / FILE_CACHE
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tuneloop" / "export-files"


def _writers(splits: _Splits, spool: _Spool) -> Iterator[_Writer]:
    """The examples whose files the dataset needs: the replay items', then the kept cases' (read back from the
    spool one at a time)."""
    for item in splits.replay:
        if item.files:
            yield _Writer(item.case.id, item.case.audio_uri or item.case.id, item.files, item.source or {})
    for kept in [*splits.train, *splits.evaluation]:
        if kept.files_at >= 0:
            yield spool.writer(kept.id, kept.files_at)


def _write_files(writers: Iterable[_Writer], task: Task, config: DatasetConfig, folder: Path, cache: Path,
                 workers: int) -> None:
    """Each example's files into ``folder``: written once into the cache by ``workers`` threads (atomically, so
    an export killed half way resumes where it stopped), then linked (or copied) into the dataset, a page at a
    time. Examples whose source broke are gathered and raised together as ``_SourcesBroken``."""
    started, written, cached, broken = time.monotonic(), 0, 0, []

    def write(writer: _Writer) -> str | None:
        return _cache_files(writer, task, config, cache)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="export-files") as pool:
        for page in _batched(writers, EXPORT_BATCH):
            todo = [w for w in page if not all((cache / name).is_file() for name in w.files)]
            if todo:
                cache.mkdir(parents=True, exist_ok=True)
            broken += [CaseNote(w.id, problem) for w, problem in zip(todo, pool.map(write, todo), strict=True)
                       if problem]
            written, cached = written + len(todo), cached + len(page) - len(todo)
            if not broken:
                for writer in page:
                    _link_files(writer, task, config, cache, folder)
    if broken:
        raise _SourcesBroken(broken)
    if written or cached:
        elapsed = time.monotonic() - started
        log.info("example files: %d written by %d thread(s) in %.1f s (%.0f/s), %d already in the cache %s",
                 written, workers, elapsed, written / elapsed if elapsed else 0.0, cached, cache)


def _cache_files(writer: _Writer, task: Task, config: DatasetConfig, cache: Path) -> str | None:
    """Write one example's files into the cache (each file appears whole or not at all); return why its source
    is unusable, or None."""
    try:
        task.write_files(writer.source, cache, config)
    except AudioError as error:
        detail = f" ({error.detail})" if error.detail else ""
        return f"audio {error.reason}: {writer.name}{detail}"
    return None


def _link_files(writer: _Writer, task: Task, config: DatasetConfig, cache: Path, folder: Path) -> None:
    """Link one example's cached files into the dataset; a cached file removed meanwhile (another export pruned
    it as stale) is written again."""
    for attempt in (1, 2):
        try:
            for name in writer.files:
                _link(cache / name, folder / name)
            return
        except FileNotFoundError:
            if attempt == 2:
                raise
            problem = _cache_files(writer, task, config, cache)
            if problem:
                raise _SourcesBroken([CaseNote(writer.id, problem)]) from None


def _after_publish(datasets: Path, config: DatasetConfig, task: Task) -> None:
    """Tidy the file cache: for datasets in object storage this export's files are uploaded, so its cache goes;
    for local ones, cached files no dataset links to any more are removed once a week old (any config's)."""
    if not is_local(datasets):
        shutil.rmtree(_file_cache(datasets, config, task), ignore_errors=True)
        return
    _remove_stale(_unlinked(_cache_root(datasets)), now=time.time())


def _unlinked(cache: Path) -> Iterator[Path]:
    """Cached files no dataset links to any more (a dataset removed, or a copy made instead of a link)."""
    if not cache.is_dir():
        return
    for folder, _, names in os.walk(cache):
        for name in names:
            path = Path(folder) / name
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_nlink == 1:
                    yield path


def _remove_stale(paths: Iterable[Path], *, now: float) -> None:
    """Remove what an export left behind (a killed export's work folder, cached files no dataset uses) once it
    is ``STALE_AFTER_S`` old: younger ones may belong to an export still running, or be reused by the next."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            if now - path.stat().st_mtime > STALE_AFTER_S:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink()


def _link(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (a copy across filesystems); FileNotFoundError if ``source`` is
    gone."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise
    except OSError:  # another filesystem, or links not allowed: a copy
        shutil.copyfile(source, target)


def _write_records(folder: Path, manifest: DatasetManifest) -> None:
    """The duplicates and superseded cases, one line each, beside the manifest (which only counts them)."""
    with (folder / DUPLICATES_FILE).open("wb") as out:
        for kind, notes in (("duplicate", manifest.duplicates), ("superseded", manifest.superseded)):
            out.writelines(_json_line({"kind": kind, **asdict(note)}) for note in notes)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")


def _publish(datasets: Path, staging: Path, manifest: DatasetManifest) -> DatasetManifest:
    """Move the finished folder into place: a rename locally (a reader sees all of it or nothing), an upload to
    object storage with the manifest last (its presence is what "complete" means)."""
    final = datasets / manifest.dataset_id
    if not is_local(datasets):
        files = sorted(p for p in staging.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
        for file in files:
            (final / file.relative_to(staging).as_posix()).write_bytes(file.read_bytes())
        (final / MANIFEST_FILE).write_bytes((staging / MANIFEST_FILE).read_bytes())
        log.info("uploaded dataset %s: %d train, %d eval cases, %d files to %s", manifest.dataset_id,
                 len(manifest.train_ids), len(manifest.eval_ids), len(files) + 1, final)
        return replace(manifest, directory=final)
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
    log.info("wrote dataset %s: %d train, %d eval cases at %s", manifest.dataset_id,
             len(manifest.train_ids), len(manifest.eval_ids), final)
    return replace(manifest, directory=final)


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
