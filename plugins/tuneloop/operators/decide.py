from __future__ import annotations

from airflow.sdk import BaseBranchOperator, Context

from tuneloop.config import load_config
from tuneloop.pipeline import PipelineRun, RunParams


class DecideOperator(BaseBranchOperator):
    """Branch on the gate's verdict: ``deploy``, ``reject``, or ``hold`` (passed, but auto_deploy is off)."""

    def choose_branch(self, context: Context) -> str:
        run = PipelineRun(load_config(), context["run_id"], RunParams.from_mapping(dict(context["params"])))
        outcome = run.decide()
        self.log.info("decision: %s", outcome)
        return outcome
