"""Google Cloud credentials from an Airflow connection, for the core's clients (which take credentials, not
connection ids, so they stay Airflow-free)."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit


def compute_credentials(gcp_conn_id: str, api_endpoint: str | None = None) -> Any:
    """Credentials for the Compute Engine API (``tuneloop.backends.gce.compute_client``): the connection's, or
    anonymous when ``api_endpoint`` is on loopback (the tests' stand-in, which needs none and must get no token)."""
    if api_endpoint and is_loopback(api_endpoint):
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    from airflow.providers.google.common.hooks.base_google import GoogleBaseHook

    return GoogleBaseHook(gcp_conn_id=gcp_conn_id).get_credentials()


def is_loopback(endpoint: str) -> bool:
    """Whether ``endpoint`` (``http://127.0.0.1:8080``, ``localhost:8080``, ``[::1]:8080``) is this machine."""
    host = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a DNS name other than localhost
        return False
