"""Which runs are announced, as which event, and how a message is worded and made safe for e-mail."""

from __future__ import annotations

import html
import re
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tuneloop.config import NOTIFICATION_EVENTS
from tuneloop.notifications import STATUS_EVENTS, approval_message, channels_for, run_message

# every status tuneloop.report.classify can give a run
STATUSES = ("skipped", "not_approved", "over_budget", "rejected", "rolled_back", "deployed", "insufficient_evidence",
            "declined", "failed")


@pytest.mark.parametrize("status", STATUSES)
def test_every_status_is_announced_as_a_configurable_event_or_deliberately_not(status):
    message = run_message(model_name="asr", run_id="manual__1", status=status, summary=["Run manual__1: ..."],
                          links={"Airflow run": "http://af/dags/x/runs/manual__1"})
    if status in ("skipped", "not_approved"):  # nothing new to anyone: conditions unmet, or a person said no
        assert message is None
        return
    assert message.events == (STATUS_EVENTS[status],) and STATUS_EVENTS[status] in NOTIFICATION_EVENTS
    assert message.subject == f"tuneloop asr: {status.replace('_', ' ')} (manual__1)"
    assert message.lines == ("Run manual__1: ...", "", "Airflow run: http://af/dags/x/runs/manual__1")


def test_an_over_budget_approval_is_also_a_budget_event_and_others_only_wait_for_approval():
    links = {"Answer it": "http://af/dags/x/runs/r/tasks/approve_budget/required_actions?map_index=-1"}
    budget = approval_message(model_name="asr", run_id="r", stage="budget", subject="Train over budget? (r)",
                              body="estimate $12 > max_run_usd $10", links=links)
    assert budget.events == ("waiting_for_approval", "budget_exceeded")
    assert budget.subject == "tuneloop asr: budget waiting for approval (r)"
    assert budget.lines == ("Train over budget? (r)", "", "estimate $12 > max_run_usd $10", "",
                            f"Answer it: {links['Answer it']}")
    deploy = approval_message(model_name="asr", run_id="r", stage="deployment", subject="Deploy?", body="", links={})
    assert deploy.events == ("waiting_for_approval",)


@given(st.lists(st.text(), max_size=6), st.text())
def test_any_text_is_escaped_in_the_html_and_the_subject_stays_one_line(lines, run_id):
    message = run_message(model_name="m", run_id=run_id, status="failed", summary=lines, links={})
    assert "\n" not in message.subject and "\r" not in message.subject
    body = message.html().removeprefix("<html><body>").removesuffix("</body></html>")
    parts = re.sub(r'<a href="[^"<>]*">|</a>', "", body).split("<br>\n")  # our own markup removed
    assert all("<" not in part and ">" not in part for part in parts)  # nothing of the text is markup
    assert [html.unescape(part) for part in parts] == list(message.lines)  # and all of it is there


def test_links_are_clickable_and_a_missing_link_is_left_out():
    message = run_message(model_name="m", run_id="r", status="deployed", summary=["Run r: DEPLOYED"],
                          links={"Airflow run": "http://af/dags/d/runs/r?x=1&y=2", "MLflow run": ""})
    assert message.lines[-1] == "Airflow run: http://af/dags/d/runs/r?x=1&y=2"
    assert '<a href="http://af/dags/d/runs/r?x=1&amp;y=2">http://af/dags/d/runs/r?x=1&amp;y=2</a>' in message.html()


def test_a_channel_hears_only_the_events_it_lists_and_each_message_once():
    everything = SimpleNamespace(events=list(NOTIFICATION_EVENTS))
    failures_only = SimpleNamespace(events=["failed", "rolled_back"])
    approvers = SimpleNamespace(events=["waiting_for_approval"])
    channels = [everything, failures_only, approvers]
    assert channels_for(channels, ["rolled_back"]) == [everything, failures_only]
    assert channels_for(channels, ["deployed"]) == [everything]
    assert channels_for(channels, ["waiting_for_approval", "budget_exceeded"]) == [everything, approvers]


@given(lines=st.lists(st.text(), min_size=1, max_size=5), run_id=st.text(min_size=1))
def test_any_text_reaches_slack_as_text_never_as_a_link_or_a_mention(lines, run_id):
    from tuneloop.notifications import slack_text

    message = run_message(model_name="m", run_id=run_id, status="failed", summary=lines, links={})
    text = slack_text(message)
    assert "<" not in text and ">" not in text  # Slack's control sequences are <...>: none can be formed
    unescaped = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    assert unescaped == "\n".join([f"*{message.subject}*", *message.lines])  # and all of it is there
