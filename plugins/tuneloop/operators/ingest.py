from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator, Context

from tuneloop.config import load_config


class IngestInboxOperator(BaseOperator):
    """Ingest every JSONL batch in the inbox folder; move each to ``processed/`` with its report beside it.

    Re-ingesting is harmless (cases are keyed on content), so a retry after a crash mid-batch loses nothing.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from tuneloop.inbox import ingest_inbox
        from tuneloop.store import ErrorCaseStore

        config = load_config()
        summary = ingest_inbox(ErrorCaseStore.from_config(config), config.resolved_inbox)
        self.log.info("inbox: %s", summary)
        return summary
