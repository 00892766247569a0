"""The page's HTML: whatever text the store holds (reasons, run ids, actors, slice names, suite names are user
data), it is shown as text, never as markup: a property test over the whole page and the comparison page."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tuneloop import dashboard

TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "section", "span", "a", "table", "tr",
        "th", "td", "b", "p", "div", "form", "label", "input", "button", "ul", "li", "details", "summary", "svg",
        "text", "tspan", "polyline", "circle", "line", "rect", "select", "option", "pre", "code", "script",
        "progress"}


class Elements(HTMLParser):
    """Every element's tag and attribute names, and the text of every <script>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: set[str] = set()
        self.scripts: list[str] = []
        self.links: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes |= {name for name, _ in attrs}
        self.links += [value or "" for name, value in attrs if name in ("href", "src", "action")]
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)


def elements(html: str) -> Elements:
    parsed = Elements()
    parsed.feed(html)
    return parsed


def status(text: str, number: float) -> dict[str, Any]:
    """A status whose every free-text field is ``text`` (and every number ``number``)."""
    board = {"n": 10, "verdict": "pass", "primary": "wer",
             "metrics": [{"name": "wer", "baseline": number, "candidate": number / 2, "lower_is_better": True,
                          "ci_low": 0.01, "ci_high": 0.2, "p_value": 0.01}],
             "slices": [{"name": text, "n": 5, "baseline": number, "candidate": 0.1, "gated": True, "passed": False}],
             "churn": {text: 3}, "reasons": [text]}
    move = {"action": "deploy", "at": "2026-01-01T00:00:00+00:00", "actor": text, "reason": text, "run_id": text,
            "from_version": "1", "to_version": "2"}
    return {
        "model": {"name": text, "task": "speech_to_text", "dag_id": f"finetune_weekly_{text}",
                  "production_version": "2", "previous_version": "1", "production_since": move,
                  "canary": {"version": text, "traffic_percent": 10.0, "since": "2026-01-01T00:00:00", "by": text},
                  "versions": [{"role": "production", "version": "2", "label": "v2", "run_id": text,
                                "status": "deployed", "metrics": {text: number}, "primary": "wer", "moved": move}]},
        "cases": {"total_cases": 3, "new_corrected_cases": 2},
        "trigger": {"should_trigger": True, "approval_required": True, "reasons": [text],
                    "next_scheduled_run": {"error": text},
                    "conditions": [{"name": text, "value": number, "threshold": 1.0, "met": False, "detail": text}]},
        "in_progress": [{"run_id": text, "started_at": "2026-01-01T00:00:00", "steps": [text],
                         "progress": {"step": 5, "total": 10, "fraction": 0.5, "eta_seconds": number}}],
        "trend": {"metric": "wer", "rollbacks": [{"from_version": "2", "to_version": "1", "at": "2026-01-02",
                                                  "actor": text, "reason": text}],
                  "points": [{"version": v, "run_id": text, "status": text, "at": "2026-01-01", "metric": "wer",
                              "lower_is_better": True, "candidate": {"wer": number}, "baseline": {"wer": 0.5},
                              "rolled_back_by_hand": True} for v in ("2", "3")]},
        "decisions": [{"run_id": text, "status": text, "finished_at": "2026-01-01T00:00:00", "candidate_version": text,
                       "lines": [text], "scoreboard": board, "mlflow_run": {"url": text}, "record": text}],
        "regression_suites": [{"name": text, "type": text, "history": [{"model_version": text, "wer": number,
                                                                        "passed": False}]}],
        "costs": {"this_month_usd": number, "monthly_budget_usd": number, "unknown_cost_runs": 1, "max_run_usd": 3.0,
                  "trained_runs": 2, "latest_roi": {text: text}},
    }


texts = st.text(min_size=1, max_size=40) | st.sampled_from(
    ['<script>alert(1)</script>', '"><img src=x onerror=alert(1)>', "' onmouseover='x", "</textarea>&amp;",
     "javascript:alert(1)", "<!--", "]]>", "\u202e", "x\ny"])
numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**12, 10**12).map(float)


@settings(max_examples=150, deadline=None)
@given(text=texts, number=numbers)
def test_user_text_is_always_text_never_markup(text: str, number: float) -> None:
    name = "m"
    page = dashboard.status_page({name: status(text, number), "broken": {"error": text}}, can_roll_back={name: True})
    found = elements(page)
    assert set(found.tags) <= TAGS
    assert not [link for link in found.links if link.strip().lower().startswith(("javascript:", "data:"))]
    assert found.tags.count("script") == 1 and found.scripts == [dashboard.ROLLBACK_SCRIPT[8:-9]]
    assert not {a for a in found.attributes if a.startswith("on")}
    comparison = {"model": text, "a": text, "b": "2", "note": text, "primary": text, "direct": True,
                  "metrics": [{"name": text, "a": number, "b": 0.5, "lower_is_better": False, "p_value": number}],
                  "slices": [{"name": text, "a": number, "b": 1.0}],
                  "churn": {"from": text, "to": "2", "counts": {text: 1}}}
    compared = elements(dashboard.comparison_page(comparison))
    assert set(compared.tags) <= TAGS and "script" not in compared.tags
    assert not {a for a in compared.attributes if a.startswith("on")}
    record = elements(dashboard.decision_page(text, text, text))
    assert set(record.tags) <= TAGS and "script" not in record.tags


def test_a_long_reason_is_cut_with_the_whole_of_it_on_hover() -> None:
    reason = "14 paired eval utterances; " * 20
    shown = dashboard.shortened(reason)
    assert shown.startswith(f'<span title="{reason}">') and shown.endswith("…</span>") and len(shown) < 2 * len(reason)
    assert dashboard.shortened("short") == "short"


def test_numbers_that_are_not_finite_show_as_a_dash() -> None:
    assert [dashboard.number(v) for v in (None, float("nan"), float("inf"), 0.12345, 7)] == ["–", "–", "–", "0.123",
                                                                                              "7"]


def test_with_a_canary_the_button_ends_the_canary_and_says_so() -> None:
    running = status("x", 0.5)
    html = dashboard.status_page({"m": running}, can_roll_back={"m": True})
    assert 'End the canary vx (all traffic back to production v2), because:' in html
    assert 'data-production="2" data-canary="x"' in html
    running["model"]["canary"] = None
    html = dashboard.status_page({"m": running}, can_roll_back={"m": True})
    assert "Roll back production v2 to v1, because:" in html and 'data-canary=""' in html
    assert "Roll back" not in dashboard.status_page({"m": running}, can_roll_back={"m": False})
