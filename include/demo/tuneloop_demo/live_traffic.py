"""Live traffic for a canary: ``tuneloop serve`` on loopback, and users who send it recordings and say how each
answer went.

:func:`serving` starts the real server (the ``tuneloop serve`` command) for an installation; :class:`Users` sends
it requests with sticky user keys once a canary runs, judges each answer with a ``judge`` function (the demo's
users correct every transcript that is not what they said; tests give each arm a fixed error pattern) and posts
the outcome, until the canary ends. Used by ``tuneloop demo --strategy canary`` and the canary e2e tests.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# judge(arm, answer, expected answer, how many of this arm's answers were judged before) -> wrong?
Judge = Callable[[str, str, str, int], bool]


def call(base: str, method: str, path: str, body: Any = None, timeout: float = 60) -> dict[str, Any]:
    """One JSON request to the server."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@contextmanager
def serving(env: dict[str, str], cwd: Path, log_file: Path, *, refresh_seconds: float = 0.5,
            start_timeout: float = 180, model: str | None = None) -> Iterator[str]:
    """``tuneloop serve`` on a free loopback port for the installation ``env`` describes (``model``: which of
    several configured models); yields its base URL and stops it afterwards."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with log_file.open("w") as log:
        chosen = ["--model", model] if model else []
        process = subprocess.Popen([sys.executable, "-m", "tuneloop.cli", "serve", *chosen, "--port", str(port),
                                    "--refresh-seconds", str(refresh_seconds)], env=env, cwd=cwd, stdout=log,
                                   stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                try:
                    call(base, "GET", "/healthz", timeout=5)
                    break
                except (urllib.error.URLError, ConnectionError):
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"tuneloop serve did not start: {log_file.read_text()[-3000:]}") from None
                    time.sleep(0.5)
            yield base
        finally:
            process.terminate()
            process.wait(timeout=30)


def recordings(pairs: list[tuple[Path, str]]) -> list[tuple[dict[str, str], str]]:
    """A speech model's requests: (recording, what was said) -> (its ``input``, the expected transcript)."""
    return [({"audio_base64": base64.b64encode(path.read_bytes()).decode()}, text) for path, text in pairs]


class Users(threading.Thread):
    """Users of a model behind ``base``: once a canary runs, they send ``requests`` ((input, expected answer)
    pairs) round and round, each under its own user key, judge every answer with ``judge`` and post the outcome,
    until the canary ends or :attr:`stop` is set. ``judged`` counts answers per arm; ``errors`` holds what went
    wrong."""

    def __init__(self, base: str, requests: list[tuple[Any, str]], judge: Judge) -> None:
        super().__init__(daemon=True)
        self.base, self.judge, self.requests = base, judge, requests
        self.judged = {"production": 0, "canary": 0}
        self.wrong = {"production": 0, "canary": 0}
        self.versions: dict[str, set[str]] = {"production": set(), "canary": set()}
        self.stop = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        try:
            while not self.stop.is_set() and call(self.base, "GET", "/healthz")["canary"] is None:
                time.sleep(0.2)
            i = 0
            while not self.stop.is_set() and call(self.base, "GET", "/healthz")["canary"] is not None:
                model_input, expected = self.requests[i % len(self.requests)]
                answer = call(self.base, "POST", "/predict", {"input": model_input, "key": f"user-{i}"})
                arm = answer["arm"]
                self.versions[arm].add(answer["model_version"])
                wrong = self.judge(arm, str(answer["output"]), expected, self.judged[arm])
                self.judged[arm] += 1
                self.wrong[arm] += wrong
                call(self.base, "POST", "/outcome", {"request_id": answer["request_id"],
                                                     "outcome": "error" if wrong else "success"})
                i += 1
        except Exception as error:  # noqa: BLE001 - the caller reports it
            self.errors.append(f"{type(error).__name__}: {error}")
