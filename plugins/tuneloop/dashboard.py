"""The status page's HTML: the data of :func:`tuneloop.overview.collect_status`, rendered server-side.

Plain functions from dicts to HTML strings, every value escaped on its way in (model names, reasons and run ids are
user text), charts drawn as inline SVG: no template engine, no JavaScript framework, no file to serve, so the page
works in Airflow's iframe, behind any proxy, and is tested without a browser. The one script posts the roll-back
form as JSON. Links to Airflow are relative to the page (``../dags/...``), so they follow Airflow's base path, and
open in the top window, not in the iframe. Airflow-free: :mod:`tuneloop.web` serves these pages.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from tuneloop.history import version_label

STATUS_COLOURS = {"deployed": "#2e7d32", "rejected": "#c62828", "rolled_back": "#ef6c00", "declined": "#6a1b9a",
                  "insufficient_evidence": "#757575", "failed": "#37474f", "over_budget": "#ad1457",
                  "baseline": "#bdbdbd"}  # baseline: the first production, measured as the first run's baseline
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.2rem;color:#1a1a1a;max-width:75rem}
h1{font-size:1.4rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ccc}h3{font-size:1rem}
table{border-collapse:collapse;margin:.4rem 0}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;
vertical-align:top;font-size:.9rem}th{background:#f4f4f4}.ok{color:#2e7d32}.no{color:#c62828}
.muted{color:#666;font-size:.85rem}details{margin:.3rem 0;border:1px solid #ddd;padding:.3rem .6rem}
summary{cursor:pointer}progress{width:20rem;height:1rem}.actions a,.actions button{margin-right:.8rem}
pre{white-space:pre-wrap;background:#f8f8f8;padding:.6rem}
"""


def e(value: Any) -> str:
    """Escaped text of any value; None shows as an en dash."""
    return "–" if value is None else escape(str(value), quote=True)


