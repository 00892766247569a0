"""tuneloop_trainer: trains and evaluates tuneloop's speech-to-text models (the only torch code in tuneloop).

Importing this package is cheap and torch-free: the registry code on the Airflow side calls
:func:`serving_path` to log the MLflow serving model without pulling in torch.
Commands: ``python -m tuneloop_trainer {train,evaluate,init-model} --help``.
"""

from __future__ import annotations

from pathlib import Path

from tuneloop_trainer.text import normalize_text, vocabulary

__all__ = ["SERVING_REQUIREMENTS", "normalize_text", "serving_path", "vocabulary"]

# What a serving environment needs for serving.py (MLflow's pip_requirements); kept in step with requirements.txt.
SERVING_REQUIREMENTS = [
    "torch==2.13.0",
    "transformers==5.23.0",
    "numpy",
    "scipy==1.17.1",
    "soundfile==0.14.0",
    "pandas",
]


def serving_path() -> str:
    """Filesystem path of serving.py, the MLflow "models from code" file for ``mlflow.pyfunc.log_model``."""
    return str(Path(__file__).with_name("serving.py"))
