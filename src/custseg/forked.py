"""One function run in a forked child process while this process goes on.

The CLI sweeps a small table this way while it imports what the later steps need
(scikit-learn, kneed, skops, matplotlib: about two seconds). Both are pure Python work
for the most part, so on one process they take turns on the GIL; in two they run on two
cores at once. The child starts from this process's memory (no pickling of inputs, no
imports) and sends back only its result, over a `multiprocessing` pipe.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe
from typing import Any, Generic, TypeVar

from custseg.sanitize import logger

log = logger(__name__)
T = TypeVar("T")


_parent: int | None = None

IMPORTER = "custseg-imports"
"""The name of the thread that imports the later steps' libraries beside the sweep
(`custseg.pipeline`). A fork waits for it (a module lock it held would stay locked in the
child, whose own import of that module would wait forever), and so does an import of
scikit-learn on another thread (two threads initialising one package at once fail)."""


def wait_for_imports() -> None:
    """Return once no `IMPORTER` thread is running (at once when there is none)."""
    for thread in threading.enumerate():
        if thread.name == IMPORTER and thread is not threading.current_thread():
            thread.join()


def forked_from() -> int | None:
    """In the child of a `ForkedCall`, the pid of the process that forked it; else None. What
    the parent started (worker pools, threads) does not exist here."""
    return _parent


def can_fork() -> str | None:
    """Why this process cannot fork a child for `ForkedCall`, or None when it can."""
    if not hasattr(os, "fork"):
        return "no fork() on this platform"
    if not sys.platform.startswith("linux"):  # macOS: system libraries are not fork-safe
        return f"fork() is used on Linux only, this is {sys.platform}"
    from custseg.sweep import default_workers  # custseg.sweep imports this module

    if default_workers() < 2:
        return "one core: the child would only take turns with this process"
    return None


class ForkedCall(Generic[T]):
    """`fn()` started at once in a forked child; `result()` waits for it and returns its value
    or raises its exception. The child exits with `os._exit` once it has sent its result, so
    nothing of this process (atexit handlers, buffered files) runs twice."""

    def __init__(self, fn: Callable[[], T], *, what: str) -> None:
        self.what = what
        _flush_outputs()  # else the child inherits unwritten output and writes it again
        reader, writer = Pipe(duplex=False)
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child: coverage does not follow forks
            reader.close()
            _child(fn, writer)
        writer.close()  # the child's end: reading then ends when the child does
        self._reader = reader
        log.info("%s: running in forked process %d", what, self.pid)

    def result(self) -> T:
        """The child's value (its exception is raised here, as if `fn` ran in this process)."""
        try:
            kind, value = self._reader.recv()
        except EOFError:
            kind, value = None, None
        finally:
            self._reader.close()
            _, status = os.waitpid(self.pid, 0)
        if kind is None:
            raise ChildProcessError(f"{self.what}: forked process {self.pid} ended without a "
                                    f"result ({_status(status)})")  # fmt: skip
        if kind == "error":
            raise value
        return value


def _child(fn: Callable[[], Any], writer: Connection) -> None:  # pragma: no cover - child
    global _parent
    _parent = os.getppid()
    code = 0
    try:
        try:
            message = ("ok", fn())
        except KeyboardInterrupt:
            os._exit(130)
        except BaseException as exc:  # noqa: BLE001 - sent to the parent, raised there
            message = ("error", exc)
        try:
            writer.send(message)
        except Exception as exc:  # noqa: BLE001 - e.g. it does not pickle: send its text
            if message[0] == "ok":
                text = f"its result cannot be sent back: {exc!r}"
            else:
                text = "".join(traceback.format_exception(message[1])).rstrip()
            writer.send(("error", RuntimeError(f"in the forked process: {text}")))
    except BaseException:  # noqa: BLE001 - e.g. the parent is gone: nothing to tell
        code = 1
    finally:
        _flush_outputs()
        os._exit(code)


def _flush_outputs() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except (OSError, ValueError):
            pass


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
