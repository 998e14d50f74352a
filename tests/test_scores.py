"""custseg.scores equals scikit-learn's and SciPy's scores of a clustering."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    silhouette_score,
)
from sklearn.preprocessing import MinMaxScaler

from custseg.generate import make_clusters
from custseg.scores import adjusted_rand, beta_sf, label_scores, nearest_center
from custseg.sweep import make_kmeans


def test_label_scores_equal_sklearn_metrics():
    X, y = make_clusters(500, 4, dim=3, seed=2)
    X = MinMaxScaler().fit_transform(X)
    for labels in (y, np.random.default_rng(0).integers(0, 7, len(X)), (X[:, 0] > 0.5) * 3):
        idx = np.sort(np.random.default_rng(1).choice(len(X), 300, replace=False))
        got = label_scores(X, labels, idx)
        assert got["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(X, labels), 1e-10)
        assert got["davies_bouldin"] == pytest.approx(davies_bouldin_score(X, labels), 1e-10)
        assert got["silhouette"] == pytest.approx(silhouette_score(X[idx], labels[idx]), 1e-10)
    singletons = np.arange(6) % 4  # two one-row clusters count 0 in the silhouette
    Xs = np.random.default_rng(4).uniform(size=(6, 2))
    assert label_scores(Xs, singletons, np.arange(6))["silhouette"] == pytest.approx(
        silhouette_score(Xs, singletons), 1e-12
    )


def test_adjusted_rand_and_nearest_center_equal_sklearn():
    rng = np.random.default_rng(6)
    for _ in range(5):
        a, b = rng.integers(0, 5, 400), rng.integers(0, 3, 400)
        assert adjusted_rand(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
    a = rng.integers(0, 5, 100)
    assert adjusted_rand(a, (a + 2) % 5) == 1.0
    assert adjusted_rand(np.zeros(9), np.zeros(9)) == 1.0 == adjusted_rand_score([0] * 9, [0] * 9)
    X = rng.uniform(size=(300, 4))
    model = make_kmeans(5, seed=0, n_init=2).fit(X)
    assert np.array_equal(nearest_center(X, model.cluster_centers_), model.predict(X))


def test_beta_sf_equals_scipy_over_the_hopkins_range():
    from scipy.stats import beta

    for m in (10, 20, 50, 199, 500):
        for h in (0.01, 0.3, 0.45, 0.5, 0.55, 0.6, 0.7, 0.9, 0.99):
            want = float(beta.sf(h, m, m))
            assert beta_sf(h, m, m) == pytest.approx(want, rel=1e-9, abs=1e-300), (m, h)
    assert beta_sf(0.0, 5, 5) == 1.0 and beta_sf(1.0, 5, 5) == 0.0


def test_kept_silhouette_distances_give_the_same_bits_and_follow_the_rows(monkeypatch):
    """Choosing k keeps the silhouette's distance blocks between labellings of the same rows:
    every value is the fresh computation's to the bit, other rows are never scored against
    the kept ones, and what is kept stays within `KEEP_BYTES` (least recently used out)."""
    import custseg.scores
    from custseg.scores import _KEPT_BLOCKS, silhouette

    _KEPT_BLOCKS.clear()
    monkeypatch.setattr(custseg.scores, "KEEP_BYTES", 2 * 2500**2 * 8)
    rng = np.random.default_rng(5)
    X, other, third = rng.random((2500, 3)), rng.random((2500, 3)), rng.random((2500, 2))
    labelings = [rng.integers(0, k, 2500) for k in (2, 5, 9)]
    for rows, kept in ((X, 1), (other, 2), (X, 2), (third, 2), (other, 2)):
        for lab in labelings:
            assert silhouette(rows, lab, reuse=True) == silhouette(rows, lab)
        assert len(_KEPT_BLOCKS) == kept
        blocks = next(reversed(_KEPT_BLOCKS.values()))
        assert [b.shape for b in blocks] == [(1024, 2500), (1024, 2500), (452, 2500)]
        assert blocks[0][0, 0] == 0.0
        assert blocks[0][0, 1] == pytest.approx(np.linalg.norm(rows[0] - rows[1]), 1e-12)
    # `other` went when `third` came, and X when `other` came back
    assert sum(b.nbytes for v in _KEPT_BLOCKS.values() for b in v) == 2 * 2500**2 * 8
    assert silhouette(X, labelings[1]) == pytest.approx(silhouette_score(X, labelings[1]), 1e-10)
    _KEPT_BLOCKS.clear()
