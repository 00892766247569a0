"""Fixtures for demo tests: a small world (a few dozen utterances) built once per session."""

from __future__ import annotations

import shutil

import pytest

from tuneloop_demo.world import World, WorldConfig, build_world

SMALL = WorldConfig(baseline_train=12, seen_eval=4, production=20, heldout=6, replay=4, processes=2)


@pytest.fixture(scope="session")
def small_config() -> WorldConfig:
    return SMALL


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory, small_config: WorldConfig) -> World:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    return build_world(tmp_path_factory.mktemp("world"), seed=3, config=small_config)
