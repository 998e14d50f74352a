"""The K-Means sweep: SSE (inertia) for every k of a range, deterministic per (seed, k)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from custseg.errors import InputError

log = logging.getLogger(__name__)

Progress = Callable[[int, int, int, float], None]
"""Called after each k as `progress(done, total, k, sse)`."""


@dataclass(frozen=True)
class SweepResult:
    """SSE per k, in increasing k; `n_rows` is the number of rows the sweep was fit on."""

    ks: tuple[int, ...]
    sse: tuple[float, ...]
    n_rows: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "ks": list(self.ks),
            "sse": list(self.sse),
            "n_rows": self.n_rows,
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_points(cls, points: Iterable[dict[str, Any]], *, n_rows: int) -> SweepResult:
        """Merge `{"k", "sse"}` results (e.g. from mapped Airflow tasks), sorted by k."""
        rows = sorted(points, key=lambda p: int(p["k"]))
        ks = [int(p["k"]) for p in rows]
        if len(set(ks)) != len(ks):
            raise ValueError(f"sweep results repeat a k: {ks}")
        seconds = float(sum(p.get("seconds", 0.0) for p in rows))
        return cls(tuple(ks), tuple(float(p["sse"]) for p in rows), n_rows, seconds)


def kmeans_seed(seed: int, k: int) -> int:
    """The random state used for k, the same whichever batch or worker fits it."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def make_kmeans(k: int, *, seed: int, n_init: int) -> Any:
    """The K-Means estimator used for both the sweep and the final model."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=kmeans_seed(seed, k))


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


def sweep_k(
    X: np.ndarray,
    ks: Iterable[int],
    *,
    seed: int,
    n_init: int,
    progress: Progress | None = None,
) -> SweepResult:
    """Fit K-Means for each k on scaled `X` and record its SSE (inertia)."""
    ks = list(ks)
    start = time.perf_counter()
    sse: list[float] = []
    last_log = start
    for i, k in enumerate(ks, start=1):
        model = make_kmeans(k, seed=seed, n_init=n_init).fit(X)
        sse.append(float(model.inertia_))
        now = time.perf_counter()
        if progress is not None:
            progress(i, len(ks), k, sse[-1])
        if now - last_log >= 5.0 or i == len(ks):
            log.info(
                "sweep: k=%d done (%d/%d), %.1fs elapsed, %.2f k/s",
                k,
                i,
                len(ks),
                now - start,
                i / max(now - start, 1e-9),
            )
            last_log = now
    return SweepResult(tuple(ks), tuple(sse), int(X.shape[0]), time.perf_counter() - start)
