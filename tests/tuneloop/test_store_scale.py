"""The store's queries that must stay cheap at a million cases, compared with a straightforward reference.

The trigger's counts read one index range each and stop at the threshold (``count_limit``); the export reads
new cases newest first in pages. Both are checked here against plain Python over the same random rows (several
models, states, versions, corrections, times with ties), on SQLite and PostgreSQL, and the trigger's counts also
while another connection keeps storing cases. Speed is measured by ``benchmarks/bench_store.py``, not here.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tuneloop.store import ErrorCaseStore, cases_table, inferences_table

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
MODELS = ("default", "other")
VERSIONS = ("1", "2", "3", None)


@dataclass(frozen=True)
class Row:
    model: str
    id: str
    created_at: datetime
    model_version: str | None
    state: str
    corrected: bool


def random_rows(rng: random.Random, count: int, prefix: str = "c") -> list[Row]:
    """Cases over the last 30 days, times rounded to the hour so many share one (ties in the ordering), ids that
    a locale's collation orders otherwise than code points do (case, accents, punctuation)."""
    rows = []
    for i in range(count):
        at = NOW - timedelta(hours=rng.randrange(0, 30 * 24))
        case_id = f"{rng.choice((prefix, prefix.upper(), 'b', 'é', 'Z', '_', 'a-'))}{i:05d}"
        rows.append(Row(rng.choice(MODELS), case_id, at, rng.choice(VERSIONS),
                        rng.choice(("new", "new", "consumed", "quarantined")), rng.random() < 0.7))
    return rows


def insert(store: ErrorCaseStore, rows: list[Row]) -> None:
    values = [{"model": r.model, "id": r.id, "created_at": r.created_at, "ingested_at": NOW, "source": "test",
               "model_version": r.model_version, "audio_uri": None, "audio_hash": None, "prediction": "p",
               "correction": "c" if r.corrected else None, "error_types": [], "meta": {},
               "content_hash": f"h-{r.model}-{r.id}", "state": r.state} for r in rows]
    if values:
        with store._engine.begin() as conn:
            conn.execute(sa.insert(cases_table), values)


def insert_inferences(store: ErrorCaseStore, rng: random.Random) -> list[dict]:
    values = [{"model": model, "model_version": version, "period_start": NOW - timedelta(hours=hour),
               "count": rng.randrange(1, 500)}
              for model in MODELS for version in ("1", "2", "3") for hour in range(0, 72, 3)]
    with store._engine.begin() as conn:
        conn.execute(sa.insert(inferences_table), values)
    return values


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_trigger_metrics_match_a_reference(store, seed):
    rng = random.Random(seed)
    rows = random_rows(rng, 400)
    insert(store, rows)
    inferences = insert_inferences(store, rng)
    for model in MODELS:
        scoped = store.for_model(model)
        mine = [r for r in rows if r.model == model]
        new = [r for r in mine if r.state == "new"]
        new_corrected = [r for r in new if r.corrected]
        for window_hours, version in ((24, "3"), (72, None), (24 * 40, "1"), (1, "2")):
            start = NOW - timedelta(hours=window_hours)
            for limit in (None, 1, 7, len(new_corrected), len(new) + 5):
                metrics = scoped.trigger_metrics(NOW, timedelta(hours=window_hours), version, count_limit=limit)
                cap = limit if limit is not None else len(mine) + 1
                assert metrics.new_cases == min(len(new), cap)
                assert metrics.new_corrected_cases == min(len(new_corrected), cap)
                assert metrics.count_limit == limit
                assert metrics.window_errors == sum(
                    1 for r in mine if start <= r.created_at <= NOW and (version is None or r.model_version == version))
                assert metrics.window_inferences == sum(
                    i["count"] for i in inferences if i["model"] == model and start <= i["period_start"] <= NOW
                    and (version is None or i["model_version"] == version))


def test_a_count_limit_below_one_is_refused(store):
    with pytest.raises(ValueError, match="count_limit: must be at least 1"):
        store.trigger_metrics(NOW, timedelta(hours=1), None, count_limit=0)


