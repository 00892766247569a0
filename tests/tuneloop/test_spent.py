"""What a run's training spent without making a model: recorded once per resource, read back, priced with the run."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tuneloop import spent
from tuneloop.spent import Spent

entries = st.builds(Spent, resource=st.text(min_size=1, max_size=40),
                    quantity=st.floats(min_value=0, max_value=1e12, allow_nan=False),
                    unit=st.sampled_from(spent.UNITS), outcome=st.sampled_from(["failed", "cancelled"]),
                    upper_bound=st.booleans())


@given(st.lists(entries, max_size=8))
def test_what_is_recorded_reads_back_last_entry_per_resource_in_first_seen_order(tmp_path_factory, recorded):
    training = tmp_path_factory.mktemp("training")
    for entry in recorded:
        spent.record(training, entry)
    last = {}
    for entry in recorded:
        last[entry.resource] = entry
    assert spent.read(training) == list(last.values())


def test_nothing_recorded_reads_as_nothing(tmp_path):
    assert spent.read(tmp_path) == []


@pytest.mark.parametrize(("field", "value", "error"), [
    ("unit", "gpu-seconds", "unit: 'gpu-seconds' is not one of tokens, hours"),
    ("quantity", -1.0, "quantity: -1.0 must be a number >= 0"),
    ("quantity", math.nan, "quantity: nan must be a number >= 0"),
])
def test_an_entry_that_cannot_be_priced_is_refused_naming_its_field(field, value, error):
    fields = {"resource": "job-1", "quantity": 1.0, "unit": "tokens", "outcome": "failed"} | {field: value}
    with pytest.raises(ValueError, match=error.replace("(", r"\(")):
        Spent(**fields)


def test_the_file_is_plain_json_a_person_can_read(tmp_path):
    spent.record(tmp_path, Spent("tuneloop-train-abc", 0.25, "hours", "deleted without a model"))
    assert json.loads((tmp_path / spent.FILE).read_text()) == {"spent": [
        {"resource": "tuneloop-train-abc", "quantity": 0.25, "unit": "hours", "outcome": "deleted without a model",
         "upper_bound": False}]}


@given(st.integers(min_value=-10**7, max_value=10**7))
def test_hours_between_two_clocks_is_never_negative(seconds):
    start = datetime(2026, 12, 7, 12, tzinfo=timezone.utc)
    hours = spent.hours_between(start, start + timedelta(seconds=seconds))
    assert hours == max(0.0, seconds / 3600)
