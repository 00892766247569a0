"""The online test of a canary: on live traffic, does the candidate get fewer requests wrong than production?

Each arm is counted in judged requests (an outcome came back: a correction or a thumbs-down is an error, an
accepted response a success). Requests are independent between the arms (a request key sticks to one arm), so
this is a two-sample comparison of proportions, not the paired tests of the offline gate (:mod:`tuneloop.stats`).

The waiting step looks again and again while traffic comes in. A fixed-horizon test (seed 004's chi-squared) is
only valid at one look decided in advance: peeking at it until it says "significant" promotes an equal candidate
far more often than ``alpha`` (measured in tests/tuneloop/test_online_test.py). So the decision rests on an
always-valid sequential test, the normal-mixture mSPRT of Johari, Pekelis & Walsh ("Always Valid Inference",
Operations Research 70(3), 2022; arXiv 1512.04922): with ``theta`` the canary's error rate minus production's,
``V`` its variance under "no difference" (pooled rate, ``p(1 - p)(1/n_production + 1/n_canary)``) and a normal
mixing distribution of standard deviation ``tau`` over the difference, the likelihood ratio after a look is

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 * theta^2 / (2 V (V + tau^2)))

and the always-valid p-value is the running minimum of ``1 / Lambda`` over the looks. Under "no difference" the
chance that it ever falls to ``alpha`` -- however often one looks -- is at most ``alpha`` (Ville's inequality),
up to the normal approximation of small counts. ``tau`` is the size of difference the test is tuned to find
fastest (``deployment.canary.mixing_sd``, in error-rate points).

The decision (:func:`decide`): the canary is rolled back as soon as a look's evidence finds it worse (likelihood
ratio at least ``1 / alpha``); it is promoted when a look finds it better once both arms have ``min_samples``
judged requests; at the deadline with no difference found, production stays. A person may end the test earlier,
promoting or rolling back by hand (:func:`ended_by_person`). The chi-squared test and seed 004's weighted winner are
reported beside the decision, never instead of it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

Action = Literal["wait", "promote", "rollback", "keep_production"]
# seed 004's weighted winner: accuracy (1 - error rate), latency and cost (lower is better)
WINNER_WEIGHTS = {"accuracy": 0.6, "latency": 0.2, "cost": 0.2}


@dataclass(frozen=True)
class Arm:
    """What one arm served and how it went: judged requests and those judged wrong."""

    requests: int
    errors: int

    def __post_init__(self) -> None:
        for name in ("requests", "errors"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: must be an integer >= 0, got {value!r}")
        if self.errors > self.requests:
            raise ValueError(f"errors: {self.errors} is more than the {self.requests} judged requests")

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True)
class Look:
    """One look at the two arms: the difference, the sequential test's running p-value, the chi-squared test."""

    production: Arm
    canary: Arm
    difference: float | None  # canary's error rate - production's (negative: the canary is better)
    likelihood_ratio: float  # this look's mSPRT Lambda (1: no evidence)
    always_valid_p: float  # min over the looks so far of 1 / Lambda
    chi_squared: float | None
    chi_squared_p: float | None  # fixed-horizon, valid at one look only: reported, not decided on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def look(production: Arm, canary: Arm, *, previous_p: float = 1.0, mixing_sd: float) -> Look:
    """The arms' state now, with the always-valid p-value carried from the previous look (1.0 at the first)."""
    if not 0 < previous_p <= 1:
        raise ValueError(f"previous_p: must be in (0, 1], got {previous_p!r}")
    if not mixing_sd > 0:
        raise ValueError(f"mixing_sd: must be > 0, got {mixing_sd!r}")
    ratio = msprt_likelihood_ratio(production, canary, mixing_sd=mixing_sd)
    difference = None
    if production.requests and canary.requests:
        difference = canary.errors / canary.requests - production.errors / production.requests
    chi2, chi2_p = chi_squared(production, canary)
    return Look(production, canary, difference, ratio, min(previous_p, 1 / ratio), chi2, chi2_p)


def msprt_likelihood_ratio(production: Arm, canary: Arm, *, mixing_sd: float) -> float:
    """The normal-mixture mSPRT statistic for "the error rates differ" (1 when there is nothing to go on yet: an
    empty arm, or no error and no success at all)."""
    if not production.requests or not canary.requests:
        return 1.0
    pooled = (production.errors + canary.errors) / (production.requests + canary.requests)
    variance = pooled * (1 - pooled) * (1 / production.requests + 1 / canary.requests)
    if variance <= 0:
        return 1.0
    theta = canary.errors / canary.requests - production.errors / production.requests
    tau2 = mixing_sd**2
    log_ratio = 0.5 * math.log(variance / (variance + tau2)) + tau2 * theta**2 / (2 * variance * (variance + tau2))
    return math.exp(min(log_ratio, 700.0))  # exp(700) ~ 1e304: far past any 1/alpha, and no overflow


def chi_squared(production: Arm, canary: Arm) -> tuple[float | None, float | None]:
    """Seed 004's chi-squared test of the 2x2 table (arm x wrong/right), without continuity correction (the same
    as the two-proportion z-test: chi2 = z^2; scipy's ``chi2_contingency(table, correction=False)``, in closed
    form because the waiting step and its calibration call it at every look); None when a row or column is
    empty."""
    a, b = production.errors, production.requests - production.errors
    c, d = canary.errors, canary.requests - canary.errors
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    if margins == 0:
        return None, None
    statistic = (a + b + c + d) * (a * d - b * c) ** 2 / margins
    return statistic, math.erfc(math.sqrt(statistic / 2))  # the chi-squared (1 df) survival function


