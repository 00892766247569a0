"""The inbox: a folder, or a bucket prefix, where the serving system drops JSONL batches of error cases.

**Contract for writers** (documented in the README): write a batch under a name that does not end in ``.jsonl``
(``batch.jsonl.tmp``, or a dotfile), then rename it to ``*.jsonl``. A rename is atomic on a filesystem and an
object in a bucket appears whole, so the inbox never sees half a batch. As a second guard, a file modified less
than ``ingest.settle_seconds`` ago is taken to be still written and waits for the next pass.

Each pass tries every batch, oldest name first, and no batch can block the ones after it:

* ingested: moved to ``processed/`` with its ingest report beside it (accepted, duplicates and every rejected row
  with line, field and reason: bad rows never cost the good ones, see :mod:`tuneloop.intake`);
* cannot be read (not a regular file, unreadable): moved to ``failed/`` with ``<name>.error.json`` saying why;
* failed for any other cause (the store unreachable, a network error of the bucket, an error nobody foresaw):
  left in place and retried on the next pass; the pass raises :class:`InboxPassFailed` at the end, after the
  other batches, so the Airflow task retries.

Ingestion is idempotent, so a batch re-ingested after a crash between ingesting and moving adds nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneloop.storage import StoragePath, is_local, uri

log = logging.getLogger(__name__)


class InboxPassFailed(RuntimeError):
    """Some batches could not be ingested for a passing cause; they stay in the inbox for the next pass."""


def ingest_inbox(store: Any, inbox: StoragePath, *, settle_seconds: float = 0.0,
                 clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """Ingest every settled ``*.jsonl`` batch in ``inbox`` (a local ``Path`` or an ``ObjectStoragePath``).

    Returns per-file counts for ingested batches plus the names left ``waiting`` (still being written) and
    ``failed`` (moved to ``failed/``). Raises :class:`InboxPassFailed` after the pass when a batch hit a
    passing cause.
    """
    inbox.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    waiting: list[str] = []
    failed: dict[str, str] = {}
    retry: dict[str, str] = {}
    for batch in sorted(_batches(inbox), key=lambda p: p.name):
        if not _settled(batch, settle_seconds, clock):
            log.info("inbox: %s was modified in the last %g s; leaving it for the next pass", batch.name,
                     settle_seconds)
            waiting.append(batch.name)
            continue
        try:
            report = _ingest(store, batch)
        except FileNotFoundError:
            log.info("inbox: %s disappeared before it was read", batch.name)
            continue
        except Exception as error:  # noqa: BLE001 - whatever it is, it costs this batch at most
            if _passing(batch, error):
                retry[batch.name] = _one_line(error)
                log.warning("inbox: %s not ingested now (%s); it stays for the next pass", batch.name,
                            retry[batch.name], exc_info=not isinstance(error, _PASSING_ERRORS))
            else:
                failed[batch.name] = f"cannot be read: {_one_line(error)}"
                _move_aside(_fail, inbox, batch, failed[batch.name], retry)
            continue
        files[batch.name] = {k: report[k] for k in ("accepted", "duplicates", "rejected")}
        _move_aside(_finish, inbox, batch, report, retry)
        log.info("inbox: ingested %s: %d stored, %d duplicates, %d rejected", batch.name,
                 len(report["accepted"]), len(report["duplicates"]), len(report["rejected"]))
    if retry:
        raise InboxPassFailed(f"{len(retry)} inbox batch(es) stay for the next pass: "
                              + "; ".join(f"{name}: {why}" for name, why in retry.items()))
    return {"files": files, "batches": len(files), "waiting": waiting, "failed": failed}


def _passing_errors() -> tuple[type[BaseException], ...]:
    import sqlalchemy.exc

    from tuneloop.store import StoreError

    return StoreError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, ConnectionError, TimeoutError


_PASSING_ERRORS = _passing_errors()


def _passing(batch: StoragePath, error: Exception) -> bool:
    """Whether trying the batch again later may succeed. Only a batch that is itself unreadable goes to failed/:
    a local file that is no regular file or cannot be opened, or a bucket object we may not read. Anything else
    (the store unreachable, a network error or an HTTP 5xx of the bucket, an error we did not foresee) is retried
    on the next pass: re-ingesting is idempotent, and moving a good batch aside would need a person."""
    if isinstance(error, _PASSING_ERRORS):
        return True
    if is_local(batch):
        return not isinstance(error, OSError)
    return not isinstance(error, (IsADirectoryError, NotADirectoryError, PermissionError))


def _move_aside(move: Callable[..., None], inbox: StoragePath, batch: StoragePath, detail: Any,
                retry: dict[str, str]) -> None:
    """Move a handled batch to processed/ or failed/; if that fails, the batch stays and the next pass takes it
    again (its rows are already stored, so it only adds duplicates)."""
    try:
        move(inbox, batch, detail)
    except Exception as error:  # noqa: BLE001 - a batch that cannot be moved must not stop the others
        retry[batch.name] = f"handled but not moved: {_one_line(error)}"
        log.warning("inbox: %s could not be moved aside (%s); the next pass takes it again", batch.name, error)


def _one_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _batches(inbox: StoragePath) -> list[StoragePath]:
    """``*.jsonl`` entries of the inbox itself (not of processed/ or failed/); dotfiles are writes in progress."""
    return [p for p in inbox.iterdir() if p.name.endswith(".jsonl") and not p.name.startswith(".")]


def _settled(batch: StoragePath, settle_seconds: float, clock: Callable[[], float]) -> bool:
    if settle_seconds <= 0:
        return True
    modified = _modified_at(batch)
    return modified is None or clock() - modified >= settle_seconds


def _modified_at(path: StoragePath) -> float | None:
    """Seconds since the epoch of the last write; None when the store does not say (objects appear whole)."""
    if is_local(path):
        try:
            return Path(path).stat().st_mtime
        except OSError:
            return None
    info = path.fs.info(path.path)
    for key in ("mtime", "updated", "LastModified", "last_modified"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _ingest(store: Any, batch: StoragePath) -> dict[str, Any]:
    """Ingest one batch; a bucket's batch is downloaded first, its relative audio paths stay in the bucket."""
    source = f"inbox:{batch.name}"
    if is_local(batch):
        path = Path(batch)
        if not path.is_file():
            raise IsADirectoryError(f"{path} is not a regular file")
        return store.ingest_jsonl(path, source=source).to_dict()
    with tempfile.TemporaryDirectory(prefix="tuneloop-inbox-") as scratch:
        local = Path(scratch) / "batch.jsonl"
        with batch.open("rb") as remote, local.open("wb") as copy:
            shutil.copyfileobj(remote, copy, 1 << 20)
        parent = uri(batch.parent)
        return store.ingest_jsonl(local, source=source, batch_name=uri(batch), base_dir=parent).to_dict()


