"""The Airflow plugin: tuneloop's operator extra links, and its status page in the Airflow UI.

The page is a FastAPI app (:mod:`tuneloop.web`) the API server mounts at ``/tuneloop``, shown inside the UI by an
external view with a ``url_route``: a "tuneloop" entry in the navigation opens it in an iframe at
``/plugin/tuneloop``, under Airflow's login.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from tuneloop.operators.links import MlflowRunLink
from tuneloop.web import URL_PREFIX, app


class TuneloopPlugin(AirflowPlugin):
    name = "tuneloop"
    operator_extra_links = [MlflowRunLink()]
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "tuneloop status page"}]
    external_views = [{"name": "tuneloop", "href": URL_PREFIX.lstrip("/") + "/", "destination": "nav",
                       "url_route": "tuneloop", "nav_top_level": True}]
