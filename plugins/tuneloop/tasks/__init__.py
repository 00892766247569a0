"""What differs between kinds of model, behind one small interface: one module per task.

The pipeline, the store, the export skeleton, the registry, history, approvals and backends are task-neutral;
they ask the model's :class:`Task` (``task_for(config.task)``) for what depends on the kind of model: how a case
row is checked, what identifies a case for deduplication, which cases an export keeps and the rows it writes,
what the trainer is told to train. Airflow-free; importing this package imports no task module (each is loaded
on first use, so a speech installation never imports the chat code and vice versa).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tuneloop.config import DatasetConfig
    from tuneloop.pipeline import PipelineRun
    from tuneloop.intake import CaseDraft, IngestLimits
    from tuneloop.store import ErrorCase

TASK_MODULES = {"speech_to_text": "tuneloop.tasks.speech_to_text", "chat": "tuneloop.tasks.chat"}
TASK_NAMES = tuple(TASK_MODULES)

# A remote input URI (gs://...) -> a local copy; raising AudioError-like errors quarantines the case.
Fetcher = Callable[[str], Path]


@dataclass(frozen=True)
class Note:
    """A case an export left out, why, and (for duplicates and superseded cases) the case kept instead."""

    id: str
    reason: str
    kept_id: str | None = None


@dataclass(frozen=True)
class ExportItem:
    """One case (or replay example) ready for the task-neutral export steps.

    ``key`` identifies the example for deduplication: of items with the same key the most recent wins (speech:
    the audio content; chat: the normalised prompt and response). ``text`` is what the eval split must not see in
    training and what the regression suites' leakage guard matches (speech: the normalised transcript; chat: the
    normalised prompt); ``guard_key`` is the guard's other identity (speech: the audio content hash; chat: the
    normalised prompt's hash). ``row`` is the dataset row. ``files`` are the files it refers to (paths relative
    to the dataset folder; named by content, so the export keeps them in a cache and a retried export does not
    write them again), if any, and ``source`` what the task's ``write_files`` needs to write them: plain JSON
    values, which the export keeps on disk, not in memory, until it writes the files last.
    """

    case: ErrorCase
    key: str
    text: str
    guard_key: str
    row: dict[str, Any]
    files: tuple[str, ...] = ()
    source: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Serving:
    """How a version of this kind of model is served: the MLflow pyfunc definition ("models from code"), its pip
    requirements, its signature (None: none), the ``model_config`` keys it takes at load time with their
    defaults (None: none; a managed model's API credentials are given there, never logged) and the params a server
    passes with each request (None: none; chat: ``with_usage``, so the router records each request's tokens)."""

    code: str
    requirements: list[str]
    signature: Any = None
    model_config: dict[str, Any] | None = None
    request_params: dict[str, Any] | None = None


@dataclass(frozen=True)
class Screened:
    """A task's verdict on the store's cases before the neutral steps: usable items, cases to quarantine (broken
    for good), cases skipped this time (left new: e.g. remote audio that cannot be fetched now) and cases the
    export's filters leave out (left new too: a filter may change)."""

    items: list[ExportItem]
    quarantined: list[Note] = field(default_factory=list)
    skipped: list[Note] = field(default_factory=list)
    filtered: list[Note] = field(default_factory=list)


class Task(Protocol):
    """The per-task part of the loop. Implementations are plain modules' singletons (``TASK``)."""

    name: str  # as in the config's ``task`` field
    trainer_task: str  # the trainer spec's ``task``
    example_noun: str  # what ExportItem.key identifies, for the manifest's reasons ("audio", "example")
    text_noun: str  # what ExportItem.text is ("transcript", "prompt")
    needs_correction: bool  # only corrected cases can train (speech); chat also trains on well-rated outputs

    def parse_case(self, row: Mapping[str, Any], *, base_dir: Path | str, default_source: str, now: datetime,
                   limits: IngestLimits) -> CaseDraft:
        """Check one JSONL row (or Python API call) and return the case to store; raise ``InvalidCase``."""
        ...

    def screen(self, cases: Iterable[ErrorCase], config: DatasetConfig, fetch: Fetcher | None,
               now: datetime | None = None) -> Screened:
        """Turn the store's new cases into export items (validation and the task's filters, as of ``now``)."""
        ...

    def replay(self, config: DatasetConfig) -> tuple[list[ExportItem], list[Note]]:
        """Known-good examples mixed into every train split (``dataset.replay_path``), and those left out."""
        ...

    def write_files(self, source: dict[str, Any], folder: Path, config: DatasetConfig) -> None:
        """Write an export item's ``files`` under ``folder`` from its ``source``, each file atomically (a reader
        never sees half of one); raise ``AudioError`` when the source is no longer usable. Runs in the export's
        worker threads."""
        ...

    def split_stats(self, rows: Iterable[dict[str, Any]], config: DatasetConfig) -> dict[str, Any]:
        """What the manifest reports about one split, in one pass over its rows (a split is read back from its
        file, not held in memory)."""
        ...

    def extra_files(self, rows: dict[str, list[dict[str, Any]]],
                    config: DatasetConfig) -> dict[str, list[dict[str, Any]]]:
        """Other formats of the splits written beside them (file name -> rows), e.g. ``train.alpaca.jsonl``. The
        export calls it batch by batch of a split's rows, so each row must be converted on its own."""
        ...


    # -- judging a candidate (called by PipelineRun's steps, which own the run's files and MLflow) --------------
    def validate(self, run: PipelineRun) -> dict[str, Any]:
        """The gate on the paired eval predictions; writes ``run.paths.gate`` (and churn/plot if it makes them)
        and returns the record: ``passed``, ``verdict``, ``reasons``, ``n``, ``requires_approval``, ..."""
        ...

    def regression(self, run: PipelineRun) -> dict[str, Any]:
        """The regression suites' report: ``passed``, ``results`` (each with ``reasons``), ``reasons``."""
        ...

    def suite_metrics(self, report: dict[str, Any]) -> dict[str, float]:
        """The suites' numbers as flat MLflow metrics."""
        ...

    def serving(self) -> Serving:
        """What a registered version is logged with (code, requirements, signature)."""
        ...

    def request_input(self, value: Any) -> list[Any]:
        """One served request's JSON ``input`` as the pyfunc takes it (a list of one item); ``InvalidCase`` naming
        what is wrong (``tuneloop serve``)."""
        ...

    def post_deploy_check(self, run: PipelineRun, dataset_id: str, deployed_version: str,
                          alias: str = "production") -> dict[str, Any]:
        """Run a smoke set through ``models:/<name>@production``; ``passed`` False makes the run roll back."""
        ...

    def headline(self, gate_result: dict[str, Any]) -> str:
        """The gate's numbers in one line (approval requests, summaries)."""
        ...

    def flat_metrics(self, gate_result: dict[str, Any]) -> dict[str, float]:
        """The gate's headline numbers as flat MLflow metrics and version tags."""
        ...

    def record_sections(self, record: dict[str, Any]) -> list[str]:
        """decision.md's task-specific sections (Markdown lines)."""
        ...

    def scoreboard(self, gate_result: dict[str, Any]) -> dict[str, Any]:
        """The gate's result in the neutral shape the status page and the trend chart read (see
        :func:`scoreboard`): kept with the run in the store, so a page of a hundred versions reads no files."""
        ...


def scoreboard(*, n: int, verdict: str, primary: str, metrics: list[dict[str, Any]], slices: list[dict[str, Any]],
               churn: dict[str, int], reasons: list[str]) -> dict[str, Any]:
    """A gate result in a shape every task shares. ``metrics``: ``{"name", "baseline", "candidate",
    "lower_is_better", "ci_low", "ci_high", "p_value"}`` each, ``primary`` naming the one the gate decided on (the
    trend chart's line); ``slices``: ``{"name", "n", "baseline", "candidate", "gated", "passed"}`` in the primary
    metric; ``churn``: counts of examples by how they changed (the kinds are the task's)."""
    return {"n": n, "verdict": verdict, "primary": primary, "metrics": metrics, "slices": slices, "churn": churn,
            "reasons": reasons}


def task_for(name: str) -> Task:
    """The task called ``name`` (``speech_to_text``, ``chat``); ValueError names the known ones."""
    try:
        module = TASK_MODULES[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASK_NAMES)}") from None
    return importlib.import_module(module).TASK
