"""Schema versions of the store, and the migrations that bring an existing store to the newest one.

Installations keep their store across releases, so a release that changes the tables must change the stores
already in use. The mechanism is small and explicit:

* ``tuneloop_schema_version`` holds one integer, the version the tables are at;
* an empty database is created at the newest version directly (``metadata.create_all``) and stamped;
* a database with the store's tables and no version row is version 1 (every store before versions existed);
* an older version is brought forward by the ordered functions in ``MIGRATIONS`` (``MIGRATIONS[1]`` takes a store
  from 1 to 2, ...), then tables an older store never had are created at the newest version, then it is stamped;
* a newer version than this code knows is refused: its tables mean something this release cannot know.

Airflow starts many workers at once, and each opens the store. Opening reads the version first without a lock
(the usual case: nothing to do). Otherwise it takes a lock for one write transaction -- PostgreSQL an advisory
transaction lock, SQLite its write lock (``BEGIN IMMEDIATE``, see :mod:`~tuneloop.store.database`) -- reads the
version again (another worker may have done the work meanwhile) and does what is left, all in that transaction:
both databases change tables transactionally, so a worker that dies half way leaves the store as it was. Other
databases take no lock; there a worker that loses a race ("table already exists") tries again and finds the
work done.

Tables are changed with alembic's operations in batch mode: SQLite cannot alter a primary key, a constraint or a
column's nullability, so there a batch rebuilds the table (create, copy, drop, rename); PostgreSQL gets plain
``ALTER TABLE`` statements. A migration spells out its own columns and constraint names rather than reading
:mod:`~tuneloop.store.schema`: it must keep doing what it did when later versions change the tables again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from tuneloop.store.database import StoreError
from tuneloop.store.schema import SCHEMA_VERSION, metadata, version_table

if TYPE_CHECKING:
    from alembic.operations import BatchOperations, Operations

log = logging.getLogger(__name__)

CASES_TABLE = "tuneloop_error_cases"  # present in every version: its presence tells a store from an empty database
_POSTGRES_LOCK_KEY = int.from_bytes(b"tuneloop", "big")  # pg_advisory_xact_lock's key for schema changes


def schema_version(conn: Connection) -> int | None:
    """The version the database's tables are at; 1 for a store from before versions; None for an empty
    database."""
    inspector = sa.inspect(conn)
    if inspector.has_table(version_table.name):
        version = conn.scalar(sa.select(sa.func.max(version_table.c.version)))
        if version is not None:
            return int(version)
    return 1 if inspector.has_table(CASES_TABLE) else None


def prepare_schema(engine: Engine, writer: Engine) -> None:
    """Create or upgrade the store's tables to ``SCHEMA_VERSION``; fail fast when the database cannot be reached;
    refuse a store newer than this code.

    ``writer``: ``engine`` with the store's write-transaction option (SQLite takes its write lock at BEGIN).
    """
    url = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            found = schema_version(conn)
    except DBAPIError as error:
        raise StoreError(f"store {url} is not reachable: {error.orig}") from error
    _refuse_newer(found, url)
    if found == SCHEMA_VERSION:
        return
    last: DBAPIError | None = None
    for _ in range(len(metadata.tables) + 1):  # each lost race finds at least one more table in place
        try:
            with writer.begin() as conn:
                _lock(conn)
                _upgrade(conn, url)
            return
        except DBAPIError as error:
            last = error
            log.info("preparing the store's tables raced with another process (%s); retrying", error.orig)
    assert last is not None
    raise StoreError(f"store {url}: cannot create or upgrade its tables: {last.orig}") from last


def _lock(conn: Connection) -> None:
    """Serialise schema changes across processes until this transaction ends (SQLite: already, by BEGIN
    IMMEDIATE)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _POSTGRES_LOCK_KEY})


def _upgrade(conn: Connection, url: str) -> None:
    """Under the lock: read the version again and do whatever is still to do."""
    found = schema_version(conn)
    _refuse_newer(found, url)
    if found == SCHEMA_VERSION:
        return
    if found is None:
        metadata.create_all(conn)
        log.info("store %s: created the tables at schema version %d", url, SCHEMA_VERSION)
    else:
        from alembic.operations import Operations
        from alembic.runtime.migration import MigrationContext

        ops = Operations(MigrationContext.configure(connection=conn))
        for version in range(found, SCHEMA_VERSION):
            MIGRATIONS[version](ops, conn)
            log.info("store %s: migrated schema version %d -> %d", url, version, version + 1)
        metadata.create_all(conn)  # tables an older store never had, created as they are now
    _stamp(conn, SCHEMA_VERSION)


