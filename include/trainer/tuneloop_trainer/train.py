"""``train``: fine-tune a model on a dataset directory as the training spec says, for every task.

The loop, checkpoints, resume, metrics and publishing live here and are the same for every task; what differs
(rows, model loading with LoRA, batches, the loss) comes from the spec's task (:mod:`tuneloop_trainer.tasks`).

Outputs in ``output_uri``: ``model/`` (merged weights + processor/tokenizer, loadable with ``from_pretrained``),
``adapter/`` (the LoRA adapter alone, when LoRA is on), ``metrics.json`` and ``checkpoints/step-N``. Re-running
a finished spec is a no-op; re-running an interrupted one resumes from its newest checkpoint.

Every URI may be remote (``gs://...``, see :mod:`tuneloop_trainer.staging`): inputs are staged to local disk, and
a remote output is written in a local working folder and mirrored to the bucket, which stays the source of truth
so that a new machine with an empty disk can resume: each checkpoint is uploaded when saved, and at the end
``adapter/``, ``model/`` and then ``metrics.json`` (present = finished).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from tuneloop_trainer import checkpoint as ckpt
from tuneloop_trainer import staging
from tuneloop_trainer.arguments import SpecError
from tuneloop_trainer.data import epoch_order
from tuneloop_trainer.modeling import check_model_dir, count_parameters, describe, merged_model
from tuneloop_trainer.spec import TrainingSpec
from tuneloop_trainer.tasks import Task, get_task
from tuneloop_trainer.tracking import RunLogger

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoints"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers from glibc's malloc.h


@dataclass(frozen=True)
class Plan:
    """Run length derived from the spec and the train split."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


@dataclass(frozen=True)
class TrainData:
    """The task's training examples, their lengths (for length-grouped batches) and the processor."""

    task: Task
    examples: list[Any]
    lengths: list[float]
    processor: Any


def main(spec: TrainingSpec) -> dict[str, Any]:
    """Train as ``spec`` says and return the metrics written to metrics.json."""
    finished = finished_metrics(spec)
    if finished is not None:
        log.info("%s already holds a finished run of this spec (hash %s); nothing to do", spec.output_uri,
                 spec.spec_hash()[:12])
        return finished
    task = get_task(spec.task)
    output = staging.working_dir(spec.output_uri)
    configure_threads()
    device = select_device(spec.precision)
    seed_everything(spec.seed)
    rows = load_train_rows(spec, task)
    base = staging.stage_dir(spec.base_model_uri, "base_model_uri")
    check_model_dir(base, "base_model_uri")
    data = prepare_data(task, rows, base, spec)
    plan = plan_run(spec, len(data.examples))
    model = load_model(task, base, spec, device)
    optimizer, scheduler = build_optimizer(model, spec, plan)
    tracker = RunLogger(spec.mlflow)
    tracker.log_params(spec.to_dict() | {"train_rows": len(data.examples), "total_steps": plan.total_steps})
    start = resume_if_possible(output, spec, plan, model, optimizer, scheduler)
    counts = count_parameters(model)
    state = train_loop(spec, plan, data, model, optimizer, scheduler, start, output, device, tracker)
    save_model(model, data.processor, output)
    resumed_from = start.global_step or None
    metrics = write_metrics(output, spec, plan, counts, state, resumed_from, len(data.examples), tracker)
    publish_output(output, spec.output_uri)
    return metrics


def finished_metrics(spec: TrainingSpec) -> dict[str, Any] | None:
    """metrics.json of a finished run of the same spec in ``output_uri``, or None when training is needed."""
    metrics_uri = staging.join(spec.output_uri, METRICS_FILE)
    if not staging.exists(metrics_uri) or not staging.exists(staging.join(spec.output_uri, MODEL_DIR, "config.json")):
        return None
    metrics = json.loads(staging.read_text(metrics_uri, "metrics file"))
    return metrics if metrics.get("spec_hash") == spec.spec_hash() else None