def number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return e(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def shortened(text: str, limit: int = 200) -> str:
    """A long text's start, the whole of it on hover (a gate's reason lists every check)."""
    if len(text) <= limit:
        return e(text)
    return f'<span title="{e(text)}">{e(text[:limit - 1])}…</span>'


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>")


def airflow_link(path: str, text: str) -> str:
    """A link into the Airflow UI, relative to this page (served at ``<airflow>/tuneloop/``), in the top window."""
    return f'<a href="../{e(path)}" target="_top">{e(text)}</a>'


def run_path(dag_id: str, run_id: str) -> str:
    return f"dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def status_page(models: Mapping[str, Mapping[str, Any]], *, can_roll_back: Mapping[str, bool]) -> str:
    """The whole page: one section per model the user may see (a model whose status failed shows its error)."""
    sections = [model_section(name, status, can_roll_back=can_roll_back.get(name, False)) if "error" not in status
                else f'<section id="model-{e(name)}"><h2>{e(name)}</h2><p class=no>Its status could not be read: '
                     f'{e(status["error"])}</p></section>' for name, status in models.items()]
    if not sections:
        sections = ["<p>No model of tuneloop's is visible to you: ask an administrator for access to its DAG.</p>"]
    return page("tuneloop", "<h1>tuneloop: continuous fine-tuning</h1>" + "".join(sections) + ROLLBACK_SCRIPT)


def model_section(name: str, status: Mapping[str, Any], *, can_roll_back: bool) -> str:
    model = status["model"]
    dag = model["dag_id"]
    parts = [f'<section id="model-{e(name)}"><h2>{e(name)} <span class=muted>({e(model["task"])}, DAG '
             f'{airflow_link("dags/" + quote(dag, safe=""), dag)}, MLflow {e(status.get("tracking_uri"))})'
             "</span></h2>",
             versions_table(model), actions(name, model, can_roll_back=can_roll_back),
             trigger_section(status), in_progress_section(dag, status["in_progress"]),
             trend_section(name, status["trend"]), compare_form(name, status),
             decisions_section(name, dag, status["decisions"]), suites_section(status["regression_suites"]),
             costs_section(status["costs"]), "</section>"]
    return "".join(parts)


def versions_table(model: Mapping[str, Any]) -> str:
    rows = []
    for version in model["versions"]:
        metrics = ", ".join(f"{e(k)} {number(v)}" for k, v in version["metrics"].items()) or "–"
        if version.get("measured_as") == "production":
            metrics += " <span class=muted>(as production, by a later run)</span>"
        moved = version["moved"]
        when = (f'{e(moved["action"])} {e(moved["at"][:19].replace("T", " "))} UTC by {e(moved["actor"])}: '
                f'{shortened(moved["reason"])}') if moved else "–"
        rows.append(f'<tr class="version-{e(version["role"])}"><td>{e(version["role"])}</td>'
                    f'<td><b>{e(version["label"])}</b></td><td>{metrics}</td><td>{e(version["status"])}</td>'
                    f"<td>{when}</td></tr>")
    canary = model.get("canary")
    canary_line = (f'<p>Canary {e(version_label(canary["version"]))} answers {number(canary["traffic_percent"], 1)}% '
                   f'of the requests since {e(canary["since"][:19].replace("T", " "))} UTC; its online test '
                   "decides.</p>") if canary else ""
    if not rows:
        return "<p>No version registered yet: run <code>tuneloop bootstrap</code>.</p>"
    return ("<h3>Versions</h3><table class=versions><tr><th>role</th><th>version</th><th>gate metrics (as "
            "the candidate of its run)</th><th>its run</th><th>last move: when, by whom, why</th></tr>" + "".join(rows)
            + "</table>" + canary_line)


def actions(name: str, model: Mapping[str, Any], *, can_roll_back: bool) -> str:
    dag = quote(model["dag_id"], safe="")
    links = [airflow_link("required_actions", "Pending approvals (Required actions)"),
             airflow_link(f"dags/{dag}", "Trigger a run (the DAG's Trigger button opens the form)")]
    form, canary = "", model.get("canary")
    if can_roll_back and (canary or model.get("previous_version")):
        what = (f'End the canary {e(version_label(canary["version"]))} (all traffic back to production '
                f'{e(version_label(model["production_version"]))})' if canary else
                f'Roll back production {e(version_label(model["production_version"]))} to '
                f'{e(version_label(model["previous_version"]))}')
        form = (f'<form class=rollback data-model="{e(name)}" data-production="{e(model["production_version"] or "")}"'
                f' data-canary="{e(canary["version"]) if canary else ""}"><label>{what}, because: '
                "<input name=reason required minlength=3 size=40></label> <button>Roll back</button>"
                "<span class=answer></span></form>")
    return f'<div class=actions><h3>Actions</h3>{" ".join(links)}{form}</div>'


def trigger_section(status: Mapping[str, Any]) -> str:
    trigger, cases = status["trigger"], status["cases"]
    verdict = ("<b class=ok>a run would start now</b>" + (" (then waits for approval)" if
                                                          trigger["approval_required"] else "")
               if trigger["should_trigger"] else "<b>waiting</b>")
    rows = "".join(f'<tr><td>{e(c["name"])}</td><td>{number(c["value"], _digits(c))}</td>'
                   f'<td>{number(c["threshold"], _digits(c))}</td>'
                   f'<td class={"ok" if c["met"] else "no"}>{"yes" if c["met"] else "no"}</td>'
                   f'<td class=muted>{e(c["detail"])}</td></tr>' for c in trigger.get("conditions", []))
    upcoming = trigger.get("next_scheduled_run")
    if isinstance(upcoming, dict):
        upcoming = f'unknown ({upcoming["error"]})'
    return (f'<h3>Cases and trigger</h3><p>{number(cases["total_cases"])} error cases, '
            f'{number(cases["new_corrected_cases"])} new with corrections; trigger: {verdict}; next scheduled '
            f'run: {e(upcoming or "none scheduled")}</p><table class=trigger><tr><th>condition</th><th>value</th>'
            f"<th>threshold</th><th>met</th><th>detail</th></tr>{rows}</table>"
            + "".join(f"<div class=muted>{e(r)}</div>" for r in trigger["reasons"][:1]))


def _digits(condition: Mapping[str, Any]) -> int:
    return 1 if condition["name"].startswith("hours") else 3


def in_progress_section(dag_id: str, runs: Sequence[Mapping[str, Any]]) -> str:
    if not runs:
        return "<h3>Runs in progress</h3><p>None.</p>"
    items = []
    for run in runs:
        steps = run["steps"]
        steps_text = (f'unknown ({steps["error"]})' if isinstance(steps, dict)
                      else ", ".join(steps) if steps else "between steps")
        items.append(f'<li>{airflow_link(run_path(dag_id, run["run_id"]), run["run_id"])} since '
                     f'{e(run["started_at"][:19].replace("T", " "))} UTC, on: <b>{e(steps_text)}</b>'
                     f'{progress_bar(run["progress"])}</li>')
    return f"<h3>Runs in progress</h3><ul class=in-progress>{''.join(items)}</ul>"


def progress_bar(progress: Mapping[str, Any] | None) -> str:
    """Training's step / total with an ETA (from the trainer's logged steps), or nothing before its first step."""
    if progress and "error" in progress:
        return f'<div class=training>training progress unknown: {e(progress["error"])}</div>'
    if not progress or "step" not in progress:
        return ""
    eta = progress.get("eta_seconds")
    eta_text = f", about {_duration(eta)} left" if eta is not None else ""
    return (f'<div class=training>training: <progress value="{progress["step"]}" max="{progress["total"]}">'
            f'</progress> step {progress["step"]} / {progress["total"]} ({progress["fraction"]:.0%}){eta_text}</div>')


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def trend_section(name: str, trend: Mapping[str, Any]) -> str:
    points = trend["points"]
    if not points:
        return "<h3>Trend</h3><p>No version judged by the gate yet.</p>"
    metric = trend["metric"]
    chart = line_chart(points, metric)
    rollbacks = "".join(f'<li>{e(r["at"][:19].replace("T", " "))}: {e(version_label(r["from_version"]))} → '
                        f'{e(version_label(r["to_version"]))} by {e(r["actor"])}: {e(r["reason"])}</li>'
                        for r in trend["rollbacks"][:10])
    return (f"<h3>Trend: {e(metric)} per version (as candidate; the gate's baseline dashed)</h3>{chart}"
            + legend() + (f"<p>Rollbacks:</p><ul>{rollbacks}</ul>" if rollbacks else ""))


def legend() -> str:
    return ("<div class=muted>" + " ".join(f'<span style="color:{c}">●</span> {e(s.replace("_", " "))}'
                                         for s, c in STATUS_COLOURS.items())
            + f' <span style="color:{STATUS_COLOURS["rolled_back"]}">◯</span> rolled back by hand later</div>')


def line_chart(points: Sequence[Mapping[str, Any]], metric: str, width: int = 720, height: int = 240) -> str:
    """The candidate's metric per version (a line, each point coloured by what became of the version) and the
    production baseline each was judged against (dashed)."""
    values = [p["candidate"].get(metric) for p in points] + [p["baseline"].get(metric) for p in points]
    known = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    low, high = (min(known), max(known)) if known else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 0.05, high + 0.05
    left, top, inner_w, inner_h = 60, 10, width - 80, height - 50
    step = inner_w / max(1, len(points) - 1)

    def xy(i: int, value: float) -> tuple[float, float]:
        return left + i * step, top + inner_h * (1 - (value - low) / (high - low))

    def path(side: str) -> str:
        coords = [xy(i, p[side][metric]) for i, p in enumerate(points) if _finite(p[side].get(metric))]
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)

    dots, labels = [], []
    for i, p in enumerate(points):
        value = p["candidate"].get(metric)
        x = left + i * step
        if len(points) <= 25 or i % max(1, len(points) // 20) == 0:
            labels.append(f'<text x="{x:.1f}" y="{height - 22}" font-size="10" text-anchor="middle">'
                          f'{e(version_label(p["version"]))}</text>')
        if _finite(value):
            _, y = xy(i, value)
            colour = STATUS_COLOURS.get(p["status"], "#9e9e9e")
            later = ", later rolled back by hand" if p.get("rolled_back_by_hand") else ""
            if later:
                dots.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="7" fill="none" stroke="{STATUS_COLOURS["rolled_back"]}"'
                            ' stroke-width="2"/>')
            dots.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}" class="point {e(p["status"])}">'
                        f'<title>{e(version_label(p["version"]))} {e(metric)} {number(value)}: {e(p["status"])}{later}'
                        "</title></circle>")
    axis = (f'<text x="5" y="{top + 10}" font-size="10">{number(high)}</text>'
            f'<text x="5" y="{top + inner_h}" font-size="10">{number(low)}</text>'
            f'<line x1="{left}" y1="{top + inner_h}" x2="{left + inner_w}" y2="{top + inner_h}" stroke="#bbb"/>')
    return (f'<svg class="trend-chart" role="img" aria-label="{e(metric)} per version" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}">{axis}'
            f'<polyline points="{path("baseline")}" fill="none" stroke="#999" stroke-dasharray="4 3"/>'
            f'<polyline points="{path("candidate")}" fill="none" stroke="#1565c0" stroke-width="2"/>'
            + "".join(dots) + "".join(labels) + "</svg>")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def compare_form(name: str, status: Mapping[str, Any]) -> str:
    known = [str(p["version"]) for p in status["trend"]["points"]]
    for version in (status["model"]["previous_version"], status["model"]["production_version"]):
        if version is not None and str(version) not in known:
            known.insert(0, str(version))
    if len(known) < 2:
        return ""
    ordered = sorted(set(known), key=lambda v: (int(v) if v.isdigit() else 0, v))

    def select(field: str, chosen: str) -> str:
        options = "".join(f'<option value="{e(v)}"{" selected" if v == chosen else ""}>{e(version_label(v))}'
                          "</option>" for v in ordered)
        return f'<select name="{field}">{options}</select>'

    model = status["model"]
    a, b = (str(model["previous_version"]), str(model["production_version"])) if model["previous_version"] \
        else (ordered[-2], ordered[-1])
    return (f'<h3>Compare two versions</h3><form class=compare action="compare" method=get>'
            f'<input type=hidden name=model value="{e(name)}">{select("a", a)} with {select("b", b)} '
            "<button>Compare</button></form>")


