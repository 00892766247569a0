"""Schema versions and migrations of the store, on SQLite and PostgreSQL.

A version-1 store (the tables before several models shared one store, frozen below exactly as they were) holding
rows written with plain SQL is upgraded in place when a new ``ErrorCaseStore`` opens it: every row is the default
model's, the new constraints hold, and the tables are exactly those a fresh store gets. Several processes opening
the same old store at once end with one upgrade and no error; a failed upgrade leaves the store as it was; a store
newer than the code is refused.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from tuneloop.config import SuiteSpec
from tuneloop.history import DeploymentEvent
from tuneloop.intake import IngestLimits, InvalidCase, Line, decode_row, parse_case, sha256
from tuneloop.store import SCHEMA_VERSION, ErrorCaseStore, StoreError, version_table
from tuneloop.store import migrations
from tuneloop.store.migrations import MIGRATIONS, schema_version

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

# ------------------------------------------------------------------------------------ version 1, frozen as it was

V1 = sa.MetaData()

sa.Table(
    "tuneloop_error_cases", V1,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("created_at", sa.DateTime, nullable=False, index=True),
    sa.Column("ingested_at", sa.DateTime, nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(200), index=True),
    sa.Column("audio_uri", sa.Text, nullable=False),
    sa.Column("audio_hash", sa.String(64), index=True),
    sa.Column("prediction", sa.Text, nullable=False),
    sa.Column("correction", sa.Text),
    sa.Column("error_types", sa.JSON, nullable=False),
    sa.Column("error_score", sa.Float),
    sa.Column("annotator", sa.String(200)),
    sa.Column("metadata", sa.JSON, nullable=False, key="meta"),
    sa.Column("content_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("state_reason", sa.Text),
    sa.Column("state_changed_at", sa.DateTime),
    sa.Column("consumed_by_run", sa.String(250)),
)
sa.Table(
    "tuneloop_ingest_rejections", V1,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rejection_key", sa.String(64), nullable=False, unique=True),
    sa.Column("batch", sa.Text, nullable=False),
    sa.Column("line", sa.Integer, nullable=False),
    sa.Column("field", sa.String(100), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("snippet", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime, nullable=False),
)
sa.Table(
    "tuneloop_inference_counts", V1,
    sa.Column("model_version", sa.String(200), primary_key=True),
    sa.Column("period_start", sa.DateTime, primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
)
sa.Table(
    "tuneloop_training_runs", V1,
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime, index=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("dataset_id", sa.String(100)),
    sa.Column("candidate_version", sa.String(200)),
    sa.Column("summary", sa.JSON, nullable=False),
)
sa.Table(
    "tuneloop_deployment_events", V1,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_key", sa.String(64), nullable=False, unique=True),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False, index=True),
    sa.Column("from_version", sa.String(200)),
    sa.Column("to_version", sa.String(200)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("run_id", sa.String(250)),
    sa.Column("at", sa.DateTime, nullable=False, index=True),
    sa.Column("details", sa.JSON, nullable=False),
)
sa.Table(
    "tuneloop_regression_suites", V1,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("registered_at", sa.DateTime, nullable=False),
)
sa.Table(
    "tuneloop_suite_results", V1,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("suite", sa.String(200), nullable=False, index=True),
    sa.Column("model_version", sa.String(200)),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("at", sa.DateTime, nullable=False, index=True),
    sa.Column("wer", sa.Float, nullable=False),
    sa.Column("cer", sa.Float, nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("result", sa.JSON, nullable=False),
    sa.UniqueConstraint("suite", "run_id", name="uq_tuneloop_suite_results_suite_run"),
)

# ------------------------------------------------------------------------------------------- version-1 rows

RUN = "scheduled__2025-05-01T00:00:00+00:00"
BAD_LINE = Line(1, b"{not json\n", 10)


def sql_time(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def case_row(case_id: str, audio: str, correction: str | None, **state: Any) -> dict[str, Any]:
    """A row as version 1 stored it, checked by today's rules (so storing it again finds it)."""
    draft = parse_case({"id": case_id, "audio_uri": audio, "prediction": "helo", "correction": correction,
                        "model_version": "3", "metadata": {"voice": "f1"}, "created_at": "2025-05-01T10:00:00Z"},
                       base_dir=Path("/"), default_source="api", now=NOW)
    values = draft.values()
    for later in ("payload", "audio_duration_s", "audio_sample_rate"):  # columns of later versions
        del values[later]
    values["metadata"] = values.pop("meta")
    return values | {"ingested_at": NOW, "state": "new"} | state


