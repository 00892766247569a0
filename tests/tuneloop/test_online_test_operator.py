"""The online test's Required action: a person's answer, as Airflow hands it to the deferred task (the HITL
detail's resume payload, through the serde encoding of next_kwargs), read as the action, who and why."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from airflow.models.hitl import HITLDetail
from airflow.sdk.exceptions import AirflowFailException
from airflow.sdk.serde import deserialize, serialize

from tuneloop.operators.online_test import PROMOTE_NOW, ROLL_BACK_NOW, person_answer


def resumed_with(chosen: list[str], user: dict[str, str] | None, params_input: dict | None) -> dict:
    """The event ``execute_complete`` receives after a person answered in the UI or the REST API."""
    detail = HITLDetail(ti_id=uuid.uuid4(), options=[PROMOTE_NOW, ROLL_BACK_NOW], subject="End it?",
                        chosen_options=chosen, params_input=params_input, responded_by=user,
                        responded_at=datetime(2026, 12, 7, 20, tzinfo=UTC))
    return deserialize(serialize(detail.as_resume_event_payload()))


@pytest.mark.parametrize(("chosen", "action"), [([PROMOTE_NOW], "promote"), ([ROLL_BACK_NOW], "rollback")])
def test_a_person_s_choice_is_the_action_with_who_and_why(chosen, action):
    event = resumed_with(chosen, {"id": "7", "name": "ada"}, {"reason": "release train leaves today"})
    assert person_answer(event) == (action, "ada", "release train leaves today")


def test_a_person_without_a_name_or_reason_is_still_named():
    assert person_answer(resumed_with([PROMOTE_NOW], {"id": "7", "name": ""}, None)) == ("promote", "7", "")
    assert person_answer(resumed_with([ROLL_BACK_NOW], None, {})) == ("rollback", "an unnamed user", "")


@pytest.mark.parametrize("chosen", [[], ["Keep waiting"], [PROMOTE_NOW, ROLL_BACK_NOW]])
def test_a_choice_not_offered_fails_the_task_naming_it(chosen):
    with pytest.raises(AirflowFailException, match="chosen_options: expected one of"):
        person_answer(resumed_with(chosen, {"id": "7", "name": "ada"}, {}))
