"""Notifications sent for real through Airflow connections: the SMTP provider's notifier to an SMTP server on
loopback (aiosmtpd), the Slack provider's webhook notifier and the Apprise provider to a webhook on loopback; one message per event to the channels that
take it; a failing server never fails the run."""

from __future__ import annotations

import logging
import socket

import pytest
from airflow.sdk import DAG

from tests.standins.mailbox import Mailbox
from tests.standins.webhook import Webhook
from tuneloop.config import load_config
from tuneloop.operators.notify import notify_run


@pytest.fixture
def mailbox(airflow_env, monkeypatch):
    with Mailbox() as box:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_TUNELOOP_TEST", box.connection())
        yield box


def config_with(tmp_path, channels: str):
    return load_config(env={"TUNELOOP_HOME": str(tmp_path), "TUNELOOP__NOTIFICATIONS__CHANNELS": channels,
                            "TUNELOOP__NOTIFICATIONS__AIRFLOW_URL": "https://airflow.example.test/"})


CONTEXT = {"dag": DAG("finetune_weekly"), "run_id": "manual__2026-12-07T10:00:00+00:00"}
RECORD = {"status": "rolled_back", "summary": ["Run manual__...: ROLLED_BACK (started: weekly)",
                                               "post-deploy check: WER 0.31 > 0.20 <script>alert(1)</script>"]}


def test_one_message_per_event_to_each_channel_that_takes_it(mailbox, tmp_path):
    config = config_with(tmp_path, '[{"conn_id": "smtp_tunneloop_test", "to": ["nobody@example.test"]}, '
                                   '{"conn_id": "smtp_tuneloop_test", "to": ["ml-team@example.test", "oncall@example.test"]}, '
                                   '{"conn_id": "smtp_tuneloop_test", "to": ["releases@example.test"], "events": ["deployed"]}]')
    failures = notify_run(config, CONTEXT, RECORD, "http://mlflow.example.test/#/experiments/1/runs/abc")
    assert len(failures) == 1 and "smtp_tunneloop_test" in failures[0]  # a missing connection: logged, not raised
    [message] = mailbox.messages  # the releases channel takes deployments only
    assert message["To"] == "ml-team@example.test, oncall@example.test"
    assert message["Subject"] == "tuneloop speech-to-text: rolled back (manual__2026-12-07T10:00:00+00:00)"
    assert message["From"] == "tuneloop@example.test"  # the connection's from_email
    [body] = mailbox.bodies()
    assert "post-deploy check: WER 0.31 &gt; 0.20 &lt;script&gt;" in body  # the summary, escaped
    run_url = "https://airflow.example.test/dags/finetune_weekly/runs/manual__2026-12-07T10%3A00%3A00%2B00%3A00"
    assert f'<a href="{run_url}">' in body and "http://mlflow.example.test/#/experiments/1/runs/abc" in body


def test_a_server_that_is_down_never_fails_the_run(tmp_path, airflow_env, monkeypatch, caplog):
    box = Mailbox()  # never started; its port held by a socket that does not listen: connection refused
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        box.port = held.getsockname()[1]
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_TUNELOOP_TEST", box.connection())
        config = config_with(tmp_path, '[{"conn_id": "smtp_tuneloop_test", "to": ["ml-team@example.test"]}]')
        with caplog.at_level(logging.WARNING):
            failures = notify_run(config, CONTEXT, RECORD, None)
    assert len(failures) == 1 and "ml-team@example.test" in failures[0]
    assert "notification 'tuneloop speech-to-text: rolled back" in caplog.text


def test_a_run_that_was_skipped_sends_nothing(mailbox, tmp_path):
    config = config_with(tmp_path, '[{"conn_id": "smtp_tuneloop_test", "to": ["ml-team@example.test"]}]')
    assert notify_run(config, CONTEXT, {"status": "skipped", "summary": ["conditions unmet"]}, None) == []
    assert mailbox.messages == []


@pytest.fixture
def webhook(airflow_env, monkeypatch):
    with Webhook() as hook:
        monkeypatch.setenv("AIRFLOW_CONN_APPRISE_TUNELOOP_TEST", hook.apprise_connection())
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_TUNELOOP_TEST", hook.slack_connection())
        yield hook


