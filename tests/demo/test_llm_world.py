"""The chat demo's world: facts from the nicknames package, production's training questions, seeded traffic."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tuneloop_demo.nickname_world import (
    TRAINED,
    TRAINED_PHRASING,
    USER_PHRASINGS,
    NicknameWorldConfig,
    answer,
    build_world,
    load_world,
    nickname_facts,
    plan_world,
    read_jsonl,
    traffic_requests,
)

SMALL = NicknameWorldConfig(names=30, trained_phrasing_requests=8, suite_names=8, production_days=2.0)


@pytest.fixture(scope="module")
def facts() -> dict[str, tuple[str, ...]]:
    return nickname_facts()


def test_facts_are_the_packages_names_csv(facts: dict[str, tuple[str, ...]]) -> None:
    from nicknames import NickNamer

    assert facts["abraham"] == ("ab", "abe")
    assert len(facts) > 1000
    namer = NickNamer()
    for name in ("aaron", "melissa", "wilber"):
        assert set(facts[name]) == namer.nicknames_of(name)
        assert list(facts[name]) == sorted(facts[name])
    assert answer(facts["aaron"]) == "erin, ron, ronnie"


def test_production_is_trained_on_every_name_asked_one_way(facts: dict[str, tuple[str, ...]]) -> None:
    plan = plan_world(SMALL, seed=1, facts=facts)
    training = plan["production_training"]
    assert len(training) == SMALL.names
    for row in training:
        question, reply = (message["content"] for message in row["messages"])
        name = question.removeprefix(TRAINED_PHRASING.format(name=""))
        assert question == TRAINED_PHRASING.format(name=name)
        assert reply == answer(facts[name]) and len(facts[name]) <= SMALL.max_nicknames


def test_traffic_asks_about_the_same_names_mostly_in_users_words(facts: dict[str, tuple[str, ...]]) -> None:
    plan = plan_world(SMALL, seed=1, facts=facts)
    trained_names = {row["id"].removeprefix("trained-") for row in plan["production_training"]}
    traffic = plan["traffic"]
    assert len(traffic) == SMALL.names + SMALL.trained_phrasing_requests
    phrasings = Counter(row["phrasing"] for row in traffic)
    assert phrasings[TRAINED] == SMALL.trained_phrasing_requests
    user_rows = [row for row in traffic if row["phrasing"] != TRAINED]
    assert sorted(row["name"] for row in user_rows) == sorted(trained_names)  # each name once in users' words
    for row in traffic:
        phrasing = TRAINED_PHRASING if row["phrasing"] == TRAINED else \
            USER_PHRASINGS[int(row["phrasing"].removeprefix("user-")) - 1]
        assert row["messages"][0]["content"] == phrasing.format(name=row["name"])
        assert row["messages"][1]["content"] == answer(facts[row["name"]])
    ages = [row["age_s"] for row in traffic]
    assert ages == sorted(ages, reverse=True) and 0 <= min(ages) and max(ages) <= SMALL.production_days * 86400
    assert len({row["id"] for row in traffic}) == len(traffic)


def test_the_suite_and_the_replay_split_productions_training(facts: dict[str, tuple[str, ...]]) -> None:
    plan = plan_world(SMALL, seed=1, facts=facts)
    suite, replay = plan["trained_suite"], plan["replay"]
    assert len(suite) == SMALL.suite_names and len(replay) == SMALL.names - SMALL.suite_names
    assert sorted(suite + replay, key=lambda row: row["id"]) == plan["production_training"]
    # the suite's size leaves the traffic as it is (a generator of its own)
    assert plan_world(replace(SMALL, suite_names=3), seed=1, facts=facts)["traffic"] == plan["traffic"]


def test_the_plan_is_seeded(facts: dict[str, tuple[str, ...]]) -> None:
    assert plan_world(SMALL, seed=1, facts=facts) == plan_world(SMALL, seed=1, facts=facts)
    assert plan_world(SMALL, seed=1, facts=facts) != plan_world(SMALL, seed=2, facts=facts)


def test_impossible_sizes_are_refused(facts: dict[str, tuple[str, ...]]) -> None:
    with pytest.raises(ValueError, match="trained_phrasing_requests"):
        NicknameWorldConfig(names=5, trained_phrasing_requests=6, suite_names=1)
    with pytest.raises(ValueError, match="suite_names .* must leave names to replay"):
        NicknameWorldConfig(names=5, trained_phrasing_requests=1, suite_names=5)
    with pytest.raises(ValueError, match="only .* names have at most 1 nicknames"):
        plan_world(NicknameWorldConfig(names=len(facts), max_nicknames=1), seed=0, facts=facts)


def test_build_writes_every_file_and_reuses_a_complete_world(tmp_path: Path) -> None:
    world = build_world(tmp_path / "world", seed=1, config=SMALL)
    assert world.counts == {"production_training": SMALL.names,
                            "traffic": SMALL.names + SMALL.trained_phrasing_requests,
                            "trained_suite": SMALL.suite_names, "replay": SMALL.names - SMALL.suite_names}
    assert len(read_jsonl(world.production_training)) == SMALL.names
    corpus = world.corpus.read_text()
    assert all(message["content"] in corpus for row in read_jsonl(world.traffic) for message in row["messages"])
    assert "nicknames" in json.loads((world.root / "world.json").read_text())["source"]
    assert len(read_jsonl(world.trained_suite)) == SMALL.suite_names
    stamp = world.traffic.stat().st_mtime_ns
    assert build_world(world.root, seed=1, config=SMALL) == world
    assert world.traffic.stat().st_mtime_ns == stamp
    rebuilt = build_world(world.root, seed=1, config=replace(SMALL, names=31))
    assert rebuilt.fingerprint != world.fingerprint and rebuilt.counts["production_training"] == 31


def test_an_incomplete_world_is_not_loaded(tmp_path: Path) -> None:
    world = build_world(tmp_path / "world", seed=1, config=SMALL)
    world.corpus.unlink()
    assert load_world(world.root) is None
    assert load_world(tmp_path / "nowhere") is None


def test_traffic_requests_are_dated_before_now_oldest_first(tmp_path: Path) -> None:
    world = build_world(tmp_path / "world", seed=1, config=SMALL)
    now = datetime(2026, 3, 1, tzinfo=UTC)
    requests = list(traffic_requests(world, now=now))
    times = [datetime.fromisoformat(r["created_at"]) for r in requests]
    assert times == sorted(times)
    assert all(now - timedelta(days=SMALL.production_days) <= t <= now for t in times)
