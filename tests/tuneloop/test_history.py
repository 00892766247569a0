"""Who the deployment history names for a DAG run's registry move."""

from __future__ import annotations

import pytest

from tuneloop.history import RunActor


@pytest.mark.parametrize(("triggered_by", "approval", "name", "details"), [
    (None, None, "finetune_weekly", {"dag_id": "finetune_weekly"}),
    ("ana", None, "ana", {"dag_id": "finetune_weekly", "triggered_by": "ana"}),
    ("ana", {"approved": True, "by": "bo", "auto": False}, "bo",
     {"dag_id": "finetune_weekly", "approved_by": "bo", "triggered_by": "ana"}),
    (None, {"approved": True, "by": "policy", "auto": True}, "finetune_weekly", {"dag_id": "finetune_weekly"}),
    ("ana", {"approved": False, "by": "bo", "auto": False}, "ana",
     {"dag_id": "finetune_weekly", "triggered_by": "ana"}),
])
def test_the_approver_then_the_triggering_user_then_the_dag(triggered_by, approval, name, details):
    actor = RunActor.of_run("finetune_weekly", triggered_by, approval)
    assert actor.name == name
    assert actor.details() == details


def test_a_person_who_ended_a_canary_s_test_answers_for_its_move_and_the_approver_is_kept():
    actor = RunActor(approved_by="bo", triggered_by="ana", decided_by="cy")
    assert actor.name == "cy"
    assert actor.details() == {"dag_id": "finetune_weekly", "decided_by": "cy", "approved_by": "bo",
                               "triggered_by": "ana"}
