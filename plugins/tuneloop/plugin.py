"""The Airflow plugin: registers tuneloop's operator extra links so the UI can show them."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from tuneloop.operators.links import MlflowRunLink


class TuneloopPlugin(AirflowPlugin):
    name = "tuneloop"
    operator_extra_links = [MlflowRunLink()]
