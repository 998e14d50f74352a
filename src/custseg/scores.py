"""Scores of a clustering, in NumPy: silhouette, Calinski-Harabasz, Davies-Bouldin, a BIC,
the adjusted Rand index, nearest-centre and nearest-neighbour distances, and the Beta tail.

They equal `sklearn.metrics`, `KMeans.predict`, `NearestNeighbors` and `scipy.stats.beta` to
rounding (tests/test_scores.py), without those libraries' per-call overhead: the choice of k
calls them about a hundred times on small tables (custseg.criteria).
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np


def label_scores(
    X: np.ndarray, labels: np.ndarray, sil_idx: np.ndarray, *, reuse: bool = False
) -> dict[str, float]:
    """Silhouette (on the rows `sil_idx`), Calinski-Harabasz and Davies-Bouldin of a labelling,
    as scikit-learn's `sklearn.metrics` computes them (NumPy: no per-call overhead); `reuse`
    keeps the silhouette's distances for the next labelling of the same rows."""
    lab = np.unique(labels, return_inverse=True)[1].ravel()
    counts = np.bincount(lab).astype(np.float64)
    centroids = np.stack([np.bincount(lab, weights=X[:, j]) for j in range(X.shape[1])], 1)
    centroids /= counts[:, None]
    out: dict[str, float | None] = {
        "calinski_harabasz": _calinski_harabasz(X, lab, counts, centroids),
        "davies_bouldin": _davies_bouldin(X, lab, counts, centroids),
        "silhouette": None,
    }
    sub = lab[sil_idx]
    if 2 <= len(np.unique(sub)) < len(sil_idx):
        out["silhouette"] = silhouette(X[sil_idx], sub, reuse=reuse)
    return out  # type: ignore[return-value]


def _calinski_harabasz(
    X: np.ndarray, lab: np.ndarray, counts: np.ndarray, centroids: np.ndarray
) -> float:
    """Between- over within-cluster dispersion, each per degree of freedom."""
    n, k = len(X), len(counts)
    between = float((counts * ((centroids - X.mean(axis=0)) ** 2).sum(axis=1)).sum())
    within = float(((X - centroids[lab]) ** 2).sum())
    return 1.0 if within == 0.0 else between * (n - k) / (within * (k - 1.0))


