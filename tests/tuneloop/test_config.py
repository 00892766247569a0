"""Configuration: seed defaults, YAML, environment overrides, errors that name the field."""

from __future__ import annotations

import pytest
import yaml

from tuneloop.config import (DEFAULT_CONFIG_FILE, EXPORTED_ROW_FIELDS, REPO_ROOT, ConfigError, TuneloopConfig,
                             load_config)


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


def _load(tmp_path, **env: str):
    return load_config(env={"TUNELOOP_HOME": str(tmp_path), **env})


@pytest.mark.parametrize("slices", [
    '[{"field": "condition"}, {"field": "accent"}]',          # metadata the export drops (not in slice_fields)
    '[{"field": "speaker_age", "buckets": [30, 60]}]',
])
def test_a_slice_on_a_field_the_export_drops_is_a_load_error(tmp_path, slices):
    """Every row would be '(missing)' and the slice gate would silently re-judge the whole eval set."""
    index = 1 if "accent" in slices else 0
    with pytest.raises(ConfigError, match=rf"validation\.slices\[{index}\]\.field: .* add it to dataset\.slice_fields"):
        _load(tmp_path, TUNELOOP__VALIDATION__SLICES=slices)


@pytest.mark.parametrize(("slices", "slice_fields"), [
    ('[{"field": "duration_s", "buckets": [2, 5]}, {"field": "model_version"}]', None),  # every row carries these
    ('[{"field": "accent"}]', '["voice", "accent"]'),                                      # exported metadata
])
def test_slices_on_exported_fields_load(tmp_path, slices, slice_fields):
    env = {"TUNELOOP__VALIDATION__SLICES": slices}
    if slice_fields:
        env["TUNELOOP__DATASET__SLICE_FIELDS"] = slice_fields
    assert _load(tmp_path, **env).validation.slices


@pytest.mark.parametrize(("env", "loads"), [
    ({}, True),                                                             # 336 > 72 + 24 + 72 + 2 + 72 (canary)
    ({"TUNELOOP__SCHEDULE__RUN_TIMEOUT_HOURS": "100"}, False),                          # a run may take 242 h
    ({"TUNELOOP__SCHEDULE__RUN_TIMEOUT_HOURS": "100", "TUNELOOP__TRIGGER__APPROVAL_TIMEOUT_HOURS": "12",
      "TUNELOOP__DEPLOYMENT__APPROVAL_TIMEOUT_HOURS": "12", "TUNELOOP__DEPLOYMENT__CANARY__MAX_DURATION_HOURS": "12"},
     True),
])
def test_the_run_deadline_is_above_what_a_live_run_may_take(tmp_path, env, loads):
    """A deadline a live run can reach would fail it and let a second run train on the same cases."""
    if loads:
        assert _load(tmp_path, **env).schedule.run_timeout_hours > 0
    else:
        with pytest.raises(ConfigError, match=r"schedule\.run_timeout_hours: 100 h would fail runs .*canary.* above 242 h"):
            _load(tmp_path, **env)


def test_the_always_exported_fields_are_each_tasks_own():
    from tuneloop.config import EXPORTED_ROW_FIELDS_BY_TASK
    from tuneloop.tasks import TASK_MODULES

    assert set(EXPORTED_ROW_FIELDS_BY_TASK) == set(TASK_MODULES)
    from tuneloop.tasks import chat, speech_to_text

    assert set(EXPORTED_ROW_FIELDS) == set(speech_to_text.FIXED_ROW_KEYS) - {"id", "audio", "text"}
    assert set(EXPORTED_ROW_FIELDS_BY_TASK["chat"]) == set(chat.FIXED_ROW_KEYS) - {"id", "messages"}


def test_a_chat_model_may_slice_on_its_own_row_fields():
    config = TuneloopConfig.model_validate({"task": "chat", "validation": {"slices": [{"field": "domain"}]}})
    assert config.validation.slices[0].field == "domain"
    with pytest.raises(ValueError, match="not a field of the exported eval rows"):
        TuneloopConfig.model_validate({"validation": {"slices": [{"field": "domain"}]}})


def test_the_seed_s_deployment_strategies_and_the_canary_s_settings(tmp_path):
    assert _load(tmp_path).deployment.deployment_strategy == "replace"
    config = _load(tmp_path, TUNELOOP__DEPLOYMENT__DEPLOYMENT_STRATEGY="canary",
                   TUNELOOP__DEPLOYMENT__CANARY__TRAFFIC_PERCENT="25")
    assert (config.deployment.deployment_strategy, config.deployment.canary.traffic_percent) == ("canary", 25)
    with pytest.raises(ConfigError, match=r"deployment\.deployment_strategy: .*'replace', 'canary' or 'blue_green'"):
        _load(tmp_path, TUNELOOP__DEPLOYMENT__DEPLOYMENT_STRATEGY="rolling")
    for percent in ("0", "100"):
        with pytest.raises(ConfigError, match=r"deployment\.canary\.traffic_percent"):
            _load(tmp_path, TUNELOOP__DEPLOYMENT__CANARY__TRAFFIC_PERCENT=percent)


