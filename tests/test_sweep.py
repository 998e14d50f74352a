import numpy as np
import pytest

from custseg.errors import InputError
from custseg.sweep import (
    SweepResult,
    auto_sample_size,
    heartbeat,
    k_range,
    kmeans_seed,
    sample_rows,
    sweep_k,
)


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


def test_sample_rows_depend_only_on_seed_and_size():
    a = sample_rows(1_000_000, size=10_000, seed=42)
    assert a is not None and len(a) == 10_000 and len(np.unique(a)) == 10_000
    assert np.all(np.diff(a) > 0) and a[-1] < 1_000_000
    np.testing.assert_array_equal(a, sample_rows(1_000_000, size=10_000, seed=42))
    assert not np.array_equal(a, sample_rows(1_000_000, size=10_000, seed=43))
    assert sample_rows(5_000, size=10_000, seed=42) is None  # small tables: every row
    assert sample_rows(5_000, size=None, seed=42) is None


def test_auto_sample_size_grows_with_k_and_features_and_caps_at_n():
    assert auto_sample_size(200, k_max=50, n_features=2) == 200
    assert auto_sample_size(10_000_000, k_max=50, n_features=2) == 5_000
    assert auto_sample_size(10_000_000, k_max=100, n_features=2) == 10_000
    assert auto_sample_size(10_000_000, k_max=50, n_features=6) == 15_000


def test_sweep_same_for_any_number_of_workers():
    X = np.random.default_rng(2).random((400, 3))
    one = sweep_k(X, range(1, 9), seed=7, n_init=2, workers=1)
    two = sweep_k(X, range(1, 9), seed=7, n_init=2, workers=2)
    assert one.sse == two.sse and one.ks == tuple(range(1, 9))


def test_heartbeat_logs_while_running(caplog):
    import logging
    import time

    with caplog.at_level(logging.INFO, logger="custseg.sweep"), heartbeat("slow", every=0.05):
        time.sleep(0.3)
    assert "slow: still running" in caplog.text
    assert "slow: done in" in caplog.text
