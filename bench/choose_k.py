"""Benchmark: how often each criterion, `auto` and the mission's elbow find the true k.

Generated datasets with known k (1..12; balanced and 30:1 imbalanced; 2..10 dimensions; round
and elongated; overlapping; 10% uniform noise; the Mall layout of `custseg generate`), each
MinMax-scaled and swept over k = 1..50 like the pipeline. Prints one row per dataset and the
accuracy of every rule, the elbow being the baseline.

    .venv/bin/python bench/choose_k.py            # the table in README.md ("Choosing k")
    .venv/bin/python bench/choose_k.py --quick    # a third of the suite
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from custseg.criteria import CriteriaScorer, choose_auto
from custseg.generate import generate_customers, make_clusters
from custseg.preprocess import scale_features
from custseg.select import choose_elbow
from custseg.sweep import sweep_k

RULES = ("elbow", "silhouette", "calinski_harabasz", "davies_bouldin", "gap", "auto")
SHORT = {"elbow": "elbow", "silhouette": "sil", "calinski_harabasz": "CH",
         "davies_bouldin": "DB", "gap": "gap", "auto": "auto"}  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One dataset of the suite."""

    name: str
    group: str
    true_k: int
    n: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    mall: bool = False

    def data(self, seed: int) -> np.ndarray:
        """The unscaled points."""
        if self.mall:
            frame = generate_customers(self.n, segments=self.true_k, seed=seed)
            return frame[["Annual Income (k$)", "Spending Score (1-100)"]].to_numpy(float)
        k = 0 if self.name.startswith("uniform") else self.true_k
        return make_clusters(self.n, k, seed=seed, **self.kwargs)[0]


def suite() -> list[Case]:
    """The datasets: (name, group, true k, rows, generator options)."""
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
        cases.append(Case(f"mall-generate-k{k}", "mall", k, 600, mall=True))
    return cases


def run_case(case: Case, seed: int) -> dict[str, Any]:
    """Sweep k = 1..50 on the scaled data and record every rule's pick."""
    X = scale_features(case.data(seed), scaler="minmax")
    start = time.perf_counter()
    sweep = sweep_k(X, range(1, 51), seed=seed, n_init=10, scorer=CriteriaScorer(X, seed=seed))
    auto = choose_auto(sweep, X, seed=seed)
    picks = {name: auto.details["picks"].get(name) for name in RULES if name != "auto"}
    picks["elbow"] = choose_elbow(sweep).chosen_k  # the mission's rule on 1..50
    picks["auto"] = auto.chosen_k
    return {
        "case": case.name, "group": case.group, "true_k": case.true_k, "seed": seed,
        "picks": picks, "confidence": auto.details["confidence"],
        "hopkins": auto.details["hopkins"], "values": auto.details["values"],
        "stability": auto.details["stability"], "sse": list(sweep.sse),
        "seconds": round(time.perf_counter() - start, 2),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--quick", action="store_true", help="every third dataset only")
    parser.add_argument("--save", help="write the raw results (JSON) here")
    args = parser.parse_args()
    cases = suite()[:: 3 if args.quick else 1]
    results = []
    start = time.perf_counter()
    header = f"{'dataset':<24} {'k':>2} " + " ".join(f"{SHORT[r]:>5}" for r in RULES) + "  conf"
    print(header)
    with threadpool_limits(limits=1):  # many small fits: one thread each is fastest here
        for seed in args.seeds:
            for case in cases:
                res = run_case(case, seed)
                results.append(res)
                marks = " ".join(
                    f"{str(res['picks'][r]) + ('' if res['picks'][r] == case.true_k else '*'):>5}"
                    for r in RULES
                )
                print(f"{case.name:<24} {case.true_k:>2} {marks}  {res['confidence']}",
                      flush=True)  # fmt: skip
    print(f"\n* = wrong. {len(results)} datasets in {time.perf_counter() - start:.0f}s\n")
    groups = sorted({r["group"] for r in results})
    print(f"{'accuracy':<12} " + " ".join(f"{g:>10}" for g in groups) + f" {'all':>10}")
    for rule in RULES:
        row = []
        for g in [*groups, None]:
            sel = [r for r in results if g is None or r["group"] == g]
            hits = sum(r["picks"][rule] == r["true_k"] for r in sel)
            row.append(f"{hits}/{len(sel)}")
        print(f"{SHORT[rule]:<12} " + " ".join(f"{c:>10}" for c in row))
    base = sum(r["picks"]["elbow"] == r["true_k"] for r in results)
    auto = sum(r["picks"]["auto"] == r["true_k"] for r in results)
    print(f"\nauto vs elbow: {auto}/{len(results)} vs {base}/{len(results)} correct "
          f"(ratio {auto / max(base, 1):.2f})")  # fmt: skip
    if args.save:
        with open(args.save, "w") as fh:
            json.dump(results, fh)


if __name__ == "__main__":
    main()
