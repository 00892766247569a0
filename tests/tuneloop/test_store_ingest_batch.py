"""Ingest writes a chunk of rows with a few statements (one lookup, one bulk insert, one lookup and one insert of
rejections), on SQLite and (when reachable) PostgreSQL. The rule checked: the outcome is exactly the one of storing
the rows one at a time, in line order, through ``store_case`` (the reference), whatever the batch holds: duplicates
within the batch, ids reused with other content, rows already stored, bad rows; and a bulk insert the database
refuses (a concurrent writer, a row the database rejects) falls back to row-by-row savepoints, losing nothing valid.

Chat rows (no audio) keep the examples fast; each example writes to models of its own, so nothing is cleaned up.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings

from tuneloop.intake import IngestLimits, InvalidCase, decode_row, read_lines
from tuneloop.store import DuplicateRow, ErrorCaseStore, IngestReport, RejectedRow, cases_table
from tuneloop.store import cases as cases_module
from tuneloop.tasks import task_for

NOW = datetime(2025, 6, 1, tzinfo=UTC)
MODELS = itertools.count()
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# small pools, so that random batches repeat ids and contents often
IDS = st.none() | st.sampled_from(["a", "b", "c"])
PROMPTS = st.sampled_from(["What is 2+2?", "Capital of France?", "Say hi"])
OUTPUTS = st.sampled_from(["4", "Paris", "hi"])


@st.composite
def valid_rows(draw) -> dict[str, Any]:
    row: dict[str, Any] = {"prompt": draw(PROMPTS), "output": draw(OUTPUTS), "source": "tests"}
    case_id = draw(IDS)
    if case_id is not None:
        row["id"] = case_id
    if draw(st.booleans()):
        row["metadata"] = {"n": draw(st.integers(0, 3))}  # not part of the content: the first occurrence's is kept
    return row


BAD_LINES = st.sampled_from([
    "{not json",
    "[1, 2]",
    json.dumps({"prompt": "Say hi", "source": "tests"}),  # no output
    json.dumps({"prompt": "Say hi", "output": "hi", "source": "tests", "colour": "red"}),  # unknown field
    json.dumps({"id": " padded ", "prompt": "Say hi", "output": "hi", "source": "tests"}),
])
LINES = st.lists(valid_rows().map(json.dumps) | BAD_LINES, max_size=25)


def chat_store(store: ErrorCaseStore, role: str) -> ErrorCaseStore:
    """A chat model of its own over ``store``'s database."""
    return store.for_model(f"{role}-{next(MODELS)}", task="chat")


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def reference_ingest(store: ErrorCaseStore, path: Path) -> IngestReport:
    """The rule, one row at a time: each line decoded, then stored alone through ``store_case``."""
    known = set(stored_rows(store))
    accepted: list[str] = []
    duplicates: list[DuplicateRow] = []
    refused: list[RejectedRow] = []
    with path.open("rb") as handle:
        lines = list(read_lines(handle, store._limits.max_line_bytes))
    for line in lines:
        try:
            case_id = store.store_case(decode_row(line, store._limits))
        except InvalidCase as error:
            refused.append(RejectedRow(line.number, error.field, error.reason, line.snippet))
            continue
        if case_id in known:
            duplicates.append(DuplicateRow(line.number, case_id))
        else:
            known.add(case_id)
            accepted.append(case_id)
    return IngestReport(str(path), len(lines), tuple(accepted), tuple(duplicates), tuple(refused))


def stored_rows(store: ErrorCaseStore) -> dict[str, dict[str, Any]]:
    """The model's stored cases by id, every column but the model."""
    t = cases_table
    with store._engine.connect() as conn:
        rows = conn.execute(sa.select(t).where(t.c.model == store.model)).mappings().all()
    return {row["id"]: {k: v for k, v in row.items() if k != "model"} for row in rows}


