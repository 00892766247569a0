"""The post-deploy judgement (the served-model round trip itself is covered end to end)."""

from __future__ import annotations

from tuneloop.config import load_config
from tuneloop.post_deploy import _judge


def _config(tmp_path, threshold="0.5"):
    return load_config(env={"TUNELOOP_HOME": str(tmp_path), "TUNELOOP__DEPLOYMENT__ROLLBACK_ON_ERROR_THRESHOLD": threshold})


def test_served_model_like_the_validated_one_passes(tmp_path):
    result = _judge(_config(tmp_path), served_wer=0.21, validated_wer=0.20, n=20, mismatched=1)
    assert result.passed, result.reasons


def test_too_many_errors_fail(tmp_path):
    result = _judge(_config(tmp_path, "0.3"), served_wer=0.35, validated_wer=0.35, n=20, mismatched=0)
    assert not result.passed and "rollback_on_error_threshold 0.3" in result.reasons[-1]


def test_a_served_model_worse_than_validated_fails(tmp_path):
    result = _judge(_config(tmp_path), served_wer=0.45, validated_wer=0.20, n=20, mismatched=15)
    assert not result.passed
    assert any("exceeds the validated candidate's" in r for r in result.reasons)


def test_the_alias_must_point_to_the_deployed_version(tmp_path):
    from tuneloop.post_deploy import check_served_model

    result = check_served_model(_config(tmp_path), tmp_path / "p.jsonl", tmp_path / "e.jsonl", "3", "2")
    assert not result.passed and "points to version 2, not to the deployed 3" in result.reasons[0]
