"""The spec is validated at the boundary: errors name the field and say what to do."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tuneloop_trainer import cli
from tuneloop_trainer.arguments import SpecError, from_mapping
from tuneloop_trainer.spec import TrainingSpec

MINIMAL = {"task": "speech-to-text", "base_model_uri": "/m", "dataset_uri": "/d", "output_uri": "/o"}


def test_defaults_match_the_contract() -> None:
    spec = from_mapping(TrainingSpec, MINIMAL)
    assert (spec.seed, spec.epochs, spec.max_steps, spec.batch_size) == (0, 3, None, 8)
    assert spec.lora.enabled and spec.lora.target_modules == ["q_proj", "v_proj"]
    assert (spec.precision, spec.label_noise, spec.mlflow) == ("fp32", "none", None)


@pytest.mark.parametrize("missing", ["task", "base_model_uri", "dataset_uri", "output_uri"])
def test_missing_field_is_named(missing: str) -> None:
    data = {k: v for k, v in MINIMAL.items() if k != missing}
    with pytest.raises(SpecError, match=f"missing required field '{missing}'"):
        from_mapping(TrainingSpec, data)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"learning_rate": 0}, "learning_rate must be > 0"),
        ({"batch_size": "8"}, "'batch_size' must be a number"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"label_noise": "flip"}, "label_noise must be one of"),
        ({"lora": {"r": 0}}, "lora.r must be >= 1"),
        ({"lora": {"rank": 8}}, r"lora: unknown field\(s\) rank"),
        ({"lr": 1e-3}, r"unknown field\(s\) lr"),
        ({"mlflow": {"tracking_uri": "sqlite:///x.db"}}, "missing required field 'mlflow.run_id'"),
        ({"max_steps": 2.5}, "must be a whole number"),
        ({"task": "translation"}, "task must be one of"),
    ],
)
def test_invalid_values_are_named(override: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        from_mapping(TrainingSpec, {**MINIMAL, **override})


def test_spec_hash_ignores_bookkeeping_but_not_training_settings() -> None:
    spec = from_mapping(TrainingSpec, MINIMAL)
    same = from_mapping(TrainingSpec, {**MINIMAL, "checkpoint_every_steps": 7,
                                       "mlflow": {"tracking_uri": "x", "run_id": "y"}})
    longer = from_mapping(TrainingSpec, {**MINIMAL, "epochs": 5})
    assert spec.spec_hash() == same.spec_hash()
    assert spec.spec_hash() != longer.spec_hash()
    assert spec.resume_key() == longer.resume_key()


def test_command_line_overrides_the_file(write_spec: Callable[[dict[str, Any]], Path]) -> None:
    path = write_spec({**MINIMAL, "epochs": 3, "lora": {"r": 8}})
    args = cli.build_parser().parse_args(
        ["train", "--spec", str(path), "--epochs", "2", "--lora-enabled", "false", "--max-steps", "none",
         "--lora-target-modules", "q_proj", "k_proj"])
    spec = cli.load_spec(args)
    assert spec.epochs == 2 and spec.max_steps is None
    assert spec.lora.enabled is False and spec.lora.r == 8 and spec.lora.target_modules == ["q_proj", "k_proj"]


def test_unknown_command_line_option_fails(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["train", "--spec", "x.json", "--learning_rate_typo", "1"])
    assert exited.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_cli_reports_a_bad_spec_and_exits_2(write_spec: Callable[[dict[str, Any]], Path],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = write_spec({k: v for k, v in MINIMAL.items() if k != "dataset_uri"})
    assert cli.main(["train", "--spec", str(path)]) == 2
    assert "missing required field 'dataset_uri'" in capsys.readouterr().err


def test_cli_reports_a_missing_spec_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--spec", str(tmp_path / "nope.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_reports_malformed_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "spec.json"
    path.write_text("{not json")
    assert cli.main(["train", "--spec", str(path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
