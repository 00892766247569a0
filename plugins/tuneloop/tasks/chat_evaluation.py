"""Judging a chat candidate: the text gate on paired eval replies, the served model's smoke check, the record.

The chat task's half that runs after training (:class:`tuneloop.tasks.chat.ChatTask` delegates here): each eval
reply is scored per example (:mod:`tuneloop.text_metrics`: exact match, contains, token F1, JSON validity and
field match when ``validation.text.structured``), the two models' scores are paired by example id and the text
gate (:mod:`tuneloop.text_gate`) decides with McNemar's exact test or the paired bootstrap. Regression suites
(fixed prompts with references) are judged by the same primary metric against their baselines
(:mod:`tuneloop.tasks.chat_suites`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop import storage
from tuneloop.tasks.speech_to_text import numbers

if TYPE_CHECKING:
    from tuneloop.config import TextValidationConfig, TuneloopConfig
    from tuneloop.pipeline import PipelineRun
    from tuneloop.predictions import PairedPrediction, Prediction
    from tuneloop.text_metrics import TextScores

log = logging.getLogger(__name__)

# Served and batch-evaluated replies come from the same greedy decoding but different batches and padding; the
# served score may trail the validated one by this much before the check fails.
SERVED_SCORE_TOLERANCE = 0.05


def validate(run: PipelineRun) -> dict[str, Any]:
    """The text gate on the eval split; writes gate.json and churn.jsonl (examples whose score changed)."""
    from tuneloop.predictions import pair_predictions, read_predictions
    from tuneloop.text_gate import TextGateConfig, TextPair, text_gate

    production = read_predictions(run.paths.predictions("production"))
    candidate = read_predictions(run.paths.predictions("candidate"))
    paired = pair_predictions(production, candidate)
    text = run.config.validation.text
    # each model's own row: generated tokens and latency are the model's, not shared like the slice fields
    own = {p.id: p for p in production}, {p.id: p for p in candidate}
    pairs = [TextPair(p.id, score(own[0][p.id], text), score(own[1][p.id], text)) for p in paired]
    outcome = text_gate(pairs, TextGateConfig.from_validation(run.config.validation), [p.slices for p in paired])
    first_run = run.base_model_source()["source"] != "production"
    result = outcome.to_dict() | {"requires_approval": first_run and outcome.passed, "first_run": first_run,
                                  "p_value": outcome.p_value}
    if text.judge.enabled:
        result = _with_judge(run, paired, result)
        result["requires_approval"] = first_run and result["passed"]
    if first_run and result["passed"]:
        result["reasons"] = [*result["reasons"], "first run: compared with the base model it started from, so a "
                             "person approves the deployment (validation.first_run_policy=require_approval)"]
    storage.write_json(run.paths.gate, result)
    with storage.staged_output(run.paths.churn) as churn:
        write_churn(churn, paired, pairs, text.primary_metric)
    return result


def _with_judge(run: PipelineRun, paired: list[PairedPrediction], result: dict[str, Any]) -> dict[str, Any]:
    """The pairwise judge's verdict (:mod:`tuneloop.judge`) added to the gate's record; with ``judge.gating`` a
    candidate the judge does not prefer significantly (sign test on wins vs losses) fails."""
    from tuneloop.judge import JudgeExample, run_judge

    judge = run.config.validation.text.judge
    conversations = {row["id"]: row["messages"][:-1] for row in storage.read_jsonl(_eval_split(run))}
    examples = [JudgeExample(id=p.id, messages=tuple(conversations[p.id]), reference=p.reference,
                             production=p.baseline_hypothesis, candidate=p.candidate_hypothesis) for p in paired]
    verdict = run_judge(judge, examples, alpha=run.config.validation.significance_alpha)
    result = {**result, "judge": verdict.to_dict()}
    if judge.gating and not verdict.significant:
        if result["passed"]:
            result.update(passed=False, verdict="fail", reasons=[])
        result["reasons"] = [*result["reasons"], f"judge: {verdict.summary()} (validation.text.judge.gating)"]
    else:
        result["reasons"] = [*result["reasons"], f"judge: {verdict.summary()}"]
    return result


def _eval_split(run: PipelineRun) -> Any:
    """The eval split this run was evaluated on: the training spec names its dataset."""
    spec = storage.read_json(run.paths.spec)
    return storage.storage_root(spec["dataset_uri"], Path(spec["dataset_uri"]), run.config.storage_conn_id) / \
        "eval.jsonl"


def score(prediction: Prediction, text: TextValidationConfig) -> TextScores:
    """Every score of one reply against its reference (the ideal response)."""
    from tuneloop.text_metrics import score_example

    tokens = prediction.slices.get("generated_tokens")
    return score_example(
        prediction.hypothesis, prediction.reference, structured=text.structured,
        json_reference=prediction.reference if text.structured else None, json_fields=text.json_fields,
        generated_tokens=tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None,
        latency_s=None if prediction.latency_ms is None else prediction.latency_ms / 1000)


def write_churn(path: Path, paired: list[PairedPrediction], pairs: list[Any], metric: str) -> Path:
    """One JSON row per example whose primary score changed: what production and the candidate replied."""
    with path.open("w", encoding="utf-8") as handle:
        for prediction, pair in zip(paired, pairs, strict=True):
            before, after = pair.baseline.value(metric), pair.candidate.value(metric)
            if before == after:
                continue
            kind = ("fixed" if after == 1 and before == 0 else "newly_broken" if before == 1 and after == 0
                    else "improved" if after > before else "worsened")
            handle.write(json.dumps({"id": prediction.id, "kind": kind, "metric": metric, "production": before,
                                     "candidate": after, "reference": prediction.reference,
                                     "production_reply": prediction.baseline_hypothesis,
                                     "candidate_reply": prediction.candidate_hypothesis}) + "\n")
    return path


def regression(run: PipelineRun) -> dict[str, Any]:
    """Each suite's primary-metric mean against its baseline (recorded, or production's in this run)
    (:func:`tuneloop.tasks.chat_suites.run_chat_suite`). A suite registered with a WER baseline or cap (through
    the store's API, which does not know the model's task) fails the run naming the field."""
    from tuneloop.predictions import read_predictions
    from tuneloop.regression import run_suites
    from tuneloop.tasks.chat_suites import run_chat_suite, suite_scores

    source = run.base_model_source()
    production_version = source.get("version") if source["source"] == "production" else None
    text = run.config.validation.text
    results = []
    for spec in run.suites():
        problem = spec.task_problem("chat")
        if problem:
            raise ValueError(f"regression suite {spec.name!r} of chat model {run.config.name!r}: {problem}")
        if not run.paths.predictions("candidate", spec.name).exists():
            log.warning("suite %s was registered after this run's evaluation: not judged in this run", spec.name)
            continue
        production = (read_predictions(run.paths.predictions("production", spec.name)) if production_version
                      else None)
        scores = suite_scores(read_predictions(run.paths.predictions("candidate", spec.name)), production, text)
        results.append(run_chat_suite(spec, scores, run.config.regression, right_threshold=text.right_threshold,
                                      production_version=production_version))
    return run_suites(results).to_dict()


def suite_metrics(report: dict[str, Any]) -> dict[str, float]:
    """``suite.<name>.<metric>`` (the candidate's mean), ``.score_drop`` and ``.failed_samples_rate``."""
    return {f"suite.{r['name']}.{key if key != 'score' else r['metric']}": float(r[key]) for r in report["results"]
            for key in ("score", "score_drop", "failed_samples_rate")}


def post_deploy_check(run: PipelineRun, dataset_id: str, deployed_version: str,
                      alias: str = "production") -> dict[str, Any]:
    """Send the first ``post_deploy_smoke_size`` eval conversations through ``models:/<name>@<alias>`` (the
    generic pyfunc loader, as serving does; green or canary for a staged rollout) and judge the replies as the
    gate did."""
    config = run.config
    served_version = run.registry.alias_version(alias)
    if served_version != deployed_version:
        return _check(False, None, None, 0, 0, [f"the {alias} alias points to version {served_version}, not to "
                                                f"the deployed {deployed_version}"])
    rows = storage.read_jsonl(run.dataset_dir(dataset_id) / "eval.jsonl")[: config.deployment.post_deploy_smoke_size]
    expected = {r["id"]: r for r in storage.read_jsonl(run.paths.predictions("candidate"))}
    uri = f"models:/{config.mlflow.model_name}@{alias}"
    try:
        model = run.registry.load_pyfunc(alias, run.served_model_config())  # as serving loads it
        served = [str(reply) for reply in model.predict([row["messages"][:-1] for row in rows],
                                                        params=run.served_params())]
    except Exception as error:  # a model that cannot load or reply is the clearest failure of all
        return _check(False, None, None, len(rows), len(rows), [f"{uri} failed to serve: {error}"])
    references = [row["messages"][-1]["content"] for row in rows]
    served_score = _mean_score(config, served, references)
    validated_score = _mean_score(config, [expected[r["id"]]["hypothesis"] for r in rows], references)
    mismatched = sum(reply != expected[r["id"]]["hypothesis"] for reply, r in zip(served, rows, strict=True))
    return _judge(config, served_score, validated_score, len(rows), mismatched)


def _mean_score(config: TuneloopConfig, replies: list[str], references: list[str]) -> float:
    from tuneloop.predictions import Prediction

    text = config.validation.text
    scores = [score(Prediction(str(i), ref, reply), text).value(text.primary_metric)
              for i, (reply, ref) in enumerate(zip(replies, references, strict=True))]
    return sum(scores) / len(scores) if scores else 0.0


def _judge(config: TuneloopConfig, served: float, validated: float, n: int, mismatched: int) -> dict[str, Any]:
    metric, threshold = config.validation.text.primary_metric, config.deployment.rollback_on_error_threshold
    reasons = [f"served model {metric} {served:.3f} on {n} smoke conversations (validated candidate: "
               f"{validated:.3f})"]
    passed = True
    if 1 - served > threshold:
        passed = False
        reasons.append(f"served error rate (1 - {metric}) {1 - served:.3f} > rollback_on_error_threshold {threshold}")
    if served < validated - SERVED_SCORE_TOLERANCE:
        passed = False
        reasons.append(f"served {metric} trails the validated candidate's by more than {SERVED_SCORE_TOLERANCE}")
    if mismatched:
        reasons.append(f"{mismatched}/{n} replies differ from batch evaluation's (padding and batching)")
    return _check(passed, served, validated, n, mismatched, reasons)


def _check(passed: bool, served: float | None, validated: float | None, n: int, mismatched: int,
           reasons: list[str]) -> dict[str, Any]:
    return {"passed": passed, "served_score": served, "validated_score": validated, "n": n,
            "mismatched": mismatched, "reasons": reasons}


def headline(gate_result: dict[str, Any]) -> str:
    p = gate_result.get("p_value")
    return (f"{gate_result['metric']} {gate_result['baseline_mean']:.3f} → {gate_result['candidate_mean']:.3f} "
            f"({gate_result['improvement']:+.3f}, {gate_result['significance_test']} p "
            f"{'n/a' if p is None else f'{p:.3g}'}) on {gate_result['n']} eval conversations")


def flat_metrics(gate_result: dict[str, Any]) -> dict[str, float]:
    """``baseline_<metric>``, ``candidate_<metric>``, ``<metric>_improvement``, ``<metric>_p_value``, the bootstrap
    interval, newly broken/fixed counts, and the secondary scores per model."""
    metric = gate_result.get("metric", "score")
    boot = gate_result.get("bootstrap") or {}
    flat: dict[str, Any] = {
        "gate_n": gate_result.get("n"), f"baseline_{metric}": gate_result.get("baseline_mean"),
        f"candidate_{metric}": gate_result.get("candidate_mean"), f"{metric}_improvement": gate_result.get(
            "improvement"), f"{metric}_p_value": gate_result.get("p_value"), f"{metric}_ci_low": boot.get("ci_low"),
        f"{metric}_ci_high": boot.get("ci_high"), "newly_broken": gate_result.get("newly_broken"),
        "newly_fixed": gate_result.get("newly_fixed")}
    for name, means in (gate_result.get("secondary") or {}).items():  # {metric: {baseline: x, candidate: y}}
        for model, value in means.items():
            flat[f"{model}_{name}"] = value
    return numbers(flat)


LOWER_IS_BETTER = frozenset({"generated_tokens", "latency_s"})  # secondary numbers that are costs, not scores


def scoreboard(gate_result: dict[str, Any]) -> dict[str, Any]:
    """The primary metric (higher is better: every chat metric here is a score) with its interval and the gating
    test's p-value, the secondary scores' means, the slices and the churn (fixed / newly broken / better / worse)."""
    from tuneloop.tasks import scoreboard

    name = gate_result.get("metric", "score")
    boot = gate_result.get("bootstrap") or {}
    metrics = [{"name": name, "baseline": gate_result.get("baseline_mean"),
                "candidate": gate_result.get("candidate_mean"), "lower_is_better": False,
                "ci_low": boot.get("ci_low"), "ci_high": boot.get("ci_high"), "p_value": _gating_p(gate_result)}]
    for other, means in sorted((gate_result.get("secondary") or {}).items()):
        if other != name and {"baseline", "candidate"} <= set(means):
            metrics.append({"name": other, "baseline": means["baseline"], "candidate": means["candidate"],
                            "lower_is_better": other in LOWER_IS_BETTER, "ci_low": None, "ci_high": None,
                            "p_value": None})
    slices = [{"name": f"{s['field']}={s['value']}", "n": s["n"], "baseline": s["baseline_mean"],
               "candidate": s["candidate_mean"], "gated": s["gated"], "passed": s["passed"]}
              for s in gate_result.get("slices") or []]
    churn = {"fixed": gate_result.get("newly_fixed"), "newly_broken": gate_result.get("newly_broken"),
             "better": gate_result.get("improved_count"), "worse": gate_result.get("degraded_count"),
             "n": gate_result.get("n")}
    return scoreboard(n=gate_result.get("n", 0), verdict=gate_result.get("verdict", ""), primary=name,
                      metrics=metrics, slices=slices, churn={k: v for k, v in churn.items() if v is not None},
                      reasons=list(gate_result.get("reasons") or []))


def _gating_p(gate_result: dict[str, Any]) -> float | None:
    """The gating test's p-value: as the validate step stored it, else read from that test's own result."""
    if gate_result.get("p_value") is not None:
        return gate_result["p_value"]
    test = gate_result.get(gate_result.get("significance_test") or "") or {}
    return test.get("p_value") if isinstance(test, dict) else None


def record_sections(record: dict[str, Any]) -> list[str]:
    """decision.md for a chat model: the primary metric with its test, the secondary scores per model, churn and
    the regression suites."""
    from tuneloop.report import table

    gate = record.get("gate") or {}
    if "metric" not in gate:
        return _suite_sections(record)
    boot = gate.get("bootstrap") or {}
    rows = [[gate["metric"], gate["baseline_mean"], gate["candidate_mean"], gate["improvement"],
             f"[{boot.get('ci_low')}, {boot.get('ci_high')}]", gate.get("significance_test"), gate.get("p_value")]]
    parts = ["", "## Metrics (eval split)", "",
             table(["metric", "production", "candidate", "improvement", "CI", "test", "p (one-sided)"], rows)]
    secondary = gate.get("secondary") or {}  # {metric: {baseline: mean, candidate: mean}}
    if secondary:
        parts += ["", "## Other scores (reported, not gated)", "",
                  table(["score", "production", "candidate"], [[name, means.get("baseline"), means.get("candidate")]
                                                               for name, means in secondary.items()])]
    parts += ["", "## Churn", "", table(["kind", "count"], [["fixed", gate.get("newly_fixed")],
                                                          ["newly broken", gate.get("newly_broken")],
                                                          ["improved", gate.get("improved_count")],
                                                          ["worsened", gate.get("degraded_count")]])]
    return parts + _suite_sections(record)


def _suite_sections(record: dict[str, Any]) -> list[str]:
    from tuneloop.report import table

    suites = (record.get("regression") or {}).get("results") or []
    if not suites:
        return []
    return ["", "## Regression suites", "", table(
        ["suite", "type", "n", "metric", "baseline", "candidate", "change (absolute)", "failed samples", "result"],
        [[r["name"], r["type"], r["n"], r["metric"], r["baseline_score"], r["score"], 0.0 - r["score_drop"],
          r["failed_samples"], "pass" if r["passed"] else ("FAIL" if r["blocking"] else "fail (report only)")]
         for r in suites])]

