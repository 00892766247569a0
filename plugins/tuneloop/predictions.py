"""The predictions contract: what ``evaluate`` writes and the gate reads.

One JSON object per line: ``{"id", "reference", "hypothesis", "latency_ms", ...}``; every other field (voice,
condition, source, duration_s, ...) is a slice field, kept as is so the gate can score slices without re-reading
the dataset. A baseline file and a candidate file are compared utterance by utterance, so they are paired by id
and must hold exactly the same ids with the same references: a gate over mismatched files would compare two
different test sets and its verdict would mean nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from tuneloop.text import normalize_transcript

REQUIRED_FIELDS = ("id", "reference", "hypothesis")
_CORE_FIELDS = frozenset({"id", "reference", "hypothesis", "latency_ms"})
_SHOWN_IDS = 5


class PredictionsError(ValueError):
    """A predictions file breaks the contract (bad JSON, missing field, duplicate id) or two files do not pair."""


class _Openable(Protocol):
    """Anything with ``open(mode)``: ``pathlib.Path``, Airflow's ``ObjectStoragePath``, a ``UPath``."""

    def open(self, mode: str = ..., *args: Any, **kwargs: Any) -> IO[Any]: ...


PredictionsPath = str | os.PathLike[str] | _Openable


@dataclass(frozen=True)
class Prediction:
    """One utterance transcribed by one model. ``slices`` holds every field beyond the core four."""

    id: str
    reference: str
    hypothesis: str
    latency_ms: float | None = None
    slices: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id, "reference": self.reference, "hypothesis": self.hypothesis}
        if self.latency_ms is not None:
            row["latency_ms"] = self.latency_ms
        row.update(self.slices)
        return row


@dataclass(frozen=True)
class PairedPrediction:
    """The same utterance transcribed by the baseline (production) and the candidate model."""

    id: str
    reference: str
    baseline_hypothesis: str
    candidate_hypothesis: str
    baseline_latency_ms: float | None = None
    candidate_latency_ms: float | None = None
    slices: dict[str, Any] = field(default_factory=dict)

    @property
    def baseline(self) -> Prediction:
        return Prediction(self.id, self.reference, self.baseline_hypothesis, self.baseline_latency_ms, self.slices)

    @property
    def candidate(self) -> Prediction:
        return Prediction(self.id, self.reference, self.candidate_hypothesis, self.candidate_latency_ms, self.slices)


def parse_prediction(row: Any, where: str) -> Prediction:
    """Validate one decoded JSON row; ``where`` (``file:line``) goes into the error so the row can be found."""
    if not isinstance(row, dict):
        raise PredictionsError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [name for name in REQUIRED_FIELDS if name not in row]
    if missing:
        raise PredictionsError(f"{where}: missing field(s) {', '.join(missing)}")
    for name in ("reference", "hypothesis"):
        if not isinstance(row[name], str):
            raise PredictionsError(f"{where}: {name} must be a string, got {type(row[name]).__name__}")
    if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool) or str(row["id"]) == "":
        raise PredictionsError(f"{where}: id must be a non-empty string, got {row['id']!r}")
    latency = row.get("latency_ms")
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, (int, float))):
        raise PredictionsError(f"{where}: latency_ms must be a number or null, got {latency!r}")
    slices = {key: value for key, value in row.items() if key not in _CORE_FIELDS}
    return Prediction(
        id=str(row["id"]),
        reference=row["reference"],
        hypothesis=row["hypothesis"],
        latency_ms=None if latency is None else float(latency),
        slices=slices,
    )


def parse_predictions(lines: Iterable[str], source: str = "<predictions>") -> list[Prediction]:
    """Parse JSONL text lines (blank lines skipped); ids must be unique within one file."""
    predictions: list[Prediction] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PredictionsError(f"{where}: not valid JSON ({e.msg})") from e
        prediction = parse_prediction(row, where)
        if prediction.id in seen:
            raise PredictionsError(f"{where}: duplicate id {prediction.id!r} (first on line {seen[prediction.id]})")
        seen[prediction.id] = number
        predictions.append(prediction)
    return predictions