def bad_line_rejection(batch: Path) -> dict[str, Any]:
    with pytest.raises(InvalidCase) as refused:
        decode_row(BAD_LINE, IngestLimits())
    field, reason, snippet = refused.value.field, refused.value.reason, BAD_LINE.snippet
    return {"rejection_key": sha256(json.dumps([str(batch), 1, field, reason, snippet])), "batch": str(batch),
            "line": 1, "field": field, "reason": reason, "snippet": snippet, "at": NOW}


def deploy_event(**changes: Any) -> DeploymentEvent:
    fields = {"action": "deploy", "model_name": "stt", "from_version": "1", "to_version": "2", "reason": "better",
              "run_id": RUN, "at": NOW - timedelta(days=30)}
    return DeploymentEvent(**(fields | changes))


def event_row(event: DeploymentEvent) -> dict[str, Any]:
    identity = [event.action, event.model_name, event.from_version, event.to_version, event.run_id]
    if event.run_id is None:
        identity.append(event.at.isoformat())
    return {"event_key": sha256(json.dumps(identity)), "action": event.action, "model_name": event.model_name,
            "from_version": event.from_version, "to_version": event.to_version, "reason": event.reason,
            "actor": event.actor, "run_id": event.run_id, "at": event.at, "details": {}}


def v1_rows(batch: Path) -> dict[str, list[dict[str, Any]]]:
    suite = SuiteSpec(name="critical", data_path=Path("/suites/critical.jsonl")).model_dump(mode="json")
    return {
        "tuneloop_error_cases": [
            case_row("c1", "gs://bucket/c1.wav", "hello one"),
            case_row("c2", "gs://bucket/c2.wav", "hello two", state="consumed", consumed_by_run=RUN,
                     state_changed_at=NOW),
            case_row("c3", "gs://bucket/c3.wav", None, state="quarantined", state_reason="bad label"),
        ],
        "tuneloop_ingest_rejections": [bad_line_rejection(batch)],
        "tuneloop_inference_counts": [
            {"model_version": "3", "period_start": NOW - timedelta(hours=2), "count": 40},
            {"model_version": "3", "period_start": NOW - timedelta(hours=1), "count": 60},
        ],
        "tuneloop_training_runs": [
            {"run_id": RUN, "started_at": NOW - timedelta(days=30, hours=1), "finished_at": NOW - timedelta(days=30),
             "status": "deployed", "dataset_id": "ds-1", "candidate_version": "2", "summary": {"started": True}},
            {"run_id": "manual__now", "started_at": NOW - timedelta(hours=1), "status": "running",
             "summary": {"started": True}},
        ],
        "tuneloop_deployment_events": [
            event_row(deploy_event(action="bootstrap", from_version=None, to_version="1", run_id=None,
                                   at=NOW - timedelta(days=60))),
            event_row(deploy_event()),
        ],
        "tuneloop_regression_suites": [{"name": "critical", "spec": suite, "registered_at": NOW}],
        "tuneloop_suite_results": [
            {"suite": "critical", "model_version": "2", "run_id": RUN, "at": NOW - timedelta(days=30), "wer": 0.1,
             "cer": 0.05, "n": 20, "passed": True, "result": {"name": "critical", "passed": True}},
        ],
    }


