"""What a model's people hear of its runs: one message per event, with the decision summary and links.

Events: a run ended ``deployed``, ``rejected`` (by the gate or a suite, with insufficient evidence, declined by a
person, or a canary that proved nothing), ``rolled_back``, ``failed``, or refused over budget
(``budget_exceeded``); and a step ``waiting_for_approval`` (an over-budget run waiting for its approval is
``budget_exceeded`` too: a channel taking either hears of it, once). A run skipped because its trigger conditions were unmet, or whose training a person
declined, tells nobody anything new and sends nothing.

Which channel hears what is configuration (``notifications.channels``, see :class:`tuneloop.config.NotificationsConfig`);
sending is Airflow's notifiers' job (:mod:`tuneloop.operators.notify`). This module only decides and words.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# a run's status (tuneloop.report.classify) -> the event it is announced as; absent: not announced
STATUS_EVENTS = {"deployed": "deployed", "rejected": "rejected", "insufficient_evidence": "rejected",
                 "declined": "rejected", "rolled_back": "rolled_back", "failed": "failed",
                 "over_budget": "budget_exceeded"}
_URL = re.compile(r"https?://\S+")


@dataclass(frozen=True)
class Message:
    """One notification: the events it announces (a channel taking any of them gets it once), a subject line, and
    the body as lines of plain text."""

    events: tuple[str, ...]
    subject: str
    lines: tuple[str, ...]

    def text(self) -> str:
        return "\n".join(self.lines)

    def html(self) -> str:
        """The body for an e-mail: every line escaped (reasons quote user data), links made clickable."""
        def line(text: str) -> str:
            escaped = html.escape(text)
            return _URL.sub(lambda m: f'<a href="{m.group(0)}">{m.group(0)}</a>', escaped)

        return "<html><body>" + "<br>\n".join(line(text) for text in self.lines) + "</body></html>"


def slack_text(message: Message) -> str:
    """The message as Slack ``mrkdwn``: the subject in bold, then the lines. ``&``, ``<`` and ``>`` are escaped as
    Slack asks, so quoted user text never becomes a link or a mention (``<!channel>`` would page everyone)."""
    def plain(text: str) -> str:
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    return "\n".join([f"*{plain(message.subject)}*", *(plain(line) for line in message.lines)])


def run_message(*, model_name: str, run_id: str, status: str, summary: Sequence[str],
                links: Mapping[str, str]) -> Message | None:
    """The message of a finished run (the ``report`` step), or None when its status is not announced."""
    event = STATUS_EVENTS.get(status)
    if event is None:
        return None
    subject = f"tuneloop {model_name}: {status.replace('_', ' ')} ({run_id})"
    return Message((event,), _one_line(subject), (*summary, "", *_link_lines(links)))


def unreported_message(*, model_name: str, run_id: str, error: str, stored_status: str | None,
                       links: Mapping[str, str]) -> Message:
    """The message of a run whose report step failed for good (MLflow down, the run's folder unreadable): its
    decision record may be missing, so it is announced as ``failed`` with the error and what the store holds."""
    stored = (f"the store records the run as {stored_status}" if stored_status
              else "the store could not be read either")
    subject = f"tuneloop {model_name}: failed: its report did not finish ({run_id})"
    return Message(("failed",), _one_line(subject), (f"Run {run_id}: the report step failed: {error}",
                                                    f"{stored}; the task log has the rest.", "",
                                                    *_link_lines(links)))


def approval_message(*, model_name: str, run_id: str, stage: str, subject: str, body: str,
                     links: Mapping[str, str]) -> Message:
    """The message of a step waiting for a person (``approve_training``, ``approve_budget``, ``approve_deploy``):
    the approval form's own subject and body, and where to answer. An over-budget run's wait is both a wait for
    approval and a budget event."""
    events = ("waiting_for_approval", "budget_exceeded") if stage == "budget" else ("waiting_for_approval",)
    heading = f"tuneloop {model_name}: {stage} waiting for approval ({run_id})"
    return Message(events, _one_line(heading), (subject, "", *body.splitlines(), "", *_link_lines(links)))


def channels_for(channels: Sequence[Any], events: Sequence[str]) -> list[Any]:
    """The configured channels that take any of ``events``, each once."""
    return [channel for channel in channels if set(events) & set(channel.events)]


def _link_lines(links: Mapping[str, str]) -> list[str]:
    return [f"{name}: {url}" for name, url in links.items() if url]


def _one_line(text: str) -> str:
    """A header value: no line breaks (a subject with one would be two headers)."""
    return " ".join(text.split())
