"""The pairwise LLM judge of a chat candidate: which of two replies to the same conversation is better?

An OpenAI-compatible chat endpoint (``validation.text.judge``; any server the ``openai`` client can talk to)
reads each eval conversation, the reference answer (the ideal reply a person wrote) and two replies, production's
and the candidate's, and answers with a verdict: ``[[A]]``, ``[[B]]`` or ``[[C]]`` for a tie (MT-Bench's pairwise
format, Zheng et al. 2023). Judges prefer a position, so each pair is judged twice with the positions swapped
(FastChat's ``llm_judge``): first production is "Assistant A", then the candidate is. Only two verdicts naming the
same model make a win or a loss; two that disagree are an inconsistent verdict, counted as a tie, so a judge that
always says "A" produces no false win. A reply without exactly one kind of verdict token is unparseable: a tie,
recorded with the judge's reply (truncated) so a person can see why.

:func:`judge_pairs` returns a :class:`JudgeResult`: wins (the candidate's), losses, ties, the AlpacaEval win rate
(ties count half) and the one-sided sign test on wins vs losses (ties dropped) that the gate may require. An
endpoint that still fails after the client's retries raises :class:`JudgeError` naming the endpoint and the model;
a failed call is never a silent tie. Airflow stays out of this module except :func:`client_settings`, which reads
the connection lazily.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from tuneloop.stats import SignTestResult, sign_test_counts

if TYPE_CHECKING:
    from openai import OpenAI

    from tuneloop.config import JudgeConfig

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 4
RAW_REPLY_KEPT = 500  # characters of an unparseable judge reply kept in the record

Order = Literal["production_first", "candidate_first"]
ORDERS: tuple[Order, Order] = ("production_first", "candidate_first")
Winner = Literal["production", "candidate", "tie", "unparseable"]
Outcome = Literal["win", "loss", "tie"]
# Why an outcome: both verdicts named the same model ("agreed") or both said tie ("both_tie"); the two verdicts
# disagreed ("inconsistent": position bias); at least one had no verdict ("unparseable").
OutcomeReason = Literal["agreed", "both_tie", "inconsistent", "unparseable"]

JUDGE_SYSTEM_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the replies two AI assistants gave to the "
    "conversation below; both reply to its last user message. You are also given a reference answer, the reply a "
    "person marked as ideal. Decide which assistant's reply better does what the user asked: correctness "
    "against the reference answer first, then helpfulness, relevance and completeness. A reply need not match the "
    "reference word for word. Begin your evaluation by comparing both replies with the reference answer and give "
    "a short explanation. Avoid any position bias and make sure the order in which the replies were presented "
    "does not influence your decision. Do not let the length of the replies influence your evaluation. Do not "
    "favor certain names of the assistants. Be as objective as possible. After your explanation, output your final "
    'verdict by strictly following this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is '
    'better, and "[[C]]" for a tie. Write the verdict once, on the last line, and nowhere else.'
)
JUDGE_USER_TEMPLATE = (
    "[The Start of Conversation]\n{conversation}\n[The End of Conversation]\n\n"
    "[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n\n"
    "[The Start of Assistant A's Reply]\n{reply_a}\n[The End of Assistant A's Reply]\n\n"
    "[The Start of Assistant B's Reply]\n{reply_b}\n[The End of Assistant B's Reply]"
)
NO_REFERENCE = "(none given: judge the replies on their own)"
_VERDICT = re.compile(r"\[\[([ABC])\]\]")


class JudgeError(RuntimeError):
    """The judge could not be asked: no endpoint or key, or a request that failed after the client's retries."""


@dataclass(frozen=True)
class JudgeExample:
    """One eval example to judge: the conversation up to the reply (``messages``: OpenAI-style ``role`` /
    ``content`` dicts, the last one the user's), the reference answer and the two models' replies."""

    id: str
    messages: tuple[Mapping[str, Any], ...]
    production: str
    candidate: str
    reference: str | None = None


@dataclass(frozen=True)
class Judgment:
    """One of the two calls for a pair: the token the judge answered (``None``: unparseable) and the model it
    names. ``raw``: the judge's reply, truncated to ``RAW_REPLY_KEPT`` characters, kept only when unparseable."""

    order: Order
    verdict: Literal["A", "B", "C"] | None
    winner: Winner
    raw: str | None = None