def decisions_section(name: str, dag_id: str, decisions: Sequence[Mapping[str, Any]]) -> str:
    if not decisions:
        return "<h3>Last decisions</h3><p>None yet.</p>"
    return "<h3>Last decisions</h3>" + "".join(decision_details(name, dag_id, d) for d in decisions)


def decision_details(name: str, dag_id: str, decision: Mapping[str, Any]) -> str:
    colour = STATUS_COLOURS.get(decision["status"], "#555")
    version = decision["candidate_version"]
    head = (f'<summary><b style="color:{colour}">{e(decision["status"])}</b> {e(decision["run_id"])}'
            + (f" candidate {e(version_label(version))}" if version else "")
            + f' <span class=muted>{e((decision["finished_at"] or "")[:19].replace("T", " "))}</span></summary>')
    mlflow = decision.get("mlflow_run") or {}
    links = [airflow_link(run_path(dag_id, decision["run_id"]), "Airflow run")]
    if str(mlflow.get("url", "")).startswith(("http://", "https://")):  # no javascript: or data: links
        links.append(f'<a href="{e(mlflow["url"])}" target="_blank" rel="noopener">MLflow run</a>')
    if decision.get("record"):
        links.append(f'<a href="decision?{urlencode({"model": name, "run_id": decision["run_id"]})}">whole '
                     "decision record</a>")
    lines = "".join(f"<li>{e(line)}</li>" for line in decision["lines"])
    return (f'<details class=decision data-run="{e(decision["run_id"])}">{head}<ul>{lines}</ul>'
            f'{scoreboard_tables(decision.get("scoreboard"))}<p>{" · ".join(links)}</p></details>')


