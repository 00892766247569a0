"""The post-deploy check: is the model now served (as production, or on the green or canary alias of a staged
rollout) the one we validated, and does it work?

It loads ``models:/<name>@<alias>`` through the generic MLflow pyfunc loader, exactly as a serving system
would, transcribes a smoke set of eval utterances, and compares with the validated candidate's predictions.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneloop import storage
from tuneloop.config import TuneloopConfig
from tuneloop.storage import StoragePath

# Serving and batch evaluation batch and pad differently, so transcripts can differ by float noise (a lot, for a
# poor model); the served WER may exceed the validated one by this much before the check fails. Which model is
# served is checked exactly, by the alias.
SERVED_WER_TOLERANCE = 0.05


@dataclass(frozen=True)
class PostDeployCheck:
    passed: bool
    served_wer: float | None
    validated_wer: float | None
    n: int
    mismatched: int
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_served_model(config: TuneloopConfig, candidate_predictions: StoragePath, eval_split: StoragePath,
                       deployed_version: str, served_version: str | None,
                       alias: str = "production") -> PostDeployCheck:
    """Transcribe the first ``post_deploy_smoke_size`` eval rows through ``alias`` (production; green or canary
    for a staged rollout), which points to ``served_version``, and judge them. The split may be in a bucket:
    only the smoke rows' audio is fetched."""
    import mlflow
    import pandas as pd

    from tuneloop.metrics import corpus_wer

    if served_version != deployed_version:
        return PostDeployCheck(False, None, None, 0, 0, [f"the {alias} alias points to version "
                                                         f"{served_version}, not to the deployed {deployed_version}"])
    rows = storage.read_jsonl(eval_split)[: config.deployment.post_deploy_smoke_size]
    expected = {r["id"]: r for r in storage.read_jsonl(candidate_predictions)}
    mlflow.set_tracking_uri(config.tracking_uri)
    mlflow.set_registry_uri(config.registry_uri)
    uri = f"models:/{config.mlflow.model_name}@{alias}"
    try:
        model = mlflow.pyfunc.load_model(uri)
        with tempfile.TemporaryDirectory(prefix="tuneloop-smoke-") as tmp:
            audio = [str(storage.fetch(eval_split.parent / r["audio"], Path(tmp))) for r in rows]
            served = list(model.predict(pd.DataFrame({"audio": audio})))
    except Exception as e:  # a model that cannot load or predict is the clearest failure of all
        return PostDeployCheck(False, None, None, len(rows), len(rows), [f"{uri} failed to serve: {e}"])
    references = [r["text"] for r in rows]
    served_wer = corpus_wer(references, served)
    validated_wer = corpus_wer(references, [expected[r["id"]]["hypothesis"] for r in rows])
    mismatched = sum(s != expected[r["id"]]["hypothesis"] for s, r in zip(served, rows))
    return _judge(config, served_wer, validated_wer, len(rows), mismatched)


def _judge(config: TuneloopConfig, served_wer: float, validated_wer: float, n: int, mismatched: int) -> PostDeployCheck:
    threshold = config.deployment.rollback_on_error_threshold
    reasons = [f"served model WER {served_wer:.3f} on {n} smoke utterances (validated candidate: {validated_wer:.3f})"]
    passed = True
    if served_wer > threshold:
        passed = False
        reasons.append(f"served WER {served_wer:.3f} > rollback_on_error_threshold {threshold}")
    if served_wer > validated_wer + SERVED_WER_TOLERANCE:
        passed = False
        reasons.append(f"served WER exceeds the validated candidate's by more than {SERVED_WER_TOLERANCE}")
    if mismatched:
        reasons.append(f"{mismatched}/{n} transcripts differ from batch evaluation's (padding and batching)")
    return PostDeployCheck(passed, served_wer, validated_wer, n, mismatched, reasons)

