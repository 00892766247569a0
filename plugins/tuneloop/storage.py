"""Where files live: a local folder or object storage, behind one path type.

The core modules take either a ``pathlib.Path`` or an object-storage path with the pathlib interface --
Airflow's ``ObjectStoragePath`` (``gs://bucket/prefix``, credentials from an Airflow connection), or any
``upath.UPath`` -- and write to both the same way, with one difference that matters: a local folder can be
renamed into place atomically, a bucket cannot. Object-storage writers therefore write every file first and
the one that marks completion (a manifest) last; a single object upload is atomic.
"""

from __future__ import annotations

import os
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
