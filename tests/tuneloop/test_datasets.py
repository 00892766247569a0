from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import sqlalchemy as sa

from tuneloop.audio import probe_audio
from tuneloop.config import DatasetConfig, SuiteSpec
from tuneloop.datasets import DatasetTooSmall, export_dataset, load_manifest
from tuneloop.regression import SuiteError, leakage_guard, read_suite
from tuneloop.store import ErrorCaseStore, cases_table
from tuneloop.tasks import speech_to_text as speech

T0 = datetime(2025, 5, 1, tzinfo=UTC)
NOW = datetime(2025, 6, 1, tzinfo=UTC)
CONFIG = DatasetConfig(min_duration_s=0.3, max_duration_s=2.0, eval_fraction=0.3, min_eval_cases=2)


@pytest.fixture
def store(tmp_path) -> ErrorCaseStore:
    with ErrorCaseStore(f"sqlite:///{tmp_path / 'store.db'}", clock=lambda: NOW) as store:
        yield store


def add_cases(store, wav_factory, count: int, *, start: int = 0, **wav_kwargs) -> list[str]:
    """``count`` corrected cases, one hour apart, alternating voices."""
    return [
        store.store_failed_case(
            wav_factory(f"case{i}.wav", **wav_kwargs), "wrong words", f"Case number {words(i)}!",
            metadata={"voice": f"v{i % 2}", "condition": "clean", "source": "ignored"}, source="production",
            model_version="3", created_at=T0 + timedelta(hours=i))
        for i in range(start, start + count)
    ]


DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def words(number: int) -> str:
    return " ".join(DIGITS[int(d)] for d in str(number))


def read_rows(manifest, split: str) -> list[dict]:
    return [json.loads(line) for line in manifest.split_path(split).read_text().splitlines()]


def test_export_writes_a_self_contained_time_split_dataset(store, wav_factory, tmp_path):
    ids = add_cases(store, wav_factory, 10)
    manifest = export_dataset(store, tmp_path / "root", CONFIG, run_id="run-1", now=NOW)
    folder = tmp_path / "root" / "datasets" / manifest.dataset_id
    assert manifest.directory == folder and not manifest.reused
    assert manifest.train_ids == tuple(ids[:7]) and manifest.eval_ids == tuple(ids[7:])  # most recent 30% evaluate
    assert manifest.counts["train"] == 7 and manifest.counts["eval"] == 3 and manifest.counts["candidates"] == 10
    row = read_rows(manifest, "eval")[0]
    assert row == {
        "id": ids[7], "audio": row["audio"], "text": "case number seven", "duration_s": 0.5, "sample_rate": 16000,
        "created_at": (T0 + timedelta(hours=7)).isoformat(), "model_version": "3", "source": "production",
        "voice": "v1", "condition": "clean",
    }
    info = sf.info(folder / row["audio"])
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert folder.stat().st_mode & 0o755 == 0o755 and (folder / row["audio"]).stat().st_mode & 0o644 == 0o644
    assert load_manifest(folder) == manifest and load_manifest(folder / "manifest.json").run_id == "run-1"
    stored = json.loads((folder / "manifest.json").read_text())
    assert stored["case_ids"]["train"] == ids[:7] and stored["created_at"] == NOW.isoformat()
    assert manifest.stats["train"]["slices"]["voice"] == {"v0": 4, "v1": 3}
    assert manifest.stats["eval"]["duration_s"]["total"] == 1.5
    assert sorted(p.name for p in folder.iterdir()) == ["audio", "duplicates.jsonl", "eval.jsonl", "manifest.json",
                                                         "train.jsonl"]
    # no staging left behind; the converted audio stays in the export's cache for the next export
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == [".cache"]