@dataclass(frozen=True)
class JudgedPair:
    """Both judgments of one example and the outcome for the candidate."""

    id: str
    first: Judgment  # production as Assistant A
    second: Judgment  # candidate as Assistant A
    outcome: Outcome
    reason: OutcomeReason

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id, "first": self.first.winner, "second": self.second.winner,
                               "outcome": self.outcome, "reason": self.reason}
        for name, judgment in (("first_raw", self.first), ("second_raw", self.second)):
            if judgment.raw is not None:
                row[name] = judgment.raw
        return row


@dataclass(frozen=True)
class JudgeResult:
    """What the judge said over the judged examples, for the gate and the decision record.

    ``wins``/``losses``: examples where both verdicts preferred the candidate / production; ``ties``: all others,
    of which ``inconsistent`` had two verdicts that disagree and ``unparseable`` at least one without a verdict.
    ``win_rate``: ``(wins + ties / 2) / n`` (AlpacaEval; None with no example). ``sign_test``: one-sided exact
    binomial on wins vs losses, ties dropped. ``n_available``: examples offered; ``n``: examples judged (a seeded
    sample of at most ``max_examples``). ``records``: one per judged example, in the order they were given.
    """

    model: str
    endpoint: str
    n_available: int
    n: int
    max_examples: int
    seed: int
    wins: int
    losses: int
    ties: int
    inconsistent: int
    unparseable: int
    win_rate: float | None
    sign_test: SignTestResult
    records: tuple[JudgedPair, ...]

    @property
    def p_value(self) -> float:
        return self.sign_test.p_value

    @property
    def significant(self) -> bool:
        """The candidate wins significantly more often than it loses, at the sign test's alpha."""
        return self.sign_test.significant

    def summary(self) -> str:
        """One sentence for the gate's reasons."""
        rate = "n/a" if self.win_rate is None else f"{self.win_rate:.3f}"
        sample = f" (a seeded sample of {self.n_available})" if self.n < self.n_available else ""
        return (f"judge {self.model}: the candidate won {self.wins}, lost {self.losses} and tied {self.ties} "
                f"({self.inconsistent} inconsistent when swapped, {self.unparseable} unparseable) of {self.n} "
                f"examples{sample}; win rate {rate} (ties half); sign test on wins vs losses p={self.p_value:.3g} "
                f"(one-sided, alpha {self.sign_test.alpha:g})")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "endpoint": self.endpoint, "n_available": self.n_available, "n": self.n,
                "max_examples": self.max_examples, "seed": self.seed, "wins": self.wins, "losses": self.losses,
                "ties": self.ties, "inconsistent": self.inconsistent, "unparseable": self.unparseable,
                "win_rate": self.win_rate, "p_value": self.p_value, "significant": self.significant,
                "sign_test": self.sign_test.to_dict(), "records": [r.to_dict() for r in self.records]}


# --------------------------------------------------------------------------------------------------- judging


def judge_pairs(
    client: OpenAI,
    examples: Sequence[JudgeExample],
    *,
    model: str,
    max_examples: int = 200,
    seed: int = 0,
    temperature: float = 0.0,
    alpha: float = 0.05,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> JudgeResult:
    """Judge every example (or a seeded sample of ``max_examples``) twice, positions swapped; see the module.

    Calls run ``concurrency`` at a time; the result does not depend on their timing. Retries are the client's
    (``max_retries``); a call that still fails raises :class:`JudgeError` and the pending ones are cancelled.
    """
    if not model:
        raise ValueError("model: the judge model's name is required")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    chosen = sample_examples(examples, max_examples, seed)
    endpoint = str(client.base_url)
    log.info("judging %s of %s examples with %s at %s (%s calls, %s at a time)", len(chosen), len(examples), model,
             endpoint, 2 * len(chosen), concurrency)
    calls = [(example, order) for example in chosen for order in ORDERS]
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="judge") as pool:
        futures = [pool.submit(_judge_once, client, example, order, model, temperature, endpoint)
                   for example, order in calls]
        try:
            judgments = [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    records = tuple(_combine(example.id, judgments[2 * i], judgments[2 * i + 1]) for i, example in enumerate(chosen))
    return _result(records, model=model, endpoint=endpoint, n_available=len(examples), max_examples=max_examples,
                   seed=seed, alpha=alpha)


def run_judge(judge: JudgeConfig, examples: Sequence[JudgeExample], *, alpha: float) -> JudgeResult:
    """The configured judge on ``examples``: the client from ``judge.conn_id`` (:func:`client_settings`), then
    :func:`judge_pairs` with the configured model, sample size, seed, temperature and concurrency."""
    if not judge.enabled or not judge.model:
        raise ValueError("validation.text.judge is not enabled (or has no model)")
    client = make_client(client_settings(judge.conn_id), timeout=judge.timeout_seconds,
                         max_retries=judge.max_retries)
    try:
        return judge_pairs(client, examples, model=judge.model, max_examples=judge.max_examples, seed=judge.seed,
                           temperature=judge.temperature, alpha=alpha, concurrency=judge.concurrency)
    finally:
        client.close()


def sample_examples(examples: Sequence[JudgeExample], max_examples: int, seed: int) -> list[JudgeExample]:
    """At most ``max_examples`` of ``examples``, drawn with ``seed`` among the ids in sorted order (so the draw
    does not depend on the order they come in), returned in their given order. Ids must be unique."""
    if max_examples < 1:
        raise ValueError(f"max_examples must be >= 1, got {max_examples}")
    ids = [example.id for example in examples]
    if len(set(ids)) != len(ids):
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"example ids must be unique; repeated: {', '.join(duplicated[:5])}")
    if len(examples) <= max_examples:
        return list(examples)
    kept = set(random.Random(seed).sample(sorted(ids), max_examples))
    return [example for example in examples if example.id in kept]


