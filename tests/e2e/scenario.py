"""The e2e scenario: one isolated tuneloop + Airflow installation driven through its command lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Scenario:
    """One isolated installation: its own store, MLflow, storage and Airflow DB."""

    root: Path
    env: dict[str, str]

    def run(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        result = subprocess.run(list(args), env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        (self.root / "logs").mkdir(exist_ok=True)
        log = self.root / "logs" / f"{Path(args[2] if len(args) > 2 else args[0]).name}-{os.getpid()}.log"
        log.write_text(result.stdout + result.stderr)
        if check and result.returncode != 0:
            raise AssertionError(f"{args} exited {result.returncode}:\n{(result.stdout + result.stderr)[-6000:]}")
        return result

    def tuneloop(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "tuneloop.cli", *args, check=check)

    def airflow(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "airflow", *args, check=check)

    def api_get(self, path: str, method: str = "GET") -> dict[str, Any]:
        """Call an Airflow REST API path as a client would (in-process api-server on this installation's DB)."""
        env = {**self.env, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
               "AIRFLOW__API_AUTH__JWT_SECRET": "tuneloop-e2e-" + "s" * 64}
        result = subprocess.run([sys.executable, "-m", "tests.e2e.airflow_api", path, method], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=300, check=True)
        return json.loads(result.stdout.strip().splitlines()[-1])

    def dags_test_answering(self, conf: dict[str, Any], answers: dict[str, str], timeout: float = 900
                            ) -> list[dict[str, Any]]:
        """``airflow dags test finetune_weekly`` while a responder answers its approvals through the REST API
        (``answers``: task id -> Approve / Reject / timeout). Returns what the responder saw and sent."""
        env = {**self.env, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
               "AIRFLOW__API_AUTH__JWT_SECRET": "tuneloop-e2e-" + "s" * 64}
        (self.root / "logs").mkdir(exist_ok=True)
        dags_log = (self.root / "logs" / "dags-test-answering.log").open("w")
        dags_test = subprocess.Popen([sys.executable, "-m", "airflow", "dags", "test", "finetune_weekly", "-c",
                                      json.dumps(conf)], env=env, cwd=REPO, stdout=dags_log, stderr=subprocess.STDOUT)
        try:
            responder = subprocess.run(
                [sys.executable, "-m", "tests.e2e.hitl_responder", "finetune_weekly",
                 *(f"{task}={choice}" for task, choice in answers.items())],
                env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
            if responder.returncode != 0:
                raise AssertionError(f"responder failed:\n{responder.stderr[-4000:]}")
            dags_test.wait(timeout=timeout)
        finally:
            if dags_test.poll() is None:
                dags_test.kill()
            dags_log.close()
        return [json.loads(line) for line in responder.stdout.splitlines() if line.startswith("{")]

    def config(self):
        from tuneloop.config import load_config

        return load_config(env=self.env)


def write_cases(path: Path, speech: dict[str, Any]) -> Path:
    """Error cases as the serving system would send them: a wrong prediction and the human correction."""
    now = datetime.now(timezone.utc)
    rows = []
    for i, (job, text) in enumerate(zip(speech["jobs"], speech["texts"])):
        words = text.split()
        rows.append({"audio_path": str(job.out_path), "prediction": " ".join(words[:-1]) or "uh",
                     "correction": text, "error_types": ["deletion"], "error_score": 0.5, "model_version": "1",
                     "created_at": (now - timedelta(hours=len(rows) + 100 - i)).isoformat(),
                     "metadata": {"voice": job.voice, "condition": "clean"}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# A tiny run: few cases trigger it, two quick epochs, a small eval split and bootstrap.
TINY_RUN_ENV = {
    "TUNELOOP__TRIGGER__MIN_ERROR_CASES": "20",
    "TUNELOOP__TRIGGER__MIN_CORRECTED_CASES": "20",
    "TUNELOOP__TRIGGER__AUTO_APPROVE_FINETUNING": "true",
    "TUNELOOP__TRAINING__EPOCHS": "2",
    "TUNELOOP__TRAINING__BATCH_SIZE": "8",
    "TUNELOOP__TRAINING__LEARNING_RATE": "0.003",
    "TUNELOOP__DATASET__MIN_EVAL_CASES": "5",
    "TUNELOOP__VALIDATION__MIN_EVAL_SIZE": "5",
    "TUNELOOP__VALIDATION__BOOTSTRAP_RESAMPLES": "1000",
    # the tests write each inbox batch whole before the DAG runs: no need to wait for it to settle
    "TUNELOOP__INGEST__SETTLE_SECONDS": "0",
}
# A gate any strictly better candidate passes, without the evidence a 14-utterance eval split cannot give.
PERMISSIVE_GATE_ENV = {
    "TUNELOOP__VALIDATION__REQUIRE_SIGNIFICANCE": "false",
    "TUNELOOP__VALIDATION__MIN_WER_IMPROVEMENT": "-10",
    "TUNELOOP__VALIDATION__MIN_CER_IMPROVEMENT": "-10",
    "TUNELOOP__VALIDATION__MAX_WER_DEGRADATION_RATE": "1.0",
    "TUNELOOP__VALIDATION__REQUIRE_NO_MAJOR_DEGRADATION": "false",
}


def permissive_gate(scenario: Scenario) -> None:
    scenario.env.update(PERMISSIVE_GATE_ENV)
