"""The gate at a glance: one figure per run, saved beside the decision record and logged to MLflow.

Left: each eval utterance's WER under production (x) and the candidate (y); points below the diagonal got better.
Right: each slice value's WER change (candidate - production) with its bootstrap CI; gated values are solid,
report-only ones faded, failures red.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tuneloop.metrics import ScoredPair
from tuneloop.slices import SliceResult


def gate_figure(scored: ScoredPair, slices: tuple[SliceResult, ...], path: Path, *, title: str = "") -> Path:
    """Draw the scatter and the slice bars into ``path`` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    fig, (scatter, bars) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1, 1.3]})
    try:
        _scatter(scatter, scored)
        _slice_bars(bars, slices)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=100)
        tmp.replace(path)
    finally:
        plt.close(fig)
    return path


def _scatter(ax, scored: ScoredPair) -> None:
    base, cand = scored.baseline.utterance_wer, scored.candidate.utterance_wer
    rng = np.random.default_rng(0)  # jitter: many utterances share a WER of 0, 0.5, 1...
    jitter = rng.uniform(-0.01, 0.01, size=(2, base.size))
    colour = np.where(cand < base, "tab:green", np.where(cand > base, "tab:red", "tab:gray"))
    ax.scatter(base + jitter[0], cand + jitter[1], s=12, c=colour, alpha=0.6)
    top = max(1.0, float(base.max(initial=0)), float(cand.max(initial=0))) * 1.05
    ax.plot([0, top], [0, top], color="black", linewidth=0.8)
    ax.set(xlim=(-0.03, top), ylim=(-0.03, top), xlabel="production WER", ylabel="candidate WER",
           title=f"per-utterance WER (n={scored.n}; green better, red worse)")


def _slice_bars(ax, slices: tuple[SliceResult, ...]) -> None:
    if not slices:
        ax.text(0.5, 0.5, "no slices declared (validation.slices)", ha="center", va="center")
        ax.set_axis_off()
        return
    labels = [f"{s.name} (n={s.n})" for s in slices]
    change = np.array([s.wer_increase for s in slices])
    # the bootstrap CI is of the improvement (production - candidate); the bar shows the change, so flip it
    low = np.array([-(s.bootstrap.ci_high) if s.bootstrap else c for s, c in zip(slices, change)])
    high = np.array([-(s.bootstrap.ci_low) if s.bootstrap else c for s, c in zip(slices, change)])
    colours = ["tab:red" if not s.passed else ("tab:blue" if s.gated else "lightsteelblue") for s in slices]
    y = np.arange(len(slices))
    ax.barh(y, change, color=colours, xerr=[change - low, high - change], capsize=3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    level = f"{1 - slices[0].bootstrap.alpha:.0%} CI" if slices[0].bootstrap else "no CI"
    ax.set(xlabel=f"WER change, candidate − production ({level})", title="slices (faded: too small to gate)")
