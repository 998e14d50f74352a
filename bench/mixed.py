"""Benchmark: how to cluster mixed (numeric + categorical) customers, against known segments.

Generated data whose segments differ in numbers and in one or two categorical columns (five
families: both informative, the category carrying what the numbers blur, the category pure
noise, two categorical columns, imbalanced sizes), each with several seeds; every method at
the true k: `drop` (the numbers only), `oh-W` (MinMax numbers plus one-hot categories with
transformer weight W = 0.1..1.0, then KMeans: a scikit-learn Pipeline, so skops keeps working),
`kproto` (k-prototypes, the `kmodes` package, its default gamma) and `gower` (k-medoids,
FasterPAM, on Gower distances). Prints the mean adjusted Rand index against the truth and
the seconds per fit, then the Mall data with Genre: agreement with the numeric-only k=5
segments, the share of women per segment, and what the silhouette says about k=5 vs k=10.

    .venv/bin/python bench/mixed.py            # the tables in README.md ("Categorical features")
    .venv/bin/python bench/mixed.py --quick    # 2 seeds, half the rows
    .venv/bin/python bench/mixed.py --json     # the same numbers as JSON

Needs the `bench` dependency group: `uv sync --group bench --inexact`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder
from threadpoolctl import threadpool_limits

from custseg.generate import make_clusters

ROOT = Path(__file__).resolve().parents[1]
MALL = ROOT.parent / "shared" / "data" / "Mall_Customers.csv"
MALL_NUMS = ("Annual Income (k$)", "Spending Score (1-100)")
MALL_CAT = "Genre"
WEIGHTS = (0.1, 0.15, 0.25, 0.5, 0.71, 1.0)  # the 0.25..1.0, and two below them
METHODS = ("drop", *(f"oh-{w}" for w in WEIGHTS), "kproto", "gower")
N_INIT = 10


@dataclass(frozen=True)
class Family:
    """One kind of mixed data: Gaussian numbers plus categories that depend on the segment.

    `cats` holds (levels, p) per categorical column: each segment has a dominant level with
    probability p, the other levels sharing the rest evenly; p = None makes the column
    independent of the segment (uniform noise).
    """

    name: str
    about: str
    k: int
    n: int
    dim: int
    separation: float
    cats: tuple[tuple[int, float | None], ...]
    imbalance: float = 1.0

    def data(self, seed: int, n: int | None = None) -> tuple[pd.DataFrame, np.ndarray]:
        """The rows (numbers x0.., categories c0..) and the true segment of each."""
        X, y = make_clusters(n or self.n, self.k, dim=self.dim, separation=self.separation,
                             imbalance=self.imbalance, seed=seed)  # fmt: skip
        rng = np.random.default_rng(seed + 10_000)
        frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(self.dim)])
        for j, (levels, p) in enumerate(self.cats):
            if p is None:
                codes = rng.integers(0, levels, size=len(y))
            else:
                dominant = rng.permutation(max(levels, self.k))[: self.k] % levels
                others = rng.integers(1, levels, size=len(y))  # an offset: never the dominant
                codes = np.where(rng.random(len(y)) < p, dominant[y],
                                 (dominant[y] + others) % levels)  # fmt: skip
            frame[f"c{j}"] = np.array([f"L{c}" for c in range(levels)])[codes]
        return frame, y


def families() -> list[Family]:
    """The five families of the issue (a)..(e)."""
    one = ((4, 0.7),)
    return [
        Family("a-both-informative", "numbers overlap moderately, category p=0.7",
               4, 1000, 2, 3.0, one),
        Family("b-category-carries", "numbers overlap heavily, category p=0.85",
               4, 1500, 3, 1.5, ((4, 0.85),)),
        Family("c-category-noise", "as (a) but the category is independent of the segment",
               4, 1000, 2, 3.0, ((4, None),)),
        Family("d-two-categories", "5 segments, 3 numbers; 3 levels p=0.7 and 5 levels p=0.6",
               5, 2000, 3, 2.5, ((3, 0.7), (5, 0.6))),
        Family("e-imbalanced", "as (a), sizes falling 10:1 from the largest to the smallest",
               4, 3000, 2, 3.0, one, imbalance=10.0),
    ]  # fmt: skip


def onehot_pipeline(nums: Sequence[str], cats: Sequence[str], w: float, k: int,
                    seed: int) -> Pipeline:  # fmt: skip
    """MinMax numbers plus one-hot categories weighted `w`, then KMeans: one skops-able model."""
    columns = ColumnTransformer(
        [("num", MinMaxScaler(), list(nums)),
         ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), list(cats))],
        transformer_weights={"num": 1.0, "cat": w},
    )  # fmt: skip
    return Pipeline([("scaler", columns), ("kmeans", KMeans(k, n_init=N_INIT, random_state=seed))])


def parts(frame: pd.DataFrame, nums: Sequence[str],
          cats: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """MinMax-scaled numbers and the categories as integer codes."""
    num = MinMaxScaler().fit_transform(frame[list(nums)].to_numpy(float))
    cat = np.column_stack([pd.factorize(frame[c])[0] for c in cats])
    return num, cat


def gower(num: np.ndarray, cat: np.ndarray) -> np.ndarray:
    """Gower distances: |a - b| / range per number (`num` is MinMax-scaled), 0/1 mismatch per
    category, averaged over all columns."""
    d = np.zeros((len(num), len(num)))
    for j in range(num.shape[1]):
        d += np.abs(num[:, j, None] - num[None, :, j])
    for j in range(cat.shape[1]):
        d += cat[:, j, None] != cat[None, :, j]
    return d / (num.shape[1] + cat.shape[1])


def kproto_gamma(num: np.ndarray) -> float:
    """k-prototypes' default gamma (the weight of one mismatch against squared distances)."""
    return 0.5 * float(np.mean(num.std(axis=0)))


