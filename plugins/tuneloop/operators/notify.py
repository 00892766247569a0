"""Sending tuneloop's notifications (:mod:`tuneloop.notifications`) through Airflow's providers, with the Airflow
connection each configured channel names: e-mail by the SMTP provider's ``SmtpNotifier``, Slack by the Slack
provider's ``SlackWebhookNotifier``; Teams, Discord, webhooks and the rest of Apprise's services by the Apprise
provider's hook (its connection lists the services' URLs).

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
from tuneloop.notifications import (Message, approval_message, channels_for, run_message, slack_text,
                                    unreported_message)

log = logging.getLogger(__name__)


def send(config: TuneloopConfig, message: Message, context: Context) -> list[str]:
    """Send ``message`` to every channel that takes one of its events; returns what failed, each with its reason."""
    failures = []
    for channel in channels_for(config.notifications.channels, message.events):
        where = f"{channel.kind} {', '.join(channel.to) or channel.tag} (connection {channel.connection})"
        try:
            SENDERS[channel.kind](channel, message, context)
        except Exception as error:  # noqa: BLE001 - a notification never fails the run
            log.error("notification %r to %s failed: %s: %s", message.subject, where, type(error).__name__, error)
            failures.append(f"{where}: {type(error).__name__}: {error}")
        else:
            log.info("notification %r sent to %s", message.subject, where)
    return failures


def send_email(channel: Any, message: Message, context: Context) -> None:
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    notifier = SmtpNotifier(to=list(channel.to), from_email=channel.from_email, subject=message.subject,
                            html_content=message.html(), smtp_conn_id=channel.connection)
    notifier.notify(context)  # not notifier(context): the message quotes reasons, never a template


def send_slack(channel: Any, message: Message, context: Context) -> None:
    """To the Slack channel of the incoming webhook the connection holds (a refusal raises: Slack answers 200)."""
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    SlackWebhookNotifier(slack_webhook_conn_id=channel.connection, text=slack_text(message),
                         unfurl_links=False).notify(context)


def send_apprise(channel: Any, message: Message, context: Context) -> None:
    """Through the services the Apprise connection names. Apprise answers whether they took the message (the
    provider's notifier drops that answer), so a service that refused it is a failure here, logged like the rest."""
    import apprise
    from airflow.providers.apprise.hooks.apprise import AppriseHook

    hook = AppriseHook(apprise_conn_id=channel.connection)
    services = apprise.Apprise()
    hook.set_config_from_conn(conn=hook.get_connection(channel.connection), apprise_obj=services)
    if not services.notify(body=message.text(), title=message.subject, notify_type=APPRISE_TYPES[message.events[0]],
                           tag=channel.tag):
        raise RuntimeError(f"Apprise: no service of connection {channel.connection} tagged {channel.tag!r} took "
                           "the message (its log says why)")


SENDERS = {"smtp": send_email, "slack": send_slack, "apprise": send_apprise}
# how each event shows in chat tools (Apprise's notify types: its colour and icon)
APPRISE_TYPES = {"deployed": "success", "rejected": "warning", "rolled_back": "warning", "failed": "failure",
                 "waiting_for_approval": "info", "budget_exceeded": "warning"}


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


def notify_unreported(config: TuneloopConfig, context: Context, error: BaseException,
                      stored_status: str | None) -> list[str]:
    """Announce a run whose report failed on its last attempt (a run that fails is news); never raises."""
    try:
        message = unreported_message(model_name=config.mlflow.model_name, run_id=context["run_id"],
                                     error=f"{type(error).__name__}: {error}", stored_status=stored_status,
                                     links={"Airflow run": run_url(config, context)})
        return send(config, message, context)
    except Exception as failure:  # noqa: BLE001 - a notification never fails the run
        log.warning("notifying the failed report failed: %s: %s", type(failure).__name__, failure)
        return [f"{type(failure).__name__}: {failure}"]


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