def test_trigger_counts_stay_consistent_while_cases_are_stored(store):
    """Another connection stores new cases (some corrected) in small transactions during the checks: every check
    sees one moment (corrected <= all, both within what was stored before and after it), and counts never go back."""
    rng = random.Random(7)
    insert(store, [Row("default", f"base{i}", NOW - timedelta(hours=i), "1", "new", i % 2 == 0) for i in range(50)])
    writer = ErrorCaseStore(store._engine.url.render_as_string(hide_password=False))
    stored = {"new": 50, "corrected": 25}  # committed: a check that starts later sees at least these
    started = dict(stored)  # being written: a check that ends earlier sees at most these
    lock = threading.Lock()
    done = threading.Event()

    def write() -> None:
        for batch in range(40):
            rows = [Row("default", f"w{batch}-{i}", NOW - timedelta(minutes=i), "1", "new", rng.random() < 0.5)
                    for i in range(10)]
            for counts in (started, stored):
                with lock:
                    counts["new"] += len(rows)
                    counts["corrected"] += sum(r.corrected for r in rows)
                if counts is started:
                    insert(writer, rows)
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    last = (0, 0)
    checks = 0
    try:
        while not done.is_set() or checks < 5:
            with lock:
                before = dict(stored)
            metrics = store.trigger_metrics(NOW, timedelta(hours=24), "1")
            with lock:
                after = dict(started)
            seen = (metrics.new_cases, metrics.new_corrected_cases)
            assert metrics.new_corrected_cases <= metrics.new_cases
            assert before["new"] <= metrics.new_cases <= after["new"]
            assert before["corrected"] <= metrics.new_corrected_cases <= after["corrected"]
            assert seen[0] >= last[0] and seen[1] >= last[1]
            last, checks = seen, checks + 1
    finally:
        thread.join()
        writer.close()
    final = store.trigger_metrics(NOW, timedelta(hours=24), "1")
    assert (final.new_cases, final.new_corrected_cases) == (stored["new"], stored["corrected"])


@pytest.mark.parametrize("corrected_only", [True, False])
def test_export_pages_hold_every_new_case_once_newest_first(store, corrected_only):
    """Ties in time are ordered by id in code points on both databases, so both export the same dataset."""
    rng = random.Random(11)
    rows = random_rows(rng, 300)
    insert(store, rows)
    expected = sorted((r for r in rows if r.model == "default" and r.state == "new"
                       and (r.corrected or not corrected_only)), key=lambda r: (r.created_at, r.id), reverse=True)
    for size in (1, 7, 50, 1000):
        pages = list(store.iter_cases_for_export(corrected_only=corrected_only, batch_size=size))
        assert all(0 < len(page) <= size for page in pages)
        assert [c.id for page in pages for c in page] == [r.id for r in expected]
    oldest_first = store.cases_for_export(corrected_only=corrected_only)
    assert [c.id for c in oldest_first] == [r.id for r in reversed(expected)]


@pytest.fixture
def locale_store(postgres_url) -> Iterator[ErrorCaseStore]:
    """A PostgreSQL store whose database orders text by a language's rules (ICU "en": "_ a- b c C é Z"), as
    production databases created with en_US.UTF-8 do; the test server's default (C.UTF-8) orders by code point."""
    admin = sa.create_engine(sa.make_url(postgres_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    name = f"tuneloop_icu_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" LOCALE_PROVIDER icu ICU_LOCALE \'en\' '
                             "LOCALE 'C.UTF-8' TEMPLATE template0"))  # identifier from uuid hex: safe
    store = ErrorCaseStore(admin.url.set(database=name).render_as_string(hide_password=False))
    try:
        yield store
    finally:
        store.close()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.postgres
def test_ties_in_time_are_ordered_by_code_point_whatever_the_collation(locale_store):
    rows = [Row("default", case_id, NOW, "1", "new", True) for case_id in ("_1", "a-1", "b1", "c1", "C1", "é1", "Z1")]
    insert(locale_store, rows)
    newest_first = [c.id for page in locale_store.iter_cases_for_export(batch_size=3) for c in page]
    assert newest_first == sorted((r.id for r in rows), reverse=True)
    assert [c.id for c in locale_store.cases_for_export()] == sorted(r.id for r in rows)
