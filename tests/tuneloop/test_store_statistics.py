"""``ErrorCaseStore.statistics``, computed by the database, against a straightforward Python count of the same rows.

Random stores (seeded, so a failure replays): several models, every state, model versions including none and one
literally named "unknown", error-type lists that are empty, repeat a type, or use names whose order differs between
code points and a locale's collation; plus inference counts, rejections and runs. Every ``store`` test runs on
SQLite and on PostgreSQL (skipped when it is not reachable, see conftest.py).
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tuneloop.store import CASE_STATES, ErrorCaseStore, StoreStatistics
from tuneloop.store.schema import cases_table, inferences_table, rejections_table, runs_table

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
MODELS = ("default", "support", "stt-2")
VERSIONS = (None, "1", "2", "10", "unknown", "v3")
# names whose order differs by code point and by a locale (a < B under en_US, B < a by code point), accents,
# other scripts, an emoji (a surrogate pair in escaped JSON), spaces and punctuation
TYPE_NAMES = ("a", "B", "b", "substitution", "deletion", "ünïcødé", "é", "e", "名前", "😀 emoji", "two words",
              "x_y-z", "Z")
RUN_STATUSES = ("running", "deployed", "rejected", "failed", "skipped")


def random_rows(seed: int) -> dict[str, list[dict]]:
    """Rows of every table statistics reads, for several models."""
    rng = random.Random(seed)
    cases, inferences, rejections, runs = [], [], [], []
    for model in MODELS[: rng.randint(1, len(MODELS))]:
        for k in range(rng.randint(0, 120)):
            types = rng.choices(TYPE_NAMES, k=rng.choice((0, 0, 1, 2, 3, 5)))  # may repeat a type
            cases.append({
                "model": model, "id": f"c{k}", "created_at": NOW - timedelta(minutes=k), "ingested_at": NOW,
                "source": "test", "model_version": rng.choice(VERSIONS), "prediction": "p",
                "correction": rng.choice((None, "c", "")), "error_types": types, "meta": {},
                "content_hash": f"{model}-{k}", "state": rng.choice(CASE_STATES),
            })
        for k in range(rng.randint(0, 20)):
            inferences.append({"model": model, "model_version": rng.choice(VERSIONS[1:]),
                               "period_start": NOW - timedelta(hours=k), "count": rng.randint(0, 10**6)})
        for k in range(rng.randint(0, 5)):
            rejections.append({"model": model, "rejection_key": f"r{k}", "batch": "b.jsonl", "line": k,
                               "field": "row", "reason": "bad", "snippet": "{", "at": NOW})
        for k in range(rng.randint(0, 6)):
            runs.append({"model": model, "run_id": f"run{k}", "started_at": NOW, "status": rng.choice(RUN_STATUSES),
                         "summary": {}})
    return {"cases": cases, "inferences": inferences, "rejections": rejections, "runs": runs}


def reference(rows: dict[str, list[dict]], model: str) -> StoreStatistics:
    """The statistics of ``model``, counted one row at a time in Python."""
    cases = [c for c in rows["cases"] if c["model"] == model]
    types = Counter(t for c in cases for t in c["error_types"])
    inferences = [i for i in rows["inferences"] if i["model"] == model]
    by_inference_version: Counter[str] = Counter()
    for i in inferences:
        by_inference_version[i["model_version"]] += i["count"]
    return StoreStatistics(
        model=model,
        total_cases=len(cases),
        by_state={state: sum(c["state"] == state for c in cases) for state in CASE_STATES},
        corrected_cases=sum(c["correction"] is not None for c in cases),
        new_corrected_cases=sum(c["correction"] is not None and c["state"] == "new" for c in cases),
        by_model_version=dict(Counter(c["model_version"] or "unknown" for c in cases)),
        by_error_type=dict(sorted(types.items(), key=lambda item: (-item[1], item[0]))),
        rejected_rows=sum(r["model"] == model for r in rows["rejections"]),
        inferences_total=sum(i["count"] for i in inferences),
        inferences_by_model_version=dict(by_inference_version),
        training_runs_by_status=dict(Counter(r["status"] for r in rows["runs"] if r["model"] == model)),
    )


def fill(store: ErrorCaseStore, rows: dict[str, list[dict]]) -> None:
    tables = {"cases": cases_table, "inferences": inferences_table, "rejections": rejections_table,
              "runs": runs_table}
    with store._engine.begin() as conn:
        for name, table in tables.items():
            if rows[name]:
                conn.execute(sa.insert(table), rows[name])


@pytest.mark.parametrize("seed", range(8))
def test_statistics_match_a_python_count_of_random_stores(store, seed):
    rows = random_rows(seed)
    fill(store, rows)
    for model in (*MODELS, "never-used"):
        got = store.for_model(model).statistics()
        expected = reference(rows, model)
        assert got == expected
        assert list(got.by_error_type.items()) == list(expected.by_error_type.items())  # the order too
        assert list(got.by_state) == list(CASE_STATES)


def test_error_types_are_ordered_by_count_then_code_point(store):
    rows = {"cases": [], "inferences": [], "rejections": [], "runs": []}
    for k, types in enumerate([["b", "B", "a"], ["é", "e", "b"], ["B", "a", "a"], ["名前", "e", "é"]]):
        rows["cases"].append({"model": "default", "id": f"c{k}", "created_at": NOW, "ingested_at": NOW,
                              "source": "test", "prediction": "p", "error_types": types, "meta": {},
                              "content_hash": f"h{k}", "state": "new"})
    fill(store, rows)
    # a: 3; B, b, e, é: 2 each (code points: B < b < e < é); 名前: 1
    assert list(store.statistics().by_error_type.items()) == [("a", 3), ("B", 2), ("b", 2), ("e", 2), ("é", 2),
                                                              ("名前", 1)]


def test_a_version_named_unknown_adds_to_the_cases_without_one(store):
    rows = {"cases": [], "inferences": [], "rejections": [], "runs": []}
    for k, version in enumerate([None, "unknown", "unknown", "3"]):
        rows["cases"].append({"model": "default", "id": f"c{k}", "created_at": NOW, "ingested_at": NOW,
                              "source": "test", "prediction": "p", "model_version": version, "error_types": [],
                              "meta": {}, "content_hash": f"h{k}", "state": "consumed"})
    fill(store, rows)
    stats = store.statistics()
    assert stats.by_model_version == {"3": 1, "unknown": 3} and stats.by_error_type == {}
    assert stats.by_state == {"new": 0, "consumed": 4, "quarantined": 0}
