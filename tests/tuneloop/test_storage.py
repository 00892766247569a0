"""Datasets and predictions in object storage: gs:// through Airflow's ObjectStoragePath on a GCS emulator."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tuneloop.config import DatasetConfig
from tuneloop.datasets import export_dataset, load_manifest
from tuneloop.predictions import Prediction, pair_predictions, read_predictions, write_predictions
from tuneloop.storage import as_path, is_local
from tuneloop.store import ErrorCaseStore

T0 = datetime(2025, 5, 1, tzinfo=UTC)
CONFIG = DatasetConfig(min_duration_s=0.3, max_duration_s=2.0, eval_fraction=0.3, min_eval_cases=2)


@pytest.fixture
def bucket(gcs_emulator):
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(f"gs://acme-tuneloop/tuneloop-{datetime.now().timestamp():.6f}")


def test_local_and_remote_paths_are_told_apart(tmp_path, bucket):
    assert is_local(tmp_path) and is_local(str(tmp_path)) and is_local(f"file://{tmp_path}")
    assert not is_local(bucket) and as_path(bucket) is bucket
    with pytest.raises(ValueError, match="give object storage as an ObjectStoragePath"):
        as_path("gs://acme-tuneloop/x")


def test_export_writes_a_complete_dataset_to_gcs_and_reuses_it(tmp_path, wav_factory, bucket):
    store = ErrorCaseStore(f"sqlite:///{tmp_path / 'store.db'}")
    ids = [store.store_failed_case(wav_factory(f"c{i}.wav"), "wrong", f"case {'abcdefghij'[i]} words",
                                   created_at=T0 + timedelta(hours=i), metadata={"voice": "v1"}) for i in range(10)]
    manifest = export_dataset(store, bucket, CONFIG, run_id="run-1", now=T0)
    folder = bucket / "datasets" / manifest.dataset_id
    assert str(manifest.directory) == str(folder) and manifest.train_ids == tuple(ids[:7])
    assert sorted(p.name for p in folder.iterdir()) == ["audio", "duplicates.jsonl", "eval.jsonl", "manifest.json",
                                                         "train.jsonl"]
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 7 and (folder / rows[0]["audio"]).read_bytes()[:4] == b"RIFF"
    assert load_manifest(folder).dataset_id == manifest.dataset_id  # read back through gs://

    again = export_dataset(store, bucket, CONFIG, run_id="run-2", now=T0 + timedelta(days=1))
    assert again.reused and again.dataset_id == manifest.dataset_id and again.run_id == "run-1"


def test_an_upload_without_its_manifest_is_not_a_dataset(tmp_path, wav_factory, bucket):
    store = ErrorCaseStore(f"sqlite:///{tmp_path / 'store.db'}")
    for i in range(6):
        store.store_failed_case(wav_factory(f"d{i}.wav"), "x", f"words {'abcdef'[i]}", created_at=T0 + timedelta(i))
    first = export_dataset(store, bucket, CONFIG, run_id="run-1")
    (first.directory / "manifest.json").unlink()  # as if the upload died before its last object
    second = export_dataset(store, bucket, CONFIG, run_id="run-2")
    assert not second.reused and (second.directory / "manifest.json").exists()


def test_predictions_round_trip_through_gcs(bucket):
    base = [Prediction("u1", "turn on the lights", "turn on the light", 12.0, {"voice": "v1"}),
            Prediction("u2", "stop", "stop")]
    cand = [Prediction("u1", "turn on the lights", "turn on the lights"), Prediction("u2", "stop", "stop")]
    written = write_predictions(bucket / "predictions" / "production" / "eval.jsonl", base)
    write_predictions(bucket / "predictions" / "candidate" / "eval.jsonl", cand)
    assert not is_local(written)
    back = read_predictions(bucket / "predictions" / "production" / "eval.jsonl")
    assert back == base
    paired = pair_predictions(back, read_predictions(bucket / "predictions" / "candidate" / "eval.jsonl"))
    assert [p.candidate_hypothesis for p in paired] == ["turn on the lights", "stop"]
