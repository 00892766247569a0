"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG states and the data position.

A retried run of the same spec (same resume key) continues from the newest complete checkpoint and, because
batches are a pure function of (seed, epoch) and every RNG is restored, ends with the same weights as an
uninterrupted run. Checkpoints are written to a temporary directory and renamed, so a run killed mid-save
leaves no half checkpoint behind.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

PREFIX = "step-"


@dataclass(frozen=True)
class TrainState:
    """Where training stands; stored as state.json in each checkpoint."""

    resume_key: str
    global_step: int
    epoch: int
    batch_in_epoch: int
    loss_sum: float
    elapsed_s: float


def save_checkpoint(root: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    state: TrainState, keep: int) -> Path:
    """Write ``root/step-N`` atomically and prune all but the newest ``keep`` checkpoints."""
    final = root / f"{PREFIX}{state.global_step}"
    partial = root / f".{PREFIX}{state.global_step}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    trainable = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, str(partial / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    torch.save(scheduler.state_dict(), partial / "scheduler.pt")
    torch.save(_rng_state(), partial / "rng.pt")
    (partial / "state.json").write_text(json.dumps(asdict(state), indent=2))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    for stale in list_checkpoints(root)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_compatible(root: Path, resume_key: str, max_step: int) -> Path | None:
    """Newest checkpoint written by a run with the same resume key and not beyond ``max_step``."""
    for checkpoint in reversed(list_checkpoints(root)):
        state = json.loads((checkpoint / "state.json").read_text())
        if state["resume_key"] != resume_key:
            log.warning("ignoring checkpoint %s: written for a different spec", checkpoint)
        elif state["global_step"] <= max_step:
            return checkpoint
    return None


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any) -> TrainState:
    """Restore everything :func:`save_checkpoint` wrote; returns the saved :class:`TrainState`."""
    weights = load_file(str(path / "trainable.safetensors"))
    missing = [name for name, p in model.named_parameters() if p.requires_grad and name not in weights]
    if missing:
        raise RuntimeError(f"checkpoint {path} lacks trainable weights {missing[:3]}...; delete it and retrain")
    model.load_state_dict(weights, strict=False)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    _set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return TrainState(**json.loads((path / "state.json").read_text()))


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
