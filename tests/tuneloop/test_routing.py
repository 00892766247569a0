"""The canary router's split: its share over many keys, stickiness, and what a change of share or canary does."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tuneloop.serving.routing import TrafficSplit, position

KEYS = [f"user-{i}" for i in range(10_000)]


@pytest.mark.parametrize("percent", [1, 5, 10, 25, 50, 90])
@pytest.mark.parametrize("canary", ["7", "8"])
def test_the_observed_split_over_10000_keys_is_within_one_point_of_the_share(percent, canary):
    split = TrafficSplit(production="6", canary=canary, canary_percent=percent)
    share = sum(split.arm(key) == "canary" for key in KEYS) / len(KEYS)
    assert abs(share * 100 - percent) <= 1.0, share


@given(st.text(min_size=1), st.floats(min_value=0, max_value=100))
def test_the_same_key_always_gets_the_same_arm(key, percent):
    split = TrafficSplit(production="6", canary="7", canary_percent=percent)
    again = TrafficSplit(production="6", canary="7", canary_percent=percent)  # another serving process
    assert split.arm(key) == again.arm(key) == split.arm(key)
    assert split.version(key) == ("7" if split.arm(key) == "canary" else "6")


@given(st.text(min_size=1), st.floats(min_value=0, max_value=100), st.floats(min_value=0, max_value=100))
def test_raising_the_share_never_moves_a_key_back_to_production(key, low, high):
    low, high = sorted((low, high))
    if TrafficSplit("6", "7", low).arm(key) == "canary":
        assert TrafficSplit("6", "7", high).arm(key) == "canary"


def test_a_new_canary_draws_a_fresh_set_of_keys():
    first = {key for key in KEYS if TrafficSplit("6", "7", 10).arm(key) == "canary"}
    second = {key for key in KEYS if TrafficSplit("6", "8", 10).arm(key) == "canary"}
    assert len(first & second) < 0.2 * len(first)  # independent draws overlap by about 10%


def test_no_canary_sends_everything_to_production():
    assert {TrafficSplit("6").arm(key) for key in KEYS[:100]} == {"production"}
    assert {TrafficSplit("6", "7", 0).version(key) for key in KEYS[:100]} == {"6"}
    assert {TrafficSplit("6", "7", 100).version(key) for key in KEYS[:100]} == {"7"}


@pytest.mark.parametrize(("split", "error"), [
    (dict(production="6", canary="7", canary_percent=101), "canary_percent: must be between 0 and 100, got 101"),
    (dict(production="6", canary="7", canary_percent=-1), "canary_percent: must be between 0 and 100, got -1"),
    (dict(production="6", canary_percent=10), "canary_percent: 10 with no canary version"),
    (dict(production="6", canary="6", canary_percent=10), "canary: version 6 is production already"),
])
def test_an_impossible_split_is_refused_naming_the_field(split, error):
    with pytest.raises(ValueError, match=error):
        TrafficSplit(**split)


@pytest.mark.parametrize("key", ["", None, 42])
def test_a_request_without_a_key_is_refused(key):
    with pytest.raises(ValueError, match="key: a request needs a non-empty key"):
        position(key, salt="7")  # type: ignore[arg-type]
