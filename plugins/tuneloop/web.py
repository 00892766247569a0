"""The tuneloop page inside the Airflow UI: a FastAPI app the plugin mounts on the API server at ``/tuneloop``.

Airflow authenticates none of a plugin app's routes by itself, so every route here asks Airflow's auth manager who
is calling (``get_user``: the UI's session cookie or a bearer token) and what they may see: a model is shown only
to users who may read its DAG (``finetune_weekly`` / ``finetune_weekly_<name>``), a rollback only to those who may
run its rollback DAG (``finetune_rollback[_<name>]``). An anonymous browser is sent to Airflow's login, an anonymous script gets 401. The data is
:func:`tuneloop.overview.collect_status`'s, the same as ``tuneloop status --json``; what only Airflow knows (the
steps a run is on, the next scheduled run) is looked up in Airflow's database, a training's progress in MLflow.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from tuneloop import dashboard
from tuneloop.config import TuneloopConfig, load_config
from tuneloop.overview import Lookups, collect_status, compare_versions
from tuneloop.runs import WEEKLY_DAG_ID

ROLLBACK_DAG_ID = "finetune_rollback"  # dags/finetune_rollback.py: who may run it may roll back here

log = logging.getLogger(__name__)

URL_PREFIX = "/tuneloop"
WAITING_STATES = ("queued", "running", "deferred", "up_for_reschedule", "up_for_retry", "scheduled")

app = FastAPI(title="tuneloop", description="tuneloop's status page and its JSON (Airflow plugin)",
              docs_url=None, redoc_url=None, openapi_url=None)


@lru_cache(maxsize=1)
def loaded_config() -> TuneloopConfig:
    """The API server's tuneloop configuration (``TUNELOOP_CONFIG``), read once: a change needs a restart, as
    every Airflow plugin does."""
    return load_config()


_STORE_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _database() -> Any:
    """One store (one connection pool, its schema checked once) for the API server's requests."""
    from tuneloop.store import ErrorCaseStore

    return ErrorCaseStore.from_config(loaded_config())


def _store(name: str) -> Any:
    """Model ``name``'s view of the store, over the shared connections."""
    with _STORE_LOCK:  # concurrent first requests open the database once
        database = _database()
    model = loaded_config().for_model(name)
    return database.for_model(model.model_key, model.task)


BEARER = HTTPBearer(auto_error=False)


async def current_user(request: Request, bearer: HTTPAuthorizationCredentials | None = Depends(BEARER)) -> Any:
    """The caller as Airflow's auth manager knows them (Airflow's own ``get_user``: a bearer token, else the UI's
    session cookie); 401 without either, 403 for a token that does not verify."""
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request, None, bearer)


async def page_user(request: Request, bearer: HTTPAuthorizationCredentials | None = Depends(BEARER)) -> Any:
    """Like :func:`current_user`, but a browser without a session is sent to Airflow's login page and back."""
    try:
        return await current_user(request, bearer)
    except HTTPException as error:
        if error.status_code not in (401, 403):  # 403: a token that no longer verifies (expired key): log in again
            raise
        from airflow.api_fastapi.app import get_auth_manager

        raise _Redirect(get_auth_manager().get_url_login(next_url=str(request.url))) from None


class _Redirect(Exception):
    """Raised from a dependency to answer with a redirect (a dependency cannot return a response)."""

    def __init__(self, url: str) -> None:
        self.url = url


@app.exception_handler(_Redirect)
async def _redirect(request: Request, error: _Redirect) -> RedirectResponse:
    return RedirectResponse(error.url, status_code=303)


