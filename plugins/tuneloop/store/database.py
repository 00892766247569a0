"""Engine, errors and write transactions shared by every part of the store."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.pool import StaticPool

from tuneloop.intake import IngestLimits

if TYPE_CHECKING:
    from tuneloop.tasks import Task

log = logging.getLogger(__name__)

_WRITE_OPTION = "tuneloop_write"  # marks write transactions (SQLite takes its write lock when they begin)
_T = TypeVar("_T")


class StoreError(RuntimeError):
    """The store cannot do what was asked (bad URL, unreachable database, an illegal state change)."""


class NotFound(StoreError, LookupError):
    """A case or training run named by id does not exist (for the store's model)."""


class StoreBase:
    """What every part of the store shares: the engine, a writer for write transactions, the model it is scoped
    to and that model's task, the clock and the ingest limits (set by ``ErrorCaseStore``'s constructor), and
    :meth:`_transaction`. Every read and write of a part filters by, or writes, ``_model``."""

    _engine: Engine
    _writer: Engine
    _model: str
    _task: Task | str  # a task name until first needed: importing a task module is left to the first case
    _clock: Callable[[], datetime]
    _limits: IngestLimits

    def _transaction(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` in one write transaction; retry once when a concurrent writer won a unique-key race."""
        try:
            with self._writer.begin() as conn:
                return work(conn)
        except IntegrityError:
            log.info("concurrent write to the store; retrying once")
        with self._writer.begin() as conn:
            return work(conn)


def _json_value(name: str, value: dict[str, Any]) -> dict[str, Any]:
    """Check that ``value`` is plain JSON (no NaN, no datetimes) so every database stores it the same way."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: must be plain JSON ({error})") from error


def _is_transient(error: DBAPIError) -> bool:
    """Errors of the database, not of the row: retrying the same row later may succeed."""
    return error.connection_invalidated or isinstance(error, (sa.exc.OperationalError, sa.exc.InterfaceError))


def _batched(items: Iterable[_T], size: int) -> Iterable[list[_T]]:
    batch: list[_T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _grouped(conn: Connection, key: sa.ColumnElement[Any], aggregate: sa.ColumnElement[Any],
             where: sa.ColumnElement[bool]) -> dict[Any, Any]:
    return {k: v for k, v in conn.execute(sa.select(key, aggregate).where(where).group_by(key)).tuples()}


def _decode_json(text: str | bytes) -> Any:
    """The JSON columns' reader: msgspec's decoder (several times faster than ``json.loads``; an export reads
    three JSON values per case), and ``json.loads`` for what msgspec refuses but ``json.dumps`` may have written
    (NaN, integers beyond 64 bits)."""
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return json.loads(text)


def _make_engine(url: str) -> Engine:
    """An engine for ``url``; a bad URL or a missing driver is a StoreError naming the URL."""
    try:
        parsed = sa.make_url(url)
    except ArgumentError as error:
        raise StoreError(f"store_url: not a SQLAlchemy URL: {url!r}") from error
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed)
        return sa.create_engine(parsed, pool_pre_ping=True, json_deserializer=_decode_json)
    except (ArgumentError, ImportError) as error:
        raise StoreError(f"store_url {parsed.render_as_string(hide_password=True)}: {error}") from error


def _sqlite_engine(url: sa.URL) -> Engine:
    """SQLite set up for several Airflow tasks writing at once: WAL (readers never wait), a busy timeout, and
    write transactions that take the write lock when they begin (BEGIN IMMEDIATE), so two writers queue instead
    of one failing with "database is locked" when it upgrades a read to a write."""
    database = url.database or ""
    if database in ("", ":memory:"):
        engine = sa.create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False},
                                  json_deserializer=_decode_json)
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30}, json_deserializer=_decode_json)
    sa.event.listen(engine, "connect", _sqlite_connect)
    sa.event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    """Per connection: the busy timeout first, then WAL. Switching a new database to WAL needs an exclusive lock,
    and SQLite answers "database is locked" at once, without waiting, when that would deadlock with another
    connection's transaction (several workers opening a new store together): so the switch is retried."""
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event below starts transactions, not pysqlite
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    deadline = time.monotonic() + 30
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE_OPTION) else "BEGIN")