def fit(method: str, frame: pd.DataFrame, nums: Sequence[str], cats: Sequence[str], k: int,
        seed: int) -> np.ndarray:  # fmt: skip
    """The segment labels of `method` at `k`."""
    if method.startswith("oh-"):
        return onehot_pipeline(nums, cats, float(method[3:]), k, seed).fit_predict(frame)
    num, cat = parts(frame, nums, cats)
    if method == "drop":
        return KMeans(k, n_init=N_INIT, random_state=seed).fit_predict(num)
    if method == "kproto":
        X = np.concatenate([num.astype(object), cat.astype(object)], axis=1)
        from kmodes.kprototypes import KPrototypes  # the bench group: uv sync --group bench

        model = KPrototypes(n_clusters=k, init="Cao", n_init=N_INIT, random_state=seed, n_jobs=1)
        return np.asarray(model.fit_predict(X, categorical=list(range(num.shape[1], X.shape[1]))))
    if method == "gower":
        D = gower(num, cat)
        import kmedoids

        runs = [kmedoids.fasterpam(D, k, init="random", random_state=seed * N_INIT + i, n_cpu=1)
                for i in range(N_INIT)]  # fmt: skip
        return np.asarray(min(runs, key=lambda r: r.loss).labels)
    raise ValueError(method)


def silhouette(method: str, frame: pd.DataFrame, nums: Sequence[str], cats: Sequence[str],
               labels: np.ndarray) -> float:  # fmt: skip
    """The silhouette of `labels` in the space `method` clusters in."""
    num, cat = parts(frame, nums, cats)
    if method == "drop":
        return float(silhouette_score(num, labels))
    if method.startswith("oh-"):
        space = onehot_pipeline(nums, cats, float(method[3:]), 2, 0)[0].fit_transform(frame)
        return float(silhouette_score(space, labels))
    if method == "kproto":  # squared Euclidean on numbers plus gamma per mismatch
        sq = ((num[:, None, :] - num[None, :, :]) ** 2).sum(-1)
        mismatch = (cat[:, None, :] != cat[None, :, :]).sum(-1)
        D = np.sqrt(sq + kproto_gamma(num) * mismatch)
    else:
        D = gower(num, cat)
    return float(silhouette_score(D, labels, metric="precomputed"))


def run_family(fam: Family, seeds: Sequence[int], n: int) -> dict[str, Any]:
    """ARI against the truth and seconds per fit for every method, over the seeds."""
    ari: dict[str, list[float]] = {m: [] for m in METHODS}
    secs: dict[str, list[float]] = {m: [] for m in METHODS}
    gammas = []
    for seed in seeds:
        frame, y = fam.data(seed, n)
        nums = [c for c in frame.columns if c.startswith("x")]
        cats = [c for c in frame.columns if c.startswith("c")]
        gammas.append(kproto_gamma(parts(frame, nums, cats)[0]))
        for m in METHODS:
            start = time.perf_counter()
            labels = fit(m, frame, nums, cats, fam.k, seed)
            secs[m].append(time.perf_counter() - start)
            ari[m].append(float(adjusted_rand_score(y, labels)))
    return {
        "family": fam.name, "about": fam.about, "k": fam.k, "n": n, "seeds": list(seeds),
        "ari": {m: float(np.mean(v)) for m, v in ari.items()},
        "ari_min": {m: float(np.min(v)) for m, v in ari.items()},
        "ari_runs": ari,
        "seconds": {m: float(np.mean(v)) for m, v in secs.items()},
        "kproto_gamma": float(np.mean(gammas)),
    }  # fmt: skip


def run_mall(path: Path, seed: int, k: int = 5, k_max: int = 12) -> dict[str, Any]:
    """The Mall data with Genre: each method's k segments against the numeric-only ones."""
    frame = pd.read_csv(path, dtype={"CustomerID": str})
    nums, cats = list(MALL_NUMS), [MALL_CAT]
    female = (frame[MALL_CAT] == "Female").to_numpy()
    base = fit("drop", frame, nums, cats, k, seed)
    base_x_genre = base * 2 + female
    rows = []
    for m in METHODS:
        labels = fit(m, frame, nums, cats, k, seed)
        shares = sorted(float(female[labels == c].mean()) for c in np.unique(labels))
        sil = {kk: silhouette(m, frame, nums, cats, labels if kk == k else
                              fit(m, frame, nums, cats, kk, seed))
               for kk in range(2, k_max + 1)}  # fmt: skip
        double = fit(m, frame, nums, cats, 2 * k, seed)
        rows.append({
            "method": m, "ari_vs_drop": float(adjusted_rand_score(base, labels)),
            "ari_vs_genre": float(adjusted_rand_score(female, labels)),
            "female_share": shares,
            "silhouette": {str(kk): v for kk, v in sil.items()},
            "best_k": max(sil, key=lambda kk: sil[kk]),
            "ari_2k_vs_drop_x_genre": float(adjusted_rand_score(base_x_genre, double)),
        })  # fmt: skip
    return {"rows": rows, "n": len(frame), "k": k, "k_max": k_max, "female": float(female.mean()),
            "seed": seed}  # fmt: skip


