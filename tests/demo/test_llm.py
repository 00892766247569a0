"""The chat demo's parts on a tiny world and a 2-step production model: the production model built through the
trainer's CLI (and reused), registered and served as production, its wrong answers ingested as chat cases with the
malformed row refused; the demo config, the CLI entry, the printed evaluation details. The whole demo (an Airflow
run that deploys) is ``make demo-llm``; the slow test measures the claim it rests on: fine-tuning on corrected
phrasings fixes held-out names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tuneloop.config import load_config
from tuneloop_demo import llm
from tuneloop_demo.llm import (
    LLM_CONFIG,
    PRODUCTION_STAMP,
    accuracy_by_phrasing,
    answer_traffic,
    build_production_model,
    error_case,
    ingest,
    print_eval_details,
)
from tuneloop_demo.main import Installation, fresh_installation
from tuneloop_demo.nickname_settings import DEMO_FINETUNE, DEMO_REPLAY, EXPORT_EVAL_SHARE
from tuneloop_demo.nickname_world import NicknameWorld, NicknameWorldConfig, build_world, read_jsonl
from tuneloop_trainer.spec import ChatModelSize

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

TINY_WORLD = NicknameWorldConfig(names=24, trained_phrasing_requests=6, suite_names=6)
TINY_SIZE = ChatModelSize(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=128, seed=0)
TWO_STEPS = {"max_steps": 2, "batch_size": 8, "learning_rate": 1e-3, "lora": {"enabled": False},
             "checkpoint_every_steps": 2, "logging_steps": 1}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> NicknameWorld:
    return build_world(tmp_path_factory.mktemp("llm") / "world", seed=0, config=TINY_WORLD)


@pytest.fixture(scope="module")
def production(world: NicknameWorld) -> Path:
    return build_production_model(world, world.root.parent / "production", size=TINY_SIZE, training=TWO_STEPS)


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Installation:
    installation = fresh_installation(tmp_path / "run", LLM_CONFIG)
    for key in ("TUNELOOP_HOME", "TUNELOOP_CONFIG"):
        monkeypatch.setenv(key, installation.env[key])
    return installation


def test_the_production_model_is_built_by_the_trainers_cli_and_reused(
        world: NicknameWorld, production: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoTokenizer

    config = json.loads((production / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["hidden_size"] == TINY_SIZE.hidden_size
    tokenizer = AutoTokenizer.from_pretrained(production)
    assert len(tokenizer) == TINY_SIZE.vocab_size and tokenizer.chat_template
    # the tokenizer learned its merges from the world's text: a name asked about is a few tokens, not one per byte
    assert len(tokenizer("nicknames of")["input_ids"]) < len("nicknames of") / 2
    stamp = json.loads((production.parents[1] / PRODUCTION_STAMP).read_text())
    assert stamp["metrics"]["steps"] == 2 and stamp["metrics"]["lora"] is False
    weights = (production / "model.safetensors").stat().st_mtime_ns
    assert build_production_model(world, production.parents[1], size=TINY_SIZE, training=TWO_STEPS) == production
    assert "reusing the production model" in capsys.readouterr().out
    assert (production / "model.safetensors").stat().st_mtime_ns == weights


def test_bootstrap_registers_the_chat_model_and_serves_it(world: NicknameWorld, production: Path,
                                                          install: Installation) -> None:
    """``tuneloop bootstrap`` logs a chat model with the chat pyfunc: the production alias answers conversations;
    the world's suite file registers as a chat suite."""
    from tuneloop.cli import main
    from tuneloop.registry import ModelRegistry

    assert main(["bootstrap", str(production), "--reason", "test"]) == 0
    assert main(["suite", "add", "trained-phrasing", str(world.trained_suite)]) == 0
    config = install.config()
    registry = ModelRegistry(config.tracking_uri, config.registry_uri, config.mlflow.model_name)
    served = registry.load_pyfunc("production")  # models:/<name>@production, process settings left as they were
    replies = served.predict([[{"role": "user", "content": "nicknames of aaron"}]])
    assert len(replies) == 1 and isinstance(replies[0], str)


def test_wrong_answers_become_chat_cases_and_the_malformed_row_is_refused(
        world: NicknameWorld, production: Path, install: Installation, capfd: pytest.CaptureFixture[str]) -> None:
    from tuneloop.store import ErrorCaseStore

    cases = answer_traffic(install, world, production)
    rows = read_jsonl(cases)
    *valid, malformed = rows
    traffic = {row["id"]: row for row in read_jsonl(world.traffic)}
    assert valid and all(row["output"] != row["ideal"] == traffic[row["id"]]["messages"][-1]["content"]
                         for row in valid)
    assert not malformed["ideal"].strip()
    assert f"{len(traffic)} requests, {len(valid)} answered wrongly" in capfd.readouterr().out

    ingest(install, cases)  # tuneloop ingest, as a subprocess
    assert f"{len(valid)} accepted, 0 duplicates, 1 rejected" in capfd.readouterr().out
    store = ErrorCaseStore.from_config(install.config())
    assert store.statistics().total_cases == len(valid)
    assert [r.field for r in store.ingest_rejections()] == ["ideal"]
    case = store.get_case(valid[0]["id"])
    assert case.payload["messages"] == [{"role": "user", "content": valid[0]["prompt"]}]
    assert case.correction == valid[0]["ideal"] and case.metadata["phrasing"] == valid[0]["metadata"]["phrasing"]


