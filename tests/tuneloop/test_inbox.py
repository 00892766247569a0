"""Inbox batches are ingested once, moved aside with their report; bad rows never block good ones."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from tuneloop.inbox import InboxPassFailed, ingest_inbox
from tuneloop.store import ErrorCaseStore, metadata


def test_batches_are_ingested_and_moved(tmp_path, wav_factory):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rows = [{"audio_path": str(wav_factory("a.wav")), "prediction": "helo", "correction": "hello"},
            {"audio_path": str(tmp_path / "missing.wav"), "prediction": "x", "correction": "y"}]
    (inbox / "b1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = ErrorCaseStore(f"sqlite:///{tmp_path / 'store.db'}")

    summary = ingest_inbox(store, inbox)

    assert summary["batches"] == 1
    assert len(summary["files"]["b1.jsonl"]["accepted"]) == 1 and len(summary["files"]["b1.jsonl"]["rejected"]) == 1
    assert not list(inbox.glob("*.jsonl"))
    report = json.loads((inbox / "processed" / "b1.jsonl.report.json").read_text())
    assert report["rejected"][0]["field"] == "audio_path"
    assert ingest_inbox(store, inbox) == {"files": {}, "batches": 0, "waiting": [], "failed": {}}
    assert store.statistics().total_cases == 1


def _row(audio, correction: str) -> str:
    return json.dumps({"audio_path": str(audio), "prediction": "x", "correction": correction}) + "\n"


def test_a_poison_batch_never_blocks_the_batches_after_it(tmp_path, wav_factory):
    """Bad rows are refused inside their batch; a batch that cannot be read goes to failed/ with the reason."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.jsonl").write_text(_row(wav_factory("a.wav"), "first") + '{"error_score": 1' + "0" * 400 + "}\n"
                                   + "[" * 100_000 + "]" * 100_000 + "\n")
    (inbox / "b.jsonl").mkdir()  # not a file: cannot be read
    (inbox / "c.jsonl").write_text(_row(wav_factory("c.wav"), "third"))
    store = ErrorCaseStore(f"sqlite:///{tmp_path / 'store.db'}")

    summary = ingest_inbox(store, inbox)

    assert sorted(summary["files"]) == ["a.jsonl", "c.jsonl"] and list(summary["failed"]) == ["b.jsonl"]
    assert [len(summary["files"][n]["accepted"]) for n in ("a.jsonl", "c.jsonl")] == [1, 1]
    assert [r["line"] for r in summary["files"]["a.jsonl"]["rejected"]] == [2, 3]
    error = json.loads((inbox / "failed" / "b.jsonl.error.json").read_text())
    assert error["batch"] == "b.jsonl" and "cannot be read" in error["reason"]
    assert not list(inbox.glob("*.jsonl")) and store.statistics().total_cases == 2


def test_a_batch_still_being_written_waits(tmp_path, wav_factory):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    batch = inbox / "a.jsonl"
    batch.write_text(_row(wav_factory("a.wav"), "first"))
    (inbox / ".b.jsonl").write_text(_row(wav_factory("b.wav"), "second"))  # a dotfile: a write in progress
    written = batch.stat().st_mtime
    store = ErrorCaseStore(f"sqlite:///{tmp_path / 'store.db'}")

    early = ingest_inbox(store, inbox, settle_seconds=10, clock=lambda: written + 3)
    assert early["waiting"] == ["a.jsonl"] and early["batches"] == 0 and batch.exists()

    later = ingest_inbox(store, inbox, settle_seconds=10, clock=lambda: written + 11)
    assert list(later["files"]) == ["a.jsonl"] and store.statistics().total_cases == 1
    assert (inbox / ".b.jsonl").exists()


def test_a_batch_of_a_name_seen_before_keeps_both_reports(tmp_path, wav_factory):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    store = ErrorCaseStore(f"sqlite:///{tmp_path / 'store.db'}")
    for correction in ("first", "second"):
        (inbox / "daily.jsonl").write_text(_row(wav_factory(f"{correction}.wav"), correction))
        ingest_inbox(store, inbox)
    processed = sorted(p.name for p in (inbox / "processed").iterdir())
    assert processed == ["daily.jsonl", "daily.jsonl.1", "daily.jsonl.1.report.json", "daily.jsonl.report.json"]


