"""The `tuneloop` command line, in-process, against a real store and a real local MLflow."""

from __future__ import annotations

import json
import re

import pytest

from tuneloop.cli import main


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    return tmp_path


def test_ingest_reports_bad_rows_and_keeps_good_ones(home, wav_factory, capsys):
    rows = [{"audio_path": str(wav_factory("a.wav")), "prediction": "helo", "correction": "hello"},
            {"audio_path": str(wav_factory("b.wav")), "prediction": "x", "correction": "   "},
            {"audio_path": str(wav_factory("c.wav")), "prediction": "x", "correction": "y", "error_score": "high"}]
    batch = home / "cases.jsonl"
    batch.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")

    assert main(["ingest", str(batch)]) == 1
    out = capsys.readouterr().out
    assert "1 accepted, 0 duplicates, 3 rejected" in out
    assert "line 3: error_score" in out and "line 4" in out

    assert main(["ingest", str(batch)]) == 1
    assert "0 accepted, 1 duplicates" in capsys.readouterr().out


def test_ingest_stores_the_valid_row_beside_poison_rows(home, wav_factory, capsys):
    """Rows that used to end `tuneloop ingest` with a traceback and 0 cases stored."""
    valid = json.dumps({"audio_path": str(wav_factory("a.wav")), "prediction": "helo", "correction": "hello"})
    poison = ['{"error_score": 1' + "0" * 400 + "}", '{"prediction": "\\ud800"}', "[" * 100_000 + "]" * 100_000,
              '{"created_at": "9999-12-31T23:59:59-01:00"}', '{"n": ' + "9" * 4400 + "}"]
    batch = home / "cases.jsonl"
    batch.write_text("\n".join([valid, *poison]) + "\n")

    assert main(["ingest", str(batch)]) == 1
    out = capsys.readouterr().out
    assert "1 accepted, 0 duplicates, 5 rejected" in out
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cases"]["total_cases"] == 1


def test_status_json_on_an_empty_installation(home, capsys):
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["model"]["production_version"] is None
    assert status["trigger"]["should_trigger"] is False
    assert status["cases"]["total_cases"] == 0


def test_rollback_with_nothing_to_roll_back_is_a_clear_error(home, capsys):
    assert main(["rollback", "--reason", "test"]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.fixture
def two_deployed_versions(home, tmp_path_factory, monkeypatch):
    """The installation's real MLflow registry with v1 bootstrapped and v2 deployed over it (no model files)."""
    from tests.tuneloop.registry_testing import MlflowEnv, template_db
    from tuneloop.config import load_config
    from tuneloop.deployment import bootstrap_production, deploy
    from tuneloop.store import ErrorCaseStore

    monkeypatch.chdir(home)
    config = load_config()
    config.home.mkdir()
    env = MlflowEnv.create(config.home, template_db(tmp_path_factory.getbasetemp()))  # <home>/mlflow.db
    registry = env.registry(config.mlflow.model_name)
    assert (env.uri, registry.model_name) == (config.tracking_uri, "speech-to-text")
    store = ErrorCaseStore.from_config(config)
    v1, v2 = (env.quick_version(registry, f"run-{i}") for i in (1, 2))
    bootstrap_production(registry, store, version=v1)
    registry.set_alias("candidate", v2)
    deploy(registry, store, v2, reason="gate passed")
    return registry, v1, v2


def test_rollback_to_previous_then_to_a_given_version(two_deployed_versions, capsys):
    registry, v1, v2 = two_deployed_versions

    assert main(["rollback", "--reason", "WER rose after deploy"]) == 0
    assert capsys.readouterr().out == f"production: v{v2} -> v{v1} (WER rose after deploy)\n"
    assert registry.aliases() == {"production": v1}  # nothing served before v1: no 'previous'
    assert main(["history", "--json"]) == 0
    newest = json.loads(capsys.readouterr().out)[0]
    assert (newest["action"], newest["from_version"], newest["to_version"], newest["reason"]) == (
        "rollback", v2, v1, "WER rose after deploy")

    assert main(["rollback", "--to", v2, "--reason", "v2 was fine after all"]) == 0
    assert capsys.readouterr().out == f"production: v{v1} -> v{v2} (v2 was fine after all)\n"
    assert registry.aliases() == {"production": v2}  # v1 was rolled back from: never a default target again
    assert main(["history"]) == 0
    assert [line.split()[2:6] for line in capsys.readouterr().out.splitlines()] == [
        ["rollback", f"v{v1}", "->", f"v{v2}"], ["rollback", f"v{v2}", "->", f"v{v1}"],
        ["deploy", f"v{v1}", "->", f"v{v2}"], ["bootstrap", "none", "->", f"v{v1}"]]  # was "vNone -> v1" in the demo


def test_rollback_to_an_unknown_version_leaves_production(two_deployed_versions, capsys):
    registry, v1, v2 = two_deployed_versions
    assert main(["rollback", "--to", "7", "--reason", "typo"]) == 2
    assert "cannot roll back 'speech-to-text': version 7" in capsys.readouterr().err
    assert registry.aliases() == {"production": v2, "previous": v1}


def test_history_when_empty(home, capsys):
    assert main(["history"]) == 0
    assert "no deployments yet" in capsys.readouterr().out


def test_status_without_a_production_model_says_none(home, capsys):
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "model speech-to-text: production none (previous none)" in out
    assert "vNone" not in out
    assert "regression suites:\n  (none registered)\n" in out


def test_no_text_prints_a_version_without_version_label():
    """The class of bug behind `bootstrap vNone -> v1`: a ``v{...}`` f-string around a version that can be None.
    Every version shown to people goes through ``tuneloop.history.version_label``."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    sources = [*(repo / "plugins" / "tuneloop").rglob("*.py"), *(repo / "include" / "demo").rglob("*.py")]
    sources = [path for path in sources if path.name != "history.py"]  # where version_label itself lives
    offenders = [f"{path.relative_to(repo)}:{number}: {line.strip()}" for path in sources
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"""f["'].*\bv\{""", line)]
    assert not offenders, "use version_label(...) instead of v{...}:\n" + "\n".join(offenders)


