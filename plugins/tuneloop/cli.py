"""``tuneloop`` — the command line: ingest error cases, see the loop's state, roll back, run the demo.

    tuneloop ingest FILE.jsonl          store error cases (bad rows reported with reasons, valid rows kept)
    (with several models configured, every command but status takes --model NAME; status shows them all)
    tuneloop status [--json]            cases, trigger conditions, production model, last decisions
    tuneloop history [--limit N]        deployment history: who, when, action, from -> to, why
    tuneloop runs [--limit N] [--json]  fine-tuning runs, their state, and a running one's deadline
    tuneloop runs --fail RUN_ID --reason TEXT   end a run stuck as running (cases stay new; kept in history)
    tuneloop rollback [--to VERSION] [--reason TEXT]
    tuneloop bootstrap MODEL_DIR        register an existing model as the first production version
    tuneloop suite add NAME DATA.jsonl [--type critical] [--baseline-wer X --baseline-version V]
                                        (chat model: [--baseline-score X --baseline-version V] [--max-score-drop D])
    tuneloop suite list [--json]        regression suites (config and registered) and their latest results
    tuneloop serve [--port 8080]        serve production (and a running canary) over HTTP, recording each request
    tuneloop demo [--bad-candidate]     the end-to-end demo on CPU (--llm: the chat model's)
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

from tuneloop.config import ConfigError, TuneloopConfig, load_config
from tuneloop.history import version_label
from tuneloop.overview import collect_costs, collect_status, suite_status


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = _model_config(load_config(args.config), args)
        return args.handler(config, args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"tuneloop {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # typed domain errors (registry, deployment, store, dataset) carry their reason
        if type(e).__module__.startswith("tuneloop."):
            print(f"tuneloop {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise


ALL_MODELS_COMMANDS = ("status", "costs", "demo")  # these work on the whole installation when no --model is given


def _model_config(config: TuneloopConfig, args: argparse.Namespace) -> TuneloopConfig:
    """The configuration the command works on: the named model's, the only model's, or (status) the whole."""
    if args.model:
        return config.for_model(args.model)
    if not config.several_models or args.command in ALL_MODELS_COMMANDS:
        return config
    raise ConfigError(f"several models are configured ({', '.join(config.model_names)}): name one with --model")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneloop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="tuneloop.yaml (default: $TUNELOOP_CONFIG or include/config/tuneloop.yaml)")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", help="which configured model (models: in the config); needed when there are "
                       "several, except for status")
    sub = parser.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", parents=[model], help="store error cases from a JSONL file")
    ingest.add_argument("file", type=Path)
    ingest.add_argument("--source", help="source label for these cases (default: the file name)")
    ingest.set_defaults(handler=cmd_ingest)

    status = sub.add_parser("status", parents=[model],
                            help="cases, trigger conditions, production model, last decisions")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--registry", action="store_true",
                        help="also read the MLflow registry: its aliases (flagged if they differ from tuneloop's "
                             "history) and the production version's tags (slower: imports MLflow)")
    status.set_defaults(handler=cmd_status)

    history = sub.add_parser("history", parents=[model], help="deployment history")
    history.add_argument("--limit", type=int, default=20)
    history.add_argument("--json", action="store_true")
    history.set_defaults(handler=cmd_history)

    runs = sub.add_parser("runs", parents=[model],
                          help="fine-tuning runs and their state; --fail ends a stuck one by hand")
    runs.add_argument("--limit", type=int, default=20)
    runs.add_argument("--json", action="store_true")
    runs.add_argument("--fail", metavar="RUN_ID", help="end this running run as failed (needs --reason)")
    runs.add_argument("--reason", help="why the run is ended by hand (kept in the run and the history)")
    runs.set_defaults(handler=cmd_runs)

    costs = sub.add_parser("costs", parents=[model],
                           help="what each run's training cost, per month against the budget, and ROI")
    costs.add_argument("--months", type=int, default=12, help="how many calendar months back (default 12)")
    costs.add_argument("--json", action="store_true")
    costs.set_defaults(handler=cmd_costs)

    rollback = sub.add_parser("rollback", parents=[model], help="put a previous model version back into production")
    rollback.add_argument("--to", dest="to_version", help="version to restore (default: the 'previous' alias)")
    rollback.add_argument("--reason", default="manual rollback from the CLI")
    rollback.set_defaults(handler=cmd_rollback)

    bootstrap = sub.add_parser("bootstrap", parents=[model],
                               help="register an existing HF model dir (or an OpenAI or Vertex AI model) as the first "
                                    "production model")
    bootstrap.add_argument("model_dir", type=Path, nargs="?")
    bootstrap.add_argument("--openai-model", metavar="ID", help="chat models: an OpenAI model id (a base model or "
                           "one fine-tuned earlier) served through the API, instead of a model directory")
    bootstrap.add_argument("--vertex-model", metavar="NAME", help="chat models: a Gemini model on Vertex AI "
                           "(gemini-2.5-flash), served through the API, instead of a model directory")
    bootstrap.add_argument("--reason", default="initial production model")
    bootstrap.set_defaults(handler=cmd_bootstrap)

    suite = sub.add_parser("suite", help="regression suites: register one, list them with their latest results")
    suite_sub = suite.add_subparsers(dest="suite_command", required=True)
    add = suite_sub.add_parser("add", parents=[model], help="register (or replace) a regression suite")
    add.add_argument("name")
    add.add_argument("data_path", type=Path, help="JSONL rows {id, audio, text, ...}; audio relative to the file "
                     "(chat model: {id, messages}, the last message the assistant's reference reply)")
    add.add_argument("--type", default="benchmark", choices=["benchmark", "critical", "smoke"])
    add.add_argument("--baseline-wer", type=float)
    add.add_argument("--baseline-cer", type=float)
    add.add_argument("--baseline-version")
    add.add_argument("--max-wer-degradation", type=float)
    add.add_argument("--baseline-score", type=float, help="chat model: recorded mean of validation.text."
                     "primary_metric on the suite")
    add.add_argument("--max-score-drop", type=float, help="chat model: allowed fall of that mean (absolute, "
                     "default 0.05)")
    add.set_defaults(handler=cmd_suite_add)
    listing = suite_sub.add_parser("list", parents=[model], help="suites and their result history")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_suite_list)

    serve = sub.add_parser("serve", parents=[model],
                           help="serve the production model and a running canary over HTTP (POST /predict, "
                                "POST /outcome, GET /healthz), recording every request in the store")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--refresh-seconds", type=float, default=10.0,
                       help="how often the registry's aliases are read again (a moved alias is served after this)")
    serve.set_defaults(handler=cmd_serve)

    demo = sub.add_parser("demo", help="run the end-to-end demo (speech data, baseline, Airflow run)")
    demo.set_defaults(model=None)
    demo.add_argument("--llm", action="store_true",
                      help="the chat demo instead: a tiny causal LM answering questions about nicknames")
    demo.add_argument("--bad-candidate", action="store_true",
                      help="train on shuffled transcripts (--llm: replies): the gate must reject it and production "
                           "stay put")
    demo.add_argument("--workdir", type=Path, help="demo state folder (default: <repo>/.demo)")
    demo.add_argument("--strategy", choices=("replace", "blue_green", "canary"), default="replace",
                      help="how the candidate reaches production (speech demo); canary: tuneloop serve answers "
                           "simulated users and the online test decides on their corrections")
    demo.set_defaults(handler=cmd_demo)
    return parser


def cmd_ingest(config: TuneloopConfig, args: argparse.Namespace) -> int:
    from tuneloop.store import ErrorCaseStore

    report = ErrorCaseStore.from_config(config).ingest_jsonl(args.file, source=args.source)
    data = report.to_dict()
    print(f"{args.file}: {len(data['accepted'])} accepted, {len(data['duplicates'])} duplicates, "
          f"{len(data['rejected'])} rejected")
    for row in data["rejected"]:
        print(f"  line {row['line']}: {row['field']}: {row['reason']}")
    return 0 if not data["rejected"] else 1


def cmd_status(config: TuneloopConfig, args: argparse.Namespace) -> int:
    if config.several_models:
        statuses = {model.name: collect_status(model, registry=args.registry) for model in config.each_model()}
        if args.json:
            print(json.dumps({"models": statuses}, indent=2, default=str))
            return 0
        for name, status in statuses.items():
            print(f"== model {name} ({config.for_model(name).task})")
            _print_status(status)
        return 0
    status = collect_status(config, registry=args.registry)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return 0
    _print_status(status)
    return 0


def _print_status(status: dict[str, Any]) -> None:
    cases = status["cases"]
    print(f"error cases: {cases['total_cases']} total, by state {cases['by_state']}, "
          f"corrected {cases['corrected_cases']} ({cases['new_corrected_cases']} new); "
          f"{cases['rejected_rows']} rejected rows; {cases['inferences_total']} inferences recorded")
    trig = status["trigger"]
    starts = "WOULD START" + (" (then waits for approval in Airflow)" if trig["approval_required"] else "")
    print(f"trigger: {starts if trig['should_trigger'] else 'waiting'}")
    for reason in trig["reasons"]:
        print(f"  - {reason}")
    _print_model(status["model"])
    costs = status["costs"]
    budget = (f" of ${costs['monthly_budget_usd']:,.2f} budget" if costs["monthly_budget_usd"] is not None
              else " (no monthly budget)")
    unknown = f", {costs['unknown_cost_runs']} run(s) of unknown cost" if costs["unknown_cost_runs"] else ""
    print(f"costs this month: ${costs['this_month_usd']:,.2f}{budget}{unknown}")
    print("regression suites:")
    if not status["regression_suites"]:
        print("  (none registered)")
    for suite in status["regression_suites"]:
        latest = suite["history"][:3]
        shown = "; ".join(f"{version_label(h['model_version'])} {_suite_number(h)} {'pass' if h['passed'] else 'FAIL'}"
                          for h in latest) or "no results yet"
        print(f"  {suite['name']} ({suite.get('type', '')}): {shown}")
    print("last runs:")
    for run in status["last_runs"] or [{"run_id": "(none yet)"}]:
        print(f"  {run.get('run_id')}  {run.get('status', '')}  {run.get('finished_at') or ''}")


def _print_model(model: dict[str, Any]) -> None:
    print(f"model {model['name']}: production {version_label(model['production_version'])} "
          f"(previous {version_label(model['previous_version'])})")
    since = model["production_since"]
    if since:
        print(f"  since {since['at'][:19].replace('T', ' ')} UTC, {since['action']} by {since['actor']}: "
              f"{_first_line(since['reason'])}")
    canary = model.get("canary")
    if canary:
        print(f"  canary {version_label(canary['version'])} answers {canary['traffic_percent']:g}% of the requests "
              f"since {canary['since'][:19].replace('T', ' ')} UTC (its online test decides; tuneloop rollback "
              "ends it)")
    registry = model.get("registry")
    if registry is None:
        return
    if not registry["agrees_with_history"]:
        print(f"  WARNING: the MLflow registry says production {version_label(registry['production_version'])} "
              f"(previous {version_label(registry['previous_version'])}): an alias was moved outside tuneloop")
    tags = registry["production_tags"]
    for key in sorted(k for k in tags if k.endswith(("wer", "cer")) or k == "dataset_id"):
        print(f"  {key} = {tags[key]}")


def _first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _suite_number(result: dict[str, Any]) -> str:
    """A suite result's headline number: ``WER 0.080`` (speech), ``exact_match 0.750`` (chat)."""
    if result.get("metric") is None:
        return f"WER {result['wer']:.3f}"
    return f"{result['metric']} {result['score']:.3f}"