def test_same_input_same_dataset_and_reuse(store, wav_factory, tmp_path):
    add_cases(store, wav_factory, 6)
    first = export_dataset(store, tmp_path, CONFIG, run_id="run-1", now=NOW)
    stamp = (first.directory / "manifest.json").stat().st_mtime_ns
    second = export_dataset(store, tmp_path, CONFIG, run_id="run-2", now=NOW + timedelta(days=1))
    assert second.dataset_id == first.dataset_id and second.reused
    assert second.run_id == "run-1" and second.created_at == NOW  # untouched
    assert (first.directory / "manifest.json").stat().st_mtime_ns == stamp

    # another store holding the same cases, ingested at another time, exports the same dataset id
    with ErrorCaseStore(f"sqlite:///{tmp_path / 'other.db'}", clock=lambda: NOW + timedelta(days=9)) as other:
        add_cases(other, wav_factory, 6)
        again = export_dataset(other, tmp_path / "elsewhere", CONFIG, run_id="run-9")
    assert again.dataset_id == first.dataset_id
    assert export_dataset(store, tmp_path, CONFIG.model_copy(update={"eval_fraction": 0.5}),
                          run_id="r").dataset_id != first.dataset_id


def test_incomplete_folder_is_moved_aside_and_rewritten(store, wav_factory, tmp_path):
    add_cases(store, wav_factory, 4)
    first = export_dataset(store, tmp_path, CONFIG, run_id="run-1")
    (first.directory / "manifest.json").unlink()
    second = export_dataset(store, tmp_path, CONFIG, run_id="run-2")
    assert not second.reused and second.run_id == "run-2" and (second.directory / "manifest.json").is_file()
    assert [p.name.startswith(".incomplete-") for p in (tmp_path / "datasets").iterdir()].count(True) == 1


