"""The chat demo's settings, chosen by measurement on the 2-core demo machine, and the numbers measured with them.

:data:`PRODUCTION_SIZE` and :data:`PRODUCTION_TRAINING` build production version 1 at demo time (a tiny Llama and
its BPE tokenizer, both made here by ``python -m tuneloop_trainer init-model --task chat``, then trained on the
world's ``nicknames of NAME`` questions). The fine-tuning settings are in ``include/demo/tuneloop-demo-llm.yaml``
(``training``), mirrored in :data:`DEMO_FINETUNE` for ``python -m tuneloop_demo measure-llm``. Importing this
module does not import torch.
"""

from __future__ import annotations

from typing import Any

from tuneloop_demo.nickname_world import NicknameWorldConfig
from tuneloop_trainer.spec import ChatModelSize

DEMO_SEED = 0
DEMO_WORLD = NicknameWorldConfig()

# 459k parameters (1.8 MB as float32), a 512-token byte-level BPE vocabulary trained on the world's text.
PRODUCTION_SIZE = ChatModelSize(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=256, max_position_embeddings=256, seed=DEMO_SEED)

# Full training from random weights: 2000 steps of 16 conversations = 80 passes over the 400 questions; fewer
# leave facts unlearned (measured: 400 steps, exact match 0.02 on the trained questions).
PRODUCTION_TRAINING: dict[str, Any] = {
    "max_steps": 2000, "batch_size": 16, "learning_rate": 3e-3, "warmup_ratio": 0.05, "weight_decay": 0.0,
    "lora": {"enabled": False}, "checkpoint_every_steps": 500, "logging_steps": 250,
}

# Fine-tuning (the demo config's training section): LoRA, the product's default method, on every Linear layer
# but the output layer, at a rate for a model this small. Measured (MEASURED): as many held-out fixes as full
# fine-tuning, and nothing of the regression suite forgotten (full fine-tuning: up to 2 of 100). The new
# phrasings are a light change on top of what production knows.
_FINETUNE_COMMON: dict[str, Any] = {"epochs": 5, "batch_size": 8, "warmup_ratio": 0.1, "weight_decay": 0.0}
DEMO_FINETUNE: dict[str, Any] = {
    **_FINETUNE_COMMON, "learning_rate": 3e-3,
    "lora": {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["all-linear"]},
}
FULL_FINETUNE: dict[str, Any] = {**_FINETUNE_COMMON, "learning_rate": 1e-3, "lora": {"enabled": False}}
# Older, known-good conversations (production's own training questions) mixed into the train split.
DEMO_REPLAY = 100
EXPORT_EVAL_SHARE = 0.2

# `python -m tuneloop_demo measure-llm --work-dir /tmp/mllm3 --variants demo shuffle full lora-qv --seeds 0 1 2` on
# the shared 2-core demo machine, world seed 0. Production version 1: exact match 1.00 on its 400 training
# questions; traffic: 500 requests, 252 answered wrongly (trained phrasing 100/100 right, users' phrasings 148/400);
# 202 train cases (+100 replayed training questions), the 50 newest held out as eval, asking about names no train
# case asks about. Per variant and seed: (exact match on the 50 held-out cases, fixed, newly broken, one-sided
# McNemar p, exact match on the 100-question regression suite, never replayed). Production scores 0.00 on the
# held-out cases (each is one of its mistakes) and 1.00 on the suite.
MEASURED: dict[str, Any] = {
    "production_build_s": "55-90 (tokenizer + init ~10 s; 2000 steps at 0.02-0.03 s/step)",
    # exact match on its training questions by run length (the same settings on another seeded draw of 400 names)
    "production_steps": {"400": 0.02, "1000": 0.76, "1400": 1.00, "2000": 1.00},
    "variants": {
        "demo (LoRA all-linear, lr 3e-3)": {"train_wall_s": "9-10 (190 steps)", "seed0": (0.70, 35, 0, 2.9e-11, 1.00),
                                            "seed1": (0.66, 33, 0, 1.2e-10, 1.00),
                                            "seed2": (0.62, 31, 0, 4.7e-10, 1.00)},
        "shuffle (demo settings, shuffled replies)": {"seed0": (0.00, 0, 0, 1.0, 0.26),
                                                      "seed1": (0.00, 0, 0, 1.0, 0.18),
                                                      "seed2": (0.02, 1, 0, 0.5, 0.34)},
        "full (full fine-tuning, lr 1e-3)": {"train_wall_s": "7 (190 steps)", "seed0": (0.60, 30, 0, 9.3e-10, 0.98),
                                             "seed1": (0.68, 34, 0, 5.8e-11, 0.98),
                                             "seed2": (0.70, 35, 0, 2.9e-11, 1.00)},
        "lora-qv (LoRA q_proj v_proj, 8,192 parameters)": {"seed0": (0.64, 32, 0, 2.3e-10, 1.00),
                                                           "seed1": (0.66, 33, 0, 1.2e-10, 0.99),
                                                           "seed2": (0.56, 28, 0, 3.7e-9, 1.00)},
    },
}
