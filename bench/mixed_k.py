"""Benchmark: custseg end to end on mixed data, k chosen by `auto`, against known segments.

The five families of `bench/mixed.py` (generated numbers plus categories that depend on the
segment, or not), a few seeds each, written as CSV files and run through `custseg`'s own
pipeline (`run_pipeline`, k = 1..12, the categorical columns detected, the default category
weight), once with the categories and once with the numbers only. Prints, per family, the
true k, the ks chosen and the mean adjusted Rand index against the truth, for both.

    .venv/bin/python bench/mixed_k.py              # 3 seeds per family
    .venv/bin/python bench/mixed_k.py --seeds 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mixed import Family, families  # noqa: E402


def chosen(fam: Family, seed: int, tmp: Path, *, with_categories: bool) -> tuple[int, float]:
    """custseg's chosen k and its segments' ARI against the truth on one generated table."""
    from sklearn.metrics import adjusted_rand_score

    from custseg.options import PipelineConfig
    from custseg.pipeline import run_pipeline

    frame, truth = fam.data(seed)
    frame.insert(0, "customer_id", [f"c{i:05d}" for i in range(len(frame))])
    path = tmp / f"{fam.name}-{seed}.csv"
    frame.to_csv(path, index=False)
    cats = [c for c in frame.columns if c[0] == "c" and c[1:].isdigit()]
    features = [c for c in frame.columns if c.startswith("x")] + (cats if with_categories else [])
    out = tmp / f"{fam.name}-{seed}-{with_categories}"
    summary = run_pipeline(PipelineConfig(features=tuple(features), k_max=12),
                           input_path=str(path), out=str(out), force_promote=True)  # fmt: skip
    got = pd.read_parquet(Path(summary["run_dir"]) / "assignments.parquet")
    return int(summary["chosen_k"]), float(adjusted_rand_score(truth, got["segment"]))


def run(seeds: range) -> list[dict[str, Any]]:
    """One row per family: the ks chosen and the mean ARI, with and without categories."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="custseg-mixed-k-") as tmp:
        for fam in families():
            row: dict[str, Any] = {"family": fam.name, "k": fam.k}
            for label, flag in (("mixed", True), ("numbers", False)):
                found = [chosen(fam, s, Path(tmp), with_categories=flag) for s in seeds]
                row[f"{label}_ks"] = [k for k, _ in found]
                row[f"{label}_ari"] = float(np.mean([a for _, a in found]))
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per family (0..N-1)")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = run(range(args.seeds))
    print("| family | true k | ks chosen, with categories | ARI | ks chosen, numbers only | ARI |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['k']} | {r['mixed_ks']} | {r['mixed_ari']:.3f} | "
              f"{r['numbers_ks']} | {r['numbers_ari']:.3f} |")  # fmt: skip
    hits = {m: sum(k == r["k"] for r in rows for k in r[f"{m}_ks"]) for m in ("mixed", "numbers")}
    total = sum(len(r["mixed_ks"]) for r in rows)
    means = {m: np.mean([r[f"{m}_ari"] for r in rows]) for m in ("mixed", "numbers")}
    print(f"| all | | {hits['mixed']}/{total} right | {means['mixed']:.3f} | "
          f"{hits['numbers']}/{total} right | {means['numbers']:.3f} |")  # fmt: skip
    print(f"\n{len(rows)} families x {args.seeds} seeds in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
