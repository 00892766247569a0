from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import soundfile as sf

from tuneloop_demo.world import SPLITS, World, WorldConfig, build_world, read_split, write_dataset_dir
from tuneloop_trainer.data import read_rows

ROW_FIELDS = {"id", "audio", "text", "duration_s", "sample_rate", "voice", "condition", "source"}


def test_world_has_every_split_with_schema_rows(small_world: World, small_config: WorldConfig) -> None:
    for split in SPLITS:
        rows = read_split(small_world, split)
        assert len(rows) == getattr(small_config, split)
        for row in rows:
            assert ROW_FIELDS <= set(row)
            info = sf.info(str(small_world.root / row["audio"]))
            assert (info.samplerate, info.channels) == (16000, 1)
            assert abs(info.duration - row["duration_s"]) < 0.01
            assert row["condition"] in ("clean", "noisy")


def test_seen_and_unseen_speakers_are_kept_apart(small_world: World) -> None:
    assert {r["voice"] for r in read_split(small_world, "baseline_train")} <= set(small_world.seen_voices)
    assert {r["voice"] for r in read_split(small_world, "heldout")} <= set(small_world.unseen_voices)
    assert {r["voice"] for r in read_split(small_world, "replay")} <= set(small_world.seen_voices)
    assert all(r["condition"] == "clean" for split in ("seen_eval", "replay") for r in read_split(small_world, split))


def test_sentences_never_repeat_across_splits(small_world: World) -> None:
    texts = [r["text"] for split in SPLITS for r in read_split(small_world, split)]
    assert len(texts) == len(set(texts))


def test_rebuilding_reuses_a_complete_world(small_world: World, small_config: WorldConfig) -> None:
    wav = small_world.root / read_split(small_world, "heldout")[0]["audio"]
    stamp = wav.stat().st_mtime_ns
    again = build_world(small_world.root, seed=small_world.seed, config=small_config)
    assert again == small_world
    assert wav.stat().st_mtime_ns == stamp


def test_production_utterances_span_the_past_days(small_world: World, small_config: WorldConfig) -> None:
    from tuneloop_demo import production_utterances

    now = datetime(2026, 1, 10, tzinfo=UTC)
    utterances = list(production_utterances(small_world, now=now))
    assert len(utterances) == small_config.production
    times = [datetime.fromisoformat(u["created_at"]) for u in utterances]
    assert times == sorted(times)
    assert all(now - timedelta(days=small_config.production_days) <= t <= now for t in times)
    assert all(Path(u["audio_path"]).is_absolute() and Path(u["audio_path"]).is_file() for u in utterances)
    assert {"audio_path", "text", "voice", "condition", "created_at"} <= set(utterances[0])


def test_replay_utterances_are_older_than_production(small_world: World) -> None:
    from tuneloop_demo import production_utterances, replay_utterances

    now = datetime(2026, 1, 10, tzinfo=UTC)
    oldest_production = min(u["created_at"] for u in production_utterances(small_world, now=now))
    replay = list(replay_utterances(small_world, now=now))
    assert replay and all(u["created_at"] < oldest_production for u in replay)
    assert {u["voice"] for u in replay} <= set(small_world.seen_voices)


def test_dataset_dir_is_readable_by_the_trainer(small_world: World, tmp_path: Path) -> None:
    rows = read_split(small_world, "production")
    dataset = write_dataset_dir(tmp_path / "ds", rows[:15], rows[15:], small_world.root, source="test")
    train = read_rows(dataset / "train.jsonl")
    assert len(train) == 15 and all(Path(r["audio"]).is_file() for r in train)
    assert json.loads((dataset / "manifest.json").read_text())["counts"] == {"train": 15, "eval": 5}


def test_a_world_without_some_splits_plans_the_same_utterances(small_world: World, small_config: WorldConfig,
                                                               tmp_path: Path) -> None:
    from dataclasses import replace

    config = replace(small_config, splits=("heldout",))
    partial = build_world(tmp_path / "partial", seed=small_world.seed, config=config)
    assert set(partial.counts) == {"heldout"}
    strip = ("duration_s",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in read_split(partial, "heldout")] == \
        [{k: v for k, v in r.items() if k not in strip} for r in read_split(small_world, "heldout")]
