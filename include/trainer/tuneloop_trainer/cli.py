"""Command line: ``python -m tuneloop_trainer {train,evaluate,evaluate-jobs,init-model}``.

The same command runs locally (subprocess), in a Kubernetes pod and on a VM. Bad input exits with status 2 and
one ``error:`` line that names the field; training failures keep their traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence

from tuneloop_trainer.arguments import (
    SpecError,
    add_dataclass_arguments,
    from_mapping,
    merge,
    overrides_from_namespace,
    read_json_object,
)
from tuneloop_trainer.spec import TASKS, ChatModelSize, EvaluateArguments, ModelSize, TrainingSpec

log = logging.getLogger("tuneloop_trainer")

SHARED_JOB_FIELDS = ("batch_size", "max_new_tokens")  # a jobs file's top-level settings, for every job


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tuneloop_trainer", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="Fine-tune as a training spec says (resumes; idempotent).")
    train.add_argument("--spec", help="Training spec JSON; options below override its fields.")
    add_dataclass_arguments(train, TrainingSpec)

    evaluate = commands.add_parser("evaluate", help="Predict a JSONL split into predictions JSONL (transcripts or "
                                   "chat replies; the task comes from the model).")
    add_dataclass_arguments(evaluate, EvaluateArguments)

    jobs = commands.add_parser("evaluate-jobs", help="Predict with several models, as a jobs file lists.")
    jobs.add_argument("--jobs", required=True, help='JSON (path or URI): {"batch_size": N, "max_new_tokens": N, '
                      '"jobs": [{"model_dir": M, "data": [...], "output": [...]}, ...]}; torch loads once, each '
                      'model once.')

    init = commands.add_parser(
        "init-model", help="Write a randomly initialised tiny model + processor/tokenizer.",
        description=f"Defaults differ by task: speech-to-text {_defaults(ModelSize)}; chat {_defaults(ChatModelSize)}. "
        "--conv-* and the other feature-encoder options are speech-only; --corpus, --vocab-size and "
        "--max-position-embeddings chat-only.")
    init.add_argument("--output", required=True, help="Directory to write (save_pretrained layout).")
    init.add_argument("--task", choices=TASKS, default="speech-to-text", help="Which kind of model.")
    init.add_argument("--corpus", help="Chat: text file (one or more lines) the BPE tokenizer is trained on.")
    add_dataclass_arguments(init, ModelSize)
    add_dataclass_arguments(init, ChatModelSize, skip={field.name for field in dataclasses.fields(ModelSize)})
    return parser


def _defaults(cls: type) -> str:
    """The size defaults shared by both tasks' models, for the help text."""
    shared = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    return ", ".join(f"{field.name} {field.default}" for field in dataclasses.fields(cls) if field.name in shared)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    prefer_passive_openmp()
    try:
        return run(args)
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """Validate the arguments (torch-free, so bad input fails fast), then import and run the command."""
    if args.command == "train":
        spec = load_spec(args)
        _quiet_transformers()
        from tuneloop_trainer import train

        train.main(spec)
    elif args.command == "evaluate":
        evaluate_args = from_mapping(EvaluateArguments, overrides_from_namespace(args, EvaluateArguments))
        _quiet_transformers()
        from tuneloop_trainer import evaluate

        evaluate.main(evaluate_args)
    elif args.command == "evaluate-jobs":
        requests = load_jobs(args.jobs)
        _quiet_transformers()
        from tuneloop_trainer import evaluate

        for request in requests:
            evaluate.main(request)
    elif args.task == "chat":
        size = chat_model_size(args)
        _quiet_transformers()
        from tuneloop_trainer.chat_modeling import init_chat_model

        print(init_chat_model(args.output, args.corpus, size))
    else:
        size = speech_model_size(args)
        _quiet_transformers()
        from tuneloop_trainer.modeling import init_model

        print(init_model(args.output, size))
    return 0


def speech_model_size(args: argparse.Namespace) -> ModelSize:
    _refuse_options_of_other_task(args, ChatModelSize, ModelSize, "chat")
    if args.corpus is not None:
        raise SpecError("--corpus is for --task chat (a speech model's vocabulary is fixed)")
    return from_mapping(ModelSize, overrides_from_namespace(args, ModelSize))


def chat_model_size(args: argparse.Namespace) -> ChatModelSize:
    _refuse_options_of_other_task(args, ModelSize, ChatModelSize, "speech-to-text")
    if args.corpus is None:
        raise SpecError("init-model --task chat needs --corpus FILE: a text file to train the tokenizer on")
    return from_mapping(ChatModelSize, overrides_from_namespace(args, ChatModelSize))


def _refuse_options_of_other_task(args: argparse.Namespace, other: type, own: type, other_task: str) -> None:
    """A size option that only the other task's model has is an error, not silently ignored."""
    own_fields = {field.name for field in dataclasses.fields(own)}
    foreign = sorted(set(overrides_from_namespace(args, other)) - own_fields)
    if foreign:
        options = ", ".join("--" + name.replace("_", "-") for name in foreign)
        raise SpecError(f"{options}: only for --task {other_task} models")


def _quiet_transformers() -> None:
    from tuneloop_trainer.modeling import quiet_transformers

    quiet_transformers()


def load_spec(args: argparse.Namespace) -> TrainingSpec:
    """The spec file (if any) with command-line overrides applied, validated field by field."""
    base = read_json_object(args.spec, "spec file") if args.spec else {}
    return from_mapping(TrainingSpec, merge(base, overrides_from_namespace(args, TrainingSpec)))


def load_jobs(uri: str) -> list[EvaluateArguments]:
    """The jobs file as evaluate requests, every one validated before any model is loaded."""
    data = read_json_object(uri, "jobs file")
    if not isinstance(data.get("jobs"), list):
        raise SpecError(f"jobs file {uri}: field 'jobs' must be a list of {{model_dir, data, output}} objects")
    shared = {name: data[name] for name in SHARED_JOB_FIELDS if name in data}
    requests = []
    for number, job in enumerate(data["jobs"]):
        if not isinstance(job, dict):
            raise SpecError(f"jobs file {uri}: jobs[{number}] must be an object")
        try:
            requests.append(from_mapping(EvaluateArguments, {**shared, **job}))
        except SpecError as error:
            raise SpecError(f"jobs file {uri}: jobs[{number}]: {error}") from error
    return requests


def prefer_passive_openmp() -> None:
    """Make idle OpenMP threads sleep instead of spinning; must run before torch is first imported.

    On a small shared machine (the 2-core demo box runs Airflow next to the trainer) spinning threads fight the
    other processes for the cores: measured 3.0 s/step with the default policy against 1.0 s/step with PASSIVE
    under the same load, and no measurable loss on an idle machine. An explicit OMP_WAIT_POLICY wins.
    """
    if "torch" in sys.modules:
        log.debug("torch already imported; OMP_WAIT_POLICY unchanged")
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
