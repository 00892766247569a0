"""Fixtures for tests that drive the stand-in OpenAI API by hand: its clock, the server, a client of it.

Import them into a test module (``from tests.standins.openai_fixtures import api, client, clock``); the
stand-in's clock starts at a fixed moment and moves only on ``clock.tick``, so every job state is seen exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import OpenAI

from tests.standins.clock import ManualClock
from tests.standins.openai_api import OpenAIStandIn

BASE = "gpt-4.1-mini-2025-04-14"
KEY = "sk-test-secret-1234"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def api(clock: ManualClock) -> Iterator[OpenAIStandIn]:
    """Validating 1 s, queued 1 s, running 10 s of the stand-in's clock; the key is required."""
    with OpenAIStandIn(api_key=KEY, clock=clock, validating_s=1, queued_s=1, running_s=10) as standin:
        yield standin


@pytest.fixture
def client(api: OpenAIStandIn) -> OpenAI:
    return OpenAI(api_key=KEY, base_url=api.base_url, max_retries=0, timeout=5)