def may(user: Any, dag_id: str, *, start_runs: bool = False) -> bool:
    """Whether ``user`` may read ``dag_id`` (or, ``start_runs``, create its runs) by the auth manager's rules: a
    model is seen by whoever may read its weekly DAG, rolled back by whoever may run its rollback DAG."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    if start_runs:
        return get_auth_manager().is_authorized_dag(method="POST", access_entity=DagAccessEntity.RUN,
                                                    details=DagDetails(id=dag_id), user=user)
    return get_auth_manager().is_authorized_dag(method="GET", details=DagDetails(id=dag_id), user=user)


def visible_models(user: Any) -> dict[str, TuneloopConfig]:
    """The models whose weekly DAGs ``user`` may read (of the others, not even their number is told)."""
    models = {model.name: model for model in loaded_config().each_model()}
    return {name: model for name, model in models.items() if may(user, model.dag_id(WEEKLY_DAG_ID))}


def model_for(user: Any, name: str) -> TuneloopConfig:
    """The model ``name`` if ``user`` may read it; 404 otherwise (whether it exists is not told either)."""
    shown = visible_models(user)
    if name not in shown:
        raise HTTPException(status_code=404, detail=f"no model {name!r} visible to you")
    return shown[name]


def airflow_lookups(config: TuneloopConfig) -> Lookups:
    """What the page asks Airflow's database (a run's steps, the next scheduled run) and MLflow (training steps)."""
    return Lookups(steps=waiting_tasks, next_run=next_run,
                   training=lambda run_id: _logged_training(config, run_id))


def waiting_tasks(dag_id: str, run_id: str) -> list[str]:
    """The DAG run's tasks now queued, running or waiting (deferred, rescheduled, up for retry); a mapped task
    once, with how many of its instances are in that state."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        rows = session.execute(select(TaskInstance.task_id, TaskInstance.state, func.count()).where(
            TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id,
            TaskInstance.state.in_(WAITING_STATES)).group_by(TaskInstance.task_id, TaskInstance.state)
            .order_by(TaskInstance.task_id)).all()
    return [f"{task} ({state}{f' x{n}' if n > 1 else ''})" for task, state, n in rows]


def next_run(dag_id: str) -> datetime | None:
    """When the scheduler will create the DAG's next scheduled run (None: paused, or no schedule)."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.execute(select(DagModel.is_paused, DagModel.next_dagrun_create_after)
                              .where(DagModel.dag_id == dag_id)).first()
    return None if row is None or row.is_paused else row.next_dagrun_create_after


MLFLOW_LOOKUP_S = 5.0  # an MLflow that does not answer costs the page its progress bar, not the page
_MLFLOW = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tuneloop-mlflow")


def _logged_training(config: TuneloopConfig, run_id: str) -> Any:
    from tuneloop.tracking import logged_training

    try:
        return _MLFLOW.submit(logged_training, config, run_id).result(timeout=MLFLOW_LOOKUP_S)
    except TimeoutError:
        raise TimeoutError(f"MLflow did not answer within {MLFLOW_LOOKUP_S:g} s") from None


def statuses(user: Any) -> dict[str, dict[str, Any]]:
    """Each visible model's status; a model whose status cannot be read shows the error, the others still show."""
    found = {}
    for name, model in visible_models(user).items():
        try:
            found[name] = collect_status(model, store=_store(name), lookups=airflow_lookups(model))
        except Exception as error:  # noqa: BLE001 - one model's broken store is not every model's page
            log.exception("status of model %s failed", name)
            found[name] = {"error": f"{type(error).__name__}: {error}"}
    return found


def roll_back_rights(user: Any) -> dict[str, bool]:
    """Per visible model, whether ``user`` gets the rollback form (the API checks again when it is sent)."""
    return {name: may(user, model.dag_id(ROLLBACK_DAG_ID), start_runs=True)
            for name, model in visible_models(user).items()}


@app.get("/", response_class=HTMLResponse)
def status_page(user: Any = Depends(page_user)) -> HTMLResponse:
    return HTMLResponse(dashboard.status_page(statuses(user), can_roll_back=roll_back_rights(user)))


@app.get("/api/status")
def status_json(user: Any = Depends(current_user)) -> JSONResponse:
    """``tuneloop status --json`` of every model the caller may see: ``{"models": {name: status}}``."""
    return JSONResponse(_json({"models": statuses(user)}))


@app.get("/compare", response_class=HTMLResponse)
def compare_page(model: str, a: str = Query(..., max_length=100), b: str = Query(..., max_length=100),
                 user: Any = Depends(page_user)) -> HTMLResponse:
    config = model_for(user, model)
    return HTMLResponse(dashboard.comparison_page(compare_versions(config, _store(model), a, b)))


