from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator, Context

from tuneloop.config import load_model_config


class IngestInboxOperator(BaseOperator):
    """Ingest every JSONL batch in the inbox (folder or bucket prefix); move each to ``processed/`` with its
    report, or to ``failed/`` with the reason when it cannot be read (:mod:`tuneloop.inbox`).

    Re-ingesting is harmless (cases are keyed on content), so a retry after a crash mid-batch loses nothing; a
    batch that failed for a passing cause (store unreachable) fails the task after the other batches, and the
    retry takes it again.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from tuneloop.inbox import ingest_inbox
        from tuneloop.store import ErrorCaseStore

        config = load_model_config(self.dag_id)
        summary = ingest_inbox(ErrorCaseStore.from_config(config), config.resolved_inbox,
                               settle_seconds=config.ingest.settle_seconds)
        self.log.info("inbox: %s", summary)
        return summary
