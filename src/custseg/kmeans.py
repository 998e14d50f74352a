"""K-Means on small tables in NumPy, batched over initialisations: the same fits as
scikit-learn's `KMeans(init="k-means++", algorithm="lloyd")` for the same random state.

On a few thousand rows scikit-learn spends most of a fit in per-call overhead (822
k-means++ initialisations of 2 to 50 steps for the Mall sweep), not in arithmetic. Here the
`n_init` initialisations of one k (or the fits of several small tables, as the gap's
references and the stability resamples) advance together as one array. The random numbers
are drawn from `numpy.random.RandomState(random_state)` in scikit-learn's order, and every
step follows `sklearn.cluster._kmeans` (greedy k-means++ with 2 + ln k trials, Lloyd with
the same tolerance, empty-cluster relocation and final E-step, the same choice of the best
initialisation), so centres, labels and inertia agree with scikit-learn's up to rounding;
`tests/test_kmeans.py` checks every k of the Mall sweep and of generated data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SMALL_ROWS = 1500
"""Tables up to this many rows are fit here; larger ones by scikit-learn, whose compiled
Lloyd wins once the arithmetic outweighs the call overhead: the Mall sweep takes 0.20x
scikit-learn's time, 1,000 rows 0.7x, 2,000 rows 1.1-1.3x (bench/small_fits.py)."""


@dataclass(frozen=True)
class KMeansFit:
    """One K-Means solution: centres (k, d) in the data's units, labels, inertia (SSE)."""

    centers: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int


def fit_kmeans(X: np.ndarray, k: int, *, random_state: int, n_init: int) -> KMeansFit:
    """The best of `n_init` k-means++ + Lloyd fits of `X` at `k`, as scikit-learn's KMeans."""
    return fit_kmeans_tables([X], k, random_states=[random_state], n_init=n_init)[0]


def fit_kmeans_tables(
    tables: list[np.ndarray],
    k: int,
    *,
    random_states: list[int],
    n_init: int,
    max_iter: int = 300,
    tol: float = 1e-4,
) -> list[KMeansFit]:
    """One fit per table (tables of one shape), table i seeded by `random_states[i]`, all
    initialisations of all tables advancing together."""
    tables = [np.ascontiguousarray(t, dtype=np.float64) for t in tables]
    T, n = len(tables), tables[0].shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"n_samples={n} should be >= n_clusters={k}")
    mean = np.stack([t.mean(axis=0) for t in tables])  # per table, as scikit-learn centres
    tols = np.array([np.var(t, axis=0).mean() * tol for t in tables])
    Xc = np.stack(tables) - mean[:, None, :]
    owner = np.repeat(np.arange(T), n_init)  # batch member -> table
    first, draws = _draws(random_states, n, k, n_init)
    centers = _plusplus(Xc, owner, first, draws)
    centers, labels, inertia, n_iter = _lloyd(Xc, owner, centers, tols[owner], max_iter)
    fits = []
    for t in range(T):
        i = _best(labels, inertia, range(t * n_init, (t + 1) * n_init))
        fits.append(KMeansFit(centers[i] + mean[t], labels[i], float(inertia[i]), int(n_iter[i])))
    return fits


def _draws(random_states: list[int], n: int, k: int, n_init: int) -> tuple[np.ndarray, np.ndarray]:
    """Each initialisation's first centre and its (k - 1, trials) uniform draws, taken from
    one RandomState per table in scikit-learn's order (initialisation after initialisation)."""
    trials = 2 + int(np.log(k))
    w = np.ones(n)
    first = np.empty(len(random_states) * n_init, dtype=np.intp)
    draws = np.empty((len(first), k - 1, trials))
    for t, state in enumerate(random_states):
        rs = np.random.RandomState(state)
        for i in range(t * n_init, (t + 1) * n_init):
            first[i] = rs.choice(n, p=w / w.sum())
            draws[i] = rs.uniform(size=(k - 1, trials))
    return first, draws


def _sq_distances(C: np.ndarray, X: np.ndarray, x_sq: np.ndarray) -> np.ndarray:
    """Squared distances (B, m, n) from centres C (B, m, d) to rows X (B, n, d), as
    scikit-learn's `_euclidean_distances(..., squared=True)` computes them."""
    out = -2 * np.matmul(C, np.ascontiguousarray(X.transpose(0, 2, 1)))
    out += np.einsum("bmd,bmd->bm", C, C)[:, :, None]
    out += x_sq[:, None, :]
    return np.maximum(out, 0, out=out)