def _refuse_newer(version: int | None, url: str) -> None:
    if version is not None and version > SCHEMA_VERSION:
        raise StoreError(f"store {url} is at schema version {version}, newer than this tuneloop knows "
                         f"({SCHEMA_VERSION}): a newer tuneloop wrote it; upgrade tuneloop")


def _stamp(conn: Connection, version: int) -> None:
    version_table.create(conn, checkfirst=True)
    conn.execute(sa.delete(version_table))
    conn.execute(sa.insert(version_table).values(version=version))


# ---------------------------------------------------------------------------------------------- version 1 -> 2

# What identifies a row becomes per model: a new primary key (named pk_<table>), or a unique constraint over these
# columns that becomes unique with the model (named uq_<table>_model_<columns>).
_V2_PRIMARY_KEYS = {
    "tuneloop_error_cases": ["model", "id"],
    "tuneloop_inference_counts": ["model", "model_version", "period_start"],
    "tuneloop_training_runs": ["model", "run_id"],
    "tuneloop_regression_suites": ["model", "name"],
}
_V2_UNIQUE_PER_MODEL = {
    "tuneloop_error_cases": ["content_hash"],
    "tuneloop_ingest_rejections": ["rejection_key"],
    "tuneloop_deployment_events": ["event_key"],
    "tuneloop_suite_results": ["suite", "run_id"],
}
_V1_TABLES = ("tuneloop_error_cases", "tuneloop_ingest_rejections", "tuneloop_inference_counts",
              "tuneloop_training_runs", "tuneloop_deployment_events", "tuneloop_regression_suites",
              "tuneloop_suite_results")


def _v1_to_v2(ops: Operations, conn: Connection) -> None:
    """Several models in one store: every table gets a ``model`` column (existing rows: ``"default"``) at the
    front of its identity; cases get a JSON ``payload`` and may have no audio (chat); suite results get a
    ``metric`` and ``score`` and may have no WER/CER (a chat suite's)."""
    inspector = sa.inspect(conn)
    for table in _V1_TABLES:
        if not inspector.has_table(table):
            continue  # an old store without it: created at the newest version after the migrations
        primary_key, unique = _V2_PRIMARY_KEYS.get(table), _V2_UNIQUE_PER_MODEL.get(table)
        # SQLite reflects unnamed primary keys and UNIQUE constraints without a name; the batch names those it
        # must drop by this convention (the names _replace_primary_key and _unique_name use)
        names = {"uq": "uq_%(table_name)s_%(column_0_N_name)s"} | ({"pk": "pk_%(table_name)s"} if primary_key else {})
        with ops.batch_alter_table(table, naming_convention=names) as batch:
            batch.add_column(sa.Column("model", sa.String(200), nullable=False, server_default="default"))
            if table == "tuneloop_error_cases":
                batch.add_column(sa.Column("payload", sa.JSON))
                batch.alter_column("audio_uri", existing_type=sa.Text(), nullable=True)
                batch.create_index("ix_tuneloop_error_cases_model_state_created_at", ["model", "state", "created_at"])
            if table == "tuneloop_suite_results":
                batch.alter_column("wer", existing_type=sa.Float(), nullable=True)
                batch.alter_column("cer", existing_type=sa.Float(), nullable=True)
                batch.add_column(sa.Column("metric", sa.String(64)))
                batch.add_column(sa.Column("score", sa.Float))
            if primary_key:
                _replace_primary_key(batch, inspector, table, primary_key)
            if unique:
                _replace_unique(batch, inspector, table, unique)
        rows = conn.scalar(sa.select(sa.func.count()).select_from(sa.table(table)))
        log.info("%s: %d existing rows assigned to model 'default'", table, rows)


def _replace_primary_key(batch: BatchOperations, inspector: sa.Inspector, table: str, columns: list[str]) -> None:
    """The primary key becomes ``columns``, named ``pk_<table>``."""
    batch.drop_constraint(inspector.get_pk_constraint(table).get("name") or f"pk_{table}", type_="primary")
    batch.create_primary_key(f"pk_{table}", columns)


