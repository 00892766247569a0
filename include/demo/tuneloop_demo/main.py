"""The demo: the whole loop on this machine's CPU, from speech to a deployed (or rejected) model.

1. speech: espeak-ng speaks commands with "seen" voices (the baseline learned them) and "unseen" voices and noise
   (production traffic the baseline struggles with);
2. the baseline model becomes production version 1 in the MLflow registry;
3. production traffic: the production model transcribes the traffic; its mistakes, with the true transcripts as
   human corrections, become error cases (ingested as JSONL, like a serving system would send them);
4. ``airflow dags test finetune_weekly``: trigger check, dataset export, LoRA fine-tuning, evaluation (eval split
   and two regression suites), the gate (with slices and churn), the suites, registration, deploy or reject,
   post-deploy check, report;
5. the numbers: WER/CER before and after with the confidence interval and p-value, the decision, the registry.

``--bad-candidate`` trains on shuffled transcripts: the gate must reject it and production must stay put.
``--strategy canary`` deploys the candidate as a canary on half of the live traffic: ``tuneloop serve`` answers
users who send held-out recordings (unseen voices) and correct a transcript that gets more than one word in four
wrong (``CORRECTED_ABOVE_WER``), and
the online test promotes the canary once it gets fewer requests wrong (``blue_green``: checked on the green alias
first).
Each run starts from a fresh store, registry and Airflow DB (under ``.demo/run``); the speech and the baseline
are built once and reused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.history import version_label
from tuneloop_demo.baseline import shipped_baseline
from tuneloop_demo.world import World, build_world, production_utterances, read_split

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
DEMO_CONFIG = REPO / "include" / "demo" / "tuneloop-demo.yaml"
SEED = 0


@dataclass(frozen=True)
class Installation:
    """A fresh tuneloop + Airflow installation for one demo run."""

    root: Path
    env: dict[str, str]
    config_file: Path = DEMO_CONFIG

    def config(self):
        from tuneloop.config import load_config

        return load_config(self.config_file, env=self.env)


CORRECTED_ABOVE_WER = 0.25  # a demo user corrects a transcript that gets more than one word in four wrong
# The canary's settings in the demo: half the traffic, a decision within minutes on a 2-core CPU.
DEMO_CANARY_ENV = {"TUNELOOP__DEPLOYMENT__CANARY__TRAFFIC_PERCENT": "50",
                   "TUNELOOP__DEPLOYMENT__CANARY__MIN_SAMPLES": "100",
                   "TUNELOOP__DEPLOYMENT__CANARY__MIXING_SD": "0.1",
                   "TUNELOOP__DEPLOYMENT__CANARY__POLL_SECONDS": "2",
                   "TUNELOOP__DEPLOYMENT__CANARY__MAX_DURATION_HOURS": "0.25"}


def run_demo(*, bad_candidate: bool = False, workdir: Path | None = None, strategy: str = "replace") -> int:
    """Run the demo; return 0 when the outcome is the expected one (deployed, or rejected when bad)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.monotonic()
    workdir = (workdir or REPO / ".demo").resolve()
    _say("1/5", "speech with espeak-ng: production traffic and held-out utterances (built once, then reused)")
    world = build_world(workdir / "world", seed=SEED)
    baseline = shipped_baseline()
    folder = "run-bad" if bad_candidate else "run" if strategy == "replace" else f"run-{strategy.replace('_', '-')}"
    install = fresh_installation(workdir / folder)
    install.env["TUNELOOP__DATASET__REPLAY_PATH"] = str(world.root / "replay.jsonl")  # older seen-voice traffic
    _say("2/5", f"baseline model {baseline} -> production version 1")
    _tuneloop(install, "bootstrap", str(baseline), "--reason", "demo baseline (seen voices only)")
    # Regression suites: what production already does well (seen voices) must not get worse, and unseen voices
    # never used for training measure the candidate beyond the error cases.
    _tuneloop(install, "suite", "add", "seen-voices", str(world.seen_eval), "--type", "benchmark")
    _tuneloop(install, "suite", "add", "unseen-heldout", str(world.heldout), "--type", "benchmark")
    _say("3/5", "production traffic: the production model transcribes unseen voices and noise")
    cases = simulate_traffic(install, world, baseline)
    _tuneloop(install, "ingest", str(cases))
    _say("4/5", "airflow dags test finetune_weekly" + (" (bad candidate: shuffled transcripts)" if bad_candidate
                                                       else ""))
    conf = {"reason": "demo", "force_trigger": False, "deployment_strategy": strategy,
            **({"label_noise": "shuffle", "reason": "demo: deliberately bad candidate"} if bad_candidate else {})}
    if strategy == "canary":
        install.env.update(DEMO_CANARY_ENV)
        run_weekly_with_live_traffic(install, conf, world)
    else:
        run_weekly(install, conf)
    _say("5/5", "results")
    record = _decision(install)
    print_results(install, record, world)
    expected = "rejected" if bad_candidate else "deployed"
    production = _registry(install).production_version()
    ok = record["status"] == expected and (production == "1") == bad_candidate
    print(f"\ndemo finished in {(time.monotonic() - started) / 60:.1f} min: "
          f"{'as expected' if ok else 'UNEXPECTED OUTCOME'} ({record['status']}, "
          f"production {version_label(production)})")
    return 0 if ok else 1


