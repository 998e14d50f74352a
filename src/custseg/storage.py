"""Paths and URIs: local files, `file://` and any fsspec scheme (`s3://`, `gs://`) alike.

Local paths stay plain `pathlib` (fast, atomic rename); other schemes go through fsspec,
so the same pipeline runs on a laptop and on a cluster with object storage.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import IO, Any

_LOCAL_PREFIX = "file://"


def is_remote(uri: str) -> bool:
    """True for a URI with a scheme other than `file://`."""
    return "://" in uri and not uri.startswith(_LOCAL_PREFIX)


def local_path(uri: str | os.PathLike[str]) -> Path:
    """The local `Path` of a plain path or a `file://` URI."""
    text = os.fspath(uri)
    if text.startswith(_LOCAL_PREFIX):
        text = text[len(_LOCAL_PREFIX) :]
    return Path(text)


def _fs(uri: str) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(uri)


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts onto a local path or a URI."""
    text = os.fspath(base)
    if is_remote(text):
        return "/".join([text.rstrip("/"), *parts])
    return str(local_path(text).joinpath(*parts))


def exists(uri: str) -> bool:
    """True if the file or directory exists."""
    if is_remote(uri):
        fs, path = _fs(uri)
        return bool(fs.exists(path))
    return local_path(uri).exists()


def makedirs(uri: str, *, exist_ok: bool = True) -> None:
    """Create a directory and its parents (a no-op on object stores that have none)."""
    if is_remote(uri):
        fs, path = _fs(uri)
        fs.makedirs(path, exist_ok=True)
        return
    local_path(uri).mkdir(parents=True, exist_ok=exist_ok)


def open_file(uri: str, mode: str = "rb") -> IO[Any]:
    """Open a local path or URI (binary modes only)."""
    if is_remote(uri):
        fs, path = _fs(uri)
        return fs.open(path, mode)
    return open(local_path(uri), mode)  # noqa: SIM115 - caller closes


def read_bytes(uri: str) -> bytes:
    """The whole content of a file."""
    with open_file(uri, "rb") as fh:
        return fh.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write a file in one go (not atomic; use inside a run directory only)."""
    with open_file(uri, "wb") as fh:
        fh.write(data)


def replace_atomic(uri: str, data: bytes) -> None:
    """Replace a file so readers see the old or the new content, never a half-written one.

    Locally: write a unique temporary file beside it, fsync, `os.replace`. On object
    storage a single-object put is already atomic.
    """
    if is_remote(uri):
        fs, path = _fs(uri)
        fs.pipe_file(path, data)
        return
    target = local_path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{uuid.uuid4().hex[:8]}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