def _replace_unique(batch: BatchOperations, inspector: sa.Inspector, table: str, columns: list[str]) -> None:
    """Unique over ``columns`` becomes unique per model (``model`` + ``columns``)."""
    batch.drop_constraint(_unique_name(inspector, table, columns), type_="unique")
    batch.create_unique_constraint(f"uq_{table}_model_{'_'.join(columns)}", ["model", *columns])


def _unique_name(inspector: sa.Inspector, table: str, columns: list[str]) -> str:
    """The database's name for the unique constraint over ``columns`` (for SQLite's unnamed ones, the name the
    batch's naming convention gives them)."""
    for constraint in inspector.get_unique_constraints(table):
        if list(constraint["column_names"]) == columns:
            return constraint["name"] or f"uq_{table}_{'_'.join(columns)}"
    raise StoreError(f"{table}: no unique constraint over {', '.join(columns)} to migrate; the store's tables "
                     "are not those of a version-1 store")


# ---------------------------------------------------------------------------------------------- version 2 -> 3

_V3_CORRECTED = "correction IS NOT NULL"


def _v2_to_v3(ops: Operations, conn: Connection) -> None:
    """The store at a million cases: cases keep what ingest's probe found (duration, sample rate), so the export
    does not decode every file again; indexes that match the trigger's, the export's and the statistics' queries
    replace the single-column ones on ``created_at``, ``model_version`` and ``state`` (each query led by
    ``model``). Columns are added and indexes made without rebuilding the table (both databases can), so a large
    store upgrades in the time its indexes take to build. Existing cases have no duration: the export probes
    those when it reads them."""
    table = "tuneloop_error_cases"
    ops.add_column(table, sa.Column("audio_duration_s", sa.Float))
    ops.add_column(table, sa.Column("audio_sample_rate", sa.Integer))
    existing = {index["name"] for index in sa.inspect(conn).get_indexes(table)}
    for old in ("ix_tuneloop_error_cases_created_at", "ix_tuneloop_error_cases_model_version",
                "ix_tuneloop_error_cases_state"):
        if old in existing:
            ops.drop_index(old, table_name=table)
    ops.create_index("ix_tuneloop_error_cases_model_created_at", table, ["model", "created_at"])
    ops.create_index("ix_tuneloop_error_cases_model_model_version_created_at", table,
                     ["model", "model_version", "created_at"])
    ops.create_index("ix_tuneloop_error_cases_corrected", table, ["model", "state", "created_at", "id"],
                     sqlite_where=sa.text(_V3_CORRECTED), postgresql_where=sa.text(_V3_CORRECTED))
    if conn.dialect.name == "sqlite":
        ops.create_index("ix_tuneloop_error_cases_model_error_types", table, ["model", "error_types"])
    if sa.inspect(conn).has_table("tuneloop_inference_counts"):
        ops.create_index("ix_tuneloop_inference_counts_model_period_start", "tuneloop_inference_counts",
                         ["model", "period_start"])


# ---------------------------------------------------------------------------------------------- version 3 -> 4


def _v3_to_v4(ops: Operations, conn: Connection) -> None:
    """Served requests (the canary's online test): one row per request a router served, with its version, arm,
    latency, usage and, once judged, its outcome. A new table, spelled out as version 4 made it."""
    ops.create_table(
        "tuneloop_served_requests",
        sa.Column("model", sa.String(200), nullable=False, server_default="default"),
        sa.Column("request_id", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("arm", sa.String(16), nullable=False),
        sa.Column("served_at", sa.DateTime, nullable=False),
        sa.Column("latency_ms", sa.Float),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("completion_tokens", sa.Integer),
        sa.Column("outcome", sa.String(16)),
        sa.Column("judged_at", sa.DateTime),
        sa.Column("case_id", sa.String(128)),
        sa.PrimaryKeyConstraint("model", "request_id", name="pk_tuneloop_served_requests"),
    )
    ops.create_index("ix_tuneloop_served_requests_model_version_served_at", "tuneloop_served_requests",
                     ["model", "model_version", "served_at"])


# MIGRATIONS[n] takes a store from version n to n + 1.
MIGRATIONS: dict[int, Callable[[Operations, Connection], None]] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}