def test_slack_channels_get_one_message_per_event_and_user_text_pings_nobody(webhook, tmp_path):
    config = config_with(tmp_path, '[{"kind": "slack", "conn_id": "slack_tuneloop_test"}, '
                                   '{"kind": "slack", "conn_id": "slack_tuneloop_test", "events": ["deployed"]}]')
    record = {**RECORD, "summary": [*RECORD["summary"], "reason given: <!channel> see <http://evil.test|here> & more"]}
    assert notify_run(config, CONTEXT, record, "http://mlflow.example.test/#/experiments/1/runs/abc") == []
    [(path, posted)] = webhook.received
    assert path == "/T0001/B0001/tuneloopTEST" and posted["unfurl_links"] is False
    lines = posted["text"].splitlines()
    assert lines[0] == "*tuneloop speech-to-text: rolled back (manual__2026-12-07T10:00:00+00:00)*"
    assert "reason given: &lt;!channel&gt; see &lt;http://evil.test|here&gt; &amp; more" in lines
    assert "<" not in posted["text"] and "MLflow run: http://mlflow.example.test/#/experiments/1/runs/abc" in lines


def test_a_slack_webhook_that_refuses_is_logged_not_raised(webhook, tmp_path):
    webhook.status = 404  # a webhook revoked in Slack answers 404 no_service
    config = config_with(tmp_path, '[{"kind": "slack", "conn_id": "slack_tuneloop_test"}]')
    failures = notify_run(config, CONTEXT, RECORD, None)
    assert len(failures) == 1 and failures[0].startswith("slack all (connection slack_tuneloop_test)")


def test_apprise_channels_post_one_message_per_event_to_their_services(webhook, mailbox, tmp_path):
    """An Apprise channel (Slack, Teams... here Apprise's json:// service, a webhook on loopback) beside an
    e-mail one: each gets the run's end once, with its summary and links."""
    config = config_with(tmp_path, '[{"kind": "apprise", "conn_id": "apprise_tuneloop_test", "tag": "alerts"}, '
                                   '{"kind": "apprise", "conn_id": "apprise_tuneloop_test", "events": ["deployed"]}, '
                                   '{"conn_id": "smtp_tuneloop_test", "to": ["ml-team@example.test"]}]')
    assert notify_run(config, CONTEXT, RECORD, "http://mlflow.example.test/#/experiments/1/runs/abc") == []
    [(path, posted)] = webhook.received
    assert path == "/tuneloop" and posted["type"] == "warning"
    assert posted["title"] == "tuneloop speech-to-text: rolled back (manual__2026-12-07T10:00:00+00:00)"
    assert "post-deploy check: WER 0.31 > 0.20 <script>alert(1)</script>" in posted["message"]  # JSON, not HTML
    assert "http://mlflow.example.test/#/experiments/1/runs/abc" in posted["message"]
    assert len(mailbox.messages) == 1


def test_a_service_that_refuses_the_message_is_logged_not_raised(webhook, tmp_path, caplog):
    webhook.status = 500
    config = config_with(tmp_path, '[{"kind": "apprise", "conn_id": "apprise_tuneloop_test"}]')
    with caplog.at_level(logging.WARNING):
        failures = notify_run(config, CONTEXT, RECORD, None)
    assert len(failures) == 1 and "no service of connection apprise_tuneloop_test" in failures[0]
    assert len(webhook.received) == 1  # it was tried


@pytest.mark.parametrize("channel, field", [('{"kind": "smtp"}', "to"), ('{"kind": "apprise", "to": ["a@b.c"]}', "to"),
                                            ('{"kind": "slack", "from_email": "a@b.c"}', "to"),
                                            ('{"kind": "pager"}', "kind")])
def test_a_channel_that_cannot_send_is_refused_at_load_naming_the_field(tmp_path, channel, field):
    from tuneloop.config import ConfigError

    with pytest.raises(ConfigError, match=rf"notifications\.channels\.0.*{field}"):
        config_with(tmp_path, f"[{channel}]")


def test_a_run_whose_report_failed_for_good_is_announced_as_failed(mailbox, tmp_path):
    """MLflow down while the report writes the record: the last attempt tells the `failed` channels, with the
    error and what the store holds (report closes the run there first)."""
    from tuneloop.operators.notify import notify_unreported
    from tuneloop.operators.report import last_attempt

    config = config_with(tmp_path, '[{"conn_id": "smtp_tuneloop_test", "to": ["ml-team@example.test"], '
                                   '"events": ["failed"]}]')
    error = ConnectionError("MLflow at http://mlflow:5000 refused the connection")
    assert notify_unreported(config, CONTEXT, error, "deployed") == []
    [message] = mailbox.messages
    assert message["Subject"] == ("tuneloop speech-to-text: failed: its report did not finish "
                                  "(manual__2026-12-07T10:00:00+00:00)")
    [body] = mailbox.bodies()
    assert "the report step failed: ConnectionError: MLflow at" in body and "refused the connection" in body
    assert "the store records the run as deployed" in body

    class Attempt:
        def __init__(self, try_number: int, max_tries: int) -> None:
            self.try_number, self.max_tries = try_number, max_tries

    assert [last_attempt(Attempt(t, 1)) for t in (1, 2)] == [False, True]  # report retries once
    assert last_attempt(Attempt(1, 0))