def read_predictions(path: PredictionsPath) -> list[Prediction]:
    """Read a predictions JSONL file from a local path or any object with ``open()`` (object storage)."""
    target = path if hasattr(path, "open") else Path(os.fspath(path))  # type: ignore[arg-type]
    try:
        with target.open("r", encoding="utf-8") as handle:
            return parse_predictions(handle, str(path))
    except OSError as e:
        raise PredictionsError(f"cannot read predictions file {path}: {e}") from e


def write_predictions(path: PredictionsPath, predictions: Iterable[Prediction]) -> Any:
    """Write predictions as JSONL atomically: locally a temp file + rename, in object storage one upload.
    Readers never see half a file."""
    from tuneloop.storage import as_path, is_local

    if not is_local(path):
        target = as_path(path)
        target.write_text("".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in predictions),
                          encoding="utf-8")
        return target
    target = Path(os.fspath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for prediction in predictions:
            handle.write(json.dumps(prediction.to_dict(), ensure_ascii=False) + "\n")
    tmp.replace(target)
    return target


def pair_predictions(baseline: Sequence[Prediction], candidate: Sequence[Prediction]) -> list[PairedPrediction]:
    """Align two prediction sets by id, in the baseline's order.

    Raises PredictionsError when the id sets differ (naming the counts and a few ids on each side) or when an id
    carries different references in the two files: the two models must have been scored on the same test set.
    References are compared after ``normalize_transcript`` (what scoring sees), so a formatting-only difference
    does not fail the pairing; the baseline's reference is kept.
    Slice fields come from the baseline, with candidate-only fields added.
    """
    base_ids = [p.id for p in baseline]
    cand_by_id = {p.id: p for p in candidate}
    if len(cand_by_id) != len(candidate) or len(set(base_ids)) != len(base_ids):
        raise PredictionsError("prediction sets must not contain duplicate ids")
    only_base = [i for i in base_ids if i not in cand_by_id]
    base_set = set(base_ids)
    only_cand = [p.id for p in candidate if p.id not in base_set]
    if only_base or only_cand:
        raise PredictionsError(
            f"baseline and candidate predictions cover different utterances: baseline has {len(baseline)}, "
            f"candidate has {len(candidate)}; {len(only_base)} only in baseline {_show(only_base)}, "
            f"{len(only_cand)} only in candidate {_show(only_cand)}"
        )
    mismatched = [p.id for p in baseline if not _same_reference(p.reference, cand_by_id[p.id].reference)]
    if mismatched:
        first = mismatched[0]
        raise PredictionsError(
            f"{len(mismatched)} utterance(s) have different references in baseline and candidate "
            f"{_show(mismatched)}; e.g. {first!r}: {_by_id(baseline, first).reference!r} vs "
            f"{cand_by_id[first].reference!r}"
        )
    paired = []
    for base in baseline:
        cand = cand_by_id[base.id]
        paired.append(
            PairedPrediction(
                id=base.id,
                reference=base.reference,
                baseline_hypothesis=base.hypothesis,
                candidate_hypothesis=cand.hypothesis,
                baseline_latency_ms=base.latency_ms,
                candidate_latency_ms=cand.latency_ms,
                slices={**cand.slices, **base.slices},
            )
        )
    return paired


def _same_reference(a: str, b: str) -> bool:
    return a == b or normalize_transcript(a) == normalize_transcript(b)


def _show(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_SHOWN_IDS])
    more = f", ... (+{len(ids) - _SHOWN_IDS})" if len(ids) > _SHOWN_IDS else ""
    return f"[{shown}{more}]"


def _by_id(predictions: Sequence[Prediction], id_: str) -> Prediction:
    return next(p for p in predictions if p.id == id_)
