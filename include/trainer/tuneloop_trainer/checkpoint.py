"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG states and the data position.

A retried run of the same spec (same resume key) continues from the newest complete checkpoint and, because
batches are a pure function of (seed, epoch) and every RNG is restored, ends with the same weights as an
uninterrupted run. Checkpoints are written to a temporary directory and renamed, so a run killed mid-save
leaves no half checkpoint behind.

With a remote output the bucket holds the checkpoints a new machine resumes from: :func:`push_remote` uploads
each one with ``state.json`` last (a checkpoint without it is incomplete and ignored) and mirrors the pruning;
:func:`pull_remote` makes the local folder mirror the complete ones before resuming.
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

from tuneloop_trainer import staging

log = logging.getLogger(__name__)

PREFIX = "step-"
STATE_FILE = "state.json"  # written last: its presence marks a checkpoint complete, locally and remotely


@dataclass(frozen=True)
class TrainState:
    """Where training stands; stored as state.json in each checkpoint."""

    resume_key: str
    global_step: int
    epoch: int
    batch_in_epoch: int
    loss_sum: float
    elapsed_s: float
    samples: int = 0  # examples trained on so far (a checkpoint from before this field reads as 0)


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
    (partial / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    for stale in list_checkpoints(root)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def pull_remote(remote_root: str, local_root: Path) -> None:
    """Make ``local_root`` hold the complete checkpoints under ``remote_root`` and no others: the bucket is the
    source of truth, so a new machine resumes where the last one stopped and an old disk cannot outvote it."""
    remote: dict[str, set[str]] = {}
    for relative in staging.list_files(remote_root):
        name, _, file = relative.partition("/")
        remote.setdefault(name, set()).add(file)
    complete = {name: files for name, files in remote.items() if name.startswith(PREFIX) and STATE_FILE in files}
    for stale in list_checkpoints(local_root):
        if stale.name not in complete:
            shutil.rmtree(stale)
    for name, files in sorted(complete.items()):
        if not (local_root / name / STATE_FILE).is_file():
            local_root.mkdir(parents=True, exist_ok=True)
            staging.download(staging.join(remote_root, name),
                             {staging.join(remote_root, name, file): file for file in files}, local_root / name)


def push_remote(saved: Path, remote_root: str) -> None:
    """Upload the checkpoint just saved (``state.json`` last) and delete the remote checkpoints pruned locally."""
    staging.upload_dir(saved, staging.join(remote_root, saved.name), last=(STATE_FILE,))
    kept = {path.name for path in list_checkpoints(saved.parent)}
    remote = {relative.partition("/")[0] for relative in staging.list_files(remote_root)}
    for name in sorted(remote - kept):
        if name.startswith(PREFIX):
            staging.remove(staging.join(remote_root, name))


def latest_compatible(root: Path, resume_key: str, max_step: int) -> Path | None:
    """Newest checkpoint written by a run with the same resume key and not beyond ``max_step``."""
    for checkpoint in reversed(list_checkpoints(root)):
        state = json.loads((checkpoint / STATE_FILE).read_text())
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
    return TrainState(**json.loads((path / STATE_FILE).read_text()))


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
