import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from custseg.criteria import (
    CRITERIA,
    CRITERIA_K_MAX,
    CriteriaScorer,
    choose_auto,
    collect,
    combine,
    criterion_picks,
    decide,
    gap_pick,
    hopkins,
)
from custseg.generate import make_blobs, make_clusters
from custseg.model import fit_segments, model_info
from custseg.preprocess import scale_features
from custseg.scores import bic_columns, bic_diagonal
from custseg.sweep import sweep_k

FEATURES = ("Annual Income (k$)", "Spending Score (1-100)")
MALL_CENTERS = np.array([[55, 50], [87, 82], [88, 17], [26, 79], [26, 20]], dtype=float)


def auto(X, *, seed, k_max=CRITERIA_K_MAX):
    with threadpool_limits(limits=1):
        sweep = sweep_k(X, range(1, k_max + 1), seed=seed, n_init=10,
                        scorer=CriteriaScorer(X, seed=seed))  # fmt: skip
        return choose_auto(sweep, X, seed=seed)


@pytest.fixture(scope="module")
def mall(mall_csv):
    X = pd.read_csv(mall_csv)[list(FEATURES)].to_numpy(dtype=np.float64)
    return X, scale_features(X, scaler="minmax")


def test_hopkins_near_half_on_uniform_and_near_one_on_clusters():
    rng = np.random.default_rng(0)
    h, p = hopkins(rng.uniform(size=(2000, 3)), seed=1)
    assert 0.4 < h < 0.6 and p > 0.01
    # every point has a twin 1e-6 away: nearest-neighbour distances w are ~0, so H -> 1
    X = rng.uniform(size=(500, 2))
    h, p = hopkins(np.vstack([X, X + 1e-6]), seed=1)
    assert h > 0.999 and p < 1e-12


def test_gap_rule_is_the_first_k_within_one_standard_error():
    assert gap_pick([1, 2, 3, 4], [0.1, 0.5, 0.52, 0.3], [0.05] * 4) == 2
    assert gap_pick([1, 2, 3], [0.4, 0.3, 0.2], [0.01] * 3) == 1
    # never within one SE of the next: the largest gap
    assert gap_pick([1, 2, 3], [0.1, 0.3, 0.6], [0.01] * 3) == 3


def test_gap_is_about_zero_on_uniform_data_and_peaks_at_true_k():
    X = np.random.default_rng(3).uniform(size=(600, 2))
    scorer = CriteriaScorer(X, seed=0)
    from custseg.sweep import make_kmeans

    for k in (1, 3, 6):
        km = make_kmeans(k, seed=0, n_init=5).fit(X)
        out = scorer(k, km.labels_, float(km.inertia_))
        assert abs(out["gap"]) < 3 * out["gap_sd"] + 0.02, (k, out)
    X, _ = make_clusters(600, 3, dim=2, separation=6.0, seed=2)
    sel = auto(scale_features(X, scaler="minmax"), seed=0)
    assert sel.details["picks"]["gap"] == 3


def test_picks_and_vote_from_known_values():
    values = {
        "silhouette": {2: 0.3, 3: 0.6, 4: 0.5},
        "calinski_harabasz": {2: 100.0, 3: 90.0, 4: 80.0},
        "davies_bouldin": {2: 0.9, 3: 0.5, 4: 0.7},
        "gap": {1: 0.1, 2: 0.2, 3: 0.5, 4: 0.45},
        "gap_sd": {1: 0.01, 2: 0.01, 3: 0.01, 4: 0.1},
    }
    picks = criterion_picks(values)
    assert picks == {"silhouette": 3, "calinski_harabasz": 2, "davies_bouldin": 3, "gap": 3}
    assert combine(values, picks) == 3


@pytest.mark.slow
def test_mall_default_picks_5_for_seeds_0_to_9_with_the_known_centroids(mall):
    X, Xs = mall
    for seed in range(10):
        sel = auto(Xs, seed=seed)
        assert sel.chosen_k == 5, (seed, sel.reason)
        model = fit_segments(X, FEATURES, k=5, scaler="minmax", seed=seed, n_init=10)
        centroids = model_info(model).centroids
        dist = np.abs(centroids[:, None] - MALL_CENTERS[None]).max(-1)
        assert dist.min(0).max() <= 5, centroids
        # every seed, not only the last: a confident, stable choice
        assert sel.details["confidence"] in ("high", "medium"), (seed, sel.details)
        assert sel.details["stability"]["agreement"] >= 0.8, (seed, sel.details["stability"])


