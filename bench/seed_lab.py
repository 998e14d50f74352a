"""The seed lab's algorithm, as its own script: the baseline of `bench/mall.py`.

pandas read, MinMax scaling of income and spending, K-Means (random init, n_init=10) for
k = 1..50 recording SSE, KneeLocator on the curve, the final fit at the knee, saved (with
skops: the lab pickled, which this project never does; the cost is alike).
Usage: `python bench/seed_lab.py CSV OUT_DIR`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import skops.io as sio
from kneed import KneeLocator
from sklearn.cluster import KMeans
from sklearn.preprocessing import MinMaxScaler

FEATURES = ["Annual Income (k$)", "Spending Score (1-100)"]


def main(csv: str, out: str) -> None:
    frame = pd.read_csv(csv)
    X = MinMaxScaler().fit_transform(frame[FEATURES])
    sse = []
    for k in range(1, 51):
        sse.append(KMeans(n_clusters=k, init="random", n_init=10, max_iter=300,
                          random_state=42).fit(X).inertia_)  # fmt: skip
    knee = KneeLocator(range(1, 51), sse, curve="convex", direction="decreasing").elbow or 5
    model = KMeans(n_clusters=knee, init="random", n_init=10, random_state=42).fit(X)
    Path(out).mkdir(parents=True, exist_ok=True)
    sio.dump(model, Path(out) / "model.skops")
    print(f"k={knee}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
