"""From untrusted input to a valid case: decoding JSONL lines and checking every field of an error case.

Production systems send whatever their bugs produce, so every rule here is a rule about a *class* of input, not
a list of bad examples:

* a line is read with a bounded buffer (``max_line_bytes``); a longer one is refused without holding it whole;
* a line must be UTF-8 and a JSON object; JSON numbers must fit (``max_number_digits``, finite floats; ``NaN`` and
  ``Infinity`` are not JSON); nesting is bounded (``max_nesting_depth``) so nothing recurses without limit;
* every string anywhere in a row, keys included, must be text every supported database stores: valid Unicode
  (no lone surrogates such as ``"\\ud800"``) without NUL characters;
* every field has a type and a size that fit its column (ids 128, names 200 characters, transcripts
  ``max_text_chars``, metadata ``max_metadata_bytes``) and a range that the rest of the loop can use (dates that
  exist in UTC and are not in the future, finite scores);
* local audio must decode, hold finite samples that are not silence, and be long enough to carry its transcript
  (``dataset.max_chars_per_second``).

Anything refused raises :class:`InvalidCase` naming the field and the reason; what it names is itself always
storable (:func:`storable`), so recording a refusal cannot fail the way the row did.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from tuneloop.audio import AudioError, AudioInfo, local_audio_path, probe_audio
from tuneloop.text import normalize_transcript

SNIPPET_CHARS = 200
MAX_ID_CHARS = 128  # tuneloop_error_cases.id
MAX_NAME_CHARS = 200  # source, annotator, model_version and each error type
MAX_FIELD_LABEL_CHARS = 100  # tuneloop_ingest_rejections.field
MAX_AUDIO_URI_CHARS = 4096  # PATH_MAX: longer paths cannot be opened anyway
FUTURE_TOLERANCE = timedelta(days=1)  # clocks of the sending systems drift; a later date is a bug


class InvalidCase(ValueError):
    """An error case is refused; ``field`` names the offending input field and ``reason`` says why."""

    def __init__(self, field_name: str, reason: str) -> None:
        self.field = field_label(field_name)
        self.reason = storable(reason)
        super().__init__(f"{self.field}: {self.reason}")


@dataclass(frozen=True)
class IngestLimits:
    """The bounds of :mod:`tuneloop.intake` (config ``ingest`` and ``dataset.max_chars_per_second``)."""

    max_line_bytes: int = 1_048_576
    max_nesting_depth: int = 16
    max_number_digits: int = 30
    max_text_chars: int = 10_000
    max_metadata_bytes: int = 65_536
    max_error_types: int = 50
    max_chars_per_second: float = 50.0

    @classmethod
    def from_config(cls, config: Any) -> IngestLimits:
        """From a ``TuneloopConfig`` (its ``ingest`` section and ``dataset.max_chars_per_second``)."""
        section = config.ingest
        return cls(max_line_bytes=section.max_line_bytes, max_nesting_depth=section.max_nesting_depth,
                   max_number_digits=section.max_number_digits, max_text_chars=section.max_text_chars,
                   max_metadata_bytes=section.max_metadata_bytes, max_error_types=section.max_error_types,
                   max_chars_per_second=config.dataset.max_chars_per_second)


@dataclass(frozen=True)
class CaseDraft:
    """A validated case, ready to insert."""

    id: str
    created_at: datetime
    source: str
    model_version: str | None
    audio_uri: str | None
    audio_hash: str | None
    prediction: str
    correction: str | None
    error_types: tuple[str, ...]
    error_score: float | None
    annotator: str | None
    metadata: dict[str, Any]
    content_hash: str
    payload: dict[str, Any] | None = None  # what a task stores beside the common fields (a chat's messages, ...)
    audio_duration_s: float | None = None  # what the probe found, so the export need not decode the file again
    audio_sample_rate: int | None = None
    request_id: str | None = None  # the served request this corrects (tuneloop serve): not a column of the case

    def values(self) -> dict[str, Any]:
        data = asdict(self)
        data["error_types"] = list(self.error_types)
        data["meta"] = data.pop("metadata")
        data.pop("request_id")
        return data


@dataclass(frozen=True)
class Line:
    """One line of a batch: its number, its bytes (only the start when too long) and its full size."""

    number: int
    raw: bytes
    size: int
    too_long: bool = False

    @property
    def snippet(self) -> str:
        return storable(self.raw.decode("utf-8", errors="replace").strip()[:SNIPPET_CHARS])


# ------------------------------------------------------------------------------------------------ reading lines


def read_lines(handle: BinaryIO, max_bytes: int) -> Iterator[Line]:
    """Non-blank lines of a binary stream, never holding more than ``max_bytes`` of one line in memory."""
    number = 0
    while raw := handle.readline(max_bytes + 1):
        number += 1
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            head, size = raw[: SNIPPET_CHARS * 4], len(raw)
            while raw and not raw.endswith(b"\n"):
                raw = handle.readline(1 << 20)
                size += len(raw)
            yield Line(number, head, size, too_long=True)
        elif raw.strip():
            yield Line(number, raw, len(raw))


def decode_row(line: Line, limits: IngestLimits) -> dict[str, Any]:
    """The JSON object on ``line``; numbers that do not fit become markers that :func:`parse_case` refuses."""
    if line.too_long:
        raise InvalidCase("line", f"{line.size} bytes, longer than max_line_bytes {limits.max_line_bytes}")
    try:
        text = line.raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidCase("line", f"not UTF-8 text ({error.reason} at byte {error.start})") from error
    try:
        row = json.loads(text, parse_int=lambda s: _int(s, limits), parse_float=_float, parse_constant=_constant)
    except RecursionError as error:
        raise InvalidCase("line", f"nested deeper than max_nesting_depth {limits.max_nesting_depth}") from error
    except json.JSONDecodeError as error:
        raise InvalidCase("line", f"not valid JSON ({error.msg} at column {error.colno})") from error
    except ValueError as error:
        raise InvalidCase("line", f"not valid JSON ({error})") from error
    if not isinstance(row, dict):
        raise InvalidCase("line", f"must be a JSON object, got {describe(row)}")
    return row


@dataclass(frozen=True)
class _BadNumber:
    """A JSON number that cannot be represented faithfully; refused with its field by :func:`check_values`."""

    reason: str


def _int(text: str, limits: IngestLimits) -> int | _BadNumber:
    digits = len(text.lstrip("-"))
    if digits > limits.max_number_digits:
        return _BadNumber(f"an integer of {digits} digits (max_number_digits {limits.max_number_digits})")
    return int(text)


def _float(text: str) -> float | _BadNumber:
    value = float(text)
    if not math.isfinite(value):
        return _BadNumber(f"number {text[:20]}... is out of the range of a float")
    return value


def _constant(text: str) -> _BadNumber:
    return _BadNumber(f"{text} is not a JSON number")


# ------------------------------------------------------------------------------------------- checking values


def check_values(row: Mapping[str, Any], limits: IngestLimits) -> None:
    """Refuse a row holding anything no field can keep: too deep, unstorable text, numbers that do not fit.

    Walks without recursion, so a hostile nesting depth cannot exhaust the stack before it is refused.
    """
    stack: list[tuple[str, Any, int]] = [(_key_path("", key), value, 2) for key, value in row.items()]
    for key in row:
        _check_text(_key_path("", key), key, what="field name")
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, _BadNumber):
            raise InvalidCase(path, value.reason)
        if isinstance(value, str):
            _check_text(path, value)
        elif isinstance(value, int) and not isinstance(value, bool):
            if value.bit_length() > limits.max_number_digits * 3.33:
                raise InvalidCase(path, f"integer too large (max_number_digits {limits.max_number_digits})")
        elif isinstance(value, (dict, list, tuple)):
            if depth > limits.max_nesting_depth:
                raise InvalidCase(path, f"nested deeper than max_nesting_depth {limits.max_nesting_depth}")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                child = _key_path(path, key) if isinstance(value, dict) else f"{path}[{key}]"
                if isinstance(key, str):
                    _check_text(child, key, what="field name")
                stack.append((child, item, depth + 1))


def _check_text(path: str, text: str, *, what: str = "text") -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidCase(path, f"{what} is not valid Unicode: lone surrogate {text[error.start]!r} at character "
                                f"{error.start} (escape sequences such as \\ud800 must come in valid pairs)") from None
    if "\x00" in text:
        raise InvalidCase(path, f"{what} contains a NUL character (at character {text.index(chr(0))})")


def _key_path(parent: str, key: Any) -> str:
    name = key if isinstance(key, str) else str(key)
    return f"{parent}.{name}" if parent else name


# ------------------------------------------------------------------------------------------------ the fields

_ALIASES: dict[str, tuple[str, ...]] = {
    "audio": ("audio_path", "audio_uri"),
    "prediction": ("prediction", "original_transcript"),
    "correction": ("correction", "corrected_transcript"),
}
COMMON_KEYS = frozenset(("id", "error_types", "error_score", "model_version", "created_at", "annotator", "source",
                         "metadata", "request_id"))
ROW_KEYS = COMMON_KEYS.union(*_ALIASES.values())


def parse_case(row: Mapping[str, Any], *, base_dir: Path | str, default_source: str, now: datetime,
               limits: IngestLimits | None = None) -> CaseDraft:
    """Check one case (a JSONL row or the arguments of ``store_failed_case``); raise ``InvalidCase``.

    Cheap checks come first; the audio is decoded last. Relative audio paths are resolved against ``base_dir``
    (a folder, or a remote prefix such as ``gs://bucket/inbox`` for a batch read from a bucket).
    """
    limits = limits or IngestLimits()
    check_values(row, limits)
    refuse_unknown(row, ROW_KEYS)
    audio_key, audio = _aliased(row, "audio")
    if audio is None or (isinstance(audio, str) and not audio.strip()):
        raise InvalidCase("audio_path", "missing: give audio_path (or audio_uri)")
    if not isinstance(audio, str):
        raise InvalidCase(audio_key, f"must be a string path or URI, got {describe(audio)}")
    if len(audio) > MAX_AUDIO_URI_CHARS:
        raise InvalidCase(audio_key, f"{len(audio)} characters, longer than {MAX_AUDIO_URI_CHARS}")
    prediction, correction = _transcripts(row, limits)
    text = correction if correction is not None else prediction
    fields = common_fields(row, default_source=default_source, now=now, limits=limits)
    case_id = fields.pop("id")
    audio_uri, info = _check_audio(audio_key, audio, base_dir, correction, limits)
    audio_hash = info.content_hash if info else None
    audio_identity = f"sha256:{audio_hash}" if audio_hash else f"uri:{audio_uri}"
    content_hash = sha256(f"{audio_identity}\n{normalize_transcript(text)}")
    return CaseDraft(id=case_id or content_hash[:32], audio_uri=audio_uri, audio_hash=audio_hash,
                     prediction=prediction, correction=correction, content_hash=content_hash,
                     audio_duration_s=info.duration_s if info else None,
                     audio_sample_rate=info.sample_rate if info else None, **fields)


def refuse_unknown(row: Mapping[str, Any], known: frozenset[str]) -> None:
    """A field the task does not know is refused, not dropped: a typo must not lose a correction."""
    unknown = sorted(set(row) - known)
    if unknown:
        raise InvalidCase(unknown[0], "unknown field (put extra information under metadata)")


def common_fields(row: Mapping[str, Any], *, default_source: str, now: datetime,
                  limits: IngestLimits) -> dict[str, Any]:
    """The fields every task's case has (``COMMON_KEYS``), checked: id (None: derive it from the content),
    error types and score, model version, annotator, source, metadata, created_at and the served request it
    corrects (``request_id``, as ``tuneloop serve`` answered it)."""
    return {
        "request_id": _optional_name(row, "request_id"),
        "id": _case_id(row.get("id")),
        "error_types": _error_types(row.get("error_types"), limits),
        "error_score": _error_score(row.get("error_score")),
        "model_version": _model_version(row.get("model_version")),
        "annotator": _optional_name(row, "annotator"),
        "source": _optional_name(row, "source") or storable(default_source)[:MAX_NAME_CHARS],
        "metadata": _metadata(row.get("metadata"), limits),
        "created_at": _created_at(row.get("created_at"), now),
    }


def _aliased(row: Mapping[str, Any], name: str) -> tuple[str, Any]:
    """Return (key used, value) for a field with two accepted names; both given and different is an error."""
    present = [(key, row[key]) for key in _ALIASES[name] if row.get(key) is not None]
    if len(present) > 1 and present[0][1] != present[1][1]:
        raise InvalidCase(present[0][0], f"{present[0][0]} and {present[1][0]} are both given and differ")
    return present[0] if present else (_ALIASES[name][0], None)


def _transcripts(row: Mapping[str, Any], limits: IngestLimits) -> tuple[str, str | None]:
    """The prediction must be a string (empty is allowed only with a correction: the model said nothing);
    a correction, when given, must keep some text after normalisation (use null for "not corrected yet")."""
    prediction_key, prediction = _aliased(row, "prediction")
    correction_key, correction = _aliased(row, "correction")
    if prediction is None:
        raise InvalidCase("prediction", "missing: give prediction (or original_transcript)")
    for key, value in ((prediction_key, prediction), (correction_key, correction)):
        if value is not None and not isinstance(value, str):
            raise InvalidCase(key, f"must be a string{' or null' if key == correction_key else ''}, "
                                   f"got {describe(value)}")
        if value is not None and len(value) > limits.max_text_chars:
            raise InvalidCase(key, f"{len(value)} characters, longer than max_text_chars {limits.max_text_chars}")
    if correction is not None:
        if not normalize_transcript(correction):
            raise InvalidCase(correction_key, f"empty after normalisation ({correction[:40]!r}); "
                                              "use null for a case without a correction")
    elif not normalize_transcript(prediction):
        raise InvalidCase(prediction_key, f"empty after normalisation ({prediction[:40]!r}) and no correction given")
    return prediction, correction


def _error_types(value: Any, limits: IngestLimits) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidCase("error_types", f"must be a list of strings, got {describe(value)}")
    if len(value) > limits.max_error_types:
        raise InvalidCase("error_types", f"{len(value)} entries, more than max_error_types {limits.max_error_types}")
    for index, item in enumerate(value):
        if len(item) > MAX_NAME_CHARS:
            raise InvalidCase(f"error_types[{index}]", f"{len(item)} characters, longer than {MAX_NAME_CHARS}")
    return tuple(value)


def _error_score(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        try:
            score = float(value)
        except OverflowError:
            score = math.inf
        if math.isfinite(score):
            return score
    raise InvalidCase("error_score", f"must be a finite number or null, got {describe(value)}")


def _model_version(value: Any) -> str | None:
    """Strings, or integers (MLflow registry versions are often sent as numbers)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is None or (isinstance(value, str) and value.strip() and len(value) <= MAX_NAME_CHARS):
        return value
    raise InvalidCase("model_version", f"must be a non-empty string of at most {MAX_NAME_CHARS} characters or an "
                                       f"integer, got {describe(value)}")


def _optional_name(row: Mapping[str, Any], name: str) -> str | None:
    value = row.get(name)
    if value is None or (isinstance(value, str) and len(value) <= MAX_NAME_CHARS):
        return value or None
    raise InvalidCase(name, f"must be a string of at most {MAX_NAME_CHARS} characters or null, "
                            f"got {describe(value)}")


def _metadata(value: Any, limits: IngestLimits) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidCase("metadata", f"must be a JSON object, got {describe(value)}")
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise InvalidCase("metadata", f"must be plain JSON ({error})") from error
    if len(text.encode("utf-8")) > limits.max_metadata_bytes:
        raise InvalidCase("metadata", f"{len(text.encode('utf-8'))} bytes as JSON, more than max_metadata_bytes "
                                      f"{limits.max_metadata_bytes}")
    return json.loads(text)


def _created_at(value: Any, now: datetime) -> datetime:
    """ISO-8601 text or a datetime; without a zone it is taken as UTC; missing means now. It must exist in UTC
    (9999-12-31T23:59-01:00 does not) and must not lie in the future: the most recent cases are held out for
    evaluation, so a date from the future would sit in every eval split."""
    if value is None:
        return now
    if not isinstance(value, (str, datetime)):
        raise InvalidCase("created_at", f"must be an ISO-8601 string, got {describe(value)}")
    try:
        parsed = value if isinstance(value, datetime) else datetime.fromisoformat(value.strip())
        created = as_utc(parsed)
    except ValueError as error:
        raise InvalidCase("created_at", f"not an ISO-8601 date-time: {str(value)[:40]!r}") from error
    except OverflowError as error:
        raise InvalidCase("created_at", f"{str(value)[:40]!r} lies outside the dates UTC can represent") from error
    if created > as_utc(now) + FUTURE_TOLERANCE:
        raise InvalidCase("created_at", f"{created.isoformat()} is in the future")  # no "now": the same row refused
        # again must give the same reason, or re-ingesting a batch would record its rejection twice
    return created


def _case_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID_CHARS or value != value.strip():
        raise InvalidCase("id", f"must be a non-empty string of at most {MAX_ID_CHARS} characters without "
                                f"surrounding spaces, got {describe(value)}")
    return value


def _check_audio(key: str, audio: str, base_dir: Path | str, correction: str | None,
                 limits: IngestLimits) -> tuple[str, AudioInfo | None]:
    """Local audio must exist, decode and carry the correction (returns its absolute path and what the probe
    found); remote URIs are kept as given and checked at export, where the audio can be read."""
    local = local_audio_path(audio)
    if local is None:
        return audio, None
    if isinstance(base_dir, str) and "://" in base_dir and not local.expanduser().is_absolute():
        return f"{base_dir.rstrip('/')}/{local.as_posix()}", None
    path = Path(os.path.abspath(base_dir / local.expanduser()))
    try:
        info = probe_audio(path)
    except AudioError as error:
        raise InvalidCase(key, f"audio file {error.reason}: {path}" + (f" ({error.detail})" if error.detail else ""))
    problem = transcript_too_long(correction, info.duration_s, limits.max_chars_per_second)
    if problem:
        raise InvalidCase("correction", problem)
    return str(path), info


def transcript_too_long(text: str | None, duration_s: float, max_chars_per_second: float, *,
                        normalized: bool = False) -> str | None:
    """Why ``text`` cannot be a training target for ``duration_s`` of audio, or None when it can. ``normalized``:
    ``text`` is already :func:`normalize_transcript`'s output (the export has it; saves normalising twice)."""
    chars = len(text or "") if normalized else len(normalize_transcript(text or ""))
    if chars > max_chars_per_second * duration_s:
        return (f"{chars} characters for {duration_s:.2f} s of audio: more than dataset.max_chars_per_second "
                f"{max_chars_per_second:g} can carry")
    return None


# ---------------------------------------------------------------------------------------------------- helpers


def storable(text: str) -> str:
    """``text`` with what no database column can hold escaped: lone surrogates (e.g. from undecodable file
    names) and NUL characters become visible escapes."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", errors="backslashreplace").decode("utf-8")
    return text


def field_label(name: str) -> str:
    """A field name fit for a report and the rejections table: never empty, printable, bounded."""
    label = name if name and name.isprintable() and name.strip() == name else json.dumps(name)
    label = storable(label)
    return label if len(label) <= MAX_FIELD_LABEL_CHARS else label[: MAX_FIELD_LABEL_CHARS - 3] + "..."


def describe(value: Any) -> str:
    if isinstance(value, (str, int, float, list, dict, bool)):
        try:
            text = json.dumps(value)
        except (ValueError, TypeError, RecursionError):
            text = "..."
    else:
        text = repr(value)
    return f"{type(value).__name__} {storable(text[:40])}"


def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
