"""Demo settings chosen by measurement on the 2-core demo machine, and the numbers measured with them.

The lead copies :data:`DEMO_FINETUNE` into the demo config (``include/config``); the baseline bootstrap uses
:data:`BASELINE_SIZE` and :data:`BASELINE_TRAINING`. Importing this module does not import torch.
"""

from __future__ import annotations

from typing import Any

from tuneloop_demo.world import WorldConfig
from tuneloop_trainer.spec import ModelSize

BASELINE_SEED = 0

# 788k parameters, 3.2 MB as float32 safetensors.
BASELINE_SIZE = ModelSize(
    hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=384,
    conv_dim=[48, 48, 64, 64], conv_kernel=[10, 8, 4, 4], conv_stride=[5, 4, 4, 4],
    feat_extract_activation="relu", dropout=0.1, mask_time_prob=0.05, mask_time_length=5, seed=BASELINE_SEED,
)

BASELINE_TRAINING: dict[str, Any] = {
    "max_steps": 3000, "batch_size": 16, "learning_rate": 2e-3, "warmup_ratio": 0.08, "weight_decay": 0.01,
    "checkpoint_every_steps": 200, "logging_steps": 50,
}

DEMO_SEED = 0
# The demo world: the shipped baseline makes the 3000 baseline-training utterances unnecessary.
DEMO_WORLD = WorldConfig(splits=("seen_eval", "production", "heldout", "replay"))
# Seen-voice rows mixed into the fine-tuning train split (the export's replay of older data): without them,
# fine-tuning on unseen voices and noise erodes the seen voices (measured: seen-voice WER 0.022 -> 0.095).
DEMO_REPLAY = 300
# Share of error cases (the most recent) that the measurement holds out as the dataset's eval split.
EXPORT_EVAL_SHARE = 0.15

_LORA = {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
_COMMON = {"epochs": 5, "batch_size": 8, "warmup_ratio": 0.1, "weight_decay": 0.0, "checkpoint_every_steps": 50}

# Fine-tuning variants measured by `python -m tuneloop_demo measure` (numbers in MEASURED below).
VARIANTS: dict[str, dict[str, Any]] = {
    "full": {**_COMMON, "learning_rate": 5e-4, "lora": {**_LORA, "enabled": False}},
    "lora": {**_COMMON, "learning_rate": 3e-3, "lora": _LORA},
    "lora-all": {**_COMMON, "learning_rate": 3e-3, "lora": {**_LORA, "target_modules": [
        "q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense", "output_dense"]}},
}
# The deliberately bad candidate: the recommended settings with every transcript moved to another utterance.
VARIANTS["shuffle"] = {**VARIANTS["full"], "label_noise": "shuffle"}

# Recommended demo training settings (spec fields): full fine-tuning, feature encoder frozen.
DEMO_FINETUNE: dict[str, Any] = VARIANTS["full"]
