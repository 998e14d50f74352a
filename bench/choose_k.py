"""Benchmark: how often each criterion, `auto` and the mission's elbow find the true k.

Generated datasets with known k, each MinMax-scaled and swept over k = 1..50 like the pipeline.
`--families old` is the original 28-case suite (k 1..12; balanced and 30:1 imbalanced; 2..10
dimensions; round and elongated; overlapping; 10% uniform noise; the Mall layout of `custseg
generate`); `--families new` the five families of issue #16 where `auto` used to fail (a few
overlapping clusters in 3-d, a few clusters in 10-d, 30:1 sizes, 10% background noise, and
high-dimensional data with 10 classes: sklearn's digits and generated 30-60-d tables). Prints
one row per dataset and the accuracy of every rule per group, the elbow being the baseline.

The sweep of each (case, seed) (SSE for k = 1..50, the labels and criteria for k <= 16) is
cached under `--cache`, so rules are re-evaluated from it without refitting; `auto` here is
`custseg.criteria.decide` on the cached values, the same decision `choose_auto` makes
(the resampled stability only sets the confidence and is not rerun).

    .venv/bin/python bench/choose_k.py --families old          # the 28-case table
    .venv/bin/python bench/choose_k.py --families new --seeds 0 1 2
    .venv/bin/python bench/choose_k.py --families all --seeds 0 1 2 --quick
    .venv/bin/python bench/choose_k.py --families new --seeds 0 1 2 --vote-only  # no plateau
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from custseg import criteria
from custseg.generate import generate_customers, make_blobs, make_clusters
from custseg.preprocess import scale_features
from custseg.scores import bic_columns, bic_diagonal
from custseg.select import elbow_k
from custseg.sweep import SweepResult, sweep_k

RULES = ("elbow", *criteria.VOTERS, "auto")
SHORT = {"elbow": "elbow", "silhouette": "sil", "calinski_harabasz": "CH",
         "davies_bouldin": "DB", "gap": "gap", "bic": "BIC", "auto": "auto"}  # fmt: skip
REAL = {"digits": "load_digits", "iris": "load_iris", "wine": "load_wine",
        "breast_cancer": "load_breast_cancer"}  # fmt: skip
"""sklearn's bundled labelled tables (offline); the same table for every seed."""
CACHE_VERSION = 1
DEFAULT_CACHE = os.path.join(os.path.dirname(__file__), "out", "choose_k_cache")


@dataclass(frozen=True)
class Case:
    """One dataset of the suite: `source` is `clusters` (make_clusters), `mall` or `digits`."""

    name: str
    group: str
    true_k: int
    n: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = "clusters"  # or "blobs" (make_blobs), "mall", "digits"

    def data(self, seed: int) -> np.ndarray:
        """The unscaled points (digits: the same table for every seed)."""
        if self.source == "mall":
            frame = generate_customers(self.n, segments=self.true_k, seed=seed)
            return frame[["Annual Income (k$)", "Spending Score (1-100)"]].to_numpy(float)
        if self.source == "blobs":
            return make_blobs(self.n, self.true_k, seed=seed, **self.kwargs)[0]
        if self.source in REAL:
            import sklearn.datasets

            return getattr(sklearn.datasets, REAL[self.source])().data.astype(np.float64)
        k = 0 if self.name.startswith("uniform") else self.true_k
        return make_clusters(self.n, k, seed=seed, **self.kwargs)[0]


def old_suite() -> list[Case]:
    """The original 28 datasets: (name, group, true k, rows, generator options)."""
    cases = [
        Case("uniform-2d", "none", 1, 500, {"dim": 2}),
        Case("uniform-5d", "none", 1, 600, {"dim": 5}),
        Case("gauss1-2d", "none", 1, 500, {"dim": 2}),
        Case("gauss1-6d-long", "none", 1, 600, {"dim": 6, "elongation": 4.0}),
    ]
    for k, dim in ((2, 2), (3, 2), (4, 3), (5, 2), (6, 4), (8, 2), (10, 6), (12, 2), (12, 10)):
        cases.append(Case(f"round-k{k}-{dim}d", "round", k, 80 * k,
                          {"dim": dim, "separation": 6.0}))  # fmt: skip
    for k, dim in ((3, 2), (5, 4), (8, 3)):
        cases.append(Case(f"imbalanced30-k{k}-{dim}d", "imbalanced", k, 120 * k,
                          {"dim": dim, "imbalance": 30.0, "separation": 7.0}))  # fmt: skip
    for k, dim in ((3, 2), (5, 6), (7, 3)):
        cases.append(Case(f"elongated-k{k}-{dim}d", "elongated", k, 80 * k,
                          {"dim": dim, "elongation": 4.0, "separation": 7.0}))  # fmt: skip
    for k, dim in ((4, 2), (6, 5), (9, 8)):
        cases.append(Case(f"overlap-k{k}-{dim}d", "overlap", k, 80 * k,
                          {"dim": dim, "separation": 4.0}))  # fmt: skip
    for k, dim in ((3, 2), (6, 3), (10, 5)):
        cases.append(Case(f"noise10-k{k}-{dim}d", "noise", k, 80 * k,
                          {"dim": dim, "separation": 6.0, "noise": 0.1}))  # fmt: skip
    for k in (3, 5, 8):
        cases.append(Case(f"mall-generate-k{k}", "mall", k, 600, source="mall"))
    return cases


