"""The K-Means sweep: SSE (inertia) for every k of a range, deterministic per (seed, k)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from custseg.errors import InputError
from custseg.forked import forked_from, wait_for_imports
from custseg.kmeans import SMALL_ROWS, KMeansFit, fit_kmeans_tables
from custseg.sanitize import logger

log = logger(__name__)

Progress = Callable[[int, int, int, float], None]
"""Called after each k as `progress(done, total, k, sse)`."""
Scorer = Callable[[int, np.ndarray, float], dict[str, float | None]]
"""Called after each fit as `scorer(k, labels, sse)`; returns per-k criteria (numbers only)."""


@dataclass(frozen=True)
class SweepResult:
    """SSE per k, in increasing k; `n_rows` is the number of rows the sweep was fit on.

    `scores` holds the selection criteria the sweep computed per k (see custseg.criteria).
    """

    ks: tuple[int, ...]
    sse: tuple[float, ...]
    n_rows: int
    seconds: float
    scores: dict[int, dict[str, float | None]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "ks": list(self.ks),
            "sse": list(self.sse),
            "n_rows": self.n_rows,
            "seconds": round(self.seconds, 3),
            "scores": {str(k): v for k, v in self.scores.items()},
        }

    def points(self) -> list[dict[str, Any]]:
        """One small JSON dict per k (`k`, `sse`, `seconds`, criteria), as mapped tasks return."""
        each = round(self.seconds / max(len(self.ks), 1), 4)
        return [
            {"k": k, "sse": sse, "seconds": each, **self.scores.get(k, {})}
            for k, sse in zip(self.ks, self.sse, strict=True)
        ]

    @classmethod
    def from_points(cls, points: Iterable[dict[str, Any]], *, n_rows: int) -> SweepResult:
        """Merge `{"k", "sse"}` results (e.g. from mapped Airflow tasks), sorted by k."""
        rows = sorted(points, key=lambda p: int(p["k"]))
        ks = [int(p["k"]) for p in rows]
        if len(set(ks)) != len(ks):
            raise ValueError(f"sweep results repeat a k: {ks}")
        seconds = float(sum(p.get("seconds", 0.0) for p in rows))
        scores = {
            int(p["k"]): {n: v for n, v in p.items() if n not in ("k", "sse", "seconds")}
            for p in rows
        }
        scores = {k: v for k, v in scores.items() if v}
        return cls(tuple(ks), tuple(float(p["sse"]) for p in rows), n_rows, seconds, scores)


def kmeans_seed(seed: int, k: int) -> int:
    """The random state used for k, the same whichever batch or worker fits it."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def make_kmeans(k: int, *, seed: int, n_init: int) -> Any:
    """The K-Means estimator used for both the sweep and the final model."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=kmeans_seed(seed, k))


def fit_k(X: np.ndarray, k: int, *, seed: int, n_init: int) -> KMeansFit:
    """`make_kmeans(k, seed=seed, n_init=n_init).fit(X)`'s solution: computed by
    `custseg.kmeans` in NumPy on small tables (the same fit, without scikit-learn's per-call
    overhead), by scikit-learn above `SMALL_ROWS` rows."""
    return fit_k_tables([X], k, seeds=[seed], n_init=n_init)[0]


def fit_k_tables(
    tables: list[np.ndarray], k: int, *, seeds: list[int], n_init: int
) -> list[KMeansFit]:
    """`fit_k` of each table (all of one shape) with its own seed; small tables are fit
    together, their initialisations advancing as one array."""
    if len(tables[0]) <= SMALL_ROWS:
        states = [kmeans_seed(seed, k) for seed in seeds]
        return fit_kmeans_tables(tables, k, random_states=states, n_init=n_init)
    fits = []
    for X, seed in zip(tables, seeds, strict=True):
        model = make_kmeans(k, seed=seed, n_init=n_init).fit(X)
        fits.append(KMeansFit(model.cluster_centers_, model.labels_, float(model.inertia_),
                              int(model.n_iter_)))  # fmt: skip
    return fits


SAMPLE_MIN = 5_000
SAMPLE_PER_CLUSTER = 100
"""The automatic sweep sample: 100 rows per cluster of the largest k and per feature pair,
at least 5,000 rows (all rows when the table is smaller). The SSE curve of such a sample is
the full curve scaled by sample/rows up to sampling noise, so its elbow is the same;
tests/test_pipeline_sample.py and bench/scale.py check that on data with known segments."""


def auto_sample_size(n_rows: int, *, k_max: int, n_features: int) -> int:
    """Rows the sweep uses when `sample_size` is None: enough that every k up to k_max
    sees ~100 rows per cluster (per feature pair), at least 5,000; all rows if fewer."""
    wanted = max(SAMPLE_MIN, SAMPLE_PER_CLUSTER * k_max * max(1, (n_features + 1) // 2))
    return min(n_rows, wanted)


def sample_rows(n_rows: int, *, size: int | None, seed: int) -> np.ndarray | None:
    """Sorted row indices of the sweep sample, drawn from (seed, n_rows) alone, so every
    Airflow batch and the final fit draw the same rows; None means all rows."""
    if size is None or size >= n_rows:
        return None
    rng = np.random.default_rng(np.random.SeedSequence([seed, n_rows, 0x5EED]))
    return np.sort(rng.choice(n_rows, size=size, replace=False))


@contextlib.contextmanager
def heartbeat(what: str, *, every: float = 5.0) -> Iterator[None]:
    """Log `what: still running, Ns elapsed` every `every` seconds while the block runs,
    so long steps (the final fit on all rows) show progress in CLI and Airflow task logs."""
    done = threading.Event()
    start = time.perf_counter()

    def beat() -> None:
        while not done.wait(every):
            log.info("%s: still running, %.0fs elapsed", what, time.perf_counter() - start)

    thread = threading.Thread(target=beat, name="custseg-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        log.info("%s: done in %.1fs", what, time.perf_counter() - start)


def k_range(*, k_min: int, k_max: int, n_distinct: int) -> list[int]:
    """The ks to sweep: `k_min..k_max` inclusive (checked by `custseg.options`), k_max
    clamped to the distinct points of the data."""
    k_max = min(k_max, n_distinct)
    if k_min > k_max:
        raise InputError(
            f"k_min={k_min} > {n_distinct} distinct usable points: lower k_min or add data"
        )
    return list(range(k_min, k_max + 1))


def default_workers() -> int:
    """Worker processes for the sweep: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


