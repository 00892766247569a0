"""The demo world: who speaks to the product, what they say, and which of it the model has seen.

``build_world(root, seed)`` writes, once (a rerun with the same settings reuses it):

- ``baseline_train.jsonl``: commands spoken by the *seen* voices; the baseline model learns from these.
- ``seen_eval.jsonl``: more seen-voice utterances (a regression suite: fine-tuning must not break them).
- ``production.jsonl``: "production traffic", mostly *unseen* voices and noisy audio, each with an age so that
  :func:`production_utterances` can spread ``created_at`` over the days before ``now``.
- ``heldout.jsonl``: unseen-voice utterances never used for training, to measure the fine-tuned candidate.
- ``replay.jsonl``: more seen-voice utterances with correct transcripts, "older traffic" that fine-tuning can
  mix in (replay) so the model keeps what it knew about the seen voices.
- ``world.json``: settings, counts and voice lists; written last, so its presence means the world is complete.

Rows follow the dataset-row schema (``id``, ``audio`` relative to the JSONL's directory, ``text``,
``duration_s``, ``sample_rate``, ``voice``, ``condition``, ``source``). Sentences never repeat across files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuneloop_demo.corpus import sentences
from tuneloop_demo.speech import SynthesisJob, synthesize_all

log = logging.getLogger(__name__)

WORLD_FILE = "world.json"
# Planning order: a split added later goes last, so that earlier splits keep their sentences and speakers.
SPLITS = ("baseline_train", "seen_eval", "production", "heldout", "replay")


@dataclass(frozen=True)
class Speaker:
    """An espeak-ng voice (+variant) with its speaking rate and pitch ranges."""

    voice: str
    speed_wpm: tuple[int, int] = (150, 180)
    pitch: tuple[int, int] = (40, 60)


SEEN_SPEAKERS = (
    Speaker("en-us"), Speaker("en-us+m1"), Speaker("en-us+m3"), Speaker("en-us+f2"), Speaker("en-us+f4"),
    Speaker("en-gb"), Speaker("en-gb+m2"), Speaker("en-gb+f1"), Speaker("en-gb-x-rp+m4"), Speaker("en-gb+f3"),
)
UNSEEN_SPEAKERS = (
    Speaker("en-gb-scotland+m7", (165, 195)), Speaker("en-029+f5", (165, 195)),
    Speaker("en-us-nyc+klatt", (165, 195)), Speaker("en-gb-x-gbclan+klatt3", (165, 195)),
    Speaker("en-gb-x-gbcwmd+f4", (165, 195)),
)


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and speakers of the demo world (defaults are the measured demo settings).

    ``splits`` says which splits are synthesised. Sentences and speakers are planned for every split whatever
    is chosen, so a world without ``baseline_train`` (the demo: the baseline ships pre-trained) has exactly the
    same evaluation and production utterances as the world the baseline was trained in.
    """

    baseline_train: int = 3000
    seen_eval: int = 80
    production: int = 400
    heldout: int = 100
    replay: int = 300
    production_seen_share: float = 0.2
    noisy_share: float = 0.3
    noisy_snr_db: tuple[float, float] = (8.0, 16.0)
    production_days: float = 6.0
    seen_speakers: tuple[Speaker, ...] = SEEN_SPEAKERS
    unseen_speakers: tuple[Speaker, ...] = UNSEEN_SPEAKERS
    splits: tuple[str, ...] = SPLITS
    processes: int = field(default=2, compare=False)

    def __post_init__(self) -> None:
        unknown = set(self.splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; choose from {SPLITS}")

    def fingerprint(self, seed: int) -> str:
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "processes"}
        return hashlib.sha256(json.dumps({"seed": seed, **data}, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class World:
    """Paths and facts about a built world; ``counts`` has one entry per synthesised split."""

    root: Path
    seed: int
    seen_voices: tuple[str, ...]
    unseen_voices: tuple[str, ...]
    counts: dict[str, int]

    def split(self, name: str) -> Path:
        """The JSONL file of a synthesised split."""
        if name not in self.counts:
            raise KeyError(f"split {name!r} was not synthesised in {self.root}; built: {sorted(self.counts)}")
        return self.root / f"{name}.jsonl"

    @property
    def baseline_train(self) -> Path:
        return self.split("baseline_train")

    @property
    def seen_eval(self) -> Path:
        return self.split("seen_eval")

    @property
    def production(self) -> Path:
        return self.split("production")

    @property
    def heldout(self) -> Path:
        return self.split("heldout")


def build_world(root: Path, seed: int, config: WorldConfig | None = None) -> World:
    """Synthesise the world under ``root`` (or reuse it when a complete one with these settings exists)."""
    config = config or WorldConfig()
    root = Path(root)
    existing = load_world(root)
    if existing is not None and _fingerprint(root) == config.fingerprint(seed):
        log.info("reusing demo world in %s", root)
        return existing
    log.info("building demo world in %s (seed %d)", root, seed)
    (root / WORLD_FILE).unlink(missing_ok=True)
    plans = plan_world(config, seed)
    jobs = [job for split in config.splits for job in _jobs(root, plans[split])]
    durations = iter(synthesize_all(jobs, processes=config.processes))
    for split in config.splits:
        rows = [{**row, "duration_s": round(next(durations), 3)} for row in plans[split]]
        _write_jsonl(root / f"{split}.jsonl", rows)
    manifest = {
        "seed": seed, "fingerprint": config.fingerprint(seed), "config": dataclasses.asdict(config),
        "splits": list(config.splits), "counts": {split: len(plans[split]) for split in config.splits},
        "seen_voices": [s.voice for s in config.seen_speakers],
        "unseen_voices": [s.voice for s in config.unseen_speakers],
    }
    (root / WORLD_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    world = load_world(root)
    assert world is not None
    return world


def load_world(root: Path) -> World | None:
    """The world under ``root`` if it is complete (world.json and every split it lists), else None."""
    root = Path(root)
    manifest_file = root / WORLD_FILE
    if not manifest_file.is_file():
        return None
    manifest = json.loads(manifest_file.read_text())
    if not all((root / f"{split}.jsonl").is_file() for split in manifest["counts"]):
        return None
    return World(root=root, seed=manifest["seed"], seen_voices=tuple(manifest["seen_voices"]),
                 unseen_voices=tuple(manifest["unseen_voices"]), counts=manifest["counts"])


def _fingerprint(root: Path) -> str | None:
    return json.loads((root / WORLD_FILE).read_text()).get("fingerprint")


def plan_world(config: WorldConfig, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Rows (without durations) for every split: distinct sentences, speakers and conditions, all seeded."""
    rng = random.Random(seed)
    total = sum(getattr(config, split) for split in SPLITS)
    texts = iter(sentences(total, seed))
    plans: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        count = getattr(config, split)
        plans[split] = [_row(split, index, next(texts), config, rng) for index in range(count)]
    _assign_ages(plans["production"], rng, 0.0, config.production_days)
    _assign_ages(plans["replay"], rng, config.production_days + 1, config.production_days + 30)
    return plans


def _row(split: str, index: int, text: str, config: WorldConfig, rng: random.Random) -> dict[str, Any]:
    unseen = split == "heldout" or (split == "production" and rng.random() >= config.production_seen_share)
    speaker = rng.choice(config.unseen_speakers if unseen else config.seen_speakers)
    noisy = unseen and rng.random() < config.noisy_share
    row = {
        "id": f"{split}-{index:05d}", "audio": f"audio/{split}/{split}-{index:05d}.wav", "text": text,
        "sample_rate": 16000, "voice": speaker.voice, "condition": "noisy" if noisy else "clean",
        "source": f"demo-{split.replace('_', '-')}", "speaker_group": "unseen" if unseen else "seen",
        "speed_wpm": rng.randint(*speaker.speed_wpm), "pitch": rng.randint(*speaker.pitch),
        "snr_db": round(rng.uniform(*config.noisy_snr_db), 1) if noisy else None,
        "noise_seed": rng.randrange(2**31),
    }
    return row


def _assign_ages(rows: list[dict[str, Any]], rng: random.Random, newest_days: float, oldest_days: float) -> None:
    """Spread rows between ``oldest_days`` and ``newest_days`` ago, oldest first (ids follow time)."""
    ages = sorted((rng.uniform(newest_days * 86400, oldest_days * 86400) for _ in rows), reverse=True)
    for row, age in zip(rows, ages, strict=True):
        row["age_s"] = round(age, 1)


def _jobs(root: Path, rows: list[dict[str, Any]]) -> Iterator[SynthesisJob]:
    for row in rows:
        yield SynthesisJob(text=row["text"], voice=row["voice"], out_path=root / row["audio"],
                           speed_wpm=row["speed_wpm"], pitch=row["pitch"], snr_db=row["snr_db"],
                           noise_seed=row["noise_seed"])


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.replace(path)


def read_split(world: World, split: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in world.split(split).read_text().splitlines() if line.strip()]


def production_utterances(world: World, now: datetime | None = None) -> Iterator[dict[str, Any]]:
    """Production traffic for the error-case ingestion, oldest first.

    Yields ``{"id", "audio_path" (absolute), "text" (the true transcript, i.e. the correction), "voice",
    "condition", "duration_s", "created_at" (ISO 8601, UTC; ``now`` minus the row's age)}``.
    """
    return _utterances(world, "production", now)


def replay_utterances(world: World, now: datetime | None = None) -> Iterator[dict[str, Any]]:
    """Older, correctly transcribed seen-voice traffic (one to five weeks before the production window).

    Same fields as :func:`production_utterances`. The demo points ``dataset.replay_path`` at this split's JSONL:
    the export mixes it into training, which keeps fine-tuning from eroding the seen voices.
    """
    return _utterances(world, "replay", now)


def _utterances(world: World, split: str, now: datetime | None) -> Iterator[dict[str, Any]]:
    now = now or datetime.now(UTC)
    for row in read_split(world, split):
        yield {
            "id": row["id"], "audio_path": str((world.root / row["audio"]).resolve()), "text": row["text"],
            "voice": row["voice"], "condition": row["condition"], "duration_s": row["duration_s"],
            "created_at": (now - timedelta(seconds=row["age_s"])).isoformat(),
        }


def write_dataset_dir(path: Path, train: list[dict[str, Any]], eval_rows: list[dict[str, Any]], audio_root: Path,
                      source: str) -> Path:
    """A dataset directory in the export layout (train.jsonl, eval.jsonl, manifest.json) over world audio.

    Audio paths become absolute (the contract allows it), so the directory can live anywhere. Used by the
    baseline bootstrap and by the measurement script; the product's own datasets come from the Airflow export.
    """
    path.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("eval", eval_rows)):
        absolute = [{**row, "audio": str((audio_root / row["audio"]).resolve())} for row in rows]
        _write_jsonl(path / f"{name}.jsonl", absolute)
    manifest = {"id": f"demo-{source}", "source": source, "counts": {"train": len(train), "eval": len(eval_rows)}}
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return path