def judge_messages(example: JudgeExample, order: Order) -> list[dict[str, str]]:
    """The two messages sent for one judgment: the instructions, then conversation, reference and replies."""
    reply_a, reply_b = ((example.production, example.candidate) if order == "production_first"
                        else (example.candidate, example.production))
    user = JUDGE_USER_TEMPLATE.format(conversation=render_conversation(example.messages),
                                      reference=NO_REFERENCE if example.reference is None else example.reference,
                                      reply_a=reply_a, reply_b=reply_b)
    return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def render_conversation(messages: Sequence[Mapping[str, Any]]) -> str:
    """``### User`` / ``### Assistant`` / ``### System`` blocks; content parts (``[{"type": "text", ...}]``) are
    joined by their text."""
    blocks = []
    for message in messages:
        role = str(message.get("role", "user")).capitalize()
        blocks.append(f"### {role}:\n{_text(message.get('content'))}")
    return "\n\n".join(blocks)


def parse_verdict(reply: str | None) -> Literal["A", "B", "C"] | None:
    """The verdict token of a judge's reply, strictly: ``[[A]]``, ``[[B]]`` or ``[[C]]`` (exact case, no spaces),
    one kind only (it may repeat). No token, or tokens naming different verdicts: ``None``."""
    found = set(_VERDICT.findall(reply or ""))
    return found.pop() if len(found) == 1 else None  # type: ignore[return-value]


def _judge_once(client: OpenAI, example: JudgeExample, order: Order, model: str, temperature: float,
                endpoint: str) -> Judgment:
    import openai

    try:
        response = client.chat.completions.create(model=model, messages=judge_messages(example, order),
                                                  temperature=temperature)
    except openai.OpenAIError as error:
        raise JudgeError(f"the judge {model!r} at {endpoint} failed on example {example.id!r} ({order}) after the "
                         f"client's retries: {type(error).__name__}: {error}") from error
    reply = response.choices[0].message.content if response.choices else None
    verdict = parse_verdict(reply)
    if verdict is None:
        raw = reply if reply is not None else "(no content in the judge's reply)"
        log.warning("judge %s gave no verdict on example %s (%s): %.200r", model, example.id, order, raw)
        return Judgment(order, None, "unparseable", raw[:RAW_REPLY_KEPT])
    return Judgment(order, verdict, _winner(verdict, order))


def _winner(verdict: Literal["A", "B", "C"], order: Order) -> Winner:
    if verdict == "C":
        return "tie"
    first_is_production = (verdict == "A") == (order == "production_first")
    return "production" if first_is_production else "candidate"


def _combine(example_id: str, first: Judgment, second: Judgment) -> JudgedPair:
    if "unparseable" in (first.winner, second.winner):
        return JudgedPair(example_id, first, second, "tie", "unparseable")
    if first.winner != second.winner:
        return JudgedPair(example_id, first, second, "tie", "inconsistent")
    if first.winner == "tie":
        return JudgedPair(example_id, first, second, "tie", "both_tie")
    return JudgedPair(example_id, first, second, "win" if first.winner == "candidate" else "loss", "agreed")


