"""The data core stays importable without Airflow and without the GPU stack (house style rule 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
CORE_MODULES = (
    "tuneloop.config", "tuneloop.text", "tuneloop.history", "tuneloop.store", "tuneloop.audio", "tuneloop.triggering",
    "tuneloop.datasets", "tuneloop.predictions", "tuneloop.metrics", "tuneloop.stats", "tuneloop.gate",
    "tuneloop.registry", "tuneloop.deployment", "tuneloop.pipeline", "tuneloop.report", "tuneloop.post_deploy",
    "tuneloop.tracking", "tuneloop.inbox", "tuneloop.backends", "tuneloop.cli", "tuneloop.churn", "tuneloop.slices",
    "tuneloop.regression", "tuneloop.plots", "tuneloop.storage", "tuneloop.backends.gce", "tuneloop.backends.pod",
    "tuneloop.runs", "tuneloop.intake", "tuneloop.text_metrics", "tuneloop.text_gate", "tuneloop.store.schema",
    "tuneloop.store.database", "tuneloop.store.cases", "tuneloop.store.training_runs", "tuneloop.store.deployments",
    "tuneloop.store.suites", "tuneloop.store.inferences", "tuneloop.store.migrations",
    "tuneloop.store.store_statistics", "tuneloop.tasks", "tuneloop.tasks.speech_to_text", "tuneloop.tasks.chat",
    "tuneloop.tasks.chat_evaluation", "tuneloop.judge", "tuneloop.managed.reference", "tuneloop.managed.openai_jobs",
    "tuneloop.managed.chat_api", "tuneloop.managed.openai_training", "tuneloop.tokens", "tuneloop.openai_dataset",
    "tuneloop.managed.vertex_jobs", "tuneloop.managed.vertex_training", "tuneloop.managed.gemini_api",
    "tuneloop.vertex_dataset", "tuneloop.costs", "tuneloop.spent", "tuneloop.managed.run_files",
    "tuneloop.online_test", "tuneloop.serving.routing", "tuneloop.rollout", "tuneloop.store.served",
    "tuneloop.serving.router", "tuneloop.serving.server", "tuneloop.notifications", "tuneloop.overview",
    "tuneloop.dashboard",
)
FORBIDDEN = ("airflow", "torch", "transformers", "mlflow")


def test_core_modules_import_no_airflow_torch_or_mlflow():
    """One fresh interpreter imports all of them (one process keeps the test fast; the message names the culprit
    package, and ``python -X importtime`` finds the importer)."""
    code = (f"import json, sys, {', '.join(CORE_MODULES)}; "
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(FORBIDDEN)!r}))))")
    env = {**os.environ, "PYTHONPATH": str(PLUGINS)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                            check=True)
    assert json.loads(result.stdout) == []


def test_no_module_in_plugins_is_named_like_another_top_level_module():
    """Airflow's plugin loader imports every ``.py`` file under ``plugins/`` under its bare file name
    (``sys.modules["<name>"]``): a ``statistics.py`` anywhere in the package replaces the standard library's
    ``statistics`` in every Airflow process, and whatever imports it next (MLflow does) breaks; a ``hooks/openai.py``
    would replace the ``openai`` package the same way. So no file may share its name with a standard library
    module or with any installed top-level module."""
    import importlib.util

    def clashes(path: Path) -> bool:
        if path.stem in sys.stdlib_module_names:
            return True
        spec = importlib.util.find_spec(path.stem) if path.stem != "__init__" else None
        if spec is None:
            return False
        places = [spec.origin] if spec.origin else list(spec.submodule_search_locations or ())
        return any(PLUGINS.parent not in Path(place).parents or "site-packages" in Path(place).parts
                   for place in places)  # an installed module, not this repository's tests or include/

    assert sorted(str(path.relative_to(PLUGINS)) for path in PLUGINS.rglob("*.py") if clashes(path)) == []
