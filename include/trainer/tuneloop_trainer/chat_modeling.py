"""Causal language models for the chat task: initialise a tiny one offline, load for training (LoRA or full).

Nothing is downloaded. ``init-model --task chat`` trains a byte-level BPE tokenizer on a local text file, gives it
a ChatML chat template (``<|im_start|>role\\n...<|im_end|>``, the assistant part inside ``{% generation %}``
markers), and writes a randomly initialised :class:`transformers.LlamaConfig` model next to it with
``save_pretrained``: from then on it is loaded like any other checkpoint, and a real base model (any
``*ForCausalLM`` directory with a tokenizer that has a chat template) takes its place without code changes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

from tuneloop_trainer.arguments import SpecError
from tuneloop_trainer.modeling import count_parameters
from tuneloop_trainer.spec import ChatModelSize, LoraSpec

log = logging.getLogger(__name__)

PAD_TOKEN, TURN_START, TURN_END = "<|pad|>", "<|im_start|>", "<|im_end|>"
# ChatML. The assistant reply and its end-of-turn token sit inside {% generation %} markers so that
# apply_chat_template(return_assistant_tokens_mask=True) works too; the trainer itself does not need them.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}"
    "{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}{% else %}{{ m['content'] }}<|im_end|>{% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text encodes, nothing is unknown) with the ChatML special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD_TOKEN, TURN_START, TURN_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # The template's role names are in every conversation: let them become single tokens.
    tokenizer.train_from_iterator([*texts, "system", "user", "assistant"], trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=TURN_END, pad_token=PAD_TOKEN)
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_config(size: ChatModelSize, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """A small Llama: RMSNorm, rotary positions, SwiGLU; no bos token (the template starts every turn)."""
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=size.hidden_size, intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers, num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_attention_heads, max_position_embeddings=size.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        tie_word_embeddings=False,
    )


def read_corpus(path: str | Path) -> list[str]:
    """The non-empty lines of a text file: what the tokenizer learns its merges from."""
    file = Path(path)
    if not file.is_file():
        raise SpecError(f"--corpus {file} does not exist")
    lines = [line for line in file.read_text().splitlines() if line.strip()]
    if not lines:
        raise SpecError(f"--corpus {file} has no text; give a file with one or more lines of text")
    return lines


def init_chat_model(output_dir: str | Path, corpus: str | Path, size: ChatModelSize) -> Path:
    """Write a tokenizer trained on ``corpus`` and a randomly initialised causal LM with ``save_pretrained``."""
    tokenizer = train_tokenizer(read_corpus(corpus), size.vocab_size)
    torch.manual_seed(size.seed)
    model = AutoModelForCausalLM.from_config(build_config(size, tokenizer))
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    log.info("initialised %s parameters and a %d-token tokenizer in %s", f"{count_parameters(model)[1]:,}",
             len(tokenizer), output)
    return output


def load_tokenizer(model_dir: str | Path) -> Any:
    """The model's fast tokenizer; it must carry a chat template. Without a pad token, the eos token pads (padded
    positions are masked out of attention and loss, so which id fills them does not matter)."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if not tokenizer.is_fast:
        raise SpecError(f"the tokenizer in {model_dir} is a slow (Python) tokenizer; save a fast one "
                        "(tokenizer.json): assistant replies are located through its character offsets")
    if not tokenizer.chat_template:
        raise SpecError(f"the tokenizer in {model_dir} has no chat template; save one with the tokenizer "
                        "(tokenizer.chat_template = ...; tokenizer.save_pretrained(dir))")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_dir: str | Path) -> torch.nn.Module:
    """A plain causal LM (e.g. a merged training output) for generation."""
    return AutoModelForCausalLM.from_pretrained(str(model_dir))


def prepare_for_training(model_dir: str | Path, lora: LoraSpec) -> torch.nn.Module:
    """Load the base model in fp32 (mixed precision is autocast's job) and make the right parameters trainable.

    LoRA: adapters on ``lora.target_modules`` (``all-linear``: every Linear but the output layer), everything else
    frozen. Full: every weight.
    """
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if not lora.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.peft_target_modules(), bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise SpecError(f"lora.target_modules {lora.target_modules}: {error}") from error