def scoreboard_tables(board: Mapping[str, Any] | None) -> str:
    """The gate's numbers of one run: metrics with intervals and p-values, slices, churn."""
    if not board:
        return ""
    metrics = "".join(f'<tr><td>{e(m["name"])}</td><td>{number(m["baseline"])}</td><td>{number(m["candidate"])}</td>'
                      f'<td>{_interval(m)}</td><td>{number(m.get("p_value"), 4)}</td></tr>' for m in board["metrics"])
    slices = "".join(f'<tr><td>{e(s["name"])}</td><td>{number(s["n"])}</td><td>{number(s["baseline"])}</td>'
                     f'<td>{number(s["candidate"])}</td><td>{"gated" if s["gated"] else "reported"}, '
                     f'{"passed" if s["passed"] else "FAILED"}</td></tr>' for s in board["slices"])
    churn = ", ".join(f"{e(k.replace('_', ' '))} {number(v)}" for k, v in board["churn"].items())
    return (f'<table><tr><th>metric</th><th>production</th><th>candidate</th><th>interval of the change</th>'
            f"<th>p</th></tr>{metrics}</table>"
            + (f"<table><tr><th>slice</th><th>n</th><th>production</th><th>candidate</th><th></th></tr>{slices}"
               "</table>" if slices else "")
            + (f"<p>Churn: {churn}</p>" if churn else ""))


