"""End-to-end fixtures: real espeak-ng audio, a tiny real model, a fresh tuneloop + Airflow home per scenario.

Everything runs for real: the ``tuneloop`` CLI and ``airflow dags test`` as subprocesses (SQLite metadata DB,
the repo's dags/ and plugins/), the trainer as a subprocess, MLflow on a local sqlite store.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.e2e.scenario import TINY_RUN_ENV, Scenario

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


@pytest.fixture(scope="session")
def damaged_model(speech) -> Path:
    """The shipped baseline with its CTC head re-initialised. Fine-tuning (head trainable) repairs it within a
    few steps, so the deploy and rollback paths run on a real, measurable improvement, not a rigged gate."""
    import torch
    from safetensors.torch import load_file, save_file
    from tuneloop_demo.baseline import shipped_baseline

    target = speech["root"] / "damaged_model"
    shutil.copytree(shipped_baseline(), target)
    weights = load_file(target / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    for name in [n for n in weights if n.startswith("lm_head.")]:
        weights[name] = torch.randn(weights[name].shape, generator=generator) * 0.5
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


@pytest.fixture(scope="session")
def migrated_airflow_db(tmp_path_factory, airflow_env) -> Path:
    """An Airflow metadata DB migrated once per session; each installation starts from a copy (saves a minute)."""
    home = tmp_path_factory.mktemp("airflow_template")
    env = {**airflow_env, "AIRFLOW_HOME": str(home), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db"}
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    return home / "airflow.db"


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory) -> Path:
    """An empty MLflow tracking DB with its schema migrated once per session (copied per installation)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def new_installation(root: Path, airflow_env: dict[str, str], airflow_db: Path, mlflow_db: Path,
                     **env: str) -> Scenario:
    """A fresh, empty installation under ``root`` (SQLite Airflow DB, store, MLflow: copies of the migrated
    templates) with the tiny-run settings and ``env`` on top; nothing registered yet."""
    scenario = Scenario(root, {
        **airflow_env,
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{root}/airflow/airflow.db",
        "TUNELOOP_HOME": str(root / "tuneloop"),
        **TINY_RUN_ENV,
        "TUNELOOP__SCHEDULE__SENSOR_POKE_SECONDS": "1",
        "TUNELOOP__SCHEDULE__SENSOR_TIMEOUT_MINUTES": "0.05",
        **env,
    })
    (root / "airflow").mkdir()
    (root / "tuneloop").mkdir()
    shutil.copy2(airflow_db, root / "airflow" / "airflow.db")
    shutil.copy2(mlflow_db, root / "tuneloop" / "mlflow.db")
    return scenario


@pytest.fixture
def install(tmp_path, airflow_env, migrated_airflow_db, migrated_mlflow_db) -> Callable[[Path], Scenario]:
    """``install(model_dir)``: a fresh installation (SQLite Airflow DB, store, MLflow) with ``model_dir``
    bootstrapped as production version 1."""

    def make(model_dir: Path) -> Scenario:
        scenario = new_installation(tmp_path, airflow_env, migrated_airflow_db, migrated_mlflow_db)
        scenario.tuneloop("bootstrap", str(model_dir), "--reason", "e2e baseline")
        return scenario

    return make


@pytest.fixture
def scenario(install, speech) -> Scenario:
    """An installation whose production model is an untrained tiny model (no fine-tuning can pass the gate)."""
    return install(speech["base_model"])
