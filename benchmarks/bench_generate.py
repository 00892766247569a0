"""Benchmark chat evaluation throughput: ``evaluate``'s batched generation against a naive per-example loop.

The model is the tiny Llama of ``bench_sft.py`` (``init-model --task chat``, hidden 128, 2 layers), first
fine-tuned briefly with our trainer on the same synthetic conversations so that replies end with the end-of-turn
token at different lengths, as a real model's do (an untrained model never stops, which would flatter batching).
Both sides then reply greedily to the same prompts (the eval rows' ``messages[:-1]``) with the same
``max_new_tokens`` and stop tokens, in this process, fp32 on the CPU:
- ours: ``chat_task.reply_rows``, the code ``evaluate`` runs for a chat model: prompts tokenised once, batches of
  similar prompt length, left padding, one ``model.generate`` per batch;
- naive: one ``model.generate`` per example, no padding.
Measured: examples per second of that call, model loading and file writing excluded; the replies of both sides are
compared (greedy decoding: they should be identical).

    python benchmarks/bench_generate.py [--rows 128] [--batch-size 16] [--max-new-tokens 32] [--repeat 2]

Run by hand (``make bench``), not by the tests. Each side runs ``--repeat`` times, alternating; the best run of each
is reported (the machine may be shared). Goal: ours >= 3x the naive loop.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the trainer's CLI does, before torch is imported
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include" / "trainer"))

import torch  # noqa: E402
from bench_sft import build_workspace, spec_for  # noqa: E402

from tuneloop_trainer import train  # noqa: E402
from tuneloop_trainer.chat_data import read_chat_rows  # noqa: E402
from tuneloop_trainer.chat_modeling import load_model, load_tokenizer  # noqa: E402
from tuneloop_trainer.chat_task import reply_rows  # noqa: E402
from tuneloop_trainer.generation import Reply, generate_replies, prompt_ids  # noqa: E402
from tuneloop_trainer.modeling import quiet_transformers  # noqa: E402


def naive_replies(rows: list[dict[str, Any]], model: Any, tokenizer: Any, max_new_tokens: int) -> list[Reply]:
    """One ``generate`` call per example: what evaluation looks like without batching."""
    prompts = prompt_ids(tokenizer, [row["messages"][:-1] for row in rows])
    return [generate_replies(model, tokenizer, [prompt], max_new_tokens)[0] for prompt in prompts]


def timed(fn: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128, help="evaluation conversations")
    parser.add_argument("--batch-size", type=int, default=16, help="conversations per generate call (ours)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="longest reply in tokens")
    parser.add_argument("--train-steps", type=int, default=300, help="fine-tuning steps before measuring")
    parser.add_argument("--repeat", type=int, default=2, help="runs per side; the best is reported")
    args = parser.parse_args()

    quiet_transformers()
    train.configure_threads()
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        root = Path(tmp)
        data, base = build_workspace(root, max(args.rows, 300))
        train.main(spec_for(base, data, root / "run", args.train_steps, 8))
        model_dir = root / "run" / "model"
        model, tokenizer = load_model(model_dir).eval(), load_tokenizer(model_dir)
        rows = read_chat_rows(data / "eval.jsonl", training=False)[: args.rows]
        print(f"{len(rows)} conversations, max_new_tokens {args.max_new_tokens}, batch {args.batch_size}, fp32, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
        ours_s, naive_s = [], []
        for _ in range(args.repeat):
            naive, seconds = timed(lambda: naive_replies(rows, model, tokenizer, args.max_new_tokens))
            naive_s.append(seconds)
            ours, seconds = timed(lambda: reply_rows(rows, model, tokenizer, args.batch_size, args.max_new_tokens))
            ours_s.append(seconds)
    same = sum(o["hypothesis"] == n.text and o["generated_tokens"] == n.tokens
               for o, n in zip(ours, naive, strict=True))
    tokens = [n.tokens for n in naive]
    exact = sum(o["hypothesis"] == o["reference"] for o in ours)
    best_ours, best_naive = len(rows) / min(ours_s), len(rows) / min(naive_s)
    print(f"{'generation':<44} {'examples/s':>10} {'ours / this':>12}")
    print(f"{'naive: model.generate per example':<44} {best_naive:>10.1f} {best_ours / best_naive:>11.2f}x")
    print(f"{'evaluate: batched, length-grouped, left-padded':<44} {best_ours:>10.1f} {1.0:>11.2f}x")
    print(f"  identical replies: {same}/{len(rows)}; reply length {min(tokens)}-{max(tokens)} tokens "
          f"(mean {sum(tokens) / len(tokens):.1f}); exact match with the reference {exact}/{len(rows)}")
    print("  all runs (s): naive " + ", ".join(f"{s:.2f}" for s in naive_s) + "; ours "
          + ", ".join(f"{s:.2f}" for s in ours_s))


if __name__ == "__main__":
    main()
