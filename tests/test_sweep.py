import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from custseg.errors import InputError
from custseg.sweep import (
    SweepResult,
    auto_sample_size,
    heartbeat,
    k_range,
    kmeans_seed,
    sample_rows,
    sweep_k,
)


def test_k_range_is_inclusive_and_defaults_to_50():
    assert k_range(k_min=1, k_max=50, n_distinct=1000) == list(range(1, 51))


def test_k_range_clamps_to_distinct_points():
    assert k_range(k_min=2, k_max=50, n_distinct=7) == [2, 3, 4, 5, 6, 7]


def test_k_range_rejects_k_min_above_the_distinct_points():
    """The data-dependent check stays with the data; option bounds are `custseg.options`'."""
    with pytest.raises(InputError, match="k_min=9 > 4 distinct usable points: lower k_min"):
        k_range(k_min=9, k_max=20, n_distinct=4)


def test_sweep_is_deterministic_and_decreasing():
    X = np.random.default_rng(0).random((300, 2))
    a = sweep_k(X, range(1, 8), seed=3, n_init=4)
    b = sweep_k(X, range(1, 8), seed=3, n_init=4)
    assert a.sse == b.sse
    assert all(x >= y for x, y in zip(a.sse, a.sse[1:], strict=False))
    # k=1 SSE is the total sum of squares around the mean
    assert a.sse[0] == pytest.approx(((X - X.mean(0)) ** 2).sum())


def test_batches_merge_to_the_full_sweep():
    X = np.random.default_rng(1).random((200, 2))
    full = sweep_k(X, range(1, 10), seed=5, n_init=3)
    parts = [sweep_k(X, ks, seed=5, n_init=3) for ks in ([7, 8, 9], [1, 2, 3], [4, 5, 6])]
    points = [{"k": k, "sse": s} for p in parts for k, s in zip(p.ks, p.sse, strict=False)]
    merged = SweepResult.from_points(points, n_rows=200)
    assert merged.ks == full.ks and merged.sse == full.sse
    assert kmeans_seed(5, 3) != kmeans_seed(5, 4)


def test_sample_rows_depend_only_on_seed_and_size():
    a = sample_rows(1_000_000, size=10_000, seed=42)
    assert a is not None and len(a) == 10_000 and len(np.unique(a)) == 10_000
    assert np.all(np.diff(a) > 0) and a[-1] < 1_000_000
    np.testing.assert_array_equal(a, sample_rows(1_000_000, size=10_000, seed=42))
    assert not np.array_equal(a, sample_rows(1_000_000, size=10_000, seed=43))
    assert sample_rows(5_000, size=10_000, seed=42) is None  # small tables: every row
    assert sample_rows(5_000, size=None, seed=42) is None


def test_auto_sample_size_grows_with_k_and_features_and_caps_at_n():
    assert auto_sample_size(200, k_max=50, n_features=2) == 200
    assert auto_sample_size(10_000_000, k_max=50, n_features=2) == 5_000
    assert auto_sample_size(10_000_000, k_max=100, n_features=2) == 10_000
    assert auto_sample_size(10_000_000, k_max=50, n_features=6) == 15_000


class FailsAt:
    """A scorer that raises at one k (and says in which process)."""

    def __init__(self, k):
        self.k = k

    def __call__(self, k, labels, sse):
        if k == self.k:
            raise ValueError(f"no score for k={k} in pid {os.getpid()}")
        return {"used": float(len(np.unique(labels)))}


def _unpickled_in_a_worker():
    raise RuntimeError("this scorer cannot be unpickled")


class StaysHere(FailsAt):
    """A scorer that works here but kills any worker process it is sent to."""

    def __reduce__(self):
        return _unpickled_in_a_worker, ()


def pool_workers(psutil, pid):
    """The live worker processes (joblib's loky) below `pid`."""
    out = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if "loky.backend.popen_loky_posix" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:  # gone meanwhile
            pass
    return out


def _sweep_in_daemon(queue):
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("custseg.sweep").addHandler(handler)
    logging.getLogger("custseg.sweep").setLevel(logging.INFO)
    X = np.random.default_rng(2).random((1200, 3))
    result = sweep_k(X, range(1, 9), seed=7, n_init=2, workers=2, scorer=FailsAt(0))
    queue.put((result.sse, result.scores, records))


