"""The demo's production model before any fine-tuning: a tiny wav2vec2 CTC model trained from scratch.

Training from scratch on 2 CPU cores takes far longer than the demo's budget (CTC sits on the all-blank plateau
for a few hundred steps and needs thousands to spell well; see ``tuneloop_demo.settings.MEASURED``), so the
repository ships the result in ``include/demo/baseline/`` (save_pretrained, safetensors). It is produced by
:func:`bootstrap_baseline` with the fixed seed below; to regenerate it::

    PYTHONPATH=include/trainer:include/demo python -m tuneloop_demo bootstrap-baseline \
        --output include/demo/baseline --work-dir /tmp/tuneloop-baseline

The run is resumable (re-run the same command after an interruption). Results are reproducible up to
floating-point differences between machines and thread counts.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from tuneloop_demo.settings import BASELINE_SEED, BASELINE_SIZE, BASELINE_TRAINING
from tuneloop_demo.world import WorldConfig, build_world, read_split, write_dataset_dir

log = logging.getLogger(__name__)

SHIPPED_BASELINE = Path(__file__).resolve().parent.parent / "baseline"
BASELINE_INFO = "baseline.json"


def bootstrap_baseline(output_dir: Path, work_dir: Path, seed: int = BASELINE_SEED,
                       world_config: WorldConfig | None = None,
                       training: dict[str, Any] | None = None) -> Path:
    """Build the seen-voice data, initialise the tiny model and train it from scratch into ``output_dir``."""
    from tuneloop_trainer import train
    from tuneloop_trainer.modeling import init_model
    from tuneloop_trainer.spec import LoraSpec, TrainingSpec

    world = build_world(work_dir / "world", seed, world_config)
    dataset = write_dataset_dir(work_dir / "baseline-dataset", read_split(world, "baseline_train"),
                                read_split(world, "seen_eval"), world.root, source="baseline")
    init_dir = work_dir / "init"
    if not (init_dir / "config.json").is_file():
        init_model(init_dir, BASELINE_SIZE)
    settings = {**BASELINE_TRAINING, **(training or {})}
    spec = TrainingSpec(task="speech-to-text", base_model_uri=str(init_dir), dataset_uri=str(dataset),
                        output_uri=str(work_dir / "run"), seed=seed, lora=LoraSpec(enabled=False),
                        freeze_feature_encoder=False, **settings)
    metrics = train.main(spec)
    return publish(work_dir / "run" / "model", output_dir, {"seed": seed, "training": settings, "metrics": metrics})


def publish(model_dir: Path, output_dir: Path, info: dict[str, Any]) -> Path:
    """Copy the trained model + processor to ``output_dir`` with a baseline.json saying how it was made."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        shutil.copyfile(item, output_dir / item.name)
        (output_dir / item.name).chmod(0o644)  # save_pretrained writes 0600; the repo copy must be world-readable
    (output_dir / BASELINE_INFO).write_text(json.dumps(info, indent=2) + "\n")
    log.info("baseline written to %s", output_dir)
    return output_dir


def shipped_baseline() -> Path:
    """The baseline shipped in the repository; an error that says how to create it when it is missing."""
    if not (SHIPPED_BASELINE / "config.json").is_file():
        raise FileNotFoundError(f"no baseline model in {SHIPPED_BASELINE}; create it with "
                                "`python -m tuneloop_demo bootstrap-baseline --output include/demo/baseline`")
    return SHIPPED_BASELINE
