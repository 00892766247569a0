"""End-to-end fixtures: real espeak-ng audio, a tiny real model, a fresh tuneloop + Airflow home per scenario.

Everything runs for real: the ``tuneloop`` CLI and ``airflow dags test`` as subprocesses (SQLite metadata DB,
the repo's dags/ and plugins/), the trainer as a subprocess, MLflow on a local sqlite store.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from tests.e2e.scenario import Scenario

VOICES = ("en-us", "en-gb+f2")
N_UTTERANCES = 48


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> dict[str, Any]:
    """48 real utterances (two espeak-ng voices) and a tiny randomly initialised CTC model."""
    from tuneloop_demo.corpus import sentences
    from tuneloop_demo.speech import SynthesisJob, espeak_available, synthesize_all

    if not espeak_available():
        pytest.fail("espeak-ng is not installed: `make setup` installs it")
    root = tmp_path_factory.mktemp("speech")
    texts = sentences(N_UTTERANCES, seed=7)
    jobs = [SynthesisJob(text=t, voice=VOICES[i % 2], out_path=root / "audio" / f"utt{i:03d}.wav")
            for i, t in enumerate(texts)]
    synthesize_all(jobs)
    base = root / "base_model"
    subprocess.run([sys.executable, "-m", "tuneloop_trainer", "init-model", "--output", str(base)], check=True,
                   capture_output=True)
    return {"root": root, "texts": texts, "jobs": jobs, "base_model": base}


@pytest.fixture
def scenario(tmp_path, speech, airflow_env) -> Scenario:
    """A fresh installation (SQLite Airflow DB, store, MLflow) with the tiny model bootstrapped as production."""
    env = {
        **airflow_env,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/airflow/airflow.db",
        "TUNELOOP_HOME": str(tmp_path / "tuneloop"),
        "TUNELOOP__TRIGGER__MIN_ERROR_CASES": "20",
        "TUNELOOP__TRIGGER__MIN_CORRECTED_CASES": "20",
        "TUNELOOP__TRIGGER__AUTO_APPROVE_FINETUNING": "true",
        "TUNELOOP__TRAINING__EPOCHS": "1",
        "TUNELOOP__TRAINING__BATCH_SIZE": "8",
        "TUNELOOP__TRAINING__LEARNING_RATE": "0.001",
        "TUNELOOP__DATASET__MIN_EVAL_CASES": "5",
        "TUNELOOP__VALIDATION__MIN_EVAL_SIZE": "5",
        "TUNELOOP__VALIDATION__BOOTSTRAP_RESAMPLES": "1000",
        "TUNELOOP__SCHEDULE__SENSOR_POKE_SECONDS": "1",
        "TUNELOOP__SCHEDULE__SENSOR_TIMEOUT_MINUTES": "0.05",
    }
    scenario = Scenario(tmp_path, env)
    scenario.airflow("db", "migrate")
    scenario.tuneloop("bootstrap", str(speech["base_model"]), "--reason", "e2e baseline")
    return scenario


