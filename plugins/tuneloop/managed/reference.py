"""A model that lives at a provider (an OpenAI fine-tuned model id, a Vertex AI endpoint), stored as a model
directory.

Model directories are what the pipeline moves around: the base model published into the run's folder, the
trainer's ``training/model``, a registered version's artifacts. A managed model's directory holds one file,
``managed_model.json``: the provider, the model id to call, and where it came from. So a production version
trained by OpenAI is downloaded, fine-tuned further, evaluated, registered and rolled back like any other, and
no weights ever leave the provider.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tuneloop import storage
from tuneloop.storage import StoragePath

if TYPE_CHECKING:
    from tuneloop.tasks import Serving

MANAGED_FILE = "managed_model.json"
# What the managed pyfunc takes at load time (``model_config``), logged with these empty defaults so that MLflow
# lets a loader set them: the credentials themselves are only ever given in memory.
SERVING_CONFIG_KEYS: dict[str, dict[str, Any]] = {
    "openai": {"api_key": "", "base_url": "", "max_retries": 5, "timeout": 60.0},
    "vertex": {"access_token": "", "project": "", "location": "", "base_url": "", "max_retries": 5, "timeout": 60.0},
}
# How long a managed model's load-time credentials serve before a long-lived server loads it again: a Vertex
# access token lasts an hour (an OpenAI key does not expire).
CREDENTIALS_RENEW_SECONDS: dict[str, float] = {"vertex": 30 * 60}
Provider = Literal["openai", "vertex"]
PROVIDERS: tuple[Provider, ...] = ("openai", "vertex")


class ManagedModelError(ValueError):
    """A model directory's managed_model.json is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class ManagedModel:
    """``model``: the id the provider serves (``gpt-4.1-mini-2025-04-14``, ``ft:gpt-4.1-mini-...:suffix:id``,
    ``gemini-2.5-flash``, a Vertex endpoint ``projects/.../endpoints/...``); ``base_model``: what it was fine-tuned
    from (None for a base model); ``job_id``: the job that made it; ``resource``: the provider's model resource
    when it is not what is served (Vertex: the tuned model, which a later run tunes further)."""

    provider: Provider
    model: str
    base_model: str | None = None
    job_id: str | None = None
    resource: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def managed_tags(model: ManagedModel) -> dict[str, str]:
    """The model as registry version tags (retention, serving and the online test's cost read them back)."""
    optional = {"provider_job_id": model.job_id, "provider_base_model": model.base_model}
    return {"provider": model.provider, "provider_model": model.model,
            **{key: value for key, value in optional.items() if value}}


def managed_from_tags(tags: Mapping[str, str]) -> ManagedModel | None:
    """A version's managed model from its tags (:func:`managed_tags`); None for a self-hosted version."""
    if tags.get("provider") not in PROVIDERS or not tags.get("provider_model"):
        return None
    return ManagedModel(provider=tags["provider"], model=tags["provider_model"],  # type: ignore[arg-type]
                        base_model=tags.get("provider_base_model"), job_id=tags.get("provider_job_id"))


def is_managed(model_dir: StoragePath) -> bool:
    return (model_dir / MANAGED_FILE).exists()


def write_managed(model_dir: StoragePath, model: ManagedModel) -> None:
    storage.write_json(model_dir / MANAGED_FILE, model.to_dict())


def read_managed(model_dir: StoragePath | Path) -> ManagedModel:
    path = model_dir / MANAGED_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManagedModelError(f"{storage.uri(path)}: missing; this directory holds no managed model") from None
    except json.JSONDecodeError as error:
        raise ManagedModelError(f"{storage.uri(path)}: not JSON ({error})") from None
    if not isinstance(data, dict) or data.get("provider") not in PROVIDERS or not isinstance(data.get("model"), str):
        raise ManagedModelError(f"{storage.uri(path)}: needs provider (one of {', '.join(PROVIDERS)}) and model "
                                f"(a string), got {data!r}")
    return ManagedModel(provider=data["provider"], model=data["model"], base_model=data.get("base_model"),
                        job_id=data.get("job_id"), resource=data.get("resource"))


def serving_credentials(provider: str, training: Any) -> dict[str, Any]:
    """What loading a managed version's pyfunc needs besides its artifacts (``model_config``, kept in memory): the
    API's credentials from the Airflow connection that ``training.<provider>`` names (the provider's
    ``tuneloop.hooks.<provider>_connection.serving_config``)."""
    import importlib

    if provider not in PROVIDERS:
        raise ManagedModelError(f"provider: one of {', '.join(PROVIDERS)}, got {provider!r}")
    connection = importlib.import_module(f"tuneloop.hooks.{provider}_connection")
    return connection.serving_config(getattr(training, provider))


def served_params(provider: str, training: Any) -> dict[str, Any]:
    """The predict params that keep a managed version's served replies as long as its evaluated ones (it was
    evaluated with ``training.<provider>.max_reply_tokens``, not the pyfunc's default)."""
    return {"max_new_tokens": getattr(training, provider).max_reply_tokens}


def serving(provider: Provider) -> Serving:
    """How a managed model version is served: a pyfunc calling the provider's chat API with the model id (no
    credentials inside; they are given at load time)."""
    from tuneloop.tasks import Serving
    from tuneloop_trainer import (OPENAI_SERVING_REQUIREMENTS, VERTEX_SERVING_REQUIREMENTS, serving_path,
                                  serving_signature)

    kind, requirements = {"openai": ("openai-chat", OPENAI_SERVING_REQUIREMENTS),
                          "vertex": ("vertex-chat", VERTEX_SERVING_REQUIREMENTS)}[provider]
    return Serving(serving_path(kind), list(requirements), serving_signature(kind),
                   model_config=dict(SERVING_CONFIG_KEYS[provider]), request_params={"with_usage": True})
