"""Benchmark the gate at production scale: 100,000 paired utterances, 10,000 bootstrap resamples.

Synthetic data: references of 3-30 words from a 5,000-word vocabulary; the baseline gets about 15% of words
wrong, the candidate fixes about a third of them and makes a few new errors; three declared slices (20 voices,
clean/noisy, duration buckets) so the gate does all its work. Prints wall time, CPU time and peak
traced memory (tracemalloc sees numpy's buffers; the data themselves are not counted) for each step:

    python benchmarks/bench_gate.py [--n 100000] [--resamples 10000] [--repeat 3]

Run by ``make bench``, not by the tests. Timings are the best of ``--repeat`` runs (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

import numpy as np

from tuneloop.config import ValidationConfig
from tuneloop.gate import gate
from tuneloop.metrics import score_pair
from tuneloop.predictions import PairedPrediction
from tuneloop.stats import paired_bootstrap


def _word(i: int) -> str:
    """Distinct lowercase words of 2-6 letters (digits would vanish in normalisation)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    out = ""
    i += 26
    while i:
        i, r = divmod(i, 26)
        out += letters[r]
    return out + "aeiou"[i % 5] * (len(out) % 3)


def synthetic_pairs(n: int, seed: int) -> list[PairedPrediction]:
    """The baseline gets about 15% of words wrong; the candidate fixes about a third of those errors and makes
    about 1% new ones, so most utterances improve, some get worse -- the shape of a real fine-tune."""
    rng = np.random.default_rng(seed)
    vocab = [_word(i) for i in range(5000)]

    pairs = []
    for i in range(n):
        words = [vocab[j] for j in rng.integers(0, 5000, rng.integers(3, 31))]
        base, cand = [], []
        for word in words:
            r = rng.random()
            wrong = r < 0.15
            fixed = wrong and rng.random() < 0.35
            new_error = not wrong and rng.random() < 0.01
            wrong_word = vocab[rng.integers(5000)]
            for out, is_wrong in ((base, wrong), (cand, (wrong and not fixed) or new_error)):
                if not is_wrong:
                    out.append(word)
                elif r < 0.10:
                    out.append(wrong_word)  # substitution
                elif r < 0.14:
                    pass  # deletion
                else:
                    out.extend([word, wrong_word])  # insertion
        slices = {"voice": f"v{i % 20}", "condition": "noisy" if i % 4 == 0 else "clean", "duration_s": len(words) / 3}
        pairs.append(PairedPrediction(f"u{i}", " ".join(words), " ".join(base), " ".join(cand), slices=slices))
    return pairs


def measure(label: str, fn: Callable[[], Any], repeat: int, memory: bool = True) -> Any:
    """Best wall/CPU time of ``repeat`` plain runs, then one run under tracemalloc for the peak (it slows Python)."""
    best_wall = best_cpu = float("inf")
    result = None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    peak = "      n/a"
    if memory:
        tracemalloc.start()
        fn()
        peak = f"{tracemalloc.get_traced_memory()[1] / 2**20:7.1f} MiB"
        tracemalloc.stop()
    print(f"{label:<44} wall {best_wall:6.2f} s   cpu {best_cpu:6.2f} s   peak {peak}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="paired utterances")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples")
    parser.add_argument("--repeat", type=int, default=3, help="runs per step; the best is reported")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"{args.n:,} utterances, {args.resamples:,} resamples, {os.cpu_count()} CPUs, numpy {np.__version__}")
    pairs = synthetic_pairs(args.n, args.seed)
    config = ValidationConfig(bootstrap_resamples=args.resamples, bootstrap_seed=args.seed, slices=[
        {"field": "voice"}, {"field": "condition"}, {"field": "duration_s", "buckets": [2, 5]}])
    scored = measure("score_pair (normalise + edit distances)", lambda: score_pair(pairs), args.repeat, memory=False)
    base, cand = scored.baseline, scored.candidate
    print(f"  baseline WER {base.corpus_wer:.4f} CER {base.corpus_cer:.4f}; "
          f"candidate WER {cand.corpus_wer:.4f} CER {cand.corpus_cer:.4f}")
    for workers in (1, None):
        name = "default threads" if workers is None else "1 thread"
        for metric, b, c, lengths in (
            ("WER", base.word_errors, cand.word_errors, base.reference_words),
            ("CER", base.char_errors, cand.char_errors, base.reference_chars),
        ):
            def run(b=b, c=c, lengths=lengths, workers=workers):
                return paired_bootstrap(b, c, lengths, resamples=args.resamples, seed=args.seed, workers=workers)

            measure(f"paired_bootstrap {metric} ({name})", run, args.repeat)
    result = measure("gate on scored pair (all checks, 25 slices)", lambda: gate(scored, config), args.repeat)
    measure("gate end to end from paired predictions", lambda: gate(pairs, config), 1, memory=False)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  process peak RSS {rss:.0f} MiB (includes the 100k synthetic predictions themselves)")
    print(f"  verdict {result.verdict}; WER {result.baseline_wer:.4f} -> {result.candidate_wer:.4f}, "
          f"95% CI [{result.wer.bootstrap.ci_low:.4f}, {result.wer.bootstrap.ci_high:.4f}], p={result.p_value:.4g}")


if __name__ == "__main__":
    main()