def cell(value: float, best: float) -> str:
    mark = "*" if round(value, 3) == round(best, 3) else " "
    return f"{value:.3f}{mark}"


def print_tables(results: list[dict[str, Any]], mall: dict[str, Any] | None,
                 seconds: float) -> None:  # fmt: skip
    seeds = len(results[0]["seeds"])
    print(f"Mixed data: mean ARI against the true segments over {seeds} seeds, every method at "
          f"the true k (* = best of the family)\n")  # fmt: skip
    head = f"{'family':<20} {'k':>1} {'n':>5} " + " ".join(f"{m:>7}" for m in METHODS)
    print(head)
    for r in results:
        best = max(r["ari"].values())
        print(f"{r['family']:<20} {r['k']:>1} {r['n']:>5} "
              + " ".join(f"{cell(r['ari'][m], best):>7}" for m in METHODS))  # fmt: skip
    mean = {m: float(np.mean([r["ari"][m] for r in results])) for m in METHODS}
    worst = {m: float(np.min([r["ari_min"][m] for r in results])) for m in METHODS}
    print(f"{'mean over families':<28} " + " ".join(
        f"{cell(mean[m], max(mean.values())):>7}" for m in METHODS))  # fmt: skip
    print(f"{'worst single run':<28} " + " ".join(
        f"{cell(worst[m], max(worst.values())):>7}" for m in METHODS))  # fmt: skip
    print(f"\nSeconds per fit (mean; n_init={N_INIT}, one thread; gower includes the distances)\n")
    print(head)
    for r in results:
        print(f"{r['family']:<20} {r['k']:>1} {r['n']:>5} "
              + " ".join(f"{r['seconds'][m]:>7.3f} " for m in METHODS))  # fmt: skip
    print("\nFamilies:")
    for r in results:
        g = r["kproto_gamma"]
        print(f"  {r['family']:<20} {r['about']} (kproto gamma {g:.3f} ~ oh-{(g / 2) ** 0.5:.2f})")
    if mall:
        print_mall(mall)
    print(f"\n{len(results) * seeds} generated datasets and the Mall file in {seconds:.0f}s")


def print_mall(mall: dict[str, Any]) -> None:
    k = mall["k"]
    print(f"\nMall ({mall['n']} rows; Genre + Annual Income + Spending Score; "
          f"{mall['female']:.0%} female), k={k}, seed {mall['seed']}\n")  # fmt: skip
    print(f"{'method':<7} {'ARI vs drop':>11} {'ARI vs Genre':>12}  % female per segment (sorted)")
    for r in mall["rows"]:
        shares = " ".join(f"{s:4.0%}" for s in r["female_share"])
        print(f"{r['method']:<7} {r['ari_vs_drop']:>11.3f} {r['ari_vs_genre']:>12.3f}  {shares}")
    print(
        f"\nSilhouette in each method's own space (oh-W: the transformed space); best k "
        f"over 2..{mall['k_max']}; ARI of its k={2 * k} segments vs drop's k={k} x Genre\n"
    )
    print(f"{'method':<7} {f'sil k={k}':>7} {f'sil k={2 * k}':>8} {'best k':>6} {'its sil':>7} "
          f"{f'k={2 * k} vs {k}xGenre':>15}")  # fmt: skip
    for r in mall["rows"]:
        s = r["silhouette"]
        print(f"{r['method']:<7} {s[str(k)]:>7.3f} {s[str(2 * k)]:>8.3f} {r['best_k']:>6} "
              f"{s[str(r['best_k'])]:>7.3f} {r['ari_2k_vs_drop_x_genre']:>15.3f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per family (0..N-1)")
    parser.add_argument("--quick", action="store_true", help="2 seeds, half the rows")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--mall", default=str(MALL), help="the Mall file ('' to skip)")
    args = parser.parse_args()
    seeds = range(2 if args.quick else args.seeds)
    start = time.perf_counter()
    with threadpool_limits(limits=1):  # many small fits: one thread each, others share the box
        results = [run_family(f, seeds, max(500, f.n // 2) if args.quick else f.n)
                   for f in families()]  # fmt: skip
        found = args.mall and Path(args.mall).exists()
        mall = run_mall(Path(args.mall), seed=42) if found else None
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps({"families": results, "mall": mall, "seconds": seconds}, indent=1))
    else:
        print_tables(results, mall, seconds)


if __name__ == "__main__":
    main()
