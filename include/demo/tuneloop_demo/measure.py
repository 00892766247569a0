"""The demo's ML path without Airflow, timed and scored: ``python -m tuneloop_demo measure``.

1. Build (or reuse) the world; transcribe production traffic with the baseline (the production model).
2. Error cases = production utterances the baseline got wrong, corrected with the true text; the most recent
   share is held out as the dataset's eval split, as the Airflow export does.
3. Fine-tune each variant (LoRA, full, shuffled labels) through the real CLI, as the local backend would.
4. Evaluate baseline and candidates on the held-out unseen-voice set, the seen-voice regression set and the
   export's eval split through the real CLI; compare with a paired bootstrap over utterances.

The numbers in :mod:`tuneloop_demo.settings` come from this script. It uses the same CLI invocations as the
product, so the timings include process start-up.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jiwer
import numpy as np

from tuneloop_demo.settings import DEMO_REPLAY, DEMO_SEED, DEMO_WORLD, EXPORT_EVAL_SHARE, VARIANTS
from tuneloop_demo.world import World, WorldConfig, build_world, read_split, write_dataset_dir

log = logging.getLogger(__name__)

EVAL_SETS = ("heldout", "seen_eval", "export_eval")


@dataclass(frozen=True)
class Comparison:
    """Candidate vs baseline corpus WER on one set, with a paired bootstrap over utterances."""

    n: int
    baseline_wer: float
    candidate_wer: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    worse_share: float
    max_increase: float


def word_errors(predictions: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-utterance (word edits, reference words), in the order given."""
    edits, words = [], []
    for row in predictions:
        out = jiwer.process_words(row["reference"], row["hypothesis"] or "")
        edits.append(out.substitutions + out.deletions + out.insertions)
        words.append(len(row["reference"].split()))
    return np.array(edits, dtype=float), np.array(words, dtype=float)


def paired_bootstrap(base: list[dict[str, Any]], cand: list[dict[str, Any]], iterations: int = 10_000,
                     seed: int = 0) -> Comparison:
    """Resample utterances with replacement; p = share of resamples where the candidate is not better."""
    by_id = {row["id"]: row for row in cand}
    cand = [by_id[row["id"]] for row in base]
    base_edits, words = word_errors(base)
    cand_edits, _ = word_errors(cand)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(base), size=(iterations, len(base)))
    deltas = (cand_edits[index].sum(1) - base_edits[index].sum(1)) / words[index].sum(1)
    base_wer, cand_wer = float(base_edits.sum() / words.sum()), float(cand_edits.sum() / words.sum())
    increase = (cand_edits - base_edits) / words  # per-utterance WER change, what the gate's checks look at
    return Comparison(n=len(base), baseline_wer=round(base_wer, 4), candidate_wer=round(cand_wer, 4),
                      delta=round(cand_wer - base_wer, 4), ci_low=round(float(np.quantile(deltas, 0.025)), 4),
                      ci_high=round(float(np.quantile(deltas, 0.975)), 4),
                      p_value=float((np.sum(deltas >= 0) + 1) / (iterations + 1)),
                      worse_share=round(float(np.mean(increase > 0)), 4), max_increase=round(float(increase.max()), 4))


def corpus_wer(predictions: list[dict[str, Any]]) -> float:
    edits, words = word_errors(predictions)
    return round(float(edits.sum() / words.sum()), 4)


