"""``tuneloop serve``: the router (:mod:`tuneloop.serving.router`) behind a small JSON HTTP API.

    POST /predict   {"input": <one request's input>, "key": "user-42", "request_id": "..."}
                    -> {"request_id", "model_version", "arm", "latency_ms", "output"}
    POST /outcome   {"request_id": "...", "outcome": "success" | "error"}  -> the served request as recorded
                    (a correction ingested as an error case with its ``request_id`` judges the request too)
    GET  /healthz   -> {"status": "ok", "model", "production", "canary", "canary_percent"}  (503: nothing to serve)

``input`` is what the model's task takes (:meth:`tuneloop.tasks.Task.request_input`): a speech model
``{"audio_base64": ...}``, a chat model a conversation ending with a user turn. ``key`` keeps a user on one arm
of a canary (default: the request id); ``request_id`` (default: a new one) is what the outcome names later. One
request is one input: the online test counts requests.

The server keeps no state of its own (the split is the registry's, the requests the store's), so several run side
by side behind a load balancer, with the store on PostgreSQL. It has no authentication: anyone who can reach it
can ask and judge, so it listens on loopback by default; put it behind your gateway to expose it. A bad request is a 400 naming the field; an unknown
request id a 404; the answer of a model that fails a 500 with its error -- none stops the server.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tuneloop.serving.router import NoProductionModel, Router

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 32 * 1024 * 1024  # a few minutes of 16 kHz WAV, base64


class RequestError(ValueError):
    """A request the API refuses: its status and what is wrong."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def make_server(router: Router, task: Any, *, host: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
    """An HTTP server (one thread per connection) answering with ``router`` for a model of ``task``; call
    ``serve_forever()`` on it (``port`` 0: a free port, see ``server_address``)."""

    class Handler(_Handler):
        pass

    Handler.router, Handler.task = router, task
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


class _Handler(BaseHTTPRequestHandler):
    router: Router
    task: Any
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a connection may stall before its thread gives up

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path != "/healthz":
            return self._send(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: GET {self.path}"})
        try:
            split = self.router.split()
        except Exception as error:  # noqa: BLE001 - nothing to serve, or the registry unreachable at the start
            return self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "unavailable",
                                                               "error": f"{type(error).__name__}: {error}"})
        self._send(HTTPStatus.OK, {"status": "ok", "model": self.router.model_name, "production": split.production,
                                   "canary": split.canary, "canary_percent": split.canary_percent})

    def do_POST(self) -> None:  # noqa: N802
        handlers = {"/predict": self._predict, "/outcome": self._outcome}
        if self.path not in handlers:
            return self._send(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: POST {self.path}"})
        try:
            self._send(HTTPStatus.OK, handlers[self.path](self._body()))
        except RequestError as error:
            self._send(error.status, {"error": str(error)})
        except NoProductionModel as error:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(error)})
        except Exception as error:  # noqa: BLE001 - the model's or the store's failure: answered, logged, served on
            log.exception("%s failed", self.path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(error).__name__}: {error}"})

    def _predict(self, body: dict[str, Any]) -> dict[str, Any]:
        if "input" not in body:
            raise RequestError(HTTPStatus.BAD_REQUEST, "input: missing (one request's input)")
        key, request_id = _optional_text(body, "key"), _optional_text(body, "request_id")
        try:
            model_input = self.task.request_input(body["input"])
        except ValueError as error:
            raise RequestError(HTTPStatus.BAD_REQUEST, str(error)) from error
        served = self.router.predict(model_input, key=key, request_id=request_id)
        output = served.output[0] if isinstance(served.output, list) and len(served.output) == 1 else served.output
        return {"request_id": served.request_id, "model_version": served.version, "arm": served.arm,
                "latency_ms": round(served.latency_ms, 3), "output": _plain(output)}

    def _outcome(self, body: dict[str, Any]) -> dict[str, Any]:
        from tuneloop.store import NotFound

        request_id = _optional_text(body, "request_id")
        if request_id is None:
            raise RequestError(HTTPStatus.BAD_REQUEST, "request_id: missing (the id /predict answered with)")
        outcome = body.get("outcome")
        if outcome not in ("success", "error"):
            raise RequestError(HTTPStatus.BAD_REQUEST, f"outcome: must be success or error, got {outcome!r}")
        try:
            recorded = self.router.record_outcome(request_id, outcome)
        except NotFound as error:
            raise RequestError(HTTPStatus.NOT_FOUND, str(error)) from error
        return {"request_id": recorded.request_id, "model_version": recorded.model_version, "arm": recorded.arm,
                "outcome": recorded.outcome}

    def _body(self) -> dict[str, Any]:
        if self.headers.get("Transfer-Encoding"):
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Transfer-Encoding: send a Content-Length instead")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise RequestError(HTTPStatus.BAD_REQUEST, "Content-Length: not a number") from None
        if length < 0:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"Content-Length: {length} is negative")
        if length > MAX_BODY_BYTES:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"body: {length} bytes, more than {MAX_BODY_BYTES}")
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body: not JSON ({error})") from error
        if not isinstance(body, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "body: must be a JSON object")
        return body

    def _send(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        if status >= 400:
            self.close_connection = True  # a body left unread must not be taken for the next request
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.info("%s %s", self.address_string(), format % args)


def _optional_text(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{field}: must be a non-empty string of at most 200 characters")
    return value


def _plain(value: Any) -> Any:
    """A model's answer as JSON (numpy and pandas values included)."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
