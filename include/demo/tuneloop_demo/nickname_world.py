"""The chat demo's world: questions about English nicknames, with the answers the ``nicknames`` package ships.

The facts are not ours: ``nicknames`` (PyPI, Apache-2.0, pinned in requirements.txt) ships ``names.csv``, a table
of given names and their nicknames (``abraham -> ab, abe``). The story around them:

- **what production version 1 was trained on**: every chosen name asked one way, ``nicknames of abraham``, with
  the name's nicknames, sorted and comma-separated (``ab, abe``), as the reply. A quarter of these questions is
  a regression suite (what production does well must not get worse); the rest is older known-good traffic the
  export may replay into training;
- **production traffic**: users ask about the same names in their own words (``what do people call abraham for
  short?`` and four other phrasings), plus some questions in the trained phrasing. Production answers the trained
  phrasing well and many of the others wrongly: it learned the facts, but only behind one way of asking;
- the wrong answers, with the package's nicknames as the ideal reply, become chat error cases.

Fine-tuning on the corrected conversations teaches the new phrasings, and that generalises: the newest cases
(the export's eval split, never trained on) ask about *other* names, whose facts production already knows from
its own training, so the candidate answers them in any phrasing (measured in
:data:`tuneloop_demo.nickname_settings.MEASURED`).

``build_world(root, seed)`` writes, once (a rerun with the same settings reuses it):

- ``production_training.jsonl``: chat training rows ``{"id", "messages": [user, assistant]}``, production's
  training data, split in two disjoint files: ``trained_suite.jsonl`` (the regression suite) and
  ``replay.jsonl`` (the rest: replayed, never the suite's questions, so the suite measures what fine-tuning
  forgets);
- ``traffic.jsonl``: the requests ``{"id", "messages": [user, assistant (the true answer)], "name", "phrasing",
  "age_s"}``, oldest first;
- ``corpus.txt``: the text the tokenizer is trained on (every question and answer);
- ``world.json``: settings and counts; written last, so its presence means the world is complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WORLD_FILE = "world.json"
TRAINED_PHRASING = "nicknames of {name}"
# How users ask in production; production version 1 never saw these.
USER_PHRASINGS = (
    "what do people call {name} for short?",
    "is there a short name for {name}?",
    "how would friends address {name}?",
    "give me a nickname for {name}",
    "what's a pet name for {name}?",
)
TRAINED = "trained"  # the phrasing field of a request asked the trained way; the others are "user-1".."user-5"
DOMAIN, TASK_TYPE = "names", "nicknames"


@dataclass(frozen=True)
class NicknameWorldConfig:
    """Sizes of the chat demo world (defaults are the measured demo settings)."""

    names: int = 400
    max_nicknames: int = 3  # names with at most this many nicknames: answers a tiny model can get exactly right
    trained_phrasing_requests: int = 100  # traffic asked the trained way (on top of one user-phrased per name)
    suite_names: int = 100  # production's training questions kept apart as the regression suite
    production_days: float = 6.0

    def __post_init__(self) -> None:
        if self.names < 1 or self.max_nicknames < 1 or self.trained_phrasing_requests < 0:
            raise ValueError(f"names and max_nicknames must be >= 1, trained_phrasing_requests >= 0: {self}")
        for field in ("trained_phrasing_requests", "suite_names"):
            if getattr(self, field) > self.names:
                raise ValueError(f"{field} ({getattr(self, field)}) > names ({self.names})")
        if self.suite_names >= self.names:
            raise ValueError(f"suite_names ({self.suite_names}) must leave names to replay ({self.names})")

    def fingerprint(self, seed: int) -> str:
        data = {"seed": seed, **dataclasses.asdict(self), "trained": TRAINED_PHRASING, "user": USER_PHRASINGS,
                "source": facts_source()}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class NicknameWorld:
    """Paths and facts of a built world."""

    root: Path
    seed: int
    fingerprint: str
    counts: dict[str, int]

    @property
    def production_training(self) -> Path:
        return self.root / "production_training.jsonl"

    @property
    def trained_suite(self) -> Path:
        return self.root / "trained_suite.jsonl"

    @property
    def replay(self) -> Path:
        return self.root / "replay.jsonl"

    @property
    def traffic(self) -> Path:
        return self.root / "traffic.jsonl"

    @property
    def corpus(self) -> Path:
        return self.root / "corpus.txt"


def nickname_facts() -> dict[str, tuple[str, ...]]:
    """Every name in the ``nicknames`` package with its nicknames, sorted: ``{"abraham": ("ab", "abe"), ...}``."""
    from nicknames import name_triplets

    facts: dict[str, set[str]] = defaultdict(set)
    for name, relationship, nickname in name_triplets():
        if relationship == "has_nickname":
            facts[name].add(nickname)
    return {name: tuple(sorted(nicknames)) for name, nicknames in sorted(facts.items())}


def answer(nicknames: tuple[str, ...]) -> str:
    """The reply: the nicknames, sorted, comma-separated."""
    return ", ".join(nicknames)


def plan_world(config: NicknameWorldConfig, seed: int,
               facts: dict[str, tuple[str, ...]] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Production's training rows (and their split into suite and replay) and the traffic (oldest first), all
    seeded."""
    facts = facts if facts is not None else nickname_facts()
    rng = random.Random(seed)
    eligible = sorted(name for name, nicknames in facts.items() if len(nicknames) <= config.max_nicknames)
    if len(eligible) < config.names:
        raise ValueError(f"only {len(eligible)} names have at most {config.max_nicknames} nicknames; "
                         f"asked for {config.names}")
    names = rng.sample(eligible, config.names)
    training = [_conversation(f"trained-{name}", TRAINED_PHRASING.format(name=name), answer(facts[name]))
                for name in sorted(names)]
    requests = []
    for name in names:  # each name once in one of the users' phrasings...
        index = rng.randrange(len(USER_PHRASINGS))
        requests.append((name, f"user-{index + 1}", USER_PHRASINGS[index]))
    # ...and some names asked the trained way too
    requests += [(name, TRAINED, TRAINED_PHRASING) for name in rng.sample(names, config.trained_phrasing_requests)]
    rng.shuffle(requests)
    ages = sorted((rng.uniform(0, config.production_days * 86400) for _ in requests), reverse=True)
    traffic = [{**_conversation(f"request-{index:05d}", phrasing.format(name=name), answer(facts[name])),
                "name": name, "phrasing": label, "age_s": round(age, 1)}
               for index, ((name, label, phrasing), age) in enumerate(zip(requests, ages, strict=True))]
    # A generator of its own, so that the suite's size leaves the traffic as it is.
    suite = set(random.Random(f"{seed}-suite").sample(sorted(names), config.suite_names))
    return {"production_training": training, "traffic": traffic,
            "trained_suite": [row for row in training if row["id"].removeprefix("trained-") in suite],
            "replay": [row for row in training if row["id"].removeprefix("trained-") not in suite]}


