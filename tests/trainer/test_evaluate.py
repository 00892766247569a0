"""Evaluation writes one well-formed prediction row per input row, atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop_trainer import cli
from tuneloop_trainer.data import read_rows

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_evaluate_writes_predictions(tiny_model_dir: Path, speech_dataset: Path, tmp_path: Path) -> None:
    output = tmp_path / "predictions" / "candidate" / "eval.jsonl"
    code = cli.main(["evaluate", "--model-dir", str(tiny_model_dir), "--data", str(speech_dataset / "eval.jsonl"),
                     "--output", str(output), "--batch-size", "3"])
    assert code == 0
    predictions = [json.loads(line) for line in output.read_text().splitlines()]
    rows = read_rows(speech_dataset / "eval.jsonl")

    assert [p["id"] for p in predictions] == [r["id"] for r in rows]
    for prediction, row in zip(predictions, rows, strict=True):
        assert prediction["reference"] == row["text"]
        assert isinstance(prediction["hypothesis"], str)
        assert prediction["latency_ms"] > 0
        assert {k: prediction[k] for k in ("voice", "condition", "source", "duration_s", "sample_rate")} == \
            {k: row[k] for k in ("voice", "condition", "source", "duration_s", "sample_rate")}
        assert "audio" not in prediction and "text" not in prediction
    assert [p.name for p in output.parent.iterdir()] == ["eval.jsonl"]  # no temp file left behind


def test_evaluate_rejects_a_missing_split(tiny_model_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["evaluate", "--model-dir", str(tiny_model_dir), "--data", str(tmp_path / "none.jsonl"),
                     "--output", str(tmp_path / "p.jsonl")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_several_splits_in_one_process(tiny_model_dir: Path, speech_dataset: Path, tmp_path: Path) -> None:
    outputs = [tmp_path / "train.jsonl", tmp_path / "eval.jsonl"]
    code = cli.main(["evaluate", "--model-dir", str(tiny_model_dir),
                     "--data", str(speech_dataset / "train.jsonl"), str(speech_dataset / "eval.jsonl"),
                     "--output", *map(str, outputs)])
    assert code == 0
    assert [len(p.read_text().splitlines()) for p in outputs] == [6, 4]


def test_data_and_output_counts_must_match(tiny_model_dir: Path, speech_dataset: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["evaluate", "--model-dir", str(tiny_model_dir), "--data", str(speech_dataset / "eval.jsonl"),
                     "--output", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")])
    assert code == 2
    assert "one --output per --data" in capsys.readouterr().err


def test_a_jobs_file_runs_several_models_in_one_process(tiny_model_dir: Path, speech_dataset: Path,
                                                       tmp_path: Path) -> None:
    outputs = {tag: tmp_path / tag / "eval.jsonl" for tag in ("candidate", "production")}
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps({"batch_size": 2, "jobs": [
        {"model_dir": str(tiny_model_dir), "data": [str(speech_dataset / "eval.jsonl")], "output": [str(out)]}
        for out in outputs.values()]}))
    assert cli.main(["evaluate-jobs", "--jobs", str(jobs)]) == 0
    assert outputs["candidate"].read_text() != "" and [len(p.read_text().splitlines()) for p in outputs.values()] \
        == [4, 4]


def test_a_bad_job_is_refused_before_any_work(tiny_model_dir: Path, speech_dataset: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    jobs = tmp_path / "jobs.json"
    good = {"model_dir": str(tiny_model_dir), "data": [str(speech_dataset / "eval.jsonl")],
            "output": [str(tmp_path / "a.jsonl")]}
    jobs.write_text(json.dumps({"jobs": [good, {"model_dir": str(tiny_model_dir), "data": ["x"], "output": []}]}))
    assert cli.main(["evaluate-jobs", "--jobs", str(jobs)]) == 2
    assert "jobs[1]" in capsys.readouterr().err and not (tmp_path / "a.jsonl").exists()
    jobs.write_text(json.dumps({"batch_size": 2}))
    assert cli.main(["evaluate-jobs", "--jobs", str(jobs)]) == 2
    assert "field 'jobs' must be a list" in capsys.readouterr().err
