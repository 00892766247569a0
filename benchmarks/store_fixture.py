"""Error-case stores at production scale for the store benchmarks (``benchmarks/bench_store.py``).

A store of ``n`` speech cases looks like a year of production: cases spread over the year, each made by the
version that was in production when it was created (31 versions: a bootstrap and 30 deployed fine-tunes, about 3%
of cases without a version), 40 training runs that reached a verdict and consumed the cases before them, 6 that
failed or were skipped, a backlog of new cases (the newest 5%), 1% quarantined, about 80% with a correction,
0-3 error types per case, inference counts per hour per version (the previous version keeps serving for a day
after each deployment), one refused JSONL row per 200 cases, and the deployment history of those versions.

The fill bypasses ingest on purpose: it writes the tables' rows with bulk inserts (``executemany`` through
SQLAlchemy core on :mod:`tuneloop.store.schema`'s tables), so a million cases take a minute or two instead of an
hour; ingest is measured separately, from real JSONL batches. The schema itself is made by ``ErrorCaseStore(url)``,
as production makes it. Only columns that ``cases_table`` has are filled (``audio_duration_s`` and
``audio_sample_rate`` when the schema has them).

Audio: every case points at one of a few hundred real 16 kHz WAVs of 2-8 s written once into the cache folder,
and its ``audio_duration_s`` is that file's; but each case has its own ``audio_hash`` (sha256 of its id), so a
dataset export sees as many recordings as cases. An export that trusts the stored hashes and durations works on
these stores; one that decodes every file again would find the hashes changed. The export benchmark therefore
excludes the audio copy.

Stores are built once and reused: SQLite files under ``$TUNELOOP_BENCH_CACHE`` (default
``~/.cache/tuneloop-bench``), PostgreSQL databases ``tuneloop_bench_<size>``; a marker row (the fixture version,
the store's schema version with a digest of its DDL, and the shape) says a store is complete and current. A store
whose marker differs is rebuilt. SQLite stores are not ANALYZEd (production SQLite stores never are); PostgreSQL
ones are VACUUM ANALYZEd, as autovacuum would do after such a load.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

import numpy as np
import sqlalchemy as sa

from tuneloop.audio import probe_audio, write_wav16
from tuneloop.config import TuneloopConfig
from tuneloop.store import ErrorCaseStore
from tuneloop.store.database import _batched
from tuneloop.store.schema import (
    DEFAULT_MODEL,
    SCHEMA_VERSION,
    cases_table,
    deployments_table,
    inferences_table,
    metadata,
    rejections_table,
    runs_table,
)

FIXTURE_VERSION = 1  # change whenever the generated content changes: cached stores are rebuilt
CACHE = Path(os.environ.get("TUNELOOP_BENCH_CACHE") or Path.home() / ".cache" / "tuneloop-bench")
POSTGRES_ADMIN_URL = os.environ.get("TUNELOOP_BENCH_POSTGRES_URL",
                                    "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
SIZES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000}
END = datetime(2025, 6, 1, tzinfo=UTC)  # the fixture's "now": fixed, so a store is the same whenever it is built
SPAN = timedelta(days=365)
MODEL_NAME = TuneloopConfig().mlflow.model_name  # the registered model of the default config
AUDIO_FILES = 300
CONSUMING_RUNS = 40
OTHER_RUNS = 6  # failed and skipped runs: they consume nothing
MARKER_TABLE = "tuneloop_bench_fixture"
ERROR_TYPES = ("substitution", "deletion", "insertion", "proper_noun", "number", "accent", "background_noise",
               "code_switch", "homophone", "disfluency", "ünïcødé", "名前")
ERROR_TYPE_WEIGHTS = (30, 15, 10, 10, 8, 6, 6, 4, 4, 3, 2, 2)
WORDS = ("the", "a", "meeting", "call", "tomorrow", "please", "send", "invoice", "number", "account", "weather",
         "in", "paris", "london", "at", "noon", "schedule", "cancel", "order", "my", "check", "balance", "music",
         "play", "next", "song", "turn", "off", "lights", "kitchen", "remind", "me", "to", "buy", "milk", "eggs",
         "how", "far", "is", "station", "open", "door", "set", "timer", "for", "ten", "minutes", "call", "mom")

_marker = sa.Table(MARKER_TABLE, sa.MetaData(), sa.Column("fixture", sa.String(200), nullable=False),
                   sa.Column("built_at", sa.DateTime, nullable=False))


@dataclass(frozen=True)
class Shape:
    """What a store holds: ``n`` cases, the newest ``new_fraction`` of them new, ``corrected_fraction`` with a
    correction."""

    n: int
    new_fraction: float = 0.05
    corrected_fraction: float = 0.8

    @property
    def key(self) -> str:
        """The marker: fixture version, schema (version and a digest of the tables' DDL, so a changed column or
        index rebuilds the store even before the version is bumped) and shape."""
        return (f"fixture{FIXTURE_VERSION}/schema{SCHEMA_VERSION}-{schema_digest()}/n{self.n}/"
                f"new{self.new_fraction}/corrected{self.corrected_fraction}")


def schema_digest() -> str:
    """A short hash of the DDL of the store's tables and indexes."""
    dialect = sa.dialects.sqlite.dialect()
    ddl = [str(sa.schema.CreateTable(table).compile(dialect=dialect)) for table in metadata.sorted_tables]
    ddl += sorted(str(sa.schema.CreateIndex(index).compile(dialect=dialect))
                  for table in metadata.sorted_tables for index in table.indexes)
    return hashlib.sha256("\n".join(ddl).encode()).hexdigest()[:12]