def fresh_installation(root: Path, config_file: Path = DEMO_CONFIG) -> Installation:
    """Wipe and recreate the run folder; environment for the CLI and Airflow pointing into it."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    env = {
        **os.environ,
        "TUNELOOP_HOME": str(root / "tuneloop"),
        "TUNELOOP_CONFIG": str(config_file),
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    for key in [k for k in env if k.startswith("AIRFLOW__DATABASE__")]:
        env.pop(key)
    return Installation(root, env, config_file)


def simulate_traffic(install: Installation, world: World, production_model: Path) -> Path:
    """Transcribe the production traffic with the production model; its mistakes become error cases."""
    from tuneloop.backends import LocalBackend
    from tuneloop.store import ErrorCaseStore

    traffic = list(production_utterances(world))
    requests = install.root / "traffic.jsonl"
    requests.write_text("".join(json.dumps({"id": u["id"], "audio": u["audio_path"], "text": u["text"],
                                            "voice": u["voice"], "condition": u["condition"]}) + "\n"
                                for u in traffic))
    predictions = install.root / "traffic-predictions.jsonl"
    LocalBackend().evaluate(production_model, [(requests, predictions)], batch_size=16, log_line=log.debug)
    hypotheses = {p["id"]: p["hypothesis"] for p in _read_jsonl(predictions)}
    cases = [
        {"id": u["id"], "audio_path": u["audio_path"], "prediction": hypotheses[u["id"]], "correction": u["text"],
         "error_types": ["transcription_error"], "model_version": "1", "created_at": u["created_at"],
         "annotator": "demo", "source": "production", "metadata": {"voice": u["voice"], "condition": u["condition"]}}
        for u in traffic if hypotheses[u["id"]] != u["text"]
    ]
    path = install.root / "error-cases.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    ErrorCaseStore.from_config(install.config()).record_inferences("1", len(traffic))
    print(f"    {len(traffic)} utterances transcribed, {len(cases)} with mistakes -> {path}")
    return path


def run_weekly(install: Installation, conf: dict[str, Any]) -> None:
    """``airflow db migrate`` then ``airflow dags test finetune_weekly``, echoing the pipeline's own log lines."""
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=install.env, check=True, capture_output=True)
    log_file = install.root / "airflow-dags-test.log"
    command = [*airflow, "dags", "test", "finetune_weekly", "-c", json.dumps(conf)]
    with log_file.open("w") as out, subprocess.Popen(command, env=install.env, stdout=subprocess.PIPE,
                                                     stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if _interesting(line):
                print("    " + _shorten(line), flush=True)
    print(f"    full Airflow log: {log_file}")


def run_weekly_with_live_traffic(install: Installation, conf: dict[str, Any], world: World) -> None:
    """The weekly run while ``tuneloop serve`` answers users (the held-out recordings, unseen voices) who correct
    a transcript that gets more than one word in four wrong: the canary's online test decides on their outcomes.
    (Every transcript with any wrong word would be corrected 95-97% of the time for both of the demo's 1-MB
    models, measured: a difference the test needs thousands of requests to show.)"""
    from tuneloop.metrics import corpus_wer
    from tuneloop_demo.live_traffic import Users, recordings, serving

    requests = recordings([(world.root / row["audio"], row["text"]) for row in read_split(world, "heldout")])

    def wrong(arm: str, answer: str, said: str, judged: int) -> bool:
        return corpus_wer([said], [answer]) > CORRECTED_ABOVE_WER

    with serving(install.env, REPO, install.root / "tuneloop-serve.log") as base:
        print(f"    tuneloop serve answers live traffic at {base}; users correct transcripts with more than "
              f"{CORRECTED_ABOVE_WER:.0%} of the words wrong", flush=True)
        users = Users(base, requests, wrong)
        users.start()
        try:
            run_weekly(install, conf)
        finally:
            users.stop.set()
            users.join(timeout=60)
    for arm in ("production", "canary"):
        if users.judged[arm]:
            print(f"    live traffic, {arm}: {users.wrong[arm]} of {users.judged[arm]} answers corrected "
                  f"({users.wrong[arm] / users.judged[arm]:.0%})")
    if users.errors:
        print(f"    live traffic stopped early: {users.errors[0]}")


def _interesting(line: str) -> bool:
    return ("tuneloop.operators" in line and "Pushing xcom" not in line) or "[DAG TEST] end task" in line


def _shorten(line: str) -> str:
    """Airflow's log line without its timestamp, level and logger: just what the step said."""
    text = line.strip()
    for marker in (" [airflow.task.operators.tuneloop.operators.", " [airflow.sdk.definitions.dag]"):
        text = text.split(marker)[0]
    if text[:4].isdigit():
        text = text[28:]
    return re.sub(r"^\[\w+\s*\]\s*", "", text).rstrip()


def print_results(install: Installation, record: dict[str, Any], world: World) -> None:
    gate = record.get("gate") or {}
    print(f"\ndecision: {record['status'].upper()}")
    if gate:
        print(f"eval split: {gate['n']} held-out error cases (the most recent ones, never trained on)")
        for metric in ("wer", "cer"):
            c = gate[metric]
            boot = c.get("bootstrap") or {}
            interval = (f", {1 - boot['alpha']:.0%} CI [{boot['ci_low']:+.3f}, {boot['ci_high']:+.3f}], "
                        f"p = {boot['p_value']:.4f}" if boot else "")
            print(f"  {metric.upper()}  production {c['baseline']:.3f} -> candidate {c['candidate']:.3f} "
                  f"(improvement {c['improvement']:+.3f}{interval})")
        for reason in gate.get("reasons", []):
            print(f"  - {reason}")
        for item in gate.get("slices", []):
            name = f"{item['field']}={item['value']}"
            verdict = f"gated, {'pass' if item['passed'] else 'FAIL'}" if item["gated"] else "too small: reported"
            print(f"  slice {name:<22} n={item['n']:<3} WER {item['baseline_wer']:.3f} -> "
                  f"{item['candidate_wer']:.3f} ({verdict})")
        churn = gate.get("churn") or {}
        if churn:
            print(f"  churn: {churn['fixed']} fixed, {churn['newly_broken']} newly broken, {churn['improved']} "
                  f"improved, {churn['worsened']} worsened, {churn['unchanged']} unchanged")
    for suite in (record.get("regression") or {}).get("results", []):
        print(f"regression suite {suite['name']} (n={suite['n']}): WER {suite['baseline_wer']:.3f} -> "
              f"{suite['wer']:.3f} ({suite['wer_degradation']:+.3f}), {suite['failed_samples']} failed samples: "
              f"{'pass' if suite['passed'] else 'FAIL'}")
    registry = _registry(install)
    print(f"registry '{install.config().mlflow.model_name}': "
          f"production {version_label(registry.production_version())}, "
          f"previous {version_label(registry.previous_version())}")
    online = record.get("online_test")
    if online:
        print(f"online test: {online['action']} -- {online['reason']}")
    for event in _store(install).deployment_history(install.config().mlflow.model_name):
        print(f"  {event.action:<9} {version_label(event.from_version)} -> {version_label(event.to_version)}: "
              f"{event.reason[:110]}")
    print(f"decision record: {install.root / 'tuneloop'}/storage/runs/*/decision.md")
    config = install.config()
    print("\nlook around:")
    print(f"  AIRFLOW_HOME={install.env['AIRFLOW_HOME']} TUNELOOP_HOME={install.env['TUNELOOP_HOME']} "
          f"TUNELOOP_CONFIG={DEMO_CONFIG} .venv/bin/airflow standalone     # Airflow UI, http://localhost:8080"
          " (the tuneloop page: http://localhost:8080/plugin/tuneloop)")
    print(f"  .venv/bin/mlflow ui --backend-store-uri {config.tracking_uri}     # MLflow UI, http://localhost:5000")
    print(f"  TUNELOOP_HOME={install.env['TUNELOOP_HOME']} TUNELOOP_CONFIG={DEMO_CONFIG} .venv/bin/tuneloop status")


def _decision(install: Installation) -> dict[str, Any]:
    records = sorted((install.root / "tuneloop" / "storage" / "runs").glob("*/decision.json"))
    if not records:
        raise RuntimeError(f"no decision record: the Airflow run failed early; see {install.root}")
    return json.loads(records[-1].read_text())


def _registry(install: Installation):
    from tuneloop.registry import ModelRegistry

    config = install.config()
    return ModelRegistry(config.tracking_uri, config.registry_uri, config.mlflow.model_name)


def _store(install: Installation):
    from tuneloop.store import ErrorCaseStore

    return ErrorCaseStore.from_config(install.config())


def _tuneloop(install: Installation, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "tuneloop.cli", *args], env=install.env, check=True)


def _say(step: str, text: str) -> None:
    print(f"\n== {step} {text}", flush=True)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


__all__ = ["read_split", "run_demo"]