def _result(records: tuple[JudgedPair, ...], *, model: str, endpoint: str, n_available: int, max_examples: int,
            seed: int, alpha: float) -> JudgeResult:
    wins = sum(r.outcome == "win" for r in records)
    losses = sum(r.outcome == "loss" for r in records)
    ties = len(records) - wins - losses
    n = len(records)
    return JudgeResult(
        model=model, endpoint=endpoint, n_available=n_available, n=n, max_examples=max_examples, seed=seed,
        wins=wins, losses=losses, ties=ties, inconsistent=sum(r.reason == "inconsistent" for r in records),
        unparseable=sum(r.reason == "unparseable" for r in records),
        win_rate=(wins + ties / 2) / n if n else None, sign_test=sign_test_counts(wins, losses, ties, alpha=alpha),
        records=records)


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "\n".join(str(part.get("text", "")) if isinstance(part, Mapping) else str(part) for part in content)
    return str(content)


# ------------------------------------------------------------------------------------------------ the client


@dataclass(frozen=True)
class ClientSettings:
    """What the ``openai`` client needs: ``base_url`` (None: the client's default, api.openai.com), ``api_key``
    and any further ``openai_client_kwargs`` of the connection (e.g. ``default_headers``, ``organization``).
    ``source``: where they came from, for messages."""

    base_url: str | None
    api_key: str | None = field(repr=False)
    client_kwargs: Mapping[str, Any] = field(default_factory=dict)
    source: str = "arguments"


def client_settings_from_connection(*, host: str | None, password: str | None, extra: Mapping[str, Any],
                                    source: str = "connection") -> ClientSettings:
    """The mapping of apache-airflow-providers-openai's ``OpenAIHook``: base URL = ``extra.openai_client_kwargs.
    base_url`` or ``host``; key = ``openai_client_kwargs.api_key`` or ``password``; the other
    ``openai_client_kwargs`` go to the client. Only ``auth_type: api_key`` (the default) is supported."""
    auth_type = extra.get("auth_type", "api_key")
    if auth_type != "api_key":
        raise JudgeError(f"{source}: auth_type {auth_type!r} is not supported by the judge; use 'api_key' (the "
                         f"key in the password or extra.openai_client_kwargs.api_key)")
    kwargs = dict(extra.get("openai_client_kwargs") or {})
    base_url = kwargs.pop("base_url", None) or host or None
    api_key = kwargs.pop("api_key", None) or password or None
    return ClientSettings(base_url=base_url, api_key=api_key, client_kwargs=kwargs, source=source)


def client_settings(conn_id: str, env: Mapping[str, str] | None = None) -> ClientSettings:
    """The judge endpoint's settings from Airflow connection ``conn_id`` (``airflow.sdk.Connection.get``: in a
    task, or from ``AIRFLOW_CONN_*`` variables and secrets backends outside one); when Airflow is not installed
    or the connection is not defined, from ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``. No key either way: an error
    saying where one goes."""
    env = os.environ if env is None else env
    connection = _airflow_connection(conn_id)
    if connection is not None:
        settings = client_settings_from_connection(host=connection.host, password=connection.password,
                                                   extra=connection.extra_dejson,
                                                   source=f"Airflow connection {conn_id!r}")
    else:
        log.info("no Airflow connection %r: the judge's endpoint comes from OPENAI_BASE_URL / OPENAI_API_KEY",
                 conn_id)
        settings = ClientSettings(base_url=env.get("OPENAI_BASE_URL") or None, api_key=env.get("OPENAI_API_KEY")
                                  or None, source=f"OPENAI_BASE_URL/OPENAI_API_KEY (no Airflow connection "
                                                  f"{conn_id!r})")
    if not settings.api_key:
        raise JudgeError(f"the judge has no API key: {settings.source} gives none; set the connection's password "
                         f"(or extra.openai_client_kwargs.api_key), or OPENAI_API_KEY; an endpoint without auth "
                         f"takes any non-empty value")
    return settings


def make_client(settings: ClientSettings, *, timeout: float, max_retries: int) -> OpenAI:
    """An ``openai.OpenAI`` client for the settings; ``timeout`` and ``max_retries`` (the judge's configuration)
    replace any the connection carries."""
    from openai import OpenAI

    kwargs = {k: v for k, v in settings.client_kwargs.items() if k not in ("timeout", "max_retries")}
    return OpenAI(api_key=settings.api_key, base_url=settings.base_url, timeout=timeout, max_retries=max_retries,
                  **kwargs)


def _airflow_connection(conn_id: str) -> Any | None:
    from tuneloop.hooks.connections import airflow_connection

    return airflow_connection(conn_id)
