"""Synthetic customers in the Mall Customers layout, with a ground-truth segment column."""

from __future__ import annotations

import numpy as np
import pandas as pd

from custseg.errors import InputError
from custseg.sanitize import logger

log = logger(__name__)

MALL_CENTERS = np.array([[55, 50], [87, 82], [88, 17], [26, 79], [26, 20]], dtype=float)
"""Income (k$) and spending score of the five classic Mall segments."""
INCOME_RANGE = (15.0, 140.0)
SCORE_RANGE = (1.0, 100.0)


def segment_centers(k: int, *, seed: int) -> np.ndarray:
    """k well-separated (income, score) centers; the Mall's five when k == 5."""
    if k == 5:
        return MALL_CENTERS.copy()
    rng = np.random.default_rng(seed)
    lo = np.array([INCOME_RANGE[0] + 10, SCORE_RANGE[0] + 8])
    hi = np.array([INCOME_RANGE[1] - 10, SCORE_RANGE[1] - 8])
    best, best_gap = None, -1.0
    for _ in range(200):
        cand = rng.uniform(lo, hi, size=(k, 2))
        if k == 1:
            return cand
        d = np.sqrt(((cand[:, None] - cand[None]) ** 2).sum(-1) + np.eye(k) * 1e9)
        gap = float(d.min())
        if gap > best_gap:
            best, best_gap = cand, gap
    return best


def zero_padded_ids(rows: int) -> pd.Series:
    """Ids `0001..rows` (at least 4 digits) as an Arrow-backed string column, built from
    digit arithmetic straight into Arrow buffers (no Python strings: 10M ids in ~0.2 s)."""
    import pyarrow as pa

    width = max(4, len(str(rows)))
    numbers = np.arange(1, rows + 1, dtype=np.int64)
    chars = np.empty((rows, width), dtype=np.uint8)
    for pos in range(width - 1, -1, -1):
        numbers, digit = np.divmod(numbers, 10)
        chars[:, pos] = digit + ord("0")
    offsets = np.arange(0, (rows + 1) * width, width, dtype=np.int64)
    array = pa.LargeStringArray.from_buffers(
        rows, pa.py_buffer(offsets), pa.py_buffer(chars.reshape(-1))
    )
    return pd.Series(pd.arrays.ArrowExtensionArray(array.cast(pa.string())), name="CustomerID")


def generate_customers(rows: int, *, segments: int = 5, seed: int = 0) -> pd.DataFrame:
    """`rows` customers drawn around `segments` centers, vectorised (10M rows in seconds)."""
    if rows < 1:
        raise InputError(f"rows={rows} < 1")
    if not 1 <= segments <= 50:
        raise InputError(f"segments={segments} must be in 1..50")
    rng = np.random.default_rng(seed)
    centers = segment_centers(segments, seed=seed)
    spread = 0.22 * np.sqrt((np.ptp(MALL_CENTERS, axis=0) ** 2).sum()) / max(segments, 5) ** 0.5
    seg = rng.integers(0, segments, size=rows)
    pts = centers[seg] + rng.normal(0.0, 1.0, size=(rows, 2)) * spread * np.array([0.9, 1.1])
    income = np.clip(np.rint(pts[:, 0]), *INCOME_RANGE)
    score = np.clip(np.rint(pts[:, 1]), *SCORE_RANGE)
    age = np.clip(np.rint(rng.normal(38, 12, size=rows)), 18, 70)
    genre = pd.Categorical.from_codes(
        (rng.random(rows) >= 0.56).astype(np.int8), categories=["Female", "Male"]
    )
    return pd.DataFrame(
        {
            "CustomerID": zero_padded_ids(rows),
            "Genre": genre,
            "Age": age.astype(np.int64),
            "Annual Income (k$)": income.astype(np.int64),
            "Spending Score (1-100)": score.astype(np.int64),
            "segment": seg.astype(np.int64),
        }
    )