PARALLEL_MIN_TASKS = 4
PARALLEL_MIN_ROWS = 1000
"""Below 4 tasks or 1,000 rows a pool costs more to start than it saves: 8 ks with criteria
on 1,000 rows take ~0.25 s in-process."""
WORKER_IDLE_SECONDS = 30
"""Workers outlive a pool's last task this long, so the sweep and the stability check that
follows it share warm workers."""
_THREAD_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def _executor(workers: int) -> Any:
    """joblib's loky executor with `workers` processes, reused while its settings are the
    same. Workers start as fresh interpreters (they do not re-import the caller's
    `__main__`), with BLAS/OpenMP limited to one thread (`_worker_init`)."""
    from joblib.externals.loky import get_reusable_executor

    return get_reusable_executor(
        max_workers=workers, timeout=WORKER_IDLE_SECONDS, initializer=_worker_init,
        initargs=(os.getpid(),), env=_THREAD_ENV,
    )  # fmt: skip


def _worker_init(parent: int) -> None:
    """Set up one worker process: scikit-learn loaded, BLAS/OpenMP at one thread each.

    Ctrl-C is left to the parent; a worker exits as soon as its parent dies (e.g. killed by
    a task timeout) instead of finishing fits nobody will read.
    """
    import signal

    from sklearn.cluster import KMeans  # noqa: F401 - load OpenMP before limiting it
    from threadpoolctl import threadpool_limits

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threadpool_limits(limits=1)

    def exit_with_parent() -> None:
        while True:
            time.sleep(0.5)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(1)

    threading.Thread(target=exit_with_parent, name="custseg-parent-watch", daemon=True).start()