def test_auto_does_not_depend_on_k_max(mall):
    _, Xs = mall
    with threadpool_limits(limits=1):
        full = sweep_k(Xs, range(1, 51), seed=42, n_init=10, scorer=CriteriaScorer(Xs, seed=42))
        sel = choose_auto(full, Xs, seed=42)
    small = auto(Xs, seed=42).details
    # only the elbow, computed on the whole swept range (stated beside it), follows k_max
    elbow = {"knee": sel.details["knee"], "elbow_k_range": [1, 50],
             "picks": {**small["picks"], "elbow": sel.details["knee"]}}  # fmt: skip
    assert sel.chosen_k == 5 and sel.details == small | elbow
    assert sel.details["picks"]["elbow"] == sel.details["knee"]


def test_uniform_noise_gives_one_segment_and_says_so():
    X = np.random.default_rng(7).uniform(size=(800, 2))
    sel = auto(X, seed=0)
    assert sel.chosen_k == 1
    assert "no clear segment structure" in sel.reason and "Hopkins" in sel.reason


@pytest.mark.parametrize(
    ("k", "dim", "extra"),
    [(2, 2, {}), (4, 3, {"imbalance": 10.0}), (7, 2, {"elongation": 3.0}), (12, 5, {})],
)
def test_known_k_is_recovered(k, dim, extra):
    X, _ = make_clusters(120 * k, k, dim=dim, separation=6.0, seed=k, **extra)
    sel = auto(scale_features(X, scaler="minmax"), seed=1)
    assert sel.chosen_k == k, sel.reason


def test_the_decision_is_strict_json_even_for_one_segment():
    import json

    X = np.random.default_rng(5).uniform(size=(60, 2))
    sel = auto(X, seed=0, k_max=6)
    assert sel.chosen_k == 1 and sel.details["stability"]["agreement"] is None
    json.dumps(sel.to_dict(), allow_nan=False)


def test_criteria_and_stability_same_for_any_number_of_workers(caplog):
    import logging

    from custseg.criteria import stability

    X, _ = make_clusters(1500, 3, dim=2, separation=6.0, seed=4)
    X = scale_features(X, scaler="minmax")
    with caplog.at_level(logging.INFO, logger="custseg.sweep"):
        runs = {w: sweep_k(X, range(1, 9), seed=3, n_init=4, workers=w,
                           scorer=CriteriaScorer(X, seed=3)) for w in (1, 2)}  # fmt: skip
        stab = {w: stability(X, 3, range(1, 9), seed=3, resamples=3, workers=w) for w in (1, 2)}
    assert "sweep: 8 tasks on 2 worker processes" in caplog.text
    assert "stability: 7 tasks on 2 worker processes" in caplog.text  # k=2..8, 3 resamples each
    assert runs[1].sse == runs[2].sse and runs[1].scores == runs[2].scores
    assert set(runs[2].scores[3]) == {*CRITERIA, "gap_sd"} and runs[2].scores[3]["silhouette"] > 0.5
    assert stab[1] == stab[2]
    assert stab[2].ks == (3, 3, 3) and stab[2].agreement == 1.0 and stab[2].ari > 0.95


def test_bic_prefers_the_true_labelling_and_floors_discrete_columns():
    X, y = make_clusters(300, 3, dim=2, separation=6.0, seed=1)
    X = scale_features(X, scaler="minmax")
    cols, floor = bic_columns(X)
    true = bic_diagonal(X[:, cols], y, floor)
    assert true < bic_diagonal(X[:, cols], np.zeros(len(X), dtype=int), floor)
    assert true < bic_diagonal(X[:, cols], np.random.default_rng(0).integers(0, 3, len(X)), floor)
    # a one-hot column is left out; an integer column's floor is its step^2 / 12
    D = np.column_stack([X[:, 0], np.arange(300) % 2, np.arange(300) % 5 / 4])
    cols, floor = bic_columns(D)
    assert cols.tolist() == [0, 2] and floor[1] == pytest.approx(0.25**2 / 12)


@pytest.mark.parametrize(
    ("k", "kwargs", "seed"),
    [(4, {"dim": 10, "separation": 3.5}, 1), (4, {"dim": 3, "separation": 3.0}, 1)],
)  # fmt: skip
def test_issue16_overlap_and_10d_families_now_right(k, kwargs, seed):
    """Cases of bench/choose_k.py's new families where auto answered too few (3 and 2) before
    the BIC: silhouette and DB favour fewer clusters, BIC's vote joins the gap's (and CH's)."""
    X, _ = make_blobs(100 * k, k, seed=seed, **kwargs)
    sel = auto(scale_features(X, scaler="minmax"), seed=seed)
    assert sel.chosen_k == k, sel.reason
    assert sel.details["picks"]["bic"] == k and sel.details["picks"]["silhouette"] < k
    assert "bic" in sel.reason.split(";")[0]


