"""What a run costs, what it may cost, and whether the model it made pays for itself (seed 004's cost tracker).

Prices are configuration (``costs.prices``, dollars), never constants here: provider price lists change. A price
is looked up by name: an OpenAI or Gemini model id (training and inference per million tokens; a tuned Gemini
model is priced as its base), a fine-tuned OpenAI model's exact id or ``ft:<base model>`` for every model
fine-tuned from that base, a machine or accelerator type (per hour),
or a backend's name (``kubernetes``, ``gke``: per pod-hour). A cost whose price is not configured is
``unknown`` -- reported as such and never counted as zero -- except the ``local`` backend, which costs nothing
(its runtime is kept).

Training: OpenAI bills ``trained_tokens`` (epochs x billable tokens), Vertex ``totalBillableTokenCount``, at the
base model's training price; pods and VMs bill their hours (a GCE VM: machine plus accelerators; a pod: its
accelerator per GPU, else its backend), as the trainer measures its training (``train_runtime_s``: a VM's boot,
an image pull and the evaluate step are not in it). What attempts that ended without a model spent (a failed or
cancelled job, a failed pod, a VM until its deletion: :mod:`tuneloop.spent`) is added, so failed runs count
against budgets too. Before training, ``PipelineRun.training_estimate`` gives the figure the budget is checked
against: a managed job's from the file check's token count, a pod's or VM's as an upper bound (the step's
timeout). :func:`budget_check` compares it with ``costs.max_run_usd`` and with what is left of
``costs.monthly_budget_usd``.

ROI (:func:`roi`): training cost against the value of the errors the candidate avoids (``value_per_error_avoided``
per error, seed 004's $10 by default) and the change of inference cost per request, over the expected requests
per month; payback in days.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from tuneloop.config import Price

DAYS_PER_MONTH = 365.25 / 12  # for payback in days


@dataclass(frozen=True)
class Cost:
    """A cost in dollars (``usd`` None: unknown, with ``basis`` saying which price is missing) and how it was
    reached, e.g. ``"1,234,567 trained tokens x $3.00/1M (gpt-4.1-mini-2025-04-14)"``."""

    usd: float | None
    basis: str
    quantity: float = 0.0
    unit: str = ""
    upper_bound: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def label(self) -> str:
        if self.usd is None:
            return f"unknown ({self.basis})"
        return f"{'at most ' if self.upper_bound else ''}${self.usd:,.2f} ({self.basis})"


def price_for(prices: Mapping[str, Price], name: str) -> tuple[str, Price] | None:
    """The configured price of ``name``: its own, else for ``ft:<base>:...`` models the ``ft:<base>`` entry."""
    if name in prices:
        return name, prices[name]
    if name.startswith("ft:"):
        base = "ft:" + name.split(":")[1]
        if base in prices:
            return base, prices[base]
    return None


# -- training ----------------------------------------------------------------------------------------------------


def training_tokens_cost(prices: Mapping[str, Price], base_model: str, tokens: int, *,
                         estimate: bool = False, upper_bound: bool = False) -> Cost:
    """``tokens`` trained tokens (billable, epochs included) at the training price of ``base_model``."""
    what = "estimated trained tokens" if estimate else "trained tokens"
    found = price_for(prices, base_model)
    if found is None or found[1].training_per_1m_tokens is None:
        return Cost(None, f"{tokens:,} {what}; no costs.prices[{base_model!r}].training_per_1m_tokens", tokens,
                    "tokens", upper_bound)
    name, price = found
    usd = tokens * price.training_per_1m_tokens / 1e6
    return Cost(usd, f"{tokens:,} {what} x ${price.training_per_1m_tokens:g}/1M ({name})", tokens, "tokens",
                upper_bound)


def hourly_rate(prices: Mapping[str, Price], parts: Mapping[str, int]) -> tuple[float | None, str]:
    """Dollars per hour of a machine made of ``parts`` (name -> count, e.g. ``{"g2-standard-8": 1,
    "nvidia-l4": 1}``); None with the missing names when any part has no hourly price."""
    missing = [name for name in parts if price_for(prices, name) is None
               or price_for(prices, name)[1].per_hour is None]  # type: ignore[index]
    if missing:
        return None, "no costs.prices[...].per_hour for " + ", ".join(repr(m) for m in missing)
    rate = sum(count * price_for(prices, name)[1].per_hour for name, count in parts.items())  # type: ignore
    terms = " + ".join(f"{count} x {name}" if count != 1 else name for name, count in parts.items())
    return rate, f"${rate:g}/h ({terms})"


def hours_cost(prices: Mapping[str, Price], parts: Mapping[str, int], hours: float, *,
               upper_bound: bool = False) -> Cost:
    """``hours`` of a machine made of ``parts`` at its hourly rate."""
    if not parts:
        return Cost(0.0, f"{hours:.2f} h on this worker (local: no price)", hours, "hours")
    rate, basis = hourly_rate(prices, parts)
    if rate is None:
        return Cost(None, f"{hours:.2f} h; {basis}", hours, "hours", upper_bound)
    return Cost(rate * hours, f"{hours:.2f} h x {basis}", hours, "hours", upper_bound)


def total(parts: list[Cost]) -> Cost:
    """The sum of ``parts`` (one or more; e.g. a failed job and the job that made the model): unknown when any part
    is, an upper bound when any part is one; the basis lists every part."""
    if not parts:
        raise ValueError("parts: at least one cost is needed")
    if len(parts) == 1:
        return parts[0]
    unknown = [part for part in parts if part.usd is None]
    usd = None if unknown else sum(part.usd for part in parts)  # type: ignore[misc]
    units = {part.unit for part in parts}
    unit = units.pop() if len(units) == 1 else ""
    return Cost(usd, " + ".join(part.basis for part in parts),
                sum(part.quantity for part in parts) if unit else 0.0, unit, any(part.upper_bound for part in parts))


# -- inference ---------------------------------------------------------------------------------------------------


def request_cost(prices: Mapping[str, Price], model: str, prompt_tokens: float, completion_tokens: float) -> Cost:
    """One request's cost: tokens in and out at the model's inference prices, plus any per-request price."""
    found = price_for(prices, model)
    if found is None:
        return Cost(None, f"no costs.prices[{model!r}]", 1, "requests")
    name, price = found
    if price.input_per_1m_tokens is None and price.per_request is None:
        return Cost(None, f"costs.prices[{name!r}] has no input_per_1m_tokens or per_request", 1, "requests")
    usd = ((price.input_per_1m_tokens or 0) * prompt_tokens + (price.output_per_1m_tokens or 0) * completion_tokens
           ) / 1e6 + (price.per_request or 0)
    return Cost(usd, f"{prompt_tokens:.0f} + {completion_tokens:.0f} tokens per request ({name})", 1, "requests")


def mean_request_cost(prices: Mapping[str, Price], model: str, rows: list[Mapping[str, Any]]) -> Cost:
    """The mean cost per request over prediction rows that carry ``prompt_tokens`` / ``completion_tokens``."""
    if not rows:
        return Cost(None, "no requests recorded", 0, "requests")
    prompt = sum(float(r.get("prompt_tokens") or 0) for r in rows) / len(rows)
    completion = sum(float(r.get("completion_tokens") or 0) for r in rows) / len(rows)
    return request_cost(prices, model, prompt, completion)


# -- budget ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetCheck:
    """The budget's verdict on a run's estimate: ``within``; else ``reasons`` with the numbers."""

    within: bool
    estimate: Cost
    spent_this_month_usd: float
    max_run_usd: float | None
    monthly_budget_usd: float | None
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "estimate": self.estimate.to_dict(), "reasons": list(self.reasons)}


def budget_check(estimate: Cost, *, spent_this_month_usd: float, max_run_usd: float | None,
                 monthly_budget_usd: float | None, unknown_runs_this_month: int = 0) -> BudgetCheck:
    """Whether a run estimated at ``estimate`` fits ``max_run_usd`` and what is left of the month's budget. An
    unknown estimate is over any budget that is set (a limit the run cannot be shown to respect), and so is any
    run when the month's spend includes runs of unknown cost (``unknown_runs_this_month``) and a monthly budget
    is set."""
    reasons = []
    if max_run_usd is not None:
        if estimate.usd is None:
            reasons.append(f"the run's cost is {estimate.label()}: costs.max_run_usd ${max_run_usd:,.2f} cannot be "
                           "checked")
        elif estimate.usd > max_run_usd:
            reasons.append(f"estimated {estimate.label()} > costs.max_run_usd ${max_run_usd:,.2f}")
    if monthly_budget_usd is not None:
        left = monthly_budget_usd - spent_this_month_usd
        if estimate.usd is None:
            reasons.append(f"the run's cost is {estimate.label()}: costs.monthly_budget_usd cannot be checked "
                           f"(${left:,.2f} left this month)")
        elif estimate.usd > left:
            reasons.append(f"estimated {estimate.label()} > ${left:,.2f} left this month (costs.monthly_budget_usd "
                           f"${monthly_budget_usd:,.2f}, spent ${spent_this_month_usd:,.2f})")
        if unknown_runs_this_month:
            reasons.append(f"{unknown_runs_this_month} run(s) this month cost an unknown amount (a price is missing "
                           f"from costs.prices): costs.monthly_budget_usd cannot be checked")
    return BudgetCheck(not reasons, estimate, spent_this_month_usd, max_run_usd, monthly_budget_usd, tuple(reasons))


# -- ROI ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Roi:
    """Seed 004's ROI: per month, the value of the errors avoided plus the inference cost saved, against the
    training cost; payback in days (0: at once), or None with ``payback_note`` saying why: ``unknown_cost`` (the
    training cost is not known), ``no_traffic`` (no requests expected), ``no_gain`` (the candidate avoids no
    errors and saves nothing at these numbers)."""

    training_usd: float | None
    expected_requests_per_month: float
    error_rate_production: float
    error_rate_candidate: float
    value_per_error_avoided_usd: float
    request_cost_production_usd: float | None
    request_cost_candidate_usd: float | None
    errors_avoided_per_month: float
    error_value_per_month_usd: float
    inference_saving_per_month_usd: float | None
    net_per_month_usd: float
    payback_days: float | None
    payback_note: str | None
    roi_6_months_usd: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def roi(*, training_usd: float | None, expected_requests_per_month: float, error_rate_production: float,
        error_rate_candidate: float, value_per_error_avoided_usd: float, request_cost_production_usd: float | None,
        request_cost_candidate_usd: float | None) -> Roi:
    """Seed 004's arithmetic: errors avoided = (production's error rate - the candidate's) x requests; saving =
    (production's cost per request - the candidate's) x requests; payback = training cost / (value + saving) per
    day. Unknown inference prices count no saving; an unknown training cost leaves payback unknown."""
    errors_avoided = (error_rate_production - error_rate_candidate) * expected_requests_per_month
    error_value = errors_avoided * value_per_error_avoided_usd
    saving = None
    if request_cost_production_usd is not None and request_cost_candidate_usd is not None:
        saving = (request_cost_production_usd - request_cost_candidate_usd) * expected_requests_per_month
    net = error_value + (saving or 0.0)
    payback, note = None, None
    if training_usd is None:
        note = "unknown_cost"
    elif expected_requests_per_month <= 0:
        note = "no_traffic"
    elif net <= 0:
        note = "no_gain"
    else:
        payback = training_usd / (net / DAYS_PER_MONTH)
    six_months = None if training_usd is None else 6 * net - training_usd
    return Roi(training_usd, expected_requests_per_month, error_rate_production, error_rate_candidate,
               value_per_error_avoided_usd, request_cost_production_usd, request_cost_candidate_usd, errors_avoided,
               error_value, saving, net, payback, note, six_months)


PAYBACK_NOTES = {"unknown_cost": "unknown (the training cost is not known)",
                 "no_traffic": "unknown (no requests recorded or expected: costs.expected_requests_per_month)",
                 "no_gain": "never at these numbers (no errors avoided, nothing saved)"}


def payback_label(result: Mapping[str, Any]) -> str:
    """An ROI's payback in words (``Roi.to_dict()``)."""
    if result.get("payback_days") is None:
        return PAYBACK_NOTES.get(result.get("payback_note") or "", "unknown")
    return f"{result['payback_days']:.1f} days"