def test_suite_add_list_and_status(home, wav_factory, capsys):
    suite = home / "suite" / "critical.jsonl"
    suite.parent.mkdir()
    suite.write_text(json.dumps({"id": "s1", "audio": str(wav_factory("s1.wav")), "text": "lights on"}) + "\n")
    assert main(["suite", "add", "critical-commands", str(suite), "--type", "critical", "--baseline-wer", "0.1",
                 "--baseline-version", "3"]) == 0
    assert "suite critical-commands (critical): 1 items" in capsys.readouterr().out

    from tuneloop.config import load_config
    from tuneloop.store import ErrorCaseStore

    store = ErrorCaseStore.from_config(load_config())
    store.record_suite_result("run-1", {"name": "critical-commands", "model_version": "4", "wer": 0.08, "cer": 0.02,
                                        "n": 1, "passed": True})
    assert main(["suite", "list"]) == 0
    out = capsys.readouterr().out
    assert "critical-commands (critical" in out and "baseline WER 0.1 (3)" in out and "v4  WER 0.080" in out
    assert main(["status"]) == 0
    assert "critical-commands (critical): v4 WER 0.080 pass" in capsys.readouterr().out
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["regression_suites"][0]["history"][0]["model_version"] == "4"


def test_suite_add_refuses_a_broken_file(home, capsys):
    broken = home / "broken.jsonl"
    broken.write_text('{"id": "a", "audio": "x.wav"}\n')
    assert main(["suite", "add", "broken", str(broken)]) == 2
    assert "a row needs non-empty string fields audio and text" in capsys.readouterr().err
    assert main(["suite", "add", "eval", str(broken)]) == 2
    assert "reserved" in capsys.readouterr().err


def test_runs_lists_runs_and_fail_ends_a_stuck_one_in_the_history(home, capsys):
    from tuneloop.config import load_config
    from tuneloop.store import ErrorCaseStore

    store = ErrorCaseStore.from_config(load_config())
    store.start_training_run("manual__stuck")
    store.finish_training_run("scheduled__old", "skipped")

    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    assert "running               manual__stuck  running for 0.0 h, deadline in 336.0 h" in out
    assert "skipped" in out and "scheduled__old" in out
    assert main(["runs", "--fail", "manual__stuck"]) == 2
    assert "--reason" in capsys.readouterr().err

    assert main(["runs", "--fail", "manual__stuck", "--reason", "worker VM deleted"]) == 0
    assert "failed by hand (worker VM deleted)" in capsys.readouterr().out
    runs = {r["run_id"]: r for r in json.loads(_out(capsys, ["runs", "--json"]))}
    assert runs["manual__stuck"]["status"] == "failed"
    assert "worker VM deleted" in runs["manual__stuck"]["summary"]["reason"]
    event = json.loads(_out(capsys, ["history", "--json"]))[0]
    assert (event["action"], event["run_id"], event["reason"]) == ("run_failed", "manual__stuck", "worker VM deleted")
    assert event["actor"].startswith("cli:")
    assert main(["runs", "--fail", "manual__stuck", "--reason", "again"]) == 2  # not running any more
    assert "is not running (it finished failed)" in capsys.readouterr().err