def new_suite() -> list[Case]:
    """The five families of issue #16 (group names start `n-`), from `make_blobs`: three
    configurations each, plus sklearn's digits (64 features, 10 classes)."""
    fams = {
        "n-overlap3d": [(3, {"dim": 3, "separation": 3.0}), (4, {"dim": 3, "separation": 3.0}),
                        (5, {"dim": 3, "separation": 3.5})],
        "n-dim10": [(3, {"dim": 10, "separation": 3.5}), (4, {"dim": 10, "separation": 3.5}),
                    (5, {"dim": 10, "separation": 4.0})],
        "n-imbal30": [(3, {"dim": 2, "separation": 5.0}), (4, {"dim": 3, "separation": 5.0}),
                      (5, {"dim": 4, "separation": 5.0})],
        "n-bgnoise": [(3, {"dim": 2, "separation": 5.0}), (4, {"dim": 3, "separation": 5.0}),
                      (5, {"dim": 3, "separation": 5.0})],
        "n-highd10": [(10, {"dim": 40, "separation": 4.0}),
                      (10, {"dim": 60, "separation": 4.0, "latent": 8})],
    }  # fmt: skip
    extra = {"n-imbal30": {"imbalance": 30.0}, "n-bgnoise": {"noise": 0.1}}
    cases = []
    for group, configs in fams.items():
        for k, kw in configs:
            kw = {**kw, **extra.get(group, {})}
            tag = "-".join(f"{key[:3]}{v:g}" for key, v in kw.items())
            n = 1500 if k >= 10 else (200 * k if group == "n-imbal30" else 100 * k)
            cases.append(Case(f"{group[2:]}-k{k}-{tag}", group, k, n, kw, source="blobs"))
    cases.append(Case("digits-64d", "n-highd10", 10, 1797, source="digits"))
    return cases


def real_suite() -> list[Case]:
    """A check against real labelled tables beside digits (not an issue-16 family)."""
    return [Case("iris-4d", "real", 3, 150, source="iris"),
            Case("wine-13d", "real", 3, 178, source="wine"),
            Case("breast-cancer-30d", "real", 2, 569, source="breast_cancer")]  # fmt: skip


def suite(families: str) -> list[Case]:
    """`old`, `new`, `real` or `all` of the datasets."""
    return {"old": old_suite, "new": new_suite, "real": real_suite,
            "all": lambda: old_suite() + new_suite() + real_suite()}[families]()  # fmt: skip


class LabelKeeper:
    """The sweep's scorer that also keeps each k's labels (the sweep runs in-process here)."""

    def __init__(self, X: np.ndarray, seed: int) -> None:
        self.scorer = criteria.CriteriaScorer(X, seed=seed)
        self.labels: dict[int, np.ndarray] = {}

    def __call__(self, k: int, labels: np.ndarray, sse: float) -> dict[str, float | None]:
        if k <= criteria.CRITERIA_K_MAX:
            self.labels[k] = np.asarray(labels, dtype=np.int16)
        return self.scorer(k, labels, sse)


def cached_sweep(case: Case, seed: int, cache: str) -> dict[str, Any]:
    """The scaled data, SSE for k = 1..50, the labels and the sweep's criteria for k <= 16:
    loaded from `cache` when present, else computed (one worker) and saved."""
    path = os.path.join(cache, f"{case.name}-s{seed}-v{CACHE_VERSION}.npz")
    if os.path.exists(path):
        z = np.load(path, allow_pickle=False)
        scores = {int(k): v for k, v in json.loads(str(z["scores"])).items()}
        return {"X": z["X"], "ks": z["ks"].tolist(), "sse": z["sse"].tolist(),
                "labels": dict(enumerate(z["labels"], start=1)), "scores": scores,
                "seconds": float(z["seconds"])}  # fmt: skip
    X = scale_features(case.data(seed), scaler="minmax")
    keeper = LabelKeeper(X, seed)
    start = time.perf_counter()
    sweep = sweep_k(X, range(1, 51), seed=seed, n_init=10, scorer=keeper, workers=1)
    seconds = time.perf_counter() - start
    os.makedirs(cache, exist_ok=True)
    labels = np.stack([keeper.labels[k] for k in sorted(keeper.labels)])
    np.savez_compressed(path, X=X, ks=np.array(sweep.ks), sse=np.array(sweep.sse), labels=labels,
                        scores=json.dumps(sweep.scores), seconds=seconds)  # fmt: skip
    return cached_sweep(case, seed, cache)


