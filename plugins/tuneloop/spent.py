"""What a run's training spent without making a model: jobs that failed or were cancelled, pods that failed,
trainer VMs.

A run's training cost is what its finished training reported (``training/metrics.json``) plus what every
attempt that ended without a model consumed, so a failed or cancelled run counts against the budget like any
other. The task that sees such an attempt end records it here (``training/spent.json``), once per resource (the
job, the pod, the VM: a retry that sees the same end again overwrites its entry):

- a managed job that failed or was cancelled: the tokens its provider billed, else at most the run's estimate (an
  upper bound, never zero, so budgets stay checkable and err on the safe side);
- a trainer pod that failed: its hours from creation to the end the operator saw;
- a trainer VM: its hours from creation to deletion (Compute Engine bills a VM until it is deleted).

Quantities are recorded, not dollars: they are priced when read, with the rest of the run's costs
(:meth:`tuneloop.pipeline.PipelineRun.training_cost`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from tuneloop import storage
from tuneloop.storage import StoragePath

FILE = "spent.json"
UNITS = ("tokens", "hours")


@dataclass(frozen=True)
class Spent:
    """One attempt that ended without a model. ``upper_bound``: the provider reported nothing, the quantity is
    the run's estimate."""

    resource: str
    quantity: float
    unit: str
    outcome: str
    upper_bound: bool = False

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unit: {self.unit!r} is not one of {', '.join(UNITS)}")
        if not self.quantity >= 0:  # also refuses NaN
            raise ValueError(f"quantity: {self.quantity!r} must be a number >= 0")


def record(training: StoragePath, spent: Spent) -> None:
    """Add ``spent`` to the run's ``training/spent.json`` (replacing an entry for the same resource)."""
    entries = {entry.resource: entry for entry in read(training)} | {spent.resource: spent}
    storage.write_json(training / FILE, {"spent": [asdict(entry) for entry in entries.values()]})


def read(training: StoragePath) -> list[Spent]:
    """The run's recorded attempts that ended without a model, in the order they were first recorded."""
    path = training / FILE
    if not path.exists():
        return []
    return [Spent(**entry) for entry in storage.read_json(path)["spent"]]


def machine_hours(name: str, created: datetime, now: datetime, outcome: str) -> Spent:
    """A pod's or VM's hours from its creation to ``now``, keyed by its name and creation time (a retry's pod or
    VM has the same name, and is another one)."""
    return Spent(f"{name} (created {created.isoformat(timespec='seconds')})", hours_between(created, now), "hours",
                 outcome)


def hours_between(start: datetime, end: datetime) -> float:
    """Hours from ``start`` to ``end`` (both aware), never negative (clocks of two machines may disagree)."""
    return max(0.0, (end - start).total_seconds() / 3600)
