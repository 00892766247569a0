"""Fixtures of the core tests: the error-case store on SQLite and (when reachable) PostgreSQL; a real local MLflow
per test (``env``: a copy of one migrated template database), its registry and an in-memory deployment history."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.tuneloop.registry_testing import MemoryHistory, MlflowEnv, template_db
from tuneloop.registry import ModelRegistry
from tuneloop.store import ErrorCaseStore, metadata

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
POSTGRES_ADMIN_URL = os.environ.get("TUNELOOP_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


class Clock:
    """A settable "now" for the store."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway database for this test session; skipped when Postgres is unreachable (failed under CI)."""
    try:
        admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT",
                                 connect_args={"connect_timeout": 3})
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as error:  # noqa: BLE001 - any failure here means "no server to test against"
        first_line = (str(error).strip().splitlines() or [""])[0]
        reason = f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {type(error).__name__}: {first_line}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"tuneloop_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))  # identifier from uuid hex: safe
    try:
        yield sa.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request, tmp_path, clock) -> Iterator[ErrorCaseStore]:
    url = f"sqlite:///{tmp_path / 'db' / 'store.db'}"
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
    store = ErrorCaseStore(url, clock=clock)
    yield store
    if request.param == "postgres":  # empty the tables for the next test (faster than dropping them)
        names = ", ".join(f'"{table.name}"' for table in metadata.sorted_tables)
        with store._engine.begin() as conn:
            conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY"))
    store.close()


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return template_db(tmp_path_factory.getbasetemp())


@pytest.fixture
def env(tmp_path: Path, mlflow_template: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowEnv:
    monkeypatch.chdir(tmp_path)
    return MlflowEnv.create(tmp_path, mlflow_template)


@pytest.fixture
def registry(env: MlflowEnv) -> ModelRegistry:
    return env.registry()


@pytest.fixture
def history() -> MemoryHistory:
    return MemoryHistory()
