"""A torch-free MLflow "models from code" file for registry tests: upper-cases each input and appends the
``tag.txt`` found in the ``model`` artifact, so a test can tell which version answered through an alias."""

from pathlib import Path

import mlflow


class UpperModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.tag = Path(context.artifacts["model"], "tag.txt").read_text().strip()

    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        return [f"{text.upper()}:{self.tag}" for text in model_input]


mlflow.models.set_model(UpperModel())
