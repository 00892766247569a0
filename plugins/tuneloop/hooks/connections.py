"""Airflow connections for core modules that must not import Airflow themselves (e.g. the judge's endpoint)."""

from __future__ import annotations

from typing import Any


def airflow_connection(conn_id: str) -> Any | None:
    """The Airflow connection, or None when Airflow is not installed or the connection is not defined."""
    try:
        from airflow.sdk import Connection
        from airflow.sdk.exceptions import AirflowNotFoundException
    except ImportError:
        return None
    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