def test_bad_rows_are_quarantined_with_reasons(store, wav_factory, tmp_path):
    good = add_cases(store, wav_factory, 4)
    bad = {
        "corrupt": store.store_failed_case(wav_factory("corrupt.wav"), "x", "corrupt audio"),
        "deleted": store.store_failed_case(wav_factory("deleted.wav"), "x", "deleted audio"),
        "short": store.store_failed_case(wav_factory("short.wav", seconds=0.1), "x", "hi"),
        "long": store.store_failed_case(wav_factory("long.wav", seconds=2.5), "x", "too long"),
        "changed": store.store_failed_case(wav_factory("changed.wav"), "x", "changed audio"),
        "empty": store.store_failed_case(wav_factory("empty.wav"), "x", "soon empty"),
    }
    audio = tmp_path / "audio"
    (audio / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (audio / "deleted.wav").unlink()
    shutil.copy(audio / "case0.wav", audio / "changed.wav")
    with store._engine.begin() as conn:  # an empty correction cannot be ingested; simulate an old row
        conn.execute(sa.update(cases_table).where(cases_table.c.id == bad["empty"]).values(correction=" ?! "))

    manifest = export_dataset(store, tmp_path, CONFIG, run_id="run-1")
    reasons = {note.id: note.reason for note in manifest.quarantined}
    expected = {"corrupt": "audio undecodable", "deleted": "audio missing", "short": "audio too short: 0.100 s",
                "long": "audio too long: 2.500 s > max_duration_s 2", "changed": "audio changed: ",
                "empty": "correction is empty after normalisation"}
    for name, reason in expected.items():
        assert reason in reasons.get(bad[name], ""), (name, reasons)
        assert store.get_case(bad[name]).state == "quarantined"
        assert store.get_case(bad[name]).state_reason == reasons[bad[name]]
    assert set(manifest.train_ids + manifest.eval_ids) == set(good)  # nothing valid lost
    assert manifest.counts["quarantined"] == 6


def test_audio_that_cannot_train_is_quarantined_at_export_and_never_reaches_a_split(store, wav_factory, tmp_path):
    """Rows stored before a rule existed, or whose file changed since: non-finite samples, digital silence, and a
    correction far longer than its audio can carry are quarantined with the reason."""
    good = add_cases(store, wav_factory, 4)
    bad = {name: store.store_failed_case(wav_factory(f"{name}.wav"), "x", name) for name in ("nan", "silent", "long")}
    audio = tmp_path / "audio"
    samples = np.full(8000, np.nan, dtype=np.float32)
    sf.write(audio / "nan.wav", samples, 16000, subtype="FLOAT")
    sf.write(audio / "silent.wav", np.zeros(8000), 16000)
    with store._engine.begin() as conn:
        conn.execute(sa.update(cases_table).where(cases_table.c.id == bad["long"]).values(correction="word " * 400))

    manifest = export_dataset(store, tmp_path, CONFIG, run_id="run-1")

    reasons = {note.id: note.reason for note in manifest.quarantined}
    assert reasons[bad["nan"]].startswith("audio non-finite") and reasons[bad["silent"]].startswith("audio silent")
    assert reasons[bad["long"]].startswith("correction too long for its audio: 1999 characters for 0.50 s")
    assert set(manifest.train_ids + manifest.eval_ids) == set(good)


def test_dedupe_keeps_the_latest_correction(store, wav_factory, tmp_path):
    add_cases(store, wav_factory, 4)
    shared = wav_factory("shared.wav")
    old = store.store_failed_case(shared, "x", "the old label", created_at=T0 + timedelta(days=1))
    new = store.store_failed_case(shared, "x", "the new label", created_at=T0 + timedelta(days=2))
    # remote URIs cannot be hashed at ingest: two URIs for one recording are only found out at export
    remote = [store.store_failed_case(f"gs://bucket/{n}.wav", "x", "same words", created_at=T0 + timedelta(days=d))
              for n, d in (("r1", 3), ("r2", 4))]
    manifest = export_dataset(store, tmp_path, CONFIG, run_id="run-1",
                              fetch_audio=lambda uri: wav_factory("remote.wav"))
    assert [(n.id, n.kept_id) for n in manifest.superseded] == [(old, new)]
    assert [(n.id, n.kept_id) for n in manifest.duplicates] == [(remote[0], remote[1])]
    kept = manifest.train_ids + manifest.eval_ids
    assert new in kept and remote[1] in kept and old not in kept and remote[0] not in kept
    texts = [row["text"] for split in ("train", "eval") for row in read_rows(manifest, split)]
    assert "the new label" in texts and "the old label" not in texts


def test_remote_audio_without_fetcher_is_skipped_not_quarantined(store, wav_factory, tmp_path):
    add_cases(store, wav_factory, 4)
    remote = store.store_failed_case("gs://bucket/a.wav", "x", "remote words")
    manifest = export_dataset(store, tmp_path, CONFIG, run_id="run-1")
    assert [n.id for n in manifest.skipped] == [remote] and store.get_case(remote).state == "new"


def test_excluded_hashes_are_counted_and_left_out(store, wav_factory, tmp_path):
    ids = add_cases(store, wav_factory, 8)
    suite = frozenset(probe_audio(tmp_path / "audio" / f"case{i}.wav").content_hash for i in (1, 5))
    manifest = export_dataset(store, tmp_path, CONFIG, run_id="run-1", exclude_hashes=suite)
    assert manifest.counts["excluded"] == 2 and manifest.excluded_count == 2
    assert set(manifest.excluded_ids) == {ids[1], ids[5]}
    assert not set(manifest.excluded_ids) & set(manifest.train_ids + manifest.eval_ids)


def test_max_cases_keeps_the_most_recent(store, wav_factory, tmp_path):
    ids = add_cases(store, wav_factory, 10)
    manifest = export_dataset(store, tmp_path, CONFIG.model_copy(update={"max_cases": 5}), run_id="run-1")
    assert manifest.train_ids + manifest.eval_ids == tuple(ids[5:])
    assert manifest.counts["dropped_by_max_cases"] == 5 and manifest.eval_ids == tuple(ids[8:])


@pytest.mark.parametrize(("count", "eval_size"), [(3, 2), (7, 2), (10, 3), (15, 5)])
def test_split_sizes(store, wav_factory, tmp_path, count, eval_size):
    add_cases(store, wav_factory, count)
    manifest = export_dataset(store, tmp_path, CONFIG, run_id="run-1")
    assert (len(manifest.train_ids), len(manifest.eval_ids)) == (count - eval_size, eval_size)


def test_too_few_cases_says_how_many(store, wav_factory, tmp_path):
    add_cases(store, wav_factory, 2)
    store.store_failed_case(wav_factory("short.wav", seconds=0.1), "x", "hi")
    with pytest.raises(DatasetTooSmall, match=r"only 2 usable cases .* need at least 3 .* from 3 new corrected "
                                              r"cases after dropping 1 quarantined") as caught:
        export_dataset(store, tmp_path, CONFIG, run_id="run-1")
    assert (caught.value.usable, caught.value.needed) == (2, 3)
    assert not (tmp_path / "datasets").exists() or not any((tmp_path / "datasets").iterdir())


@pytest.mark.parametrize("source_rate", [22_050, 44_100])
def test_stereo_high_rate_audio_becomes_16k_mono(store, wav_factory, tmp_path, source_rate):
    add_cases(store, wav_factory, 4, sample_rate=source_rate, channels=2, seconds=0.75)
    manifest = export_dataset(store, tmp_path, CONFIG, run_id="run-1")
    for split in ("train", "eval"):
        for row in read_rows(manifest, split):
            data, rate = sf.read(manifest.directory / row["audio"])
            assert rate == 16_000 and data.ndim == 1 and data.shape[0] == 12_000
            assert row["duration_s"] == 0.75


def test_case_ids_to_consume(store, wav_factory, tmp_path):
    ids = add_cases(store, wav_factory, 6)
    shared = wav_factory("shared.wav")
    old = store.store_failed_case(shared, "x", "old label", created_at=T0 - timedelta(days=1))
    store.store_failed_case(shared, "x", "new label", created_at=T0 - timedelta(hours=1))
    suite = frozenset({probe_audio(tmp_path / "audio" / "case2.wav").content_hash})
    manifest = export_dataset(store, tmp_path, CONFIG, run_id="run-1", exclude_hashes=suite)
    consume = set(manifest.case_ids_to_consume())
    assert set(manifest.train_ids) <= consume and old in consume and ids[2] in consume
    assert not consume & set(manifest.eval_ids)  # held out, never trained on: stays new for the next run


def test_regression_suite_items_in_the_error_cases_are_excluded_and_reported(store, wav_factory, tmp_path):
    ids = add_cases(store, wav_factory, 10)
    suite_file = tmp_path / "suite" / "critical.jsonl"
    suite_file.parent.mkdir()
    items = [  # case 1's very recording; another recording of case 4's words; an item not among the cases
        {"id": "s1", "audio": str(tmp_path / "audio" / "case1.wav"), "text": "something else"},
        {"id": "s2", "audio": str(wav_factory("suite-own.wav")), "text": "Case number four"},
        {"id": "s3", "audio": str(wav_factory("suite-other.wav")), "text": "never said in production"},
    ]
    suite_file.write_text("".join(json.dumps(item) + "\n" for item in items))
    guard = leakage_guard([SuiteSpec(name="critical", type="critical", data_path=suite_file)])
    manifest = export_dataset(store, tmp_path / "root", CONFIG, run_id="run-1", guard=guard)
    assert set(manifest.excluded_ids) == {ids[1], ids[4]}
    assert (manifest.counts["excluded"], manifest.counts["excluded_suite_audio"],
            manifest.counts["excluded_suite_text"]) == (2, 1, 1)
    exported = manifest.train_ids + manifest.eval_ids
    assert len(exported) == 8 and not {ids[1], ids[4]} & set(exported)
    assert json.loads((manifest.directory / "manifest.json").read_text())["counts"]["excluded"] == 2


def test_a_suite_item_that_could_not_train_still_guards_against_leakage(wav_factory, tmp_path):
    """The trainability rules are for training data: a suite may hold silence (the model must say nothing) and
    its items are only hashed for the guard, so it must not make every export fail."""
    silent = tmp_path / "silence.wav"
    sf.write(silent, np.zeros(8000), 16000)
    suite_file = tmp_path / "suite.jsonl"
    suite_file.write_text(json.dumps({"id": "s1", "audio": str(silent), "text": "nothing at all"}) + "\n")
    guard = leakage_guard([SuiteSpec(name="smoke", type="smoke", data_path=suite_file)])
    assert guard.reason(probe_audio(silent, trainable=False).content_hash, "other words")


def test_a_train_case_with_an_eval_cases_transcript_is_held_back(store, wav_factory, tmp_path):
    ids = add_cases(store, wav_factory, 9)
    twin = store.store_failed_case(wav_factory("twin.wav"), "x", "Case number eight", created_at=T0 - timedelta(1))
    manifest = export_dataset(store, tmp_path, CONFIG, run_id="run-1")
    assert ids[8] in manifest.eval_ids and twin not in manifest.train_ids
    assert [(n.id, n.reason) for n in manifest.held_back] == [(twin, "same transcript as an eval case")]
    assert manifest.counts["held_back_same_text_as_eval"] == 1
    assert twin not in manifest.case_ids_to_consume()  # not trained on: stays new


def test_suite_file_errors_name_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "audio": "x.wav", "text": "hi"}\n{"id": "b", "audio": "y.wav"}\n')
    with pytest.raises(SuiteError, match=r"suite 'bad' \(.*bad.jsonl:2\): a row needs non-empty string fields"):
        read_suite(SuiteSpec(name="bad", data_path=bad))
    with pytest.raises(SuiteError, match="does not exist"):
        read_suite(SuiteSpec(name="gone", data_path=tmp_path / "gone.jsonl"))


