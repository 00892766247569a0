"""The shipped baseline loads through from_pretrained and transcribes seen voices; the bootstrap runs."""

from __future__ import annotations

import json
from pathlib import Path

import jiwer
import pytest
from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

from tuneloop_demo.baseline import BASELINE_INFO, bootstrap_baseline, shipped_baseline
from tuneloop_demo.settings import BASELINE_SEED
from tuneloop_demo.speech import SynthesisJob, synthesize
from tuneloop_demo.world import World, WorldConfig
from tuneloop_trainer.evaluate import transcribe_rows

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_shipped_baseline_is_small_and_documented() -> None:
    baseline = shipped_baseline()
    assert (baseline / "model.safetensors").stat().st_size < 8 * 1024 * 1024
    info = json.loads((baseline / BASELINE_INFO).read_text())
    assert info["seed"] == BASELINE_SEED
    assert type(Wav2Vec2ForCTC.from_pretrained(baseline)) is Wav2Vec2ForCTC
    assert len(Wav2Vec2Processor.from_pretrained(baseline).tokenizer) == 30


def test_shipped_baseline_understands_a_seen_voice(tmp_path: Path) -> None:
    baseline = shipped_baseline()
    texts = ["turn off the kitchen lights", "set a timer for ten minutes", "what's the weather in london today"]
    rows = []
    for index, text in enumerate(texts):
        audio = tmp_path / f"{index}.wav"
        duration = synthesize(SynthesisJob(text=text, voice="en-us", out_path=audio, speed_wpm=165))
        rows.append({"id": str(index), "audio": str(audio), "text": text, "duration_s": duration})
    predictions = transcribe_rows(rows, Wav2Vec2ForCTC.from_pretrained(baseline).eval(),
                                  Wav2Vec2Processor.from_pretrained(baseline), batch_size=4)
    wer = jiwer.wer([p["reference"] for p in predictions], [p["hypothesis"] for p in predictions])
    assert wer < 0.35, predictions


def test_bootstrap_trains_and_publishes(small_world: World, small_config: WorldConfig, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "world").symlink_to(small_world.root)  # reuse the session's world (same seed and settings)
    output = bootstrap_baseline(tmp_path / "baseline", work, seed=small_world.seed, world_config=small_config,
                                training={"max_steps": 2, "batch_size": 4, "checkpoint_every_steps": 2})
    info = json.loads((output / BASELINE_INFO).read_text())
    assert info["metrics"]["steps"] == 2 and info["metrics"]["lora"] is False
    assert type(Wav2Vec2ForCTC.from_pretrained(output)) is Wav2Vec2ForCTC
