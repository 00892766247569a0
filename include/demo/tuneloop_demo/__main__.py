"""``python -m tuneloop_demo {build-world,bootstrap-baseline,measure,measure-llm}``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tuneloop_demo.settings import VARIANTS
from tuneloop_trainer.cli import prefer_passive_openmp


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tuneloop_demo", description="tuneloop demo world tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    world = commands.add_parser("build-world", help="Synthesise the demo world (idempotent).")
    world.add_argument("--root", type=Path, required=True, help="Directory for the world.")
    world.add_argument("--seed", type=int, default=0, help="World seed.")
    world.add_argument("--with-baseline-train", action="store_true",
                       help="Also synthesise the 3000 baseline-training utterances (only the bootstrap needs them).")
    baseline = commands.add_parser("bootstrap-baseline", help="Train the baseline from scratch (resumable).")
    baseline.add_argument("--output", type=Path, required=True, help="Where to write the baseline model.")
    baseline.add_argument("--work-dir", type=Path, required=True, help="World, dataset, checkpoints.")
    measure = commands.add_parser("measure", help="Run the demo's ML path without Airflow and report numbers.")
    measure.add_argument("--work-dir", type=Path, required=True, help="World and run outputs.")
    measure.add_argument("--baseline", type=Path, default=None, help="Baseline model (default: shipped one).")
    measure.add_argument("--variants", nargs="+", default=["full", "lora", "shuffle"], choices=list(VARIANTS),
                         help="Fine-tuning variants to run (tuneloop_demo.settings.VARIANTS).")
    llm = commands.add_parser("measure-llm", help="Run the chat demo's ML path without Airflow and report numbers.")
    llm.add_argument("--work-dir", type=Path, required=True, help="World, production model and run outputs.")
    llm.add_argument("--variants", nargs="+", default=["demo", "shuffle"],
                     choices=["demo", "shuffle", "full", "lora-qv"],
                     help="Fine-tuning variants (tuneloop_demo.nickname_measure.VARIANTS).")
    llm.add_argument("--seeds", nargs="+", type=int, default=[0], help="Training seeds to run each variant with.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    prefer_passive_openmp()
    if args.command == "build-world":
        from dataclasses import replace

        from tuneloop_demo.settings import DEMO_WORLD
        from tuneloop_demo.world import SPLITS, build_world

        config = replace(DEMO_WORLD, splits=SPLITS) if args.with_baseline_train else DEMO_WORLD
        print(build_world(args.root, args.seed, config).root)
    elif args.command == "bootstrap-baseline":
        from tuneloop_demo.baseline import bootstrap_baseline
        from tuneloop_trainer.modeling import quiet_transformers

        quiet_transformers()
        print(bootstrap_baseline(args.output, args.work_dir))
    elif args.command == "measure-llm":
        from tuneloop_demo.nickname_measure import measure as measure_llm

        print(measure_llm(args.work_dir, args.variants, args.seeds))
    else:
        from tuneloop_demo.measure import measure

        print(measure(args.work_dir, args.baseline, args.variants))
    return 0


if __name__ == "__main__":
    sys.exit(main())
