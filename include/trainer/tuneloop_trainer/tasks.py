"""What differs between tasks, behind one small interface; the rest of the trainer is shared.

``train`` (the loop, checkpoints, resume, metrics, publishing) and ``evaluate`` (staging, atomic outputs) work for
every task: they look the task up once -- by the spec's ``task`` field, or, for evaluation, by the architecture in
the model directory's config.json -- and call its :class:`Task` methods for everything task-specific.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import torch

from tuneloop_trainer.arguments import SpecError
from tuneloop_trainer.chat_task import ChatTask
from tuneloop_trainer.spec import TASKS, EvaluateArguments, TrainingSpec
from tuneloop_trainer.speech_task import SpeechToTextTask


class Task(Protocol):
    """One task's data, model and prediction code."""

    name: str
    architecture_suffix: str  # config.json "architectures" entries of this task's models end with it

    def read_rows(self, path: Path, training: bool) -> list[dict[str, Any]]:
        """Read and validate a local JSONL split (bad rows fail here, before any model loads)."""

    def shuffle_labels(self, rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
        """``label_noise=shuffle``: give each row another row's target."""

    def load_processor(self, model_dir: Path) -> Any:
        """The processor or tokenizer saved with the model."""

    def prepare_examples(self, rows: list[dict[str, Any]], processor: Any, spec: TrainingSpec) -> list[Any]:
        """What a batch is made of, computed once before training (e.g. token ids and labels)."""

    def example_length(self, example: Any) -> float:
        """Size of an example, to batch similar ones together (less padding)."""

    def load_model(self, model_dir: Path, spec: TrainingSpec) -> torch.nn.Module:
        """The base model with the spec's trainable parameters (LoRA adapters or all weights)."""

    def make_batch(self, examples: list[Any], processor: Any) -> dict[str, torch.Tensor]:
        """Padded model inputs, labels included, on the CPU."""

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of one batch (already on the model's device)."""

    def load_inference_model(self, model_dir: Path) -> torch.nn.Module:
        """A plain (merged) model for evaluation, in eval mode."""

    def predict_rows(self, rows: list[dict[str, Any]], model: torch.nn.Module, processor: Any,
                     args: EvaluateArguments) -> list[dict[str, Any]]:
        """One prediction row per input row, in input order."""


_REGISTRY: dict[str, Task] = {"speech-to-text": SpeechToTextTask(), "chat": ChatTask()}


def get_task(name: str) -> Task:
    """The task a spec names (``spec.TASKS``)."""
    if name not in _REGISTRY:
        raise SpecError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
    return _REGISTRY[name]


def task_for_model_dir(model_dir: Path) -> Task:
    """The task of a saved model, from the architecture in its config.json (``*ForCausalLM``: chat,
    ``*ForCTC``: speech-to-text)."""
    config = json.loads((model_dir / "config.json").read_text())
    architectures = config.get("architectures") or []
    for name in TASKS:
        task = get_task(name)
        if any(architecture.endswith(task.architecture_suffix) for architecture in architectures):
            return task
    raise SpecError(f"model_dir {model_dir}: architectures {architectures} in config.json are neither a *ForCTC "
                    "(speech-to-text) nor a *ForCausalLM (chat) model")
