"""Configuration: seed defaults, YAML, environment overrides, errors that name the field."""

from __future__ import annotations

import pytest

from tuneloop.config import ConfigError, load_config


def test_defaults_are_the_seeds(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    config = load_config(empty, env={"TUNELOOP_HOME": str(tmp_path)})
    assert (config.trigger.min_error_cases, config.trigger.min_corrected_cases) == (100, 50)
    assert config.trigger.error_rate_threshold == 0.15 and config.trigger.trigger_on_error_rate
    assert config.validation.significance_alpha == 0.05 and config.validation.require_significance
    assert config.validation.max_wer_degradation_rate == 0.10
    assert config.deployment.keep_previous_versions == 5
    assert config.resolved_store_url == f"sqlite:///{tmp_path / 'store.db'}"
    assert config.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_env_overrides_yaml(tmp_path):
    file = tmp_path / "t.yaml"
    file.write_text("validation:\n  significance_alpha: 0.01\ntraining:\n  epochs: 4\n")
    env = {"TUNELOOP__TRAINING__EPOCHS": "7", "TUNELOOP__TRAINING__LORA_TARGET_MODULES": '["q_proj"]',
           "TUNELOOP__TRIGGER__AUTO_APPROVE_FINETUNING": "true"}
    config = load_config(file, env=env)
    assert config.validation.significance_alpha == 0.01
    assert config.training.epochs == 7
    assert config.training.lora_target_modules == ("q_proj",)
    assert config.trigger.auto_approve_finetuning is True


@pytest.mark.parametrize(("env", "field"), [
    ({"TUNELOOP__VALIDATION__SIGNIFICANCE_ALPHA": "2"}, "validation.significance_alpha"),
    ({"TUNELOOP__TRAINING__EPOCHS": "many"}, "training.epochs"),
    ({"TUNELOOP__TRIGGER__NO_SUCH_KEY": "1"}, "trigger.no_such_key"),
    ({"TUNELOOP__DATASET__MIN_DURATION_S": "40"}, "dataset"),
])
def test_bad_values_name_the_field(tmp_path, env, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(env=env)


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml", env={})