def configure_threads() -> None:
    """Use as many intra-op threads as CPUs this process may run on (a pod's CPU limit, not the host's).

    An explicit OMP_NUM_THREADS wins: whoever set it knows what else runs on the machine.
    """
    keep_freed_memory_in_heap()
    if os.environ.get("OMP_NUM_THREADS"):
        log.info("using %d CPU thread(s) (OMP_NUM_THREADS)", torch.get_num_threads())
        return
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpu_limit()
    threads = max(1, min(available, quota or available))
    torch.set_num_threads(threads)
    log.info("using %d CPU thread(s)", threads)


def keep_freed_memory_in_heap() -> None:
    """Stop glibc from unmapping large freed blocks after every step.

    Batches have different lengths, so activation buffers of tens of MB are allocated and freed each step; by
    default glibc serves them with mmap/munmap and the process then page-faults them back in every step
    (measured 10-15% of CPU time as system time on 2 cores). Raising the thresholds keeps them in the heap.
    No-op where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        log.debug("libc.so.6 not found; leaving the allocator as it is")
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
    libc.mallopt(_M_TRIM_THRESHOLD, 1024 * 1024 * 1024)


def _cgroup_cpu_limit() -> int | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))


def select_device(precision: str) -> torch.device:
    """CUDA when present; fp16 without a GPU is a spec error rather than a silent fp32 run."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if precision == "fp16":
        raise SpecError("precision 'fp16' needs a CUDA GPU and none is visible; use 'fp32' or 'bf16' on CPU")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_train_rows(spec: TrainingSpec, task: Task) -> list[dict[str, Any]]:
    """The dataset's train split, validated, with targets shuffled across rows when ``label_noise`` is 'shuffle'."""
    train_file = train_split(spec.dataset_uri)
    rows = task.read_rows(train_file, training=True)
    if not rows:
        raise SpecError(f"dataset {spec.dataset_uri} has an empty train split ({train_file} has no rows); "
                        "export more corrected error cases first")
    if spec.label_noise == "shuffle":
        log.warning("label_noise=shuffle: training on deliberately mismatched targets")
        rows = task.shuffle_labels(rows, spec.seed)
    log.info("train split: %d rows from %s", len(rows), train_file)
    return rows


def train_split(dataset_uri: str) -> Path:
    """The dataset's train.jsonl on local disk; a remote one is staged alone, with the audio its rows reference
    (speech), since the dataset's other splits are not needed for training."""
    if staging.is_remote(dataset_uri):
        return staging.stage_split(staging.join(dataset_uri, "train.jsonl"), "dataset_uri")
    dataset = staging.local_path(dataset_uri)
    if not dataset.is_dir():
        raise SpecError(f"dataset_uri {dataset} does not exist or is not a directory")
    train_file = dataset / "train.jsonl"
    if not train_file.is_file():
        raise SpecError(f"dataset_uri {dataset} has no train.jsonl; point it at an exported dataset directory")
    return train_file


def plan_run(spec: TrainingSpec, num_rows: int) -> Plan:
    steps_per_epoch = math.ceil(num_rows / spec.batch_size)
    total = spec.max_steps or max(1, math.ceil(spec.epochs * steps_per_epoch))
    return Plan(steps_per_epoch, total, int(spec.warmup_ratio * total))


def prepare_data(task: Task, rows: list[dict[str, Any]], base: Path, spec: TrainingSpec) -> TrainData:
    """The processor and the task's examples, before the model loads (a bad row or tokenizer fails fast)."""
    processor = task.load_processor(base)
    examples = task.prepare_examples(rows, processor, spec)
    return TrainData(task, examples, [task.example_length(example) for example in examples], processor)


def load_model(task: Task, base: Path, spec: TrainingSpec, device: torch.device) -> torch.nn.Module:
    model = task.load_model(base, spec).to(device)
    log.info("model from %s (%s, %s)", base, "LoRA" if spec.lora.enabled else "full fine-tuning", describe(model))
    return model