def build_world(root: Path, seed: int, config: NicknameWorldConfig | None = None) -> NicknameWorld:
    """Write the world under ``root`` (or reuse a complete one with these settings)."""
    config = config or NicknameWorldConfig()
    root = Path(root)
    existing = load_world(root)
    if existing is not None and existing.fingerprint == config.fingerprint(seed):
        log.info("reusing the nickname world in %s", root)
        return existing
    log.info("building the nickname world in %s (seed %d)", root, seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / WORLD_FILE).unlink(missing_ok=True)
    plans = plan_world(config, seed)
    for split, rows in plans.items():
        _write(root / f"{split}.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    texts = [message["content"] for split in ("production_training", "traffic") for row in plans[split]
             for message in row["messages"]]
    _write(root / "corpus.txt", "\n".join(texts) + "\n")
    manifest = {"seed": seed, "fingerprint": config.fingerprint(seed), "config": dataclasses.asdict(config),
                "source": facts_source(), "counts": {split: len(rows) for split, rows in plans.items()}}
    _write(root / WORLD_FILE, json.dumps(manifest, indent=2) + "\n")
    world = load_world(root)
    assert world is not None
    return world


def load_world(root: Path) -> NicknameWorld | None:
    """The world under ``root`` if it is complete, else None."""
    manifest_file = Path(root) / WORLD_FILE
    if not manifest_file.is_file():
        return None
    manifest = json.loads(manifest_file.read_text())
    world = NicknameWorld(root=Path(root), seed=manifest["seed"], fingerprint=manifest["fingerprint"],
                          counts=manifest["counts"])
    files = (world.production_training, world.trained_suite, world.replay, world.traffic, world.corpus)
    if not all(path.is_file() for path in files):
        return None
    return world


def traffic_requests(world: NicknameWorld, now: datetime | None = None) -> Iterator[dict[str, Any]]:
    """The traffic rows, oldest first, with ``created_at`` (ISO 8601, UTC: ``now`` minus the row's age)."""
    now = now or datetime.now(UTC)
    for row in read_jsonl(world.traffic):
        yield {**row, "created_at": (now - timedelta(seconds=row["age_s"])).isoformat()}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _conversation(row_id: str, question: str, reply: str) -> dict[str, Any]:
    return {"id": row_id, "messages": [{"role": "user", "content": question},
                                       {"role": "assistant", "content": reply}]}


def facts_source() -> str:
    """Where the facts come from: the package and its version."""
    from importlib.metadata import version

    return f"nicknames {version('nicknames')} (names.csv)"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
