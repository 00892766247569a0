"""Benchmark chat SFT training throughput: our trainer against a plain ``transformers.Trainer`` on the same work.

Both fine-tune (all weights) the same freshly initialised tiny Llama (``init-model --task chat``: a BPE tokenizer
trained here, hidden 128, 2 layers) on the same synthetic conversations (a system prompt, a counting request, a reply
of 1-20 words), with the same tokenisation and assistant-only labels (``tuneloop_trainer.chat_data``), batch size,
steps, learning rate, linear warmup/decay, gradient clipping and weight decay, in fp32 on the CPU, in this
process, with the same thread count (``train.configure_threads``, ``OMP_WAIT_POLICY=PASSIVE`` as the CLI sets it).

Measured: training samples per second of the optimisation loop, model loading and tokenisation excluded.
- ours: ``train.main(spec)``, the real entry point (rows, tokenizer, model, optimizer, loop, checkpoints, merged
  save); its metrics.json gives ``train_samples / train_runtime_s``: the loop up to the last optimizer step,
  including the checkpoints it writes every 50 steps (the spec default) and a progress line every 10. The whole
  call's wall time is printed too.
- HF Trainer: ``Trainer.train()`` with its default random sampler (and, as a second row, ``group_by_length``, the
  closest it has to our length-grouped batches), saving and logging off; its ``train_samples_per_second``.
Each row's mean training loss is printed as well: the two loops do the same learning.

    python benchmarks/bench_sft.py [--rows 300] [--steps 400] [--batch-size 8] [--repeat 3]

Run by hand (``make bench``), not by the tests. Each side runs ``--repeat`` times, alternating; the best run of each
is reported (the machine may be shared). Goal: ours >= 0.9x the HF Trainer.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the trainer's CLI does, before torch is imported
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include" / "trainer"))

import torch  # noqa: E402

from tuneloop_trainer import train  # noqa: E402
from tuneloop_trainer.chat_data import Example, encode_conversation, pad_batch, read_chat_rows  # noqa: E402
from tuneloop_trainer.chat_modeling import init_chat_model, load_tokenizer  # noqa: E402
from tuneloop_trainer.modeling import quiet_transformers  # noqa: E402
from tuneloop_trainer.spec import ChatModelSize, LoraSpec, TrainingSpec  # noqa: E402

MODEL_SIZE = ChatModelSize(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=256, max_position_embeddings=256, seed=0)
NUMBERS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
           "seventeen eighteen nineteen twenty").split()
WORDS = "red green blue small large quick slow river mountain city music garden window paper stone light".split()
SYSTEM = "You are a concise assistant. Answer the question directly."
LEARNING_RATE, WARMUP_RATIO, MAX_LENGTH, SEED = 3e-3, 0.1, 256, 0


def synthetic_rows(count: int, seed: int = SEED) -> list[dict[str, Any]]:
    """Counting requests with a few filler words: replies of 1-20 words that a tiny model can learn, so batches
    have realistically uneven lengths and a trained model stops at different points."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        target = rng.randint(1, len(NUMBERS))
        filler = " ".join(rng.choices(WORDS, k=rng.randint(1, 6)))
        rows.append({"id": f"r{index}", "domain": "synthetic", "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Count to {NUMBERS[target - 1]}, {filler}."},
            {"role": "assistant", "content": " ".join(NUMBERS[:target]) + "."}]})
    return rows


def build_workspace(root: Path, rows: int) -> tuple[Path, Path]:
    """A dataset directory (train.jsonl, eval.jsonl) and a tiny chat model initialised from its text."""
    data = root / "dataset"
    data.mkdir(parents=True)
    lines = "".join(json.dumps(row) + "\n" for row in synthetic_rows(rows))
    (data / "train.jsonl").write_text(lines)
    (data / "eval.jsonl").write_text(lines)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(m["content"] for row in synthetic_rows(rows) for m in row["messages"]))
    return data, init_chat_model(root / "base", corpus, MODEL_SIZE)


def spec_for(base: Path, data: Path, output: Path, steps: int, batch_size: int) -> TrainingSpec:
    return TrainingSpec(task="chat", base_model_uri=str(base), dataset_uri=str(data), output_uri=str(output),
                        seed=SEED, max_steps=steps, batch_size=batch_size, learning_rate=LEARNING_RATE,
                        warmup_ratio=WARMUP_RATIO, weight_decay=0.0, lora=LoraSpec(enabled=False),
                        max_length=MAX_LENGTH)


