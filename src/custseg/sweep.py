"""The K-Means sweep: SSE (inertia) for every k of a range, deterministic per (seed, k)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from custseg.errors import InputError

log = logging.getLogger(__name__)

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
    """The ks to sweep: `k_min..k_max` inclusive, k_max clamped to the distinct points."""
    if k_min < 1:
        raise InputError(f"k_min={k_min} < 1: K-Means needs at least one cluster")
    if k_min > k_max:
        raise InputError(f"k_min={k_min} > k_max={k_max}: swap them or widen the range")
    if k_max > n_distinct:
        log.warning(
            "k_max=%d > %d distinct points: clamping k_max to %d", k_max, n_distinct, n_distinct
        )
        k_max = n_distinct
    if k_min > k_max:
        raise InputError(
            f"k_min={k_min} > {n_distinct} distinct usable points: lower k_min or add data"
        )
    return list(range(k_min, k_max + 1))


def default_workers() -> int:
    """Worker threads for the sweep: the cores this process may use."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


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

    The ks run on `workers` threads (default: the usable cores), each k single-threaded
    (OpenMP/BLAS limited to 1 thread with threadpoolctl): sklearn's Lloyd loop releases the
    GIL, so this uses every core without oversubscribing them. Each k has its own random
    state, so the result is the same for any number of workers or batches.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from sklearn.cluster import KMeans  # noqa: F401 - load OpenMP before limiting it
    from threadpoolctl import threadpool_limits

    ks = list(ks)
    workers = max(1, min(workers or default_workers(), len(ks) or 1))
    start = time.perf_counter()
    sse: dict[int, float] = {}
    scores: dict[int, dict[str, float | None]] = {}
    last_log = start

    def fit(k: int) -> tuple[float, dict[str, float | None]]:
        model = make_kmeans(k, seed=seed, n_init=n_init).fit(X)
        found = scorer(k, model.labels_, float(model.inertia_)) if scorer is not None else {}
        return float(model.inertia_), found

    with threadpool_limits(limits=1), ThreadPoolExecutor(workers) as pool:
        # largest k first: they take longest, so the threads finish together
        futures = {pool.submit(fit, k): k for k in sorted(ks, reverse=True)}
        for i, future in enumerate(as_completed(futures), start=1):
            k = futures[future]
            sse[k], found = future.result()
            if found:
                scores[k] = found
            now = time.perf_counter()
            if progress is not None:
                progress(i, len(ks), k, sse[k])
            if now - last_log >= 5.0 or i == len(ks):
                log.info(
                    "sweep: k=%d done (%d/%d), %.1fs elapsed, %.2f k/s, %d rows, %d threads",
                    k, i, len(ks), now - start, i / max(now - start, 1e-9), len(X), workers,
                )  # fmt: skip
                last_log = now
    seconds = time.perf_counter() - start
    return SweepResult(tuple(ks), tuple(sse[k] for k in ks), int(X.shape[0]), seconds, scores)