def test_sweep_same_for_any_number_of_workers(caplog):
    X = np.random.default_rng(2).random((1200, 3))
    calls = []
    one = sweep_k(X, range(1, 9), seed=7, n_init=2, workers=1, scorer=FailsAt(0))
    with caplog.at_level(logging.INFO, logger="custseg.sweep"):
        two = sweep_k(X, range(1, 9), seed=7, n_init=2, workers=2, scorer=FailsAt(0),
                      progress=lambda *a: calls.append(a))  # fmt: skip
    assert "sweep: 8 tasks on 2 worker processes" in caplog.text
    assert one.sse == two.sse and one.ks == tuple(range(1, 9))
    assert one.scores == two.scores and list(two.scores) == list(range(1, 9))
    assert two.scores[3] == {"used": 3.0}
    # progress runs here, once per k as results arrive
    assert [c[0] for c in calls] == list(range(1, 9)) and {c[1] for c in calls} == {8}
    assert {c[2]: c[3] for c in calls} == dict(zip(two.ks, two.sse, strict=True))


def test_sweep_runs_small_jobs_in_process(caplog):
    X = np.random.default_rng(2).random((1200, 2))
    with caplog.at_level(logging.INFO, logger="custseg.sweep"):
        few_ks = sweep_k(X, range(1, 4), seed=7, n_init=2, workers=2)
        few_rows = sweep_k(X[:900], range(1, 9), seed=7, n_init=2, workers=2)
    assert "running in-process (small job: 3 tasks, 1200 rows)" in caplog.text
    assert "running in-process (small job: 8 tasks, 900 rows)" in caplog.text
    assert "worker processes" not in caplog.text
    assert few_ks.sse == sweep_k(X, range(1, 4), seed=7, n_init=2, workers=1).sse
    assert few_rows.sse == sweep_k(X[:900], range(1, 9), seed=7, n_init=2, workers=1).sse


def test_sweep_falls_back_in_process_when_workers_cannot_start(caplog, monkeypatch):
    X = np.random.default_rng(2).random((1200, 3))
    one = sweep_k(X, range(1, 9), seed=7, n_init=2, workers=1, scorer=FailsAt(0))

    def no_pool(workers):
        raise OSError("no processes here")

    with caplog.at_level(logging.INFO, logger="custseg.sweep"):
        # a worker dies as it unpickles the scorer: its tasks run here instead
        died = sweep_k(X, range(1, 9), seed=7, n_init=2, workers=2, scorer=StaysHere(0))
        # loky reports the broken pool at submit or at collect time, as the machine's load
        # decides: either way the tasks that did not run here run in-process
        assert re.search(
            r"(worker processes failed|cannot start worker processes): "
            r"BrokenProcessPool",
            caplog.text,
        ), caplog.text
        assert "remaining tasks in-process" in caplog.text
        # a closure travels to the workers too (loky pickles with cloudpickle)
        closure = sweep_k(X, range(1, 9), seed=7, n_init=2, workers=2,
                          scorer=lambda k, labels, sse: FailsAt(0)(k, labels, sse))  # fmt: skip
        monkeypatch.setattr("custseg.sweep._executor", no_pool)
        caplog.clear()
        refused = sweep_k(X, range(1, 9), seed=7, n_init=2, workers=2, scorer=FailsAt(0))
    assert "cannot start worker processes: OSError('no processes here')" in caplog.text
    assert "running the 8 remaining tasks in-process" in caplog.text
    for other in (died, closure, refused):
        assert other.sse == one.sse and other.scores == one.scores


def test_sweep_in_a_daemonic_process_runs_in_process():
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    queue = ctx.Queue()
    child = ctx.Process(target=_sweep_in_daemon, args=(queue,), daemon=True)
    child.start()
    sse, scores, records = queue.get(timeout=120)
    child.join(30)
    assert child.exitcode == 0
    assert "sweep: running in-process (daemonic processes are not allowed to have children)" in (
        records
    )
    X = np.random.default_rng(2).random((1200, 3))
    here = sweep_k(X, range(1, 9), seed=7, n_init=2, workers=1, scorer=FailsAt(0))
    assert sse == here.sse and scores == here.scores


