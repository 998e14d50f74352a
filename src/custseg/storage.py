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


def list_files(uri: str, suffix: str = "") -> list[str]:
    """The files directly in a folder whose names end with `suffix`, sorted (none if no folder)."""
    if is_remote(uri):
        fs, path = _fs(uri)
        if not fs.exists(path):
            return []
        scheme = uri.split("://", 1)[0]
        names = sorted(p for p in fs.ls(path, detail=False) if p.endswith(suffix))
        return [f"{scheme}://{p}" for p in names]
    folder = local_path(uri)
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.iterdir() if p.name.endswith(suffix) and p.is_file())


def list_dirs(uri: str) -> list[str]:
    """The folders directly in a folder (on object storage: the common prefixes), sorted."""
    if is_remote(uri):
        fs, path = _fs(uri)
        if not fs.exists(path):
            return []
        scheme = uri.split("://", 1)[0]
        entries = fs.ls(path, detail=True)
        return sorted(f"{scheme}://{e['name']}" for e in entries if e["type"] == "directory")
    folder = local_path(uri)
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.iterdir() if p.is_dir())


def newest_mtime(uri: str) -> float:
    """The newest modification time (epoch seconds) of a folder or anything below it."""
    if is_remote(uri):
        fs, path = _fs(uri)
        times = [
            info["LastModified"].timestamp() if "LastModified" in info else info.get("mtime", 0)
            for info in fs.find(path, detail=True).values()
        ]
        return max([float(t) for t in times if t] or [0.0])
    root = local_path(uri)
    newest = root.stat().st_mtime
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                newest = max(newest, os.stat(os.path.join(folder, name)).st_mtime)
            except OSError:
                continue
    return newest


def remove_tree(uri: str) -> None:
    """Delete a folder and everything in it (nothing happens if it does not exist)."""
    import shutil

    if is_remote(uri):
        fs, path = _fs(uri)
        if fs.exists(path):
            fs.rm(path, recursive=True)
        return
    shutil.rmtree(local_path(uri), ignore_errors=True)


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
    """Write a file in one go (not atomic; use inside a run directory only); a local file's
    folder is created if needed."""
    if not is_remote(uri):
        local_path(uri).parent.mkdir(parents=True, exist_ok=True)
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
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; follow the umask like open()
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def umask() -> int:
    """The process's umask (read without changing it for good)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (the directory entry itself is flushed)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. a platform without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def fsync_tree(uri: str) -> None:
    """Flush every file below a local folder, and the folders, to disk (object stores: no-op):
    called before a run's completion marker is written, so "complete" survives a crash."""
    if is_remote(uri):
        return
    root = local_path(uri)
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))