# ``suite add`` flags of each kind of model's baseline and cap: (flag, SuiteSpec field).
_SUITE_FLAGS = {
    "speech_to_text": (("--baseline-wer", "baseline_wer"), ("--baseline-cer", "baseline_cer"),
                       ("--max-wer-degradation", "max_wer_degradation")),
    "chat": (("--baseline-score", "baseline_score"), ("--max-score-drop", "max_score_drop")),
}


def cmd_suite_add(config: TuneloopConfig, args: argparse.Namespace) -> int:
    from tuneloop.config import SuiteSpec
    from tuneloop.regression import read_suite
    from tuneloop.store import ErrorCaseStore

    own = _SUITE_FLAGS[config.task]  # the baseline and cap flags of the model's kind; the other kind's are refused
    for task, pairs in _SUITE_FLAGS.items():
        for flag, dest in pairs:
            if task != config.task and getattr(args, dest) is not None:
                kind = (f"a chat model, judged by {config.validation.text.primary_metric} (validation.text."
                        "primary_metric), not WER" if config.task == "chat" else "a speech model, judged by WER")
                raise ValueError(f"{flag}: model {config.name!r} is {kind}; use {' / '.join(f for f, _ in own)}")
    given = {dest: getattr(args, dest) for _, dest in own if getattr(args, dest) is not None}
    spec = SuiteSpec(name=args.name, type=args.type, data_path=args.data_path.resolve(),
                     baseline_version=args.baseline_version, **given)
    rows = read_suite(spec, config.task)  # fail now, not in the next run
    ErrorCaseStore.from_config(config).register_suite(spec)
    print(f"suite {spec.name} ({spec.type}): {len(rows)} items from {spec.data_path}")
    return 0


