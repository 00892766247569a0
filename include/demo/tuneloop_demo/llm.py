"""The chat demo (``make demo-llm``): the loop on a tiny causal LM, on this machine's CPU.

1. questions about nicknames, with the answers the ``nicknames`` package ships (:mod:`tuneloop_demo.nickname_world`):
   what production was trained on (one phrasing) and production traffic (users' own phrasings);
2. production version 1: a tiny Llama and its BPE tokenizer, both made here from config
   (``python -m tuneloop_trainer init-model --task chat``; nothing is downloaded), trained on the world's
   ``nicknames of NAME`` questions, then registered as production (``tuneloop bootstrap``), a quarter of those
   questions as a regression suite (``tuneloop suite add``);
3. production traffic: the production model answers every request; its wrong answers, with the true nicknames
   as the ideal reply, become chat error cases, ingested with ``tuneloop ingest`` (one malformed row is refused
   and reported, the rest stored);
4. ``airflow dags test finetune_weekly``: trigger, export (the newest cases held out), full fine-tuning,
   evaluation of candidate and production on the held-out cases and the suite, the text gate (exact match,
   McNemar's exact test), the suite, registration, deploy or reject, the served model's check, the report;
5. the numbers, read from the run's gate record: exact match before and after, the change's confidence
   interval and p-value; the decision; the registry.

``--bad-candidate`` trains on shuffled replies (each question paired with another's answer): the gate must reject
it and production must stay put. Each run starts from a fresh store, registry and Airflow DB (under
``.demo/llm/run``); the world and the production model are built once and reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tuneloop.history import version_label
from tuneloop_demo.main import (
    REPO,
    Installation,
    _decision,
    _registry,
    _say,
    _store,
    _tuneloop,
    fresh_installation,
    run_weekly,
)
from tuneloop_demo.nickname_settings import DEMO_SEED, DEMO_WORLD, PRODUCTION_SIZE, PRODUCTION_TRAINING
from tuneloop_demo.nickname_world import (
    DOMAIN,
    TASK_TYPE,
    NicknameWorld,
    build_world,
    read_jsonl,
    traffic_requests,
)
from tuneloop_trainer.spec import ChatModelSize

log = logging.getLogger(__name__)

LLM_CONFIG = REPO / "include" / "demo" / "tuneloop-demo-llm.yaml"
TEST_NAMES = {"mcnemar": "McNemar exact test", "bootstrap": "paired bootstrap"}  # gate.json's significance_test
PRODUCTION_STAMP = "production.json"


def run_llm_demo(*, bad_candidate: bool = False, workdir: Path | None = None) -> int:
    """Run the chat demo; return 0 when the outcome is the expected one (deployed, or rejected when bad)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.monotonic()
    workdir = (workdir or REPO / ".demo").resolve() / "llm"
    _say("1/5", "questions about nicknames, answers from the nicknames package: production's training questions "
                "and its traffic")
    world = build_world(workdir / "world", seed=DEMO_SEED, config=DEMO_WORLD)
    print(f"    {world.counts['production_training']} names asked 'nicknames of NAME' (production's training), "
          f"{world.counts['traffic']} production requests, most in users' own words -> {world.root}")
    _say("2/5", "production model: a tiny Llama and a BPE tokenizer built here from config, trained on "
                "'nicknames of NAME' (built once, then reused) -> production version 1")
    production = build_production_model(world, workdir / "production")
    install = fresh_installation(workdir / ("run-bad" if bad_candidate else "run"), LLM_CONFIG)
    install.env["TUNELOOP__DATASET__REPLAY_PATH"] = str(world.replay)  # known-good older questions
    _tuneloop(install, "bootstrap", str(production), "--reason", "demo production model ('nicknames of NAME' only)")
    # What production does well must not get worse: trained questions never replayed into fine-tuning.
    _tuneloop(install, "suite", "add", "trained-phrasing", str(world.trained_suite), "--type", "benchmark")
    _say("3/5", "production traffic: the production model answers users' questions; wrong answers become cases")
    cases = answer_traffic(install, world, production)
    ingest(install, cases)
    _say("4/5", "airflow dags test finetune_weekly" + (" (bad candidate: shuffled replies)" if bad_candidate
                                                       else ""))
    conf = {"reason": "demo", "force_trigger": False,
            **({"label_noise": "shuffle", "reason": "demo: deliberately bad candidate"} if bad_candidate else {})}
    run_weekly(install, conf)
    _say("5/5", "results")
    record = _decision(install)
    print_results(install, record)
    expected = "rejected" if bad_candidate else "deployed"
    version = _registry(install).production_version()
    ok = record["status"] == expected and (version == "1") == bad_candidate
    print(f"\ndemo finished in {(time.monotonic() - started) / 60:.1f} min: "
          f"{'as expected' if ok else 'UNEXPECTED OUTCOME'} ({record['status']}, production {version_label(version)})")
    return 0 if ok else 1


