"""Staging: the trainer reads and writes any fsspec URI (``gs://`` in production) through local disk.

torch, soundfile and ``save_pretrained`` need local files, so a remote input is downloaded into a scratch folder
first and a remote output is written locally and then uploaded. Local paths and ``file://`` URIs are used in
place: nothing is copied and fsspec is not even imported.

Scratch: ``$TUNELOOP_TRAINER_SCRATCH`` (default ``<tempdir>/tuneloop-trainer``), with ``inputs/<hash>`` for staged
inputs and ``outputs/<hash>`` for outputs being written, the hash taken over the URI. A staged input is downloaded
into a ``.partial`` folder and renamed, so a folder that exists is complete and later runs on the same machine
reuse it. That is safe because inputs do not change under their URI (datasets are content-addressed, models are
written once per run folder).

Credentials: ``gs://`` uses Google's application default credentials: the pod's service account (Workload
Identity), the VM's service account, or ``gcloud auth application-default login`` on a workstation. When
``STORAGE_EMULATOR_HOST`` is set, gcsfs sends every request to that emulator, and we connect anonymously.

An object store cannot rename, so a folder upload that readers must see whole puts the file that marks it
complete last (:func:`upload_dir`); a single-object upload is atomic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from tuneloop_trainer.arguments import SpecError

log = logging.getLogger(__name__)

SCRATCH_ENV = "TUNELOOP_TRAINER_SCRATCH"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
EXTERNAL_DIR = "files"  # where a staged split keeps the audio its rows reference


def is_remote(uri: str) -> bool:
    """True for a URI with a scheme other than ``file://`` (``gs://``, ``s3://``, ``memory://``, ...)."""
    return "://" in uri and not uri.startswith("file://")


def local_path(uri: str) -> Path:
    """The Path of a plain path or ``file://`` URI."""
    if is_remote(uri):
        raise ValueError(f"{uri} is not a local path")
    return Path(uri.removeprefix("file://"))


def join(uri: str, *parts: str) -> str:
    """``uri/part/...`` for local paths and remote URIs alike."""
    return "/".join([uri.rstrip("/"), *parts])


def scratch_root() -> Path:
    return Path(os.environ.get(SCRATCH_ENV) or Path(tempfile.gettempdir()) / "tuneloop-trainer")


def scratch_dir(kind: str, uri: str) -> Path:
    """``<scratch>/<kind>/<hash of uri>``: one folder per URI, stable across runs on the same machine."""
    return scratch_root() / kind / hashlib.sha256(uri.encode()).hexdigest()[:20]


def filesystem(uri: str) -> tuple[Any, str]:
    """The fsspec filesystem that holds ``uri`` and the path inside it.

    GCS: listings are not cached, because another machine may have written since (the bucket is the source of
    truth). Against an emulator we use gcsfs's core class anonymously: gcsfs's default class first asks the
    Storage Control gRPC API for the bucket's layout, which an emulator does not serve (a 60 s timeout per call).
    """
    import fsspec

    protocol = uri.split("://", 1)[0]
    if protocol not in ("gs", "gcs"):
        return fsspec.core.url_to_fs(uri)
    if os.environ.get(EMULATOR_ENV):
        from gcsfs.core import GCSFileSystem

        fs = GCSFileSystem(token="anon", use_listings_cache=False)
        return fs, fs._strip_protocol(uri)
    return fsspec.core.url_to_fs(uri, token="google_default", use_listings_cache=False)


# --- inputs --------------------------------------------------------------------------------------------------------


def stage_dir(uri: str, what: str) -> Path:
    """A local folder with the content of folder ``uri``: the folder itself when local, else a staged copy.

    :param what: the spec field or option that named ``uri``, for the error when it does not exist.
    """
    if not is_remote(uri):
        return local_path(uri)
    target = scratch_dir("inputs", uri)
    if target.is_dir():
        log.info("reusing staged %s (%s)", uri, target)
        return target
    files = list_files(uri)
    if not files:
        raise SpecError(f"{what} {uri} does not exist or is empty")
    return download(uri, {join(uri, name): name for name in files}, target)


def stage_split(uri: str, what: str) -> Path:
    """A local JSONL split whose rows' audio files are local too: the file itself when local, else a staged copy.

    The staged copy holds the JSONL and, under ``files/``, every audio file its rows reference (relative to the
    JSONL's folder or an absolute URI); those rows' ``audio`` becomes the absolute local path. Audio given as an
    absolute local path is left as it is; lines that are not JSON are kept for :func:`data.read_rows` to report.
    """
    if not is_remote(uri):
        return local_path(uri)
    target = scratch_dir("inputs", uri)
    staged = target / posixpath.basename(uri)
    if staged.is_file():
        log.info("reusing staged %s (%s)", uri, target)
        return staged
    fs, path = filesystem(uri)
    if not fs.isfile(path):
        raise SpecError(f"{what} {uri} does not exist")
    lines, sources = _localise_audio(fs.cat_file(path).decode("utf-8").splitlines(), uri, target)
    for source in sources:
        if source.split("://", 1)[0] != uri.split("://", 1)[0]:
            raise SpecError(f"{what} {uri}: audio {source} is on another filesystem than the split")
    try:
        download(uri, sources, target, extra={staged.name: "".join(line + "\n" for line in lines)})
    except FileNotFoundError as error:
        raise SpecError(f"{what} {uri}: a referenced audio file does not exist ({error})") from error
    return staged