def _interval(metric: Mapping[str, Any]) -> str:
    if metric.get("ci_low") is None or metric.get("ci_high") is None:
        return "–"
    return f'[{number(metric["ci_low"], 4)}, {number(metric["ci_high"], 4)}]'


def suites_section(suites: Sequence[Mapping[str, Any]]) -> str:
    if not suites:
        return "<h3>Regression suites</h3><p>None registered.</p>"
    rows = []
    for suite in suites:
        history = "; ".join(f'{e(version_label(h.get("model_version")))} {_suite_number(h)} '
                            f'{"pass" if h.get("passed") else "FAIL"}' for h in suite["history"]) or "no results yet"
        rows.append(f'<tr><td>{e(suite["name"])}</td><td>{e(suite.get("type"))}</td><td>{history}</td></tr>')
    return ("<h3>Regression suites (newest first)</h3><table><tr><th>suite</th><th>type</th><th>history</th></tr>"
            + "".join(rows) + "</table>")


def _suite_number(result: Mapping[str, Any]) -> str:
    if result.get("metric") is None:
        return f'WER {number(result.get("wer"))}'
    return f'{e(result["metric"])} {number(result.get("score"))}'


def costs_section(costs: Mapping[str, Any]) -> str:
    budget = (f' of the ${number(costs["monthly_budget_usd"], 2)} monthly budget'
              if costs.get("monthly_budget_usd") is not None else " (no monthly budget)")
    unknown = f', {costs["unknown_cost_runs"]} run(s) of unknown cost' if costs.get("unknown_cost_runs") else ""
    cap = f'; at most ${number(costs["max_run_usd"], 2)} a run' if costs.get("max_run_usd") is not None else ""
    roi = costs.get("latest_roi") or {}
    roi_text = (f'<p>Latest ROI: {e(json.dumps({k: roi[k] for k in sorted(roi)[:8]}))}</p>' if roi else "")
    return (f'<h3>Costs</h3><p>Training this month: ${number(costs["this_month_usd"], 2)}{budget}{unknown}{cap} '
            f'({costs["trained_runs"]} run(s)).</p>{roi_text}')