@dataclass(frozen=True)
class Decision:
    """What the waiting step does after a look, and why in words."""

    action: Action
    reason: str
    look: Look
    decided_by: str | None = None  # a person who ended the test early; None: the test decided

    def to_dict(self) -> dict[str, Any]:
        person = {"decided_by": self.decided_by} if self.decided_by else {}
        return {"action": self.action, "reason": self.reason, "look": self.look.to_dict(), **person}


def decide(current: Look, *, alpha: float, min_samples: int, deadline_passed: bool) -> Decision:
    """Roll back as soon as the sequential test finds the canary worse; promote when it finds it better and both
    arms have ``min_samples`` judged requests; at the deadline keep production; else wait for more traffic.

    The test acts on this look's evidence: the mSPRT stops when this look's likelihood ratio reaches ``1 / alpha``
    (its p-value ``1 / Lambda`` at most ``alpha``), in the direction of this look's difference. (The running minimum,
    ``always_valid_p``, is reported: acting on it would pair an earlier look's evidence with today's direction --
    a canary that looked better early, short of ``min_samples``, could be rolled back later on noise.) Under "no
    difference" the chance that any look reaches ``1 / alpha`` is at most ``alpha``, so acting on one is as
    valid."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: must be in (0, 1), got {alpha!r}")
    p, difference = min(1.0, 1 / current.likelihood_ratio), current.difference
    rates = _rates(current)
    if p <= alpha and difference is not None and difference > 0:
        return Decision("rollback", f"the canary gets more requests wrong ({rates}; always-valid p = {p:.4f} <= "
                                    f"alpha {alpha:g})", current)
    enough = min(current.production.requests, current.canary.requests) >= min_samples
    if p <= alpha and difference is not None and difference < 0 and enough:
        return Decision("promote", f"the canary gets fewer requests wrong ({rates}; always-valid p = {p:.4f} <= "
                                   f"alpha {alpha:g})", current)
    if deadline_passed:
        shown = "no difference shown" if p > alpha else f"better, but short of {min_samples} judged requests per arm"
        return Decision("keep_production", f"deadline reached: {shown} ({rates}; always-valid p = {p:.4f}); "
                                           "production stays", current)
    waiting = f"{min_samples} judged requests per arm" if not enough else f"always-valid p <= {alpha:g}"
    return Decision("wait", f"waiting for {waiting} ({rates}; always-valid p = {p:.4f})", current)


def look_at(store: Any, production_version: str, canary_version: str, *, since: datetime, mixing_sd: float,
            previous_p: float = 1.0) -> Look:
    """A look at the arms as the store counts them: each version's judged requests since ``since`` (the canary's
    start). ``store`` is a :class:`tuneloop.store.ServedRecords`."""
    production = Arm(*store.judged_counts(production_version, since=since))
    canary = Arm(*store.judged_counts(canary_version, since=since))
    return look(production, canary, previous_p=previous_p, mixing_sd=mixing_sd)


def ended_by_person(current: Look, action: Action, *, by: str, why: str) -> Decision:
    """A person ended the test early (Airflow's Required actions): their call stands whatever the numbers say, and
    the numbers of that moment are kept beside it, so the record shows what the person overruled or anticipated."""
    if action not in ("promote", "rollback"):
        raise ValueError(f"action: a person ends the test with promote or rollback, got {action!r}")
    if not by.strip():
        raise ValueError("by: the person who ended the test must be named")
    done = "promoted" if action == "promote" else "rolled back"
    return Decision(action, f"ended early by {by}: {done} by hand ({why.strip() or 'no reason given'}); at that "
                            f"moment {_rates(current)}, always-valid p = {current.always_valid_p:.4f}", current,
                    decided_by=by)


def _rates(current: Look) -> str:
    def rate(arm: Arm) -> str:
        return "-" if arm.error_rate is None else f"{arm.errors}/{arm.requests} = {arm.error_rate:.1%}"

    return f"error rate: production {rate(current.production)}, canary {rate(current.canary)}"


# -- seed 004's weighted winner (reported beside the decision) ----------------------------------------------------


@dataclass(frozen=True)
class ArmSummary:
    """One arm as seed 004 scores it: accuracy, mean latency, mean cost per request (None: not recorded)."""

    accuracy: float
    latency_ms: float | None = None
    cost_usd: float | None = None


def weighted_winner(production: ArmSummary, canary: ArmSummary) -> dict[str, Any]:
    """Seed 004's recommendation: 60% accuracy, 20% latency and 20% cost, each scored relative to the better of
    the two (accuracy / best accuracy; best latency / latency; best cost / cost). A measure either arm lacks is
    left out and the remaining weights are renormalised. Ties go to production (no change without a reason)."""
    scores = {"production": 0.0, "canary": 0.0}
    used = {}
    arms = {"production": production, "canary": canary}
    for measure, weight in WINNER_WEIGHTS.items():
        field = {"accuracy": "accuracy", "latency": "latency_ms", "cost": "cost_usd"}[measure]
        values = {name: getattr(arm, field) for name, arm in arms.items()}
        if any(v is None for v in values.values()):
            continue
        used[measure] = weight
        for name, value in values.items():
            scores[name] += weight * _relative(measure, value, values)
    total = sum(used.values())
    scores = {name: score / total for name, score in scores.items()} if total else scores
    winner = "canary" if scores["canary"] > scores["production"] else "production"
    return {"winner": winner, "scores": scores, "weights": used}


def _relative(measure: str, value: float, values: dict[str, float]) -> float:
    """A value scored against the better of the two, in [0, 1] (1: the better one)."""
    if measure == "accuracy":
        best = max(values.values())
        return value / best if best > 0 else 1.0
    best = min(values.values())
    return best / value if value > 0 else 1.0
