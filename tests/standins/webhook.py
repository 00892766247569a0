"""A JSON webhook on loopback: what Apprise's ``json://`` service and Slack's incoming webhooks are posted to.
Keeps every request's path and JSON body; ``status`` is what it answers (500: a service that refuses)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Webhook:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[tuple[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.received.append((self.path, json.loads(body or b"null")))
                self.send_response(hook.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]

    def __enter__(self) -> Webhook:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def slack_connection(self, token: str = "T0001/B0001/tuneloopTEST") -> str:
        """An Airflow Slack incoming-webhook connection whose endpoint is this webhook (Slack's own is
        hooks.slack.com/services/<token>): the Slack provider posts ``{"text": ...}`` to ``/<token>``."""
        return json.dumps({"conn_type": "slackwebhook", "host": f"http://127.0.0.1:{self.port}", "password": token})

    def apprise_connection(self, path: str = "/tuneloop") -> str:
        """An Airflow Apprise connection (JSON, for an ``AIRFLOW_CONN_...`` variable) whose one service is this
        webhook, through Apprise's json:// scheme."""
        return json.dumps({"conn_type": "apprise",
                           "extra": {"config": {"path": f"json://127.0.0.1:{self.port}{path}", "tag": "alerts"}}})