def _warm() -> None:
    """Import what the tasks need (run on each worker as soon as the pool starts)."""
    import sklearn.metrics  # noqa: F401

    import custseg.criteria  # noqa: F401


def start_workers(*, rows: int | None = None, workers: int | None = None) -> None:
    """Start the worker processes now, without waiting for them, so their start-up (about a
    second of imports) overlaps the caller's own work. Nothing is started for data too
    small for `run_tasks` to use workers on, or where processes cannot be started."""
    if rows is not None and rows < PARALLEL_MIN_ROWS:
        return
    n = workers or default_workers()
    if n < 2 or _no_workers_reason() is not None:
        return
    try:
        pool = _executor(n)
        for _ in range(n):
            pool.submit(_warm)
    except Exception as exc:  # noqa: BLE001 - run_tasks falls back and says why
        log.info("worker processes not started early: %r", exc)


def stop_workers() -> None:
    """Stop the worker processes now (they also stop when idle for WORKER_IDLE_SECONDS, or
    when this process exits)."""
    reusable_executor = sys.modules.get("joblib.externals.loky.reusable_executor")
    if reusable_executor is not None and reusable_executor._executor is not None:
        reusable_executor._executor.shutdown(wait=True, kill_workers=True)


def _no_workers_reason() -> str | None:
    """Why this process cannot start worker processes, or None when it can."""
    import multiprocessing

    if multiprocessing.current_process().daemon:
        return "daemonic processes are not allowed to have children"
    parent = forked_from()
    if parent is not None:
        return f"a process forked from {parent}, whose worker pool is not this one's"
    return None


def in_process_reason(n_tasks: int, *, rows: int, workers: int | None = None) -> str | None:
    """Why `run_tasks` runs `n_tasks` tasks on `rows` rows in this process, or None when it
    uses worker processes."""
    why = _no_workers_reason()  # the first reason that applies is the one logged
    if why is None and max(1, min(workers or default_workers(), n_tasks)) == 1:
        why = "1 worker"
    elif why is None and (n_tasks < PARALLEL_MIN_TASKS or rows < PARALLEL_MIN_ROWS):
        why = f"small job: {n_tasks} tasks, {rows} rows"
    return why


def _run_chunk(task: Callable[[Any, Any], Any], state: Any, items: list[Any]) -> list[Any]:
    """Run `task(state, item)` for a chunk of items in one worker."""
    return [task(state, item) for item in items]


def _chunks(items: list[Any], n: int) -> list[list[int]]:
    """Item positions split into about 4 chunks per worker, dealt round-robin in order, so
    the first (largest) items start first and every worker gets a mix: `state` is sent
    once per chunk rather than once per item."""
    count = max(1, min(len(items), 4 * n))
    return [list(range(i, len(items), count)) for i in range(count)]


def run_tasks(
    task: Callable[[Any, Any], Any],
    state: Any,
    items: list[Any],
    *,
    done: Callable[[Any, Any], None],
    workers: int | None,
    rows: int,
    what: str,
) -> None:
    """Call `task(state, item)` for every item, calling `done(item, result)` here as each ends.

    Runs on up to `workers` processes (default: the usable cores) when there is enough work,
    else, or when processes cannot be started (e.g. inside a daemonic process), in this
    process with a log line saying why. Either way BLAS/OpenMP run one thread per task, so
    results are the same. `task` must be a module-level function and `state` picklable.
    """
    n = max(1, min(workers or default_workers(), len(items)))
    left = dict(enumerate(items))
    why = in_process_reason(len(items), rows=rows, workers=n)
    if why is None:
        log.info("%s: %d tasks on %d worker processes", what, len(items), n)
        failed = _run_in_pool(task, state, items, left, done=done, workers=n)
        if failed is None:
            return
        log.warning("%s: %s; running the %d remaining tasks in-process", what, failed, len(left))
    else:
        log.info("%s: running in-process (%s)", what, why)
    if rows > SMALL_ROWS:  # scikit-learn fits: load its OpenMP so that the limit reaches it
        if getattr(sys.modules.get("sklearn.cluster"), "KMeans", None) is None:
            wait_for_imports()  # a thread may be importing it (custseg.pipeline)
        from sklearn.cluster import KMeans  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        for i in list(left):
            done(left.pop(i), task(state, items[i]))