def write_v1_store(url: str, batch: Path, tables: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Create the version-1 tables (all, or ``tables``) and insert ``v1_rows`` with plain SQL."""
    rows = v1_rows(batch)
    engine = sa.create_engine(url)
    names = tables or list(rows)
    V1.create_all(engine, tables=[V1.tables[name] for name in names])
    with engine.begin() as conn:
        for name in names:
            for row in rows[name]:
                values = {k: json.dumps(v) if isinstance(v, (dict, list)) else
                          sql_time(v) if isinstance(v, datetime) else v for k, v in row.items()}
                columns = ", ".join(values)
                params = ", ".join(f":{key}" for key in values)
                conn.execute(sa.text(f"INSERT INTO {name} ({columns}) VALUES ({params})"), values)
    engine.dispose()
    return {name: rows[name] for name in names}


def schema_of(url: str) -> dict[str, Any]:
    """Every table's columns (type, nullability, default), primary key, unique constraints and indexes."""
    engine = sa.create_engine(url)
    inspector = sa.inspect(engine)
    schema = {}
    for table in sorted(inspector.get_table_names()):
        schema[table] = {
            "columns": {c["name"]: (str(c["type"]), c["nullable"], c.get("default"))
                        for c in inspector.get_columns(table)},
            "primary_key": (inspector.get_pk_constraint(table)["name"],
                            inspector.get_pk_constraint(table)["constrained_columns"]),
            "unique": sorted((u["name"], u["column_names"]) for u in inspector.get_unique_constraints(table)),
            "indexes": sorted((i["name"], i["column_names"], i["unique"]) for i in inspector.get_indexes(table)),
        }
    engine.dispose()
    return schema


def version_of(url: str) -> int | None:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        version = schema_version(conn)
    engine.dispose()
    return version


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def new_database(request, tmp_path) -> Iterator[Callable[[], str]]:
    """Makes empty databases on the backend, each call a new one (PostgreSQL: dropped at the end)."""
    made: list[str] = []
    admin = None
    if request.param == "postgres":
        admin_url = sa.make_url(request.getfixturevalue("postgres_url")).set(database="postgres")
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")

    def make() -> str:
        name = f"tuneloop_migration_{uuid.uuid4().hex[:10]}"
        if admin is None:
            return f"sqlite:///{tmp_path / name}.db"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))  # identifier from uuid hex: safe
        made.append(name)
        return admin.url.set(database=name).render_as_string(hide_password=False)

    yield make
    if admin is not None:
        with admin.connect() as conn:
            for name in made:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def batch(tmp_path) -> Path:
    path = tmp_path / "batch.jsonl"
    path.write_bytes(BAD_LINE.raw)
    return path


# ---------------------------------------------------------------------------------------------------- tests


def test_every_version_has_its_migration():
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION))


def test_a_fresh_store_is_created_at_the_newest_version(new_database):
    url = new_database()
    ErrorCaseStore(url).close()
    assert version_of(url) == SCHEMA_VERSION


def test_a_version_1_store_is_upgraded_in_place(new_database, batch, caplog):
    url = new_database()
    written = write_v1_store(url, batch)
    assert version_of(url) == 1
    with caplog.at_level("INFO", logger="tuneloop.store.migrations"):
        store = ErrorCaseStore(url, clock=lambda: NOW)
    for version in range(1, SCHEMA_VERSION):
        assert f"migrated schema version {version} -> {version + 1}" in caplog.text
    assert version_of(url) == SCHEMA_VERSION

    # every row is there, the default model's
    with store._engine.connect() as conn:
        for table, rows in written.items():
            counts = dict(conn.execute(sa.text(f"SELECT model, COUNT(*) FROM {table} GROUP BY model")).tuples().all())
            assert counts == {"default": len(rows)}, table
    c1 = store.get_case("c1")
    assert (c1.correction, c1.metadata, c1.state, c1.payload) == ("hello one", {"voice": "f1"}, "new", None)
    assert c1.created_at == datetime(2025, 5, 1, 10, tzinfo=UTC) and c1.audio_uri == "gs://bucket/c1.wav"
    assert store.get_case("c2").consumed_by_run == RUN and store.get_case("c3").state_reason == "bad label"
    assert [c.id for c in store.cases_for_export()] == ["c1"]
    assert store.training_run(RUN).status == "deployed"
    assert [r.run_id for r in store.running_training_runs()] == ["manual__now"]
    metrics = store.trigger_metrics(NOW, timedelta(hours=3), "3")
    assert (metrics.window_inferences, metrics.running_training_run) == (100, "manual__now")
    assert metrics.last_training_finished_at == NOW - timedelta(days=30)
    assert store.deployed_versions("stt") == ["2", "1"]
    assert [s.name for s in store.registered_suites()] == ["critical"]
    assert [r["run_id"] for r in store.suite_history("critical")] == [RUN]

    # what identified a row still does: nothing is stored twice
    assert store.store_failed_case("gs://bucket/c1.wav", "helo", "Hello one!", case_id="c1") == "c1"
    assert not store.record_deployment(deploy_event(at=NOW))
    assert store.ingest_jsonl(batch).rejected and len(store.ingest_rejections()) == 1
    assert not store.record_suite_result(RUN, {"name": "critical", "wer": 0.1, "cer": 0.05, "n": 20, "passed": True})
    assert store.statistics().total_cases == 3

    # the new constraints: identities are per model, chat cases need no audio
    other = store.for_model("other")
    assert other.store_failed_case("gs://bucket/c1.wav", "helo", "hello one", case_id="c1") == "c1"
    assert other.start_training_run(RUN).status == "running"
    other.record_inferences("3", 5, period_start=NOW - timedelta(hours=2))
    assert other.record_deployment(deploy_event())
    assert other.ingest_jsonl(batch).rejected and len(other.ingest_rejections()) == 1
    assert store.statistics().total_cases == 3 and store.trigger_metrics(NOW, timedelta(hours=3), "3") \
        .window_inferences == 100
    with store._engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO tuneloop_error_cases (model, id, created_at, ingested_at, source, "
                             "prediction, error_types, metadata, content_hash, state, payload) VALUES ('chat', 'x', "
                             "'2025-05-01 00:00:00.000000', '2025-05-01 00:00:00.000000', 'api', 'p', '[]', '{}', "
                             "'h', 'new', '{\"messages\": []}')"))
    assert store.for_model("chat").get_case("x").payload == {"messages": []}
    with pytest.raises(IntegrityError), store._engine.begin() as conn:
        conn.execute(sa.text("UPDATE tuneloop_error_cases SET id = 'c1' WHERE model = 'default' AND id = 'c2'"))
    store.close()

    # exactly the tables a new store gets
    fresh = new_database()
    ErrorCaseStore(fresh).close()
    assert schema_of(url) == schema_of(fresh)