def _out(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


TWO_MODELS = """
models:
  - {name: asr, task: speech_to_text, model_name: speech-to-text}
  - {name: support, task: chat, model_name: support-assistant}
"""


def test_several_models_each_command_names_one_and_status_shows_all(home, wav_factory, capsys):
    """With models: configured, cases go to the named model only; status lists every model; a command that works
    on one model without --model is refused naming the choices."""
    config = home / "tuneloop.yaml"
    config.write_text(TWO_MODELS)
    batch = home / "cases.jsonl"
    batch.write_text(json.dumps({"audio_path": str(wav_factory("a.wav")), "prediction": "helo",
                                 "correction": "hello"}) + "\n")

    assert main(["--config", str(config), "ingest", str(batch)]) == 2
    assert "several models are configured (asr, support): name one with --model" in capsys.readouterr().err
    assert main(["--config", str(config), "ingest", "--model", "asr", str(batch)]) == 0
    capsys.readouterr()
    assert main(["--config", str(config), "status", "--json"]) == 0
    models = json.loads(capsys.readouterr().out)["models"]
    assert {name: s["cases"]["total_cases"] for name, s in models.items()} == {"asr": 1, "support": 0}
    assert models["support"]["model"]["name"] == "support-assistant"
    assert main(["--config", str(config), "status"]) == 0
    out = capsys.readouterr().out
    assert "== model asr (speech_to_text)" in out and "== model support (chat)" in out
    assert main(["--config", str(config), "history", "--model", "nope"]) == 2
    assert "model 'nope' is not configured; models: asr, support" in capsys.readouterr().err


def test_suite_add_and_list_for_a_chat_model_beside_a_speech_one(home, capsys):
    """A chat model's suite: chat rows checked when added, score baseline and cap; the other kind's flags refused
    naming the flag; its history printed with its metric, the speech model's untouched."""
    from tuneloop.config import load_config
    from tuneloop.store import ErrorCaseStore

    config = home / "tuneloop.yaml"
    config.write_text(TWO_MODELS)
    suite = home / "policies.jsonl"
    suite.write_text(json.dumps({"id": "p1", "messages": [{"role": "user", "content": "Can I return a gift?"},
                                                          {"role": "assistant", "content": "Yes."}]}) + "\n")
    add = ["--config", str(config), "suite", "add", "policies", str(suite), "--model"]

    assert main([*add, "support", "--baseline-wer", "0.1"]) == 2
    assert ("--baseline-wer: model 'support' is a chat model, judged by exact_match (validation.text.primary_metric), "
            "not WER; use --baseline-score / --max-score-drop") in capsys.readouterr().err
    assert main([*add, "asr", "--baseline-score", "0.9"]) == 2
    assert ("--baseline-score: model 'asr' is a speech model, judged by WER; use --baseline-wer / --baseline-cer / "
            "--max-wer-degradation") in capsys.readouterr().err
    broken = home / "broken.jsonl"
    broken.write_text(json.dumps({"id": "p1", "messages": [{"role": "user", "content": "Can I return a gift?"}]}))
    assert main(["--config", str(config), "suite", "add", "broken", str(broken), "--model", "support"]) == 2
    assert f"({broken}:1): messages[0].role: the last message must be the assistant's" in capsys.readouterr().err

    assert main([*add, "support", "--type", "critical", "--baseline-score", "0.8", "--baseline-version", "3",
                 "--max-score-drop", "0.1"]) == 0
    assert "suite policies (critical): 1 items" in capsys.readouterr().out
    store = ErrorCaseStore.from_config(load_config(config).for_model("support"))
    assert store.registered_suites()[0].max_score_drop == 0.1
    store.record_suite_result("run-1", {"name": "policies", "model_version": "4", "metric": "exact_match",
                                        "score": 0.75, "n": 1, "passed": True})

    assert main(["--config", str(config), "suite", "list", "--model", "support"]) == 0
    out = capsys.readouterr().out
    assert "policies (critical" in out and "baseline exact_match 0.8 (3)" in out and "v4  exact_match 0.750  n=1" in out
    assert main(["--config", str(config), "suite", "list", "--model", "asr"]) == 0
    assert "no regression suites" in capsys.readouterr().out
    assert main(["--config", str(config), "status"]) == 0
    out = capsys.readouterr().out
    assert out.split("== model support")[1].count("policies (critical): v4 exact_match 0.750 pass") == 1


def test_status_reads_production_from_the_history_and_registry_compares(home, capsys, tmp_path_factory):
    """`status` answers from the store's deployment history (no MLflow import); `--registry` reads MLflow too and
    flags an alias moved outside tuneloop."""
    import shutil

    from mlflow import MlflowClient

    from tests.tuneloop.registry_testing import MlflowEnv, template_db
    from tuneloop.config import load_config
    from tuneloop.deployment import bootstrap_production, deploy
    from tuneloop.store import ErrorCaseStore

    config = load_config()
    config.home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template_db(tmp_path_factory.getbasetemp()), config.home / "mlflow.db")
    env = MlflowEnv(home, config.tracking_uri, MlflowClient(config.tracking_uri, config.registry_uri), "")
    registry, store = env.registry(config.mlflow.model_name), ErrorCaseStore.from_config(config)
    v1, v2 = (env.quick_version(registry, f"run-{i}") for i in (1, 2))
    bootstrap_production(registry, store, version=v1)
    deploy(registry, store, v2, reason="gate passed: WER 0.40 -> 0.30 (p=0.002)\nslices: all pass", actor="airflow",
           run_id="scheduled__1")
    registry.set_tags(v2, {"eval_wer": "0.30"})

    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "production v2 (previous v1)" in out
    assert "deploy by airflow: gate passed: WER 0.40 -> 0.30 (p=0.002)\n" in out
    assert "eval_wer" not in out  # tags are the registry's: only with --registry

    registry.set_alias("production", v1)  # moved by hand in the MLflow UI
    assert main(["status", "--json", "--registry"]) == 0
    model = json.loads(capsys.readouterr().out)["model"]
    assert (model["production_version"], model["previous_version"]) == ("2", "1")
    assert model["production_since"]["run_id"] == "scheduled__1"
    assert model["registry"]["production_version"] == "1" and not model["registry"]["agrees_with_history"]
    assert main(["status", "--registry"]) == 0
    assert "WARNING: the MLflow registry says production v1" in capsys.readouterr().out


