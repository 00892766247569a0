"""A real SMTP server on loopback (aiosmtpd) that keeps every message it receives, for notification tests, and
the Airflow connection (``AIRFLOW_CONN_<ID>`` JSON) that points the SMTP provider at it."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import socket
import threading
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


class Mailbox:
    """``with Mailbox() as box``: an SMTP server on 127.0.0.1; ``box.messages`` the parsed e-mails received."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self._lock = threading.Lock()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        # aiosmtpd logs each connection at INFO from its own thread, which may outlive the test's log capture
        logging.getLogger("mail.log").setLevel(logging.WARNING)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._lock:
            self.messages.append(parsed)  # type: ignore[arg-type]
        return "250 Message accepted for delivery"

    def connection(self, from_email: str = "tuneloop@example.test") -> str:
        """The Airflow connection of this server (plain SMTP on loopback, no login) as ``AIRFLOW_CONN_*`` JSON."""
        return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": self.port,
                           "extra": {"disable_ssl": True, "disable_tls": True, "from_email": from_email,
                                     "timeout": 10, "retry_limit": 1}})

    def bodies(self) -> list[str]:
        """Each message's HTML body as text."""
        return [message.get_body(("html", "plain")).get_content() for message in self.messages]

    def __enter__(self) -> Mailbox:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()