EXPORT_SHAPE = Shape(100_000, new_fraction=1.0, corrected_fraction=1.0)  # 100k new corrected cases to export


@dataclass(frozen=True)
class AudioFile:
    path: Path
    duration_s: float
    content_hash: str


@dataclass(frozen=True)
class BenchStore:
    """A built store: its backend, label and URL."""

    backend: str
    label: str
    shape: Shape
    url: str


# ------------------------------------------------------------------------------------------------ audio


def audio_files(cache: Path = CACHE) -> list[AudioFile]:
    """The few hundred WAVs (2-8 s, 16 kHz) the fixture's cases point at, written once."""
    folder = cache / "audio"
    index = folder / f"index-v{FIXTURE_VERSION}.json"
    if index.is_file():
        return [AudioFile(Path(p), d, h) for p, d, h in json.loads(index.read_text())]
    rng = np.random.default_rng(7)
    files = []
    for k in range(AUDIO_FILES):
        seconds = round(float(rng.uniform(2.0, 8.0)), 2)
        path = folder / f"clip-{k:04d}.wav"
        write_wav16(path, _tone(rng, seconds, 16_000), 16_000)
        info = probe_audio(path)
        files.append(AudioFile(path, info.duration_s, info.content_hash))
    index.write_text(json.dumps([[str(f.path), f.duration_s, f.content_hash] for f in files]))
    return files


def distinct_wavs(folder: Path, count: int, *, seed: int = 11) -> list[Path]:
    """``count`` distinct short WAVs (1-1.5 s) for ingest batches, written once into ``folder``."""
    done = folder / f".complete-{count}-{seed}"
    paths = [folder / f"ingest-{k:05d}.wav" for k in range(count)]
    if done.exists():
        return paths
    rng = np.random.default_rng(seed)
    for path in paths:
        write_wav16(path, _tone(rng, float(rng.uniform(1.0, 1.5)), 16_000), 16_000)
    done.touch()
    return paths


def _tone(rng: np.random.Generator, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * rng.uniform(120, 900) * t) + 0.02 * rng.standard_normal(t.size)).astype(
        np.float32)


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


# ------------------------------------------------------------------------------------------------ stores