def cmd_suite_list(config: TuneloopConfig, args: argparse.Namespace) -> int:
    from tuneloop.store import ErrorCaseStore

    suites = suite_status(config, ErrorCaseStore.from_config(config))
    if args.json:
        print(json.dumps(suites, indent=2, default=str))
        return 0
    metric = config.validation.text.primary_metric if config.task == "chat" else None
    for suite in suites:
        if metric is None:
            baseline = (f"baseline WER {suite['baseline_wer']} ({suite['baseline_version']})"
                        if suite["baseline_wer"] is not None else "baseline: production, measured each run")
        else:
            baseline = (f"baseline {metric} {suite['baseline_score']} ({suite['baseline_version']})"
                        if suite["baseline_score"] is not None else "baseline: production, measured each run")
        print(f"{suite['name']} ({suite['type']}, {suite['data_path']}): {baseline}")
        for h in suite["history"]:
            numbers = (f"WER {h['wer']:.3f}  CER {h['cer']:.3f}" if h.get("metric") is None
                       else f"{h['metric']} {h['score']:.3f}")
            print(f"  {h['at']:%Y-%m-%d %H:%M}  {version_label(h['model_version'])}  {numbers}  "
                  f"n={h['n']}  {'pass' if h['passed'] else 'FAIL'}  ({h['run_id']})")
    if not suites:
        print("no regression suites (regression.suites in config, or `tuneloop suite add`)")
    return 0


