import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from custseg.errors import InputError
from custseg.forked import ForkedCall, can_fork

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")


def test_value_comes_back_from_the_child():
    parent = os.getpid()
    X = np.arange(12.0).reshape(4, 3)  # in the child's memory by the fork, not pickled over
    call = ForkedCall(lambda: (os.getpid(), X.sum(axis=0)), what="sum")
    pid, total = call.result()
    assert pid == call.pid != parent
    assert total.tolist() == [18.0, 22.0, 26.0]


def test_childs_exception_is_raised_here_with_its_message():
    def bad():
        raise InputError("data.csv: column 'Age': 'x' on line 7 is not a number")

    call = ForkedCall(bad, what="bad")
    with pytest.raises(InputError, match=r"line 7 is not a number"):
        call.result()


def test_an_exception_that_does_not_pickle_arrives_as_its_text():
    class Local(Exception):  # defined in a function: pickle cannot find it by name
        pass

    def bad():
        raise Local("the reason, kept")

    with pytest.raises(RuntimeError, match=r"(?s)in the forked process: .*Local: the reason, kept"):
        ForkedCall(bad, what="bad").result()


def test_a_result_that_cannot_be_sent_back_is_an_error_not_a_hang():
    with pytest.raises(RuntimeError, match=r"in the forked process: its result cannot be sent "
                                           r"back: .*lambda"):  # fmt: skip
        ForkedCall(lambda: lambda: 1, what="t").result()


def test_a_child_that_dies_gives_an_error_naming_the_signal():
    call = ForkedCall(lambda: os.kill(os.getpid(), signal.SIGKILL), what="sweep")
    with pytest.raises(
        ChildProcessError,
        match=rf"sweep: forked process {call.pid} ended "
        r"without a result \(killed by signal 9\)",
    ):
        call.result()


def test_output_buffered_before_the_fork_is_written_once():
    """The parent's unwritten output is flushed before forking, else the child would write
    its copy again when it flushes."""
    code = (
        "import sys\n"
        "from custseg.forked import ForkedCall\n"
        "sys.stdout.write('before ')\n"
        "print(ForkedCall(lambda: print('child', flush=True) or 7, what='t').result())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         stdin=subprocess.DEVNULL).stdout  # fmt: skip
    assert out == "before child\n7\n"


def test_one_core_is_a_reason_not_to_fork():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    code = (
        "import os\nfrom custseg.forked import can_fork\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\nprint(can_fork())"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = run.stdout.strip()
    assert out == "one core: the child would only take turns with this process"
    if len(os.sched_getaffinity(0)) >= 2:
        assert can_fork() is None


def test_a_forked_child_runs_its_tasks_in_process():
    """The parent's worker pool (its threads and pipes) does not exist in the child: there,
    `run_tasks` must not submit to it, whatever the size of the job."""
    from custseg.sweep import in_process_reason

    assert in_process_reason(8, rows=5000, workers=2) is None
    why = ForkedCall(lambda: in_process_reason(8, rows=5000, workers=2), what="t").result()
    assert why == f"a process forked from {os.getpid()}, whose worker pool is not this one's"


def test_fork_is_used_on_linux_only(monkeypatch):
    """On macOS system libraries are not fork-safe (Python's own multiprocessing spawns
    there): the CLI then imports on a thread instead."""
    monkeypatch.setattr(sys, "platform", "darwin")
    assert can_fork() == "fork() is used on Linux only, this is darwin"


def test_wait_for_imports_joins_the_importing_thread_and_never_itself():
    """`wait_for_imports` returns once the `IMPORTER` thread has ended; called on that thread
    itself it returns at once instead of joining itself."""
    import threading

    from custseg.forked import IMPORTER, wait_for_imports

    wait_for_imports()  # none running: returns
    go, seen = threading.Event(), []
    importer = threading.Thread(target=lambda: (go.wait(), wait_for_imports(), seen.append(1)),
                                name=IMPORTER)  # fmt: skip
    importer.start()
    threading.Thread(target=go.set).start()
    wait_for_imports()
    assert not importer.is_alive() and seen == [1]