def recorded_rejections(store: ErrorCaseStore) -> list[tuple[str, int, str, str, str]]:
    return sorted((r.batch, r.line, r.field, r.reason, r.snippet) for r in store.ingest_rejections(limit=10_000))


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 7 rows and lookups of 3: a short batch crosses chunk and lookup boundaries."""
    monkeypatch.setattr(cases_module, "INGEST_CHUNK_ROWS", 7)
    monkeypatch.setattr(cases_module, "LOOKUP_ROWS", 3)


@given(stored=st.lists(valid_rows(), max_size=4), lines=LINES, refuse_bulk=st.booleans())
@PROPERTY
def test_a_batch_is_stored_as_one_row_at_a_time_would_be(store, tmp_path, small_chunks, stored, lines, refuse_bulk):
    """``refuse_bulk``: the database refuses every bulk insert (as it does when one row breaks one of its rules),
    so each chunk with a new case is written by the row-by-row fallback, which must come to the same outcome."""
    batched, reference = chat_store(store, "batched"), chat_store(store, "reference")
    for row in stored:  # the same cases already in both
        for target in (batched, reference):
            try:
                target.store_case(row)
            except InvalidCase:
                pass
    path = write_lines(tmp_path / f"batch-{next(MODELS)}.jsonl", lines)
    values, one_by_one = cases_module.CaseRecords._case_values, cases_module.CaseRecords._write_one_by_one
    fallbacks = []

    def counted(self, conn, drafts):
        fallbacks.append(len(drafts))
        return one_by_one(self, conn, drafts)

    cases_module.CaseRecords._write_one_by_one = counted
    if refuse_bulk:  # a NULL id breaks NOT NULL; the fallback inserts draft.values(), which is whole
        cases_module.CaseRecords._case_values = staticmethod(lambda draft: values(draft) | {"id": None})
    try:
        report = batched.ingest_jsonl(path)
    finally:
        cases_module.CaseRecords._case_values = staticmethod(values)
        cases_module.CaseRecords._write_one_by_one = one_by_one
    expected = reference_ingest(reference, path)

    assert report == expected
    assert bool(fallbacks) == (refuse_bulk and bool(report.accepted))  # the batch's own duplicates and conflicts
    # are decided before the insert: without a refusal of the database, no fallback
    assert stored_rows(batched) == stored_rows(reference)
    assert recorded_rejections(batched) == sorted((str(path), r.line, r.field, r.reason, r.snippet)
                                                  for r in expected.rejected)
    again = batched.ingest_jsonl(path)  # idempotent: nothing new, rejections recorded once
    assert again == reference_ingest(reference, path) and again.accepted == ()
    assert stored_rows(batched) == stored_rows(reference)
    assert recorded_rejections(batched) == sorted({(str(path), r.line, r.field, r.reason, r.snippet)
                                                   for r in (*report.rejected, *again.rejected)})


ROWS = [{"id": f"c{i}", "prompt": f"Question {i}?", "output": f"Answer {i}.", "source": "tests"} for i in range(6)]


@pytest.mark.parametrize("same_id", [True, False], ids=["same id", "other id"])
def test_a_case_written_between_lookup_and_insert_costs_nothing(store, tmp_path, caplog, monkeypatch, same_id):
    """A concurrent writer stores one of the chunk's cases after the chunk's lookup: the bulk insert hits the unique
    key, the chunk is written again row by row in the same transaction, and that row becomes a duplicate of the
    writer's case. On PostgreSQL the writer is another thread on its own connection; SQLite's write lock (BEGIN
    IMMEDIATE) rules that race out, so there the case is written on the ingest's own connection instead."""
    ingest = chat_store(store, "race")
    path = write_lines(tmp_path / "race.jsonl", [json.dumps(row) for row in ROWS])
    raced = dict(ROWS[3], id="c3" if same_id else "writer-3")
    original = cases_module.CaseRecords._existing_cases

    def lookup_then_race(self, conn, drafts):
        found = original(self, conn, drafts)
        if conn.dialect.name == "sqlite":
            draft = ingest._case_task().parse_case(raced, base_dir=tmp_path, default_source="api",
                                                   now=ingest._clock(), limits=ingest._limits)
            conn.execute(sa.insert(cases_table).values(**draft.values(), model=ingest.model,
                                                       ingested_at=ingest._clock(), state="new"))
        else:
            writer = threading.Thread(target=ingest.store_case, args=(raced,))
            writer.start()
            writer.join(timeout=30)
            assert not writer.is_alive()
        return found

    monkeypatch.setattr(cases_module.CaseRecords, "_existing_cases", lookup_then_race)
    with caplog.at_level(logging.INFO, logger="tuneloop.store.cases"):
        report = ingest.ingest_jsonl(path)

    assert "writing them one by one" in caplog.text
    assert report.accepted == ("c0", "c1", "c2", "c4", "c5") and report.rejected == ()
    assert report.duplicates == (DuplicateRow(4, raced["id"]),)
    assert sorted(stored_rows(ingest)) == sorted(["c0", "c1", "c2", raced["id"], "c4", "c5"])


