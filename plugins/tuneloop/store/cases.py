"""Error cases and their ingestion: storing, reading, quarantining and consuming cases, and the refused rows.

What makes a row a valid case depends on the kind of model: the store's task (``tuneloop.tasks``) parses every row;
what is stored is the same for every task (a chat case keeps its conversation in ``payload`` and has no audio).
Cases are the store's model's: ids and content hashes are unique per model, not across models.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from tuneloop.intake import CaseDraft, InvalidCase, Line, decode_row, read_lines, sha256, storable
from tuneloop.store.database import NotFound, StoreBase, StoreError, _batched, _chunks, _is_transient
from tuneloop.store.schema import cases_table, rejections_table, served_table
from tuneloop.store.training_runs import CONSUMING_STATUSES, TrainingRun

if TYPE_CHECKING:
    from tuneloop.tasks import Task

log = logging.getLogger(__name__)

CaseState = Literal["new", "consumed", "quarantined"]
CASE_STATES: tuple[CaseState, ...] = ("new", "consumed", "quarantined")
INGEST_CHUNK_ROWS = 500  # rows parsed, then written, per transaction: memory follows the chunk, not the file
LOOKUP_ROWS = 249  # drafts per lookup of stored cases: their ids and content hashes and the model twice, 500
LOOKUP_KEYS = 499  # rejection keys per lookup, and the model: 500 bound values (SQLite had a limit of 999)


@dataclass(frozen=True)
class ErrorCase:
    """One stored error case. ``audio_uri`` is None for cases without audio (chat); ``audio_hash`` is None for
    those and for remote audio not yet fetched (checked at export). ``payload`` is what the task keeps beside the
    common fields (a chat's messages, ...)."""

    id: str
    created_at: datetime
    source: str
    model_version: str | None
    audio_uri: str | None
    audio_hash: str | None
    prediction: str
    correction: str | None
    error_types: tuple[str, ...]
    error_score: float | None
    annotator: str | None
    metadata: dict[str, Any]
    content_hash: str
    state: CaseState
    state_reason: str | None = None
    consumed_by_run: str | None = None
    payload: dict[str, Any] | None = None
    audio_duration_s: float | None = None  # what ingest's probe found (None: not probed yet, e.g. remote audio)
    audio_sample_rate: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        data["error_types"] = list(self.error_types)
        return data


@dataclass(frozen=True)
class RejectedRow:
    """A JSONL row that was refused: where it was, which field, why, and the start of the raw line."""

    line: int
    field: str
    reason: str
    snippet: str


@dataclass(frozen=True)
class DuplicateRow:
    line: int
    case_id: str


@dataclass(frozen=True)
class IngestReport:
    """Outcome of one JSONL batch: ids newly stored, rows that were already stored, rows refused."""

    batch: str
    rows: int
    accepted: tuple[str, ...]
    duplicates: tuple[DuplicateRow, ...]
    rejected: tuple[RejectedRow, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "rows": self.rows,
            "accepted": list(self.accepted),
            "duplicates": [asdict(d) for d in self.duplicates],
            "rejected": [asdict(r) for r in self.rejected],
        }


@dataclass(frozen=True)
class IngestRejection:
    """A stored rejection (``ErrorCaseStore.ingest_rejections``)."""

    batch: str
    line: int
    field: str
    reason: str
    snippet: str
    at: datetime


class CaseRecords(StoreBase):
    """Store, ingest, read and change the state of the store's model's error cases.

    Needs :class:`~tuneloop.store.training_runs.RunRecords` beside it (``ErrorCaseStore`` combines both):
    :meth:`mark_consumed` reads the run that consumed the cases.
    """

    if TYPE_CHECKING:  # provided by RunRecords

        def training_run(self, run_id: str) -> TrainingRun: ...

    # ------------------------------------------------------------------------------------------ writing cases

    def store_failed_case(
        self,
        audio_path: str | Path,
        original_transcript: str,
        corrected_transcript: str | None,
        error_types: list[str] | None = None,
        error_score: float | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        source: str = "api",
        model_version: str | None = None,
        annotator: str | None = None,
        created_at: datetime | str | None = None,
        case_id: str | None = None,
    ) -> str:
        """Store one speech error case (the seed's call) and return its id; the same case again returns the same id.

        Relative audio paths are taken from the current directory and stored absolute. Raises ``InvalidCase``;
        ``StoreError`` when the store's model is not a speech model (use :meth:`store_case`).
        """
        task_name = self._task if isinstance(self._task, str) else self._task.name
        if task_name != "speech_to_text":
            raise StoreError(f"store_failed_case stores speech cases, and model {self._model!r} is a {task_name} "
                             "model: use store_case(row)")
        row = {
            "id": case_id,
            "audio_path": os.fspath(audio_path) if isinstance(audio_path, os.PathLike) else audio_path,
            "prediction": original_transcript,
            "correction": corrected_transcript,
            "error_types": error_types,
            "error_score": error_score,
            "metadata": metadata,
            "source": source,
            "model_version": model_version,
            "annotator": annotator,
            "created_at": created_at,
        }
        return self._store_row(row, source)

    def store_case(self, row: Mapping[str, Any]) -> str:
        """Store one error case given as the fields of a JSONL row, checked by the store's task (the Python API of
        every task: a chat case's messages, output and ideal response, ...); return its id. The same case again
        returns the same id. Relative paths are taken from the current directory. Raises ``InvalidCase``."""
        return self._store_row(row, "api")

    def _store_row(self, row: Mapping[str, Any], default_source: str) -> str:
        draft = self._case_task().parse_case(row, base_dir=Path.cwd(), default_source=default_source,
                                             now=self._clock(), limits=self._limits)

        def write(conn: Connection) -> tuple[str, bool]:
            linked = _linked(draft, self._served_versions(conn, [draft]))
            case_id, is_new = self._insert_isolated(conn, linked)
            self._judge_requests(conn, {linked.request_id: case_id} if linked.request_id else {})
            return case_id, is_new

        case_id, is_new = self._transaction(write)
        log.info("%s: %s error case %s", self._model, "stored" if is_new else "already had", case_id)
        return case_id

    def _case_task(self) -> Task:
        """The store's task, imported when first needed."""
        if isinstance(self._task, str):
            from tuneloop.tasks import task_for

            self._task = task_for(self._task)
        return self._task

    def ingest_jsonl(self, path: str | Path, *, source: str | None = None, batch_name: str | None = None,
                     base_dir: Path | str | None = None) -> IngestReport:
        """Store every valid row of a JSONL batch; refuse the others with line, field and reason.

        No row can cost another: each is parsed on its own (bounded by the ``ingest`` limits), and a row the
        database refuses is refused alone (:meth:`_write_rows`). Rows are written in chunks of
        ``INGEST_CHUNK_ROWS``, one transaction and a few statements each; a database that is unreachable raises
        (the whole batch can be ingested again later: re-ingesting the same file stores nothing new, rows come
        back as duplicates and rejections are not recorded twice). Relative audio paths are relative to the JSONL
        file, or to ``base_dir`` (a folder, or a ``gs://`` prefix for a batch read from a bucket). ``source`` is
        the default for rows without one (default ``"jsonl"``); ``batch_name`` is how the batch is recorded
        (default its path).
        """
        file = Path(path).absolute()
        if not file.is_file():
            raise FileNotFoundError(f"{file}: JSONL batch does not exist")
        batch = storable(batch_name or str(file))
        base = file.parent if base_dir is None else base_dir
        accepted: list[str] = []
        duplicates: list[DuplicateRow] = []
        refused: list[RejectedRow] = []
        rows = 0
        task = self._case_task()
        with file.open("rb") as handle:
            for chunk in _batched(read_lines(handle, self._limits.max_line_bytes), INGEST_CHUNK_ROWS):
                rows += len(chunk)
                drafts, rejected = self._parse_lines(task, chunk, base, source or "jsonl")
                stored, again, refused_here = self._transaction(
                    lambda conn: self._write_rows(conn, batch, drafts, rejected))  # noqa: B023 (called at once)
                accepted += stored
                duplicates += again
                refused += refused_here
        report = IngestReport(batch, rows, tuple(accepted), tuple(duplicates), tuple(refused))
        log.info("%s: ingested %s: %d rows, %d stored, %d duplicates, %d rejected", self._model, batch, report.rows,
                 len(report.accepted), len(report.duplicates), len(report.rejected))
        for row in report.rejected:
            log.warning("%s:%d rejected: %s: %s", batch, row.line, row.field, row.reason)
        return report

    def _parse_lines(self, task: Task, lines: list[Line], base: Path | str,
                     default_source: str) -> tuple[list[tuple[Line, CaseDraft]], list[RejectedRow]]:
        """Decode and check each line (audio probing included) before any database work."""
        drafts: list[tuple[Line, CaseDraft]] = []
        rejected: list[RejectedRow] = []
        now = self._clock()
        for line in lines:
            try:
                row = decode_row(line, self._limits)
                drafts.append((line, task.parse_case(row, base_dir=base, default_source=default_source, now=now,
                                                     limits=self._limits)))
            except InvalidCase as error:
                rejected.append(RejectedRow(line.number, error.field, error.reason, line.snippet))
            except Exception as error:  # a rule we lack must still cost only this row; logged as the bug it is
                log.exception("line %d: unexpected error while checking the row", line.number)
                rejected.append(RejectedRow(line.number, "row", storable(
                    f"could not be checked ({type(error).__name__}: {str(error)[:200]})"), line.snippet))
        return drafts, rejected

    def _write_rows(self, conn: Connection, batch: str, drafts: list[tuple[Line, CaseDraft]],
                    rejected: list[RejectedRow]) -> tuple[list[str], list[DuplicateRow], list[RejectedRow]]:
        """Write one chunk with a few statements instead of two per row: a per-row round trip costs more than
        parsing the row and probing its audio. The outcome is the one of writing the rows one by one, in line
        order (:meth:`_sort_drafts`); when the database refuses the bulk insert (a concurrent writer stored one of
        the cases after our lookup, or one row breaks a rule of the database), the chunk is written again row by
        row in savepoints inside the same transaction, so that only the offending row is refused. Rows that
        correct a served request (``request_id``) take its version and judge it an error."""
        drafts, unlinked = self._link_requests(conn, drafts)
        rejected = [*rejected, *unlinked]
        accepted, duplicates, refused_here, new = self._sort_drafts(drafts, *self._existing_cases(conn, drafts))
        if new:
            try:
                with conn.begin_nested():
                    now = self._clock()
                    rows = [{**self._case_values(draft), "model": self._model, "ingested_at": now, "state": "new"}
                            for draft in new]
                    conn.execute(sa.insert(cases_table), rows)
            except DBAPIError as error:
                if _is_transient(error):
                    raise
                log.info("%s: the database refused the bulk insert of %d cases (%s); writing them one by one",
                         self._model, len(new), str(error.orig)[:200])
                accepted, duplicates, refused_here = self._write_one_by_one(conn, drafts)
        refused = sorted([*rejected, *refused_here], key=lambda r: r.line)
        self._record_rejections(conn, batch, refused)
        stored = set(accepted) | {d.case_id for d in duplicates}
        by_line = {d.line: d.case_id for d in duplicates}
        self._judge_requests(conn, {draft.request_id: by_line.get(line.number, draft.id) for line, draft in drafts
                                    if draft.request_id and by_line.get(line.number, draft.id) in stored})
        return accepted, duplicates, refused

    def _link_requests(self, conn: Connection, drafts: list[tuple[Line, CaseDraft]]
                       ) -> tuple[list[tuple[Line, CaseDraft]], list[RejectedRow]]:
        """Drafts that name a served request get the version that served it; a request this model never served,
        or a row naming another version than the one that served it, is refused (field and reason)."""
        served = self._served_versions(conn, [draft for _, draft in drafts])
        linked: list[tuple[Line, CaseDraft]] = []
        refused: list[RejectedRow] = []
        for line, draft in drafts:
            try:
                linked.append((line, _linked(draft, served)))
            except InvalidCase as error:
                refused.append(RejectedRow(line.number, error.field, error.reason, line.snippet))
        return linked, refused

    def _served_versions(self, conn: Connection, drafts: list[CaseDraft]) -> dict[str, str]:
        """request id -> the version that served it, for the drafts' request ids this model served."""
        t = served_table
        wanted = sorted({draft.request_id for draft in drafts if draft.request_id})
        found: dict[str, str] = {}
        for keys in _chunks(wanted, LOOKUP_KEYS):
            rows = conn.execute(sa.select(t.c.request_id, t.c.model_version).where(
                t.c.model == self._model, t.c.request_id.in_(keys)))
            found.update((row.request_id, row.model_version) for row in rows)
        return found

    def _judge_requests(self, conn: Connection, cases: Mapping[str, str]) -> None:
        """The served requests a correction names (request id -> the case it became) were wrong: their outcome is
        ``error`` (for the online test), linked to the case."""
        t = served_table
        if not cases:
            return
        now = self._clock()
        statement = (sa.update(t).where(t.c.model == self._model, t.c.request_id == sa.bindparam("rid"))
                     .values(outcome="error", case_id=sa.bindparam("cid"), judged_at=now))
        conn.execute(statement, [{"rid": rid, "cid": cid} for rid, cid in cases.items()])

    def _existing_cases(self, conn: Connection, drafts: list[tuple[Line, CaseDraft]]) -> tuple[dict[str, str],
                                                                                                dict[str, str]]:
        """The model's stored cases that share an id or a content hash with a draft: (id -> content hash, content
        hash -> id). One query per ``LOOKUP_ROWS`` drafts, so that no statement binds more than 500 values
        (SQLite's limit was 999 before 3.32). A UNION ALL of a lookup by id and one by content hash, not one WHERE
        with OR: SQLite (without ANALYZE statistics) answers the OR by scanning all of the model's cases."""
        t = cases_table
        by_id: dict[str, str] = {}
        by_hash: dict[str, str] = {}
        for start in range(0, len(drafts), LOOKUP_ROWS):
            part = [draft for _, draft in drafts[start : start + LOOKUP_ROWS]]
            mine = sa.select(t.c.id, t.c.content_hash).where(t.c.model == self._model)
            query = sa.union_all(mine.where(t.c.id.in_(sorted({d.id for d in part}))),
                                 mine.where(t.c.content_hash.in_(sorted({d.content_hash for d in part}))))
            for row in conn.execute(query):
                by_id[row.id] = row.content_hash
                by_hash[row.content_hash] = row.id
        return by_id, by_hash

    @staticmethod
    def _sort_drafts(drafts: list[tuple[Line, CaseDraft]], by_id: dict[str, str], by_hash: dict[str, str],
                     ) -> tuple[list[str], list[DuplicateRow], list[RejectedRow], list[CaseDraft]]:
        """Decide each draft as :meth:`_insert_case` would, in line order, against the stored cases and the drafts
        before it: an id stored with other content is refused (field ``id``); the same id or the same content is
        a duplicate of the case that has it (the first occurrence wins); anything else is new. Returns accepted
        ids, duplicates, refusals and the drafts to insert. ``by_id`` and ``by_hash`` are updated."""
        accepted: list[str] = []
        duplicates: list[DuplicateRow] = []
        refused: list[RejectedRow] = []
        new: list[CaseDraft] = []
        for line, draft in drafts:
            stored_hash = by_id.get(draft.id)
            if stored_hash is not None and stored_hash != draft.content_hash:
                error = InvalidCase("id", f"{draft.id!r} is already used by a case with different content")
                refused.append(RejectedRow(line.number, error.field, error.reason, line.snippet))
            elif stored_hash is not None:
                duplicates.append(DuplicateRow(line.number, draft.id))
            elif draft.content_hash in by_hash:
                duplicates.append(DuplicateRow(line.number, by_hash[draft.content_hash]))
            else:
                by_id[draft.id] = draft.content_hash
                by_hash[draft.content_hash] = draft.id
                accepted.append(draft.id)
                new.append(draft)
        return accepted, duplicates, refused, new

    @staticmethod
    def _case_values(draft: CaseDraft) -> dict[str, Any]:
        """``draft.values()`` without its deep copy: ``dataclasses.asdict`` copies every nested message and
        metadata value, a third of the time of writing a chunk of chat cases. Nothing mutates the values, which
        are only serialised by the insert."""
        data = {field.name: getattr(draft, field.name) for field in fields(draft)}
        data["error_types"] = list(draft.error_types)
        data["meta"] = data.pop("metadata")
        data.pop("request_id")
        return data

    def _write_one_by_one(self, conn: Connection, drafts: list[tuple[Line, CaseDraft]],
                          ) -> tuple[list[str], list[DuplicateRow], list[RejectedRow]]:
        """Each draft in its own savepoint (:meth:`_insert_isolated`): slower, but a row the database refuses costs
        only itself. The fallback of :meth:`_write_rows`."""
        accepted: list[str] = []
        duplicates: list[DuplicateRow] = []
        refused: list[RejectedRow] = []
        for line, draft in drafts:
            try:
                case_id, is_new = self._insert_isolated(conn, draft)
            except InvalidCase as error:
                refused.append(RejectedRow(line.number, error.field, error.reason, line.snippet))
                continue
            if is_new:
                accepted.append(case_id)
            else:
                duplicates.append(DuplicateRow(line.number, case_id))
        return accepted, duplicates, refused

    def _insert_isolated(self, conn: Connection, draft: CaseDraft) -> tuple[str, bool]:
        """Insert one case in a savepoint: a row the database refuses becomes ``InvalidCase`` and costs only
        itself. A database that cannot be used at all (connection lost, locked) raises: that is no fault of the
        row, and the batch is ingested again later."""
        for attempt in (1, 2):
            try:
                with conn.begin_nested():
                    return self._insert_case(conn, draft)
            except DBAPIError as error:
                if _is_transient(error):
                    raise
                if isinstance(error, IntegrityError) and attempt == 1:
                    continue  # a concurrent writer stored the same case between our lookup and insert: look again
                raise InvalidCase("row", f"the database refused it: {str(error.orig)[:300]}") from error
        raise AssertionError("unreachable")

    def _insert_case(self, conn: Connection, draft: CaseDraft) -> tuple[str, bool]:
        """Insert unless the same id or the same content is stored for this model; return (id, inserted)."""
        t = cases_table
        same = sa.or_(t.c.id == draft.id, t.c.content_hash == draft.content_hash)
        existing = conn.execute(sa.select(t.c.id, t.c.content_hash).where(t.c.model == self._model, same)).all()
        for row in existing:
            if row.id == draft.id and row.content_hash != draft.content_hash:
                raise InvalidCase("id", f"{draft.id!r} is already used by a case with different content")
        if existing:
            return existing[0].id, False
        conn.execute(sa.insert(t).values(**draft.values(), model=self._model, ingested_at=self._clock(), state="new"))
        return draft.id, True

    def _record_rejections(self, conn: Connection, batch: str, rows: Iterable[RejectedRow]) -> None:
        """Record rejections once per model: a key over (batch, line, field, reason, snippet), unique with the
        model, makes re-ingestion silent; the same bad line sent to two models is recorded for each. One lookup of
        the keys already stored and one insert of the others per chunk, not two statements per row."""
        t = rejections_table
        keyed: dict[str, RejectedRow] = {}
        for row in rows:
            keyed.setdefault(sha256(json.dumps([batch, row.line, row.field, row.reason, row.snippet])), row)
        stored: set[str] = set()
        for keys in _chunks(list(keyed), LOOKUP_KEYS):
            stored.update(conn.execute(sa.select(t.c.rejection_key).where(
                t.c.model == self._model, t.c.rejection_key.in_(keys))).scalars())
        now = self._clock()
        new = [{"model": self._model, "rejection_key": key, "batch": batch, "line": row.line, "field": row.field,
                "reason": row.reason, "snippet": row.snippet, "at": now}
               for key, row in keyed.items() if key not in stored]
        if new:
            conn.execute(sa.insert(t), new)

    # ------------------------------------------------------------------------------------------ reading cases

    def get_case(self, case_id: str) -> ErrorCase:
        t = cases_table
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(*_CASE_COLUMNS).where(t.c.model == self._model, t.c.id == case_id)).first()
        if row is None:
            raise NotFound(self._no_case(case_id))
        return _case_from_row(row)

    def cases_for_export(self, limit: int | None = None, *, corrected_only: bool = True) -> list[ErrorCase]:
        """New cases, oldest first (ties by id, so the order is deterministic): those that carry a correction, or
        with ``corrected_only=False`` every new case (chat exports rated cases without a correction too)."""
        t = cases_table
        where = [t.c.model == self._model, t.c.state == "new"]
        if corrected_only:
            where.append(t.c.correction.is_not(None))
        query = (sa.select(*_CASE_COLUMNS).where(*where)
                 .order_by(t.c.created_at, _ordered_id(self._engine.dialect.name)).limit(limit))
        with self._engine.connect() as conn:
            return [_case_from_row(row) for row in conn.execute(query)]

    def iter_cases_for_export(self, *, corrected_only: bool = True,
                              batch_size: int = 2000) -> Iterator[list[ErrorCase]]:
        """The cases of :meth:`cases_for_export`, newest first (ties by id, descending), in batches: memory follows
        a batch, not the store. Each batch is its own short query (keyset pagination on ``(created_at, id)``), so
        no read stays open while the caller works on a batch, e.g. quarantines cases or fetches audio."""
        t = cases_table
        case_id = _ordered_id(self._engine.dialect.name)
        where = [t.c.model == self._model, t.c.state == "new"]
        if corrected_only:
            where.append(t.c.correction.is_not(None))
        after: tuple[datetime, str] | None = None
        while True:
            page = list(where)
            if after is not None:  # written so that "created_at <= ..." bounds the index range on both databases
                page += [t.c.created_at <= after[0], sa.or_(t.c.created_at < after[0], case_id < after[1])]
            query = (sa.select(*_CASE_COLUMNS).where(*page).order_by(t.c.created_at.desc(), case_id.desc())
                     .limit(batch_size))
            with self._engine.connect() as conn:
                batch = [_case_from_row(row) for row in conn.execute(query)]
            if batch:
                yield batch
            if len(batch) < batch_size:
                return
            after = (batch[-1].created_at, batch[-1].id)

    def ingest_rejections(self, limit: int = 100) -> list[IngestRejection]:
        """Most recent first."""
        t = rejections_table
        query = sa.select(t).where(t.c.model == self._model).order_by(t.c.at.desc(), t.c.id.desc()).limit(limit)
        with self._engine.connect() as conn:
            return [IngestRejection(row.batch, row.line, row.field, row.reason, row.snippet, row.at)
                    for row in conn.execute(query)]

    # ------------------------------------------------------------------------------------------ case states

    def quarantine(self, case_id: str, reason: str) -> None:
        """Take a case out of training for good, with the reason (shown by status and the dataset manifest)."""
        if not reason or not reason.strip():
            raise ValueError("reason: a quarantine needs a reason")
        t = cases_table

        def write(conn: Connection) -> int:
            return conn.execute(sa.update(t).where(t.c.model == self._model, t.c.id == case_id).values(
                state="quarantined", state_reason=reason, state_changed_at=self._clock())).rowcount

        if self._transaction(write) == 0:
            raise NotFound(self._no_case(case_id))
        log.info("%s: quarantined error case %s: %s", self._model, case_id, reason)

    def mark_consumed(self, case_ids: Iterable[str], run_id: str) -> int:
        """Mark new cases as trained on by ``run_id``; return how many changed state.

        Only a run that reached a verdict (deployed, rejected, held, rolled_back) consumes its cases; after a
        ``failed`` or ``skipped`` run nothing changes and the cases stay new for the next run. Calling
        this for an unknown run, or one still running, is an error: finish the run first. Cases that are not
        new (already consumed, quarantined) are left as they are, so calling again is harmless.
        """
        ids = sorted(set(case_ids))
        run = self.training_run(run_id)
        if run.status == "running":
            raise StoreError(f"training run {run_id!r} is still running; finish it before marking cases consumed")
        if run.status not in CONSUMING_STATUSES:
            log.info("training run %s finished %s: its %d cases stay new", run_id, run.status, len(ids))
            return 0
        t = cases_table

        def write(conn: Connection) -> int:
            changed = 0
            for chunk in _chunks(ids, 500):
                changed += conn.execute(sa.update(t).where(
                    t.c.model == self._model, t.c.id.in_(chunk), t.c.state == "new").values(
                    state="consumed", consumed_by_run=run_id, state_changed_at=self._clock())).rowcount
            return changed

        changed = self._transaction(write)
        log.info("%s: training run %s consumed %d of %d cases", self._model, run_id, changed, len(ids))
        return changed

    def _no_case(self, case_id: str) -> str:
        return f"error case {case_id!r} does not exist (model {self._model!r})"


