"""custseg.kmeans gives scikit-learn's K-Means fits, fit for fit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.preprocessing import MinMaxScaler

from custseg.generate import make_clusters
from custseg.kmeans import fit_kmeans, fit_kmeans_tables
from custseg.sweep import fit_k, fit_k_tables, kmeans_seed, make_kmeans


@pytest.fixture(scope="module")
def mall(mall_csv) -> np.ndarray:
    import pandas as pd

    return pd.read_csv(mall_csv)[["Annual Income (k$)", "Spending Score (1-100)"]]


def _sklearn(X: np.ndarray, k: int, state: int, n_init: int) -> KMeans:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate points: fewer distinct clusters than k
        return KMeans(k, init="k-means++", n_init=n_init, random_state=state).fit(X)


def test_every_k_of_the_mall_sweep_is_scikit_learns_fit(mall):
    X = MinMaxScaler().fit_transform(mall)  # Fortran-ordered, 4 duplicate rows
    for k in range(1, 51):
        ref = _sklearn(X, k, kmeans_seed(0, k), 10)
        fit = fit_kmeans(X, k, random_state=kmeans_seed(0, k), n_init=10)
        assert np.array_equal(fit.labels, ref.labels_), k
        assert fit.inertia == pytest.approx(ref.inertia_, rel=1e-12, abs=1e-15), k
        assert np.allclose(fit.centers, ref.cluster_centers_, rtol=0, atol=1e-12), k
        assert fit.n_iter == ref.n_iter_, k


@pytest.mark.parametrize(
    ("n", "k_true", "dim", "noise"), [(600, 6, 3, 0.1), (900, 4, 10, 0.0), (300, 1, 2, 0.0)]
)
def test_generated_data_gives_the_same_fits(n, k_true, dim, noise):
    X = MinMaxScaler().fit_transform(make_clusters(n, k_true, dim=dim, noise=noise, seed=5)[0])
    for k in (1, 2, 3, 5, 8, 13, 21, 34):
        ref = _sklearn(X, k, 1234 + k, 4)
        fit = fit_kmeans(X, k, random_state=1234 + k, n_init=4)
        assert np.array_equal(fit.labels, ref.labels_), k
        assert fit.inertia == pytest.approx(ref.inertia_, rel=1e-12), k


def test_empty_clusters_are_relocated_as_scikit_learn_does():
    # 12 distinct points repeated: k-means++ picks duplicates and Lloyd empties clusters
    base = np.random.default_rng(3).uniform(size=(12, 2))
    X = np.repeat(base, 5, axis=0)
    for k in (10, 11, 12):
        for state in range(6):
            ref = _sklearn(X, k, state, 3)
            fit = fit_kmeans(X, k, random_state=state, n_init=3)
            assert np.array_equal(fit.labels, ref.labels_), (k, state)
            assert fit.inertia == pytest.approx(ref.inertia_, rel=1e-12, abs=1e-15)


def test_tables_fit_together_equal_each_fit_alone():
    rng = np.random.default_rng(8)
    tables = [rng.uniform(size=(150, 3)) for _ in range(4)]
    together = fit_kmeans_tables(tables, 6, random_states=[11, 12, 13, 14], n_init=2)
    for table, state, fit in zip(tables, [11, 12, 13, 14], together, strict=True):
        alone = _sklearn(table, 6, state, 2)
        assert np.array_equal(fit.labels, alone.labels_)
        assert fit.inertia == pytest.approx(alone.inertia_, rel=1e-12)


def test_fit_k_dispatches_by_size_with_one_answer(monkeypatch):
    X = MinMaxScaler().fit_transform(make_clusters(400, 3, dim=2, seed=1)[0])
    small = fit_k(X, 3, seed=7, n_init=5)
    monkeypatch.setattr("custseg.sweep.SMALL_ROWS", 10)  # force scikit-learn
    big = fit_k(X, 3, seed=7, n_init=5)
    ref = make_kmeans(3, seed=7, n_init=5).fit(X)
    assert np.array_equal(small.labels, big.labels) and np.array_equal(big.labels, ref.labels_)
    assert len(fit_k_tables([X, X[::-1]], 3, seeds=[1, 2], n_init=2)) == 2
    with pytest.raises(ValueError, match="n_samples=400 should be >= n_clusters=401"):
        fit_kmeans(X, 401, random_state=0, n_init=1)
