"""One normalisation rule on both sides: the trainer's labels and the gate's references must agree."""

from __future__ import annotations

import pytest
from tuneloop_trainer.text import normalize_text

from tuneloop.text import normalize_transcript

CASES = ["Turn OFF the lights!", "wi-fi", "Café au lait", "don't  stop\tnow\n", "U.S.A. 2026", "  ", "ümlaut—dash"]


@pytest.mark.parametrize("text", CASES)
def test_airflow_side_and_trainer_agree(text):
    assert normalize_transcript(text) == normalize_text(text)


def test_rule():
    assert normalize_transcript("Turn OFF the lights!") == "turn off the lights"
    assert normalize_transcript("wi-fi") == "wi fi"
    assert normalize_transcript("Café") == "cafe"
    assert normalize_transcript("don't") == "don't"
    assert normalize_transcript(" 42 ") == ""