def build_optimizer(model: torch.nn.Module, spec: TrainingSpec, plan: Plan) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over trainable parameters (no decay on biases and norms) with linear warmup and decay.

    The fused implementation (one kernel for all parameters, on CPU and GPU) because the default one loops over
    the parameters in Python: 11% of a tiny chat model's step time on 2 CPU cores against 5% fused
    (benchmarks/bench_sft.py); transformers' Trainer uses the fused one by default too.
    """
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=spec.learning_rate, fused=True)
    scheduler = get_linear_schedule_with_warmup(optimizer, plan.warmup_steps, plan.total_steps)
    return optimizer, scheduler


def resume_if_possible(output: Path, spec: TrainingSpec, plan: Plan, model: torch.nn.Module,
                       optimizer: torch.optim.Optimizer, scheduler: Any) -> ckpt.TrainState:
    """Restore the newest compatible checkpoint, or return a fresh state at step 0.

    With a remote output the local checkpoints are first made to mirror the bucket's complete ones: this machine
    may be a new one, and the bucket, not an old disk, says where the run stands.
    """
    if staging.is_remote(spec.output_uri):
        ckpt.pull_remote(staging.join(spec.output_uri, CHECKPOINT_DIR), output / CHECKPOINT_DIR)
    found = ckpt.latest_compatible(output / CHECKPOINT_DIR, spec.resume_key(), plan.total_steps)
    if found is None:
        return ckpt.TrainState(spec.resume_key(), 0, 0, 0, 0.0, 0.0)
    state = ckpt.load_checkpoint(found, model, optimizer, scheduler)
    # A run extended from a checkpoint keeps its optimizer state but follows the new schedule length: the
    # scheduler's lambdas come from this plan, so recompute the learning rate for the restored step.
    for group, base_lr, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base_lr * factor(scheduler.last_epoch)
    log.info("resuming from checkpoint step %d (%s)", state.global_step, found)
    return replace(state, resume_key=spec.resume_key())


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def batches_from(lengths: list[float], spec: TrainingSpec, plan: Plan,
                 start_step: int) -> Iterator[tuple[int, int, list[int]]]:
    """(epoch, batch index, example indices) from ``start_step`` on; the order is a pure function of seed and
    epoch."""
    step = start_step
    while step < plan.total_steps:
        epoch, index = divmod(step, plan.steps_per_epoch)
        order = epoch_order(lengths, spec.batch_size, spec.seed, epoch)
        for position in range(index, len(order)):
            if step >= plan.total_steps:
                return
            yield epoch, position, order[position]
            step += 1


def train_loop(spec: TrainingSpec, plan: Plan, data: TrainData, model: torch.nn.Module,
               optimizer: torch.optim.Optimizer, scheduler: Any, state: ckpt.TrainState, output: Path,
               device: torch.device, tracker: RunLogger) -> ckpt.TrainState:
    """Optimise until ``plan.total_steps``, logging progress and checkpointing every N steps."""
    model.train()
    scaler = torch.amp.GradScaler("cuda") if spec.precision == "fp16" else None
    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    run_start = time.perf_counter() - state.elapsed_s
    for epoch, position, indices in batches_from(data.lengths, spec, plan, state.global_step):
        batch = data.task.make_batch([data.examples[i] for i in indices], data.processor)
        loss = training_step(data.task, model, batch, spec, device, optimizer, scheduler, scaler)
        step = state.global_step + 1
        state = replace(state, global_step=step, epoch=epoch, batch_in_epoch=position + 1,
                        loss_sum=state.loss_sum + loss, elapsed_s=time.perf_counter() - run_start,
                        samples=state.samples + len(indices))
        window_loss, window_steps = window_loss + loss, window_steps + 1
        if step % spec.logging_steps == 0 or step == plan.total_steps:
            seconds = (time.perf_counter() - window_start) / window_steps
            lr = scheduler.get_last_lr()[0]
            log.info("step %d/%d epoch %.1f loss %.3f lr %.1e (%.2f s/it)", step, plan.total_steps,
                     step / plan.steps_per_epoch, window_loss / window_steps, lr, seconds)
            tracker.log_metrics({"train_loss": window_loss / window_steps, "learning_rate": lr}, step)
            window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
        if step % spec.checkpoint_every_steps == 0 or step == plan.total_steps:
            save_checkpoint(spec, output, model, optimizer, scheduler, state)
    return state


def save_checkpoint(spec: TrainingSpec, output: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, state: ckpt.TrainState) -> None:
    """Save a checkpoint locally and, for a remote output, upload it at once: the next machine resumes from it."""
    saved = ckpt.save_checkpoint(output / CHECKPOINT_DIR, model, optimizer, scheduler, state, spec.keep_checkpoints)
    if staging.is_remote(spec.output_uri):
        ckpt.push_remote(saved, staging.join(spec.output_uri, CHECKPOINT_DIR))


def training_step(task: Task, model: torch.nn.Module, batch: dict[str, torch.Tensor], spec: TrainingSpec,
                  device: torch.device, optimizer: torch.optim.Optimizer, scheduler: Any,
                  scaler: torch.amp.GradScaler | None) -> float:
    """One optimizer step on one batch; returns the batch loss."""
    on_device = {name: tensor.to(device) for name, tensor in batch.items()}
    with autocast(spec.precision, device):
        loss = task.loss(model, on_device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if spec.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(trainable, spec.max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def save_model(model: torch.nn.Module, processor: Any, output: Path) -> Path:
    """Write adapter/ (LoRA only) and then model/ (LoRA merged into the base weights, plus the processor or
    tokenizer), each atomically (tmp dir + rename). The adapter goes first: merging changes the model in place."""
    if hasattr(model, "peft_config"):
        write_dir_atomic(output / ADAPTER_DIR, lambda partial: model.save_pretrained(partial))
        log.info("saved LoRA adapter to %s", output / ADAPTER_DIR)

    def write_model(partial: Path) -> None:
        merged_model(model).to("cpu").eval().save_pretrained(partial)
        processor.save_pretrained(partial)

    final = write_dir_atomic(output / MODEL_DIR, write_model)
    log.info("saved merged model to %s", final)
    return final


def write_dir_atomic(final: Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(partial)`` on a fresh hidden folder, then replace ``final`` with it."""
    partial = final.with_name(f".{final.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    write(partial)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return final


def write_metrics(output: Path, spec: TrainingSpec, plan: Plan, counts: tuple[int, int], state: ckpt.TrainState,
                  resumed_from: int | None, train_rows: int, tracker: RunLogger) -> dict[str, Any]:
    """metrics.json last and atomically: its presence (with the spec hash) marks the run finished."""
    trainable, total = counts
    metrics = {
        "train_loss": state.loss_sum / max(1, state.global_step),
        "steps": state.global_step,
        "epochs": state.global_step / plan.steps_per_epoch,
        "train_runtime_s": round(state.elapsed_s, 3),
        "train_samples": state.samples,
        "train_samples_per_s": round(state.samples / state.elapsed_s, 3) if state.elapsed_s > 0 else None,
        "trainable_params": trainable,
        "total_params": total,
        "resumed_from_step": resumed_from,
        "train_rows": train_rows,
        "lora": spec.lora.enabled,
        "spec_hash": spec.spec_hash(),
    }
    write_json_atomic(output / METRICS_FILE, metrics)
    tracker.log_metrics({"train_loss_mean": metrics["train_loss"], "train_runtime_s": metrics["train_runtime_s"],
                         "train_steps": state.global_step, "trainable_params": trainable,
                         "total_params": total}, state.global_step)
    log.info("done: %d steps, mean loss %.3f, %.1f s", state.global_step, metrics["train_loss"], state.elapsed_s)
    return metrics


def publish_output(output: Path, output_uri: str) -> None:
    """Upload adapter/ (if any), model/ and then metrics.json, whose presence marks a finished output; nothing to
    do when local.

    A metrics.json from an earlier spec is deleted first, so it never vouches for a half-uploaded model.
    """
    if not staging.is_remote(output_uri):
        return
    staging.remove(staging.join(output_uri, METRICS_FILE))
    for folder in (ADAPTER_DIR, MODEL_DIR):
        staging.remove(staging.join(output_uri, folder))
        if (output / folder).is_dir():
            staging.upload_dir(output / folder, staging.join(output_uri, folder))
    staging.upload_file(output / METRICS_FILE, staging.join(output_uri, METRICS_FILE))


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