def cmd_history(config: TuneloopConfig, args: argparse.Namespace) -> int:
    from tuneloop.store import ErrorCaseStore

    events = ErrorCaseStore.from_config(config).deployment_history(config.mlflow.model_name, limit=args.limit)
    if args.json:
        print(json.dumps([e.to_dict() for e in events], indent=2, default=str))
        return 0
    for e in events:
        print(f"{e.at:%Y-%m-%d %H:%M:%S}  {e.action:<10} {version_label(e.from_version):>4} -> "
              f"{version_label(e.to_version):<4} by {e.actor}: {e.reason}")
    if not events:
        print("no deployments yet")
    return 0


def cmd_costs(config: TuneloopConfig, args: argparse.Namespace) -> int:
    reports = {model.name: collect_costs(model, args.months) for model in config.each_model()} \
        if config.several_models else {config.name: collect_costs(config, args.months)}
    if args.json:
        print(json.dumps(reports if config.several_models else reports[config.name], indent=2, default=str))
        return 0
    for name, report in reports.items():
        if config.several_models:
            print(f"== model {name}")
        _print_costs(report)
    return 0


def _print_costs(report: dict[str, Any]) -> None:
    from tuneloop.costs import payback_label

    def usd(value: float | None) -> str:
        return "unknown" if value is None else f"${value:,.2f}"

    limits = f"max per run {usd(report['max_run_usd'])}" if report["max_run_usd"] is not None else "no limit per run"
    print(f"budget: {limits}; monthly {usd(report['monthly_budget_usd'])}"
          if report["monthly_budget_usd"] is not None else f"budget: {limits}; no monthly budget")
    for month in report["months"]:
        left = f", {usd(month['left_usd'])} left" if month["left_usd"] is not None else ""
        unknown = f" (+{month['unknown_runs']} of unknown cost)" if month["unknown_runs"] else ""
        print(f"{month['month']}: {usd(month['training_usd'])} over {month['runs']} trained run(s){unknown}{left}")
    print("runs:" if report["runs"] else "runs: (none yet)")
    for run in report["runs"]:
        cost = usd(run["training_usd"]) if run.get("training_basis") else "-"
        cost = f"at most {cost}" if run.get("training_upper_bound") and run["training_usd"] is not None else cost
        roi = run.get("roi")
        payback = f"  payback {payback_label(roi)}" if roi else ""
        print(f"  {run['run_id']}  {run['status']:<12} {cost}{payback}")