def build_production_model(world: NicknameWorld, root: Path, size: ChatModelSize = PRODUCTION_SIZE,
                           training: dict[str, Any] | None = None) -> Path:
    """Production version 1 in ``root/run/model``: tokenizer and random weights from ``init-model --task chat``
    (the tokenizer trained on the world's text), then trained on the world's production-training questions, both
    through the trainer's command line. Reused when ``root`` holds one built from the same world and settings."""
    from tuneloop.backends import LocalBackend

    training = PRODUCTION_TRAINING if training is None else training
    key = _fingerprint({"world": world.fingerprint, "size": asdict(size), "training": training})
    model = root / "run" / "model"
    stamp = root / PRODUCTION_STAMP
    built = stamp.is_file() and json.loads(stamp.read_text()).get("fingerprint") == key
    if built and (model / "config.json").is_file():
        print(f"    reusing the production model in {model}")
        return model
    shutil.rmtree(root, ignore_errors=True)
    dataset = root / "dataset"
    dataset.mkdir(parents=True)
    shutil.copyfile(world.production_training, dataset / "train.jsonl")
    backend = LocalBackend()
    started = time.monotonic()
    size_args = [arg for name, value in asdict(size).items()
                 for arg in (f"--{name.replace('_', '-')}", str(value))]
    backend.run(["init-model", "--task", "chat", "--corpus", str(world.corpus), "--output", str(root / "init"),
                 *size_args], log_line=log.debug)
    spec = {"task": "chat", "base_model_uri": str(root / "init"), "dataset_uri": str(dataset),
            "output_uri": str(root / "run"), "seed": size.seed, **training}
    (root / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
    backend.run(["train", "--spec", str(root / "spec.json")], log_line=_progress)
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    stamp.write_text(json.dumps({"fingerprint": key, "size": asdict(size), "training": training,
                                 "metrics": metrics}, indent=2) + "\n")
    print(f"    {metrics['total_params']:,} parameters, {metrics['steps']} steps, mean loss "
          f"{metrics['train_loss']:.3f}, {time.monotonic() - started:.0f} s -> {model}")
    return model


def answer_traffic(install: Installation, world: NicknameWorld, production_model: Path) -> Path:
    """The production model answers every request; its wrong answers become chat error cases (JSONL), followed
    by one malformed row (a correction saved empty) that ingestion must refuse."""
    from tuneloop.backends import LocalBackend
    from tuneloop.store import ErrorCaseStore

    requests = list(traffic_requests(world))
    predictions = install.root / "traffic-answers.jsonl"
    LocalBackend().evaluate(production_model, [(world.traffic, predictions)], batch_size=32, log_line=log.debug)
    answers = {p["id"]: p["hypothesis"] for p in read_jsonl(predictions)}
    cases = [error_case(request, answers[request["id"]]) for request in requests
             if answers[request["id"]] != request["messages"][-1]["content"]]
    if not cases:
        raise RuntimeError("the production model answered every request right: nothing to learn from")
    malformed = {**cases[0], "id": f"{cases[0]['id']}-review-2", "ideal": " "}
    path = install.root / "error-cases.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in [*cases, malformed]))
    ErrorCaseStore.from_config(install.config()).record_inferences("1", len(requests))
    for label, (right, total) in sorted(accuracy_by_phrasing(requests, answers).items()):
        print(f"    phrasing {label:<8} {right:>3}/{total:<3} answered right")
    print(f"    {len(requests)} requests, {len(cases)} answered wrongly -> {path} (+1 malformed row)")
    return path


def error_case(request: dict[str, Any], output: str) -> dict[str, Any]:
    """A chat error case as the serving system would send it: the question, production's reply, the ideal one."""
    return {"id": request["id"], "prompt": request["messages"][0]["content"], "output": output,
            "ideal": request["messages"][-1]["content"], "rating": 1, "domain": DOMAIN, "task_type": TASK_TYPE,
            "error_types": ["wrong_answer"], "model_version": "1", "created_at": request["created_at"],
            "annotator": "demo", "source": "production",
            "metadata": {"phrasing": request["phrasing"], "name": request["name"]}}


def accuracy_by_phrasing(requests: list[dict[str, Any]], answers: dict[str, str]) -> dict[str, tuple[int, int]]:
    """``{phrasing: (right, total)}``: exact matches of ``answers`` per phrasing."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for request in requests:
        counts[request["phrasing"]][0] += answers[request["id"]] == request["messages"][-1]["content"]
        counts[request["phrasing"]][1] += 1
    return {label: (right, total) for label, (right, total) in counts.items()}


def ingest(install: Installation, cases: Path) -> None:
    """``tuneloop ingest``: valid rows are stored, a refused one is reported (exit status 1 says some were)."""
    result = subprocess.run([sys.executable, "-m", "tuneloop.cli", "ingest", str(cases)], env=install.env)
    if result.returncode not in (0, 1):
        raise RuntimeError(f"tuneloop ingest failed with exit status {result.returncode}")


def print_results(install: Installation, record: dict[str, Any]) -> None:
    """The gate's numbers as the run recorded them, where the eval names come from, the registry and history."""
    gate = record.get("gate") or {}
    print(f"\ndecision: {record['status'].upper()}")
    if gate.get("metric"):
        boot = gate.get("bootstrap") or {}
        p_value = gate.get("p_value")
        print(f"eval split: {gate['n']} held-out error cases (the most recent ones, never trained on)")
        interval = (f", {1 - boot['alpha']:.0%} CI [{boot['ci_low']:+.3f}, {boot['ci_high']:+.3f}]"
                    if boot.get("ci_low") is not None else "")
        test = TEST_NAMES.get(gate.get("significance_test"), gate.get("significance_test"))
        significance = f", one-sided {test} p = {p_value:.2g}" if p_value is not None else ""
        print(f"  {gate['metric']}  production {gate['baseline_mean']:.3f} -> candidate {gate['candidate_mean']:.3f} "
              f"(change {gate['improvement']:+.3f}{interval}{significance})")
        for reason in gate.get("reasons", []):
            print(f"  - {reason}")
        print(f"  churn: {gate.get('newly_fixed')} fixed, {gate.get('newly_broken')} newly broken")
        print_eval_details(install)
    for suite in (record.get("regression") or {}).get("results", []):
        print(f"regression suite {suite['name']} (n={suite['n']}): {suite['metric']} {suite['baseline_score']:.3f} "
              f"-> {suite['score']:.3f} (drop {suite['score_drop']:+.3f}, at most {suite['max_score_drop']}), "
              f"{suite['failed_samples']} failed samples: {'pass' if suite['passed'] else 'FAIL'}")
    registry = _registry(install)
    config = install.config()
    print(f"registry '{config.mlflow.model_name}': production {version_label(registry.production_version())}, "
          f"previous {version_label(registry.previous_version())}")
    for event in _store(install).deployment_history(config.mlflow.model_name):
        print(f"  {event.action:<9} {version_label(event.from_version)} -> {version_label(event.to_version)}: "
              f"{event.reason[:110]}")
    print(f"decision record: {install.root / 'tuneloop'}/storage/runs/*/decision.md")
    print("\nlook around:")
    print(f"  AIRFLOW_HOME={install.env['AIRFLOW_HOME']} TUNELOOP_HOME={install.env['TUNELOOP_HOME']} "
          f"TUNELOOP_CONFIG={install.config_file} .venv/bin/airflow standalone     # Airflow UI, "
          "http://localhost:8080 (the tuneloop page: http://localhost:8080/plugin/tuneloop)")
    print(f"  .venv/bin/mlflow ui --backend-store-uri {config.tracking_uri}     # MLflow UI, http://localhost:5000")
    print(f"  TUNELOOP_HOME={install.env['TUNELOOP_HOME']} TUNELOOP_CONFIG={install.config_file} "
          ".venv/bin/tuneloop status")


def print_eval_details(install: Installation) -> None:
    """Exact match per phrasing on the eval split (from the run's predictions), and whether the names asked about
    in eval occur in the train split (they should not: what the candidate learned must carry over)."""
    run = _latest_run(install)
    if run is None:
        return
    production = {r["id"]: r for r in read_jsonl(run / "predictions" / "production" / "eval.jsonl")}
    candidate = read_jsonl(run / "predictions" / "candidate" / "eval.jsonl")
    by_phrasing: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for row in candidate:
        counts = by_phrasing[str(row.get("phrasing"))]
        counts[0] += production[row["id"]]["hypothesis"] == row["reference"]
        counts[1] += row["hypothesis"] == row["reference"]
        counts[2] += 1
    for label, (before, after, total) in sorted(by_phrasing.items()):
        print(f"  phrasing {label:<8} n={total:<3} right: production {before:>2} -> candidate {after:>2}")
    dataset = _dataset_dir(install, run)
    if dataset is not None:
        train_names = {row.get("name") for row in read_jsonl(dataset / "train.jsonl") if row.get("name")}
        eval_names = {row.get("name") for row in read_jsonl(dataset / "eval.jsonl")}
        shared = len(eval_names & train_names)
        print(f"  the eval split asks about {len(eval_names)} names, {shared} of them asked about in the train split's "
              "cases too (production learned every name's nicknames in its own training)")


def _latest_run(install: Installation) -> Path | None:
    runs = sorted((install.root / "tuneloop" / "storage" / "runs").glob("*/predictions/candidate/eval.jsonl"))
    return runs[-1].parents[2] if runs else None


def _dataset_dir(install: Installation, run: Path) -> Path | None:
    spec_file = run / "training" / "spec.json"
    if not spec_file.is_file():
        return None
    dataset = Path(json.loads(spec_file.read_text())["dataset_uri"].removeprefix("file://"))
    return dataset if (dataset / "train.jsonl").is_file() else None


def _progress(line: str) -> None:
    """The trainer's progress lines (every ``logging_steps``) and its summary, echoed; the rest to the log."""
    if " step " in line or " done: " in line:
        print("    " + line.split(": ", 1)[-1], flush=True)
    else:
        log.debug(line)


def _fingerprint(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