def _localise_audio(lines: list[str], uri: str, target: Path) -> tuple[list[str], dict[str, str]]:
    """Rewrite each row's remote ``audio`` to its place under ``target/files``; returns the lines and the
    downloads (source URI -> path relative to ``target``)."""
    folder = posixpath.dirname(uri)
    sources: dict[str, str] = {}
    result = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            result.append(line)
            continue
        audio = row.get("audio") if isinstance(row, dict) else None
        if not isinstance(audio, str) or (Path(audio).is_absolute() and not is_remote(audio)):
            result.append(line)
            continue
        source = audio if is_remote(audio) else _resolve(folder, audio)
        relative = posixpath.join(EXTERNAL_DIR, source.split("://", 1)[1])
        sources[source] = relative
        result.append(json.dumps({**row, "audio": str(target / relative)}))
    return result, sources


def _resolve(folder: str, relative: str) -> str:
    """``folder/relative`` with ``..`` resolved inside the URI's path."""
    scheme, rest = folder.split("://", 1)
    return f"{scheme}://{posixpath.normpath(posixpath.join(rest, relative))}"


def read_text(uri: str, what: str) -> str:
    """The text of file ``uri`` (local or remote); a missing file is a :class:`SpecError` naming ``what``."""
    if not is_remote(uri):
        path = local_path(uri)
        if not path.is_file():
            raise SpecError(f"{what} {path} does not exist")
        return path.read_text()
    fs, path = filesystem(uri)
    if not fs.isfile(path):
        raise SpecError(f"{what} {uri} does not exist")
    return fs.cat_file(path).decode("utf-8")


def exists(uri: str) -> bool:
    if not is_remote(uri):
        return local_path(uri).exists()
    fs, path = filesystem(uri)
    return fs.exists(path)


def list_files(uri: str) -> dict[str, int]:
    """Every file under folder ``uri`` as {path relative to ``uri``: size in bytes}; {} when there is none."""
    fs, root = filesystem(uri)
    root = root.rstrip("/")
    found = fs.find(root, detail=True)
    return {name[len(root) + 1:]: int(info.get("size") or 0) for name, info in found.items()
            if name.startswith(root + "/") and not name.endswith("/")}


def download(uri: str, sources: dict[str, str], target: Path, extra: dict[str, str] | None = None) -> Path:
    """Download ``sources`` (remote URI -> path relative to ``target``) plus ``extra`` text files into a partial
    folder and rename it to ``target``, so ``target`` exists only when complete. ``uri`` names it in the log.

    When another process completed ``target`` first, its copy wins and ours is dropped.
    """
    started = time.perf_counter()
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    locals_ = [partial / relative for relative in sources.values()]
    for path in locals_:
        path.parent.mkdir(parents=True, exist_ok=True)
    if sources:
        fs, _ = filesystem(next(iter(sources)))
        fs.get([filesystem(source)[1] for source in sources], [str(path) for path in locals_])
    for name, text in (extra or {}).items():
        (partial / name).write_text(text)
    try:
        partial.rename(target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(partial, ignore_errors=True)
    _log_transfer("staged", uri, target, target, started)
    return target


# --- outputs -------------------------------------------------------------------------------------------------------


def working_dir(uri: str) -> Path:
    """Where an output folder is written: the folder itself when local, a scratch folder to upload from else."""
    return scratch_dir("outputs", uri) if is_remote(uri) else local_path(uri)


def working_file(uri: str) -> Path:
    """Where an output file is written: the path itself when local, a scratch file to upload from else."""
    return scratch_dir("outputs", uri) / posixpath.basename(uri) if is_remote(uri) else local_path(uri)


def upload_file(local: Path, uri: str) -> None:
    """Upload one file as one object (atomic: readers see the whole object or none)."""
    started = time.perf_counter()
    fs, path = filesystem(uri)
    fs.put_file(str(local), path)
    _log_transfer("uploaded", local, uri, local, started)


def upload_dir(local: Path, uri: str, last: tuple[str, ...] = ()) -> None:
    """Upload every file under ``local`` to folder ``uri``; the files named in ``last`` (relative paths) go after
    all others and are deleted remotely first, so an upload killed midway never looks complete."""
    started = time.perf_counter()
    fs, root = filesystem(uri)
    root = root.rstrip("/")
    files = sorted(path.relative_to(local).as_posix() for path in local.rglob("*") if path.is_file())
    for name in last:
        if fs.exists(f"{root}/{name}"):
            fs.rm(f"{root}/{name}")
    for batch in ([name for name in files if name not in last], [name for name in files if name in last]):
        if batch:
            fs.put([str(local / name) for name in batch], [f"{root}/{name}" for name in batch])
    _log_transfer("uploaded", local, uri, local, started)


def remove(uri: str) -> None:
    """Delete the object or folder at remote ``uri``; nothing there is fine."""
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _log_transfer(verb: str, source: Any, destination: Any, measured: Path, started: float) -> None:
    files = [measured] if measured.is_file() else [p for p in measured.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    log.info("%s %s -> %s (%d files, %.1f MB, %.1f s)", verb, source, destination, len(files), size / 1e6,
             time.perf_counter() - started)
