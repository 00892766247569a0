"""The per-run figure: written as a real PNG whatever the slices (none, small, failing)."""

from __future__ import annotations

from tuneloop.config import ValidationConfig
from tuneloop.gate import gate
from tuneloop.metrics import score_pair
from tuneloop.plots import gate_figure
from tuneloop.predictions import PairedPrediction

REFERENCE = "turn on the kitchen lights please"


def _pairs() -> list[PairedPrediction]:
    hypotheses = [("turn on the kitchen light", REFERENCE), ("turn the kitchen lights", "turn on the lights please"),
                  (REFERENCE, "turn of the kitchen lights please")]
    return [PairedPrediction(f"u{i}", REFERENCE, base, cand, slices={"condition": "noisy" if i % 3 else "clean"})
            for i in range(60) for base, cand in [hypotheses[i % 3]]]


def test_gate_figure_is_a_png(tmp_path):
    scored = score_pair(_pairs())
    config = ValidationConfig(bootstrap_resamples=200, slice_resamples=200,
                              slices=[{"field": "condition", "min_n": 30}])
    result = gate(scored, config)
    path = gate_figure(scored, result.slices, tmp_path / "gate.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    empty = gate_figure(scored, (), tmp_path / "no-slices.png")
    assert empty.exists() and not list(tmp_path.glob(".*"))