def _plusplus(X: np.ndarray, owner: np.ndarray, first: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Greedy k-means++ seeding of every batch member at once: centres (B, k, d)."""
    B = len(owner)
    k = draws.shape[1] + 1
    rows = X[owner]
    x_sq = np.einsum("bnd,bnd->bn", rows, rows)
    members = np.arange(B)
    chosen = np.empty((B, k), dtype=np.intp)
    chosen[:, 0] = first
    closest = _sq_distances(rows[members, first][:, None, :], rows, x_sq)[:, 0, :]
    ones = np.ones(closest.shape[1])
    potential = closest @ ones  # a BLAS dot, as scikit-learn sums the potential
    n = rows.shape[1]
    for c in range(1, k):
        targets = draws[:, c - 1, :] * potential[:, None]
        cum = np.cumsum(closest, axis=1)
        cand = (cum[:, None, :] < targets[:, :, None]).sum(axis=2)  # searchsorted, per member
        np.minimum(cand, n - 1, out=cand)
        dist = _sq_distances(rows[members[:, None], cand], rows, x_sq)
        np.minimum(closest[:, None, :], dist, out=dist)
        pots = dist @ ones
        best = pots.argmin(axis=1)
        potential, closest = pots[members, best], dist[members, best]
        chosen[:, c] = cand[members, best]
    return rows[members[:, None], chosen]


def _assign(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Nearest centre of every row (B, n): argmin of |c|^2 - 2 x.c, first on ties."""
    dist = np.matmul(X, np.ascontiguousarray(C.transpose(0, 2, 1)))
    dist *= -2
    dist += np.einsum("bkd,bkd->bk", C, C)[:, None, :]
    return dist.argmin(axis=2)


def _sums(X: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums of rows (B, k, d) and counts (B, k)."""
    B, n, d = X.shape
    flat = (labels + (np.arange(B) * k)[:, None]).ravel()
    counts = np.bincount(flat, minlength=B * k).astype(np.float64).reshape(B, k)
    sums = np.empty((B, k, d))
    for j in range(d):
        sums[:, :, j] = np.bincount(flat, weights=X[:, :, j].ravel(), minlength=B * k).reshape(B, k)
    return sums, counts


def _relocate(
    X: np.ndarray, old: np.ndarray, sums: np.ndarray, counts: np.ndarray, labels: np.ndarray
) -> None:
    """scikit-learn's empty-cluster rule, in place: each empty cluster takes the row farthest
    from its centre (rows taken out of their old cluster's sums)."""
    for b in np.flatnonzero((counts == 0).any(axis=1)):
        empty = np.flatnonzero(counts[b] == 0)
        dist = ((X[b] - old[b][labels[b]]) ** 2).sum(axis=1)
        far = np.argpartition(dist, -len(empty))[: -len(empty) - 1 : -1]
        for new, row in zip(empty, far, strict=True):
            was = labels[b, row]
            sums[b, was] -= X[b, row]
            sums[b, new] = X[b, row]
            counts[b, new] = 1.0
            counts[b, was] -= 1.0


def _lloyd(
    X: np.ndarray, owner: np.ndarray, centers: np.ndarray, tols: np.ndarray, max_iter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lloyd iterations of every batch member until each converges as in scikit-learn
    (labels unchanged, or centre shift within tolerance): centres, labels, inertia, iters."""
    B, k, _ = centers.shape
    n = X.shape[1]
    labels = np.full((B, n), -1, dtype=np.intp)
    strict = np.zeros(B, dtype=bool)
    n_iter = np.zeros(B, dtype=np.intp)
    active = np.arange(B)
    for it in range(max_iter):
        rows, old = X[owner[active]], centers[active]
        new_labels = _assign(rows, old)
        sums, counts = _sums(rows, new_labels, k)
        if not counts.all():
            _relocate(rows, old, sums, counts, new_labels)
        filled = counts > 0
        scale = 1.0 / np.where(filled, counts, 1.0)  # scikit-learn multiplies by 1/count
        new = np.where(filled[:, :, None], sums * scale[:, :, None], sums)
        shift = (np.sqrt(((new - old) ** 2).sum(axis=2)) ** 2).sum(axis=1)
        same = (new_labels == labels[active]).all(axis=1)
        centers[active], labels[active], n_iter[active] = new, new_labels, it + 1
        strict[active[same]] = True
        active = active[~(same | (shift <= tols[active]))]
        if not len(active):
            break
    loose = np.flatnonzero(~strict)
    if len(loose):
        labels[loose] = _assign(X[owner[loose]], centers[loose])
    diff = X[owner] - np.take_along_axis(centers, labels[:, :, None], axis=1)
    return centers, labels, np.einsum("bnd,bnd->b", diff, diff), n_iter


def _best(labels: np.ndarray, inertia: np.ndarray, members: range) -> int:
    """scikit-learn's pick among initialisations: the first, replaced by a later one only
    when its inertia is lower and its clustering is not the same one relabelled."""
    best = members[0]
    for i in members[1:]:
        if inertia[i] < inertia[best] and not _same_clustering(labels[i], labels[best]):
            best = i
    return best


def _same_clustering(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether every cluster of `a` maps to a single cluster of `b` (sklearn's test)."""
    pairs = np.unique(a * (int(b.max()) + 1) + b)
    return len(pairs) == len(np.unique(a))