def _davies_bouldin(
    X: np.ndarray, lab: np.ndarray, counts: np.ndarray, centroids: np.ndarray
) -> float:
    """Mean over clusters of the worst (spread_i + spread_j) / distance(centroid_i, centroid_j)."""
    spread = np.bincount(lab, weights=np.sqrt(((X - centroids[lab]) ** 2).sum(axis=1))) / counts
    between = np.sqrt(((centroids[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2))
    if np.allclose(spread, 0) or np.allclose(between, 0):
        return 0.0
    between[between == 0] = np.inf
    return float(np.mean(np.max((spread[:, None] + spread) / between, axis=1)))


def silhouette(X: np.ndarray, lab: np.ndarray, *, chunk: int = 1024, reuse: bool = False) -> float:
    """Mean silhouette of labels 0..k-1 (rows of a one-row cluster count 0), with the
    distance matrix built a block of rows at a time. With `reuse`, the blocks are kept for
    the next labelling of the same rows (`_distance_blocks`): choosing k scores a dozen."""
    k = int(lab.max()) + 1
    counts = np.bincount(lab, minlength=k).astype(np.float64)
    onehot = np.zeros((len(X), k))
    onehot[np.arange(len(X)), lab] = 1.0
    total = 0.0
    blocks = _distance_blocks(X, chunk, reuse=reuse)
    for start, d in zip(range(0, len(X), chunk), blocks, strict=True):
        sums = d @ onehot
        own = lab[start : start + chunk]
        idx = np.arange(len(own))
        with np.errstate(divide="ignore", invalid="ignore"):
            a = sums[idx, own] / (counts[own] - 1)
            means = sums / counts
            means[idx, own] = np.inf
            b = means.min(axis=1)
            s = np.nan_to_num((b - a) / np.maximum(a, b))
        total += float(s.sum())
    return total / len(X)


KEEP_BYTES = 192 * 2**20
"""At most this much of distance blocks is kept (`silhouette(reuse=True)`): the sweep's
4,000-row silhouette sample (122 MiB), or the stability check's five 2,000-row resamples."""
_KEPT_BLOCKS: OrderedDict[bytes, list[np.ndarray]] = OrderedDict()


def _distance_blocks(X: np.ndarray, chunk: int, *, reuse: bool) -> Iterable[np.ndarray]:
    """The Euclidean distance matrix of X's rows, `chunk` rows at a time; with `reuse`, kept
    (the least recently used tables dropped beyond `KEEP_BYTES`)."""
    sq = np.einsum("ij,ij->i", X, X)
    blocks = (_distance_block(X, sq, start, chunk) for start in range(0, len(X), chunk))
    size = len(X) ** 2 * 8
    if not reuse or size > KEEP_BYTES:
        return blocks
    digest = hashlib.blake2b(X.tobytes(), digest_size=16).digest()
    key = digest + repr((X.shape, chunk)).encode()
    if key not in _KEPT_BLOCKS:
        kept = sum(block.nbytes for table in _KEPT_BLOCKS.values() for block in table)
        while kept + size > KEEP_BYTES:
            kept -= sum(block.nbytes for block in _KEPT_BLOCKS.popitem(last=False)[1])
        _KEPT_BLOCKS[key] = list(blocks)
    _KEPT_BLOCKS.move_to_end(key)
    return _KEPT_BLOCKS[key]


def _distance_block(X: np.ndarray, sq: np.ndarray, start: int, chunk: int) -> np.ndarray:
    """Distances from rows start..start+chunk to every row (`sq`: each row's squared norm),
    updated in place: memory, not arithmetic, bounds this."""
    rows = slice(start, start + chunk)
    d = X[rows] @ X.T
    d *= -2
    d += sq[rows, None]
    d += sq[None, :]
    d[np.arange(d.shape[0]), np.arange(start, start + d.shape[0])] = 0.0
    np.maximum(d, 0, out=d)
    return np.sqrt(d, out=d)


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    """The adjusted Rand index of two labellings (scikit-learn's pair-counting form)."""
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    ia, ib = ia.ravel(), ib.ravel()
    n = len(ia)
    table = np.bincount(ia * (ib.max() + 1) + ib).astype(np.int64)
    rows, cols = np.bincount(ia).astype(np.int64), np.bincount(ib).astype(np.int64)
    squares = int((table**2).sum())
    tp = squares - n
    fp = int((rows**2).sum()) - squares
    fn = int((cols**2).sum()) - squares
    tn = n * n - fp - fn - squares
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def bic_columns(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The columns BIC models (not constant, more than two values: one-hot categories are not
    Gaussian) and each one's variance floor, the variance of rounding to its smallest step
    (step^2 / 12; Sheppard): a cluster where a discrete column is constant would otherwise
    have zero variance and an unbounded likelihood, and BIC would split along the values."""
    cols, floors = [], []
    for j in range(X.shape[1]):
        v = np.unique(X[:, j])
        if len(v) > 2:
            cols.append(j)
            floors.append(max(float(np.diff(v).min()) ** 2 / 12, 1e-12))
    return np.array(cols, dtype=np.int64), np.array(floors)


def bic_diagonal(X: np.ndarray, labels: np.ndarray, floor: np.ndarray) -> float | None:
    """BIC (lower is better) of a labelling read as a Gaussian mixture, one diagonal covariance
    per cluster, hard assignment (as X-means scores a K-Means split; Pelleg & Moore 2000).

    Computed from the labelling alone (no fit). Unlike the SSE it rewards a k only when the
    likelihood gain beats log(n) per parameter (2d + 1 per cluster), so it keeps clusters that
    overlap or live in 10+ dimensions apart where the geometric indices fall back to k = 2.
    """
    n, d = X.shape
    if d == 0 or n < 2:
        return None
    _, inv, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    onehot = np.zeros((len(sizes), n))
    onehot[inv, np.arange(n)] = 1.0
    mean = onehot @ X / sizes[:, None]
    var = np.maximum(onehot @ (X * X) / sizes[:, None] - mean * mean, floor)
    loglik = float(sizes @ np.log(sizes / n) - 0.5 * sizes @ np.log(2 * math.pi * var).sum(1))
    loglik -= 0.5 * n * d
    params = len(sizes) - 1 + 2 * d * len(sizes)
    return -2.0 * loglik + params * math.log(n)


def nearest_distance(
    queries: np.ndarray, X: np.ndarray, *, skip: np.ndarray | None = None, chunk: int = 64
) -> np.ndarray:
    """Euclidean distance from each query to its nearest row of X (row `skip[i]` excluded
    for query i), exact, a block of queries at a time."""
    out = np.empty(len(queries))
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        dist = np.sqrt(((q[:, None, :] - X[None, :, :]) ** 2).sum(axis=2))
        if skip is not None:
            dist[np.arange(len(q)), skip[start : start + chunk]] = np.inf
        out[start : start + len(q)] = dist.min(axis=1)
    return out


def beta_sf(x: float, a: float, b: float) -> float:
    """P(B > x) for B ~ Beta(a, b) (the regularised incomplete beta function by its
    continued fraction, Numerical Recipes 6.4; SciPy's `beta.sf` to 1e-12 relative)."""
    if x <= 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    a, b, x = b, a, 1.0 - x  # sf(x; a, b) = I_{1-x}(b, a)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))  # fmt: skip
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float, *, steps: int = 10_000) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, steps):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # fmt: skip
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def nearest_center(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Each row's nearest centre, as `KMeans.predict` assigns it."""
    dist = X @ centers.T
    dist *= -2
    dist += np.einsum("kd,kd->k", centers, centers)[None, :]
    return dist.argmin(axis=1)