def test_an_error_in_a_fit_propagates_and_stop_workers_leaves_none():
    from custseg.sweep import stop_workers

    psutil = pytest.importorskip("psutil")
    X = np.random.default_rng(2).random((1200, 3))
    with pytest.raises(ValueError, match=r"no score for k=5 in pid (\d+)") as raised:
        sweep_k(X, range(1, 9), seed=7, n_init=2, workers=2, scorer=FailsAt(5))
    worker = int(raised.value.args[0].rsplit(" ", 1)[1])
    assert worker != os.getpid()
    # the workers stay warm for the next pool (the stability check after the sweep) ...
    assert worker in [p.pid for p in pool_workers(psutil, os.getpid())]
    again = sweep_k(X, range(1, 9), seed=7, n_init=2, workers=2, scorer=FailsAt(0))
    assert again.sse == sweep_k(X, range(1, 9), seed=7, n_init=2, workers=1).sse
    # ... until they are stopped (or idle for WORKER_IDLE_SECONDS, or the parent exits)
    stop_workers()
    assert pool_workers(psutil, os.getpid()) == [] and not psutil.pid_exists(worker)


def test_heartbeat_logs_while_running(caplog):
    import logging
    import time

    # wait on the condition (bounded), not on a sleep a loaded machine may not honour
    deadline = time.monotonic() + 60
    with caplog.at_level(logging.INFO, logger="custseg.sweep"), heartbeat("slow", every=0.05):
        while "slow: still running" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    assert "slow: still running" in caplog.text
    assert "slow: done in" in caplog.text


def test_workers_exit_when_their_parent_is_killed():
    import signal
    import subprocess
    import sys
    import time

    psutil = pytest.importorskip("psutil")
    code = ("import numpy as np; from custseg.sweep import sweep_k; "
            "sweep_k(np.random.default_rng(0).random((5000, 2)), range(1, 51), seed=1, "
            "n_init=10, workers=2)")  # fmt: skip

    child = subprocess.Popen([sys.executable, "-c", code])
    workers = []
    try:
        deadline = time.monotonic() + 180
        while len(workers) < 2 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.1)
            workers = pool_workers(psutil, child.pid)
        assert len(workers) == 2
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    gone, alive = psutil.wait_procs(workers, timeout=60)
    for p in alive:  # pragma: no cover - only when the test fails
        p.kill()
    assert alive == [] and len(gone) == 2


def test_workers_do_not_rerun_a_script_without_a_main_guard(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(
        "import logging, sys\n"
        "import numpy as np\n"
        "from custseg.sweep import sweep_k\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')\n"
        "print('script body runs', flush=True)\n"
        "X = np.random.default_rng(2).random((1200, 3))\n"
        "print(sweep_k(X, range(1, 9), seed=7, n_init=2, workers=2).sse)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, check=True).stdout  # fmt: skip
    assert out.count("script body runs") == 1, out
    assert "sweep: 8 tasks on 2 worker processes" in out and "in-process" not in out
    X = np.random.default_rng(2).random((1200, 3))
    assert str(sweep_k(X, range(1, 9), seed=7, n_init=2, workers=1).sse) in out


def test_start_workers_does_nothing_for_small_data():
    """`start_workers(rows=...)` starts workers only for data the pool would take."""
    code = (
        "from joblib.externals.loky import reusable_executor as r; from custseg.sweep import "
        "start_workers, PARALLEL_MIN_ROWS as m; start_workers(rows=m - 1, workers=2); "
        "print(r._executor is None); start_workers(rows=m, workers=2); "
        "print(r._executor is None)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_the_pool_uses_no_private_multiprocessing_internals():
    """The sweep's pool used to subclass CPython's private popen_forkserver.Popen._launch
    (which capped Python below 3.14); it is joblib's loky executor now."""
    code = ("import sys, numpy as np; from custseg.sweep import sweep_k; "
            "sweep_k(np.random.default_rng(0).random((1200, 2)), range(1, 9), seed=1, n_init=1, "
            "workers=2); print(sorted(m for m in sys.modules if m.startswith('multiprocessing.pop'"
            ")))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out.strip() == "[]"
    text = open(sys.modules["custseg.sweep"].__file__).read()
    assert "_launch" not in text and "popen_forkserver" not in text
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    project = open(os.path.join(root, "pyproject.toml")).read()
    assert 'requires-python = ">=3.11"' in project  # no 3.14 cap left
