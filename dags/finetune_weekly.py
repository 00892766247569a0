"""
### finetune_weekly — the continuous fine-tuning loop

Weekly (cron from `schedule.weekly_cron`), or started by `finetune_on_errors`, or by hand from the trigger form.

`check_trigger` → `approve_training` → `export_dataset` → `check_budget` → `approve_budget` → `train` → `evaluate`
→ `validate` → `regression_suite`
→ `register` → `decide` → `approve_deploy` → `deploy` → `post_deploy_check` → `online_test` → `conclude`
(`rollback` only if one of these fails) | `reject` → `report`.

**Deployment strategies** (`deployment.deployment_strategy`, or **deployment_strategy** in the form): `replace`
moves production at `deploy`; `blue_green` puts the candidate on the `green` alias, checks it there and moves
production at `conclude`; `canary` gives it the `canary` alias and a share of the traffic (`tuneloop serve`, or
the router in your serving process), `online_test` waits in the triggerer for the sequential test on live
outcomes, and `conclude` promotes it, rolls it back or keeps production. `online_test` runs for canaries only;
while it waits, *Required actions* lets a person end it early (**Promote now** / **Roll back now**).

`train` and `evaluate` are groups: `prepare` branches to the run's backend -- `local` (a subprocess), `pod`
(Kubernetes or GKE, in the `gpu` pool) or `create_vm` → `wait_vm` → `delete_vm` (GCE) -- and `result` reads
the outputs back from the run's folder (`storage_root`, a bucket for pods and VMs).

A run whose trigger conditions are unmet is skipped (the report says why). Nothing reaches production unless the
gate passes (WER/CER improvement, paired-bootstrap significance, degradation limits, slices, newly broken
utterances: `validation` config) and no regression suite blocks (`regression` config).

**Approvals** (Airflow's human-in-the-loop, under *Required actions*): `approve_training` waits when
`trigger.auto_approve_finetuning` is false and the run was not forced; `approve_deploy` waits when **auto_deploy**
is unticked, or on a first run under `validation.first_run_policy: require_approval`. Reject, or no answer in time,
leaves production untouched and is written to the deployment history. Otherwise both pass at once.

Manual runs: tick **force_trigger** to train regardless of counts and cooldown (starting it is the approval).
Each step's **MLflow run** button opens the run's metrics, plot and decision record.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, TriggerRule

from tuneloop.backends import BACKENDS
from tuneloop.config import TuneloopConfig
from tuneloop.operators.approve import ApproveBudgetOperator, ApproveDeployOperator, ApproveTrainingOperator
from tuneloop.operators.check_budget import CheckBudgetOperator
from tuneloop.operators.check_trigger import CheckTriggerOperator
from tuneloop.operators.decide import DecideOperator
from tuneloop.operators.deploy import DeployOperator, RejectOperator, RollbackOperator
from tuneloop.operators.export_dataset import ExportDatasetOperator
from tuneloop.operators.online_test import ConcludeRolloutOperator, OnlineTestOperator
from tuneloop.operators.post_deploy_check import PostDeployCheckOperator
from tuneloop.operators.register import RegisterCandidateOperator
from tuneloop.operators.regression_suite import RegressionSuiteOperator
from tuneloop.operators.report import ReportOperator
from tuneloop.operators.trainer_step import trainer_step
from tuneloop.operators.validate import ValidateOperator
from tuneloop.schedule import approval_timeout, cron, models, task_defaults


def build(model: TuneloopConfig) -> DAG:
    """The loop for one model: ``finetune_weekly``, or ``finetune_weekly_<name>`` for each model of several."""
    with DAG(
        dag_id=model.dag_id("finetune_weekly"),
        doc_md=__doc__,
        schedule=cron("weekly_cron", model),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["tuneloop", model.task.replace("_", "-"), f"model:{model.name}"],
        default_args=task_defaults(model),
        params=_params(),
    ) as dag:
        _wire(model)
    return dag


def _params() -> dict[str, Param]:
    return {
        "force_trigger": Param(False, type="boolean", description="Train even if trigger conditions are unmet."),
        "auto_deploy": Param(True, type="boolean",
                             description="Promote a candidate that passes the gate; untick to approve it by hand."),
        "use_lora": Param(None, type=["null", "boolean"],
                          description="true: LoRA (peft); false: full fine-tuning; empty: training.use_lora."),
        "epochs": Param(None, type=["null", "integer"], minimum=1, description="Empty: training.epochs."),
        "learning_rate": Param(None, type=["null", "number"], description="Empty: training.learning_rate."),
        "backend": Param(None, type=["null", "string"], enum=[None, *BACKENDS],
                         description="Where the trainer runs (train and evaluate); openai: OpenAI's fine-tuning "
                                     "API (chat models); empty: training.backend."),
        "deployment_strategy": Param(
            None, type=["null", "string"], enum=[None, "replace", "blue_green", "canary"],
            description="How a passing candidate reaches production: replace (at once), blue_green (checked on "
                        "the green alias, then at once), canary (a share of the traffic until the online test "
                        "decides); empty: deployment.deployment_strategy."),
        "label_noise": Param(
            "none", type="string", enum=["none", "shuffle"],
            description="shuffle: train on shuffled transcripts — a deliberately bad candidate, to test the gate.",
        ),
        "reason": Param("scheduled", type="string", description="Why this run started (shown in history)."),
    }


def _wire(model: TuneloopConfig) -> None:
    check_trigger = CheckTriggerOperator(task_id="check_trigger")
    approve_training = ApproveTrainingOperator(
        task_id="approve_training",
        subject="Start fine-tuning the production model? ({{ run_id }})",
        body="{{ ti.xcom_pull(task_ids='check_trigger')['summary_md'] }}",
        response_timeout=approval_timeout("trigger", model),
        retries=0,
    )
    export_dataset = ExportDatasetOperator(task_id="export_dataset")
    check_budget = CheckBudgetOperator(task_id="check_budget")
    approve_budget = ApproveBudgetOperator(
        task_id="approve_budget",
        subject="Train over budget? ({{ run_id }})",
        body="{{ ti.xcom_pull(task_ids='check_budget')['reasons'] | join('\n') }}",
        response_timeout=approval_timeout("costs", model),
        retries=0,
    )
    train = trainer_step("train", execution_timeout=timedelta(hours=6))
    evaluate = trainer_step("evaluate", execution_timeout=timedelta(hours=2))
    validate = ValidateOperator(task_id="validate")
    regression_suite = RegressionSuiteOperator(task_id="regression_suite")
    register = RegisterCandidateOperator(task_id="register")
    decide = DecideOperator(task_id="decide")
    approve_deploy = ApproveDeployOperator(
        task_id="approve_deploy",
        subject="Deploy version {{ ti.xcom_pull(task_ids='register')['version'] }} to production? ({{ run_id }})",
        body="{{ ti.xcom_pull(task_ids='decide', key='summary') }}",
        response_timeout=approval_timeout("deployment", model),
        retries=0,
    )
    deploy = DeployOperator(task_id="deploy")
    reject = RejectOperator(task_id="reject")
    post_deploy_check = PostDeployCheckOperator(task_id="post_deploy_check", retries=0)
    online_test = OnlineTestOperator(task_id="online_test")
    conclude = ConcludeRolloutOperator(task_id="conclude", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    rollback = RollbackOperator(task_id="rollback", trigger_rule=TriggerRule.ONE_FAILED)
    report = ReportOperator(task_id="report", trigger_rule=TriggerRule.ALL_DONE, retries=1)

    check_trigger >> approve_training >> export_dataset >> check_budget >> approve_budget >> train >> evaluate
    evaluate >> validate >> regression_suite
    regression_suite >> register >> decide >> [approve_deploy, reject]
    approve_deploy >> deploy >> post_deploy_check >> online_test
    [post_deploy_check, online_test] >> conclude
    [post_deploy_check, online_test, conclude] >> rollback
    [conclude, rollback, reject] >> report


for _model in models():
    globals()[_model.dag_id("finetune_weekly")] = build(_model)