def test_error_case_and_accuracy_by_phrasing() -> None:
    request = {"id": "r1", "messages": [{"role": "user", "content": "is there a short name for abraham?"},
                                        {"role": "assistant", "content": "ab, abe"}],
               "name": "abraham", "phrasing": "user-2", "created_at": "2026-01-01T00:00:00+00:00"}
    case = error_case(request, "abe")
    assert (case["prompt"], case["output"], case["ideal"], case["model_version"]) == \
        ("is there a short name for abraham?", "abe", "ab, abe", "1")
    assert case["metadata"] == {"phrasing": "user-2", "name": "abraham"}
    other = {**request, "id": "r2", "phrasing": "trained"}
    assert accuracy_by_phrasing([request, other], {"r1": "abe", "r2": "ab, abe"}) == \
        {"user-2": (0, 1), "trained": (1, 1)}


def test_the_demo_config_is_a_chat_model_with_the_measured_settings() -> None:
    config = load_config(LLM_CONFIG, env={})
    assert config.task == "chat" and config.validation.text.primary_metric == "exact_match"
    training, lora = config.training, DEMO_FINETUNE["lora"]
    assert (training.epochs, training.batch_size, training.learning_rate, training.warmup_ratio) == \
        (DEMO_FINETUNE["epochs"], DEMO_FINETUNE["batch_size"], DEMO_FINETUNE["learning_rate"],
         DEMO_FINETUNE["warmup_ratio"])
    assert (training.use_lora, training.lora_rank, training.lora_alpha, training.lora_dropout,
            list(training.lora_target_modules)) == \
        (lora["enabled"], lora["r"], lora["alpha"], lora["dropout"], lora["target_modules"])
    assert config.dataset.replay_size == DEMO_REPLAY and config.dataset.eval_fraction == EXPORT_EVAL_SHARE
    assert {"phrasing", "name"} <= set(config.dataset.slice_fields)
    assert not config.regression.suites  # the demo registers its suite with `tuneloop suite add`


@pytest.mark.parametrize("argv, expected", [(["demo", "--llm"], False), (["demo", "--llm", "--bad-candidate"], True)])
def test_tuneloop_demo_llm_runs_the_chat_demo(argv: list[str], expected: bool, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneloop.cli import main

    calls: list[dict[str, Any]] = []
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path))
    monkeypatch.setattr(llm, "run_llm_demo", lambda **kwargs: calls.append(kwargs) or 0)
    assert main([*argv, "--workdir", str(tmp_path)]) == 0
    assert calls == [{"bad_candidate": expected, "workdir": tmp_path}]


def test_eval_details_come_from_the_runs_predictions_and_dataset(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    install = Installation(tmp_path, {}, LLM_CONFIG)
    run = tmp_path / "tuneloop" / "storage" / "runs" / "manual-1"
    dataset = tmp_path / "dataset"
    eval_rows = [("e1", "anna", "user-1", "ann", "x", "ann"), ("e2", "bob", "user-1", "rob", "bo", "bob"),
                 ("e3", "carl", "user-2", "charlie", "chuck", "charlie")]  # id, name, phrasing, ideal, replies
    _write(dataset / "train.jsonl", [{"id": "t1", "name": "anna"}, {"id": "t2", "name": "dora"}, {"id": "replay"}])
    _write(dataset / "eval.jsonl", [{"id": i, "name": name} for i, name, *_ in eval_rows])
    _write(run / "training" / "spec.json", [{"dataset_uri": f"file://{dataset}"}])
    for tag, column in (("production", 4), ("candidate", 5)):
        _write(run / "predictions" / tag / "eval.jsonl",
               [{"id": row[0], "reference": row[3], "hypothesis": row[column], "phrasing": row[2]}
                for row in eval_rows])
    print_eval_details(install)
    out = capsys.readouterr().out
    assert "phrasing user-1   n=2   right: production  0 -> candidate  1" in out
    assert "phrasing user-2   n=1   right: production  0 -> candidate  1" in out
    assert "asks about 3 names, 1 of them asked about in the train split's cases" in out


def test_a_chat_split_is_logged_as_an_mlflow_dataset(tmp_path: Path) -> None:
    """Chat rows have no transcript column (the target is the last message): the export still logs them."""
    from mlflow import MlflowClient

    from tuneloop import tracking

    config = load_config(LLM_CONFIG, env={"TUNELOOP_HOME": str(tmp_path / "home")})
    run_id = tracking.ensure_run(config, "manual__chat", dag_id="test")
    _write(tmp_path / "ds" / "train.jsonl", [{"id": "a", "messages": [{"role": "user", "content": "nicknames of al"},
                                                                      {"role": "assistant", "content": "al"}]}])
    tracking.log_dataset(config, run_id, tmp_path / "ds", "ds-1", "train")
    inputs = MlflowClient(config.tracking_uri).get_run(run_id).inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["ds-1-train"]


@pytest.mark.slow
def test_fine_tuning_on_corrected_phrasings_fixes_held_out_names(tmp_path: Path) -> None:
    """The demo's claim without Airflow (``measure-llm`` with the demo's settings; ~1.5 minutes on 2 cores, most
    of it building production): production learned its training questions but is wrong on every held-out case;
    the candidate fixes most of them though their names occur in none of its error cases, and keeps the
    regression suite. (The shuffled-replies candidate is ``make demo-llm-bad``.)"""
    from tuneloop_demo.nickname_measure import measure

    report = json.loads(measure(tmp_path, ["demo"], [0]).read_text())
    assert report["error_cases"]["eval_names_in_train_cases"] == 0
    assert report["production"]["eval_exact_match"] == 0.0
    assert report["production"]["trained_phrasing_exact_match"] >= 0.95
    candidate = report["variants"]["demo/seed0"]
    assert candidate["eval_exact_match"] >= 0.4 and candidate["broken"] == 0 and candidate["mcnemar_p"] < 1e-4
    assert candidate["suite_exact_match"] >= 0.95


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(rows[0]))
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
