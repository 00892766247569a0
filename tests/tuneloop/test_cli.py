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
