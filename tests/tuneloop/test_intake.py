"""Bad input never costs valid input: every class of bad row is refused alone, with its line, field and reason.

The examples are members of classes (numbers that do not fit, text no database stores, unbounded nesting and
sizes, dates outside UTC, audio that cannot train); the property test at the end generates arbitrary JSON values
and raw bytes around valid rows and checks the rule itself.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
import soundfile as sf
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings

from tuneloop.intake import IngestLimits, InvalidCase, Line, decode_row, field_label, read_lines, storable
from tuneloop.store import ErrorCaseStore, metadata

VALID = {"audio_path": "ok.wav", "prediction": "helo world", "correction": "hello world"}
OK = '{"audio_path": "ok.wav", "prediction": "a", "correction": "b"'  # a valid row, open for one more field


@pytest.fixture
def audio_dir(tmp_path) -> Path:
    """ok.wav (speech-like tone, 0.5 s), nan.wav and inf.wav (float WAVs with non-finite samples), silent.wav."""
    t = np.arange(8000) / 16000
    sf.write(tmp_path / "ok.wav", 0.3 * np.sin(2 * np.pi * 300 * t), 16000)
    for name, value in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        samples = 0.3 * np.sin(2 * np.pi * 300 * t).astype(np.float32)
        samples[100] = value
        sf.write(tmp_path / name, samples, 16000, subtype="FLOAT")
    sf.write(tmp_path / "silent.wav", np.zeros(8000), 16000)
    return tmp_path


POISON = {  # line -> (field, start of the reason)
    "float overflow": (OK + ', "error_score": 1' + "0" * 400 + ".0}", "error_score", "number"),
    "integer overflow": (OK + ', "error_score": 1' + "0" * 400 + "}", "error_score", "an integer of 401 digits"),
    "integer over Python's limit": (OK + ', "model_version": ' + "7" * 5000 + "}", "model_version", "an integer"),
    "NaN literal": (OK + ', "error_score": NaN}', "error_score", "NaN is not a JSON number"),
    "date past UTC's end": (OK + ', "created_at": "9999-12-31T23:59:59-01:00"}', "created_at", "'9999"),
    "date before UTC's start": (OK + ', "created_at": "0001-01-01T00:00:00+01:00"}', "created_at", "'0001"),
    "date in the future": (OK + ', "created_at": "2999-01-01T00:00:00Z"}', "created_at", "2999"),
    "lone surrogate in prediction": ('{"audio_path": "ok.wav", "prediction": "\\ud800", "correction": "b"}',
                                     "prediction", "text is not valid Unicode"),
    "lone surrogate in correction": ('{"audio_path": "ok.wav", "prediction": "a", "correction": "b\\udfff"}',
                                     "correction", "text is not valid Unicode"),
    "lone surrogate in id": (OK + ', "id": "\\ud800x"}', "id", "text is not valid Unicode"),
    "lone surrogate in source": (OK + ', "source": "\\ud800"}', "source", "text is not valid Unicode"),
    "lone surrogate in annotator": (OK + ', "annotator": "\\ud800"}', "annotator", "text is not valid Unicode"),
    "lone surrogate in model_version": (OK + ', "model_version": "\\ud800"}', "model_version", "text is not"),
    "lone surrogate in a metadata key": (OK + ', "metadata": {"\\ud800": 1}}', '"metadata.\\ud800"', "field name"),
    "NUL in text": (OK + ', "annotator": "a\\u0000b"}', "annotator", "text contains a NUL"),
    "deep brackets": ("[" * 100_000 + "]" * 100_000, "line", "nested deeper than max_nesting_depth"),
    "deep metadata": (OK + ', "metadata": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + "}", "line", "nested deeper"),
    "metadata just too deep": (OK + ', "metadata": ' + '{"a": ' * 16 + "1" + "}" * 16 + "}", "metadata" + ".a" * 15,
                               "nested deeper"),
    "huge correction": (OK[:-4] + '"' + "x" * 1_000_000 + '"}', "correction", "1000000 characters"),
    "text the audio cannot carry": (OK[:-4] + '"' + "abc " * 20 + '"}', "correction", "79 characters for 0.50 s"),
    "huge metadata": (OK + ', "metadata": {"notes": "' + "n" * 70_000 + '"}}', "metadata", "70013 bytes"),
    "source longer than its column": (OK + ', "source": "' + "s" * 201 + '"}', "source", "must be a string of at"),
    "audio path longer than PATH_MAX": ('{"audio_path": "' + "p" * 5000 + '", "prediction": "a", "correction": "b"}',
                                        "audio_path", "5000 characters"),
    "unknown field named empty": (OK + ', "": 1}', '""', "unknown field"),
    "unknown field with a long name": (OK + ', "' + "k" * 500 + '": 1}', "k" * 97 + "...", "unknown field"),
    "NaN samples": ('{"audio_path": "nan.wav", "prediction": "a", "correction": "b"}', "audio_path",
                    "audio file non-finite"),
    "infinite samples": ('{"audio_path": "inf.wav", "prediction": "a", "correction": "b"}', "audio_path",
                         "audio file non-finite"),
    "digital silence": ('{"audio_path": "silent.wav", "prediction": "a", "correction": "b"}', "audio_path",
                        "audio file silent"),
    "raw bytes": ("\x00\x01\x02 not text at all", "line", "not valid JSON"),
}


@pytest.mark.parametrize("name", POISON)
def test_a_poison_row_is_refused_alone(store, audio_dir, name):
    line, field, reason = POISON[name]
    batch = audio_dir / "batch.jsonl"
    batch.write_text(json.dumps(VALID) + "\n" + line + "\n" + json.dumps(VALID | {"correction": "hello there"}) + "\n")

    report = store.ingest_jsonl(batch)

    assert len(report.accepted) == 2 and store.statistics().total_cases == 2
    [refused] = report.rejected
    assert (refused.line, refused.field) == (2, field) and refused.reason.startswith(reason), refused
    [recorded] = store.ingest_rejections()  # the refusal itself is storable, whatever the row held
    assert (recorded.field, recorded.reason) == (refused.field, refused.reason)


def test_a_line_longer_than_the_limit_is_refused_unread(tmp_path):
    batch = tmp_path / "b.jsonl"
    batch.write_bytes(b'{"a": "' + b"x" * 5000 + b'"}\n{"b": 1}\n')
    with batch.open("rb") as handle:
        lines = list(read_lines(handle, max_bytes=1024))
    assert [(line.number, line.too_long, line.size) for line in lines] == [(1, True, 5010), (2, False, 9)]
    assert len(lines[0].raw) < 1024  # only the start is kept, for the snippet
    with pytest.raises(InvalidCase, match="5010 bytes, longer than max_line_bytes 1024"):
        decode_row(lines[0], IngestLimits(max_line_bytes=1024))


def test_a_row_the_database_refuses_costs_only_that_row(store, audio_dir):
    """A failure while writing one row (here a trigger of the real database) refuses that row, not the batch."""
    with store._engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("CREATE TRIGGER poison BEFORE INSERT ON tuneloop_error_cases "
                                 "WHEN NEW.annotator = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END")
        else:
            conn.exec_driver_sql("CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN IF NEW.annotator = 'poison' "
                                 "THEN RAISE EXCEPTION 'poisoned row'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql")
            conn.exec_driver_sql("CREATE TRIGGER poison BEFORE INSERT ON tuneloop_error_cases "
                                 "FOR EACH ROW EXECUTE FUNCTION poison()")
    rows = [VALID, VALID | {"correction": "poisoned", "annotator": "poison"}, VALID | {"correction": "hello there"}]
    batch = audio_dir / "batch.jsonl"
    batch.write_text("".join(json.dumps(row) + "\n" for row in rows))
    try:
        report = store.ingest_jsonl(batch)
    finally:
        with store._engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER poison" + ("" if conn.dialect.name == "sqlite"
                                                          else " ON tuneloop_error_cases"))
            if conn.dialect.name != "sqlite":
                conn.exec_driver_sql("DROP FUNCTION poison()")
    assert len(report.accepted) == 2 and store.statistics().total_cases == 2
    [refused] = report.rejected
    assert refused.line == 2 and refused.field == "row" and "poisoned row" in refused.reason


def test_the_api_refuses_what_ingest_refuses(store, audio_dir):
    with pytest.raises(InvalidCase, match="metadata.*nested deeper"):
        deep: dict = {}
        for _ in range(5000):
            deep = {"a": deep}
        store.store_failed_case(audio_dir / "ok.wav", "a", "b", metadata=deep)
    with pytest.raises(InvalidCase, match="prediction: text is not valid Unicode"):
        store.store_failed_case(audio_dir / "ok.wav", "\ud800", "b")
    with pytest.raises(InvalidCase, match="error_score: integer too large"):
        store.store_failed_case(audio_dir / "ok.wav", "a", "b", error_score=10**40)
    assert store.statistics().total_cases == 0


@pytest.mark.parametrize(("name", "label"), [("", '""'), ("voice", "voice"), ("a\nb", '"a\\nb"'),
                                             ("\ud800", '"\\ud800"'), (" x", '" x"')])
def test_field_labels_are_never_empty_and_always_storable(name, label):
    assert field_label(name) == label
    assert storable("a\x00b\udcff") == "a\\x00b\\udcff"


# ------------------------------------------------------------------------------------------ the rule itself

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
FIELDS = sorted({"audio_path", "prediction", "correction", "error_types", "error_score", "model_version",
                 "created_at", "annotator", "source", "metadata", "colour", ""})
WORDS = st.lists(st.sampled_from(["turn", "off", "the", "lights", "play", "music", "stop"]), min_size=1, max_size=4)


def _letters(number: int) -> str:
    return "".join("abcdefghij"[int(d)] for d in str(number))


@st.composite
def batches(draw) -> list[tuple[str, bytes, dict | None]]:
    """Lines of kinds: "valid" rows (with their row), "json" (any JSON value), "mutated" (a valid row with one field
    set to any JSON value, which may or may not be valid), "bytes" (any bytes without a newline)."""
    lines: list[tuple[str, bytes, dict | None]] = []
    for index in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["valid", "valid", "json", "mutated", "bytes"]))
        row = {"id": f"valid-{uuid.uuid4().hex}", "audio_path": draw(st.sampled_from(["a.wav", "b.wav"])),
               "prediction": " ".join(draw(WORDS)), "correction": " ".join(draw(WORDS)) + f" w{_letters(index)}"}
        if kind == "valid":
            lines.append((kind, json.dumps(row).encode(), row))
        elif kind == "json":
            lines.append((kind, json.dumps(draw(JSON_VALUES)).encode(), None))
        elif kind == "mutated":
            row.pop("id")
            row[draw(st.sampled_from(FIELDS))] = draw(JSON_VALUES)
            lines.append((kind, json.dumps(row).encode(), None))
        else:
            lines.append((kind, draw(st.binary(max_size=40)).replace(b"\n", b" ").replace(b"\r", b" "), None))
    return lines


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wavs")
    t = np.arange(16000) / 16000
    for name, hz in (("a.wav", 220), ("b.wav", 330)):
        sf.write(folder / name, 0.3 * np.sin(2 * np.pi * hz * t), 16000)
    return folder


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=batches())
def test_no_row_whatever_its_bytes_costs_another(wavs, lines):
    batch = wavs / f"{uuid.uuid4().hex}.jsonl"
    batch.write_bytes(b"".join(raw + b"\n" for _, raw, _ in lines))
    store = ErrorCaseStore("sqlite://")  # in memory: one fresh store per example
    try:
        report = store.ingest_jsonl(batch)  # no exception escapes

        numbered = [(number, kind, row) for number, (kind, raw, row) in enumerate(lines, start=1) if raw.strip()]
        assert report.rows == len(numbered)
        assert len(report.accepted) + len(report.duplicates) + len(report.rejected) == report.rows
        refused = {r.line: r for r in report.rejected}
        for number, kind, row in numbered:
            if kind == "valid":  # every valid row stored exactly once, as given
                assert number not in refused, refused[number]
                case = store.get_case(row["id"])
                assert (case.prediction, case.correction) == (row["prediction"], row["correction"])
        for row in report.rejected:  # every other row refused with a field and a reason, by a rule we have
            assert row.field.strip() and row.reason.strip(), row
            assert not row.reason.startswith("could not be checked"), row
        assert store.statistics().total_cases == len(report.accepted)

        again = store.ingest_jsonl(batch)  # re-ingest adds nothing
        assert again.accepted == () and again.rejected == report.rejected
        assert store.statistics().total_cases == len(report.accepted)
        assert len(store.ingest_rejections(limit=1000)) == len(report.rejected)
    finally:
        store.close()
        batch.unlink()


def test_the_store_tables_hold_what_intake_lets_through(store):
    """The column sizes the intake rules rely on (ids 128, names 200, rejection fields 100) are the schema's."""
    columns = {c.name: c for c in metadata.tables["tuneloop_error_cases"].columns}
    assert columns["id"].type.length == 128
    assert all(columns[name].type.length == 200 for name in ("source", "annotator", "model_version"))
    assert metadata.tables["tuneloop_ingest_rejections"].c.field.type.length == 100
    assert isinstance(Line(1, b"x", 1).snippet, str) and sa is not None


def test_a_refused_row_is_recorded_once_however_late_it_is_ingested_again(store, clock, audio_dir):
    """Reasons are a function of the row alone (no clock in them): re-ingesting a batch later records nothing new."""
    batch = audio_dir / "batch.jsonl"
    batch.write_text(OK + ', "created_at": "2999-01-01T00:00:00Z"}\n')
    first = store.ingest_jsonl(batch)
    clock.now += timedelta(hours=5)
    again = store.ingest_jsonl(batch)
    assert first.rejected == again.rejected and len(store.ingest_rejections()) == 1