def _plateau_values(later_gap):
    """silhouette, CH and DB pick 2; gap (SE rule) and BIC pick 3; the gap at k = 4, 5 given."""
    return {
        "silhouette": {2: 0.30, 3: 0.24, 4: 0.17, 5: 0.14},
        "calinski_harabasz": {2: 142.0, 3: 113.0, 4: 83.0, 5: 68.0},
        "davies_bouldin": {2: 1.3, 3: 1.6, 4: 2.2, 5: 2.4},
        "gap": {1: 0.72, 2: 1.02, 3: 1.13, **later_gap},
        "gap_sd": {1: 0.02, 2: 0.02, 3: 0.02, 4: 0.02, 5: 0.02},
        "bic": {1: -1035.0, 2: -1885.0, 3: -2012.0, 4: -1861.0, 5: -1730.0},
    }


def test_gap_and_bic_outrank_the_vote_only_on_a_confirmed_gap_plateau():
    plateau = _plateau_values({4: 1.12, 5: 1.14})  # within one SE of Gap(3) at every larger k
    picks = criterion_picks(plateau)
    assert picks["gap"] == picks["bic"] == 3 and picks["silhouette"] == 2
    assert combine(plateau, picks) == 3
    d = decide(plateau, 0.9, 1e-9, has_k1=True, mixed=False)
    assert d.k == 3 and d.plateau
    # the gap rises again past the SE rule's stop (wine, breast cancer): the vote decides
    rising = _plateau_values({4: 1.12, 5: 1.25})
    assert criterion_picks(rising)["gap"] == 3 and combine(rising, criterion_picks(rising)) == 2
    # one larger k alone does not confirm a plateau; nor does the gap without the BIC
    short = {c: {k: x for k, x in v.items() if k <= 4} for c, v in plateau.items()}
    assert combine(short, criterion_picks(short)) == 2
    no_bic = {c: v for c, v in plateau.items() if c != "bic"}
    assert combine(no_bic, criterion_picks(no_bic)) == 2


@pytest.mark.parametrize(
    ("k", "kwargs", "seed"),
    [(3, {"dim": 10, "separation": 3.5}, 0), (4, {"dim": 3, "separation": 3.0}, 2)],
)  # fmt: skip
def test_issue16_gap_and_bic_plateau_beats_the_geometric_majority(k, kwargs, seed):
    """bench/choose_k.py cases where silhouette, CH and DB all answer 2 and the gap and BIC
    agree on the true k with the gap flat after it: auto answered 2 before the plateau rule."""
    X, _ = make_blobs(100 * k, k, seed=seed, **kwargs)
    sel = auto(scale_features(X, scaler="minmax"), seed=seed)
    assert sel.chosen_k == k, sel.reason
    picks = sel.details["picks"]
    assert picks["gap"] == picks["bic"] == k and picks["silhouette"] == 2
    assert "no larger k raises the gap by one SE" in sel.reason


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_elongated_blob_is_one_segment_by_its_principal_axes(seed):
    # issue #16: against the features' bounding box the gap read one elongated 6-d Gaussian
    # as two clusters; against a box aligned with its principal axes it is one blob
    X = scale_features(make_clusters(600, 1, dim=6, elongation=4.0, seed=seed)[0], scaler="minmax")
    sweep = sweep_k(X, range(1, 17), seed=seed, n_init=10, scorer=CriteriaScorer(X, seed=seed))
    sel = choose_auto(sweep, X, seed=seed)
    assert sel.chosen_k == 1, sel.reason
    assert "one blob" in sel.reason and "principal axes" in sel.reason
    assert sel.details["axes_gap_gain_over_k1"] <= 0 < sel.details["gap_gain_over_k1"]
    values = collect(sweep, X, seed=seed)
    h, p = hopkins(X, seed=seed)
    assert decide(values, h, p, has_k1=True, mixed=False).k >= 2  # the box reference alone


def test_hopkins_uses_exact_nearest_neighbours(mall_csv):
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import MinMaxScaler

    mall = pd.read_csv(mall_csv)[list(FEATURES)]
    X = np.unique(MinMaxScaler().fit_transform(mall), axis=0)
    h, p = hopkins(X, seed=0)
    # the same statistic from scikit-learn's neighbours and the same random draws
    rng = np.random.default_rng(np.random.SeedSequence([0, 3]))
    n, d = X.shape
    m = int(min(max(n // 10, 10), 500, n - 1))
    uniform = rng.uniform(X.min(0), X.max(0), size=(m, d))
    tree = NearestNeighbors(n_neighbors=2).fit(X)
    u = tree.kneighbors(uniform, n_neighbors=1)[0][:, 0]
    w = tree.kneighbors(X[rng.choice(n, size=m, replace=False)], n_neighbors=2)[0][:, 1]
    s = np.concatenate([u, w]).mean()
    want = ((u / s) ** d).sum() / (((u / s) ** d).sum() + ((w / s) ** d).sum())
    assert h == pytest.approx(want, rel=1e-12)
    assert 0.85 < h < 0.95 and p < 1e-9