# -- reports -----------------------------------------------------------------------------------------------------


def cost_report(runs: list[Any], *, monthly_budget_usd: float | None, max_run_usd: float | None) -> dict[str, Any]:
    """Per run and per calendar month (UTC) from finished runs (``TrainingRun``: their summary keeps the run's
    costs): what each run's training cost, the estimate its budget was checked against, and the ROI of its
    candidate. Unknown costs are listed, not added: a month's ``unknown_runs`` says how many."""
    rows, months = [], {}
    for run in sorted(runs, key=lambda r: r.finished_at or r.started_at):
        costs = run.summary.get("costs") or {}
        training = costs.get("training") or {}
        estimate = (costs.get("budget") or {}).get("estimate") or {}
        month = (run.finished_at or run.started_at).strftime("%Y-%m")
        rows.append({"run_id": run.run_id, "status": run.status, "month": month,
                     "finished_at": run.finished_at.isoformat() if run.finished_at else None,
                     "training_usd": training.get("usd"), "training_basis": training.get("basis"),
                     "training_upper_bound": bool(training.get("upper_bound")),
                     "estimate_usd": estimate.get("usd"), "roi": costs.get("roi")})
        total = months.setdefault(month, {"month": month, "training_usd": 0.0, "runs": 0, "unknown_runs": 0})
        if training:
            total["runs"] += 1
            if training.get("usd") is None:
                total["unknown_runs"] += 1
            else:
                total["training_usd"] += training["usd"]
    for total in months.values():
        total["monthly_budget_usd"] = monthly_budget_usd
        total["left_usd"] = None if monthly_budget_usd is None else monthly_budget_usd - total["training_usd"]
    return {"runs": rows, "months": sorted(months.values(), key=lambda m: m["month"]), "max_run_usd": max_run_usd,
            "monthly_budget_usd": monthly_budget_usd}