def test_replay_rows_join_train_only_checked_and_never_consumed(store, wav_factory, tmp_path):
    ids = add_cases(store, wav_factory, 10)
    replay = tmp_path / "replay" / "replay.jsonl"
    replay.parent.mkdir()
    rows = [{"id": f"r{i}", "audio": str(wav_factory(f"replay{i}.wav")), "text": f"Older words {words(i)}",
             "voice": "seen"} for i in range(5)]
    rows.append({"id": "bad", "audio": str(tmp_path / "missing.wav"), "text": "gone"})
    rows.append({"id": "dup", "audio": str(tmp_path / "audio" / "case9.wav"), "text": "reused recording"})
    rows.append({"id": "twin", "audio": str(wav_factory("twin.wav")), "text": "case number eight"})
    replay.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = CONFIG.model_copy(update={"replay_path": replay, "replay_size": 20})
    manifest = export_dataset(store, tmp_path / "root", config, run_id="run-1")
    assert manifest.replay_ids == tuple(f"replay:r{i}" for i in range(5))
    assert manifest.counts["replay"] == 5 and manifest.counts["train"] == 7 and manifest.counts["eval"] == 3
    assert {(n.id, n.reason.split(":")[0]) for n in manifest.replay_dropped} == {
        ("replay:bad", "audio missing"), ("replay:dup", "same audio as a case in this dataset"),
        ("replay:twin", "same transcript as an eval case")}
    train = read_rows(manifest, "train")
    assert [r["id"] for r in train][-5:] == list(manifest.replay_ids) and train[-1]["source"] == "replay"
    assert all((manifest.directory / r["audio"]).exists() for r in train)
    assert not set(manifest.replay_ids) & set(manifest.case_ids_to_consume())
    assert set(manifest.case_ids_to_consume()) == set(ids[:7])
    again = export_dataset(store, tmp_path / "root", config, run_id="run-2")
    assert again.dataset_id == manifest.dataset_id  # the seeded draw is part of the content, not of the time
    fewer = export_dataset(store, tmp_path / "root", config.model_copy(update={"replay_size": 2}), run_id="run-3")
    assert len(fewer.replay_ids) <= 2 and fewer.dataset_id != manifest.dataset_id


