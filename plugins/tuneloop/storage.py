"""Where files live: a local folder or object storage, behind one path type.

The core modules take either a ``pathlib.Path`` or an object-storage path with the pathlib interface --
Airflow's ``ObjectStoragePath`` (``gs://bucket/prefix``, credentials from an Airflow connection), or any
``upath.UPath`` -- and write to both the same way, with one difference that matters: a local folder can be
renamed into place atomically, a bucket cannot. Object-storage writers therefore write every file first and
the one that marks completion (a manifest, metrics.json, base_model.json) last; a single object upload is atomic.

Libraries that only take local files (matplotlib, MLflow's artifact logging, audio decoders) get them through
:func:`local_file` / :func:`local_dir` / :func:`staged_output`, which are no-ops for local paths.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

StoragePath = Any  # pathlib.Path | ObjectStoragePath | UPath: anything with the pathlib interface


def is_local(path: Any) -> bool:
    """True for a local filesystem path (``str``, ``os.PathLike``, ``file://``), False for object storage."""
    if hasattr(path, "fs") and hasattr(path, "protocol"):  # ObjectStoragePath / UPath
        return path.protocol in ("", "file", "local")
    return "://" not in str(path) or str(path).startswith("file://")


def as_path(path: Any) -> StoragePath:
    """A usable path: object-storage paths as they are, anything else as a local ``Path``."""
    if hasattr(path, "fs") and hasattr(path, "protocol"):
        return path
    text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    if "://" in text and not text.startswith("file://"):
        raise ValueError(f"{text}: give object storage as an ObjectStoragePath (it carries the credentials), "
                         "not as a string")
    return Path(text.removeprefix("file://"))


def storage_root(root: str | None, default: Path, conn_id: str | None = None) -> StoragePath:
    """The configured ``storage_root``: a local folder, or ``gs://bucket/prefix`` (any fsspec scheme) as Airflow's
    ``ObjectStoragePath`` with the credentials of Airflow connection ``conn_id`` (None: the scheme's default)."""
    if root is None:
        return default
    if is_local(root):
        return Path(root.removeprefix("file://"))
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(root, conn_id=conn_id)


def uri(path: StoragePath) -> str:
    """The path as the trainer reads it: a local path, or ``gs://bucket/key`` (credentials are the trainer's own:
    its service account in a pod or VM)."""
    return str(path) if is_local(path) else f"{path.protocol}://{path.path}"


def write_text(path: StoragePath, text: str) -> None:
    """Write a whole file so that readers see the old content or the new, never half: a rename locally, one
    object upload remotely."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not is_local(path):
        path.write_text(text)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: StoragePath, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str))


def read_json(path: StoragePath) -> Any:
    return json.loads(path.read_text())


def read_jsonl(path: StoragePath) -> list[dict[str, Any]]:
    """Every row of a JSONL file (blank lines skipped)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@contextmanager
def local_file(path: StoragePath) -> Iterator[Path]:
    """A local file with ``path``'s content and name (downloaded for object storage, deleted afterwards)."""
    if is_local(path):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="tuneloop-") as tmp:
        local = Path(tmp) / path.name
        local.write_bytes(path.read_bytes())
        yield local


@contextmanager
def local_dir(path: StoragePath) -> Iterator[Path]:
    """A local copy of folder ``path`` (the folder itself when local; downloaded and deleted afterwards)."""
    if is_local(path):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="tuneloop-") as tmp:
        local = Path(tmp) / path.name
        download_dir(path, local)
        yield local


@contextmanager
def staged_output(path: StoragePath) -> Iterator[Path]:
    """A local file to write ``path``'s content into; uploaded as one object when the block ends without error.
    Locally, a temporary sibling renamed into place."""
    if is_local(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        yield tmp
        tmp.replace(path)
        return
    with tempfile.TemporaryDirectory(prefix="tuneloop-") as tmp:
        local = Path(tmp) / path.name
        yield local
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(local.read_bytes())


def upload_dir(local: Path, target: StoragePath) -> int:
    """Copy every file under ``local`` to ``target`` (same relative layout); returns the number of files.
    Completion is the caller's marker, written after this returns."""
    count = 0
    for file in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        destination = target / file.relative_to(local).as_posix()
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(file.read_bytes())
        count += 1
    return count


def download_dir(source: StoragePath, local: Path) -> int:
    """Copy every object under ``source`` into folder ``local``; returns the number of files."""
    count = 0
    for item in source.rglob("*"):
        if item.is_file():
            relative = str(item.path).removeprefix(str(source.path)).lstrip("/")
            destination = Path(local) / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(item.read_bytes())
            count += 1
    return count


def copy_dir(source: Path, target: StoragePath) -> int:
    """Copy a local folder to ``target``, local or remote (locally: ``shutil.copytree``)."""
    if is_local(target):
        shutil.copytree(source, target, dirs_exist_ok=True)
        return sum(1 for p in Path(source).rglob("*") if p.is_file())
    return upload_dir(source, target)


def remove_tree(path: StoragePath) -> None:
    """Delete a folder and everything under it, if it exists."""
    if is_local(path):
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.fs.rm(path.path, recursive=True)


def publish_dir(local: Path, target: StoragePath) -> None:
    """Put a complete copy of folder ``local`` at ``target``, replacing what was there. Locally a copy renamed
    into place; remotely an upload (completion is the caller's marker, written afterwards)."""
    remove_tree(target)
    if is_local(target):
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(local, partial)
        partial.rename(target)
    else:
        upload_dir(local, target)


def publish_split(jsonl: Path, target: StoragePath) -> StoragePath:
    """Copy a JSONL split and the audio its rows name (relative to the file, or absolute) to ``target`` and its
    ``audio/`` folder, rows rewritten to the copies; the JSONL is written last, so present = complete. Reused when
    present."""
    if target.exists():
        return target
    rows = []
    for number, line in enumerate(Path(jsonl).read_text().splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        audio = Path(row["audio"]) if Path(row["audio"]).is_absolute() else Path(jsonl).parent / row["audio"]
        copy = f"audio/{number:06d}-{audio.name}"
        destination = target.parent / copy
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(audio.read_bytes())
        rows.append(row | {"audio": copy})
    write_text(target, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return target


def audio_fetcher(conn_id: str | None, folder: Path) -> Callable[[str], Path]:
    """For the export: maps an error case's remote audio URI (``gs://...``) to a local copy in ``folder`` (see
    :func:`fetch`), read with connection ``conn_id``. An object that does not exist is ``AudioError("missing")``
    (the export quarantines that case); other errors (network) propagate, so the task retries."""
    from tuneloop.audio import AudioError

    def fetch_audio(audio_uri: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            return fetch(storage_root(audio_uri, folder, conn_id), folder)
        except FileNotFoundError as error:
            raise AudioError(audio_uri, "missing", "no such object") from error

    return fetch_audio


def fetch(path: StoragePath, folder: Path) -> Path:
    """A local file for ``path``: itself when local, else a download into ``folder`` (a temporary one)."""
    if is_local(path):
        return Path(path).resolve()
    local = Path(folder) / f"{abs(hash(str(path))):x}-{path.name}"
    local.write_bytes(path.read_bytes())
    return local