def sqlite_store(label: str, shape: Shape, *, cache: Path = CACHE, log: Callable[[str], None] = print) -> BenchStore:
    """The SQLite store ``<cache>/store-<label>.db``, built if missing or stale. Built beside it and renamed into
    place, so an interrupted build leaves no half store."""
    path = cache / f"store-{label}.db"
    url = f"sqlite:///{path}"
    if path.exists() and _marker_of(url) == shape.key:
        return BenchStore("sqlite", label, shape, url)
    building = cache / f"store-{label}.building.db"
    for stale in (path, building):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{stale}{suffix}").unlink(missing_ok=True)
    started = time.perf_counter()
    _build(f"sqlite:///{building}", shape, cache)
    os.replace(building, path)
    log(f"  built SQLite store {label} ({shape.n:,} cases) in {time.perf_counter() - started:.0f} s: {path}")
    return BenchStore("sqlite", label, shape, url)


def postgres_store(label: str, shape: Shape, *, cache: Path = CACHE,
                   log: Callable[[str], None] = print) -> BenchStore:
    """The PostgreSQL database ``tuneloop_bench_<label>``, built if missing or stale (dropped and made again).
    Raises ``sa.exc.OperationalError`` when PostgreSQL is unreachable (see :func:`postgres_unreachable`)."""
    name = f"tuneloop_bench_{label}"
    url = sa.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
        if exists and _marker_of(url) == shape.key:
            return BenchStore("postgres", label, shape, url)
        started = time.perf_counter()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))  # name: our label, safe
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        _build(url, shape, cache)
        log(f"  built PostgreSQL store {label} ({shape.n:,} cases) in {time.perf_counter() - started:.0f} s: {name}")
        return BenchStore("postgres", label, shape, url)
    finally:
        admin.dispose()


def postgres_unreachable() -> str | None:
    """Why the benchmark cannot use PostgreSQL, or None."""
    try:
        engine = sa.create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as error:  # noqa: BLE001 - any failure means "no server to measure"
        first = (str(error).strip().splitlines() or [""])[0]
        return f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {type(error).__name__}: {first}"


def copy_store(store: BenchStore, label: str) -> BenchStore:
    """A throwaway copy of ``store`` (for benchmarks that write): a file copy, or ``CREATE DATABASE ... TEMPLATE``.
    Remove it with :func:`drop_store`."""
    if store.backend == "sqlite":
        source = Path(sa.make_url(store.url).database or "")
        target = source.with_name(f"scratch-{label}.db")
        drop_store(BenchStore("sqlite", label, store.shape, f"sqlite:///{target}"))
        shutil.copyfile(source, target)
        return BenchStore("sqlite", label, store.shape, f"sqlite:///{target}")
    name = f"tuneloop_scratch_{label}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(  # the template must have no sessions
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": sa.make_url(store.url).database})
            conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{sa.make_url(store.url).database}"'))
    finally:
        admin.dispose()
    return BenchStore("postgres", label, store.shape,
                      sa.make_url(store.url).set(database=name).render_as_string(hide_password=False))


def drop_store(store: BenchStore) -> None:
    """Remove a copy made by :func:`copy_store`."""
    if store.backend == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{sa.make_url(store.url).database}{suffix}").unlink(missing_ok=True)
        return
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{sa.make_url(store.url).database}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _marker_of(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(MARKER_TABLE):
                return None
            return conn.scalar(sa.select(_marker.c.fixture))
    except sa.exc.DBAPIError:
        return None
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------------------------ the fill


def _build(url: str, shape: Shape, cache: Path) -> None:
    """Create the schema as production does, then bulk-insert the rows and write the marker last. The cases'
    indexes are dropped for the load and made again after it (the usual bulk-load order: twice as fast on
    PostgreSQL as maintaining eight indexes row by row); the constraints stay."""
    ErrorCaseStore(url).close()
    files = audio_files(cache)
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA synchronous=OFF"))
    timeline = _Timeline(shape)
    try:
        with engine.begin() as conn:
            for index in cases_table.indexes:
                index.drop(conn)
            for chunk in _batched(_case_rows(shape, timeline, files), 20_000):
                conn.execute(sa.insert(cases_table), chunk)
            for index in cases_table.indexes:
                index.create(conn)
            conn.execute(sa.insert(runs_table), timeline.run_rows())
            conn.execute(sa.insert(deployments_table), timeline.deployment_rows())
            conn.execute(sa.insert(inferences_table), timeline.inference_rows())
            conn.execute(sa.insert(rejections_table), _rejection_rows(shape))
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text("VACUUM ANALYZE"))
        with engine.begin() as conn:
            _marker.create(conn, checkfirst=True)
            conn.execute(sa.insert(_marker).values(fixture=shape.key, built_at=datetime.now(UTC).replace(tzinfo=None)))
    finally:
        engine.dispose()


