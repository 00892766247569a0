"""Speech to text (wav2vec2-style CTC): a case is an audio clip, the model's transcript and its correction.

What is speech-specific in the loop: the row rules (:func:`tuneloop.intake.parse_case`: audio that decodes and
can carry its correction), the export's audio checks (decodable, unchanged since ingestion, within the duration
bounds, not too many characters per second) and copies (16 kHz mono WAVs named by content), deduplication by
audio content (the most recent correction of a recording wins) and the manifest's duration statistics.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.audio import AudioError, AudioInfo, convert_verified, local_audio_path, probe_audio
from tuneloop.intake import CaseDraft, IngestLimits, InvalidCase, parse_case, transcript_too_long
from tuneloop.tasks import ExportItem, Fetcher, Note, Screened, Serving
from tuneloop.text import normalize_transcript

if TYPE_CHECKING:
    from tuneloop.config import DatasetConfig
    from tuneloop.pipeline import PipelineRun
    from tuneloop.store import ErrorCase

log = logging.getLogger(__name__)

# Row keys set from the case itself; a slice field with one of these names never overrides them.
FIXED_ROW_KEYS = ("id", "audio", "text", "duration_s", "sample_rate", "created_at", "model_version", "source")


class SpeechToText:
    """The speech-to-text task (``TASK``)."""

    name = "speech_to_text"
    trainer_task = "speech-to-text"
    example_noun = "audio"  # what identifies an example: one recording, one case
    text_noun = "transcript"  # what the eval split must not see in training
    needs_correction = True  # a transcript nobody corrected is the model's own mistake

    def parse_case(self, row: Mapping[str, Any], *, base_dir: Path | str, default_source: str, now: datetime,
                   limits: IngestLimits) -> CaseDraft:
        return parse_case(row, base_dir=base_dir, default_source=default_source, now=now, limits=limits)

    def screen(self, cases: Iterable[ErrorCase], config: DatasetConfig, fetch: Fetcher | None,
               now: datetime | None = None) -> Screened:
        """Usable cases as items; broken audio or text quarantined; remote audio without a fetcher skipped.

        Audio probed at ingestion is not decoded here: its content hash, duration and sample rate are stored, and
        the export's copy (:func:`~tuneloop.audio.convert_verified`) proves the file still holds that recording.
        Only audio never probed (remote, or ingested before the store kept durations) is fetched and probed now.
        """
        screened = Screened(items=[])
        for case in cases:
            text = normalize_transcript(case.correction or "")
            if not text:
                screened.quarantined.append(Note(case.id, f"correction is empty after normalisation: "
                                                          f"{case.correction!r}"))
                continue
            stored = _stored_info(case)
            if stored is not None:  # the file is opened only to be copied, if the case is kept
                problem = audio_problem(case, stored, config, text)
                if problem:
                    screened.quarantined.append(Note(case.id, problem))
                else:
                    screened.items.append(_item(case, text, stored, case.audio_uri or "", config))
                continue
            try:
                path = _local_file(case.audio_uri or "", fetch)
                if path is None:
                    screened.skipped.append(Note(case.id, f"remote audio {case.audio_uri} and no fetch_audio given"))
                    continue
                info = probe_audio(path)
            except AudioError as error:
                detail = f" ({error.detail})" if error.detail else ""
                screened.quarantined.append(Note(case.id, f"audio {error.reason}: {case.audio_uri}{detail}"))
                continue
            problem = audio_problem(case, info, config, text)
            if problem:
                screened.quarantined.append(Note(case.id, problem))
                continue
            screened.items.append(_item(case, text, info, path, config))
        return screened

    def replay(self, config: DatasetConfig) -> tuple[list[ExportItem], list[Note]]:
        """A seeded draw of ``replay_size`` rows of ``replay_path`` (``{id, audio, text, ...}``), checked like
        cases; the neutral export then applies the leakage guard and the overlap rules."""
        from tuneloop.datasets import REPLAY_CREATED_AT, REPLAY_PREFIX, DatasetError
        from tuneloop.regression import SuiteError, read_examples
        from tuneloop.store import ErrorCase

        if config.replay_path is None:
            return [], []
        try:
            rows = read_examples(Path(config.replay_path), "replay", "dataset.replay_path")
        except SuiteError as error:
            raise DatasetError(str(error)) from error
        random.Random(config.replay_seed).shuffle(rows)
        kept: list[ExportItem] = []
        dropped: list[Note] = []
        for row in rows[: config.replay_size]:
            case_id = f"{REPLAY_PREFIX}{row['id']}"
            text = normalize_transcript(row["text"])
            try:
                info = probe_audio(row["audio"])
            except AudioError as error:
                dropped.append(Note(case_id, f"audio {error.reason}: {row['audio']}"))
                continue
            case = ErrorCase(id=case_id, created_at=REPLAY_CREATED_AT, source="replay", model_version=None,
                             audio_uri=row["audio"], audio_hash=info.content_hash, prediction=text, correction=text,
                             error_types=(), error_score=None, annotator=None, content_hash=info.content_hash,
                             metadata={k: v for k, v in row.items() if k not in ("id", "audio", "text")},
                             state="consumed")
            problem = audio_problem(case, info, config) or ("transcript is empty after normalisation" if not text
                                                            else None)
            if problem:
                dropped.append(Note(case_id, problem))
                continue
            kept.append(_item(case, text, info, Path(row["audio"]), config))
        return kept, dropped

    def write_files(self, source: dict[str, Any], folder: Path, config: DatasetConfig) -> None:
        """The 16 kHz mono WAV copy of one recording (``source``: its local path, or a ``file://`` URI; remote
        audio was fetched to a local file when screened), verified against the content hash probed before."""
        path = local_audio_path(source["path"])
        if path is None:
            raise ValueError(f"source path: not a local file: {source['path']!r}")
        convert_verified(path, folder / source["audio"], config.sample_rate, source["hash"])

    def split_stats(self, rows: Iterable[dict[str, Any]], config: DatasetConfig) -> dict[str, Any]:
        cases, total, low, high = 0, 0.0, math.inf, 0.0
        slices: dict[str, Counter[str]] = {name: Counter() for name in (*config.slice_fields, "model_version")}
        for row in rows:
            duration = row["duration_s"]
            cases, total, low, high = cases + 1, total + duration, min(low, duration), max(high, duration)
            for name, counter in slices.items():
                if row.get(name) is not None:
                    counter[str(row[name])] += 1
        return {
            "cases": cases,
            "duration_s": {
                "total": round(total, 3),
                "min": low if cases else 0.0,
                "max": high,
                "mean": round(total / cases, 3) if cases else 0.0,
            },
            "slices": {name: dict(sorted(counter.items())) for name, counter in slices.items()},
        }

    def extra_files(self, rows: dict[str, list[dict[str, Any]]],
                    config: DatasetConfig) -> dict[str, list[dict[str, Any]]]:
        """No other formats for speech: train.jsonl and eval.jsonl are the dataset."""
        return {}

    # -- judging a candidate ---------------------------------------------------------------------------------
    def validate(self, run: PipelineRun) -> dict[str, Any]:
        """WER/CER gate (:mod:`tuneloop.gate`) on the paired eval transcripts; writes gate.json, churn, plot."""
        from tuneloop import storage
        from tuneloop.churn import write_churn
        from tuneloop.gate import gate
        from tuneloop.metrics import score_pair
        from tuneloop.plots import gate_figure
        from tuneloop.predictions import pair_predictions, read_predictions

        scored = score_pair(pair_predictions(read_predictions(run.paths.predictions("production")),
                                             read_predictions(run.paths.predictions("candidate"))))
        first_run = run.base_model_source()["source"] != "production"
        outcome = gate(scored, run.config.validation, first_run=first_run)
        result = outcome.to_dict() | {"requires_approval": outcome.requires_approval}
        storage.write_json(run.paths.gate, result)
        with storage.staged_output(run.paths.churn) as churn:
            write_churn(churn, scored)
        with storage.staged_output(run.paths.plot) as plot:
            gate_figure(scored, outcome.slices, plot,
                        title=f"{run.config.mlflow.model_name}: {outcome.verdict} ({run.run_id})")
        return result

    def regression(self, run: PipelineRun) -> dict[str, Any]:
        """Each suite's WER against its baseline (recorded, or production's in this run)."""
        from tuneloop.predictions import read_predictions
        from tuneloop.regression import run_suite, run_suites

        source = run.base_model_source()
        production_version = source.get("version") if source["source"] == "production" else None
        results = []
        for spec in run.suites():
            if not run.paths.predictions("candidate", spec.name).exists():
                log.warning("suite %s was registered after this run's evaluation: not judged in this run", spec.name)
                continue
            production = read_predictions(run.paths.predictions("production", spec.name))
            results.append(run_suite(spec, read_predictions(run.paths.predictions("candidate", spec.name)),
                                     production if production_version else None, run.config.regression,
                                     production_version=production_version))
        return run_suites(results).to_dict()

    def suite_metrics(self, report: dict[str, Any]) -> dict[str, float]:
        return {f"suite.{r['name']}.{key}": float(r[key]) for r in report["results"]
                for key in ("wer", "cer", "wer_degradation", "failed_samples_rate")}

    def serving(self) -> Serving:
        """The pyfunc (audio -> transcripts) a registered version is logged with, and its pip requirements."""
        from tuneloop_trainer import SERVING_REQUIREMENTS, serving_path

        return Serving(serving_path(self.trainer_task), list(SERVING_REQUIREMENTS))

    def request_input(self, value: Any) -> list[bytes]:
        """``{"audio_base64": "..."}``: one recording (WAV, FLAC: what the pyfunc decodes) as bytes. Paths are not
        taken: a server must not read files a request names."""
        import base64
        import binascii

        if not isinstance(value, Mapping) or not isinstance(value.get("audio_base64"), str):
            raise InvalidCase("input.audio_base64", "a request's input is {\"audio_base64\": <the recording, "
                                                    "base64>}")
        try:
            audio = base64.b64decode(value["audio_base64"], validate=True)
        except (binascii.Error, ValueError) as error:
            raise InvalidCase("input.audio_base64", f"not valid base64 ({error})") from error
        if not audio:
            raise InvalidCase("input.audio_base64", "empty recording")
        return [audio]

    def post_deploy_check(self, run: PipelineRun, dataset_id: str, deployed_version: str,
                          alias: str = "production") -> dict[str, Any]:
        """Transcribe a smoke set through ``models:/<name>@<alias>`` (:mod:`tuneloop.post_deploy`)."""
        from tuneloop.post_deploy import check_served_model

        return check_served_model(run.config, run.paths.predictions("candidate"),
                                  run.dataset_dir(dataset_id) / "eval.jsonl", deployed_version,
                                  run.registry.alias_version(alias), alias=alias).to_dict()

    def headline(self, gate_result: dict[str, Any]) -> str:
        wer, cer = gate_result["wer"], gate_result["cer"]
        return (f"WER {wer['baseline']:.3f} → {wer['candidate']:.3f}, CER {cer['baseline']:.3f} → "
                f"{cer['candidate']:.3f} on {gate_result['n']} eval utterances")

    def flat_metrics(self, gate_result: dict[str, Any]) -> dict[str, float]:
        """The gate's headline numbers as flat MLflow metrics / version tags (``candidate_wer``,
        ``wer_p_value``...)."""
        flat: dict[str, Any] = {"gate_n": gate_result.get("n"),
                                "degradation_rate": gate_result.get("degradation_rate")}
        for metric in ("wer", "cer"):
            comparison = gate_result.get(metric) or {}
            flat[f"baseline_{metric}"] = comparison.get("baseline")
            flat[f"candidate_{metric}"] = comparison.get("candidate")
            flat[f"{metric}_improvement"] = comparison.get("improvement")
            for key in ("ci_low", "ci_high", "p_value"):
                flat[f"{metric}_{key}"] = (comparison.get("bootstrap") or {}).get(key)
        return numbers(flat)

    def scoreboard(self, gate_result: dict[str, Any]) -> dict[str, Any]:
        """WER (the gate's metric) and CER with their intervals, the slices' WERs and the churn's five kinds."""
        from tuneloop.tasks import scoreboard

        metrics = []
        for name in ("wer", "cer"):
            comparison = gate_result.get(name) or {}
            boot = comparison.get("bootstrap") or {}
            metrics.append({"name": name, "baseline": comparison.get("baseline"),
                            "candidate": comparison.get("candidate"), "lower_is_better": True,
                            "ci_low": boot.get("ci_low"), "ci_high": boot.get("ci_high"),
                            "p_value": boot.get("p_value")})
        slices = [{"name": f"{s['field']}={s['value']}", "n": s["n"], "baseline": s["baseline_wer"],
                   "candidate": s["candidate_wer"], "gated": s["gated"], "passed": s["passed"]}
                  for s in gate_result.get("slices") or []]
        churn = gate_result.get("churn") or {}
        counts = {kind: churn[kind] for kind in ("fixed", "newly_broken", "improved", "worsened", "unchanged", "n")
                  if kind in churn}
        return scoreboard(n=gate_result.get("n", 0), verdict=gate_result.get("verdict", ""), primary="wer",
                          metrics=metrics, slices=slices, churn=counts, reasons=list(gate_result.get("reasons") or []))

    def record_sections(self, record: dict[str, Any]) -> list[str]:
        """decision.md's tables for speech: metrics, statistics, slices, churn, suites."""
        from tuneloop import report

        return report.speech_sections(record)


def numbers(flat: dict[str, Any]) -> dict[str, float]:
    """The entries that are numbers (not bools), as floats: what MLflow metrics and version tags take."""
    return {k: float(v) for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def audio_problem(case: ErrorCase, info: AudioInfo, config: DatasetConfig, text: str | None = None) -> str | None:
    """Why a decodable recording cannot train (or evaluate) the model, or None. ``text``: the case's normalised
    correction, when the caller has it."""
    too_long = (transcript_too_long(text, info.duration_s, config.max_chars_per_second, normalized=True)
                if text is not None else
                transcript_too_long(case.correction, info.duration_s, config.max_chars_per_second))
    if too_long:
        return f"correction too long for its audio: {too_long}"
    if case.audio_hash is not None and case.audio_hash != info.content_hash:
        return f"audio changed since ingestion: {case.audio_uri} no longer matches the stored content hash"
    if info.duration_s < config.min_duration_s:
        return f"audio too short: {info.duration_s:.3f} s < min_duration_s {config.min_duration_s:g}"
    if info.duration_s > config.max_duration_s:
        return f"audio too long: {info.duration_s:.3f} s > max_duration_s {config.max_duration_s:g}"
    return None


def _stored_info(case: ErrorCase) -> AudioInfo | None:
    """What ingestion's probe found about a local recording, or None when it must be probed now."""
    if case.audio_hash is None or case.audio_duration_s is None or case.audio_sample_rate is None:
        return None
    uri = case.audio_uri or ""
    if "://" in uri and not uri.startswith("file://"):  # local_audio_path's rule, without making a Path
        return None
    frames = round(case.audio_duration_s * case.audio_sample_rate)
    # channels are not stored (0: unknown); nothing before the copy needs them, and the copy reads the file
    return AudioInfo(sample_rate=case.audio_sample_rate, channels=0, frames=frames,
                     duration_s=case.audio_duration_s, content_hash=case.audio_hash)


def _local_file(uri: str, fetch: Fetcher | None) -> Path | None:
    """The local file for ``uri``: the path itself, a fetched copy of a remote URI, or None if unfetchable."""
    path = local_audio_path(uri)
    if path is None and fetch is not None:
        return fetch(uri)
    return path


def _item(case: ErrorCase, text: str, info: AudioInfo, path: Path | str, config: DatasetConfig) -> ExportItem:
    audio = f"audio/{info.content_hash}.wav"
    row: dict[str, Any] = {
        "id": case.id,
        "audio": audio,
        "text": text,
        "duration_s": round(info.duration_s, 3),
        "sample_rate": config.sample_rate,
        "created_at": case.created_at.isoformat(),
        "model_version": case.model_version,
        "source": case.source,
    }
    for name in config.slice_fields:
        if name not in FIXED_ROW_KEYS and name in case.metadata:
            row[name] = case.metadata[name]

    source = {"path": str(path), "audio": audio, "hash": info.content_hash}
    return ExportItem(case=case, key=info.content_hash, text=text, guard_key=info.content_hash, row=row,
                      files=(audio,), source=source)


TASK = SpeechToText()