def test_the_shipped_yaml_states_the_code_defaults(tmp_path):
    """One default per setting: the shipped file may spell a default out, never contradict it (its slices are an
    example, since the code declares none)."""
    shipped = load_config(DEFAULT_CONFIG_FILE, env={"TUNELOOP_HOME": str(tmp_path)}).model_dump(mode="json")
    defaults = TuneloopConfig(home=tmp_path).model_dump(mode="json")
    shipped["validation"].pop("slices"), defaults["validation"].pop("slices")
    differing = {f"{section}.{key}": value for section, fields in shipped.items() if isinstance(fields, dict)
                 for key, value in fields.items() if value != defaults[section][key]}
    assert differing == {}
    assert shipped == defaults


@pytest.mark.parametrize("config_file", [DEFAULT_CONFIG_FILE, REPO_ROOT / "include" / "demo" / "tuneloop-demo.yaml"])
def test_the_bundled_configs_load(tmp_path, config_file):
    assert load_config(config_file, env={"TUNELOOP_HOME": str(tmp_path)}).validation.slices


# -------------------------------------------------------------------------------------------- several models


def _two_models(**support: object) -> dict[str, object]:
    return {"training": {"epochs": 5, "batch_size": 4},
            "models": [{"name": "asr", "task": "speech_to_text", "model_name": "speech-to-text"},
                       {"name": "support", "task": "chat", "model_name": "support-assistant", **support}]}


def test_each_model_gets_the_shared_sections_with_its_own_overrides_merged_in():
    config = TuneloopConfig.model_validate(_two_models(training={"epochs": 2, "pod": {"gpus": 2}},
                                                       dataset={"eval_fraction": 0.5}))
    asr, support = config.each_model()
    assert (asr.name, asr.task, asr.mlflow.model_name) == ("asr", "speech_to_text", "speech-to-text")
    assert (support.name, support.task, support.mlflow.model_name) == ("support", "chat", "support-assistant")
    assert (asr.training.epochs, support.training.epochs) == (5, 2)
    assert support.training.batch_size == 4  # shared, not overridden
    assert support.training.pod.gpus == 2 and support.training.pod.namespace == "tuneloop"  # merged key by key
    assert (asr.dataset.eval_fraction, support.dataset.eval_fraction) == (0.3, 0.5)
    assert asr.mlflow.experiment_name != support.mlflow.experiment_name  # their runs get the same run ids
    assert support.models == () and support.for_model("support") is support


def test_dag_ids_keep_todays_names_for_one_model_and_are_suffixed_for_several():
    assert TuneloopConfig().dag_id("finetune_weekly") == "finetune_weekly"
    config = TuneloopConfig.model_validate(_two_models())
    assert [m.dag_id("finetune_weekly") for m in config.each_model()] == ["finetune_weekly_asr",
                                                                          "finetune_weekly_support"]
    assert config.for_dag("finetune_on_errors_support").name == "support"
    assert config.for_dag("my_own_dag_asr").name == "asr"
    with pytest.raises(ConfigError, match="belongs to none of the configured models"):
        config.for_dag("finetune_weekly")


@pytest.mark.parametrize(("models", "message"), [
    ([{"name": "a", "task": "chat", "model_name": "m"}, {"name": "a", "task": "chat", "model_name": "n"}],
     "models[1].name: 'a' is already used"),
    ([{"name": "a", "task": "chat", "model_name": "m"}, {"name": "b", "task": "chat", "model_name": "m"}],
     "models[1].model_name: 'm' is already used"),
    ([{"name": "a", "task": "chat", "model_name": "m", "training": {"epochs": 0}}],
     "models[0] (a): training.epochs"),
    ([{"name": "a", "task": "chat", "model_name": "m", "training": {"epoch": 3}}],
     "models[0] (a): training.epoch: Extra inputs are not permitted"),
    ([{"name": "Support-Bot", "task": "chat", "model_name": "m"}], "models.0.name"),
    ([{"name": "a", "task": "translation", "model_name": "m"}], "models.0.task"),
], ids=["same-name", "same-registered-model", "bad-override", "unknown-override-key", "bad-name", "unknown-task"])
def test_a_bad_model_entry_is_refused_at_load_naming_it(tmp_path, models, message):
    file = tmp_path / "tuneloop.yaml"
    file.write_text(yaml.safe_dump({"models": models}))
    with pytest.raises(ConfigError) as error:
        load_config(file, env={})
    assert message in str(error.value)


def test_a_one_model_config_has_no_other_model():
    with pytest.raises(ConfigError, match="model 'support' is not configured"):
        TuneloopConfig().for_model("support")