@pytest.mark.postgres
def test_a_batch_that_fails_for_a_passing_cause_is_retried_on_the_next_pass(tmp_path, wav_factory, postgres_url):
    """The store's database refuses connections during a pass: nothing moves, the pass fails after trying every
    batch, and the next pass (database back) ingests them."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("a", "b"):
        (inbox / f"{name}.jsonl").write_text(_row(wav_factory(f"{name}.wav"), name))
    store = ErrorCaseStore(postgres_url)
    database = sa.make_url(postgres_url).database
    admin = sa.create_engine(sa.make_url(postgres_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
        conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                     {"d": database})
    try:
        with pytest.raises(InboxPassFailed, match=r"2 inbox batch\(es\) stay for the next pass: a.jsonl: .*b.jsonl"):
            ingest_inbox(store, inbox)
        assert sorted(p.name for p in inbox.glob("*.jsonl")) == ["a.jsonl", "b.jsonl"]
        assert not (inbox / "failed").exists()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        admin.dispose()

    try:
        summary = ingest_inbox(store, inbox)
        assert sorted(summary["files"]) == ["a.jsonl", "b.jsonl"] and store.statistics().new_corrected_cases == 2
    finally:  # the session's database is shared: leave it empty
        with store._engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE " + ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)))
        store.close()


def test_a_bucket_prefix_is_an_inbox_and_its_audio_is_exported(tmp_path, wav_factory, gcs_emulator):
    """gs:// inbox: the batch is read from the bucket, relative audio stays in the bucket, and the export fetches
    it through object storage (error-case audio on gs:// used to count towards the trigger but never export)."""
    from airflow.sdk import ObjectStoragePath

    from tuneloop.config import DatasetConfig
    from tuneloop.datasets import export_dataset
    from tuneloop.storage import audio_fetcher

    inbox = ObjectStoragePath(f"gs://acme-tuneloop/inbox-{uuid.uuid4().hex[:8]}")
    rows = []
    for index in range(6):
        name = f"clip{index}.wav"
        (inbox / "audio" / name).write_bytes(wav_factory(name).read_bytes())
        rows.append(json.dumps({"audio_path": f"audio/{name}", "prediction": "x",
                                "correction": f"clip {'abcdef'[index]}",
                                "created_at": f"2025-05-0{index + 1}T00:00:00Z"}) + "\n")
    rows.append(json.dumps({"audio_path": "audio/gone.wav", "prediction": "x", "correction": "gone"}) + "\n")
    (inbox / "b1.jsonl").write_text("".join(rows))
    store = ErrorCaseStore(f"sqlite:///{tmp_path / 'store.db'}")

    summary = ingest_inbox(store, inbox)

    assert len(summary["files"]["b1.jsonl"]["accepted"]) == 7
    assert not (inbox / "b1.jsonl").exists() and (inbox / "processed" / "b1.jsonl").exists()
    assert json.loads((inbox / "processed" / "b1.jsonl.report.json").read_text())["batch"] == str(inbox / "b1.jsonl")
    uris = {store.get_case(i).audio_uri for i in summary["files"]["b1.jsonl"]["accepted"]}
    assert f"{inbox}/audio/clip0.wav" in uris

    config = DatasetConfig(min_duration_s=0.3, max_duration_s=2.0, eval_fraction=0.3, min_eval_cases=2)
    manifest = export_dataset(store, tmp_path / "storage", config, run_id="run-1",
                              fetch_audio=audio_fetcher(None, tmp_path / "scratch"))
    assert len(manifest.train_ids) + len(manifest.eval_ids) == 6
    [missing] = manifest.quarantined
    assert "audio missing" in missing.reason and "gone.wav" in missing.reason


def test_only_a_batch_that_is_itself_unreadable_goes_to_failed():
    """The rule behind failed/: a person must act on what lands there, so only the batch's own fault sends it; a
    network error reading a bucket, the store being down, or an error nobody foresaw leaves it for the next pass."""
    import aiohttp
    from airflow.sdk import ObjectStoragePath

    from tuneloop.inbox import _passing
    from tuneloop.store import StoreError

    local, remote = Path("/inbox/a.jsonl"), ObjectStoragePath("gs://acme-tuneloop/inbox/a.jsonl")
    assert not _passing(local, IsADirectoryError("a.jsonl")) and not _passing(local, PermissionError("denied"))
    assert not _passing(remote, PermissionError("403")) and not _passing(remote, IsADirectoryError("a prefix"))
    for error in (aiohttp.ClientOSError(104, "Connection reset by peer"), ConnectionResetError(),
                  sa.exc.OperationalError("INSERT", {}, Exception("server closed the connection")),
                  StoreError("store unreachable"), RuntimeError("HTTP 503 after retries")):
        assert _passing(remote, error), error
    assert _passing(local, StoreError("store unreachable")) and _passing(local, ValueError("a bug of ours"))
