"""The chat demo's ML path without Airflow, timed and scored: ``python -m tuneloop_demo measure-llm``.

1. Build (or reuse) the nickname world and production version 1 (:func:`tuneloop_demo.llm.build_production_model`).
2. Production answers the traffic; the wrong answers, corrected, are the error cases; the newest share is held out
   as the eval split (as the Airflow export does), the rest plus a seeded draw of production's own training
   questions (the export's replay) is the train split.
3. Fine-tune each variant (the demo's settings; the same with shuffled replies, the bad candidate) for each seed,
   through the trainer's command line as the local backend runs it.
4. Score exact match on the eval split (McNemar's exact test against production, as the gate does) and on the
   regression suite (production's training questions that are never replayed: what fine-tuning must not
   forget).

The numbers in :data:`tuneloop_demo.nickname_settings.MEASURED` come from this script.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

from tuneloop_demo.measure import run_cli
from tuneloop_demo.nickname_settings import (
    DEMO_FINETUNE,
    DEMO_REPLAY,
    DEMO_SEED,
    DEMO_WORLD,
    EXPORT_EVAL_SHARE,
    FULL_FINETUNE,
)
from tuneloop_demo.nickname_world import NicknameWorld, build_world, read_jsonl

log = logging.getLogger(__name__)

VARIANTS: dict[str, dict[str, Any]] = {
    "demo": DEMO_FINETUNE,  # LoRA on every Linear layer
    "shuffle": {**DEMO_FINETUNE, "label_noise": "shuffle"},  # the bad candidate
    "full": FULL_FINETUNE,
    "lora-qv": {**DEMO_FINETUNE, "lora": {**DEMO_FINETUNE["lora"], "target_modules": ["q_proj", "v_proj"]}},
}


def error_case_dataset(world: NicknameWorld, production: Path, work_dir: Path,
                       replay: int = DEMO_REPLAY) -> tuple[Path, dict[str, Any]]:
    """Production's wrong answers split by time (newest held out) into a dataset directory, plus the replay."""
    answers, seconds = predict(production, world.traffic, work_dir / "traffic-answers.jsonl")
    traffic = read_jsonl(world.traffic)  # oldest first
    errors = [row for row in traffic if answers[row["id"]] != row["messages"][-1]["content"]]
    n_eval = round(EXPORT_EVAL_SHARE * len(errors))
    train, held = errors[: len(errors) - n_eval], errors[len(errors) - n_eval:]
    replayed = random.Random(0).sample(read_jsonl(world.replay), replay) if replay else []
    dataset = work_dir / "dataset"
    dataset.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train + replayed), ("eval", held)):
        (dataset / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    facts = {"requests": len(traffic), "error_cases": len(errors), "train_cases": len(train),
             "replay_rows": len(replayed), "eval_cases": len(held), "answer_traffic_s": round(seconds, 1),
             "eval_names_in_train_cases": len({r["name"] for r in held} & {r["name"] for r in train})}
    return dataset, facts


def predict(model_dir: Path, data: Path, output: Path) -> tuple[dict[str, str], float]:
    """``evaluate`` through the trainer's CLI: {id: reply}, and the wall seconds it took."""
    seconds = run_cli(["evaluate", "--model-dir", str(model_dir), "--data", str(data), "--output", str(output),
                       "--batch-size", "32"])
    return {row["id"]: row["hypothesis"] for row in read_jsonl(output)}, seconds


def exact_match(rows: list[dict[str, Any]], answers: dict[str, str]) -> list[bool]:
    return [answers[row["id"]] == row["messages"][-1]["content"] for row in rows]


def run_variant(name: str, seed: int, settings: dict[str, Any], production: Path, dataset: Path, world: NicknameWorld,
                work_dir: Path, baseline_right: list[bool]) -> dict[str, Any]:
    from tuneloop.stats import mcnemar_exact

    output = work_dir / f"{name}-seed{seed}"
    spec = {"task": "chat", "base_model_uri": str(production), "dataset_uri": str(dataset),
            "output_uri": str(output), "seed": seed, **settings}
    spec_file = work_dir / f"{name}-seed{seed}-spec.json"
    spec_file.write_text(json.dumps(spec, indent=2))
    train_s = run_cli(["train", "--spec", str(spec_file)])
    eval_rows = read_jsonl(dataset / "eval.jsonl")
    answers, _ = predict(output / "model", dataset / "eval.jsonl", output / "eval-predictions.jsonl")
    right = exact_match(eval_rows, answers)
    suite = read_jsonl(world.trained_suite)
    suite_answers, _ = predict(output / "model", world.trained_suite, output / "suite-predictions.jsonl")
    test = mcnemar_exact(baseline_right, right)
    metrics = json.loads((output / "metrics.json").read_text())
    return {"train_wall_s": round(train_s, 1), "steps": metrics["steps"], "train_loss": round(metrics["train_loss"], 3),
            "eval_exact_match": _mean(right), "fixed": test.fixed, "broken": test.broken,
            "mcnemar_p": test.p_value,
            "suite_exact_match": _mean(exact_match(suite, suite_answers))}


def measure(work_dir: Path, variants: list[str], seeds: list[int]) -> Path:
    """Run everything and write ``work_dir/report-llm.json``; returns its path."""
    from tuneloop_demo.llm import build_production_model

    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    world = build_world(work_dir / "world", DEMO_SEED, DEMO_WORLD)
    production = build_production_model(world, work_dir / "production")
    build_s = time.perf_counter() - started
    dataset, facts = error_case_dataset(world, production, work_dir)
    eval_rows = read_jsonl(dataset / "eval.jsonl")
    baseline, _ = predict(production, dataset / "eval.jsonl", work_dir / "production-eval.jsonl")
    trained = read_jsonl(world.production_training)
    trained_answers, _ = predict(production, world.production_training, work_dir / "production-trained.jsonl")
    suite = [row for row in trained if row["id"] in {r["id"] for r in read_jsonl(world.trained_suite)}]
    baseline_right = exact_match(eval_rows, baseline)
    report: dict[str, Any] = {
        "world_and_production_s": round(build_s, 1), "error_cases": facts,
        "production": {"eval_exact_match": round(sum(baseline_right) / len(baseline_right), 3),
                       "trained_phrasing_exact_match": _mean(exact_match(trained, trained_answers)),
                       "suite_exact_match": _mean(exact_match(suite, trained_answers))},
        "variants": {},
    }
    for name in variants:
        for seed in seeds:
            report["variants"][f"{name}/seed{seed}"] = run_variant(name, seed, VARIANTS[name], production, dataset,
                                                                   world, work_dir, baseline_right)
            (work_dir / "report-llm.json").write_text(json.dumps(report, indent=2) + "\n")
    (work_dir / "report-llm.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("report: %s", json.dumps(report, indent=2))
    return work_dir / "report-llm.json"


def _mean(right: list[bool]) -> float:
    return round(sum(right) / len(right), 3)