def write_table(frame: pd.DataFrame, path: str) -> None:
    """Write CSV (`.csv`, `.csv.gz`) or Parquet (`.parquet`) with pyarrow, by extension."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    # CSV writers need plain strings, not dictionary-encoded categoricals
    table = pa.Table.from_arrays(
        [c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in table.columns],
        names=table.column_names,
    )
    if path.endswith(".parquet"):
        pq.write_table(table, path)
    elif path.endswith(".csv.gz"):
        with pa.output_stream(path, compression="gzip") as out:
            pacsv.write_csv(table, out, pacsv.WriteOptions(quoting_style="none"))
    else:
        pacsv.write_csv(table, path, pacsv.WriteOptions(quoting_style="none"))
    log.info("wrote %d rows to %s", len(frame), path)


def make_clusters(
    n: int,
    k: int,
    *,
    dim: int = 2,
    imbalance: float = 1.0,
    elongation: float = 1.0,
    separation: float = 3.0,
    noise: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """`n` points in `k` Gaussian clusters with known labels, for benchmarking the choice of k.

    `k = 0` gives uniform noise (no structure; labels all -1). Centers are spread in a
    10-wide cube; `separation` is the closest centers' distance in cluster standard
    deviations (along the long axis when `elongation` > 1, each cluster randomly rotated).
    Sizes fall geometrically from the largest to the smallest cluster by the factor
    `imbalance`; a `noise` fraction of the rows is uniform over the bounding box (label -1).
    """
    if n < 1 or k < 0 or dim < 1:
        raise InputError(f"make_clusters: n={n}, k={k}, dim={dim} must be positive")
    rng = np.random.default_rng(seed)
    if k == 0:
        return rng.uniform(0.0, 10.0, size=(n, dim)), np.full(n, -1, dtype=np.int64)
    n_noise = int(round(noise * n))
    n_clustered = n - n_noise
    best, gap = np.zeros((1, dim)), 10.0
    if k > 1:
        best_gap = -1.0
        for _ in range(300):
            cand = rng.uniform(0.0, 10.0, size=(k, dim))
            d = np.sqrt(((cand[:, None] - cand[None]) ** 2).sum(-1) + np.eye(k) * 1e9)
            if d.min() > best_gap:
                best, best_gap = cand, float(d.min())
        gap = best_gap
    sigma = gap / separation
    sizes = cluster_sizes(n_clustered, k, imbalance=imbalance, smallest=2)
    points, labels = [], []
    for c in range(k):
        z = rng.normal(size=(sizes[c], dim))
        if elongation > 1.0:
            axes = np.full(dim, 1.0 / np.sqrt(elongation))
            axes[0] = 1.0
            q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
            z = (z * axes) @ q.T
        points.append(best[c] + z * sigma)
        labels.append(np.full(sizes[c], c))
    X = np.concatenate(points)
    y = np.concatenate(labels)
    if n_noise:
        lo, hi = X.min(axis=0), X.max(axis=0)
        X = np.concatenate([X, rng.uniform(lo, hi, size=(n_noise, dim))])
        y = np.concatenate([y, np.full(n_noise, -1)])
    order = rng.permutation(len(X))
    return X[order], y[order].astype(np.int64)


def cluster_sizes(n: int, k: int, *, imbalance: float, smallest: int) -> np.ndarray:
    """`n` rows shared by `k` clusters falling geometrically by the factor `imbalance` from the
    largest to the smallest, each at least `smallest` (the rounding goes to the largest)."""
    weights = imbalance ** (-np.arange(k) / max(k - 1, 1))
    sizes = np.maximum(smallest, np.floor(weights / weights.sum() * n)).astype(int)
    sizes[0] += n - sizes.sum()
    return sizes


def packed_centers(
    rng: np.random.Generator, sd: np.ndarray, *, dim: int, separation: float, latent: int | None
) -> np.ndarray:
    """Random centers for clusters of standard deviations `sd`, every pair at least
    `separation` times their mean deviation apart, in the smallest cube found that holds
    them (grown 1% per failed draw), in a random `latent`-dimensional subspace if given."""
    k, free = len(sd), latent or dim
    span = separation * k ** (1 / free)
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:, :free]
    need = separation * (sd[:, None] + sd[None]) / 2 - np.eye(k) * 1e9
    while True:
        centers = rng.uniform(0.0, span, size=(k, free)) @ basis.T
        if (np.sqrt(((centers[:, None] - centers[None]) ** 2).sum(-1)) >= need).all():
            return centers
        span *= 1.01


def make_blobs(
    n: int,
    k: int,
    *,
    dim: int,
    separation: float,
    spread: float = 2.0,
    imbalance: float = 1.0,
    noise: float = 0.0,
    latent: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """`n` points in `k` Gaussian clusters, harder than `make_clusters` (bench/choose_k.py's
    issue-16 families): each cluster its own standard deviation (up to `spread` times
    another's), centers packed as close as `separation` allows (`packed_centers`), sizes
    falling geometrically by `imbalance`, a `noise` share uniform over the box widened 20%
    on each side (outliers that squeeze the clusters after MinMax; label -1), and with
    `latent` the centers in a subspace (real tables: few directions carry the classes)."""
    rng = np.random.default_rng([seed, 16])
    sd = rng.uniform(1.0, spread, size=k)
    sd /= sd.mean()
    centers = packed_centers(rng, sd, dim=dim, separation=separation, latent=latent)
    sizes = cluster_sizes(n - int(round(noise * n)), k, imbalance=imbalance, smallest=3)
    parts = zip(centers, sizes, sd, strict=True)
    X = np.concatenate([c + rng.normal(size=(m, dim)) * s for c, m, s in parts])
    y = np.repeat(np.arange(k), sizes)
    if noise:
        lo, hi = X.min(axis=0), X.max(axis=0)
        pad = 0.2 * (hi - lo)
        X = np.concatenate([X, rng.uniform(lo - pad, hi + pad, size=(n - len(X), dim))])
        y = np.concatenate([y, np.full(n - len(y), -1)])
    order = rng.permutation(len(X))
    return X[order], y[order].astype(np.int64)