def fill_label_criteria(
    X: np.ndarray, labels: dict[int, np.ndarray], scores: dict[int, dict[str, Any]]
) -> dict[int, dict[str, Any]]:
    """The cached scores with the criteria computed from a labelling alone (BIC) added where
    the cache predates them, exactly as `CriteriaScorer` computes them in the sweep."""
    cols, floor = bic_columns(X)
    out = {k: dict(v) for k, v in scores.items()}
    for k, lab in labels.items():
        if k in out and "bic" not in out[k]:
            out[k]["bic"] = bic_diagonal(X[:, cols], lab, floor)
    return out


def evaluate(
    case: Case, seed: int, swept: dict[str, Any], *, baseline: bool = False, axes: bool = True
) -> dict[str, Any]:
    """Every rule's pick from the cached sweep: the criteria's own, the elbow on 1..50, auto
    (with `baseline`, the rule before the BIC: the same criteria without it; without `axes`,
    no principal-axes test for k = 1)."""
    X = swept["X"]
    scores = fill_label_criteria(X, swept["labels"], swept["scores"])
    if baseline:
        scores = {k: {c: v for c, v in s.items() if c != "bic"} for k, s in scores.items()}
    sweep = SweepResult(tuple(swept["ks"]), tuple(swept["sse"]), len(X), 0.0, scores)
    start = time.perf_counter()
    values = criteria.collect(sweep, X, seed=seed)
    h, p = criteria.hopkins(X, seed=seed)
    axes_gain = criteria.axes_gain_of(X, sweep, seed=seed) if axes else None
    decision = criteria.decide(values, h, p, has_k1=True, mixed=False, axes_gain=axes_gain)
    picks: dict[str, int | None] = {r: decision.picks.get(r) for r in criteria.VOTERS}
    picks["elbow"] = elbow_k(list(sweep.ks), list(sweep.sse))
    picks["auto"] = decision.k
    picks["bic"] = decision.picks.get("bic")
    return {"case": case.name, "group": case.group, "true_k": case.true_k, "seed": seed,
            "picks": picks, "reason": decision.one_reason, "hopkins": [h, p],
            "sweep_seconds": round(swept["seconds"], 2),
            "rule_seconds": round(time.perf_counter() - start, 3)}  # fmt: skip


def print_summary(results: list[dict[str, Any]]) -> None:
    """Correct picks per group and rule."""
    groups = sorted({r["group"] for r in results})
    width = max(10, *(len(g) + 1 for g in groups))
    print(f"{'accuracy':<8} " + " ".join(f"{g:>{width}}" for g in groups) + f" {'all':>{width}}")
    for rule in RULES:
        row = []
        for g in [*groups, None]:
            sel = [r for r in results if g is None or r["group"] == g]
            hits = sum(r["picks"][rule] == r["true_k"] for r in sel)
            row.append(f"{hits}/{len(sel)}")
        print(f"{SHORT[rule]:<8} " + " ".join(f"{c:>{width}}" for c in row))
    base = sum(r["picks"]["elbow"] == r["true_k"] for r in results)
    auto = sum(r["picks"]["auto"] == r["true_k"] for r in results)
    print(f"\nauto vs elbow: {auto}/{len(results)} vs {base}/{len(results)} correct")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--families", choices=("old", "new", "real", "all"), default="old")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="replay the rule before the BIC (issue #16): the same values without it",
    )
    parser.add_argument(
        "--vote-only",
        action="store_true",
        help="replay auto without the gap-BIC plateau rule (the BIC's vote alone, 13fda3c)",
    )
    parser.add_argument(
        "--no-axes",
        action="store_true",
        help="replay auto without the principal-axes test for k = 1 (252f729)",
    )
    parser.add_argument("--quick", action="store_true", help="every third dataset only")
    parser.add_argument("--cache", default=DEFAULT_CACHE, help="sweep cache directory")
    parser.add_argument("--save", help="write the per-dataset results (JSON) here")
    args = parser.parse_args()
    cases = suite(args.families)[:: 3 if args.quick else 1]
    if args.vote_only:
        criteria.gap_bic_plateau = lambda values, picks: None  # combine and decide look it up
    results = []
    start = time.perf_counter()
    print(f"{'dataset':<24} {'s':>2} {'k':>2} " + " ".join(f"{SHORT[r]:>5}" for r in RULES))
    with threadpool_limits(limits=1):  # many small fits: one thread each is fastest here
        for seed in args.seeds:
            for case in cases:
                swept = cached_sweep(case, seed, args.cache)
                axes = not (args.no_axes or args.baseline or args.vote_only)
                res = evaluate(case, seed, swept, baseline=args.baseline, axes=axes)
                results.append(res)
                marks = " ".join(
                    f"{str(res['picks'][r]) + ('' if res['picks'][r] == case.true_k else '*'):>5}"
                    for r in RULES
                )
                print(f"{case.name:<24} {seed:>2} {case.true_k:>2} {marks}", flush=True)
    print(f"\n* = wrong. {len(results)} datasets in {time.perf_counter() - start:.0f}s\n")
    print_summary(results)
    if args.save:
        with open(args.save, "w") as fh:
            json.dump(results, fh)


if __name__ == "__main__":
    main()
