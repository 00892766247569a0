"""A model's history written through the store's own API, for the status page's tests and benchmark.

Each judged run's scoreboard comes from the real speech gate on paired predictions whose error rates follow the
version (a candidate a little better than the production it was judged against, now and then a worse one), so the
page reads what a report writes; deployments, rejections and rollbacks are recorded as the pipeline records them.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any

from tuneloop.config import SliceSpec, ValidationConfig
from tuneloop.gate import PairedPrediction, gate
from tuneloop.history import DeploymentEvent
from tuneloop.tasks import task_for

WORDS = "turn left at the next corner and stop by the red house near the old mill".split()


def paired(rng: random.Random, n: int, base_errors: float, cand_errors: float) -> list[PairedPrediction]:
    """``n`` utterances; each word dropped with the given probability for production and for the candidate."""
    pairs = []
    for i in range(n):
        words = rng.sample(WORDS, 6)
        drop = lambda p: " ".join(w for w in words if rng.random() >= p)  # noqa: E731
        pairs.append(PairedPrediction(f"utt{i:04d}", " ".join(words), drop(base_errors), drop(cand_errors),
                                      slices={"voice": ("en-us", "en-gb")[i % 2]}))
    return pairs


def write_history(store: Any, *, runs: int, versions: int, seed: int = 0, model_name: str = "asr",
                  start: datetime | None = None) -> dict[str, Any]:
    """``runs`` finished runs of which ``versions - 1`` registered candidate versions 2..``versions`` (version 1
    is the bootstrap), the rest skipped or failed; returns what was written (production, rollbacks)."""
    rng = random.Random(seed)
    clock = start or datetime(2026, 1, 1, tzinfo=timezone.utc)
    task = task_for("speech_to_text")
    config = ValidationConfig(bootstrap_resamples=200, slice_resamples=100, min_eval_size=5,
                              slices=(SliceSpec(field="voice", min_n=10),))
    store.record_deployment(DeploymentEvent("bootstrap", model_name, None, "1", "the first model", at=clock))
    production, previous, rate, rollbacks = "1", None, 0.4, 0
    judged = set(rng.sample(range(runs), versions - 1))
    version = 1
    for index in range(runs):
        clock += timedelta(hours=6)
        run_id = f"scheduled__{clock.isoformat()}"
        store.start_training_run(run_id, at=clock)
        if index not in judged:
            store.finish_training_run(run_id, rng.choice(["skipped", "failed"]), summary={"lines": ["nothing"]},
                                      at=clock + timedelta(minutes=1))
            continue
        version += 1
        better = rng.random() < 0.7
        cand_rate = max(0.02, rate - 0.03) if better else rate + 0.05
        result = gate(paired(rng, 40, rate, cand_rate), config).to_dict()
        status = "deployed" if better else "rejected"
        store.finish_training_run(run_id, status, candidate_version=str(version), at=clock + timedelta(hours=1),
                                  summary={"lines": [f"{status}: WER {rate:.2f} -> {cand_rate:.2f}"],
                                           "scoreboard": task.scoreboard(result), "production_before": production,
                                           "reason_started": "scheduled", "record": None})
        if better:
            store.record_deployment(DeploymentEvent(
                "deploy", model_name, production, str(version), f"gate passed: WER {rate:.2f} -> {cand_rate:.2f}",
                run_id=run_id, at=clock + timedelta(hours=1), details={"previous": production}))
            previous, production, rate = production, str(version), cand_rate
            if rng.random() < 0.1 and previous:
                store.record_deployment(DeploymentEvent(
                    "rollback", model_name, production, previous, "complaints from users", actor="cli:ops",
                    at=clock + timedelta(hours=2), details={"previous": previous}))
                production, rollbacks = previous, rollbacks + 1
    return {"production": production, "versions": version, "rollbacks": rollbacks}