def test_a_transient_error_of_the_bulk_insert_fails_the_chunk(store, tmp_path, monkeypatch):
    """An unusable database is no fault of the rows: the batch raises (and is ingested again later) instead of
    falling back to row by row, and the chunk writes nothing, not even its rejections."""
    ingest = chat_store(store, "transient")
    path = write_lines(tmp_path / "batch.jsonl", [json.dumps(row) for row in ROWS] + ["{not json"])
    fallbacks = []
    monkeypatch.setattr(cases_module.CaseRecords, "_write_one_by_one",
                        lambda self, conn, drafts: fallbacks.append(drafts) or ([], [], []))
    original = cases_module.CaseRecords._case_values
    monkeypatch.setattr(cases_module.CaseRecords, "_case_values", staticmethod(
        lambda draft: original(draft) | {"id": None}))  # the database refuses every row (NOT NULL)...
    monkeypatch.setattr(cases_module, "_is_transient", lambda error: True)  # ...as if it were gone
    with pytest.raises(sa.exc.IntegrityError, match="(?i)null"):
        ingest.ingest_jsonl(path)
    assert fallbacks == [] and stored_rows(ingest) == {} and recorded_rejections(ingest) == []


def test_lookups_bind_at_most_500_values_and_statements_do_not_grow_with_rows(store, tmp_path):
    """1,200 rows (three chunks, a few bad): a handful of statements per chunk, none with more than 500 values in
    its lookups."""
    ingest = chat_store(store, "statements")
    lines = [json.dumps({"prompt": f"Question {i}?", "output": "Answer.", "source": "tests"}) for i in range(1200)]
    lines[10] = lines[700] = "{not json"
    path = write_lines(tmp_path / "big.jsonl", lines)
    statements: list[tuple[str, int]] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(("SELECT", len(parameters)))
        else:
            statements.append((statement.split()[0].upper(), 0))

    sa.event.listen(ingest._engine, "before_cursor_execute", count)
    try:
        report = ingest.ingest_jsonl(path)
    finally:
        sa.event.remove(ingest._engine, "before_cursor_execute", count)
    assert len(report.accepted) == 1198 and [r.line for r in report.rejected] == [11, 701]
    selects = [n for kind, n in statements if kind == "SELECT"]
    assert max(selects) <= 500, selects
    assert len(statements) <= 3 * 12, statements


def test_case_values_are_the_drafts_values(tmp_path, wav_factory):
    """The bulk insert's shallow copy of a draft holds what ``CaseDraft.values()`` does."""
    wav_factory("a.wav")
    chat = {"messages": [{"role": "user", "content": "Hi?"}], "output": "Hello.", "metadata": {"deep": {"l": [1]}},
            "error_types": ["tone"]}
    speech = {"audio_path": "audio/a.wav", "prediction": "a", "correction": "b"}
    for task, row in ((task_for("chat"), chat), (task_for("speech_to_text"), speech)):
        draft = task.parse_case(row, base_dir=tmp_path, default_source="t", now=NOW, limits=IngestLimits())
        assert cases_module.CaseRecords._case_values(draft) == draft.values()
