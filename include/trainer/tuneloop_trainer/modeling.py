"""Tiny wav2vec2 CTC models: initialise from a config, load for training (LoRA or full), save merged.

Nothing is downloaded: a model either comes from a local ``save_pretrained`` directory or is initialised here
from a small :class:`transformers.Wav2Vec2Config`, saved, and then loaded back through ``from_pretrained`` like any
other checkpoint. The default wav2vec2 convolution stack (7 layers of 512 channels) is far too heavy for CPU, so
:class:`ModelSize` uses a 4-layer, 320x-downsampling stack with tens of channels.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Processor,
)
from transformers.utils import logging as hf_logging

from tuneloop_trainer.arguments import SpecError
from tuneloop_trainer.audio import SAMPLE_RATE
from tuneloop_trainer.spec import LoraSpec, ModelSize
from tuneloop_trainer.text import PAD_TOKEN, UNK_TOKEN, WORD_DELIMITER, vocabulary

log = logging.getLogger(__name__)


def quiet_transformers() -> None:
    """Silence per-load progress bars and notices that drown the step lines in task logs."""
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_warning()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def build_processor() -> Wav2Vec2Processor:
    """Character CTC tokenizer over :func:`vocabulary` plus a per-utterance-normalising feature extractor."""
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        vocab_file.write_text(json.dumps(vocabulary()))
        tokenizer = Wav2Vec2CTCTokenizer(
            str(vocab_file), bos_token=None, eos_token=None, unk_token=UNK_TOKEN, pad_token=PAD_TOKEN,
            word_delimiter_token=WORD_DELIMITER)
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=True, return_attention_mask=True)
    return Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)


def build_config(size: ModelSize) -> Wav2Vec2Config:
    """A wav2vec2 CTC config with layer-norm convolutions and pre-LN transformer (stable from scratch)."""
    vocab = vocabulary()
    return Wav2Vec2Config(
        vocab_size=len(vocab), pad_token_id=vocab[PAD_TOKEN], bos_token_id=None, eos_token_id=None,
        hidden_size=size.hidden_size, num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads, intermediate_size=size.intermediate_size,
        conv_dim=list(size.conv_dim), conv_kernel=list(size.conv_kernel), conv_stride=list(size.conv_stride),
        num_conv_pos_embeddings=size.num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=size.num_conv_pos_embedding_groups,
        feat_extract_norm="layer", feat_extract_activation=size.feat_extract_activation, do_stable_layer_norm=True,
        conv_bias=True,
        hidden_dropout=size.dropout, attention_dropout=size.dropout, activation_dropout=0.0,
        feat_proj_dropout=size.dropout, final_dropout=size.dropout, layerdrop=0.0,
        apply_spec_augment=size.mask_time_prob > 0, mask_time_prob=size.mask_time_prob,
        mask_time_length=size.mask_time_length, mask_time_min_masks=1, mask_feature_prob=0.0,
        ctc_loss_reduction="mean", ctc_zero_infinity=True, use_weighted_layer_sum=False,
        num_codevectors_per_group=2, num_codevector_groups=2, codevector_dim=16, proj_codevector_dim=16,
    )


def init_model(output_dir: str | Path, size: ModelSize) -> Path:
    """Write a randomly initialised model + processor with ``save_pretrained`` (safetensors)."""
    torch.manual_seed(size.seed)
    model = Wav2Vec2ForCTC(build_config(size))
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    build_processor().save_pretrained(output)
    log.info("initialised %s parameters in %s", f"{count_parameters(model)[1]:,}", output)
    return output


def load_processor(model_dir: str | Path) -> Wav2Vec2Processor:
    return Wav2Vec2Processor.from_pretrained(str(model_dir))


def load_model(model_dir: str | Path) -> Wav2Vec2ForCTC:
    """Load a plain Wav2Vec2ForCTC (e.g. a merged output) for inference."""
    return Wav2Vec2ForCTC.from_pretrained(str(model_dir))


def check_model_dir(model_dir: Path, what: str) -> None:
    if not (model_dir / "config.json").is_file():
        raise SpecError(f"{what} {model_dir} is not a save_pretrained model directory (no config.json)")
    if not (model_dir / "tokenizer_config.json").is_file() and not (model_dir / "vocab.json").is_file():
        raise SpecError(f"{what} {model_dir} has no processor or tokenizer; save it next to the model "
                        "(save_pretrained)")


def prepare_for_training(model_dir: str | Path, lora: LoraSpec, freeze_feature_encoder: bool) -> torch.nn.Module:
    """Load the base model and make the right parameters trainable.

    LoRA: adapters on ``lora.target_modules``, the CTC head (``lm_head``) fully trainable via
    ``modules_to_save``. Full: every weight except (by default) the convolutional feature encoder.
    """
    model = Wav2Vec2ForCTC.from_pretrained(str(model_dir), layerdrop=0.0)
    if freeze_feature_encoder:
        model.freeze_feature_encoder()
    if not lora.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.peft_target_modules(), modules_to_save=["lm_head"], bias="none")
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise SpecError(f"lora.target_modules {lora.target_modules}: {error}") from error


def merged_model(model: torch.nn.Module) -> Wav2Vec2ForCTC:
    """Fold LoRA adapters into the base weights so serving loads a plain Wav2Vec2ForCTC."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def describe(model: Any) -> str:
    trainable, total = count_parameters(model)
    return f"{trainable:,} trainable of {total:,} parameters"