def test_status_does_not_import_mlflow(home):
    """MLflow's import alone takes longer than the whole status of a million cases; only --registry pays it."""
    import subprocess
    import sys

    script = ("import sys; from tuneloop.cli import main; code = main(['status', '--json']); "
              "sys.exit(code or ('mlflow' in sys.modules and 3))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, "status imported mlflow" if done.returncode == 3 else done.stderr[-2000:]


def test_costs_lists_each_run_and_each_month_against_the_budget(home, capsys, monkeypatch):
    from tuneloop.config import load_config
    from tuneloop.store import ErrorCaseStore

    assert main(["costs"]) == 0
    assert "runs: (none yet)" in capsys.readouterr().out
    monkeypatch.setenv("TUNELOOP__COSTS__MONTHLY_BUDGET_USD", "100")
    store = ErrorCaseStore.from_config(load_config())
    roi = {"payback_days": 2.5, "payback_note": None}
    store.finish_training_run("run-a", "deployed", summary={"costs": {
        "training": {"usd": 12.5, "basis": "2,500,000 trained tokens x $5/1M (gpt-4.1-mini)"}, "roi": roi}})
    store.finish_training_run("run-b", "failed", summary={"costs": {"training": {"usd": None, "basis": "no price"}}})
    assert main(["costs"]) == 0
    out = capsys.readouterr().out
    assert "budget: no limit per run; monthly $100.00" in out
    assert "$12.50 over 2 trained run(s) (+1 of unknown cost), $87.50 left" in out
    assert "run-a  deployed     $12.50  payback 2.5 days" in out and "run-b  failed       unknown" in out
    assert main(["costs", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["training_usd"] for r in report["runs"]] == [12.5, None]
    assert main(["status", "--json"]) == 0
    costs = json.loads(capsys.readouterr().out)["costs"]
    assert (costs["this_month_usd"], costs["unknown_cost_runs"], costs["latest_roi"]) == (12.5, 1, roi)


def test_bootstrap_takes_exactly_one_model_and_a_provider_s_only_for_chat(home, capsys):
    """One of a model directory, --openai-model, --vertex-model; the providers' models are chat models."""
    for argv in (["bootstrap"], ["bootstrap", str(home), "--vertex-model", "gemini-2.5-flash"],
                 ["bootstrap", "--openai-model", "gpt-4.1-mini-2025-04-14", "--vertex-model", "gemini-2.5-flash"]):
        capsys.readouterr()
        assert main(argv) == 2
        assert "give one of a model directory, --openai-model or --vertex-model" in capsys.readouterr().err
    assert main(["bootstrap", "--vertex-model", "gemini-2.5-flash"]) == 2  # the default model is speech-to-text
    assert "--vertex-model: vertex serves chat models; this model's task is speech_to_text" in capsys.readouterr().err
