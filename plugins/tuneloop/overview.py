"""What an operator wants to see at a glance, per model: one function for ``tuneloop status --json`` and the page.

:func:`collect_status` is the seed's ``get_system_status`` grown into the status page's data: the cases waiting and
each trigger condition against its threshold, the production / previous / candidate / canary versions with their
gate numbers and when and why they moved, runs in progress (with the training's progress where the trainer logs
it), the last decisions with their scoreboards, the trend of the gate's metric over versions, regression suite
histories and costs. Everything comes from the store, where each run's report keeps a compact scoreboard: a page of
a hundred versions reads no file and imports no MLflow. What only Airflow knows (the step a run is on, the next
scheduled run) and what only MLflow has (training steps logged so far) come in through :class:`Lookups`, so this
module stays Airflow-free and fast to test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from tuneloop.history import DeploymentEvent, version_label

if TYPE_CHECKING:
    from tuneloop.config import TuneloopConfig
    from tuneloop.store import ErrorCaseStore, TrainingRun

DECISIONS_SHOWN = 10
TREND_VERSIONS = 100  # the chart's span: the latest hundred versions
HISTORY_READ = 200  # deployment events read for the versions' moves and the chart's markers


@dataclass(frozen=True)
class MetricPoint:
    """One logged value of a training metric: the step it was logged at and when (seconds since the epoch)."""

    step: int
    timestamp: float


@dataclass(frozen=True)
class Lookups:
    """What the store cannot say, asked of whoever can: each optional, each failure shown, never raised.

    ``steps(dag_id, run_id)``: the Airflow tasks of that DAG run now running or waiting (``["train.wait"]``).
    ``next_run(dag_id)``: when the scheduler will next start the DAG. ``training(run_id)``: the training's total
    steps and the steps logged so far (:func:`training_progress` turns them into a progress bar), or None.
    """

    steps: Callable[[str, str], list[str]] | None = None
    next_run: Callable[[str], datetime | None] | None = None
    training: Callable[[str], tuple[int | None, list[MetricPoint]] | None] | None = None


def collect_status(config: TuneloopConfig, *, registry: bool = False, store: ErrorCaseStore | None = None,
                   lookups: Lookups | None = None, now: datetime | None = None,
                   decisions: int = DECISIONS_SHOWN) -> dict[str, Any]:
    """The status of ``config``'s model as JSON-ready data (see the module docstring).

    ``registry`` adds what MLflow itself says (aliases and the production version's tags) and flags any
    difference, e.g. an alias moved by hand in the MLflow UI: it imports MLflow, so it is off by default.
    """
    from tuneloop.deployment import aliases_from_history
    from tuneloop.pipeline import evaluate_trigger, training_approval_reason
    from tuneloop.rollout import canary_from_history
    from tuneloop.runs import WEEKLY_DAG_ID
    from tuneloop.store import ErrorCaseStore

    store = store or ErrorCaseStore.from_config(config)
    lookups = lookups or Lookups()
    now = now or datetime.now(timezone.utc)
    name, dag_id = config.mlflow.model_name, config.dag_id(WEEKLY_DAG_ID)
    trigger = evaluate_trigger(config, now=now, force=False, store=store)
    history = store.deployment_history(name, limit=HISTORY_READ)
    move = store.production_move(name)
    aliases = aliases_from_history([move] if move else [])
    judged = store.runs_with_candidates(limit=TREND_VERSIONS)
    canary = canary_from_history(history)
    model: dict[str, Any] = {
        "name": name, "task": config.task, "dag_id": dag_id,
        "production_version": aliases["production"], "previous_version": aliases["previous"],
        "production_since": move.to_dict() if move else None, "canary": canary,
        "versions": versions(aliases, canary, judged, history)}
    if registry:
        model["registry"] = registry_status(config, aliases)
    return {
        "cases": store.statistics().to_dict(),
        "trigger": trigger.to_dict() | {
            "approval_required": training_approval_reason(config, trigger.should_trigger, forced=False) is not None,
            "next_scheduled_run": _ask(lookups.next_run, dag_id)},
        "model": model,
        "in_progress": [in_progress(run, dag_id, lookups, now) for run in store.running_training_runs()],
        "last_runs": [r.to_dict() for r in store.training_runs(limit=5)],
        "decisions": [decision(run) for run in store.decided_runs(limit=decisions)],
        "trend": trend(judged, history),
        "regression_suites": suite_status(config, store),
        "costs": month_costs(collect_costs(config, months=1, store=store)),
        "tracking_uri": redact_uri(config.tracking_uri),
    }


def redact_uri(uri: str) -> str:
    """``scheme://***@host/...``: a URI's credentials (user and password, or a token in the user part) and its
    query string (where some drivers take tokens) are never shown; the rest says where it points."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc and not parts.query:
        return uri
    host = parts.netloc.rpartition("@")[2]
    netloc = f"***@{host}" if "@" in parts.netloc else host
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", parts.fragment))


def suite_status(config: TuneloopConfig, store: ErrorCaseStore) -> list[dict[str, Any]]:
    """Every suite (config and registered) with its recent results, newest first."""
    from tuneloop.regression import merge_suites

    suites = merge_suites(config.regression.suites, store.registered_suites())
    return [{**spec.model_dump(mode="json"), "history": store.suite_history(spec.name, limit=10)} for spec in suites]


def collect_costs(config: TuneloopConfig, months: int = 12, store: ErrorCaseStore | None = None) -> dict[str, Any]:
    """:func:`tuneloop.costs.cost_report` over the model's runs finished in the last ``months`` calendar months
    (``store``: one already open, e.g. status's)."""
    from tuneloop.costs import cost_report
    from tuneloop.store import ErrorCaseStore

    now = datetime.now(timezone.utc)
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    for _ in range(max(months, 1) - 1):
        first = (first - timedelta(days=1)).replace(day=1)
    runs = (store or ErrorCaseStore.from_config(config)).finished_runs_since(first)
    return cost_report(runs, monthly_budget_usd=config.costs.monthly_budget_usd, max_run_usd=config.costs.max_run_usd)


def month_costs(report: dict[str, Any]) -> dict[str, Any]:
    """This month's training spend against the budget, and the latest ROI (status's share of ``costs``)."""
    month = report["months"][-1] if report["months"] else {"training_usd": 0.0, "runs": 0, "unknown_runs": 0}
    latest = next((run["roi"] for run in reversed(report["runs"]) if run.get("roi")), None)
    return {"this_month_usd": month["training_usd"], "trained_runs": month["runs"],
            "unknown_cost_runs": month["unknown_runs"], "monthly_budget_usd": report["monthly_budget_usd"],
            "max_run_usd": report["max_run_usd"], "latest_roi": latest}


def registry_status(config: TuneloopConfig, history: dict[str, str | None]) -> dict[str, Any]:
    """MLflow's aliases and production tags, and whether the aliases agree with tuneloop's history."""
    from tuneloop.registry import ModelRegistry

    registry = ModelRegistry(config.tracking_uri, config.registry_uri, config.mlflow.model_name)
    production = registry.production_version()
    seen = {"production": production, "previous": registry.previous_version()}
    return {"production_version": seen["production"], "previous_version": seen["previous"],
            "production_tags": registry.get_version(production).tags if production else {},
            "agrees_with_history": seen == history}


def versions(aliases: dict[str, str | None], canary: dict[str, Any] | None, judged: Sequence[TrainingRun],
             history: Sequence[DeploymentEvent]) -> list[dict[str, Any]]:
    """Production, previous, candidate (the newest run's version, when it is none of the others: rejected,
    declined, waiting) and canary: each with the gate's numbers from the run that registered it (a version no run
    registered, e.g. bootstrapped: as the production a later run measured) and its latest move (when, what, by
    whom, why)."""
    roles = {"production": aliases["production"], "previous": aliases["previous"],
             "canary": canary["version"] if canary else None}
    placed = {str(v) for v in roles.values() if v is not None}
    newest = judged[0].candidate_version if judged else None  # the latest run's version, unless it was placed
    roles["candidate"] = newest if newest not in placed else None
    by_version = {run.candidate_version: run for run in reversed(judged)}  # the latest run of a version wins
    shown = []
    for role in ("production", "previous", "candidate", "canary"):
        version = roles[role]
        if version is None:
            continue
        run = by_version.get(str(version))
        numbers, _, primary = _side(str(version), judged)
        measured = "candidate" if run is not None and run.summary.get("scoreboard") else "production"
        shown.append({"role": role, "version": str(version), "label": version_label(version),
                      "run_id": run.run_id if run else None, "status": run.status if run else None,
                      "metrics": {name: m["value"] for name, m in numbers.items()},
                      "measured_as": measured if numbers else None, "primary": primary,
                      "moved": _last_move(str(version), history)})
    return shown


PRODUCTION_MOVES = frozenset({"bootstrap", "deploy", "rollback"})  # events whose from/to are the version moved


def _last_move(version: str, history: Sequence[DeploymentEvent]) -> dict[str, Any] | None:
    """The newest event that moved ``version``: into or out of production, or (register, reject, green, canary)
    the version its details name. The other events' from/to are the production of the moment, not the subject."""
    for event in history:
        if event.action in PRODUCTION_MOVES:
            named = {str(event.to_version), str(event.from_version)}
        else:
            named = {str(event.details.get("version"))}
        if version in named:
            return {"action": event.action, "at": event.at.isoformat(), "actor": event.actor, "reason": event.reason,
                    "run_id": event.run_id, "from_version": event.from_version, "to_version": event.to_version}
    return None


def decision(run: TrainingRun) -> dict[str, Any]:
    """A finished run as the page lists it: its status, summary lines, scoreboard, costs and links."""
    summary = run.summary
    return {"run_id": run.run_id, "status": run.status, "started_at": run.started_at.isoformat(),
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "candidate_version": run.candidate_version, "production_before": summary.get("production_before"),
            "dataset_id": run.dataset_id, "reason_started": summary.get("reason_started"),
            "lines": summary.get("lines") or [], "scoreboard": summary.get("scoreboard"),
            "costs": summary.get("costs"), "mlflow_run": summary.get("mlflow_run"), "record": summary.get("record")}


def trend(judged: Sequence[TrainingRun], history: Sequence[DeploymentEvent]) -> dict[str, Any]:
    """The gate's metric per version, oldest first, each point marked with what became of the version (deployed,
    rejected, rolled back...; the first production, which no run judged, as ``baseline``), and the rollbacks."""
    rollbacks_of = {}  # version -> the runs that rolled it back (a run's own post-deploy rollback is not by hand)
    for event in history:
        if event.action == "rollback":
            rollbacks_of.setdefault(str(event.from_version), set()).add(event.run_id)
    points = []
    for run in sorted(judged, key=_version_order):
        board = run.summary.get("scoreboard")
        if not board:
            continue  # a run closed before scoreboards were kept, or judged by no gate
        metrics = {m["name"]: m for m in board["metrics"]}
        primary = metrics.get(board["primary"]) or {}
        points.append({"version": run.candidate_version, "run_id": run.run_id, "status": run.status,
                       "at": (run.finished_at or run.started_at).isoformat(), "metric": board["primary"],
                       "lower_is_better": primary.get("lower_is_better", True),
                       "candidate": {n: m["candidate"] for n, m in metrics.items()},
                       "baseline": {n: m["baseline"] for n, m in metrics.items()},
                       "rolled_back_by_hand": bool(rollbacks_of.get(run.candidate_version, set()) - {run.run_id})})
    origin = _origin(points[0], judged) if points else None
    if origin:
        points.insert(0, origin)
    rollbacks = [{"from_version": e.from_version, "to_version": e.to_version, "at": e.at.isoformat(),
                  "actor": e.actor, "reason": e.reason} for e in history if e.action == "rollback"]
    return {"metric": points[-1]["metric"] if points else None, "points": points, "rollbacks": rollbacks}


def _origin(first: dict[str, Any], judged: Sequence[TrainingRun]) -> dict[str, Any] | None:
    """The production the first judged version was compared with, when no run judged it (the bootstrapped
    version): its numbers are that run's baseline, so the chart starts where the loop started."""
    run = next(r for r in judged if r.run_id == first["run_id"])
    before = run.summary.get("production_before")
    if before is None or any(r.candidate_version == str(before) for r in judged):
        return None
    return {**first, "version": str(before), "run_id": None, "status": "baseline", "at": run.started_at.isoformat(),
            "candidate": dict(first["baseline"]), "baseline": {}, "rolled_back_by_hand": False}


def _version_order(run: TrainingRun) -> tuple[int, str]:
    version = run.candidate_version or ""
    return (int(version), version) if version.isdigit() else (0, version)


def in_progress(run: TrainingRun, dag_id: str, lookups: Lookups, now: datetime) -> dict[str, Any]:
    """A running run: since when, the Airflow steps it is on, and the training's progress where it is logged."""
    logged = _ask(lookups.training, run.run_id)
    progress = training_progress(*logged, now=now) if isinstance(logged, tuple) else logged  # None or the error
    steps = _ask(lookups.steps, dag_id, run.run_id)
    return {"run_id": run.run_id, "started_at": run.started_at.isoformat(), "steps": steps, "progress": progress}


def training_progress(total_steps: int | None, points: Sequence[MetricPoint], *,
                      now: datetime) -> dict[str, Any] | None:
    """Step / total and an ETA from the steps the trainer logged (``train_loss`` every ``logging_steps``).

    Only the current attempt counts: a retried training resumes from its last checkpoint and logs those steps again
    into the same MLflow run, so the points since the step last went down are its own. The rate is measured between
    its first and last logged step (model loading before the first step does not slow the estimate; one point gives
    no rate, no ETA), and the ETA counts from now: the time since the last point is already spent (a stalled run's
    ETA reaches 0, and ``seconds_since_logged`` says how long it has been silent). None before the first step is
    logged or without a total.
    """
    if not total_steps or not points:
        return None
    ordered = sorted(points, key=lambda p: p.timestamp)
    restarts = [i for i in range(1, len(ordered)) if ordered[i].step <= ordered[i - 1].step]
    attempt = ordered[restarts[-1]:] if restarts else ordered
    first, last = attempt[0], attempt[-1]
    rate = ((last.timestamp - first.timestamp) / (last.step - first.step)) if last.step > first.step else None
    silent = max(0.0, now.timestamp() - last.timestamp)
    remaining = max(0, total_steps - last.step)
    return {"step": last.step, "total": total_steps, "fraction": min(1.0, last.step / total_steps),
            "seconds_per_step": rate, "eta_seconds": max(0.0, remaining * rate - silent) if rate is not None else None,
            "logged_at": datetime.fromtimestamp(last.timestamp, timezone.utc).isoformat(),
            "seconds_since_logged": silent}


def _ask(lookup: Callable[..., Any] | None, *args: Any) -> Any:
    """A lookup's answer, None without one; a failing lookup answers ``{"error": ...}`` (the page shows it)."""
    if lookup is None:
        return None
    try:
        return lookup(*args)
    except Exception as error:  # noqa: BLE001 -- a page section, never the page, goes missing
        return {"error": f"{type(error).__name__}: {error}"}


def compare_versions(config: TuneloopConfig, store: ErrorCaseStore, a: str, b: str) -> dict[str, Any]:
    """Two versions side by side: their metrics, per-slice numbers and churn.

    Where one run judged one against the other (``b`` the candidate, ``a`` the production it was compared with, or
    the reverse), the numbers are that run's: both measured on the same eval split, with its churn. Otherwise each
    version's numbers come from its own run (as a candidate, else as the production a later run was compared
    with), on different eval splits: shown, with a note saying so, and without churn.
    """
    a, b = str(a), str(b)
    judged = store.runs_with_candidates(limit=TREND_VERSIONS * 5)
    for run in judged:
        board, before = run.summary.get("scoreboard"), run.summary.get("production_before")
        if board and {run.candidate_version, None if before is None else str(before)} == {a, b}:
            return {"model": config.mlflow.model_name} | _direct(board, run, a, b)
    sides = {version: _side(version, judged) for version in (a, b)}
    metrics = [{"name": name, "a": sides[a][0].get(name, {}).get("value"), "b": sides[b][0].get(name, {}).get("value"),
                "lower_is_better": (sides[a][0].get(name) or sides[b][0].get(name))["lower_is_better"]}
               for name in dict.fromkeys([*sides[a][0], *sides[b][0]])]
    slice_names = dict.fromkeys([*sides[a][1], *sides[b][1]])
    return {"model": config.mlflow.model_name, "a": a, "b": b, "direct": False, "run_id": None,
            "note": (f"no run compared {version_label(a)} with {version_label(b)}: each version's numbers are from "
                     "its own run's eval split, so they are not measured on the same examples"),
            "primary": sides[b][2] or sides[a][2], "metrics": metrics,
            "slices": [{"name": n, "a": sides[a][1].get(n), "b": sides[b][1].get(n)} for n in slice_names],
            "churn": None, "known": [v for v in (a, b) if sides[v][0]]}


def _direct(board: dict[str, Any], run: TrainingRun, a: str, b: str) -> dict[str, Any]:
    """The comparison a run made, oriented as asked (``a`` left, ``b`` right); the churn keeps the run's
    direction (from the production it judged against to its candidate), whichever side that is."""
    flip = run.candidate_version == a  # the run's baseline is b's side
    left, right = ("candidate", "baseline") if flip else ("baseline", "candidate")
    return {"a": a, "b": b, "direct": True, "run_id": run.run_id,
            "note": f"both measured on run {run.run_id}'s eval split ({board['n']} examples)",
            "primary": board["primary"],
            "metrics": [{"name": m["name"], "a": m[left], "b": m[right], "lower_is_better": m["lower_is_better"],
                         "ci_low": m.get("ci_low"), "ci_high": m.get("ci_high"), "p_value": m.get("p_value")}
                        for m in board["metrics"]],
            "slices": [{"name": s["name"], "n": s["n"], "a": s[left], "b": s[right]} for s in board["slices"]],
            "churn": {"from": str(run.summary.get("production_before")), "to": run.candidate_version,
                      "counts": board["churn"]}, "known": [a, b]}


def _side(version: str, judged: Sequence[TrainingRun]) -> tuple[dict[str, dict[str, Any]], dict[str, float],
                                                                  str | None]:
    """One version's own numbers: as the candidate of its run, else as the production a later run compared."""
    for side, match in (("candidate", lambda r: r.candidate_version == version),
                        ("baseline", lambda r: str(r.summary.get("production_before")) == version)):
        run = next((r for r in judged if match(r) and r.summary.get("scoreboard")), None)
        if run is not None:
            board = run.summary["scoreboard"]
            return ({m["name"]: {"value": m[side], "lower_is_better": m["lower_is_better"]} for m in board["metrics"]},
                    {s["name"]: s[side] for s in board["slices"]}, board["primary"])
    return {}, {}, None
