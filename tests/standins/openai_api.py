"""A stand-in for an OpenAI-compatible chat endpoint on loopback, for the real ``openai`` client.

It serves ``POST /v1/chat/completions`` (a ``chat.completion`` object, as the API returns it) and ``GET /v1/models``;
anything else is a 404 with OpenAI's error body. What the assistant replies is a rule the test sets: ``reply``, a
function from the request body to the message content (e.g. a judge that prefers the reply equal to the reference,
one that always answers ``[[A]]``, or garbage). Failures are programmed too: :meth:`fail_next` answers the next
requests with an HTTP error (with ``retry-after-ms``, so the client's retries are quick), :attr:`fail_status` fails
every request.

Every chat request is recorded (``requests``: the JSON body as sent; ``headers``: its headers, lower-cased), so
tests assert on the prompts the client really sent.

    with OpenAIStandIn(reply=lambda body: "[[A]]") as api:
        client = OpenAI(api_key="k", base_url=api.base_url)
"""

from __future__ import annotations

import itertools
import re
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = Callable[[dict[str, Any]], str]


def last_user_message(body: dict[str, Any]) -> str:
    """The text of the last user message of a chat request."""
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


class OpenAIStandIn:
    """The endpoint's behaviour and what it saw; :meth:`start` serves it on ``127.0.0.1`` from a thread.

    ``reply``: request body -> assistant content (settable at any time). ``requests``: every chat completion body,
    in arrival order, failed attempts included; ``headers``: their headers; ``failures_served``: error responses
    sent. ``fail_status``: when set, every chat request fails with it.
    """

    def __init__(self, reply: Reply | None = None, *, retry_after_ms: int = 5) -> None:
        self.reply: Reply = reply or (lambda body: "[[C]]")
        self.retry_after_ms = retry_after_ms
        self.fail_status: int | None = None
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.failures_served = 0
        self._fail_next: list[int] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None

    # --- running the server ------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """What the client's ``base_url`` is set to (``.../v1``)."""
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> OpenAIStandIn:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> OpenAIStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- programming it ----------------------------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` chat requests (from any thread) with HTTP ``status``."""
        with self._lock:
            self._fail_next.extend([status] * count)

    # --- the API -----------------------------------------------------------------------------------------------

    def chat_completion(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            status = self._fail_next.pop(0) if self._fail_next else self.fail_status
            if status is not None:
                self.failures_served += 1
            number = next(self._ids)
        if status is not None:
            return status, _error(status, f"the stand-in was told to fail this request with {status}")
        missing = [name for name in ("model", "messages") if name not in body]
        if missing:
            return 400, _error(400, f"missing required parameter: {missing[0]!r}", param=missing[0])
        content = self.reply(body)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        completion_tokens = len(content.split())
        return 200, {
            "id": f"chatcmpl-standin-{number}", "object": "chat.completion", "created": int(time.time()),
            "model": body["model"], "system_fingerprint": "fp_standin",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": content, "refusal": None}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "standin-judge", "object": "model", "created": 0,
                                            "owned_by": "tuneloop-tests"}]}


def _error(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _handler(api: OpenAIStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.path.split("?")[0] != "/v1/chat/completions":
                self._send(404, _error(404, f"unknown route POST {self.path}"))
                return
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError as error:
                self._send(400, _error(400, f"the body is not JSON: {error}"))
                return
            status, payload = api.chat_completion(body, {k.lower(): v for k, v in self.headers.items()})
            self._send(status, payload)

        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/v1/models":
                self._send(200, api.models())
            else:
                self._send(404, _error(404, f"unknown route GET {self.path}"))

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            if status >= 500 or status == 429:
                self.send_header("retry-after-ms", str(api.retry_after_ms))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # the tests read .requests instead
            pass

    return Handler


def section(prompt: str, name: str) -> str:
    match = re.search(rf"\[The Start of {re.escape(name)}\]\n(.*?)\n\[The End of {re.escape(name)}\]", prompt, re.S)
    assert match, f"no {name} section in the judge prompt"
    return match.group(1)


def prefers_the_reference(body: dict) -> str:
    """A consistent judge: the reply equal to the reference answer wins; neither or both: a tie."""
    prompt = last_user_message(body)
    reference = section(prompt, "Reference Answer")
    a, b = section(prompt, "Assistant A's Reply"), section(prompt, "Assistant B's Reply")
    verdict = "A" if a == reference and b != reference else "B" if b == reference and a != reference else "C"
    return f"Comparing both replies with the reference answer.\n[[{verdict}]]"
