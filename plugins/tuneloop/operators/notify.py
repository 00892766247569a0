"""Sending tuneloop's notifications (:mod:`tuneloop.notifications`) through Airflow's notifiers: the SMTP
provider's ``SmtpNotifier`` for each configured channel, with the Airflow connection it names.

``report`` announces how the run ended; the approval steps announce that they wait (:class:`ApprovalNotifier`,
given to them as Airflow ``notifiers``). A notifier that fails -- an SMTP server down, a missing connection -- is
logged with the channel and the reason, and never fails the task: the run's outcome does not depend on its mail.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseNotifier, Context

from tuneloop.config import TuneloopConfig, load_model_config
from tuneloop.notifications import Message, approval_message, channels_for, run_message

log = logging.getLogger(__name__)


def send(config: TuneloopConfig, message: Message, context: Context) -> list[str]:
    """Send ``message`` to every channel that takes one of its events; returns what failed, each with its reason."""
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    failures = []
    for channel in channels_for(config.notifications.channels, message.events):
        where = f"{channel.kind} {', '.join(channel.to)} (connection {channel.conn_id})"
        notifier = SmtpNotifier(to=list(channel.to), from_email=channel.from_email, subject=message.subject,
                                html_content=message.html(), smtp_conn_id=channel.conn_id)
        try:
            notifier.notify(context)  # not notifier(context): the message quotes reasons, never a template
        except Exception as error:  # noqa: BLE001 - a notification never fails the run
            log.error("notification %r to %s failed: %s: %s", message.subject, where, type(error).__name__, error)
            failures.append(f"{where}: {type(error).__name__}: {error}")
        else:
            log.info("notification %r sent to %s", message.subject, where)
    return failures


def notify_run(config: TuneloopConfig, context: Context, record: dict[str, Any], mlflow_url: str | None) -> list[str]:
    """Announce how the run ended (``report``), if its status is announced; never raises."""
    try:
        message = run_message(model_name=config.mlflow.model_name, run_id=context["run_id"],
                              status=record["status"], summary=record["summary"],
                              links={"Airflow run": run_url(config, context), "MLflow run": mlflow_url or ""})
        return send(config, message, context) if message else []
    except Exception as error:  # noqa: BLE001 - a notification never fails the run
        log.warning("notifying the run's end failed: %s: %s", type(error).__name__, error)
        return [f"{type(error).__name__}: {error}"]


def airflow_url(config: TuneloopConfig) -> str:
    from airflow.configuration import conf

    return (config.notifications.airflow_url or conf.get("api", "base_url", fallback=None)
            or "http://localhost:8080").rstrip("/")


def run_url(config: TuneloopConfig, context: Context) -> str:
    return f"{airflow_url(config)}/dags/{quote(context['dag'].dag_id)}/runs/{quote(context['run_id'], safe='')}"


class ApprovalNotifier(BaseNotifier):
    """Announces an approval step that starts waiting for a person (an Airflow human-in-the-loop operator calls
    its ``notifiers`` then): the form's subject and body, the link to answer it, the run."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage

    def notify(self, context: Context) -> None:
        try:
            task = context["task"]
            config = load_model_config(task.dag_id)
            ti = context["ti"]
            links = {"Answer it": f"{run_url(config, context)}/tasks/{quote(ti.task_id)}/required_actions"
                                  f"?map_index={ti.map_index}",
                     "Airflow run": run_url(config, context)}
            message = approval_message(model_name=config.mlflow.model_name, run_id=context["run_id"],
                                       stage=self.stage, subject=str(task.subject), body=str(task.body or ""),
                                       links=links)
            send(config, message, context)
        except Exception as error:  # noqa: BLE001 - a notification never fails the step
            log.warning("notifying the %s approval failed: %s: %s", self.stage, type(error).__name__, error)
