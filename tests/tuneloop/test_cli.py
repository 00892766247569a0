"""The `tuneloop` command line, in-process, against a real store and a real local MLflow."""

from __future__ import annotations

import json

import pytest

from tuneloop.cli import main


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    return tmp_path


def test_ingest_reports_bad_rows_and_keeps_good_ones(home, wav_factory, capsys):
    rows = [{"audio_path": str(wav_factory("a.wav")), "prediction": "helo", "correction": "hello"},
            {"audio_path": str(wav_factory("b.wav")), "prediction": "x", "correction": "   "},
            {"audio_path": str(wav_factory("c.wav")), "prediction": "x", "correction": "y", "error_score": "high"}]
    batch = home / "cases.jsonl"
    batch.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")

    assert main(["ingest", str(batch)]) == 1
    out = capsys.readouterr().out
    assert "1 accepted, 0 duplicates, 3 rejected" in out
    assert "line 3: error_score" in out and "line 4" in out

    assert main(["ingest", str(batch)]) == 1
    assert "0 accepted, 1 duplicates" in capsys.readouterr().out


def test_status_json_on_an_empty_installation(home, capsys):
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["model"]["production_version"] is None
    assert status["trigger"]["should_trigger"] is False
    assert status["cases"]["total_cases"] == 0


def test_rollback_with_nothing_to_roll_back_is_a_clear_error(home, capsys):
    assert main(["rollback", "--reason", "test"]) == 2
    assert "error:" in capsys.readouterr().err


def test_history_when_empty(home, capsys):
    assert main(["history"]) == 0
    assert "no deployments yet" in capsys.readouterr().out


def test_suite_add_list_and_status(home, wav_factory, capsys):
    suite = home / "suite" / "critical.jsonl"
    suite.parent.mkdir()
    suite.write_text(json.dumps({"id": "s1", "audio": str(wav_factory("s1.wav")), "text": "lights on"}) + "\n")
    assert main(["suite", "add", "critical-commands", str(suite), "--type", "critical", "--baseline-wer", "0.1",
                 "--baseline-version", "3"]) == 0
    assert "suite critical-commands (critical): 1 items" in capsys.readouterr().out

    from tuneloop.config import load_config
    from tuneloop.store import ErrorCaseStore

    store = ErrorCaseStore.from_config(load_config())
    store.record_suite_result("run-1", {"name": "critical-commands", "model_version": "4", "wer": 0.08, "cer": 0.02,
                                        "n": 1, "passed": True})
    assert main(["suite", "list"]) == 0
    out = capsys.readouterr().out
    assert "critical-commands (critical" in out and "baseline WER 0.1 (3)" in out and "v4  WER 0.080" in out
    assert main(["status"]) == 0
    assert "critical-commands (critical): v4 WER 0.080 pass" in capsys.readouterr().out
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["regression_suites"][0]["history"][0]["model_version"] == "4"


def test_suite_add_refuses_a_broken_file(home, capsys):
    broken = home / "broken.jsonl"
    broken.write_text('{"id": "a", "audio": "x.wav"}\n')
    assert main(["suite", "add", "broken", str(broken)]) == 2
    assert "a row needs non-empty string fields audio and text" in capsys.readouterr().err
    assert main(["suite", "add", "eval", str(broken)]) == 2
    assert "reserved" in capsys.readouterr().err
