"""A torch-free MLflow "models from code" chat model for serving tests: answers each conversation with its last
user turn upper-cased and the ``tag.txt`` of its ``model`` artifact, so a test can tell which version answered."""

from pathlib import Path

import mlflow


class EchoModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.tag = Path(context.artifacts["model"], "tag.txt").read_text().strip()

    def predict(self, context, model_input, params=None):
        return [f"{conversation[-1]['content'].upper()}:{self.tag}" for conversation in model_input]


mlflow.models.set_model(EchoModel())
