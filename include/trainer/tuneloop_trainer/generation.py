"""Batched greedy generation of chat replies: what ``evaluate`` runs for a chat model.

``serving_chat.py`` repeats this logic (MLflow copies that file alone); keep the two in step.

Prompts are the conversation before the reply rendered with the model's chat template and its generation prompt,
tokenised without extra special tokens (the template writes them). A batch is left-padded, so every prompt ends
where generation starts, and decoding stops per row at the first end-of-turn/eos token or after
``max_new_tokens``. Greedy decoding makes a reply independent of the batch it was generated in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from tuneloop_trainer.chat_data import render

# Models narrower than this decode with one CPU thread (see decoding_threads); real chat models are wider
# (SmolLM-135M: 576, Qwen2.5-0.5B: 896), tuneloop's tiny test and demo models narrower (64-256).
SINGLE_THREAD_BELOW_HIDDEN_SIZE = 512


@dataclass(frozen=True)
class Reply:
    """A decoded reply and how many tokens it took, the end-of-turn token not counted (``tokens ==
    max_new_tokens`` means the reply was cut off)."""

    text: str
    tokens: int


def prompt_ids(tokenizer: Any, conversations: list[list[dict[str, Any]]]) -> list[list[int]]:
    """Token ids of each conversation followed by the assistant header, ready for generation."""
    texts = [render(tokenizer, conversation, add_generation_prompt=True) for conversation in conversations]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def stop_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """Every id that ends a reply: the tokenizer's eos, the model's eos id(s), and ``<|im_end|>`` when known."""
    stops = {tokenizer.eos_token_id}
    configured = model.generation_config.eos_token_id
    stops.update(configured if isinstance(configured, list) else [configured])
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        stops.add(im_end)
    return sorted(token for token in stops if token is not None)


def left_pad(prompts: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with each prompt right-aligned."""
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, width - len(prompt):] = 1
    return input_ids, attention_mask


@contextlib.contextmanager
def decoding_threads(model: Any) -> Iterator[None]:
    """One intra-op CPU thread while a small model decodes; the configured count otherwise.

    Decoding runs a few dozen small operations per token one after the other. A small model's matrix products
    (a batch of 16 rows times a 128-wide layer) are too small to gain from a second thread, yet MKL splits them,
    and with the CLI's ``OMP_WAIT_POLICY=PASSIVE`` (needed on a shared machine, see ``cli.prefer_passive_openmp``)
    every split first wakes a sleeping thread: measured on 2 shared cores, 128 replies of a 128-wide 2-layer model
    in batches of 16 took 0.30-0.55 s with 2 threads and 0.21 s with 1 (0.52 s and 0.40 s with another process
    busy), while one-row batches were not split at all, which hid the batching gain (2.5x instead of 4.5x).
    """
    hidden_size = getattr(model.config, "hidden_size", None)
    if model.device.type != "cpu" or hidden_size is None or hidden_size >= SINGLE_THREAD_BELOW_HIDDEN_SIZE:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.inference_mode()
def generate_replies(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int) -> list[Reply]:
    """Greedy replies to one batch of prompts (token ids from :func:`prompt_ids`), in order."""
    stops = stop_token_ids(tokenizer, model)
    input_ids, attention_mask = left_pad(prompts, tokenizer.pad_token_id)
    with decoding_threads(model):
        output = model.generate(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=stops,
                                pad_token_id=tokenizer.pad_token_id)
    replies = []
    for generated in output[:, input_ids.shape[1]:].tolist():
        length = next((i for i, token in enumerate(generated) if token in stops), len(generated))
        replies.append(Reply(tokenizer.decode(generated[:length], skip_special_tokens=True).strip(), length))
    return replies