# ------------------------------------------------------------------------------------------------ at scale


def test_max_cases_acts_before_any_audio_work(store, wav_factory, tmp_path):
    """The dataset is full after the newest ``max_cases``: older cases' audio is never opened (deleted files
    would be quarantined if it were), and they stay new for a later run."""
    ids = add_cases(store, wav_factory, 10)
    for i in range(6):
        (tmp_path / "audio" / f"case{i}.wav").unlink()
    manifest = export_dataset(store, tmp_path, CONFIG.model_copy(update={"max_cases": 4}), run_id="r1", now=NOW)
    assert manifest.train_ids + manifest.eval_ids == tuple(ids[6:])
    assert manifest.counts["dropped_by_max_cases"] == 6 and not manifest.quarantined
    assert {store.get_case(i).state for i in ids[:6]} == {"new"}


def test_audio_probed_at_ingest_is_decoded_once_to_be_copied(store, wav_factory, tmp_path, monkeypatch):
    ids = add_cases(store, wav_factory, 6)
    converted = []
    real = speech.convert_verified

    def counting(source, target, sample_rate, content_hash):
        converted.append(Path(source).name)
        real(source, target, sample_rate, content_hash)

    def no_probe(path, **_):
        raise AssertionError(f"{path} probed again")

    monkeypatch.setattr(speech, "probe_audio", no_probe)
    monkeypatch.setattr(speech, "convert_verified", counting)
    manifest = export_dataset(store, tmp_path, CONFIG, run_id="r1", now=NOW)
    assert sorted(converted) == sorted(f"case{i}.wav" for i in range(6))
    assert set(manifest.train_ids + manifest.eval_ids) == set(ids)
    assert [row["duration_s"] for row in read_rows(manifest, "eval")] == [0.5, 0.5]


