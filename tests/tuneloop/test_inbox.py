"""Inbox batches are ingested once, moved aside with their report; bad rows never block good ones."""

from __future__ import annotations

import json

from tuneloop.inbox import ingest_inbox
from tuneloop.store import ErrorCaseStore


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
    assert ingest_inbox(store, inbox) == {"files": {}, "batches": 0}
    assert store.statistics().total_cases == 1
