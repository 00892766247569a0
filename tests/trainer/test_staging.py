"""Staging on a GCS emulator: inputs downloaded once into scratch, outputs uploaded with their marker last, local
paths used in place."""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tuneloop_trainer import staging
from tuneloop_trainer.arguments import SpecError
from tuneloop_trainer.data import read_rows

STAGED_LINE = re.compile(r"staged gs://\S+ -> \S+ \(\d+ files, \d+\.\d MB, \d+\.\d s\)")
UPLOADED_LINE = re.compile(r"uploaded \S+ -> gs://\S+ \(\d+ files, \d+\.\d MB, \d+\.\d s\)")


def key(uri: str) -> str:
    return uri.removeprefix("gs://")


def test_scratch_is_the_env_folder_or_one_under_the_temp_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(staging.SCRATCH_ENV, raising=False)
    assert staging.scratch_root() == Path(tempfile.gettempdir()) / "tuneloop-trainer"
    monkeypatch.setenv(staging.SCRATCH_ENV, str(tmp_path))
    assert staging.scratch_dir("inputs", "gs://b/x").parent == tmp_path / "inputs"
    assert staging.scratch_dir("inputs", "gs://b/x") != staging.scratch_dir("inputs", "gs://b/y")


@pytest.mark.parametrize("prefix", ["", "file://"], ids=["path", "file-uri"])
def test_local_paths_are_used_in_place(tmp_path: Path, new_machine: Callable[[], Path], prefix: str) -> None:
    scratch = new_machine()
    folder = tmp_path / "data"
    assert staging.stage_dir(f"{prefix}{folder}", "dataset_uri") == folder
    assert staging.stage_split(f"{prefix}{folder}/eval.jsonl", "data") == folder / "eval.jsonl"
    assert staging.working_dir(f"{prefix}{folder}") == folder
    assert staging.working_file(f"{prefix}{folder}/p.jsonl") == folder / "p.jsonl"
    assert not scratch.exists()  # nothing copied


def test_a_folder_is_staged_once_and_reused(gcs: Any, bucket_dir: str, new_machine: Callable[[], Path],
                                            caplog: pytest.LogCaptureFixture) -> None:
    uri = f"{bucket_dir}/model"
    gcs.pipe({f"{key(uri)}/config.json": b"{}", f"{key(uri)}/sub/weights.bin": b"x" * 1000})
    with caplog.at_level(logging.INFO, logger="tuneloop_trainer"):
        staged = staging.stage_dir(uri, "base_model_uri")
    assert (staged / "config.json").read_text() == "{}"
    assert (staged / "sub" / "weights.bin").stat().st_size == 1000
    assert [p.name for p in staged.parent.iterdir()] == [staged.name]  # no partial folder left
    assert STAGED_LINE.search(caplog.text) and "(2 files, " in caplog.text

    gcs.rm(key(uri), recursive=True)
    assert staging.stage_dir(uri, "base_model_uri") == staged  # the complete local copy, not the bucket


def test_a_missing_remote_folder_names_the_field(bucket_dir: str, new_machine: Callable[[], Path]) -> None:
    with pytest.raises(SpecError, match=r"base_model_uri gs://\S+/nothing does not exist"):
        staging.stage_dir(f"{bucket_dir}/nothing", "base_model_uri")


