"""The inbox: a folder where the serving system drops JSONL batches of error cases.

Each batch is ingested, then moved to ``processed/`` with its ingest report beside it (accepted, duplicates and
every rejected row with its reason). Ingestion is idempotent, so a batch re-ingested after a crash adds nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def ingest_inbox(store: Any, inbox: Path) -> dict[str, Any]:
    """Ingest all ``*.jsonl`` files in ``inbox`` (oldest name first); return per-file counts."""
    inbox.mkdir(parents=True, exist_ok=True)
    processed = inbox / "processed"
    processed.mkdir(exist_ok=True)
    files: dict[str, Any] = {}
    for batch in sorted(inbox.glob("*.jsonl")):
        report = store.ingest_jsonl(batch, source=f"inbox:{batch.name}")
        summary = report.to_dict()
        (processed / f"{batch.name}.report.json").write_text(json.dumps(summary, indent=2, default=str))
        shutil.move(str(batch), processed / batch.name)
        files[batch.name] = {k: summary[k] for k in ("accepted", "duplicates", "rejected") if k in summary}
        log.info("ingested %s: %s", batch.name, files[batch.name])
    return {"files": files, "batches": len(files)}
