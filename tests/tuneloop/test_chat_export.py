"""A chat model's cases through the real store and the task-neutral export: ingest (with refusals), the chat
filters, dedupe on normalised prompt + response, the time split, the held-back rule on prompts, the formats."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from tuneloop.config import DatasetConfig
from tuneloop.datasets import export_dataset, load_manifest
from tuneloop.tasks import task_for

T0 = datetime(2025, 5, 1, tzinfo=UTC)
NOW = datetime(2025, 6, 1, tzinfo=UTC)
CHAT = DatasetConfig(eval_fraction=0.3, min_eval_cases=2, chat={"formats": ["openai", "alpaca", "chatml"],
                                                                 "domains": ["billing", "shipping"]})


def case(i: int, **fields: object) -> dict[str, object]:
    return {"id": f"c{i}", "messages": [{"role": "system", "content": "You are the support assistant."},
                                        {"role": "user", "content": f"Where is my parcel number {i}?"}],
            "output": "I do not know.", "ideal": f"Parcel {i} left the depot this morning and arrives tomorrow.",
            "rating": 1, "domain": "shipping", "created_at": (T0 + timedelta(hours=i)).isoformat(), **fields}


def test_chat_cases_export_as_a_chat_dataset(store, tmp_path):
    chat = store.for_model("support", task="chat")
    rows = [case(i) for i in range(8)]
    rows += [case(8, domain="legal"),  # filtered: not one of dataset.chat.domains (stays new)
             case(9, ideal=None, output="Your parcel is on its way and arrives tomorrow.", rating=5),  # rated good
             case(10, ideal=None, rating=2),  # filtered: no correction, rated low
             case(11, ideal="Parcel 3 LEFT the depot this morning   and arrives tomorrow.",
                  messages=case(3)["messages"]),  # the same example as c3, newer: c3 is a duplicate
             {"id": "bad", "messages": [{"role": "robot", "content": "hi"}], "output": "x"}]
    batch = tmp_path / "chat.jsonl"
    batch.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = chat.ingest_jsonl(batch)
    assert [(r.field, r.line) for r in report.rejected] == [("messages[0].role", 13)]
    assert len(report.accepted) == 12
    assert store.statistics().total_cases == 0  # the speech model's view: none of these are its cases

    manifest = export_dataset(chat, tmp_path / "root", CHAT, run_id="r1", now=NOW, task=task_for("chat"))

    assert manifest.task == "chat"
    assert {n.id for n in manifest.filtered} == {"c8", "c10"}
    assert [n.id for n in manifest.duplicates] == ["c3"]
    assert manifest.eval_ids == ("c7", "c9", "c11")  # the newest 30% of the 9 usable cases
    assert manifest.train_ids == ("c0", "c1", "c2", "c4", "c5", "c6")
    train = [json.loads(line) for line in manifest.split_path("train").read_text().splitlines()]
    first = train[0]
    assert first["messages"][0] == {"role": "system", "content": "You are the support assistant."}
    assert first["messages"][-1]["role"] == "assistant" and first["messages"][-1]["weight"] == 1
    assert first["domain"] == "shipping"
    alpaca = [json.loads(line) for line in (manifest.directory / "train.alpaca.jsonl").read_text().splitlines()]
    assert alpaca[0]["instruction"] == first["messages"][1]["content"]
    assert alpaca[0]["output"] == first["messages"][-1]["content"]
    assert "<|im_start|>assistant" in json.loads(
        (manifest.directory / "train.chatml.jsonl").read_text().splitlines()[0])["text"]
    assert manifest.stats["train"]["domains"] == {"shipping": len(train)}
    assert load_manifest(manifest.directory) == manifest
    again = export_dataset(chat, tmp_path / "root", CHAT, run_id="r2", now=NOW, task=task_for("chat"))
    assert again.dataset_id == manifest.dataset_id and again.reused


def test_no_training_case_shares_a_prompt_with_a_regression_suite_item(store, tmp_path):
    """The guard a chat model's suites make (their normalised prompts, as the export normalises a case's) keeps
    every case with the same prompt out of both splits, whatever its reply; a case differing in the prompt stays."""
    from tuneloop.config import SuiteSpec
    from tuneloop.regression import leakage_guard

    chat = store.for_model("support", task="chat")
    batch = tmp_path / "chat.jsonl"
    batch.write_text("".join(json.dumps(case(i)) + "\n" for i in range(8)))
    assert len(chat.ingest_jsonl(batch).accepted) == 8
    suite = tmp_path / "suite.jsonl"
    suite.write_text(json.dumps({"id": "s1", "messages": [
        {"role": "system", "content": "You are the  SUPPORT assistant."},
        {"role": "user", "content": "where is my parcel NUMBER 2?"},  # c2's prompt, cased and spaced differently
        {"role": "assistant", "content": "It arrives tomorrow."}]}) + "\n" + json.dumps({"id": "s2", "messages": [
            {"role": "user", "content": "Where is my parcel number 5?"},  # c5's question without its system turn
            {"role": "assistant", "content": "It arrives tomorrow."}]}) + "\n")
    guard = leakage_guard([SuiteSpec(name="parcels", data_path=suite)], task="chat")

    manifest = export_dataset(chat, tmp_path / "root", CHAT, run_id="r1", now=NOW, task=task_for("chat"),
                              guard=guard)

    assert manifest.excluded_ids == ("c2",)
    assert (manifest.counts["excluded"], manifest.counts["excluded_suite_text"]) == (1, 1)
    assert "c2" not in (*manifest.train_ids, *manifest.eval_ids) and "c5" in manifest.train_ids
