"""A chat model's cases through the real store and the task-neutral export: ingest (with refusals), the chat
filters, dedupe on normalised prompt + response, the time split, the held-back rule on prompts, the formats."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta

import pytest

from tuneloop.config import DatasetConfig
from tuneloop.datasets import export_dataset, load_manifest
from tuneloop.regression import LeakageGuard
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


# ------------------------------------------------------------------------ the streaming export vs a reference


def reference_export(chat, config: DatasetConfig, guard: LeakageGuard) -> dict[str, object]:
    """The export's decisions computed the plain way (the way it was done before it streamed): every case in
    memory, dedupe (the newest of a key wins), the leakage guard, the ``max_cases`` newest, the time split and the
    held-back rule."""
    task = task_for("chat")
    screened = task.screen(chat.cases_for_export(corrected_only=False), config, None, NOW)

    def age(item):
        return item.case.created_at, item.case.id

    latest = {}
    for item in sorted(screened.items, key=age):
        latest[item.key] = item
    duplicates = {(i.case.id, latest[i.key].case.id) for i in screened.items
                  if latest[i.key] is not i and latest[i.key].text == i.text}
    superseded = {(i.case.id, latest[i.key].case.id) for i in screened.items
                  if latest[i.key] is not i and latest[i.key].text != i.text}
    kept = sorted(latest.values(), key=age)
    excluded = {i.case.id for i in kept if guard.reason(i.guard_key, i.text)}
    kept = [i for i in kept if i.case.id not in excluded]
    capped = kept[-config.max_cases:] if config.max_cases else kept
    eval_size = max(config.min_eval_cases, math.floor(len(capped) * config.eval_fraction + 0.5))
    train, evaluation = capped[:-eval_size], capped[-eval_size:]
    eval_texts = {i.text for i in evaluation}
    return {"train": tuple(i.case.id for i in train if i.text not in eval_texts),
            "eval": tuple(i.case.id for i in evaluation),
            "held_back": {i.case.id for i in train if i.text in eval_texts},
            "duplicates": duplicates, "superseded": superseded, "excluded": excluded,
            "filtered": {n.id for n in screened.filtered}, "dropped_by_max_cases": len(kept) - len(capped),
            "rows": {i.case.id: i.row for i in capped}}


@pytest.mark.parametrize("seed,max_cases", [(1, None), (2, 40), (3, 7), (4, None)])
def test_the_streaming_export_decides_as_the_plain_one(store, tmp_path, seed, max_cases, monkeypatch):
    """Random cases with repeated prompts and replies (duplicates, superseded corrections, eval twins), times with
    ties, low ratings and a leakage guard; read in small pages so decisions cross page boundaries."""
    monkeypatch.setattr("tuneloop.datasets.EXPORT_BATCH", 9)
    rng = random.Random(seed)
    chat = store.for_model("support", task="chat")
    prompts = [f"Where is my parcel number {n}, please?" for n in range(25)]
    replies = [f"Parcel {n} left the depot this morning and arrives tomorrow." for n in range(6)]
    rows = []
    for i in range(160):
        prompt = rng.choice(prompts)
        row = {"id": f"c{i}", "messages": [{"role": "user", "content": prompt}], "output": rng.choice(replies),
               "rating": rng.randint(1, 5), "domain": "shipping",
               "created_at": (T0 + timedelta(hours=rng.randrange(60))).isoformat()}
        if rng.random() < 0.6:
            row["ideal"] = rng.choice(replies)
        rows.append(row)
    batch = tmp_path / "chat.jsonl"
    batch.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert not chat.ingest_jsonl(batch).rejected
    config = DatasetConfig(eval_fraction=0.2, min_eval_cases=2, max_cases=max_cases)
    screened = task_for("chat").screen(chat.cases_for_export(corrected_only=False), config, None, NOW).items
    guard = LeakageGuard(texts=frozenset({screened[0].text, screened[5].text}), key_noun="prompt", text_noun="prompt")
    expected = reference_export(chat, config, guard)

    manifest = export_dataset(chat, tmp_path / "root", config, run_id="r1", now=NOW, task=task_for("chat"),
                              guard=guard)

    assert manifest.train_ids == expected["train"] and manifest.eval_ids == expected["eval"]
    assert {n.id for n in manifest.held_back} == expected["held_back"]
    assert {(n.id, n.kept_id) for n in manifest.duplicates} == expected["duplicates"]
    assert {(n.id, n.kept_id) for n in manifest.superseded} == expected["superseded"]
    assert set(manifest.excluded_ids) == expected["excluded"]
    assert {n.id for n in manifest.filtered} == expected["filtered"]
    assert manifest.counts["dropped_by_max_cases"] == expected["dropped_by_max_cases"]
    written = [json.loads(line) for line in manifest.split_path("train").read_text().splitlines()]
    assert written == [expected["rows"][case_id] for case_id in expected["train"]]
    reloaded = load_manifest(manifest.directory)  # duplicates come back from duplicates.jsonl
    assert reloaded == manifest and set(reloaded.case_ids_to_consume()) == set(manifest.case_ids_to_consume())