@app.get("/api/compare")
def compare_json(model: str, a: str = Query(..., max_length=100), b: str = Query(..., max_length=100),
                 user: Any = Depends(current_user)) -> JSONResponse:
    config = model_for(user, model)
    return JSONResponse(_json(compare_versions(config, _store(model), a, b)))


@app.get("/decision", response_class=HTMLResponse)
def decision_page(model: str, run_id: str, user: Any = Depends(page_user)) -> HTMLResponse:
    from tuneloop.report import to_markdown

    return HTMLResponse(dashboard.decision_page(model, run_id, to_markdown(_record(user, model, run_id))))


@app.get("/api/decision")
def decision_json(model: str, run_id: str, user: Any = Depends(current_user)) -> JSONResponse:
    return JSONResponse(_json(_record(user, model, run_id)))


def _record(user: Any, model: str, run_id: str) -> dict[str, Any]:
    """The whole decision record of a run of a visible model, read where its report wrote it."""
    from tuneloop import storage
    from tuneloop.store import NotFound

    config = model_for(user, model)
    try:
        location = _store(model).training_run(run_id).summary.get("record")
    except NotFound:
        location = None
    if not location:
        raise HTTPException(status_code=404, detail=f"run {run_id!r} of {model!r} has no decision record")
    try:
        return storage.read_json(storage.storage_root(location, Path(location), config.storage_conn_id))
    except FileNotFoundError:
        raise HTTPException(status_code=404, detail=f"the decision record of run {run_id!r} is gone from "
                            f"{location}") from None


class Rollback(BaseModel):
    """A rollback as the page asks for it: with the production (and canary) the person saw, so that a second
    click, or a page left open while production moved, does not roll back what nobody looked at."""

    model: str = Field(max_length=200)
    reason: str = Field(min_length=3, max_length=1000)
    production: str | None = Field(max_length=100)
    canary: str | None = Field(None, max_length=100)
    to_version: str | None = Field(None, max_length=100)


@app.post("/api/rollback")
def rollback(body: Rollback, user: Any = Depends(current_user)) -> JSONResponse:
    """Production back to the previous version (or ``to_version``), or a running canary ended, in the caller's
    name, if production (and the canary) are still what the caller saw (409 otherwise). JSON only: a page of
    another site cannot send it with the caller's session (the session cookie is SameSite=lax, and FastAPI reads a
    body as JSON only when its content type says so, which a cross-site form or simple request cannot)."""
    from tuneloop.deployment import DeploymentError, rollback as roll_back
    from tuneloop.history import version_label
    from tuneloop.registry import ModelRegistry
    from tuneloop.rollout import canary_from_history

    config = model_for(user, body.model)
    dag_id = config.dag_id(ROLLBACK_DAG_ID)
    if not may(user, dag_id, start_runs=True):
        raise HTTPException(status_code=403, detail=f"you may not run {dag_id}: no rollback")
    registry = ModelRegistry(config.tracking_uri, config.registry_uri, config.mlflow.model_name)
    store = _store(body.model)
    canary = canary_from_history(store.deployment_history(config.mlflow.model_name))
    seen = (registry.production_version(), canary["version"] if canary else None)
    if seen != (body.production, body.canary):
        raise HTTPException(status_code=409, detail=(
            f"production is {version_label(seen[0])}" + (f" with canary {version_label(seen[1])}" if seen[1] else "")
            + " now, not what the page showed: reload it and look again"))
    try:
        event = roll_back(registry, store, to_version=body.to_version, reason=body.reason,
                          actor=f"ui:{user.get_name()}")
    except DeploymentError as error:
        raise HTTPException(status_code=409, detail=str(error)) from error
    if event.action == "canary_end":
        message = f"canary {version_label(event.details.get('version'))} ended: all traffic back to production"
    else:
        message = f"production {version_label(event.from_version)} → {version_label(event.to_version)}"
    log.info("%s rolled back %s: %s (%s)", user.get_name(), body.model, message, body.reason)
    return JSONResponse({"message": message, "event": _json(event.to_dict())})


def _json(data: Any) -> Any:
    """Plain JSON values (datetimes as ISO strings), as ``tuneloop status --json`` prints them."""
    import json

    return json.loads(json.dumps(data, default=str))
