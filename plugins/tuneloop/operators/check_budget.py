from __future__ import annotations

from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from tuneloop.operators.base import PipelineStepOperator


class CheckBudgetOperator(PipelineStepOperator):
    """Estimate the training's cost and check it against the budgets (``costs``); ``approve_budget`` acts on it.

    Nothing is uploaded or started here: a managed backend's splits are checked against the provider's rules,
    which gives the token count the estimate needs. The check ``{within, estimate, reasons, ...}`` is also written
    to the run's folder (budget.json).
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from tuneloop.openai_dataset import ChatFileRefused

        run = self.pipeline(context)
        try:
            check = run.budget_check(self.upstream(context, "export_dataset")["dataset_id"])
        except ChatFileRefused as error:  # the same file is refused again on a retry
            raise AirflowFailException(str(error)) from error
        self.log.info("estimated training cost: %s", check["estimate"]["basis"] if check["estimate"]["usd"] is None
                      else f"${check['estimate']['usd']:,.2f} ({check['estimate']['basis']})")
        self.log.info("budget: %s", "within" if check["within"] else "; ".join(check["reasons"]))
        return check