def _linked(draft: CaseDraft, served: Mapping[str, str]) -> CaseDraft:
    """``draft`` with the version that served its request (``served``: request id -> version); ``InvalidCase``
    when the request was not served, or the row names another version."""
    if draft.request_id is None:
        return draft
    version = served.get(draft.request_id)
    if version is None:
        raise InvalidCase("request_id", f"{draft.request_id!r} was not served by this model (no router recorded "
                                        "it): leave request_id out to store the case on its own")
    if draft.model_version not in (None, version):
        raise InvalidCase("model_version", f"{draft.model_version!r}, but request {draft.request_id!r} was served "
                                           f"by version {version}")
    return replace(draft, model_version=version)


def _ordered_id(dialect: str) -> sa.ColumnElement[str]:
    """The id as ties in time are ordered: by code point on every database (PostgreSQL's default collation
    follows the locale, SQLite's compares UTF-8 bytes), so the export picks the same case of a tie on both."""
    return sa.collate(cases_table.c.id, "C") if dialect == "postgresql" else cases_table.c.id


# What an ErrorCase holds: a read selects these, not the bookkeeping columns (ingested_at, state_changed_at),
# each of which costs a conversion per row (an export reads a hundred thousand rows).
_CASE_COLUMNS = tuple(cases_table.c[name] for name in (
    "id", "created_at", "source", "model_version", "audio_uri", "audio_hash", "prediction", "correction",
    "error_types", "error_score", "annotator", "meta", "content_hash", "state", "state_reason", "consumed_by_run",
    "payload", "audio_duration_s", "audio_sample_rate"))


def _case_from_row(row: sa.Row[Any]) -> ErrorCase:
    """A row of ``_CASE_COLUMNS`` (unpacked by position: by name costs more than the rest of the read). The JSON
    values are the row's own, decoded for it: nothing else holds them, so they are not copied."""
    (case_id, created_at, source, model_version, audio_uri, audio_hash, prediction, correction, error_types,
     error_score, annotator, meta, content_hash, state, state_reason, consumed_by_run, payload, duration,
     sample_rate) = row
    return ErrorCase(
        id=case_id, created_at=created_at, source=source, model_version=model_version, audio_uri=audio_uri,
        audio_hash=audio_hash, prediction=prediction, correction=correction, error_types=tuple(error_types or ()),
        error_score=error_score, annotator=annotator, metadata=meta if meta is not None else {},
        content_hash=content_hash, state=state, state_reason=state_reason, consumed_by_run=consumed_by_run,
        payload=payload, audio_duration_s=duration,
        audio_sample_rate=sample_rate,
    )
