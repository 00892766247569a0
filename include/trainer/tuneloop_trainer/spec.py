"""The training spec: the trainer's only input (a JSON file) plus command-line overrides.

One spec shape for every task (``speech-to-text``, ``chat``): the fields mean the same everywhere, and the few
that only make sense for one task say so in their help and are ignored by the others.

Field names and meanings are a contract with the Airflow side (``tuneloop`` builds the spec, the backend runs
``python -m tuneloop_trainer train --spec spec.json``). A few extra fields with defaults (feature-encoder
freezing, logging cadence, checkpoint retention, gradient clipping) exist for the demo bootstrap and tests; a
spec that omits them behaves as the contract says.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from tuneloop_trainer.arguments import SpecError

TASKS = ("speech-to-text", "chat")
PRECISIONS = ("fp32", "bf16", "fp16")
LABEL_NOISE = ("none", "shuffle")
ALL_LINEAR = "all-linear"  # lora.target_modules shorthand: peft's "every Linear except the output layer"
MIN_MAX_LENGTH = 8

# Fields that do not change the trained weights: excluded from the idempotency hash so that a retry logging to a
# new MLflow run, with a different checkpoint cadence, or reading the output through another path, still finds
# its finished output.
_NOT_HASHED = ("mlflow", "output_uri", "checkpoint_every_steps", "keep_checkpoints", "logging_steps")
# Fields that set the run length: excluded from the resume key so that a run may be extended from a checkpoint.
_LENGTH_FIELDS = ("epochs", "max_steps")


@dataclass
class LoraSpec:
    """LoRA adapters on named Linear layers (speech: the CTC head stays fully trainable)."""

    enabled: bool = field(default=True, metadata={"help": "Train LoRA adapters (true) or all weights (false)."})
    r: int = field(default=8, metadata={"help": "LoRA rank."})
    alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata={"help": "Module names that get adapters (wav2vec2: q_proj k_proj v_proj out_proj, "
                  "intermediate_dense output_dense; Llama-style chat models: q_proj k_proj v_proj o_proj gate_proj "
                  "up_proj down_proj), or all-linear alone for every Linear except the output layer."},
    )

    def __post_init__(self) -> None:
        if self.r < 1:
            raise SpecError(f"lora.r must be >= 1, got {self.r}")
        if self.alpha < 1:
            raise SpecError(f"lora.alpha must be >= 1, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise SpecError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if self.enabled and not self.target_modules:
            raise SpecError("lora.target_modules is empty; name at least one module, e.g. [\"q_proj\", \"v_proj\"]")
        if ALL_LINEAR in self.target_modules and len(self.target_modules) > 1:
            raise SpecError(f"lora.target_modules: {ALL_LINEAR!r} stands alone (it already means every Linear layer "
                            f"but the output layer), got {self.target_modules}")

    def peft_target_modules(self) -> str | list[str]:
        """What peft's ``LoraConfig(target_modules=...)`` takes: the string ``"all-linear"`` or the names."""
        return ALL_LINEAR if self.target_modules == [ALL_LINEAR] else list(self.target_modules)


@dataclass
class MlflowSpec:
    """An existing MLflow run that the trainer logs its parameters and metrics to."""

    tracking_uri: str = field(metadata={"help": "MLflow tracking URI, e.g. http://mlflow:5000 or sqlite:///mlflow.db."})
    run_id: str = field(metadata={"help": "Id of an existing run (created by the orchestrator)."})