def _finish(inbox: StoragePath, batch: StoragePath, report: dict[str, Any]) -> None:
    target = _free_name(inbox / "processed", batch.name)
    (target.parent / f"{target.name}.report.json").write_text(json.dumps(report, indent=2, default=str))
    _move(batch, target)


def _fail(inbox: StoragePath, batch: StoragePath, reason: str) -> None:
    log.error("inbox: %s moved to failed/: %s", batch.name, reason)
    target = _free_name(inbox / "failed", batch.name)
    error = {"batch": batch.name, "reason": reason, "at": datetime.now(UTC).isoformat()}
    (target.parent / f"{target.name}.error.json").write_text(json.dumps(error, indent=2))
    _move(batch, target)


def _free_name(folder: StoragePath, name: str) -> StoragePath:
    """``folder/name``, or ``name.1``, ``name.2``... when a batch of the same name was handled before."""
    folder.mkdir(parents=True, exist_ok=True)
    target, n = folder / name, 0
    while target.exists():
        n += 1
        target = folder / f"{name}.{n}"
    return target


def _move(source: StoragePath, target: StoragePath) -> None:
    """Rename locally; in a bucket stream a copy then delete (a server-side rewrite is not offered by every
    GCS-compatible store, and a stalled one would hold the whole pass)."""
    if is_local(source):
        shutil.move(str(source), str(target))
        return
    with source.open("rb") as reader, target.open("wb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)
    source.unlink()
