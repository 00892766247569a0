"""OpenAI clients from an Airflow connection (the OpenAI provider's ``OpenAIHook``), for the managed backend.

The key and the endpoint come only from the connection (type ``openai``: key in the password or
``extra.openai_client_kwargs.api_key``, base URL in the host or ``extra.openai_client_kwargs.base_url``): never
from tuneloop's configuration, a spec, a log line or an MLflow param. The core modules take the client this
returns, so they stay Airflow-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openai import OpenAI

    from tuneloop.config import OpenAIFineTuningConfig


class OpenAIConnectionError(RuntimeError):
    """The connection is missing or carries no key; the message says where the key goes."""


def openai_client(settings: OpenAIFineTuningConfig) -> OpenAI:
    """A client for ``settings.conn_id`` with the backend's timeout and retries (the client retries 408, 409,
    429, 5xx and connection errors with exponential backoff, honouring ``Retry-After``)."""
    from airflow.providers.openai.hooks.openai import OpenAIHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        client = OpenAIHook(conn_id=settings.conn_id).get_conn()
    except AirflowNotFoundException:
        raise OpenAIConnectionError(_missing(settings.conn_id)) from None
    except Exception as error:  # the client refuses to be built without a key (openai.OpenAIError)
        raise OpenAIConnectionError(f"{_missing(settings.conn_id)} ({type(error).__name__}: {error})") from None
    return client.with_options(timeout=settings.request_timeout_seconds, max_retries=settings.max_retries)


def serving_config(settings: OpenAIFineTuningConfig) -> dict[str, Any]:
    """What the managed model's pyfunc needs to call the API (``model_config`` at load time: in memory only)."""
    client = openai_client(settings)
    return {"api_key": client.api_key, "base_url": str(client.base_url), "max_retries": settings.max_retries,
            "timeout": settings.request_timeout_seconds}


def _missing(conn_id: str) -> str:
    return (f"Airflow connection {conn_id!r} (type openai) is missing or has no API key: create it with the key "
            f"as its password (and the endpoint as its host, if not api.openai.com), e.g. airflow connections add "
            f"{conn_id} --conn-type openai --conn-password <key>")