@dataclass
class TrainingSpec:
    """Everything one training run needs; validated on construction."""

    task: str = field(metadata={"help": "What is trained.", "choices": TASKS})
    base_model_uri: str = field(metadata={"help": "HF model directory (model + processor) to start from."})
    dataset_uri: str = field(metadata={"help": "Dataset directory with train.jsonl (and eval.jsonl, manifest.json)."})
    output_uri: str = field(metadata={"help": "Directory for model/, metrics.json and checkpoints/."})
    seed: int = field(default=0, metadata={"help": "Seed for shuffling, dropout and label noise."})
    epochs: float = field(default=3.0, metadata={"help": "Passes over the training split (ignored if max_steps)."})
    max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps; overrides epochs when set."})
    batch_size: int = field(default=8, metadata={"help": "Examples (utterances, conversations) per optimizer step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate (AdamW)."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Share of steps with linear warmup."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    lora: LoraSpec = field(default_factory=LoraSpec, metadata={"help": "LoRA settings."})
    precision: str = field(default="fp32", metadata={"help": "Compute precision; fp16 needs a GPU.",
                                                      "choices": PRECISIONS})
    checkpoint_every_steps: int = field(default=50, metadata={"help": "Save a resumable checkpoint every N steps."})
    label_noise: str = field(default="none", metadata={
        "help": "'shuffle' pairs each utterance with another one's transcript, each conversation with another "
                "one's final assistant reply (a deliberately bad candidate).",
        "choices": LABEL_NOISE})
    mlflow: MlflowSpec | None = field(default=None, metadata={"help": "Log params and metrics to this run."})
    max_length: int = field(default=512, metadata={
        "help": "Chat: tokens per training example; longer ones are truncated, keeping the start (speech ignores "
                "it)."})
    freeze_feature_encoder: bool = field(default=True, metadata={
        "help": "Speech: keep the convolutional feature encoder frozen (false only when training from scratch)."})
    logging_steps: int = field(default=10, metadata={"help": "Log a progress line every N steps."})
    keep_checkpoints: int = field(default=2, metadata={"help": "How many of the latest checkpoints to keep."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 disables)."})

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise SpecError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        for name in ("base_model_uri", "dataset_uri", "output_uri"):
            if not getattr(self, name).strip():
                raise SpecError(f"field '{name}' is empty; give a directory path")
        if self.max_steps is None and self.epochs <= 0:
            raise SpecError(f"epochs must be > 0 when max_steps is not set, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise SpecError(f"max_steps must be >= 1 or null, got {self.max_steps}")
        if self.batch_size < 1:
            raise SpecError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise SpecError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise SpecError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0:
            raise SpecError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.precision not in PRECISIONS:
            raise SpecError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.label_noise not in LABEL_NOISE:
            raise SpecError(f"label_noise must be one of {', '.join(LABEL_NOISE)}, got {self.label_noise!r}")
        if self.max_length < MIN_MAX_LENGTH:
            raise SpecError(f"max_length must be >= {MIN_MAX_LENGTH}, got {self.max_length}")
        for name in ("checkpoint_every_steps", "logging_steps", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def spec_hash(self) -> str:
        """Hash of everything that determines the trained weights (idempotent retries compare it)."""
        return _hash({k: v for k, v in self.to_dict().items() if k not in _NOT_HASHED})

    def resume_key(self) -> str:
        """Like :meth:`spec_hash` but ignoring the run length, so a checkpoint can seed a longer run."""
        return _hash({k: v for k, v in self.to_dict().items() if k not in _NOT_HASHED + _LENGTH_FIELDS})


@dataclass
class ModelSize:
    """Architecture of a freshly initialised speech-to-text model (``init-model``)."""

    hidden_size: int = field(default=128, metadata={"help": "Transformer width."})
    num_hidden_layers: int = field(default=4, metadata={"help": "Transformer layers."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads (must divide hidden_size)."})
    intermediate_size: int = field(default=384, metadata={"help": "Feed-forward width."})
    conv_dim: list[int] = field(default_factory=lambda: [48, 48, 64, 64],
                                metadata={"help": "Channels of each feature-encoder convolution."})
    conv_kernel: list[int] = field(default_factory=lambda: [10, 8, 4, 4],
                                   metadata={"help": "Kernel size of each convolution."})
    conv_stride: list[int] = field(default_factory=lambda: [5, 4, 4, 4],
                                   metadata={"help": "Stride of each convolution (product = samples per frame)."})
    feat_extract_activation: str = field(default="relu", metadata={
        "help": "Activation of the feature-encoder convolutions (relu is cheaper than gelu on CPU).",
        "choices": ("relu", "gelu")})
    num_conv_pos_embeddings: int = field(default=32, metadata={"help": "Kernel of the positional convolution."})
    num_conv_pos_embedding_groups: int = field(default=8, metadata={"help": "Groups of the positional convolution."})
    dropout: float = field(default=0.1, metadata={"help": "Hidden, attention and final dropout."})
    mask_time_prob: float = field(default=0.05, metadata={"help": "SpecAugment time-masking probability."})
    mask_time_length: int = field(default=5, metadata={"help": "SpecAugment mask span in frames."})
    seed: int = field(default=0, metadata={"help": "Initialisation seed."})

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise SpecError(f"num_attention_heads ({self.num_attention_heads}) must divide hidden_size "
                            f"({self.hidden_size})")
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise SpecError("conv_dim, conv_kernel and conv_stride need the same number of entries")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise SpecError("num_conv_pos_embedding_groups must divide hidden_size")


@dataclass
class ChatModelSize:
    """Architecture of a freshly initialised causal LM and its tokenizer (``init-model --task chat``)."""

    vocab_size: int = field(default=512, metadata={"help": "BPE vocabulary size, special tokens included."})
    hidden_size: int = field(default=64, metadata={"help": "Transformer width."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Transformer layers."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads (must divide hidden_size)."})
    intermediate_size: int = field(default=128, metadata={"help": "Feed-forward width."})
    max_position_embeddings: int = field(default=256, metadata={"help": "Longest sequence (prompt + reply)."})
    seed: int = field(default=0, metadata={"help": "Initialisation seed."})

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise SpecError(f"num_attention_heads ({self.num_attention_heads}) must divide hidden_size "
                            f"({self.hidden_size})")
        # 256 byte-level symbols plus the 3 special tokens must fit before BPE can merge anything.
        if self.vocab_size < 260:
            raise SpecError(f"vocab_size must be >= 260 (256 bytes + special tokens), got {self.vocab_size}")
        if self.max_position_embeddings < MIN_MAX_LENGTH:
            raise SpecError(f"max_position_embeddings must be >= {MIN_MAX_LENGTH}, got "
                            f"{self.max_position_embeddings}")


@dataclass
class EvaluateArguments:
    """Which model predicts which split(s), and where the predictions go.

    Several ``--data`` files with as many ``--output`` files are predicted in one process: loading torch and the
    model takes longer than predicting a 100-row suite on a CPU. The task (speech-to-text or chat) is read from the
    model directory's config.json, so the same command serves both.
    """

    model_dir: str = field(metadata={"help": "HF model directory with processor/tokenizer (e.g. a run's model/)."})
    data: list[str] = field(metadata={"help": "JSONL split(s) to predict (speech rows: id, audio, text; chat rows: "
                                              "id, messages ending with the reference assistant reply)."})
    output: list[str] = field(metadata={"help": "Predictions JSONL file(s) to write atomically, one per --data."})
    batch_size: int = field(default=16, metadata={"help": "Rows per forward pass (chat: per generate call)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Chat: longest generated reply in tokens."})

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise SpecError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise SpecError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if len(self.data) != len(self.output):
            raise SpecError(f"give one --output per --data: got {len(self.data)} data and {len(self.output)} "
                            "output paths")


def _hash(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