def run_ours(base: Path, data: Path, output: Path, steps: int, batch_size: int) -> tuple[float, float, float]:
    """(loop samples/s, mean training loss, wall seconds of the whole train.main call)."""
    started = time.perf_counter()
    metrics = train.main(spec_for(base, data, output, steps, batch_size))
    return metrics["train_samples_per_s"], metrics["train_loss"], time.perf_counter() - started


class ListDataset(torch.utils.data.Dataset):
    """Pre-tokenised examples as the dicts the HF Trainer (and its length-grouped sampler) expects."""

    def __init__(self, examples: list[Example]) -> None:
        self.items = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.items[index]


def run_hf(base: Path, data: Path, output: Path, steps: int, batch_size: int,
           group_by_length: bool) -> tuple[float, float]:
    """(samples/s, mean training loss) of ``Trainer.train()`` on the same examples, padded by the same function."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    tokenizer = load_tokenizer(base)
    rows = read_chat_rows(data / "train.jsonl", training=True)
    examples = [encode_conversation(tokenizer, row["messages"], MAX_LENGTH) for row in rows]
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    args = TrainingArguments(
        output_dir=str(output), per_device_train_batch_size=batch_size, max_steps=steps,
        learning_rate=LEARNING_RATE, warmup_steps=int(WARMUP_RATIO * steps), weight_decay=0.0,
        lr_scheduler_type="linear", max_grad_norm=1.0, seed=SEED, use_cpu=True, report_to="none",
        save_strategy="no", logging_strategy="no", disable_tqdm=True, remove_unused_columns=False,
        dataloader_num_workers=0, dataloader_pin_memory=False,
        train_sampling_strategy="group_by_length" if group_by_length else "random")

    def collate(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return pad_batch([Example(f["input_ids"], f["labels"]) for f in features], tokenizer.pad_token_id)

    trainer = Trainer(model=model, args=args, train_dataset=ListDataset(examples), data_collator=collate)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its summary dict; the table below has it
        metrics = trainer.train().metrics
    return metrics["train_samples_per_second"], metrics["train_loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300, help="training conversations")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=8, help="conversations per step")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; the best is reported")
    args = parser.parse_args()

    quiet_transformers()
    train.configure_threads()  # the same intra-op thread count for both sides
    runs: dict[str, list[tuple[float, float]]] = {"hf": [], "hf_grouped": [], "ours": []}
    wall: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        root = Path(tmp)
        data, base = build_workspace(root, args.rows)
        print(f"{args.rows} conversations, {args.steps} steps x batch {args.batch_size}, full fine-tuning of a "
              f"{MODEL_SIZE.hidden_size}-wide {MODEL_SIZE.num_hidden_layers}-layer Llama, fp32, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
        for attempt in range(args.repeat):
            runs["hf"].append(run_hf(base, data, root / f"hf-{attempt}", args.steps, args.batch_size, False))
            runs["hf_grouped"].append(run_hf(base, data, root / f"hfg-{attempt}", args.steps, args.batch_size, True))
            rate, loss, seconds = run_ours(base, data, root / f"ours-{attempt}", args.steps, args.batch_size)
            runs["ours"].append((rate, loss))
            wall.append(seconds)
    best = {name: max(results) for name, results in runs.items()}  # the fastest run of each (rate, its loss)
    print(f"{'trainer':<44} {'samples/s':>10} {'mean loss':>10} {'ours / this':>12}")
    for name, label in (("hf", "transformers.Trainer (random sampler)"),
                        ("hf_grouped", "transformers.Trainer (group_by_length)"),
                        ("ours", "tuneloop_trainer train (length-grouped)")):
        rate, loss = best[name]
        print(f"{label:<44} {rate:>10.1f} {loss:>10.3f} {best['ours'][0] / rate:>11.2f}x")
    print("  all runs (samples/s): " + "; ".join(f"{name} " + ", ".join(f"{r:.0f}" for r, _ in results)
                                               for name, results in runs.items()))
    print(f"  ours end to end (train.main incl. model load, tokenisation, saving): best {min(wall):.1f} s for "
          f"{args.steps * args.batch_size} samples")


if __name__ == "__main__":
    main()