def cmd_runs(config: TuneloopConfig, args: argparse.Namespace) -> int:
    from tuneloop.store import ErrorCaseStore

    store = ErrorCaseStore.from_config(config)
    if args.fail:
        return fail_run(config, store, args.fail, args.reason)
    if args.reason:
        raise ValueError("--reason: only with --fail RUN_ID")
    runs = store.training_runs(limit=args.limit)
    if args.json:
        print(json.dumps([r.to_dict() for r in runs], indent=2, default=str))
        return 0
    now, deadline = datetime.now(timezone.utc), timedelta(hours=config.schedule.run_timeout_hours)
    for run in runs:
        print(f"{run.started_at:%Y-%m-%d %H:%M}  {run.status:<21} {run.run_id}  {_run_note(run, now, deadline)}")
    if not runs:
        print("no fine-tuning runs yet")
    return 0


def _run_note(run: Any, now: datetime, deadline: timedelta) -> str:
    """A running run's age and deadline; a finished run's end time and, for a failed one, why."""
    if run.status == "running":
        age = now - run.started_at
        left_h = (deadline - age) / timedelta(hours=1)
        until = f"deadline in {left_h:.1f} h" if left_h > 0 else "past its deadline (failed at the next check)"
        return f"running for {age / timedelta(hours=1):.1f} h, {until}"
    reason = run.summary.get("reason")
    return f"finished {run.finished_at:%Y-%m-%d %H:%M}" + (f": {reason}" if reason else "")


def fail_run(config: TuneloopConfig, store: Any, run_id: str, reason: str | None) -> int:
    """End a run stuck as running, by hand: the run row says why, and the deployment history says who."""
    from tuneloop.history import DeploymentEvent

    if not reason or not reason.strip():
        raise ValueError("--reason: say why the run is ended by hand (kept in the run and the history)")
    run = store.training_run(run_id)
    if run.status != "running":
        raise ValueError(f"--fail: run {run_id} is not running (it finished {run.status})")
    actor = f"cli:{getpass.getuser()}"
    if not store.fail_training_run(run_id, f"failed by hand ({actor}): {reason}"):
        raise ValueError(f"--fail: run {run_id} finished while this command ran: left as it is")
    production = next(iter(store.deployed_versions(config.mlflow.model_name)), None)
    store.record_deployment(DeploymentEvent(action="run_failed", model_name=config.mlflow.model_name,
                                            from_version=production, to_version=production, reason=reason,
                                            actor=actor, run_id=run_id))
    print(f"run {run_id}: failed by hand ({reason}); its cases stay available for the next run")
    return 0


def cmd_rollback(config: TuneloopConfig, args: argparse.Namespace) -> int:
    from tuneloop.deployment import rollback
    from tuneloop.registry import ModelRegistry
    from tuneloop.store import ErrorCaseStore

    registry = ModelRegistry(config.tracking_uri, config.registry_uri, config.mlflow.model_name)
    event = rollback(registry, ErrorCaseStore.from_config(config), to_version=args.to_version,
                     reason=args.reason, actor=f"cli:{getpass.getuser()}")
    if event.action == "canary_end":
        print(f"canary {version_label(event.details.get('version'))} ended: all traffic back to production "
              f"{version_label(event.to_version)} ({event.reason})")
        return 0
    print(f"production: {version_label(event.from_version)} -> {version_label(event.to_version)} ({event.reason})")
    return 0


