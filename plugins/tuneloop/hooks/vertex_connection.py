"""Vertex AI clients from an Airflow connection (the google provider's ``GenAIGenerativeModelHook``), for the
``vertex`` managed backend.

Credentials come only from the connection (type google_cloud_platform: a key file or its JSON, ADC, or a chain of
accounts to impersonate), never from tuneloop's configuration, a spec, a log line or an MLflow param. The hook's
own client has Google's endpoint, no timeout and no retries; this one adds ``training.vertex``'s endpoint (a
private endpoint, or the tests' stand-in), request timeout and retries with exponential backoff. The core modules
take the client this returns, so they stay Airflow-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.google.cloud.hooks.gen_ai import GenAIGenerativeModelHook

if TYPE_CHECKING:
    from google.genai import Client

    from tuneloop.config import VertexTuningConfig

RETRY_STATUS = (408, 429, 500, 502, 503, 504)


class VertexConnectionError(RuntimeError):
    """The connection is missing or names no project; the message says what to set."""


class VertexTuningHook(GenAIGenerativeModelHook):
    """The provider's GenAI hook, with the endpoint, timeout and retries of ``training.vertex``."""

    def __init__(self, settings: VertexTuningConfig, **kwargs: Any) -> None:
        super().__init__(gcp_conn_id=settings.conn_id, **kwargs)
        self.settings = settings

    def get_genai_client(self, project_id: str, location: str) -> Client:
        from google import genai

        return genai.Client(vertexai=True, project=project_id, location=location,
                            credentials=self.get_credentials(), http_options=http_options(self.settings))

    def client(self) -> Client:
        """A client for ``training.vertex``'s project (else the connection's) and location."""
        project = self.settings.project_id or self.project_id
        if not project:
            raise VertexConnectionError(
                f"training.vertex.project_id is not set and Airflow connection {self.settings.conn_id!r} names no "
                f"project: set one of them")
        return self.get_genai_client(project_id=project, location=self.settings.location)


def http_options(settings: VertexTuningConfig) -> Any:
    from google.genai import types

    return types.HttpOptions(
        base_url=settings.api_endpoint, timeout=int(settings.request_timeout_seconds * 1000),
        retry_options=types.HttpRetryOptions(attempts=settings.max_retries + 1, initial_delay=1.0, max_delay=60,
                                             http_status_codes=list(RETRY_STATUS)))


def vertex_client(settings: VertexTuningConfig) -> Client:
    """The Vertex AI client of ``training.vertex``'s connection; a missing connection is a clear error."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return VertexTuningHook(settings).client()
    except AirflowNotFoundException:
        raise VertexConnectionError(
            f"Airflow connection {settings.conn_id!r} (type google_cloud_platform) is missing: create it with a "
            f"service account key (extra key_path or keyfile_dict) or leave it empty to use the machine's "
            f"credentials (ADC)") from None


def serving_config(settings: VertexTuningConfig) -> dict[str, Any]:
    """What the tuned model's pyfunc needs to call its endpoint (``model_config`` at load time: in memory only): a
    short-lived access token from the connection's credentials, never the key itself."""
    from google.auth.transport.requests import Request

    hook = VertexTuningHook(settings)
    credentials = hook.get_credentials()
    if not credentials.valid:
        credentials.refresh(Request())
    return {"access_token": credentials.token, "project": settings.project_id or hook.project_id,
            "location": settings.location, "base_url": settings.api_endpoint or "",
            "max_retries": settings.max_retries, "timeout": settings.request_timeout_seconds}