def test_tables_an_old_store_lacks_are_created_at_the_newest_version(new_database, batch):
    url = new_database()
    write_v1_store(url, batch, tables=["tuneloop_error_cases", "tuneloop_training_runs"])
    with ErrorCaseStore(url) as store:
        assert store.statistics().total_cases == 3 and store.registered_suites() == []
    fresh = new_database()
    ErrorCaseStore(fresh).close()
    assert schema_of(url) == schema_of(fresh)


def test_a_failed_upgrade_leaves_the_store_as_it_was(new_database, batch, monkeypatch):
    url = new_database()
    write_v1_store(url, batch)
    before = schema_of(url)
    upgrade = MIGRATIONS[1]

    def upgrade_then_fail(ops, conn) -> None:
        upgrade(ops, conn)
        raise RuntimeError("the worker died half way")

    monkeypatch.setitem(migrations.MIGRATIONS, 1, upgrade_then_fail)
    with pytest.raises(RuntimeError, match="half way"):
        ErrorCaseStore(url)
    assert schema_of(url) == before and version_of(url) == 1
    monkeypatch.setitem(migrations.MIGRATIONS, 1, upgrade)
    with ErrorCaseStore(url) as store:
        assert store.statistics().total_cases == 3


def test_a_store_newer_than_this_code_is_refused(new_database):
    url = new_database()
    with ErrorCaseStore(url) as store, store._engine.begin() as conn:
        conn.execute(sa.update(version_table).values(version=SCHEMA_VERSION + 1))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer .*upgrade tuneloop"):
        ErrorCaseStore(url)
    assert version_of(url) == SCHEMA_VERSION + 1  # left alone


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _open_when_told(url: str, go: Any, results: Any) -> None:
    """A worker process: open the store when ``go`` is set; report what it saw and what it logged (or the error)."""
    logger = logging.getLogger("tuneloop.store.migrations")
    logger.setLevel(logging.INFO)
    logger.addHandler(messages := _Messages())
    go.wait(30)
    try:
        with ErrorCaseStore(url) as store:
            total = store.statistics().total_cases
        changed = any("migrated schema version" in m or "created the tables" in m for m in messages.messages)
        raced = any("raced" in m for m in messages.messages)
        results.put(("ok", total, changed, raced))
    except Exception as error:  # noqa: BLE001 - reported to the test
        results.put(("error", repr(error)))


@pytest.mark.parametrize("old", [True, False], ids=["version-1", "empty"])
def test_several_processes_preparing_a_store_at_once(new_database, batch, old):
    """Airflow workers starting together on an old store (or an empty database): one upgrades (creates) under the
    lock, the others wait for it and find the work done (none loses a race and retries)."""
    url = new_database()
    if old:
        write_v1_store(url, batch)
    context = multiprocessing.get_context("fork")
    go, results = context.Event(), context.Queue()
    workers = [context.Process(target=_open_when_told, args=(url, go, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    go.set()
    outcomes = sorted(results.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(10)
    cases = 3 if old else 0
    assert outcomes == [("ok", cases, False, False)] * (len(workers) - 1) + [("ok", cases, True, False)]
    assert version_of(url) == SCHEMA_VERSION
    fresh = new_database()
    ErrorCaseStore(fresh).close()
    assert schema_of(url) == schema_of(fresh)