def test_rows_stored_before_durations_were_kept_are_probed_at_export(store, wav_factory, tmp_path):
    ids = add_cases(store, wav_factory, 5)
    with store._engine.begin() as conn:
        conn.execute(sa.update(cases_table).values(audio_duration_s=None, audio_sample_rate=None))
    manifest = export_dataset(store, tmp_path, CONFIG, run_id="r1", now=NOW)
    assert set(manifest.train_ids + manifest.eval_ids) == set(ids)
    assert {row["duration_s"] for split in ("train", "eval") for row in read_rows(manifest, split)} == {0.5}


def test_an_export_stopped_while_writing_audio_resumes_where_it_stopped(store, wav_factory, tmp_path, monkeypatch):
    add_cases(store, wav_factory, 8)
    converted = []
    real = speech.convert_verified

    def stops_at_the_fourth(source, target, sample_rate, content_hash):
        if len(converted) == 3:
            raise RuntimeError("worker killed")
        converted.append(Path(source).name)
        real(source, target, sample_rate, content_hash)

    monkeypatch.setattr(speech, "convert_verified", stops_at_the_fourth)
    with pytest.raises(RuntimeError, match="worker killed"):
        export_dataset(store, tmp_path, CONFIG, run_id="r1", now=NOW, workers=1)
    assert not list((tmp_path / "datasets").glob("ds-*"))  # nothing published
    done = list(converted)
    monkeypatch.setattr(speech, "convert_verified", lambda *args: (converted.append(Path(args[0]).name), real(*args)))
    manifest = export_dataset(store, tmp_path, CONFIG, run_id="r1", now=NOW, workers=3)
    assert len(done) == 3 and sorted(converted[3:]) == sorted(f"case{i}.wav" for i in range(8) if f"case{i}.wav"
                                                              not in done)
    assert all((manifest.directory / row["audio"]).is_file() for split in ("train", "eval")
               for row in read_rows(manifest, split))


def test_cached_audio_no_dataset_uses_is_removed_once_stale(store, wav_factory, tmp_path):
    ids = add_cases(store, wav_factory, 8)
    first = export_dataset(store, tmp_path, CONFIG, run_id="r1", now=NOW)
    shutil.rmtree(first.directory)  # e.g. retention removed the dataset
    cached = sorted((tmp_path / "datasets" / ".cache").rglob("*.wav"))
    assert len(cached) == 8
    week_ago = (NOW - timedelta(days=8)).timestamp()
    for path in cached:
        os.utime(path, (week_ago, week_ago))
    store.quarantine(ids[0], "wrong label")  # the next dataset no longer needs case 0's audio
    second = export_dataset(store, tmp_path, CONFIG, run_id="r2", now=NOW)
    left = sorted((tmp_path / "datasets" / ".cache").rglob("*.wav"))
    assert len(left) == 7 and {p.name for p in left} == {p.name for p in (second.directory / "audio").iterdir()}


def test_an_in_memory_store_exports(wav_factory, tmp_path, monkeypatch):
    """One connection serves every use of an in-memory store, so its export reads its pages on the calling thread
    (a second thread would share the connection with the quarantines; a race a test cannot force)."""
    monkeypatch.setattr("tuneloop.datasets.EXPORT_BATCH", 2)
    with ErrorCaseStore("sqlite://", clock=lambda: NOW) as memory:
        assert memory.single_connection
        ids = add_cases(memory, wav_factory, 6)
        memory.store_failed_case(wav_factory("short.wav", seconds=0.1), "x", "hi")  # quarantined on the way
        manifest = export_dataset(memory, tmp_path, CONFIG, run_id="r1", now=NOW)
    assert set(manifest.train_ids + manifest.eval_ids) == set(ids) and len(manifest.quarantined) == 1
