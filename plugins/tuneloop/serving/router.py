"""A router any serving process can embed: each request answered by the version the traffic split picks, the models
loaded through their MLflow aliases, every served request recorded in the store.

The split comes from the registry (``production``; ``canary`` with its ``canary_percent`` tag, see
:mod:`tuneloop.rollout`) and is read again every ``refresh_seconds`` (when the registry cannot be read, the split
read before keeps serving), so an alias that moves -- a canary started,
promoted or rolled back, a rollback of production -- is picked up without a restart; a version no longer in the
split is unloaded. Routing needs no shared state (:mod:`tuneloop.serving.routing`), so routers scale out
side by side, all writing to the same store (PostgreSQL at scale).

Each request is recorded (:meth:`tuneloop.store.ServedRecords.record_served`) before its answer is returned: an
answer the caller received is never missing from the online test. A chat model's token usage is recorded: the
router passes the serving's ``request_params`` (``with_usage``), and the model answers a DataFrame of ``reply``,
``prompt_tokens`` and ``completion_tokens`` (a version logged before that param existed answers its replies only,
recorded without usage, and MLflow logs a warning about the unknown param at each request).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tuneloop.serving.routing import Arm, TrafficSplit
from tuneloop.store.served import ServedRecords, ServedRequest

log = logging.getLogger(__name__)


def registry_loader(registry: Any, training: Any) -> Callable[[str], Any]:
    """Load a version as serving must: through the registry's pyfunc loader, a managed version (its ``provider``
    tags) with the API's credentials from the Airflow connection its provider's ``training`` settings name, loaded
    again before credentials that expire do (:class:`Renewing`), and answering with the reply length it was
    evaluated with."""
    from tuneloop.managed.reference import (CREDENTIALS_RENEW_SECONDS, managed_from_tags, served_params,
                                            serving_credentials)

    def load(version: str) -> Any:
        managed = managed_from_tags(registry.get_version(version).tags)
        if managed is None:
            return registry.load_pyfunc(version)

        def fresh() -> Any:
            return registry.load_pyfunc(version, serving_credentials(managed.provider, training))

        renew = CREDENTIALS_RENEW_SECONDS.get(managed.provider)
        return WithParams(Renewing(fresh, renew) if renew else fresh(), served_params(managed.provider, training))

    return load


class WithParams:
    """A loaded model whose every prediction also gets ``params`` (a request's own params win)."""

    def __init__(self, model: Any, params: dict[str, Any]) -> None:
        self._model, self._params = model, params

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        return self._model.predict(model_input, params={**self._params, **(params or {})})


class Renewing:
    """A loaded model whose load-time credentials expire (a Vertex access token lasts an hour), loaded again every
    ``renew_seconds`` in the background while the one loaded before answers; a failed renewal is tried again a
    minute later (the old credentials may still hold)."""

    RETRY_SECONDS = 60.0

    def __init__(self, load: Callable[[], Any], renew_seconds: float, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._load, self._renew_seconds, self._monotonic = load, renew_seconds, monotonic
        self._model = load()
        self._due = monotonic() + renew_seconds
        self._renewing = threading.Lock()

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        model = self._model  # this request's answer comes from the model loaded now
        if self._monotonic() >= self._due and self._renewing.acquire(blocking=False):
            threading.Thread(target=self._renew, name="tuneloop-renew-credentials", daemon=True).start()
        return model.predict(model_input, params=params)

    def _renew(self) -> None:
        try:
            self._model = self._load()
            self._due = self._monotonic() + self._renew_seconds
        except Exception as error:  # noqa: BLE001 - the loaded model answers on; try again soon
            log.warning("loading a managed model again with fresh credentials failed (%s: %s); trying again in "
                        "%gs", type(error).__name__, error, self.RETRY_SECONDS)
            self._due = self._monotonic() + self.RETRY_SECONDS
        finally:
            self._renewing.release()


class NoProductionModel(RuntimeError):
    """The registered model has no production version to serve."""


@dataclass(frozen=True)
class Served:
    """One answered request: its id (for the outcome that comes later), who answered, how fast, the answer."""

    request_id: str
    version: str
    arm: Arm
    latency_ms: float
    output: Any


class Router:
    """Serve one registered model by its traffic split. ``load`` loads a version (default: the registry's pyfunc
    loader; :func:`registry_loader` for managed versions); ``params``: passed with every prediction (the serving's
    ``request_params``); ``monotonic`` is the clock of ``refresh_seconds`` (injectable for tests)."""

    def __init__(self, registry: Any, store: ServedRecords, *, refresh_seconds: float = 10.0,
                 load: Callable[[str], Any] | None = None, params: dict[str, Any] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if refresh_seconds < 0:
            raise ValueError(f"refresh_seconds: must be >= 0, got {refresh_seconds!r}")
        self._registry, self._store = registry, store
        self._refresh_seconds, self._monotonic, self._params = refresh_seconds, monotonic, params
        self._load = load or registry.load_pyfunc
        self._lock = threading.Lock()
        self._loading = threading.Lock()  # one load at a time, see model()
        self._split: TrafficSplit | None = None
        self._read_at = -float("inf")
        self._models: dict[str, Any] = {}

    @property
    def model_name(self) -> str:
        return str(self._registry.model_name)

    def record_outcome(self, request_id: str, outcome: str) -> ServedRequest:
        """How a request this model served went (``success`` | ``error``), for the online test."""
        return self._store.record_outcome(request_id, outcome)  # type: ignore[arg-type]

    def split(self) -> TrafficSplit:
        """The traffic split now (read from the registry when older than ``refresh_seconds``)."""
        with self._lock:
            if self._split is None or self._monotonic() - self._read_at >= self._refresh_seconds:
                try:
                    self._split = self._read_split()
                except Exception as error:  # the registry unreachable: serve on with the split last read
                    if self._split is None or isinstance(error, NoProductionModel):
                        raise
                    log.warning("reading %s's aliases failed (%s); serving with the split read before",
                                self.model_name, error)
                self._read_at = self._monotonic()
                live = {self._split.production, self._split.canary}
                self._models = {v: m for v, m in self._models.items() if v in live}  # unload what left the split
            return self._split

    def _read_split(self) -> TrafficSplit:
        from tuneloop.rollout import running_canary

        production = self._registry.production_version()
        if production is None:
            raise NoProductionModel(f"{self._registry.model_name!r} has no production version to serve")
        canary = running_canary(self._registry)
        if canary is None or canary.version == production:
            return TrafficSplit(production)
        return TrafficSplit(production, canary.version, canary.traffic_percent)

    def model(self, version: str) -> Any:
        """The loaded model of ``version`` (loaded once, on first use, kept while it is in the split).

        Loads run one at a time, outside the split's lock so loaded versions keep serving meanwhile: concurrent
        first requests for a version wait for one load instead of each loading a copy. (The registry's loader also
        holds a process-wide lock: MLflow's loader of models-from-code keeps process-wide state while it runs.)"""
        with self._lock:
            found = self._models.get(version)
        if found is not None:
            return found
        with self._loading:
            with self._lock:
                found = self._models.get(version)
            if found is None:
                found = self._load(version)
                with self._lock:
                    self._models[version] = found
            return found

    def predict(self, model_input: Any, *, key: str | None = None, request_id: str | None = None) -> Served:
        """Answer one request. ``key`` keeps a user on one arm (a user or session id; default: the request id,
        i.e. no stickiness); ``request_id`` names the request for its outcome (default: a new UUID)."""
        request_id = request_id or uuid.uuid4().hex
        split = self.split()
        arm = split.arm(key or request_id)
        version = split.version(key or request_id)
        model = self.model(version)
        served_at = datetime.now(UTC)
        started = time.perf_counter()
        output = model.predict(model_input, params=self._params) if self._params else model.predict(model_input)
        latency_ms = (time.perf_counter() - started) * 1000
        prompt, completion = _usage(output)
        if "reply" in getattr(output, "columns", ()):
            output = output["reply"].tolist()
        self._store.record_served(ServedRequest(request_id=request_id, model_version=version, arm=arm,
                                                served_at=served_at, latency_ms=latency_ms, prompt_tokens=prompt,
                                                completion_tokens=completion))
        return Served(request_id, version, arm, latency_ms, output)


def _usage(output: Any) -> tuple[int | None, int | None]:
    """Token usage summed over the output's rows, where a chat model's output reports it for every row (a row
    without it makes the request's usage unknown, not zero)."""
    columns = getattr(output, "columns", ())
    if "prompt_tokens" not in columns or "completion_tokens" not in columns:
        return None, None
    usage = output[["prompt_tokens", "completion_tokens"]]
    if usage.isna().any().any():
        return None, None
    return int(usage["prompt_tokens"].sum()), int(usage["completion_tokens"].sum())
