"""The trigger decision: should a fine-tuning run start now? One pure function over numbers read from the store.

Rules (``FinetuningConfig`` holds the thresholds):

* **Count rule** — at least ``min_error_cases`` new (unconsumed) error cases, of which at least
  ``min_corrected_cases`` carry a human correction.
* **Rate rule** — when ``trigger_on_error_rate``: over the window, errors / inferences of the model version
  >= ``error_rate_threshold``, measured only once there are ``min_inferences_for_rate`` inferences (a rate over
  a handful of requests is noise). A high rate alone is not enough: it also needs ``min_corrected_cases``
  corrected cases, because only corrected cases can be trained on and a run on a handful of them would be
  rejected by the gate anyway.
* **Blocks** — never while a training run is in progress; never inside the cooldown (time since the last
  training run finished, whatever its outcome except skipped: a failed run also used the GPU, and retrying a
  persistent failure every few minutes helps nobody); never with zero corrected cases (nothing to train on).
* **force** — overrides the count rule, the rate rule and the cooldown, so an operator can retrain on demand
  (e.g. after fixing a failed run). It does not override a run in progress (two runs would both consume the
  same cases) nor "nothing to train on" (the export would fail a step later with a less clear message).

Every check adds a reason in plain words, whether it passed or not, so the task log says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from tuneloop.config import FinetuningConfig


@dataclass(frozen=True)
class TriggerMetrics:
    """What the store knows that matters for triggering (see ``ErrorCaseStore.trigger_metrics``).

    ``new_cases``/``new_corrected_cases`` count all unconsumed cases (any model version, any age), each up to
    ``count_limit`` when one is given: the rules only ask "at least the threshold?", and counting a backlog of a
    million cases to answer that would cost what the backlog costs; a count equal to the limit means "at least".
    ``window_errors``/``window_inferences`` count cases created and inferences reported inside
    [``window_start``, ``window_end``] for ``model_version`` (every version when it is None).
    """

    new_cases: int
    new_corrected_cases: int
    window_errors: int
    window_inferences: int
    window_start: datetime
    window_end: datetime
    model_version: str | None = None
    last_training_finished_at: datetime | None = None
    running_training_run: str | None = None
    count_limit: int | None = None

    @property
    def training_in_progress(self) -> bool:
        return self.running_training_run is not None

    @property
    def error_rate(self) -> float | None:
        return self.window_errors / self.window_inferences if self.window_inferences else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
        data["training_in_progress"] = self.training_in_progress
        data["error_rate"] = self.error_rate
        return data


@dataclass(frozen=True)
class Condition:
    """One trigger condition as a row of a table: its value, its threshold and whether it holds.

    ``met`` for the cooldown means "the cooldown is over"; ``value`` is None where there is nothing to measure (no run
    finished yet, no inferences, the rate rule off); ``detail`` is the reason sentence, e.g. a rate measured on
    fewer than ``min_inferences_for_rate`` inferences is shown but not used.
    """

    name: str
    value: float | None
    threshold: float
    met: bool
    detail: str


@dataclass(frozen=True)
class TriggerResult:
    """The decision, every reason behind it, and the numbers it was taken on (JSON-ready via ``to_dict``)."""

    should_trigger: bool
    reasons: list[str]
    metrics: dict[str, Any]
    conditions: tuple[Condition, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"should_trigger": self.should_trigger, "reasons": list(self.reasons), "metrics": dict(self.metrics),
                "conditions": [asdict(condition) for condition in self.conditions]}


def check_trigger(
    metrics: TriggerMetrics, config: FinetuningConfig, *, now: datetime, force: bool = False
) -> TriggerResult:
    """Decide whether to start a fine-tuning run; ``now`` must be timezone-aware (it is compared with the store)."""
    if now.tzinfo is None:
        raise ValueError("now: must be timezone-aware (use datetime.now(UTC))")
    corrected_ok, corrected_reason = _check_corrected(metrics, config)
    count_ok, count_reason = _check_count(metrics, config)
    rate_ok, rate_reason = _check_rate(metrics, config)
    cooling, cooldown_reason = _check_cooldown(metrics, config, now)
    reasons = [count_reason, corrected_reason, rate_reason, cooldown_reason]
    if metrics.training_in_progress:
        reasons.append(f"training run {metrics.running_training_run} is still in progress")
    should, verdict = _verdict(metrics, force=force, cooling=cooling, count_ok=count_ok and corrected_ok,
                               rate_ok=rate_ok and corrected_ok)
    numbers = {**metrics.to_dict(), "forced": force, "cooldown_hours": config.cooldown_hours, "now": now.isoformat()}
    conditions = (Condition("new error cases", metrics.new_cases, config.min_error_cases, count_ok, count_reason),
                  Condition("new corrected cases", metrics.new_corrected_cases, config.min_corrected_cases,
                            corrected_ok, corrected_reason),
                  Condition("error rate", metrics.error_rate if config.trigger_on_error_rate else None,
                            config.error_rate_threshold, rate_ok, rate_reason),
                  Condition("hours since the last run", _hours_since(metrics.last_training_finished_at, now),
                            config.cooldown_hours, not cooling, cooldown_reason))
    return TriggerResult(should_trigger=should, reasons=[verdict, *reasons], metrics=numbers, conditions=conditions)


def _hours_since(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else round((now - moment).total_seconds() / 3600, 2)


def _verdict(metrics: TriggerMetrics, *, force: bool, cooling: bool, count_ok: bool, rate_ok: bool) -> tuple[bool, str]:
    """Blocks first (in progress, nothing to train on), then force, then cooldown, then the two rules."""
    if metrics.training_in_progress:
        return False, "not triggered: a training run is in progress"
    if metrics.new_corrected_cases == 0:
        suffix = " (force does not override this)" if force else ""
        return False, "not triggered: no new corrected cases, nothing to train on" + suffix
    if force:
        return True, "triggered: forced (count, rate and cooldown checks overridden)"
    if cooling:
        return False, "not triggered: inside the cooldown"
    if count_ok or rate_ok:
        rules = (("enough new error cases", count_ok), ("error rate at or above threshold", rate_ok))
        return True, "triggered: " + " and ".join(name for name, ok in rules if ok)
    return False, "not triggered: neither the case counts nor the error rate reached their thresholds"


def _check_corrected(metrics: TriggerMetrics, config: FinetuningConfig) -> tuple[bool, str]:
    ok = metrics.new_corrected_cases >= config.min_corrected_cases
    sign = ">=" if ok else "<"
    return ok, (f"{_counted(metrics, metrics.new_corrected_cases)} new corrected cases {sign} "
                f"min_corrected_cases {config.min_corrected_cases}")


def _check_count(metrics: TriggerMetrics, config: FinetuningConfig) -> tuple[bool, str]:
    ok = metrics.new_cases >= config.min_error_cases
    sign = ">=" if ok else "<"
    return ok, f"{_counted(metrics, metrics.new_cases)} new error cases {sign} min_error_cases {config.min_error_cases}"


def _counted(metrics: TriggerMetrics, count: int) -> str:
    """A count as words: "at least N" when counting stopped at the limit."""
    return f"at least {count}" if metrics.count_limit is not None and count >= metrics.count_limit else str(count)


def _check_rate(metrics: TriggerMetrics, config: FinetuningConfig) -> tuple[bool, str]:
    """Compare errors / inferences (a division, not ``threshold * inferences``, so 15/100 equals 0.15 exactly)."""
    if not config.trigger_on_error_rate:
        return False, "error-rate rule off (trigger_on_error_rate is false)"
    if metrics.window_inferences < config.min_inferences_for_rate:
        return False, (
            f"error rate not used: {metrics.window_inferences} inferences in the window "
            f"< min_inferences_for_rate {config.min_inferences_for_rate}"
        )
    rate = metrics.window_errors / metrics.window_inferences
    ok = rate >= config.error_rate_threshold
    sign = ">=" if ok else "<"
    version = f"model {metrics.model_version}" if metrics.model_version else "all model versions"
    hours = (metrics.window_end - metrics.window_start).total_seconds() / 3600
    return ok, (
        f"error rate {rate:.4f} ({metrics.window_errors} errors / {metrics.window_inferences} inferences, "
        f"{version}, last {hours:g} h) {sign} error_rate_threshold {config.error_rate_threshold}"
    )


def _check_cooldown(metrics: TriggerMetrics, config: FinetuningConfig, now: datetime) -> tuple[bool, str]:
    """True while cooling down: less than ``cooldown_hours`` since the last run finished (exactly equal is past)."""
    last = metrics.last_training_finished_at
    if last is None:
        return False, "cooldown: no training run has finished yet"
    elapsed = now - last
    cooling = elapsed < timedelta(hours=config.cooldown_hours)
    sign = "<" if cooling else ">="
    hours = elapsed.total_seconds() / 3600
    return cooling, f"cooldown: last training finished {hours:.1f} h ago {sign} {config.cooldown_hours:g} h"
