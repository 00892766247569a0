"""tuneloop_trainer: trains and evaluates tuneloop's models (the only torch code in tuneloop).

Two tasks share one command line, spec, checkpoint and publishing machinery: ``speech-to-text`` (wav2vec2 CTC)
and ``chat`` (causal LMs, supervised fine-tuning on chat rows); see :mod:`tuneloop_trainer.tasks`.

Importing this package is cheap and torch-free: the registry code on the Airflow side calls
:func:`serving_path` to log the MLflow serving model without pulling in torch.
Commands: ``python -m tuneloop_trainer {train,evaluate,evaluate-jobs,init-model} --help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneloop_trainer.text import normalize_text, vocabulary

__all__ = ["CHAT_SERVING_REQUIREMENTS", "OPENAI_SERVING_REQUIREMENTS", "SERVING_REQUIREMENTS",
           "VERTEX_SERVING_REQUIREMENTS", "normalize_text", "serving_path", "serving_signature", "vocabulary"]

# openai-chat / vertex-chat: a chat model that OpenAI / Vertex AI serves (trained by the openai / vertex backend); no
# torch code, it lives here beside the other serving definitions because MLflow logs each as one file and Airflow's
# plugin loader would import it from plugins/.
SERVING_FILES = {"speech-to-text": "serving.py", "chat": "serving_chat.py", "openai-chat": "serving_openai.py",
                 "vertex-chat": "serving_vertex.py"}

# What a serving environment needs for serving.py (MLflow's pip_requirements); kept in step with requirements.txt.
SERVING_REQUIREMENTS = [
    "torch==2.13.0",
    "transformers==5.23.0",
    "numpy",
    "scipy==1.17.1",
    "soundfile==0.14.0",
    "pandas",
]

# What a serving environment needs for serving_chat.py; kept in step with requirements.txt (jinja2, which renders
# chat templates, comes with torch).
CHAT_SERVING_REQUIREMENTS = [
    "torch==2.13.0",
    "transformers==5.23.0",
    "numpy",
    "pandas",
]

# What a serving environment needs for serving_openai.py; kept in step with requirements.txt.
OPENAI_SERVING_REQUIREMENTS = [
    "openai==2.54.0",
    "numpy",
    "pandas",
]

VERTEX_SERVING_REQUIREMENTS = [
    "google-genai==2.34.0",
    "numpy",
    "pandas",
]


def serving_path(task: str = "speech-to-text") -> str:
    """Filesystem path of the task's MLflow "models from code" file for ``mlflow.pyfunc.log_model``:
    serving.py (speech-to-text), serving_chat.py (chat), serving_openai.py (openai-chat) or serving_vertex.py
    (vertex-chat)."""
    if task not in SERVING_FILES:
        raise ValueError(f"task must be one of {', '.join(SERVING_FILES)}, got {task!r}")
    return str(Path(__file__).with_name(SERVING_FILES[task]))


def serving_signature(task: str = "speech-to-text") -> Any:
    """The ``signature`` to pass to ``mlflow.pyfunc.log_model`` with :func:`serving_path` (imports mlflow).

    None for speech-to-text (no signature, as before). For the chat ones: no input schema (predict accepts several input
    shapes and checks them itself), the ``max_new_tokens`` param, default 64, and ``with_usage``, default false (true:
    a DataFrame of ``reply``, ``prompt_tokens``, ``completion_tokens`` instead of the replies, for a server that
    records each request's usage): MLflow drops, with a warning, every param that the logged signature does not
    declare.
    """
    if task not in SERVING_FILES:
        raise ValueError(f"task must be one of {', '.join(SERVING_FILES)}, got {task!r}")
    if task not in ("chat", "openai-chat", "vertex-chat"):
        return None
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    return ModelSignature(inputs=None, params=ParamSchema([ParamSpec("max_new_tokens", "long", 64),
                                                           ParamSpec("with_usage", "boolean", False)]))
