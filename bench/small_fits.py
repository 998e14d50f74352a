"""Benchmark: the k sweep (k = 1..50, n_init = 10) by scikit-learn against custseg.kmeans.

Both compute the same fits (custseg.kmeans replicates scikit-learn's k-means++ and Lloyd for
the same random state); the table prints their seconds, the ratio and the largest relative
SSE difference over k, per table size, one BLAS/OpenMP thread, each side timed in the same
process, interleaved. `custseg.kmeans.SMALL_ROWS` is set from it.

    .venv/bin/python bench/small_fits.py
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from threadpoolctl import threadpool_limits

from custseg.generate import make_clusters
from custseg.kmeans import fit_kmeans
from custseg.preprocess import scale_features
from custseg.sweep import kmeans_seed, make_kmeans


def sweep_seconds(X: np.ndarray, ks: range, numpy_side: bool) -> tuple[float, list[float]]:
    start = time.perf_counter()
    sse = []
    for k in ks:
        if numpy_side:
            sse.append(fit_kmeans(X, k, random_state=kmeans_seed(0, k), n_init=10).inertia)
        else:
            sse.append(float(make_kmeans(k, seed=0, n_init=10).fit(X).inertia_))
    return time.perf_counter() - start, sse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200,1000,2000,3000,5000")
    parser.add_argument("--dims", default="2,6")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print("| rows | features | scikit-learn s | custseg.kmeans s | ratio | max rel SSE diff |")
    print("|---|---|---|---|---|---|")
    with threadpool_limits(limits=1):
        make_kmeans(2, seed=0, n_init=1).fit(np.random.default_rng(0).uniform(size=(50, 2)))
        for n in (int(s) for s in args.sizes.split(",")):
            for d in (int(s) for s in args.dims.split(",")):
                X = scale_features(make_clusters(n, 5, dim=d, seed=1)[0], scaler="minmax")
                best = {True: np.inf, False: np.inf}
                sse = {}
                for _ in range(args.repeat):
                    for side in (False, True):
                        s, sse[side] = sweep_seconds(X, range(1, 51), side)
                        best[side] = min(best[side], s)
                diff = max(abs(a - b) / b for a, b in zip(sse[True], sse[False], strict=True))
                print(f"| {n} | {d} | {best[False]:.2f} | {best[True]:.2f} | "
                      f"{best[True] / best[False]:.2f} | {diff:.1e} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
