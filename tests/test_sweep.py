import numpy as np
import pytest

from custseg.errors import InputError
from custseg.sweep import SweepResult, k_range, kmeans_seed, sweep_k


def test_k_range_is_inclusive_and_defaults_to_50():
    assert k_range(k_min=1, k_max=50, n_distinct=1000) == list(range(1, 51))


def test_k_range_clamps_to_distinct_points(caplog):
    assert k_range(k_min=2, k_max=50, n_distinct=7) == [2, 3, 4, 5, 6, 7]
    assert "clamping k_max to 7" in caplog.text


def test_k_range_rejects_bad_bounds():
    with pytest.raises(InputError, match="k_min=9 > k_max=3"):
        k_range(k_min=9, k_max=3, n_distinct=100)
    with pytest.raises(InputError, match="k_min=0 < 1"):
        k_range(k_min=0, k_max=3, n_distinct=100)


def test_sweep_is_deterministic_and_decreasing():
    X = np.random.default_rng(0).random((300, 2))
    a = sweep_k(X, range(1, 8), seed=3, n_init=4)
    b = sweep_k(X, range(1, 8), seed=3, n_init=4)
    assert a.sse == b.sse
    assert all(x >= y for x, y in zip(a.sse, a.sse[1:], strict=False))
    # k=1 SSE is the total sum of squares around the mean
    assert a.sse[0] == pytest.approx(((X - X.mean(0)) ** 2).sum())


def test_batches_merge_to_the_full_sweep():
    X = np.random.default_rng(1).random((200, 2))
    full = sweep_k(X, range(1, 10), seed=5, n_init=3)
    parts = [sweep_k(X, ks, seed=5, n_init=3) for ks in ([7, 8, 9], [1, 2, 3], [4, 5, 6])]
    points = [{"k": k, "sse": s} for p in parts for k, s in zip(p.ks, p.sse, strict=False)]
    merged = SweepResult.from_points(points, n_rows=200)
    assert merged.ks == full.ks and merged.sse == full.sse
    assert kmeans_seed(5, 3) != kmeans_seed(5, 4)