def cmd_serve(config: TuneloopConfig, args: argparse.Namespace) -> int:
    from tuneloop.registry import ModelRegistry
    from tuneloop.serving.router import Router, registry_loader
    from tuneloop.serving.server import make_server
    from tuneloop.store import ErrorCaseStore
    from tuneloop.tasks import task_for

    registry = ModelRegistry(config.tracking_uri, config.registry_uri, config.mlflow.model_name)
    task = task_for(config.task)
    router = Router(registry, ErrorCaseStore.from_config(config), refresh_seconds=args.refresh_seconds,
                    load=registry_loader(registry, config.training), params=task.serving().request_params)
    split = router.split()  # refuses a model with nothing in production before listening
    server = make_server(router, task, host=args.host, port=args.port)
    host, port = server.server_address[:2]
    canary = f", canary {version_label(split.canary)} ({split.canary_percent:g}%)" if split.canary else ""
    print(f"serving {registry.model_name} on http://{host}:{port} (production {version_label(split.production)}"
          f"{canary}); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_bootstrap(config: TuneloopConfig, args: argparse.Namespace) -> int:
    from tuneloop import tracking
    from tuneloop.deployment import bootstrap_production
    from tuneloop.managed import reference
    from tuneloop.registry import ModelRegistry
    from tuneloop.store import ErrorCaseStore

    given = [what for what in (args.model_dir, args.openai_model, args.vertex_model) if what is not None]
    if len(given) != 1:
        raise ValueError("bootstrap: give one of a model directory, --openai-model or --vertex-model")
    registry = ModelRegistry(config.tracking_uri, config.registry_uri, config.mlflow.model_name)
    with tempfile.TemporaryDirectory(prefix="tuneloop-bootstrap-") as scratch:
        model_dir, serving = _bootstrap_model(config, args, Path(scratch))
        run_id = tracking.ensure_run(config, "bootstrap", dag_id="cli")
        managed = _managed_model(args)
        tags = reference.managed_tags(managed) if managed else None
        event = bootstrap_production(registry, ErrorCaseStore.from_config(config), model_dir, run_id=run_id,
                                     reason=args.reason, actor=f"cli:{getpass.getuser()}", tags=tags,
                                     serving_code=serving.code,
                                     pip_requirements=serving.requirements, signature=serving.signature,
                                     model_config=serving.model_config)
    print(f"production: {version_label(event.to_version)} ({event.reason})")
    return 0


def _bootstrap_model(config: TuneloopConfig, args: argparse.Namespace, scratch: Path) -> tuple[Path, Any]:
    """The model directory to register and how it is served: the given HF directory with the task's pyfunc, or a
    directory naming the provider's model with the API's pyfunc."""
    from tuneloop.managed import reference
    from tuneloop.tasks import task_for

    managed = _managed_model(args)
    if managed is None:
        if not (args.model_dir / "config.json").exists():
            raise ValueError(f"model_dir: {args.model_dir} is not a Hugging Face model directory (no config.json)")
        return args.model_dir, task_for(config.task).serving()  # the model's kind: speech or chat pyfunc
    if config.task != "chat":
        raise ValueError(f"--{managed.provider}-model: {managed.provider} serves chat models; this model's task is "
                         f"{config.task}")
    reference.write_managed(scratch, managed)
    return scratch, reference.serving(managed.provider)


def _managed_model(args: argparse.Namespace) -> Any:
    """The provider's model named by --openai-model / --vertex-model, or None for a model directory."""
    from tuneloop.managed.reference import ManagedModel

    if args.openai_model is not None:
        return ManagedModel(provider="openai", model=args.openai_model)
    if args.vertex_model is not None:
        return ManagedModel(provider="vertex", model=args.vertex_model)
    return None


def cmd_demo(config: TuneloopConfig, args: argparse.Namespace) -> int:
    if args.llm and args.strategy != "replace":
        raise ValueError(f"--strategy {args.strategy}: the chat demo (--llm) deploys with replace")
    if args.llm:
        from tuneloop_demo.llm import run_llm_demo

        return run_llm_demo(bad_candidate=args.bad_candidate, workdir=args.workdir)
    from tuneloop_demo.main import run_demo

    return run_demo(bad_candidate=args.bad_candidate, workdir=args.workdir, strategy=args.strategy)


if __name__ == "__main__":
    sys.exit(main())