def _run_in_pool(
    task: Callable[[Any, Any], Any],
    state: Any,
    items: list[Any],
    left: dict[int, Any],
    *,
    done: Callable[[Any, Any], None],
    workers: int,
) -> str | None:
    """Run the tasks in `left` on worker processes, removing each when done; None when all
    ran, else why the pool failed (the tasks still in `left` did not run)."""
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    try:
        pool = _executor(workers)
        chunks = _chunks(items, workers)
        futures = {
            pool.submit(_run_chunk, task, state, [items[i] for i in chunk]): chunk
            for chunk in chunks
        }
    except Exception as exc:  # noqa: BLE001 - e.g. `state` does not pickle
        return f"cannot start worker processes: {exc!r}"
    try:
        for future in as_completed(futures):
            for i, result in zip(futures[future], future.result(), strict=True):
                done(left.pop(i), result)  # a task's own error propagates as it is
    except (BrokenProcessPool, TerminatedWorkerError) as exc:  # a worker died
        for future in futures:
            future.cancel()
        return f"worker processes failed: {exc!r}"
    return None


def sweep_k(
    X: np.ndarray,
    ks: Iterable[int],
    *,
    seed: int,
    n_init: int,
    progress: Progress | None = None,
    workers: int | None = None,
    scorer: Scorer | None = None,
) -> SweepResult:
    """Fit K-Means for each k on scaled `X` and record its SSE (inertia) and `scorer`'s criteria.

    The ks run on `workers` processes (default: the usable cores; see `run_tasks`), largest
    k first, each single-threaded: sklearn's K-Means on a sample this size is bound by the
    GIL, so threads would not help. Each k has its own random state, so the result is the
    same for any number of workers or batches. `scorer` must pickle (it goes to each worker).
    """
    ks = list(ks)
    start = time.perf_counter()
    sse: dict[int, float] = {}
    scores: dict[int, dict[str, float | None]] = {}
    last_log = start

    def done(k: int, result: tuple[float, dict[str, float | None]]) -> None:
        nonlocal last_log
        sse[k], found = result
        if found:
            scores[k] = found
        now = time.perf_counter()
        if progress is not None:
            progress(len(sse), len(ks), k, sse[k])
        if now - last_log >= 5.0 or len(sse) == len(ks):
            log.info(
                "sweep: %d of %d ks done (last: k=%d), %.1fs elapsed, %.2f k/s, %d rows",
                len(sse), len(ks), k, now - start, len(sse) / max(now - start, 1e-9), len(X),
            )  # fmt: skip
            last_log = now

    # largest k first: they take longest, so the workers finish together
    run_tasks(_fit_k, (X, seed, n_init, scorer), sorted(ks, reverse=True), done=done,
              workers=workers, rows=len(X), what="sweep")  # fmt: skip
    seconds = time.perf_counter() - start
    scores = {k: scores[k] for k in ks if k in scores}  # in k order, however the ks finished
    return SweepResult(tuple(ks), tuple(sse[k] for k in ks), int(X.shape[0]), seconds, scores)


def _fit_k(
    state: tuple[np.ndarray, int, int, Scorer | None], k: int
) -> tuple[float, dict[str, float | None]]:
    """One k of the sweep: the fit's SSE and criteria (in a worker or in this process)."""
    X, seed, n_init, scorer = state
    fit = fit_k(X, k, seed=seed, n_init=n_init)
    found = scorer(k, fit.labels, fit.inertia) if scorer is not None else {}
    return fit.inertia, found