def test_a_split_is_staged_with_the_audio_its_rows_reference(gcs: Any, bucket_dir: str, tmp_path: Path,
                                                             new_machine: Callable[[], Path]) -> None:
    local_audio = tmp_path / "local.wav"
    local_audio.write_bytes(b"local")
    gcs.pipe({f"{key(bucket_dir)}/ds/audio/a.wav": b"a", f"{key(bucket_dir)}/shared/b.wav": b"b",
              f"{key(bucket_dir)}/other/c.wav": b"c"})
    rows = [{"id": "relative", "audio": "audio/a.wav", "text": "a"},
            {"id": "parent", "audio": "../shared/b.wav", "text": "b"},
            {"id": "remote", "audio": f"{bucket_dir}/other/c.wav", "text": "c"},
            {"id": "local", "audio": str(local_audio), "text": "d"}]
    gcs.pipe(f"{key(bucket_dir)}/ds/eval.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())

    staged = staging.stage_split(f"{bucket_dir}/ds/eval.jsonl", "data")

    read = read_rows(staged)
    assert [r["id"] for r in read] == ["relative", "parent", "remote", "local"]
    assert [Path(r["audio"]).read_bytes() for r in read] == [b"a", b"b", b"c", b"local"]
    assert all(Path(r["audio"]).is_relative_to(staged.parent) for r in read[:3])


def test_a_split_keeps_bad_lines_for_read_rows_to_report(gcs: Any, bucket_dir: str,
                                                         new_machine: Callable[[], Path]) -> None:
    gcs.pipe(f"{key(bucket_dir)}/eval.jsonl", b"not json\n")
    with pytest.raises(SpecError, match=r"eval.jsonl:1: not valid JSON"):
        read_rows(staging.stage_split(f"{bucket_dir}/eval.jsonl", "data"))


def test_a_split_with_missing_audio_is_a_clear_error(gcs: Any, bucket_dir: str,
                                                     new_machine: Callable[[], Path]) -> None:
    gcs.pipe(f"{key(bucket_dir)}/eval.jsonl", json.dumps({"id": "x", "audio": "gone.wav", "text": "x"}).encode())
    with pytest.raises(SpecError, match="data gs://.*eval.jsonl: a referenced audio file does not exist"):
        staging.stage_split(f"{bucket_dir}/eval.jsonl", "data")
    with pytest.raises(SpecError, match="data gs://.*missing.jsonl does not exist"):
        staging.stage_split(f"{bucket_dir}/missing.jsonl", "data")


def test_a_folder_upload_puts_the_marker_last(gcs: Any, bucket_dir: str, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "step-2"
    (folder / "nested").mkdir(parents=True)
    for name in ("weights.bin", "nested/rng.pt", "state.json", "zz.bin"):
        (folder / name).write_text(name)
    gcs.pipe(f"{key(bucket_dir)}/step-2/state.json", b"stale")

    with caplog.at_level(logging.INFO, logger="tuneloop_trainer"):
        staging.upload_dir(folder, f"{bucket_dir}/step-2", last=("state.json",))

    found = gcs.find(f"{key(bucket_dir)}/step-2", detail=True)
    generation = {name.rsplit("step-2/", 1)[1]: int(info["generation"]) for name, info in found.items()}
    assert set(generation) == {"weights.bin", "nested/rng.pt", "state.json", "zz.bin"}
    assert generation["state.json"] > max(v for k, v in generation.items() if k != "state.json")
    assert gcs.cat(f"{key(bucket_dir)}/step-2/state.json") == b"state.json"
    assert UPLOADED_LINE.search(caplog.text) and "(4 files, " in caplog.text


def test_files_are_read_written_and_removed_on_either_side(gcs: Any, bucket_dir: str, tmp_path: Path) -> None:
    local = tmp_path / "metrics.json"
    local.write_text('{"steps": 3}')
    staging.upload_file(local, f"{bucket_dir}/out/metrics.json")
    assert staging.read_text(f"{bucket_dir}/out/metrics.json", "metrics") == '{"steps": 3}'
    assert staging.read_text(str(local), "metrics") == '{"steps": 3}'
    assert staging.exists(f"{bucket_dir}/out") and staging.exists(str(local))
    assert staging.list_files(f"{bucket_dir}/out") == {"metrics.json": 12}

    staging.remove(f"{bucket_dir}/out")
    staging.remove(f"{bucket_dir}/out")  # nothing there is fine
    assert not staging.exists(f"{bucket_dir}/out/metrics.json")
    with pytest.raises(SpecError, match="spec file gs://.*/out/metrics.json does not exist"):
        staging.read_text(f"{bucket_dir}/out/metrics.json", "spec file")