def run_cli(args: list[str]) -> float:
    """Run ``python -m tuneloop_trainer ...`` like the local backend does; returns wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tuneloop_trainer", *args], check=True)
    return time.perf_counter() - start


def evaluate(model_dir: Path, data: Path, output: Path) -> tuple[list[dict[str, Any]], float]:
    seconds = run_cli(["evaluate", "--model-dir", str(model_dir), "--data", str(data), "--output", str(output)])
    return _read_jsonl(output), seconds


def error_case_dataset(world: World, baseline: Path, work_dir: Path, replay: int) -> tuple[Path, dict[str, Any]]:
    """Production rows the baseline got wrong, split by time (most recent held out) into a dataset dir.

    ``replay`` seen-voice rows from the world's replay split join the train split, as the export's replay of
    older data would.
    """
    predictions, seconds = evaluate(baseline, world.production, work_dir / "production-predictions.jsonl")
    wrong = {p["id"] for p in predictions if p["hypothesis"] != p["reference"]}
    rows = read_split(world, "production")  # oldest first
    errors = [row for row in rows if row["id"] in wrong]
    n_eval = round(EXPORT_EVAL_SHARE * len(errors))
    train, held = errors[: len(errors) - n_eval], errors[len(errors) - n_eval :]
    replayed = read_split(world, "replay")[:replay] if replay else []
    dataset = write_dataset_dir(work_dir / "dataset", train + replayed, held, world.root, source="error-cases")
    facts = {"production_utterances": len(rows), "production_wer": corpus_wer(predictions),
             "utterance_error_rate": round(len(errors) / len(rows), 4), "error_cases": len(errors),
             "train_rows": len(train), "replay_rows": len(replayed), "eval_rows": len(held), "evaluate_production_s": round(seconds, 1)}
    return dataset, facts


def eval_files(world: World, dataset: Path) -> dict[str, Path]:
    return {"heldout": world.heldout, "seen_eval": world.seen_eval, "export_eval": dataset / "eval.jsonl"}


def score_model(model_dir: Path, files: dict[str, Path], out_dir: Path) -> tuple[dict[str, list], float]:
    """Transcribe every set with one ``evaluate`` process (start-up costs more than a 100-utterance set)."""
    outputs = {name: out_dir / f"{name}.jsonl" for name in files}
    seconds = run_cli(["evaluate", "--model-dir", str(model_dir), "--data", *map(str, files.values()),
                       "--output", *map(str, outputs.values())])
    return {name: _read_jsonl(path) for name, path in outputs.items()}, seconds


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def slice_wers(predictions: list[dict[str, Any]], field: str) -> dict[str, float]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in predictions:
        groups.setdefault(str(row.get(field)), []).append(row)
    return {key: corpus_wer(rows) for key, rows in sorted(groups.items())}


def run_variant(name: str, settings: dict[str, Any], baseline: Path, dataset: Path, work_dir: Path,
                files: dict[str, Path], base_predictions: dict[str, list]) -> dict[str, Any]:
    spec = {"task": "speech-to-text", "base_model_uri": str(baseline), "dataset_uri": str(dataset),
            "output_uri": str(work_dir / name), "seed": DEMO_SEED, **settings}
    spec_file = work_dir / f"{name}-spec.json"
    spec_file.write_text(json.dumps(spec, indent=2))
    train_wall = run_cli(["train", "--spec", str(spec_file)])
    metrics = json.loads((work_dir / name / "metrics.json").read_text())
    predictions, seconds = score_model(work_dir / name / "model", files, work_dir / name / "predictions")
    return {
        "settings": settings, "train_wall_s": round(train_wall, 1), "train_metrics": metrics,
        "evaluate_wall_s": round(seconds, 1),
        "comparisons": {k: asdict(paired_bootstrap(base_predictions[k], predictions[k])) for k in files},
        "heldout_by_voice": slice_wers(predictions["heldout"], "voice"),
        "heldout_by_condition": slice_wers(predictions["heldout"], "condition"),
    }


def measure(work_dir: Path, baseline: Path | None, variants: list[str], seed: int = DEMO_SEED,
            world_config: WorldConfig = DEMO_WORLD, variant_settings: dict[str, dict[str, Any]] | None = None,
            replay: int = DEMO_REPLAY) -> Path:
    """Run everything and write ``work_dir/report.json``; returns its path."""
    from tuneloop_demo.baseline import shipped_baseline

    work_dir.mkdir(parents=True, exist_ok=True)
    baseline = baseline or shipped_baseline()
    world_start = time.perf_counter()
    world = build_world(work_dir / "world", seed, world_config)
    world_s = time.perf_counter() - world_start
    dataset, facts = error_case_dataset(world, baseline, work_dir, replay)
    files = eval_files(world, dataset)
    base_predictions, base_seconds = score_model(baseline, files, work_dir / "baseline-predictions")
    report: dict[str, Any] = {
        "world_s": round(world_s, 1), "error_cases": facts,
        "baseline": {k: corpus_wer(v) for k, v in base_predictions.items()},
        "baseline_evaluate_wall_s": round(base_seconds, 1),
        "baseline_heldout_by_voice": slice_wers(base_predictions["heldout"], "voice"),
        "baseline_heldout_by_condition": slice_wers(base_predictions["heldout"], "condition"),
        "variants": {},
    }
    for name in variants:
        settings = (variant_settings or VARIANTS)[name]
        report["variants"][name] = run_variant(name, settings, baseline, dataset, work_dir, files, base_predictions)
        (work_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (work_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("report: %s", json.dumps(report, indent=2))
    return work_dir / "report.json"
