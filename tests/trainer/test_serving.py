"""The MLflow serving model: log from code, register, alias, load by alias, transcribe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tuneloop_trainer import SERVING_REQUIREMENTS, serving_path
from tuneloop_trainer.data import read_rows
from tuneloop_trainer.evaluate import transcribe_rows
from tuneloop_trainer.modeling import load_model, load_processor

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def test_serving_path_does_not_import_torch() -> None:
    code = ("import sys, tuneloop_trainer; p = tuneloop_trainer.serving_path(); "
            "assert p.endswith('serving.py'), p; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": ":".join(sys.path)})


def test_round_trip_through_the_registry(tracking: str, tiny_model_dir: Path, speech_dataset: Path) -> None:
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=serving_path(),
                                       artifacts={"model": str(tiny_model_dir)},
                                       pip_requirements=SERVING_REQUIREMENTS, registered_model_name="speech")
    MlflowClient().set_registered_model_alias("speech", "production", info.registered_model_version)

    served = mlflow.pyfunc.load_model("models:/speech@production")
    rows = read_rows(speech_dataset / "eval.jsonl")
    paths = [row["audio"] for row in rows]
    from_paths = served.predict(pd.DataFrame({"audio": paths}))
    from_bytes = served.predict(pd.DataFrame({"audio": [Path(p).read_bytes() for p in paths]}))

    assert isinstance(from_paths, list) and len(from_paths) == len(rows)
    assert all(isinstance(text, str) for text in from_paths)
    assert from_bytes == from_paths
    assert served.predict(paths[:1]) == from_paths[:1]
    # The served model decodes exactly like `evaluate`.
    local = transcribe_rows(rows, load_model(tiny_model_dir).eval(), load_processor(tiny_model_dir), batch_size=16)
    assert [p["hypothesis"] for p in local] == from_paths