class _Timeline:
    """When each training run happened and which version was in production when."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.start = END - SPAN
        backlog_start = self.start + SPAN * (1 - shape.new_fraction)  # cases after this are still new
        rng = random.Random(3)
        step = SPAN * 0.95 / CONSUMING_RUNS  # the runs of the year (a store of only new cases had them too)
        self.runs: list[dict[str, Any]] = []
        version = 1
        self.deployments: list[tuple[datetime, str]] = [(self.start, "1")]  # the bootstrap
        for k in range(CONSUMING_RUNS):
            started = self.start + step * (k + 1)
            finished = started + timedelta(hours=rng.uniform(2, 6))
            deployed = rng.random() < 0.75
            if deployed:
                version += 1
                self.deployments.append((finished, str(version)))
            self.runs.append({"run_id": f"scheduled__{started:%Y-%m-%dT%H:%M:%S}", "started_at": started,
                              "finished_at": finished, "status": "deployed" if deployed else "rejected",
                              "candidate_version": str(version) if deployed else None,
                              "dataset_id": f"ds-{k:016x}"})
        for k in range(OTHER_RUNS):
            started = self.start + step * (k * 6 + 3.5)
            self.runs.append({"run_id": f"on_errors__{started:%Y-%m-%dT%H:%M:%S}", "started_at": started,
                              "finished_at": started + timedelta(minutes=20),
                              "status": "failed" if k % 2 else "skipped", "candidate_version": None,
                              "dataset_id": None})
        self.consuming = [r for r in self.runs if r["status"] in ("deployed", "rejected")]
        self.backlog_start = backlog_start

    def run_rows(self) -> list[dict[str, Any]]:
        return [{"model": DEFAULT_MODEL, **run, "summary": {"started": True, "verdict": run["status"]}}
                for run in self.runs]

    def deployment_rows(self) -> list[dict[str, Any]]:
        rows = []
        previous = None
        for k, (at, version) in enumerate(self.deployments):
            action = "bootstrap" if k == 0 else "deploy"
            rows.append({"model": DEFAULT_MODEL, "event_key": hashlib.sha256(f"{action}{version}".encode()).hexdigest(),
                         "action": action, "model_name": MODEL_NAME, "from_version": previous, "to_version": version,
                         "reason": "gate passed" if k else "initial production model", "actor": "airflow",
                         "run_id": None, "at": at, "details": {}})
            previous = version
        return rows

    def inference_rows(self) -> list[dict[str, Any]]:
        """Requests per hour per serving version: about 20 per error case, the previous version for one more
        day after each deployment."""
        per_hour = max(1, round(20 * self.shape.n / (SPAN / timedelta(hours=1))))
        rows = []
        hour = self.start.replace(minute=0, second=0, microsecond=0)
        rng = random.Random(5)
        cutovers = {at.replace(minute=0, second=0, microsecond=0): v for at, v in self.deployments[1:]}
        previous_until: tuple[datetime, str] | None = None
        current = "1"
        while hour < END:
            if hour in cutovers:
                previous_until = (hour + timedelta(days=1), current)
                current = cutovers[hour]
            rows.append({"model": DEFAULT_MODEL, "model_version": current, "period_start": hour,
                         "count": int(per_hour * rng.uniform(0.5, 1.5))})
            if previous_until and hour < previous_until[0]:
                rows.append({"model": DEFAULT_MODEL, "model_version": previous_until[1], "period_start": hour,
                             "count": int(per_hour * rng.uniform(0.05, 0.2))})
            hour += timedelta(hours=1)
        return rows


def _case_rows(shape: Shape, timeline: _Timeline, files: list[AudioFile]) -> Iterator[dict[str, Any]]:
    rng = random.Random(shape.n)
    columns = set(cases_table.c.keys())
    step = SPAN / shape.n
    weights = list(ERROR_TYPE_WEIGHTS)
    version_change = iter(timeline.deployments[1:])
    next_change = next(version_change, None)
    version = "1"
    run_index = 0
    for i in range(shape.n):
        created = timeline.start + step * i
        while next_change is not None and next_change[0] <= created:
            version = next_change[1]
            next_change = next(version_change, None)
        case_id = f"case-{i:08d}"
        audio = files[rng.randrange(len(files))]
        prediction = sentence(rng, rng.randint(4, 14))
        words = prediction.split()
        words[rng.randrange(len(words))] = rng.choice(WORDS)
        corrected = rng.random() < shape.corrected_fraction
        correction = " ".join(words) if corrected else None
        if created >= timeline.backlog_start:
            state, run = "new", None
        elif rng.random() < 0.01:
            state, run = "quarantined", None
        else:
            while run_index < len(timeline.consuming) - 1 and timeline.consuming[run_index]["started_at"] <= created:
                run_index += 1
            state, run = "consumed", timeline.consuming[run_index]
        count = rng.choices((0, 1, 2, 3), (15, 50, 25, 10))[0]
        types = list(dict.fromkeys(rng.choices(ERROR_TYPES, weights, k=count)))
        audio_hash = hashlib.sha256(case_id.encode()).hexdigest()
        row = {
            "model": DEFAULT_MODEL, "id": case_id, "created_at": created,
            "ingested_at": created + timedelta(seconds=rng.randint(30, 3600)),
            "source": rng.choice(("inbox", "inbox", "inbox", "jsonl", "api")),
            "model_version": None if rng.random() < 0.03 else version,
            "audio_uri": str(audio.path), "audio_hash": audio_hash,
            "audio_duration_s": audio.duration_s, "audio_sample_rate": 16_000,
            "prediction": prediction, "correction": correction, "error_types": types,
            "error_score": round(rng.random(), 3) if rng.random() < 0.7 else None,
            "annotator": f"annotator-{rng.randrange(12)}" if corrected else None,
            "meta": {"voice": f"v{rng.randrange(40)}", "condition": rng.choice(("clean", "noisy", "far_field"))},
            "content_hash": hashlib.sha256(f"sha256:{audio_hash}\n{correction or prediction}".encode()).hexdigest(),
            "state": state,
            "state_reason": "audio silent" if state == "quarantined" else None,
            "state_changed_at": (run["finished_at"] if run else created + timedelta(hours=1))
            if state != "new" else None,
            "consumed_by_run": run["run_id"] if run else None,
            "payload": None,
        }
        yield {k: v for k, v in row.items() if k in columns}


def _rejection_rows(shape: Shape) -> list[dict[str, Any]]:
    rng = random.Random(9)
    reasons = (("audio_path", "audio is missing"), ("correction", "empty"), ("error_types", "must be a list"),
               ("row", "not valid JSON"))
    rows = []
    for k in range(max(1, shape.n // 200)):
        field, reason = rng.choice(reasons)
        at = END - SPAN + SPAN * (k / max(1, shape.n // 200))
        rows.append({"model": DEFAULT_MODEL, "rejection_key": hashlib.sha256(f"rej{k}".encode()).hexdigest(),
                     "batch": f"inbox/batch-{k // 50:05d}.jsonl", "line": k % 50 + 1, "field": field,
                     "reason": reason, "snippet": '{"id": "..."}', "at": at})
    return rows