def comparison_page(comparison: Mapping[str, Any]) -> str:
    """Two versions side by side: metrics (a table and bars), per-slice bars, the churn, and where they come from."""
    a, b = version_label(comparison["a"]), version_label(comparison["b"])
    rows = "".join(f'<tr><td>{e(m["name"])}</td><td>{number(m["a"])}</td><td>{number(m["b"])}</td>'
                   f'<td>{"lower" if m["lower_is_better"] else "higher"} is better</td><td>{_interval(m)}</td>'
                   f'<td>{number(m.get("p_value"), 4)}</td></tr>' for m in comparison["metrics"])
    churn = comparison.get("churn")
    churn_text = ("<h3>Churn from {} to {}</h3><p>{}</p>".format(
        e(version_label(churn["from"])), e(version_label(churn["to"])),
        ", ".join(f"{e(k.replace('_', ' '))} {number(v)}" for k, v in churn["counts"].items()))
        if churn else "<p class=muted>No churn: no run compared these two versions on the same examples.</p>")
    body = (f'<p><a href="./">← tuneloop</a></p><h1>{e(comparison["model"])}: {e(a)} and {e(b)}</h1>'
            f'<p class=muted>{e(comparison["note"])}</p>'
            f"<h3>Metrics</h3><table class=comparison><tr><th>metric</th><th>{e(a)}</th><th>{e(b)}</th><th></th>"
            f"<th>interval of the change</th><th>p</th></tr>{rows}</table>"
            + bar_chart([(m["name"], m["a"], m["b"]) for m in comparison["metrics"]], a, b, "metrics-chart")
            + (("<h3>Per slice (" + e(comparison.get("primary")) + ")</h3>"
                + bar_chart([(s["name"], s["a"], s["b"]) for s in comparison["slices"]], a, b, "slices-chart"))
               if comparison["slices"] else "")
            + churn_text)
    return page(f"tuneloop: {comparison['model']} {a} vs {b}", body)


def bar_chart(groups: Sequence[tuple[str, Any, Any]], label_a: str, label_b: str, css_class: str,
              width: int = 640) -> str:
    """Horizontal bars, two per group (``a`` grey, ``b`` blue), scaled to the largest value shown."""
    shown = [(name, va, vb) for name, va, vb in groups if _finite(va) or _finite(vb)]
    if not shown:
        return ""
    scale = max(abs(v) for _, va, vb in shown for v in (va, vb) if _finite(v)) or 1.0
    row_h, label_w = 34, 170
    height = row_h * len(shown) + 24
    bars = []
    for i, (name, va, vb) in enumerate(shown):
        y = 20 + i * row_h
        bars.append(f'<text x="0" y="{y + 12}" font-size="11">{e(name)}</text>')
        for j, (value, colour, label) in enumerate(((va, "#9e9e9e", label_a), (vb, "#1565c0", label_b))):
            if _finite(value):
                w = (width - label_w - 70) * abs(value) / scale
                bars.append(f'<rect x="{label_w}" y="{y + j * 14}" width="{w:.1f}" height="12" fill="{colour}">'
                            f"<title>{e(label)} {e(name)} {number(value)}</title></rect>"
                            f'<text x="{label_w + w + 4:.1f}" y="{y + j * 14 + 10}" font-size="10">'
                            f"{number(value)}</text>")
    key = (f'<text x="{label_w}" y="12" font-size="11"><tspan fill="#9e9e9e">■ {e(label_a)}</tspan> '
           f'<tspan fill="#1565c0">■ {e(label_b)}</tspan></text>')
    return (f'<svg class="{css_class}" role="img" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">{key}{"".join(bars)}</svg>')


def decision_page(model: str, run_id: str, markdown: str) -> str:
    return page(f"tuneloop: {model} {run_id}", f'<p><a href="./">← tuneloop</a></p><h1>{e(model)}: decision '
                f"record of {e(run_id)}</h1><pre class=record>{e(markdown)}</pre>")


ROLLBACK_SCRIPT = """<script>
for (const form of document.querySelectorAll("form.rollback")) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const answer = form.querySelector(".answer"), button = form.querySelector("button");
    button.disabled = true;  // one click, one rollback (the server also refuses a second: production moved)
    const reply = await fetch("api/rollback", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({model: form.dataset.model, reason: form.reason.value,
                            production: form.dataset.production || null, canary: form.dataset.canary || null})});
    const data = await reply.json();
    answer.textContent = reply.ok ? " " + data.message : " refused: " + JSON.stringify(data.detail || reply.status);
    setTimeout(() => location.reload(), reply.ok ? 1500 : 5000);
  });
}
</script>"""
