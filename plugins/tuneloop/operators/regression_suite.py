from __future__ import annotations

from typing import Any

from airflow.sdk import Context

from tuneloop.operators.base import PipelineStepOperator


class RegressionSuiteOperator(PipelineStepOperator):
    """Every registered regression suite against its baseline and thresholds (the seed's RegressionTester)."""

    def execute(self, context: Context) -> dict[str, Any]:
        report = self.pipeline(context).regression_suite()
        self.log.info("regression suites: %s", "passed" if report["passed"] else "FAILED")
        return report
